"""A local Ray (a Ray search without `--address`) is reachable from this machine only: every
process it starts listens on loopback, and it takes an auth token of its own. Both are read while
the search runs, from a Tune callback in this process (the driver), whose descendants are every
Ray process: the GCS, the raylet and its agents, and the workers running trials."""

from __future__ import annotations

import ipaddress
import os
import secrets
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from planner import Planner, RaySettings
from search_spaces import Budget, discover
from search_spaces.model_spec import load_model

AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def _descendants():
    import psutil  # Ray's own copy (ray/thirdparty_files, on sys.path once ray is imported)

    return psutil.Process().children(recursive=True)


def _listening() -> dict[tuple[str, int], tuple[int, str]]:
    """The TCP sockets this process and its descendants listen on: {(ip, port): (pid, name)}."""
    import psutil

    found = {}
    for process in [psutil.Process(), *_descendants()]:
        try:
            name, connections = process.name(), process.net_connections(kind="tcp")
        except psutil.NoSuchProcess:  # a worker that ended meanwhile
            continue
        for c in connections:
            if c.status == psutil.CONN_LISTEN:
                found[(c.laddr.ip, c.laddr.port)] = (process.pid, name)
    return found


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped  # an IPv6 socket bound to ::ffff:127.0.0.1
    return address.is_loopback


def _status(ip: str, port: int, token: str | None) -> int:
    """The HTTP status the runtime-env agent at `ip`:`port` answers a read-only request with."""
    host = f"[{ip}]" if ":" in ip else ip
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(
        f"http://{host}:{port}/get_runtime_envs_info", data=b"", headers=headers
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no proxy here
    try:
        with opener.open(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


class _Seen:
    """What a Tune callback saw on each trial's report (its worker alive): the sockets
    listening and the trials' worker pids; on the first, how the cluster took tokens (the
    tokens are compared there, never kept)."""

    def __init__(self):
        self.sockets: dict[tuple[str, int], tuple[int, str]] = {}
        self.trial_pids: set[int] = set()
        self.auth_mode: str | None = None
        self.environments_with_token: list[bool] = []
        self.agent_answers: dict[str, int] = {}

    def look(self, result: dict) -> None:
        self.sockets.update(_listening())
        self.trial_pids.add(result["pid"])
        if not self.agent_answers:
            self._look_at_auth()

    def _look_at_auth(self) -> None:
        import psutil

        token = os.environ.get("RAY_AUTH_TOKEN")
        self.auth_mode = os.environ.get("RAY_AUTH_MODE")
        for process in _descendants():
            try:
                environment = process.environ()
            except psutil.NoSuchProcess:
                continue
            if environment:  # the agents' reads empty: their process title overwrote it
                theirs = environment.get("RAY_AUTH_TOKEN")
                self.environments_with_token.append(bool(token) and theirs == token)
        shared = Path.home() / ".ray" / "auth_token"  # Ray's default, for all the user's Rays
        default = shared.read_text().strip() if shared.exists() else secrets.token_hex(32)
        [agent] = [at for at, (_, name) in self.sockets.items() if "RuntimeEnvAgent" in name]
        self.agent_answers = {
            "no token": _status(*agent, None),
            "the default token": _status(*agent, default),
            "its token": _status(*agent, token),
        }


@pytest.fixture
def seen(monkeypatch):
    """A `_Seen`, filled by a callback added to every Tune run this test starts (the backend
    builds its `tune.RunConfig` when it runs); Ray is shut down after, whatever happened."""
    import ray
    from ray import tune

    seen = _Seen()

    class Look(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            seen.look(result)

    class RunConfig(tune.RunConfig):
        def __init__(self, *args, callbacks=None, **kwargs):
            callbacks = [c for c in callbacks or [] if not isinstance(c, Look)]
            super().__init__(*args, callbacks=[*callbacks, Look()], **kwargs)

    monkeypatch.setattr(tune, "RunConfig", RunConfig)
    yield seen
    if ray.is_initialized():
        ray.shutdown()


@pytest.mark.slow
def test_a_local_ray_listens_on_loopback_only_with_a_token_of_its_own(seen, tmp_path):
    import ray

    before = {name: os.environ.get(name) for name in AUTH_VARS}
    loaded = load_model("zoo:digits")
    graph = discover(loaded.module, loaded.example_inputs, model_name="zoo:digits")
    planner = Planner(
        loaded.module,
        loaded.example_inputs,
        graph=graph,
        model_spec="zoo:digits",
        budget=Budget(size_bytes=graph.baseline_bits / 8 / 25),
        backend="ray",
        storage=f"sqlite:///{tmp_path / 'studies.db'}",
        ray=RaySettings(results=str(tmp_path / "ray")),
    )
    result = planner.search(n_trials=3)
    assert len(result.trials) == 3
    assert not ray.is_initialized()  # the backend stopped the Ray it started

    sockets = seen.sockets
    # Something listened (the GCS, the raylet, the runtime-env agent, the driver's and each
    # trial worker's gRPC servers), so the check below could fail: before, none was loopback.
    pids = {pid for pid, _ in sockets.values()}
    assert os.getpid() in pids and len(pids) >= 4, sockets
    assert seen.trial_pids and seen.trial_pids <= pids, (seen.trial_pids, sockets)
    reachable = {at: who for at, who in sockets.items() if not _is_loopback(at[0])}
    assert not reachable

    # Token auth, with this cluster's own token: in every Ray process's environment, and the
    # one the runtime-env agent takes (401: none given, 403: a wrong one).
    assert seen.auth_mode == "token"
    assert len(seen.environments_with_token) >= 3 and all(seen.environments_with_token)
    assert seen.agent_answers == {"no token": 401, "the default token": 403, "its token": 200}
    # The user's auth settings are theirs again once the search ends (named, not shown).
    changed = [name for name in AUTH_VARS if os.environ.get(name) != before[name]]
    assert not changed

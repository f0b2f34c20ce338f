"""Fine-tuning an embedding model with inputs only: does it keep (or raise) its fidelity?

    .venv/bin/python scripts/bench_embedding.py [--seeds 3] [--epochs 2]

A user's pretrained-like sentence encoder, trained here first (token embeddings, two transformer
encoder layers, a projection; outputs hidden states, 64 per token; about 15 s): it learns to tell
8 "topics" of token sequences apart through a mean-pooled linear probe, then the probe is
dropped. Its inputs (token ids, no labels) are written to an .npz and the model to a file of its
own, and `compplan apply --inputs ids.npz` is run as a user would (`CompressionJob`), with 8-bit
and 4-bit weights (presets bits:8, bits:4):

- "compplan": what apply does now: the distillation loss chosen from the output (cosine, for
  hidden states), the learning rate for a transformer (1e-4), the state kept that scores best on
  the held-out inputs;
- "old": the engine's former recipe on the same data: softmax KL over the last dimension,
  lr 1e-3, the last epoch's state kept (`--distill kl --lr 1e-3` and no keep-best).

Scores on the test inputs: mean cosine similarity of the compressed model's hidden states to the
original's, before fine-tuning (right after applying) and after; and nearest-neighbour agreement:
the share of test sentences whose nearest other sentence (cosine of mean-pooled embeddings) is the
same for the compressed model as for the original. Medians and ranges over seeds; writes
benchmarks/results/embedding_finetune.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.apply import ApplyConfig, apply_plan_  # noqa: E402
from engine.export import load  # noqa: E402
from engine.finetune import FinetuneConfig, finetune  # noqa: E402
from engine.task_spec import resolve_task  # noqa: E402
from planner.compress import CompressionJob  # noqa: E402
from planner.presets import make_preset  # noqa: E402
from search_spaces import discover  # noqa: E402
from search_spaces.model_spec import load_model  # noqa: E402

VOCAB, LENGTH, TOPICS = 200, 16, 8

ENCODER = '''
"""A small sentence encoder over token ids; outputs hidden states (batch, tokens, 64)."""
import torch
from torch import nn

WEIGHTS = {weights!r}


class Encoder(nn.Module):
    def __init__(self, vocab={vocab}, dim=64):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, 4, 128, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, ids):
        return self.proj(self.encoder(self.embed(ids)))


def build():
    model = Encoder()
    model.load_state_dict(torch.load(WEIGHTS, weights_only=True))
    return model.eval()
'''


def sentences(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id sequences of 8 topics, each topic favouring its own 40 tokens."""
    g = torch.Generator().manual_seed(seed)
    topic = torch.randint(0, TOPICS, (n,), generator=g)
    own = topic[:, None] * 25 + torch.randint(0, 40, (n, LENGTH), generator=g)
    noise = torch.randint(0, VOCAB, (n, LENGTH), generator=g)
    pick = torch.rand(n, LENGTH, generator=g) < 0.6
    return torch.where(pick, own % VOCAB, noise), topic


def train_encoder(folder: Path) -> str:
    """Train the encoder with a mean-pooled linear probe; save it; returns its model spec."""
    namespace: dict = {}
    exec(ENCODER.format(weights="", vocab=VOCAB), namespace)  # the class, to train it here
    torch.manual_seed(0)
    model, probe = namespace["Encoder"](), torch.nn.Linear(64, TOPICS)
    x, y = sentences(4000, seed=0)
    opt = torch.optim.Adam([*model.parameters(), *probe.parameters()], lr=1e-3)
    for step in range(400):
        rows = torch.randint(0, len(x), (64,), generator=torch.Generator().manual_seed(step))
        loss = torch.nn.functional.cross_entropy(probe(model(x[rows]).mean(1)), y[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        xt, yt = sentences(1000, seed=99)
        accuracy = (probe(model.eval()(xt).mean(1)).argmax(-1) == yt).float().mean().item()
    print(f"encoder trained: probe accuracy {accuracy:.1%} on held-out sentences", flush=True)
    weights = folder / "encoder.pt"
    torch.save(model.state_dict(), weights)
    (folder / "encoder.py").write_text(ENCODER.format(weights=str(weights), vocab=VOCAB))
    return f"{folder / 'encoder.py'}:build"


def neighbour_agreement(model, reference, ids: torch.Tensor) -> float:
    """Share of sentences whose nearest other sentence is the same under both models."""

    def nearest(m) -> torch.Tensor:
        with torch.no_grad():
            e = torch.nn.functional.normalize(m(ids).mean(1), dim=-1)
        similarity = e @ e.T
        similarity.fill_diagonal_(-2)
        return similarity.argmax(-1)

    return (nearest(model) == nearest(reference)).float().mean().item()


def old_recipe(spec: str, plan, ids_file: Path, epochs: int, seed: int):
    """The former engine recipe: KL over the last dimension at lr 1e-3, the last state kept."""
    loaded = load_model(spec, inputs=ids_file)
    teacher = loaded.module
    task = resolve_task(f"inputs:{ids_file}", teacher, distill="cosine")  # scored by cosine
    student = copy.deepcopy(teacher)
    apply_plan_(
        student, plan, calibration=task.calibration(), config=ApplyConfig(seed=seed, progress=False)
    )
    config = FinetuneConfig(
        epochs=epochs, lr=1e-3, lr_min=1e-6, distill="kl", seed=seed, progress=False
    )
    finetune(student, teacher, task.train_batches(seed), plan, config=config)
    return student, teacher, task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    result: dict = {"epochs": args.epochs, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        spec = train_encoder(folder)
        result["train_seconds"] = time.perf_counter() - started
        ids_file = folder / "ids.npz"
        np.savez(ids_file, x=sentences(2000, seed=1)[0].numpy().astype(np.int32))
        loaded = load_model(spec, inputs=ids_file)
        graph = discover(loaded.module, loaded.example_inputs, model_name=spec)
        test_ids = resolve_task(f"inputs:{ids_file}", loaded.module).inputs["test"]
        for bits in (8, 4):
            plan_file = folder / f"bits{bits}.json"
            plan = make_preset(graph, f"bits:{bits}", model=spec)
            plan.save(plan_file)
            for seed in range(args.seeds):
                job = CompressionJob(
                    spec,
                    plan_path=plan_file,
                    out=folder / "m.cpz",
                    task=f"inputs:{ids_file}",
                    epochs=args.epochs,
                    seed=seed,
                    progress=False,
                ).run()
                structure = load_model(spec, inputs=ids_file).module
                compressed = load(folder / "m.cpz", model=structure)
                student, teacher, task = old_recipe(spec, plan, ids_file, args.epochs, seed)
                row = {
                    "bits": bits,
                    "seed": seed,
                    "ratio": job["compression_ratio"],
                    "cosine_before_finetune": job["score_applied"],
                    "compplan": {
                        "cosine": job["score_after"],
                        "neighbours": neighbour_agreement(compressed, teacher, test_ids),
                        "distill": job["distill"],
                        "lr": job["lr"],
                        "best_epoch": job["best_epoch"],
                    },
                    "old": {
                        "cosine": task.score(student, "test"),
                        "neighbours": neighbour_agreement(student, teacher, test_ids),
                    },
                }
                applied = copy.deepcopy(teacher)
                apply_plan_(
                    applied,
                    plan,
                    calibration=task.calibration(),
                    config=ApplyConfig(seed=seed, progress=False),
                )
                row["neighbours_before_finetune"] = neighbour_agreement(applied, teacher, test_ids)
                result["runs"].append(row)
                print(
                    f"  {bits}-bit seed {seed}: cosine {row['cosine_before_finetune']:.4f} "
                    f"before fine-tuning → compplan {row['compplan']['cosine']:.4f} "
                    f"(kept epoch {job['best_epoch']}), old recipe {row['old']['cosine']:.4f}; "
                    f"neighbours {row['neighbours_before_finetune']:.1%} → "
                    f"{row['compplan']['neighbours']:.1%} / old {row['old']['neighbours']:.1%}",
                    flush=True,
                )
    for bits in (8, 4):
        runs = [r for r in result["runs"] if r["bits"] == bits]

        def figures(get, runs=runs):
            values = [get(r) for r in runs]
            return {"median": statistics.median(values), "min": min(values), "max": max(values)}

        result[f"bits{bits}"] = {
            "cosine_before_finetune": figures(lambda r: r["cosine_before_finetune"]),
            "cosine_compplan": figures(lambda r: r["compplan"]["cosine"]),
            "cosine_old": figures(lambda r: r["old"]["cosine"]),
            "neighbours_before_finetune": figures(lambda r: r["neighbours_before_finetune"]),
            "neighbours_compplan": figures(lambda r: r["compplan"]["neighbours"]),
            "neighbours_old": figures(lambda r: r["old"]["neighbours"]),
            "compplan_at_least_before": all(
                r["compplan"]["cosine"] >= r["cosine_before_finetune"] - 1e-6 for r in runs
            ),
        }
    out = ROOT / "benchmarks" / "results" / "embedding_finetune.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

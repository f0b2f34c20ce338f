"""compplan's k-means against Faiss's own on the shapes a searched plan picks at real size.

    .venv/bin/python scripts/bench_kmeans_faiss.py

compplan uses Faiss (faiss-cpu) for the nearest-centroid search only; this compares the whole
k-means of each, to say why.

Each case is a real layer's latents (random-initialised weights, cut and projected as
`lr2vq.lr2vq` does): scalars at k = 512 (the issue's 1.2M-value case), 2-vectors at k = 4096,
3-vectors at k = 2048 and MiniLM's pretrained word embeddings as 4-vectors at k = 2048. Per case,
in turn on one thread: `lr2vq.kmeans` as compplan runs it (annealed), the same unannealed, and
`faiss.Kmeans` with the same iterations and the same 256 points per centroid; CPU seconds by
`time.process_time` and the mean squared error of every point to its assigned centroid.

Prints a table and writes benchmarks/results/kmeans_faiss.json.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from search_spaces.methods.lr2vq import POINTS_PER_CENTROID, kmeans, subvectors
from search_spaces.model_spec import load_model

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "kmeans_faiss.json"
ITERATIONS = 25
# (name, model spec, input shape, layer, m, d̃, k)
CASES = [
    ("scalars k=512", "benchmarks/models/efficientnet_b0.py:build", "1,3,224,224",
     "classifier", 1, 1, 512),
    ("2-vectors k=4096", "benchmarks/models/efficientnet_b0.py:build", "1,3,224,224",
     "classifier", 2, 2, 4096),
    ("3-vectors k=2048", "zoo:resnet18", None, "layer4.1.conv2", 3, 3, 2048),
    ("4-vectors k=2048 (pretrained)", "zoo:minilm", None, "embeddings.word_embeddings", 4, 4,
     2048),
]  # fmt: skip


def latents(spec: str, shape: str | None, layer: str, m: int, d: int) -> torch.Tensor:
    """The points `lr2vq.lr2vq` clusters for this layer at (m, d̃)."""
    os.chdir(ROOT)  # the user's model file is named from the project's root
    model = load_model(spec, input_shape=shape).module
    x = subvectors(model.get_submodule(layer).weight.detach().float(), m)
    if d == m:
        return x
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    return x @ vh[:d].T


def mean_squared_error(points: torch.Tensor, centroids: torch.Tensor, codes: torch.Tensor) -> float:
    return float((points.double() - centroids.double()[codes]).square().sum(1).mean())


def ours(points: torch.Tensor, k: int, anneal: bool) -> tuple[float, float]:
    start = time.process_time()
    centroids, codes = kmeans(points, k, iterations=ITERATIONS, anneal=anneal, seed=0)
    seconds = time.process_time() - start
    return seconds, mean_squared_error(points, centroids, codes)


def faiss_kmeans(points: torch.Tensor, k: int) -> tuple[float, float]:
    import faiss

    faiss.omp_set_num_threads(1)
    x = points.contiguous().numpy()
    start = time.process_time()
    fitted = faiss.Kmeans(
        x.shape[1], k, niter=ITERATIONS, seed=0, max_points_per_centroid=POINTS_PER_CENTROID
    )
    fitted.train(x)
    _, codes = fitted.index.search(x, 1)
    seconds = time.process_time() - start
    centroids = torch.from_numpy(fitted.centroids)
    return seconds, mean_squared_error(points, centroids, torch.from_numpy(codes[:, 0]))


def main() -> int:
    import faiss

    torch.set_num_threads(1)
    rows = []
    for name, spec, shape, layer, m, d, k in CASES:
        points = latents(spec, shape, layer, m, d)
        row = {"case": name, "model": spec, "layer": layer, "points": points.shape[0], "k": k}
        row["ours_seconds"], row["ours_error"] = ours(points, k, anneal=True)
        row["ours_plain_seconds"], row["ours_plain_error"] = ours(points, k, anneal=False)
        row["faiss_seconds"], row["faiss_error"] = faiss_kmeans(points, k)
        row["faiss_time_ratio"] = row["faiss_seconds"] / row["ours_seconds"]
        row["faiss_error_ratio"] = row["faiss_error"] / row["ours_error"]
        print(
            f"{name:32s} n={row['points']:>8d}  ours {row['ours_seconds']:6.1f} s "
            f"(plain {row['ours_plain_seconds']:6.1f} s)  faiss {row['faiss_seconds']:6.1f} s  "
            f"time ×{row['faiss_time_ratio']:.2f}  error ×{row['faiss_error_ratio']:.3f} "
            f"(plain ×{row['ours_plain_error'] / row['ours_error']:.3f})",
            flush=True,
        )
        rows.append(row)
    result = {
        "machine": {
            "cpu": platform.processor() or _cpu_model(),
            "torch": torch.__version__,
            "faiss": faiss.__version__,
            "threads": 1,
        },
        "iterations": ITERATIONS,
        "cases": rows,
    }
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


if __name__ == "__main__":
    raise SystemExit(main())

"""A pretrained transformer end to end: all-MiniLM-L6-v2 (zoo:minilm) compressed and fine-tuned.

    .venv/bin/python scripts/bench_minilm.py [--epochs 2] [--trials 100] [--quick]

On English sentences the project generates (`zoo.text`: template sentences in eight topics, not
the package's examples), for three plans, each applied to a fresh copy of the pretrained encoder:
- `bits:8` and `bits:4`: every layer's weights at 8 or 4 bits, embeddings included (the last
  Linear layer stays at 32 bits, as `protect_ends` keeps a model's last Linear);
- a plan searched at 6× (`Planner`, proxy objective, `--trials` trials, calibrated on the
  training sentences), whose embedding table is compressed too.
Each plan: post-training compression (`apply_plan_`, no fine-tuning), then fine-tuning by
distillation from the original on the fidelity task of `--inputs` (`engine.task_data.FidelityTask`:
the training sentences' token ids, cosine distillation, the state best on the validation
sentences kept), then export and load. Figures on held-out sentences (not trained or validated
on): mean cosine similarity of each sentence's embedding to the original's, and
nearest-neighbour agreement (the share of sentences whose nearest other sentence, by cosine, is
the same under both encoders); with the seconds of every step, the ratio, and whether the loaded
file gives the fine-tuned model's outputs and holds the predicted payload. Figures printed and
written to benchmarks/results/minilm.json. `--quick`: 20 trials, one epoch, fewer sentences (a
smoke run, not the published figures).
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from engine import ApplyConfig, FinetuneConfig, apply_plan_, export, finetune, load
from engine.finetune import default_lr
from engine.task import model_outputs
from engine.task_data import FidelityTask
from planner import Budget, Planner
from planner.presets import make_preset
from predictors.size import size_report
from search_spaces import discover
from search_spaces.model_spec import load_model
from zoo.text import sentences, tokenize, write_inputs

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "minilm.json"
SPEC = "zoo:minilm"
EMBEDDING = "embeddings.word_embeddings"


def nearest_neighbours(embeddings: torch.Tensor) -> torch.Tensor:
    """Each row's nearest other row by cosine similarity."""
    unit = F.normalize(embeddings.double(), dim=1)
    similarity = unit @ unit.T
    similarity.fill_diagonal_(-float("inf"))
    return similarity.argmax(dim=1)


def fidelity(model, ids: torch.Tensor, reference: torch.Tensor) -> dict:
    """Mean cosine to the original's embeddings and nearest-neighbour agreement."""
    outputs = model_outputs(model, ids)
    cosine = F.cosine_similarity(outputs.double(), reference.double(), dim=1)
    agreement = nearest_neighbours(outputs) == nearest_neighbours(reference)
    return {
        "cosine": float(cosine.mean()),
        "cosine_min": float(cosine.min()),
        "nn_agreement": float(agreement.double().mean()),
    }


def _seconds(started: float) -> float:
    return round(time.perf_counter() - started, 2)


def searched_plan(teacher, example, task, graph, ratio: float, trials: int) -> tuple:
    """The best plan of a proxy search at `ratio`×, and the search's figures."""
    started = time.perf_counter()
    planner = Planner(
        teacher,
        example,
        budget=Budget(size_bytes=graph.baseline_bits / 8 / ratio),
        storage="memory",
        model_spec=SPEC,
        task=task,
        seed=0,
    )
    built = _seconds(started)
    started = time.perf_counter()
    result = planner.search(trials)
    searched = _seconds(started)
    if result.best_plan is None:
        raise SystemExit(f"no feasible plan at {ratio}× in {trials} trials")
    figures = {
        "trials": trials,
        "feasible_trials": int(result.trials["feasible"].sum()),
        "exact_seeded": bool((result.exact or {}).get("seeded")),
        "seconds_problem": built,
        "seconds_search": searched,
    }
    return result.best_plan, figures


def run_plan(name: str, plan, teacher, graph, task, eval_ids, reference, args, folder) -> dict:
    """Apply, score, fine-tune, score, export and load one plan."""
    row: dict = {"plan": name, "seconds": {}}
    predicted = size_report(plan, graph).total_bits / 8
    row["ratio"] = graph.baseline_bits / 8 / predicted
    row["predicted_bytes"] = predicted
    embedding = plan.layers.get(EMBEDDING)
    row["embedding_compressed"] = embedding is not None and embedding.weights is not None
    student = copy.deepcopy(teacher)
    started = time.perf_counter()
    apply_plan_(
        student,
        plan,
        calibration=task.calibration(),
        example_inputs=eval_ids[:1],
        config=ApplyConfig(seed=0, progress=False),
        model_name=SPEC,
    )
    row["seconds"]["apply"] = _seconds(started)
    row["post_training"] = fidelity(student, eval_ids, reference)
    print(f"  {name}: {row['ratio']:.2f}×, after apply {row['post_training']}", flush=True)

    lr = default_lr(teacher)
    config = FinetuneConfig(
        epochs=args.epochs,
        lr=lr,
        lr_min=lr * 1e-3,
        distill=task.distill,
        seed=0,
        progress=False,
    )
    started = time.perf_counter()
    result = finetune(
        student,
        teacher,
        task.train_batches(0),
        plan,
        config=config,
        score=lambda model: task.score(model, "val"),
    )
    row["seconds"]["finetune"] = _seconds(started)
    row["finetune"] = {
        "epochs": args.epochs,
        "lr": lr,
        "distill": task.distill,
        "best_epoch": result.best_epoch,
    }
    row["fine_tuned"] = fidelity(student, eval_ids, reference)
    print(f"  {name}: after fine-tuning {row['fine_tuned']}", flush=True)

    started = time.perf_counter()
    path = folder / f"{name.replace(':', '-')}.cpz"
    report = export(student, path, model_spec=SPEC)
    loaded = load(path)
    row["seconds"]["export_and_load"] = _seconds(started)
    with torch.no_grad():
        difference = (student(eval_ids[:64]) - loaded(eval_ids[:64])).abs().max().item()
    row["max_output_difference_after_load"] = difference
    row["payload_bytes"] = report.payload_bytes
    row["payload_is_predicted"] = (
        0 <= report.payload_bytes - predicted < max(report.packed_tensors, 1)
    )
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--ratio", type=float, default=6.0)
    parser.add_argument("--sentences", type=int, default=1500)
    parser.add_argument("--eval-sentences", type=int, default=1000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.trials, args.sentences, args.eval_sentences = 1, 20, 300, 200
    torch.manual_seed(0)
    seconds: dict[str, float] = {}

    started = time.perf_counter()
    loaded = load_model(SPEC)
    teacher, example = loaded.module.eval(), loaded.example_inputs
    graph = discover(teacher, example, model_name=SPEC)
    seconds["load_and_discover"] = _seconds(started)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        inputs = write_inputs(folder / "sentences.npz", n=args.sentences, seed=0)
        task = FidelityTask.from_file(teacher, inputs, seed=0)
        # Held out: sentences of another seed that the task never trains or validates on.
        seen = set(sentences(args.sentences, seed=0))
        held_out = [s for s in sentences(args.eval_sentences + len(seen), seed=1) if s not in seen]
        eval_ids = tokenize(held_out[: args.eval_sentences])
        reference = model_outputs(teacher, eval_ids)
        seconds["sentences_and_task"] = _seconds(started)
        print(
            f"{SPEC}: {graph.total_params:,} parameters; {len(task.inputs['train'])} training, "
            f"{len(eval_ids)} held-out sentences; distill {task.distill}",
            flush=True,
        )

        plan, search = searched_plan(teacher, example, task, graph, args.ratio, args.trials)
        print(f"  search: {search}", flush=True)
        plans = [
            ("bits:8", make_preset(graph, "bits:8", model=SPEC)),
            ("bits:4", make_preset(graph, "bits:4", model=SPEC)),
            (f"searched x{args.ratio:g}", plan),
        ]
        rows = [
            run_plan(name, p, teacher, graph, task, eval_ids, reference, args, folder)
            for name, p in plans
        ]
        rows[-1]["search"] = search
        rows[-1]["layers_by_method"] = {
            method: sum(1 for lp in plan.layers.values() if lp.method == method)
            for method in sorted({lp.method for lp in plan.layers.values()})
        }

    result = {
        "model": SPEC,
        "quick": args.quick,
        "total_params": graph.total_params,
        "baseline_bytes": graph.baseline_bits / 8,
        "training_sentences": len(task.inputs["train"]),
        "held_out_sentences": len(eval_ids),
        "torch_threads": torch.get_num_threads(),
        "seconds": seconds,
        "plans": rows,
    }
    for row in rows:
        print(
            f"{row['plan']:>14}  {row['ratio']:5.2f}×  cosine {row['post_training']['cosine']:.4f}"
            f" → {row['fine_tuned']['cosine']:.4f}  NN {row['post_training']['nn_agreement']:.3f}"
            f" → {row['fine_tuned']['nn_agreement']:.3f}  seconds {row['seconds']}"
        )
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Short benchmarks through lm-evaluation-harness, measured on the extended model object.

``HFLM`` wraps the model instance the evaluate stage already built (weights loaded, RoPE method
applied), so the harness measures that RoPE scaling rather than reloading the checkpoint.
Two named task sets, as the papers report them (``TASK_SETS``):
  * ``pi``: BoolQ, PIQA, RACE-M, RACE-H, WinoGrande, zero-shot (PI, Table 7);
  * ``longrope``: ARC-Challenge 25-shot, HellaSwag 10-shot, MMLU 5-shot, TruthfulQA (mc2) 0-shot
    (the Open LLM Leaderboard setting LongRoPE and YaRN use).
More tasks (any lm-eval task name, or YAML tasks in ``include_path`` folders) come in as
``{"task", "num_fewshot"}``. The evaluation's length is the window the harness may use (the
original context in the workflow). Metrics are flat: ``"<task>/<metric>"``, e.g. ``boolq/acc``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from functools import lru_cache

from longctx.evaluate.registry import EvaluationError, register

TASK_SETS = {
    "pi": [("boolq", 0), ("piqa", 0), ("race_middle", 0), ("race", 0), ("winogrande", 0)],
    "longrope": [("arc_challenge", 25), ("hellaswag", 10), ("mmlu", 5), ("truthfulqa_mc2", 0)],
}
# tasks lm-eval lacks, derived from one of its tasks: (base task, config changes)
DERIVED = {"race_middle": ("race", {"dataset_name": "middle"})}  # lm-eval's `race` is RACE-H


def task_list(task_sets=(), tasks=()) -> list[tuple[str, int]]:
    """(task, num_fewshot) pairs of the named sets and the extra tasks, without repeats."""
    out = []
    for name in task_sets:
        if name not in TASK_SETS:
            raise EvaluationError(f"evaluate.harness.task_sets: unknown set {name!r} (known: {', '.join(TASK_SETS)})")
        out += TASK_SETS[name]
    for t in tasks:
        out.append((t["task"], int(t.get("num_fewshot", 0))))
    seen, unique = set(), []
    for pair in out:
        if pair not in seen:
            seen.add(pair)
            unique.append(pair)
    if not unique:
        raise EvaluationError("evaluate.harness: no tasks (set task_sets or tasks)")
    return unique


def _spec(name: str, manager):
    """What ``simple_evaluate`` takes for a task: its name, or an inline config for a derived task."""
    if name not in DERIVED:
        return name
    from lm_eval.tasks._yaml_loader import load_yaml

    base, changes = DERIVED[name]
    entry = manager.task_index.get(base)
    if entry is None or entry.yaml_path is None:
        raise EvaluationError(f"harness: lm-eval has no task {base!r} to derive {name!r} from")
    config = load_yaml(entry.yaml_path, resolve_func=True)
    return {**config, **changes, "task": name}


def flat_metrics(results: dict) -> dict:
    """lm-eval's ``results`` ({task: {"acc,none": .., "acc_stderr,none": .., "alias": ..}}) as flat numbers."""
    out = {}
    for task, values in results.items():
        for key, value in values.items():
            metric, _, flt = key.partition(",")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or metric in ("alias", "sample_len"):
                continue
            out[f"{task}/{metric}" + (f"[{flt}]" if flt not in ("", "none") else "")] = float(value)
    return out


@lru_cache(maxsize=4)
def task_manager(include_path=None, include_defaults: bool = True):
    """lm-eval's task index (slow to build: thousands of YAMLs), once per process."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path, include_defaults=include_defaults)


def run_harness(model, tokenizer, pairs: list[tuple[str, int]], max_length: int, *, include_path=None, limit=None,
                batch_size=8, seed=1234, log_samples=False) -> dict:
    """lm-eval on the model object itself: ``{"results", "versions", "n_samples", "samples"}``.

    One ``simple_evaluate`` call per few-shot count (it takes one count per call). lm-eval's own
    tasks are only indexed when a task is not among the ``include_path`` ones.
    """
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    manager = task_manager(include_path, False) if include_path else None
    if manager is None or any(DERIVED.get(n, (n,))[0] not in manager.task_index for n, _ in pairs):
        manager = task_manager(include_path, True)
    device = next(model.parameters()).device
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length, device=str(device))
    if lm.model is not model:
        raise EvaluationError("harness: lm-eval wraps another model object than the extended one")
    by_shots = defaultdict(list)
    for name, shots in pairs:
        by_shots[shots].append(name)
    merged = {"results": {}, "versions": {}, "n_samples": {}, "samples": {}}
    for shots, names in sorted(by_shots.items()):
        out = simple_evaluate(model=lm, tasks=[_spec(n, manager) for n in names], num_fewshot=shots, limit=limit,
                              task_manager=manager, log_samples=log_samples, bootstrap_iters=0, random_seed=seed,
                              numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
        merged["results"].update(out["results"])
        merged["versions"].update(out.get("versions", {}))
        merged["n_samples"].update({k: v.get("effective", v.get("original")) if isinstance(v, dict) else v
                                    for k, v in out.get("n-samples", {}).items()})
        merged["samples"].update(out.get("samples", {}))
    return merged


def lengths(section: dict, evaluation_lengths: list[int], original_context: int) -> list[int]:
    return [original_context]  # short benchmarks: inside the original window


@register("harness", order=70, lengths=lengths)
def evaluate_harness(model, tokenizer, length: int, *, task_sets=("pi",), tasks=(), include_path=None, limit=None,
                     batch_size=8, seed=1234, **_):
    import lm_eval

    started = time.time()
    pairs = task_list(task_sets, tasks)
    out = run_harness(model, tokenizer, pairs, length, include_path=include_path, limit=limit,
                      batch_size=batch_size, seed=seed)
    return {
        "eval": "harness",
        "length": length,
        "lm_eval_version": lm_eval.__version__,
        "tasks": [{"task": n, "num_fewshot": k} for n, k in pairs],
        "limit": limit,
        "samples": out["n_samples"],
        "task_versions": out["versions"],
        "results": out["results"],
        "metrics": flat_metrics(out["results"]),
        "seconds": time.time() - started,
    }

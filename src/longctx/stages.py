"""The workflow's entry points: one function per rule, explicit arguments, outputs written atomically.

Rules call these through ``python -m longctx <stage> ...`` (see ``cli.py``); each is usable from
Python too. ``run`` is the small dict of experiment facts every job logs (experiment, model,
original context, seed); ``variant`` is a ``longctx.config.Variant`` as a dict.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from longctx import tracking
from longctx.config import SEARCH_RESULT_PARAMS
from longctx.io import read_json, write_json

log = logging.getLogger(__name__)


def stage_tokenizer(config: dict, out_dir) -> None:
    from longctx.model import prepare_tokenizer

    prepare_tokenizer(config, out_dir)


def stage_prepare(corpus: dict, split: str, tokenizer_dir, out_prefix, run: dict) -> None:
    from longctx.data import prepare_split

    with tracking.job(run, "prepare", dataset=Path(out_prefix).parent.name, split=split) as tracker:
        meta = prepare_split(corpus, split, tokenizer_dir, out_prefix)
        tracker.summary({"documents": meta["documents"], "tokens": meta["tokens"]})


def stage_base_model(config: dict, tokenizer_dir, out_dir, train_prefix, run: dict, work_dir=None) -> None:
    from longctx.model import prepare_base_model

    stage = "pretrain" if config["model"]["source"] == "pretrain" else "import"
    base = {"name": "base", "method": "none", "scale": 1.0, "params": {}, "finetune": False, "search": False}
    with tracking.job(run, stage, base, dataset=Path(train_prefix).parent.name if train_prefix else None,
                      **config["model"]) as tracker:
        summary = prepare_base_model(config, tokenizer_dir, out_dir, train_prefix, work_dir, tracker)
        tracker.summary({k: v for k, v in summary.items() if isinstance(v, (int, float))})


def _extended_model(model_dir, variant: dict, factors_file=None, device="cpu", dtype=None):
    """Load a model folder and apply the variant's RoPE method (searched factors if given)."""
    from longctx.model import load_model
    from longctx.rope import apply_to_model

    model = load_model(model_dir, device=device, dtype=dtype)
    params = dict(variant["params"])
    if factors_file:
        found = read_json(factors_file)
        # a search result says which longrope parameters it gives (factors, or a chain's factor sets)
        params.update(found.get("rope_params") or {"factors": found["factors"], "n_hat": found["n_hat"]})
    if variant["method"] != "none":
        # a fine-tuned folder already carries this method; applying it again gives the same RoPE
        apply_to_model(model, variant["method"], variant["scale"], params)
    return model


def stage_finetune(model_dir, train_prefix, out_dir, variant: dict, settings: dict, original_context: int,
                   run: dict, seed: int, device: str = "auto", factors_file=None, work_dir=None) -> None:
    from longctx.model import pick_device
    from longctx.train import TrainSettings, train

    target = int(round(variant["scale"] * original_context))
    if variant.get("finetune_steps"):  # a progressive chain's step sets its own number of steps
        settings = {**settings, "steps": variant["finetune_steps"]}
    # loaded on the CPU: the trainer's strategy places it (one GPU, DDP, FSDP shards, DeepSpeed)
    model = _extended_model(model_dir, variant, factors_file, device="cpu")
    ts = TrainSettings.from_config(settings, seq_len=target, seed=seed)
    out_dir = Path(out_dir)
    with tracking.job(run, "finetune", variant, target, Path(train_prefix).parent.name, **settings) as tracker:
        summary = train(model, train_prefix, ts, out_dir, work_dir or out_dir.with_name(out_dir.name + ".work"),
                        tracker=tracker, device=pick_device(device).type, base_model_path=model_dir)
        tracker.summary({"final_loss": summary["final_loss"]})
    from longctx.data import load_tokenizer

    if int(os.environ.get("RANK", "0")) == 0:  # the main process of a multi-process run writes it once
        load_tokenizer(model_dir).save_pretrained(out_dir)


def _search_windows(data_prefix, length: int, settings: dict, seed: int):
    """The fitness documents cut to ``length`` [D, length], and their ids; too few is an error (before any model)."""
    from longctx.data import TokenFile
    from longctx.search import pick_documents

    import numpy as np
    import torch

    data = TokenFile.open(data_prefix)
    lengths = [int(b - a) for a, b in data.bounds]
    docs = pick_documents(lengths, length, settings["documents"], seed, f"search data {data.prefix}")
    windows = torch.from_numpy(np.stack([np.asarray(data.document(i)[:length], dtype=np.int64) for i in docs]))
    return windows, [data.meta["document_ids"][i] for i in docs]


def _search_model(model_dir, settings: dict, device: str, original_context: int):
    from longctx.model import load_model, pick_device
    from longctx.rope import geometry_of
    from longctx.search import SearchError

    dev = pick_device(device)
    model = load_model(model_dir, device=dev, dtype=settings.get("dtype") or ("bfloat16" if dev.type == "cuda" else None))
    geometry = geometry_of(model.config)
    if geometry.original_context != original_context:
        raise SearchError(f"{model_dir}: the model's original context is {geometry.original_context}, the config "
                          f"says {original_context} (model.original_context)")
    return model, geometry


def _search_progress(tracker):
    def progress(row):
        tracker.log({"search/best_perplexity": row["best_perplexity"], "search/mean_perplexity": row["mean_perplexity"],
                     "search/evaluated": row["evaluated"], "search/abandoned": row["abandoned"],
                     "search/best_n_hat": row["best_n_hat"]}, step=row["iteration"])

    return progress


def _search_summary(tracker, record: dict) -> None:
    """The best factor curve against the seeds, the per-iteration table and the final numbers."""
    names = {"pi": "PI", "ntk": "NTK-aware", "yarn": "YaRN"}
    series = {names.get(k, k): list(enumerate(v)) for k, v in record["seeds"].items()}
    series["searched (best)"] = list(enumerate(record["factors"]))
    tracker.line_series("search/factors", series, f"LongRoPE factors at {record['length']} tokens", "dimension pair i")
    tracker.table("search/history", ["iteration", "best_perplexity", "mean_perplexity", "evaluated", "abandoned",
                                     "best_n_hat", "seconds"],
                  [[h[k] for k in ("iteration", "best_perplexity", "mean_perplexity", "evaluated", "abandoned",
                                   "best_n_hat", "seconds")] for h in record["history"]])
    tracker.summary({"best_perplexity": record["perplexity"], "n_hat": record["n_hat"],
                     "evaluated": record["evaluated"], "abandoned": record["abandoned"],
                     **{f"timing/{k}": v for k, v in record["timing"].items() if v is not None}})


def stage_search(model_dir, data_prefix, out_file, variant: dict, settings: dict, original_context: int,
                 run: dict, seed: int, device: str = "auto", log_file=None, chunk_size: int = 4096,
                 base_factors_file=None) -> None:
    """LongRoPE factor search at the variant's target length on validation documents.

    With ``base_factors_file`` (the search result a model was fine-tuned with), a secondary search:
    the new factors multiply those (a progressive chain's later step, ``longctx.progressive``).
    """
    from longctx.search import plain_task, run_search, secondary_task, settings_at

    target = int(round(variant["scale"] * original_context))
    settings = settings_at(settings, target)
    windows, doc_ids = _search_windows(data_prefix, target, settings, seed)
    model, geometry = _search_model(model_dir, settings, device, original_context)
    params = {k: v for k, v in variant["params"].items() if k not in SEARCH_RESULT_PARAMS}
    if base_factors_file:
        tuned = read_json(base_factors_file)
        task = secondary_task(geometry, variant["scale"], tuned.get("rope_scale", tuned["scale"]),
                              tuned["factors"], settings, params)
    else:
        task = plain_task(geometry, variant["scale"], settings, params)
    log_file = Path(log_file or Path(out_file).with_suffix(".log.jsonl"))
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with tracking.job(run, "search", variant, target, Path(data_prefix).parent.name, search_kind=task.kind,
                      **settings) as tracker:
        record = run_search(model, windows, task, settings, seed, log_file, _search_progress(tracker), chunk_size)
        _search_summary(tracker, record)
    write_json(out_file, {**record, "documents": doc_ids})


def stage_recovery(model_dir, data_prefix, out_file, variant: dict, settings: dict, original_context: int,
                   run: dict, seed: int, long_factors_file, device: str = "auto", log_dir=None,
                   chunk_size: int = 4096) -> None:
    """Short-context recovery: a factor set per recovery length for the chain's final model, which
    then carries them all with the long set (``longctx.progressive.final_record``)."""
    from longctx.progressive import final_record, recovery_task
    from longctx.search import run_search, settings_at

    long_record = read_json(long_factors_file)
    long_params = long_record["rope_params"]
    lengths = [int(x) for x in variant["recovery_lengths"]]
    per_length = {n: settings_at(settings, n) for n in lengths}
    windows = {n: _search_windows(data_prefix, n, per_length[n], seed) for n in lengths}  # all checked first
    model, geometry = _search_model(model_dir, settings, device, original_context)
    params = {k: v for k, v in variant["params"].items() if k not in SEARCH_RESULT_PARAMS}
    log_dir = Path(log_dir or Path(out_file).parent)
    log_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for n in lengths:
        task = recovery_task(geometry, n, variant["scale"], {"factors": long_params["factors"],
                                                             "n_hat": long_params["n_hat"]},
                             per_length[n], params, variant.get("recovery_lambda_max"))
        with tracking.job(run, "search", variant, n, Path(data_prefix).parent.name, search_kind=task.kind,
                          **per_length[n]) as tracker:
            record = run_search(model, windows[n][0], task, per_length[n], seed, log_dir / f"recovery-{n}.jsonl",
                                _search_progress(tracker), chunk_size)
            _search_summary(tracker, record)
        records.append({**record, "documents": windows[n][1]})
    write_json(out_file, final_record(long_record, records, variant["recovery_of"]))


def stage_evaluate(eval_name: str, model_dir, out_file, variant: dict, length: int, settings: dict, run: dict,
                   seed: int, device: str = "auto", data_prefix=None, factors_file=None) -> None:
    from longctx.data import load_tokenizer
    from longctx.evaluate import EVALUATIONS, EvaluationError
    from longctx.evaluate.registry import record_non_finite
    from longctx.model import pick_device

    if eval_name not in EVALUATIONS:  # before the model loads
        raise EvaluationError(f"unknown evaluation {eval_name!r}; known: {', '.join(sorted(EVALUATIONS))}")
    model = _extended_model(model_dir, variant, factors_file, device=pick_device(device))
    tokenizer = load_tokenizer(model_dir)
    dataset = Path(data_prefix).parent.name if data_prefix else eval_name
    with tracking.job(run, f"eval-{eval_name}", variant, length, dataset, **settings) as tracker:
        result = EVALUATIONS[eval_name](model, tokenizer, length, data_prefix=data_prefix, seed=seed, **settings)
        result["variant"] = variant["name"]
        result["rope"] = model.config.rope_parameters.get("rope_type")
        result.setdefault("dataset", dataset)
        record_non_finite(result)
        if result.get("diverged"):
            log.warning("%s of %s at %d is not finite (%s): recorded as diverged", eval_name, variant["name"],
                        length, ", ".join(result["diverged"]))
        tracking.log_evaluation(tracker, result, variant)
    write_json(out_file, result)


def stage_report(result_files, variants: list[dict], run: dict, dataset: str, out_md, out_csv, out_html, plots_dir,
                 search_files=(), dataset_ids=(), finetune_steps=None) -> None:
    """summary.csv, report.md/.html and plots; one W&B ``report`` run logs the cross-method tables."""
    from longctx.paper_numbers import Setting
    from longctx.report import write_report

    results = [read_json(p) for p in result_files]
    datasets = {}
    for r in results:  # what names each evaluation's data: its dataset, and the evaluation's own name
        datasets.setdefault(r["eval"], set()).update(
            [r["eval"], r.get("dataset") or (dataset if r["eval"] == "perplexity" else r["eval"])])
    datasets.setdefault("perplexity", set()).update([dataset, *dataset_ids])
    setting = Setting(model=run["model"], datasets={k: sorted(v) for k, v in datasets.items()},
                      finetune_steps=finetune_steps)
    with tracking.job(run, "report", dataset=dataset, results=len(result_files)) as tracker:
        write_report(result_files, variants, run, dataset, out_md, out_csv, out_html, plots_dir, search_files,
                     setting, tracker)

"""The workflow's jobs: one function per rule, keyword-only arguments, outputs written atomically.

A rule runs ``python -m longctx <job> --<argument> ...``; the command line is generated from these
signatures (``longctx.cli``), so a job's arguments are declared once, here: adding one is adding a
keyword parameter (and the rule passing it). Structured arguments arrive rebuilt: ``variant`` is a
``Variant``, ``run`` a ``RunInfo`` (the experiment's facts every job logs: name, model, original
context L, seed). Each job is usable from Python too.

Why one module (over 400 lines): the command line is generated from the functions in ``JOBS``, and
this is the one layer that ties config, engines and tracking; one file lists every rule's entry point.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from longctx import tracking
from longctx.artifacts import read_json, write_json
from longctx.config import BASE, SEARCH_RESULT_PARAMS, RunInfo, Variant, deep_merge

log = logging.getLogger(__name__)


# --- data and the base model ---------------------------------------------------------------------


def tokenizer(*, config: dict, out: Path) -> None:
    """Train the BPE tokenizer on the pretraining corpus, or copy the source model's (``config``: the
    ``model``, ``corpora`` and ``seed`` sections)."""
    from longctx.artifacts import atomic_dir
    from longctx.config import train_corpus
    from longctx.data import iter_documents, train_tokenizer
    from longctx.models.sources import import_tokenizer

    model = config["model"]
    if model["source"] != "pretrain":
        import_tokenizer(model, out)
        return
    corpus = config["corpora"][train_corpus(config, "pretrain")]
    with atomic_dir(out) as tmp:
        train_tokenizer((text for _, text in iter_documents(corpus, "train")), model["pretrain"]["vocab_size"], tmp)


def prepare(*, corpus: dict, split: str, tokenizer: Path, out_prefix: Path, run: RunInfo) -> None:
    """Tokenize one split of a corpus into token files (``longctx.data``)."""
    from longctx.data import prepare_split

    with tracking.job(run, "prepare", dataset=Path(out_prefix).parent.name, split=split) as tracker:
        meta = prepare_split(corpus, split, tokenizer, out_prefix)
        tracker.summary({"documents": meta["documents"], "tokens": meta["tokens"]})


def base_model(*, config: dict, tokenizer: Path, out: Path, run: RunInfo, train_data: Path | None = None,
               work_dir: Path | None = None) -> None:
    """Pretrain the small model on ``train_data``, or import the source model (``config``: the ``model``
    and ``seed`` sections); safetensors and the tokenizer in ``out``."""
    from longctx.data import load_tokenizer

    model_cfg = config["model"]
    stage = "pretrain" if model_cfg["source"] == "pretrain" else "import"
    tok = load_tokenizer(tokenizer)
    with tracking.job(run, stage, BASE, dataset=Path(train_data).parent.name if train_data else None,
                      **model_cfg) as tracker:
        if stage == "pretrain":
            summary = _pretrain(model_cfg["pretrain"], config["seed"], tok, train_data, out, work_dir, tracker)
        else:
            from longctx.models.sources import import_model

            summary = import_model(model_cfg, tok, out)
        tracker.summary({k: v for k, v in summary.items() if isinstance(v, (int, float))})


def _pretrain(pretrain: dict, seed: int, tok, train_data, out, work_dir, tracker) -> dict:
    from longctx.models.llama import new_pretrain_model
    from longctx.train import TrainSettings, train

    p = pretrain
    model = new_pretrain_model(p, len(tok), tok.bos_token_id, tok.eos_token_id, seed)
    settings = TrainSettings(
        seq_len=p["context"], steps=p["steps"], batch_size=p["batch_size"], micro_batch_size=p["batch_size"],
        lr=p["lr"], warmup_steps=p["warmup_steps"], schedule="cosine", min_lr_ratio=0.1,
        weight_decay=0.1, grad_clip=1.0,
        checkpoint_every=max(p["steps"] // 4, 1), log_every=max(p["steps"] // 20, 1), seed=seed,
    )
    out = Path(out)
    summary = train(model, train_data, settings, out, work_dir or out.with_name(out.name + ".work"), tracker=tracker)
    tok.save_pretrained(out)
    return summary


# --- extended models ------------------------------------------------------------------------------


def extended_model(model_dir, variant: Variant, factors_file=None, device="cpu", dtype=None,
                   mixed_context: dict | None = None, as_saved: bool = False, length: int | None = None,
                   sliding_window="widen"):
    """Load a model folder and apply the variant's RoPE method (searched factors if given).

    ``length``: the longest sequence the stage runs; a sliding attention window is set for it as
    ``sliding_window`` (``model.sliding_window``) says (``longctx.models.widen_sliding_window``).

    ``mixed_context`` (the ``finetune.mixed_context`` settings, enabled): the RoPE is LongRoPE2's
    pair of factor sets, the original RoPE up to ``short_max_length`` tokens and the variant's beyond.
    ``as_saved``: the folder is the variant's own fine-tuned weights, which carry the RoPE they were
    trained with (and, after mixed context window training, its switch): it is used as saved.
    """
    from longctx.models import load_model, widen_sliding_window
    from longctx.rope import apply_to_model, geometry_of, rope_spec_of, with_original_rope_below

    model = load_model(model_dir, device=device, dtype=dtype)
    if length is not None:
        widen_sliding_window(model, length, sliding_window)
    if as_saved and rope_spec_of(model.config)["method"] == variant.method:
        return model
    params = dict(variant.params)
    if factors_file:
        found = read_json(factors_file)
        # a search result says which longrope parameters it gives (factors, or a chain's factor sets)
        params.update(found.get("rope_params") or {"factors": found["factors"], "n_hat": found["n_hat"]})
    if mixed_context:
        params = with_original_rope_below(variant.scale, params, geometry_of(model.config),
                                          1.0 if mixed_context["short_mscale"] == "original" else None,
                                          mixed_context["short_max_length"])
    if variant.method != "none":
        apply_to_model(model, variant.method, variant.scale, params)
    return model


def finetune(*, model: Path, data: Path, out: Path, variant: Variant, settings: dict, run: RunInfo,
             device: str = "auto", factors: Path | None = None, work_dir: Path | None = None,
             short_data: Path | None = None) -> None:
    """Fine-tune ``variant`` at its target length on the token files ``data`` (``finetune`` settings,
    then the variant's own). With ``mixed_context`` on, LongRoPE2's mixed context window training;
    its short windows come from ``short_data`` when given (``finetune.mixed_context.short_corpus``)."""
    from longctx.data import load_tokenizer
    from longctx.models import pick_device
    from longctx.train import TrainSettings, train

    settings = deep_merge(settings, variant.finetune_settings)
    if variant.finetune_steps:  # a progressive chain's step sets its own number of steps
        settings = {**settings, "steps": variant.finetune_steps}
    mixed = settings.get("mixed_context") or {}
    # finetune.length: a training length of its own (Giraffe: 4096 at every scale); else the target length
    target = settings.get("length") or variant.target_length(run.original_context)
    # loaded on the CPU: the trainer's strategy places it (one GPU, DDP, FSDP shards, DeepSpeed)
    extended = extended_model(model, variant, factors, device="cpu",
                              mixed_context=mixed if mixed.get("enabled") else None, length=target,
                              sliding_window=run.sliding_window)
    ts = TrainSettings.from_config(settings, seq_len=target, seed=run.seed)
    out = Path(out)
    logged = {k: v for k, v in settings.items() if k != "length"}  # the run's length is `target`
    with tracking.job(run, "finetune", variant, target, Path(data).parent.name, **logged) as tracker:
        summary = train(extended, data, ts, out, work_dir or out.with_name(out.name + ".work"), tracker=tracker,
                        device=pick_device(device).type, base_model_path=model,
                        short_data_prefix=short_data if mixed.get("enabled") else None)
        tracker.summary({"final_loss": summary["final_loss"]})
    if int(os.environ.get("RANK", "0")) == 0:  # the main process of a multi-process run writes it once
        load_tokenizer(model).save_pretrained(out)


def task_finetune(*, task: str, model: Path, out: Path, variant: Variant, settings: dict, dataset: dict,
                  run: RunInfo, device: str = "auto", factors: Path | None = None,
                  work_dir: Path | None = None) -> None:
    """Supervised fine-tuning of ``variant``'s weights on (prompt, response) examples, the loss on the
    responses (``longctx.train.supervised``): ``govreport``, PI's fine-tune on GovReport's train split
    before ROUGE (``dataset``: ``longctx.evaluate.govreport.load_rows``'s arguments); ``instruct``,
    Giraffe's instruction fine-tune on conversations (``dataset``: the ``instruct.dataset`` section).
    ``settings``: the training settings with ``epochs`` and ``length`` (``longctx.config.task_settings``)."""
    from longctx.data import load_tokenizer
    from longctx.models import pick_device
    from longctx.train import TrainSettings, train
    from longctx.train.supervised import steps_for

    tok = load_tokenizer(model)
    length = settings["length"] or variant.target_length(run.original_context)
    examples = _task_examples(task, tok, dataset, length)  # the data's errors before the model loads
    steps = steps_for(len(examples), settings["epochs"], settings["batch_size"])
    ts = TrainSettings.from_config({**settings, "steps": steps}, seq_len=length, seed=run.seed)
    loaded = extended_model(model, variant, factors, device="cpu", as_saved=variant.finetune)
    out = Path(out)
    logged = {k: v for k, v in settings.items() if k != "length"}  # the run's length is `length`
    with tracking.job(run, f"finetune-{task}", variant, length, Path(dataset["path"]).name, examples=len(examples),
                      **logged) as tracker:
        summary = train(loaded, None, ts, out, work_dir or out.with_name(out.name + ".work"), tracker=tracker,
                        device=pick_device(device).type, base_model_path=model, examples=examples)
        tracker.summary({"final_loss": summary["final_loss"], "examples": len(examples)})
    if int(os.environ.get("RANK", "0")) == 0:
        tok.save_pretrained(out)


def _task_examples(task: str, tok, dataset: dict, length: int) -> list[dict]:
    if task == "govreport":
        from longctx.evaluate.govreport import finetune_examples, load_rows

        d = dataset
        rows = load_rows(d["path"], d["name"], d["split"], d["revision"], d["max_examples"], d["text_field"],
                         d["summary_field"])
        return finetune_examples(tok, rows, max_length=length, max_document_tokens=d["max_document_tokens"])
    if task == "instruct":
        from longctx.train.supervised import conversation_examples, load_conversations

        d = dataset
        rows = load_conversations(d["path"], d["name"], d["split"], d["revision"], d["max_examples"])
        return conversation_examples(tok, rows, d["field"], max_length=length, template=d["template"])
    raise ValueError(f"task_finetune: unknown task {task!r} (govreport, instruct)")


# --- LongRoPE search ------------------------------------------------------------------------------


def _search_bos(model_dir, settings: dict) -> int | None:
    """The BOS id each fitness row starts with (the model's tokenizer's, else its config's): None with
    ``search.bos`` off or no BOS token."""
    from longctx.data import load_tokenizer

    if not settings.get("bos", True):
        return None
    if (Path(model_dir) / "tokenizer_config.json").exists():
        return load_tokenizer(model_dir).bos_token_id
    return read_json(Path(model_dir) / "config.json").get("bos_token_id")


def _search_windows(data_prefix, length: int, settings: dict, seed: int, model_dir=None):
    """The fitness rows [R, length], the document ids and, for the needle fitness, where each row's
    answer starts; too few documents is an error (before any model). With ``search.bos`` a row is
    the model's BOS + the document's first length-1 tokens (LongRoPE's evolution/evaluate.py)."""
    import numpy as np
    import torch

    from longctx.data import TokenFile, load_tokenizer
    from longctx.search import needle_rows, pick_documents

    data = TokenFile.open(data_prefix)
    lengths = [int(b - a) for a, b in data.bounds]
    docs = pick_documents(lengths, length, settings["documents"], seed, f"search data {data.prefix}")
    ids = [data.meta["document_ids"][i] for i in docs]
    bos = _search_bos(model_dir, settings)
    if settings.get("fitness", "perplexity") != "needle":
        head = [] if bos is None else [bos]
        windows = torch.from_numpy(np.stack([np.asarray(head + data.document(i)[: length - len(head)].tolist(),
                                                        dtype=np.int64) for i in docs]))
        return windows, ids, None, None
    tok = load_tokenizer(model_dir)
    texts = [np.asarray(data.document(i)[:length], dtype=np.int64) for i in docs]
    seen = np.unique(np.concatenate(texts))
    breaks = [int(t) for t in seen if "\n" in tok.decode([int(t)])]  # tokens that end a line (needle placement)
    rows = needle_rows(texts, length, settings["needle"]["depths"], seed,
                       lambda text: tok.encode(text, add_special_tokens=False), bos, breaks)
    return rows.windows, ids, rows.answer_start, [{**r, "document": ids[r["document"]]} for r in rows.rows]


def _search_model(model_dir, settings: dict, device: str, run: RunInfo, length: int):
    """The model a search scores candidates with, its sliding window set for ``length`` tokens."""
    from longctx.models import load_model, pick_device, widen_sliding_window
    from longctx.rope import geometry_of
    from longctx.search import SearchError

    dev = pick_device(device)
    model = load_model(model_dir, device=dev, dtype=settings.get("dtype") or ("bfloat16" if dev.type == "cuda" else None))
    geometry = geometry_of(model.config)
    if geometry.original_context != run.original_context:
        raise SearchError(f"{model_dir}: the model's original context is {geometry.original_context}, the config "
                          f"says {run.original_context} (model.original_context)")
    widen_sliding_window(model, length, run.sliding_window)
    return model, geometry


def _search_progress(tracker):
    def progress(row):
        tracker.log({"search/best_perplexity": row["best_perplexity"], "search/mean_perplexity": row["mean_perplexity"],
                     "search/evaluated": row["evaluated"], "search/abandoned": row["abandoned"],
                     "search/best_n_hat": row["best_n_hat"]}, step=row["iteration"])

    return progress


HISTORY_COLUMNS = ["iteration", "best_perplexity", "mean_perplexity", "evaluated", "abandoned", "best_n_hat", "seconds"]


def _search_summary(tracker, record: dict) -> None:
    """The best factor curve against the seeds, the per-iteration table and the final numbers."""
    names = {"pi": "PI", "ntk": "NTK-aware", "yarn": "YaRN"}
    series = {names.get(k, k): list(enumerate(v)) for k, v in record["seeds"].items()}
    series["searched (best)"] = list(enumerate(record["factors"]))
    tracker.line_series("search/factors", series, f"LongRoPE factors at {record['length']} tokens", "dimension pair i")
    tracker.table("search/history", HISTORY_COLUMNS, [[h[k] for k in HISTORY_COLUMNS] for h in record["history"]])
    tracker.summary({"best_perplexity": record["perplexity"], "n_hat": record["n_hat"],
                     "evaluated": record["evaluated"], "abandoned": record["abandoned"],
                     **{f"timing/{k}": v for k, v in record["timing"].items() if v is not None}})


def search(*, model: Path, data: Path, out: Path, variant: Variant, settings: dict, run: RunInfo,
           device: str = "auto", log_file: Path | None = None, base_factors: Path | None = None,
           chunk_size: int = 4096) -> None:
    """LongRoPE factor search at the variant's target length on validation documents.

    With ``base_factors`` (the search result a model was fine-tuned with), a secondary search: the
    new factors multiply those (a progressive chain's later step, ``longctx.config.chain_variants``).
    """
    from longctx.search import plain_task, run_search, secondary_task, settings_at

    target = variant.target_length(run.original_context)
    settings = settings_at(deep_merge(settings, variant.search_settings), target)
    windows, doc_ids, answer_start, needles = _search_windows(data, target, settings, run.seed, model)
    loaded, geometry = _search_model(model, settings, device, run, target)
    params = {k: v for k, v in variant.params.items() if k not in SEARCH_RESULT_PARAMS}
    if base_factors:
        tuned = read_json(base_factors)
        task = secondary_task(geometry, variant.scale, tuned.get("rope_scale", tuned["scale"]), tuned["factors"],
                              settings, params)
    else:
        task = plain_task(geometry, variant.scale, settings, params)
    log_file = Path(log_file or Path(out).with_suffix(".log.jsonl"))
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with tracking.job(run, "search", variant, target, Path(data).parent.name, search_kind=task.kind,
                      **settings) as tracker:
        record = run_search(loaded, windows, task, settings, run.seed, log_file, _search_progress(tracker),
                            chunk_size, answer_start=answer_start)
        _search_summary(tracker, record)
    write_json(out, {**record, "documents": doc_ids, "fitness": settings.get("fitness", "perplexity"),
                     "bos": _search_bos(model, settings) is not None,
                     **({"needles": needles} if needles else {})})


def recovery(*, model: Path, data: Path, out: Path, variant: Variant, settings: dict, run: RunInfo,
             long_factors: Path, device: str = "auto", log_dir: Path | None = None, chunk_size: int = 4096) -> None:
    """Short-context recovery: a factor set per recovery length for the chain's final model, which
    then carries them all with the long set (``longctx.search.final_record``)."""
    from longctx.search import final_record, recovery_task, run_search, settings_at

    long_record = read_json(long_factors)
    long_params = long_record["rope_params"]
    lengths = [int(x) for x in variant.recovery_lengths]
    settings = deep_merge(settings, variant.search_settings)
    per_length = {n: settings_at(settings, n) for n in lengths}
    windows = {n: _search_windows(data, n, per_length[n], run.seed, model) for n in lengths}  # all checked first
    loaded, geometry = _search_model(model, settings, device, run, max(lengths))
    params = {k: v for k, v in variant.params.items() if k not in SEARCH_RESULT_PARAMS}
    log_dir = Path(log_dir or Path(out).parent)
    log_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for n in lengths:
        task = recovery_task(geometry, n, variant.scale, {"factors": long_params["factors"],
                                                          "n_hat": long_params["n_hat"]},
                             per_length[n], params, variant.recovery_lambda_max)
        with tracking.job(run, "search", variant, n, Path(data).parent.name, search_kind=task.kind,
                          **per_length[n]) as tracker:
            record = run_search(loaded, windows[n][0], task, per_length[n], run.seed, log_dir / f"recovery-{n}.jsonl",
                                _search_progress(tracker), chunk_size, answer_start=windows[n][2])
            _search_summary(tracker, record)
        records.append({**record, "documents": windows[n][1]})
    write_json(out, final_record(long_record, records, variant.recovery_of))


# --- evaluation and the report --------------------------------------------------------------------


def evaluate(*, evaluation: str, model: Path, variant: Variant, lengths: list[int], outs: list[Path],
             settings: dict, run: RunInfo, device: str = "auto", data: Path | None = None,
             factors: Path | None = None, task_model: Path | None = None) -> None:
    """One evaluation of one variant at each of ``lengths``, one JSON each (``outs``, in the same order);
    ``task_model``: the variant's weights fine-tuned for this evaluation (PI's GovReport), read instead.

    The model loads once for all lengths. Each result records the fingerprint of what made it (the
    extended model - weights and RoPE -, the settings, the data, the seed, the length); a result
    already on disk with the same fingerprint is kept, not recomputed, so one job can serve several
    lengths and still recompute only what changed. Non-finite metrics are recorded as diverged."""
    plan = [{"evaluation": evaluation, "lengths": lengths, "outs": outs, "settings": settings,
             "reads_data": data is not None, **({"model": task_model} if task_model else {})}]
    evaluate_variant(model=model, variant=variant, plan=plan, run=run, device=device, data=data, factors=factors)


def evaluate_variant(*, model: Path, variant: Variant, plan: list, run: RunInfo, device: str = "auto",
                     data: Path | None = None, factors: Path | None = None) -> None:
    """Several evaluations of one variant in one process (``evaluate.one_job_per: variant``): ``plan``
    lists, per evaluation, its ``evaluation`` name, ``lengths``, ``outs`` (one JSON per length),
    ``settings``, ``reads_data`` (whether it reads the token files at ``data``) and maybe ``model`` (a
    task fine-tune of the variant's weights it reads instead). Each model loads once; each result is
    fingerprinted and kept as ``evaluate`` does, so a result made in one job grouping is kept under another."""
    from longctx import provenance
    from longctx.data import load_tokenizer
    from longctx.evaluate import EVALUATIONS, EvaluationError
    from longctx.models import pick_device

    for item in plan:  # before the model loads
        if item["evaluation"] not in EVALUATIONS:
            raise EvaluationError(f"unknown evaluation {item['evaluation']!r}; known: {', '.join(sorted(EVALUATIONS))}")
        if len(item["lengths"]) != len(item["outs"]):
            raise EvaluationError(f"evaluate {item['evaluation']}: {len(item['lengths'])} lengths but "
                                  f"{len(item['outs'])} output files")
        if item.get("reads_data") and data is None:
            raise EvaluationError(f"evaluate {item['evaluation']}: it reads token files, but no --data was given")
    tok = load_tokenizer(model)
    data_digest = provenance.token_file_digest(data) if data is not None else None
    for folder in dict.fromkeys(str(item.get("model") or model) for item in plan):
        # a fine-tuned folder carries the RoPE it was trained with (and its length switch)
        trained = variant.finetune or variant.instruct_of is not None or folder != str(model)
        items = [i for i in plan if str(i.get("model") or model) == folder]
        loaded = extended_model(folder, variant, factors, device=pick_device(device), as_saved=trained,
                                length=_longest_sequence(items), sliding_window=run.sliding_window)
        _evaluate_items(loaded, tok, variant, items, run, data, data_digest)
        del loaded


def _evaluate_items(loaded, tok, variant: Variant, plan: list, run: RunInfo, data, data_digest) -> None:
    from longctx import provenance

    model_digest = provenance.model_digest(loaded)
    for item in plan:
        evaluation, settings = item["evaluation"], item["settings"]
        item_data = data if item.get("reads_data") else None
        inputs = {"model": model_digest, "evaluation": evaluation, "seed": run.seed,
                  "settings": provenance.digest(settings), "data": data_digest if item_data else None}
        for length, out in zip(item["lengths"], map(Path, item["outs"])):
            fingerprint = provenance.digest({**inputs, "length": int(length)})
            if _kept(out, fingerprint):
                log.info("%s of %s at %d: kept %s (made from the same inputs)", evaluation, variant.name, length, out)
                continue
            write_json(out, {**_evaluate_one(evaluation, loaded, tok, variant, int(length), settings, run, item_data),
                             "fingerprint": fingerprint})


def _longest_sequence(plan: list) -> int:
    """The most tokens a sequence of this plan holds: its longest length plus the most tokens any of its
    evaluations generates after a prompt of that length (RULER fits its answer within the length)."""
    budgets = [0]
    for item in plan:
        budget = item["settings"].get("max_new_tokens")
        budgets += list(budget.values()) if isinstance(budget, dict) else [budget] if isinstance(budget, int) else []
    return max(int(n) for item in plan for n in item["lengths"]) + max(budgets)


def _kept(out: Path, fingerprint: str) -> bool:
    """Whether ``out`` holds a result of exactly these inputs (a corrupt or older one is recomputed)."""
    from longctx.artifacts import ArtifactError

    try:
        return Path(out).exists() and read_json(out).get("fingerprint") == fingerprint
    except ArtifactError:
        return False


def _evaluate_one(evaluation: str, loaded, tok, variant: Variant, length: int, settings: dict, run: RunInfo,
                  data) -> dict:
    from longctx.evaluate import EVALUATIONS
    from longctx.evaluate.registry import record_non_finite

    dataset = Path(data).parent.name if data else evaluation
    with tracking.job(run, f"eval-{evaluation}", variant, length, dataset, **settings) as tracker:
        result = EVALUATIONS[evaluation](loaded, tok, length, data_prefix=data, seed=run.seed, **settings)
        result["variant"] = variant.name
        result["rope"] = loaded.config.rope_parameters.get("rope_type")
        result.setdefault("dataset", dataset)
        record_non_finite(result)
        if result.get("diverged"):
            log.warning("%s of %s at %d is not finite (%s): recorded as diverged", evaluation, variant.name,
                        length, ", ".join(result["diverged"]))
        tracking.log_evaluation(tracker, result, variant)
    return result


def report(*, results: list[Path], variants: list[Variant], run: RunInfo, dataset: str, out_md: Path,
           out_csv: Path, out_html: Path | None = None, plots: Path | None = None, search: list[Path] = (),
           dataset_id: list[str] = (), finetune_steps: int | None = None,
           effective_length_threshold: float = 85.6) -> None:
    """summary.csv, report.md/.html and plots; one W&B ``report`` run logs the cross-method tables.

    ``dataset`` names the perplexity corpus and ``dataset_id`` its other names (hub path, folder),
    so the papers' rows for PG19 or Proof-pile can be matched; ``effective_length_threshold`` is RULER's
    (``report.effective_length_threshold``)."""
    from longctx.report import write_report
    from longctx.report.paper_numbers import Setting

    loaded = [read_json(p) for p in results]
    datasets = {}
    for r in loaded:  # what names each evaluation's data: its dataset, and the evaluation's own name
        datasets.setdefault(r["eval"], set()).update(
            [r["eval"], r.get("dataset") or (dataset if r["eval"] == "perplexity" else r["eval"])])
    datasets.setdefault("perplexity", set()).update([dataset, *dataset_id])
    setting = Setting(model=run.model, datasets={k: sorted(v) for k, v in datasets.items()},
                      finetune_steps=finetune_steps)
    with tracking.job(run, "report", dataset=dataset, results=len(results)) as tracker:
        write_report(results, [v.to_dict() for v in variants], run.to_dict(), dataset, out_md, out_csv, out_html,
                     plots, search, setting, tracker, {"effective_length_threshold": effective_length_threshold})


def compare(*, summaries: list[Path], out_md: Path, out_csv: Path | None = None) -> None:
    """Several experiments' summary.csv side by side (``results/compare.md``)."""
    from longctx.report import compare as side_by_side

    side_by_side(summaries, out_md, out_csv)


JOBS = (tokenizer, prepare, base_model, finetune, task_finetune, search, recovery, evaluate, evaluate_variant, report,
        compare)

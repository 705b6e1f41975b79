"""The workflow's entry points: one function per rule, explicit arguments, outputs written atomically.

Rules call these through ``python -m longctx <stage> ...`` (see ``cli.py``); each is usable from
Python too. ``run`` is the small dict of experiment facts every job logs (experiment, model,
original context, seed); ``variant`` is a ``longctx.config.Variant`` as a dict.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from longctx import tracking
from longctx.io import read_json, write_json

log = logging.getLogger(__name__)


def _variant_label(variant: dict, stage: str) -> str:
    return f"{variant['name']}/{stage}"


def stage_tokenizer(config: dict, out_dir) -> None:
    from longctx.model import prepare_tokenizer

    prepare_tokenizer(config, out_dir)


def stage_prepare(corpus: dict, split: str, tokenizer_dir, out_prefix, run: dict) -> None:
    from longctx.data import prepare_split

    with tracking.start("prepare", f"prepare/{Path(out_prefix).parent.name}/{split}",
                        tracking.run_config(run, "prepare", split=split)) as tracker:
        meta = prepare_split(corpus, split, tokenizer_dir, out_prefix)
        tracker.summary({"documents": meta["documents"], "tokens": meta["tokens"]})


def stage_base_model(config: dict, tokenizer_dir, out_dir, train_prefix, run: dict, work_dir=None) -> None:
    from longctx.model import prepare_base_model

    stage = "pretrain" if config["model"]["source"] == "pretrain" else "import"
    with tracking.start(stage, f"base/{stage}", tracking.run_config(run, stage, {"name": "base", "method": "none",
                                                                                  "scale": 1.0, "finetune": False}),
                        ) as tracker:
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
        params.update({"factors": found["factors"], "n_hat": found["n_hat"]})
    if variant["method"] != "none":
        # a fine-tuned folder already carries this method; applying it again gives the same RoPE
        apply_to_model(model, variant["method"], variant["scale"], params)
    return model


def stage_finetune(model_dir, train_prefix, out_dir, variant: dict, settings: dict, original_context: int,
                   run: dict, seed: int, device: str = "auto", factors_file=None, work_dir=None) -> None:
    from longctx.model import pick_device
    from longctx.train import TrainSettings, train

    target = int(round(variant["scale"] * original_context))
    model = _extended_model(model_dir, variant, factors_file, device="cpu")
    model.to(pick_device(device))
    ts = TrainSettings(
        seq_len=target, seed=seed,
        **{k: settings[k] for k in ("steps", "batch_size", "micro_batch_size", "lr", "warmup_steps", "schedule",
                                    "betas", "weight_decay", "grad_clip", "gradient_checkpointing",
                                    "checkpoint_every", "log_every")},
    )
    out_dir = Path(out_dir)
    with tracking.start("finetune", _variant_label(variant, "finetune"),
                        tracking.run_config(run, "finetune", variant, target, **settings)) as tracker:
        summary = train(model, train_prefix, ts, out_dir, work_dir or out_dir.with_name(out_dir.name + ".work"),
                        tracker=tracker)
        tracker.summary({"final_loss": summary["final_loss"]})
    from longctx.data import load_tokenizer

    load_tokenizer(model_dir).save_pretrained(out_dir)


def stage_search(model_dir, data_prefix, out_file, variant: dict, settings: dict, original_context: int,
                 run: dict, seed: int, device: str = "auto", log_file=None, chunk_size: int = 4096) -> None:
    """LongRoPE factor search at the variant's target length on validation documents."""
    from longctx.data import TokenFile
    from longctx.evaluate.perplexity import select_documents, window_nll
    from longctx.model import load_model, pick_device
    from longctx.rope import apply_to_model, geometry_of
    from longctx.search import evolutionary_search, seed_factors, space_for

    import numpy as np
    import torch

    target = int(round(variant["scale"] * original_context))
    model = load_model(model_dir, device=pick_device(device))
    geometry = geometry_of(model.config)
    data = TokenFile.open(data_prefix)
    docs = select_documents(data, target, settings["documents"], settings["documents"])
    windows = torch.from_numpy(np.stack([np.asarray(data.document(i)[:target], dtype=np.int64) for i in docs]))
    windows = windows.to(next(model.parameters()).device)
    params = {k: v for k, v in variant["params"].items() if k not in ("factors", "n_hat")}

    def fitness(n_hat: int, factors: list[float]) -> float:
        apply_to_model(model, "longrope", variant["scale"], {**params, "factors": factors, "n_hat": n_hat})
        nll = []
        for row in windows:
            sums, n = window_nll(model, row[None], chunk_size=chunk_size)
            nll.append(sums[0] / n)
        return math.exp(float(np.mean(nll)))

    space = space_for(geometry, variant["scale"], settings)
    seeds = list(seed_factors(geometry, variant["scale"]).values())
    log_file = Path(log_file or Path(out_file).with_suffix(".log.jsonl"))
    with tracking.start("search", _variant_label(variant, "search"),
                        tracking.run_config(run, "search", variant, target, **settings)) as tracker:
        result = evolutionary_search(
            fitness, space, seeds, settings, seed, log_file,
            progress=lambda row: tracker.log({"search/best_perplexity": row["best_perplexity"],
                                              "search/mean_perplexity": row["mean_perplexity"],
                                              "search/evaluated": row["evaluated"]}, step=row["iteration"]),
        )
        tracker.summary({"best_perplexity": result["perplexity"], "n_hat": result["n_hat"]})
    write_json(out_file, {"method": "longrope", "scale": variant["scale"], "length": target,
                          "documents": [data.meta["document_ids"][i] for i in docs], **result})


def stage_evaluate(eval_name: str, model_dir, out_file, variant: dict, length: int, settings: dict, run: dict,
                   seed: int, device: str = "auto", data_prefix=None, factors_file=None) -> None:
    from longctx.data import load_tokenizer
    from longctx.evaluate import EVALUATIONS
    from longctx.model import pick_device

    model = _extended_model(model_dir, variant, factors_file, device=pick_device(device))
    tokenizer = load_tokenizer(model_dir)
    with tracking.start(f"eval-{eval_name}", f"{variant['name']}/eval-{eval_name}/{length}",
                        tracking.run_config(run, f"eval-{eval_name}", variant, length, **settings)) as tracker:
        result = EVALUATIONS[eval_name](model, tokenizer, length, data_prefix=data_prefix, seed=seed, **settings)
        result["variant"] = variant["name"]
        result["rope"] = model.config.rope_parameters.get("rope_type")
        tracker.summary(result["metrics"])
        tracker.table(f"eval/{eval_name}", ["variant", "method", "scale", "length", "metric", "value"],
                      [[variant["name"], variant["method"], variant["scale"], length, k, v]
                       for k, v in result["metrics"].items()])
    write_json(out_file, result)

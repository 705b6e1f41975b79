#!/usr/bin/env python
"""Benchmark the LongRoPE search: wall time and candidates per minute at a model, length and population.

Runs the workflow's own search (``longctx.search``: the same fitness, batching, early abandoning
and algorithm as the ``search`` stage) on

- a Hugging Face model folder (``--model DIR``, e.g. ``results/<exp>/models/base``), or a GGUF
  file (``--model FILE.gguf``, needs the ``gguf`` package), or
- random weights of a known shape (``--random smollm2``: SmolLM2-135M's shape, the same FLOPs as
  the real model; ``--random tiny``: a 2-layer model for a quick check),

scoring documents from prepared token files (``--data PREFIX``), from text files tokenized with
the model's tokenizer (``--text data/austen/*.txt``, one document per file), or random tokens.
Defaults are the paper's (P=64, T=40, N1=N2=16, 32 parents, 5 documents), read from the config
schema. ``--budget-seconds`` stops the search when the time is up and reports the rate so far.

Needs only torch, transformers, numpy and pyyaml (no snakemake, wandb or datasets):

    PYTHONUNBUFFERED=1 python scripts/bench_search.py --random smollm2 --length 32768 \\
        --original-context 8192 --budget-seconds 300 --out bench.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

log = logging.getLogger("bench_search")

RANDOM_SHAPES = {
    # SmolLM2-135M (HuggingFaceTB/SmolLM2-135M's config): 30 layers, hidden 576, 9 heads, 3 KV heads, head dim 64
    "smollm2": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=128, rope_theta=10000.0),
}


class OutOfTime(Exception):
    pass


class TimedFitness:
    """A fitness that stops the search once ``budget`` seconds have passed (between calls)."""

    def __init__(self, fitness, budget: float | None):
        self.fitness, self.budget = fitness, budget
        self.started = time.time()
        self.candidates = 0
        self.seconds = 0.0

    @property
    def batch(self):
        return self.fitness.batch

    def evaluate(self, candidates, cutoff=None):
        if self.budget is not None and time.time() - self.started > self.budget:
            raise OutOfTime
        t = time.time()
        out = self.fitness.evaluate(candidates, cutoff)
        _sync()
        self.seconds += time.time() - t
        self.candidates += len(candidates)
        return out


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def search_defaults() -> dict:
    """The ``search`` section's defaults (the paper's values) from the config schema."""
    from importlib import resources

    import yaml

    schema = yaml.safe_load(resources.files("longctx").joinpath("schema.yaml").read_text())
    return {k: v["default"] for k, v in schema["properties"]["search"]["properties"].items() if "default" in v}


def load(args, device, dtype):
    """(model, tokenizer or None)."""
    import torch

    if args.random:
        from transformers import LlamaConfig, LlamaForCausalLM

        shape = dict(RANDOM_SHAPES[args.random])
        theta = shape.pop("rope_theta")
        torch.manual_seed(0)
        cfg = LlamaConfig(**shape, rope_parameters={"rope_type": "default", "rope_theta": theta},
                          tie_word_embeddings=True)
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
        return model.to(dtype).eval(), None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(args.model)
    kwargs = {"dtype": dtype}
    where = path
    if path.suffix == ".gguf":
        try:
            import gguf  # noqa: F401
        except ImportError:
            sys.exit(f"{path}: loading GGUF needs the gguf package; convert it to a model folder once where gguf is "
                     f"installed (the workflow's base_model stage writes one) and pass that folder")
        where, kwargs["gguf_file"] = path.parent, path.name
    elif not (path / "config.json").exists():
        sys.exit(f"--model {path}: neither a model folder (config.json) nor a .gguf file")
    model = AutoModelForCausalLM.from_pretrained(str(where), **kwargs)
    for attr in ("quantization_config", "_pre_quantization_dtype"):  # a GGUF load's marker
        if hasattr(model.config, attr):
            delattr(model.config, attr)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(where), **({"gguf_file": kwargs["gguf_file"]}
                                                               if "gguf_file" in kwargs else {}))
    except Exception as e:  # a folder without a tokenizer still benchmarks, on random tokens
        log.warning("no tokenizer at %s (%s): scoring random tokens", where, e)
        tokenizer = None
    return model.to(device).eval(), tokenizer


def documents(args, tokenizer, vocab_size: int, length: int, count: int, seed: int):
    """[count, length] token windows and where they came from."""
    import numpy as np
    import torch

    from longctx.search import pick_documents

    if args.data:
        from longctx.data import TokenFile

        data = TokenFile.open(args.data)
        lengths = [int(b - a) for a, b in data.bounds]
        docs = pick_documents(lengths, length, count, seed, f"--data {args.data}")
        rows = [np.asarray(data.document(i)[:length], dtype=np.int64) for i in docs]
        return torch.from_numpy(np.stack(rows)), f"{args.data}: documents {docs}"
    if args.text:
        if tokenizer is None:
            sys.exit("--text needs a model with a tokenizer")
        encoded = [tokenizer(Path(p).read_text(), add_special_tokens=False)["input_ids"] for p in args.text]
        docs = pick_documents([len(e) for e in encoded], length, count, seed, "--text files")
        rows = [np.asarray(encoded[i][:length], dtype=np.int64) for i in docs]
        return torch.from_numpy(np.stack(rows)), "text: " + ", ".join(Path(args.text[i]).name for i in docs)
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab_size, (count, length), generator=generator), "random tokens"


def main(argv=None) -> int:
    defaults = search_defaults()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="a model folder (safetensors) or a .gguf file")
    src.add_argument("--random", choices=sorted(RANDOM_SHAPES), help="random weights of this shape")
    data = p.add_mutually_exclusive_group()
    data.add_argument("--data", help="token files prefix (results/<exp>/data/<corpus>/<split>)")
    data.add_argument("--text", nargs="+", help="text files, one document each, tokenized with the model's tokenizer")
    p.add_argument("--length", type=int, required=True, help="target length in tokens")
    p.add_argument("--original-context", type=int, help="L (default: the model's max_position_embeddings)")
    for key in ("population", "iterations", "mutations", "crossovers", "parents", "documents", "batch_tokens"):
        p.add_argument("--" + key.replace("_", "-"), type=int, default=defaults[key])
    p.add_argument("--no-early-abandon", action="store_true")
    p.add_argument("--no-compile", action="store_true", help="run the decoder layers eagerly (default: compiled on CUDA)")
    p.add_argument("--sdpa-backend", choices=["auto", "flash", "efficient", "cudnn", "math"], default="auto")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default=None,
                   help="default: bfloat16 on a GPU, float32 on CPU")
    p.add_argument("--device", default=None, help="default: cuda if available")
    p.add_argument("--chunk-size", type=int, default=4096, help="LM head chunk (tokens)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--budget-seconds", type=float, help="stop the search after this long and report the rate so far")
    p.add_argument("--log-file", help="candidate log (default: a fresh temporary file, so nothing is replayed)")
    p.add_argument("--out", help="write the figures as JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)

    import torch
    import transformers

    from longctx.rope import geometry_of
    from longctx.search import PerplexityFitness, evolutionary_search, plain_task, settings_at

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    settings = {**defaults, **{k: getattr(args, k) for k in ("population", "iterations", "mutations", "crossovers",
                                                              "parents", "documents", "batch_tokens")},
                "early_abandon": not args.no_early_abandon, "sdpa_backend": args.sdpa_backend,
                "compile": not args.no_compile}
    settings = settings_at(settings, args.length)
    if settings["parents"] > settings["population"]:
        sys.exit("--parents cannot exceed --population")

    t0 = time.time()
    model, tokenizer = load(args, device, dtype)
    if args.original_context:
        model.config.max_position_embeddings = args.original_context
    geometry = geometry_of(model.config)
    scale = args.length / geometry.original_context
    if scale <= 1:
        sys.exit(f"--length {args.length} must be above the original context {geometry.original_context}")
    task = plain_task(geometry, scale, settings)
    if task.length != args.length:
        sys.exit(f"--length {args.length} is not a whole multiple of 1/{geometry.original_context}")
    windows, source = documents(args, tokenizer, model.config.vocab_size, args.length, settings["documents"],
                                args.seed)
    loaded = time.time() - t0
    fitness = PerplexityFitness(model, windows, task, batch_tokens=settings["batch_tokens"],
                                chunk_size=args.chunk_size, sdpa_backend=settings["sdpa_backend"],
                                compile=settings["compile"])
    timed = TimedFitness(fitness, args.budget_seconds)
    log_file = Path(args.log_file) if args.log_file else Path(tempfile.mkdtemp()) / "candidates.jsonl"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    print(f"model {args.model or 'random ' + args.random} ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M "
          f"parameters, {dtype}, attention {model.config._attn_implementation}, SDPA backend {args.sdpa_backend}, "
          f"{'compiled' if fitness.compiled else 'eager'} layers) "
          f"on {torch.cuda.get_device_name(device) if device.type == 'cuda' else device}; torch {torch.__version__}, "
          f"transformers {transformers.__version__}", flush=True)
    print(f"search at {args.length} tokens (s = {scale:g}, L = {geometry.original_context}), P={settings['population']} "
          f"T={settings['iterations']} N1={settings['mutations']} N2={settings['crossovers']} "
          f"parents={settings['parents']}, {settings['documents']} documents ({source}); {fitness.rows} rows and "
          f"{fitness.batch} candidate(s) per forward, early abandoning {'on' if settings['early_abandon'] else 'off'}",
          flush=True)

    started = time.time()
    result, stopped = None, False
    try:
        result = evolutionary_search(timed, task.space, list(task.seeds.values()), settings, args.seed, log_file,
                                     early_abandon=settings["early_abandon"])
    except OutOfTime:
        stopped = True
    _sync()
    wall = time.time() - started
    rows = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]
    seeds = {name: rows[i]["perplexity"] for i, name in enumerate(task.seeds) if i < len(rows)}
    figures = {
        "model": args.model or f"random:{args.random}", "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__, "transformers": transformers.__version__, "dtype": str(dtype).split(".")[-1],
        "attention": model.config._attn_implementation, "sdpa_backend": args.sdpa_backend,
        "compiled": fitness.compiled, "length": args.length, "original_context": geometry.original_context,
        "scale": scale, "documents": source,
        "settings": {k: settings[k] for k in ("population", "iterations", "mutations", "crossovers", "parents",
                                              "documents", "batch_tokens", "early_abandon")},
        "rows_per_forward": fitness.rows, "candidates_per_forward": fitness.batch,
        "load_seconds": loaded, "wall_seconds": wall, "stopped_by_budget": stopped,
        "candidates": len(rows), "abandoned": sum(not r.get("complete", True) for r in rows),
        "candidates_per_minute": 60 * len(rows) / wall if wall > 0 else None,
        "seconds_per_candidate": timed.seconds / max(timed.candidates, 1),
        "forwards": fitness.forwards, "tokens_per_second": fitness.tokens / timed.seconds if timed.seconds else None,
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "seed_perplexity": seeds,
        "best_perplexity": result["perplexity"] if result else min((r["perplexity"] for r in rows), default=None),
        "iterations_done": len(result["history"]) if result else None,
    }
    if result is None and rows:
        # the whole search's expected size, for an estimate of its wall time at this rate
        planned = settings["population"] + settings["iterations"] * (settings["mutations"] + settings["crossovers"])
        figures["estimated_full_search_minutes"] = planned / figures["candidates_per_minute"]
    print(json.dumps(figures, indent=2), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if all(math.isfinite(v) for v in seeds.values()) or not seeds else 1


if __name__ == "__main__":
    sys.exit(main())

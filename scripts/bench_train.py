#!/usr/bin/env python
"""Training throughput of the longctx trainer beside the plain transformers path, in one run.

For a model shape (random weights), a length and a strategy, each row builds a fresh model, runs
``--warmup`` optimizer steps and times ``--steps`` more; the table gives medians: tokens/s,
TFLOP/s, MFU and peak GPU memory.

Rows (``--row``, repeatable; default: the three below):
  transformers                         the plain path: SDPA, full logits (``model(labels=...)``),
                                       activation checkpointing, torch AdamW
  longctx                              longctx.train.Trainer with the run's settings
  longctx:gradient_checkpointing=true  the same with settings overridden (``key=value;key=value``;
                                       keys of longctx.train.TrainSettings, e.g. sdpa_backends=cudnn,flash
                                       attention=flex_attention, chunk_size=8192, compile=true)

FLOP convention (MFU): 6 x parameters + causal attention at half (6 x layers x heads x head_dim x
length per token); recomputation (activation checkpointing) is not counted.

Examples:
  python scripts/bench_train.py --shape smollm2-135m --length 32768
  python scripts/bench_train.py --shape tinyllama-1.1b --length 16384 --row longctx \\
      --row "longctx:sdpa_backends=cudnn,flash"
  torchrun --nproc-per-node 2 scripts/bench_train.py --shape llama2-7b --length 65536 --strategy fsdp \\
      --row longctx:gradient_checkpointing=true
  python scripts/bench_train.py --device cpu --shape tiny --length 64 --steps 2 --warmup 1   # a CPU check
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import torch

# shapes with random weights (the hub configs' numbers)
SHAPES = {
    "tiny": dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=64, rope_theta=10000.0, tie_word_embeddings=True),
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                         rope_theta=100000.0, tie_word_embeddings=True, rms_norm_eps=1e-5),
    "tinyllama-1.1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                           num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
                           rope_theta=10000.0, tie_word_embeddings=False, rms_norm_eps=1e-5),
    "llama2-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                      rope_theta=10000.0, tie_word_embeddings=False, rms_norm_eps=1e-5),
}
DEFAULT_ROWS = ("transformers", "longctx", "longctx:gradient_checkpointing=true")
RUN_LEVEL = {"strategy", "sequence_parallel", "precision", "micro_batch_size", "batch_size", "cpu_offload",
             "seq_len", "steps"}  # one Accelerator per process: these are the run's, not a row's


def model_config(shape: str, length: int):
    """A transformers config for a named shape or a config.json path; RoPE linearly scaled past its context."""
    from transformers import AutoConfig, LlamaConfig

    if shape in SHAPES:
        kw = dict(SHAPES[shape])
        theta = kw.pop("rope_theta")
        config = LlamaConfig(**kw, rope_parameters={"rope_type": "default", "rope_theta": theta})
    else:
        path = Path(shape)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise SystemExit(f"--shape: {shape} is neither a named shape ({', '.join(SHAPES)}) nor a config.json")
        d = json.loads(path.read_text())
        config = AutoConfig.for_model(d.pop("model_type"), **d)
    original = config.max_position_embeddings
    if length > original:  # as a context-extension run would (PI), so the rotary tables cover the length
        theta = (config.rope_parameters or {}).get("rope_theta", getattr(config, "rope_theta", 10000.0))
        config.rope_parameters = {"rope_type": "linear", "factor": length / original, "rope_theta": theta}
        config.max_position_embeddings = length
    return config


def new_model(config, device, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def parse_row(spec: str) -> tuple[str, dict]:
    """``name`` or ``name:key=value;key=value`` -> (name, overrides)."""
    from longctx.train import LoraSettings, TrainSettings

    name, _, rest = spec.partition(":")
    if name not in ("transformers", "longctx"):
        raise SystemExit(f"--row {spec!r}: a row is 'transformers' or 'longctx[:key=value;...]'")
    types = {f.name: f.type for f in fields(TrainSettings)}
    overrides = {}
    for item in filter(None, rest.split(";")):
        key, _, value = item.partition("=")
        if key.startswith("lora."):
            lora_keys = {f.name for f in fields(LoraSettings)}
            if key[5:] not in lora_keys:
                raise SystemExit(f"--row {spec!r}: unknown LoRA setting {key}")
            overrides.setdefault("lora", {})[key[5:]] = _value(value)
            continue
        if key not in types:
            raise SystemExit(f"--row {spec!r}: {key!r} is not a TrainSettings field")
        if key in RUN_LEVEL:
            raise SystemExit(f"--row {spec!r}: {key} is set for the whole run (--{key.replace('_', '-')})")
        v = _value(value)
        overrides[key] = tuple(v.split(",")) if key == "sdpa_backends" and isinstance(v, str) else v
    return name, overrides


def _value(text: str):
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def random_batch(config, batch: int, length: int, documents: int, generator: torch.Generator):
    """Random tokens; ``documents`` > 1 cuts each row into that many documents at random points."""
    from longctx.train import PackedBatch

    ids = torch.randint(0, config.vocab_size, (batch, length), generator=generator)
    segments = torch.zeros(batch, length, dtype=torch.long)
    if documents > 1:
        for row in segments:
            cuts = torch.randperm(length - 1, generator=generator)[: documents - 1] + 1
            for c in cuts.tolist():
                row[c:] += 1
    return PackedBatch(ids, segments)


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _reset_memory(device):
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device):
    return torch.cuda.max_memory_allocated() / 2**30 if torch.device(device).type == "cuda" else None


def run_transformers(config, args, device) -> dict:
    """The plain path: SDPA, full logits and loss inside the model, activation checkpointing."""
    from longctx.train import activation_checkpointing

    model = new_model(config, device)
    model.set_attn_implementation("sdpa")
    activation_checkpointing(model, True)
    model.config.use_cache = False
    precision = _precision(args, device)
    if precision == "bf16-pure":
        model.to(torch.bfloat16)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=0.0)
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")
    generator = torch.Generator().manual_seed(1)
    accum = args.batch_size // args.micro_batch_size
    times = []
    try:
        for k in range(args.warmup + args.steps):
            batches = [random_batch(config, args.micro_batch_size, args.length, 1, generator).input_ids.to(device)
                       for _ in range(accum)]
            _sync(device)
            t = time.perf_counter()
            for ids in batches:
                with autocast:
                    loss = model(input_ids=ids, labels=ids).loss / accum
                loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            _sync(device)
            if k >= args.warmup:
                times.append(time.perf_counter() - t)
        return {"attention": "sdpa", "step_s": times, "peak_gib": _peak_gib(device),
                "loss": float(loss.detach()) * accum}
    finally:
        del model, optimizer


def _precision(args, device) -> str:
    if args.precision != "auto":
        return args.precision
    return "bf16" if torch.device(device).type == "cuda" else "fp32"


def run_longctx(config, args, device, overrides: dict) -> dict:
    from longctx.train import TrainSettings, Trainer

    settings = TrainSettings(
        seq_len=args.length, steps=args.warmup + args.steps, batch_size=args.batch_size,
        micro_batch_size=args.micro_batch_size, lr=1e-5, warmup_steps=0, strategy=args.strategy,
        sequence_parallel=args.sequence_parallel, cpu_offload=args.cpu_offload, precision=args.precision,
        attention=args.attention, document_masking=args.documents > 1, randomized_positions=False,
        checkpoint_every=0, peak_tflops=args.peak_tflops)
    settings = replace(settings, **overrides)
    settings.__post_init__()
    # sharded strategies place the model themselves; otherwise build it where it runs
    build_on = "cpu" if args.strategy != "ddp" else device
    on_cpu = torch.device(device).type == "cpu"
    trainer = Trainer(new_model(config, build_on), settings, device="cpu" if on_cpu else "auto")
    generator = torch.Generator().manual_seed(1 + trainer.sp.dp_rank)
    times = []
    try:
        for k in range(args.warmup + args.steps):
            inputs = [trainer.micro_batch_inputs(random_batch(config, args.micro_batch_size, args.length,
                                                              args.documents, generator), 0)
                      for _ in range(trainer.accum)]
            _sync(device)
            t = time.perf_counter()
            loss, _ = trainer.step(inputs)
            _sync(device)
            if k >= args.warmup:
                times.append(time.perf_counter() - t)
        return {"attention": trainer.backend, "step_s": times, "peak_gib": _peak_gib(device), "loss": loss,
                "dp_size": trainer.sp.dp_size}
    finally:
        trainer.close()
        del trainer


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="smollm2-135m", help=f"{', '.join(SHAPES)}, or a config.json path")
    p.add_argument("--length", type=int, default=32768, help="tokens per sequence")
    p.add_argument("--strategy", default="ddp", choices=("ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"))
    p.add_argument("--sequence-parallel", type=int, default=1)
    p.add_argument("--cpu-offload", action="store_true")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "bf16-pure", "fp32"))
    p.add_argument("--attention", default="auto", help="longctx rows: auto, sdpa, flex_attention, flash_attention_2")
    p.add_argument("--documents", type=int, default=1,
                   help="> 1: longctx rows get packed rows of that many documents, masked")
    p.add_argument("--micro-batch-size", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=None, help="sequences per step per data-parallel rank "
                                                                "(default: the micro-batch)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per row first")
    p.add_argument("--row", action="append", help="transformers | longctx[:key=value;...] (repeatable)")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak per GPU (default: from its name)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    args.batch_size = args.batch_size or args.micro_batch_size
    if args.length < 2:  # one token has nothing to predict
        raise SystemExit(f"--length {args.length}: a training sequence needs at least 2 tokens")
    rows = [parse_row(r) for r in (args.row or DEFAULT_ROWS)]

    from longctx.train import FLOP_CONVENTION, flops_per_token, peak_flops_per_device

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        torch.backends.cuda.matmul.allow_tf32 = True
    device = torch.device(args.device, torch.cuda.current_device()) if args.device == "cuda" else torch.device("cpu")
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    config = model_config(args.shape, args.length)
    fpt = flops_per_token(config, args.length)
    peak = peak_flops_per_device(device, args.peak_tflops)
    params = sum(p.numel() for p in new_model(config, "meta").parameters())

    results = []
    for name, overrides in rows:
        label = name if not overrides else f"{name}:" + ";".join(f"{k}={v}" for k, v in overrides.items())
        if name == "transformers" and world > 1:
            results.append({"row": label, "status": "skipped (single-GPU baseline)"})
            continue
        _reset_memory(device)
        try:
            r = run_transformers(config, args, device) if name == "transformers" else \
                run_longctx(config, args, device, overrides)
        except Exception as e:  # an OOM or a setting this machine lacks: report it and go on
            oom = isinstance(e, torch.OutOfMemoryError) or "out of GPU memory" in str(e)
            results.append({"row": label, "status": "OOM" if oom else f"failed: {type(e).__name__}: {e}"})
            _reset_memory(device)
            continue
        dp = r.pop("dp_size", world)
        median = statistics.median(r["step_s"])
        tokens_per_s = args.batch_size * args.length * dp / median
        r.update(row=label, status="ok", median_step_s=median, tokens_per_s=tokens_per_s,
                 tflops_per_s=fpt * tokens_per_s / 1e12 / world,
                 mfu=fpt * tokens_per_s / (peak * world) if peak else None)
        results.append(r)

    if rank == 0:
        print(report(args, config, params, fpt, peak, world, device, results, FLOP_CONVENTION))
        if args.json:
            Path(args.json).write_text(json.dumps({
                "shape": args.shape, "length": args.length, "strategy": args.strategy,
                "sequence_parallel": args.sequence_parallel, "processes": world, "device": _device_name(device),
                "parameters": params, "flops_per_token": fpt, "flop_convention": FLOP_CONVENTION,
                "peak_flops_per_device": peak, "rows": results}, indent=1))
    return 0 if all(r["status"] == "ok" or r["status"].startswith(("OOM", "skipped")) for r in results) else 1


def _device_name(device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def report(args, config, params, fpt, peak, world, device, results, convention) -> str:
    head = (f"{args.shape} shape ({params / 1e6:.0f}M parameters, random weights) at {args.length} tokens, "
            f"micro-batch {args.micro_batch_size}, batch {args.batch_size}, strategy {args.strategy}, "
            f"sequence parallel {args.sequence_parallel}, {world} process(es) on {_device_name(device)}, "
            f"precision {_precision(args, device)}\n"
            f"FLOPs per token {fpt / 1e9:.3g} G ({convention}); "
            + (f"MFU against {peak / 1e12:.0f} TFLOP/s per device" if peak else "no peak FLOP/s known: no MFU"))
    cols = ("row", "attention", "tokens/s", "x row 1", "TFLOP/s/dev", "MFU", "peak GiB",
            f"step s (median of {args.steps})")
    base = next((r["tokens_per_s"] for r in results if r["status"] == "ok"), None)
    lines, notes = [], []
    for r in results:
        if r["status"] != "ok":
            short = r["status"] if len(r["status"]) < 30 else f"failed ({len(notes) + 1})"
            if short != r["status"]:
                notes.append(f"({len(notes) + 1}) {r['row']}: {r['status']}")
            lines.append((r["row"], "", short, "", "", "", "", ""))
            continue
        lines.append((r["row"], r["attention"], f"{r['tokens_per_s']:,.0f}", f"{r['tokens_per_s'] / base:.2f}",
                      f"{r['tflops_per_s']:.1f}", f"{r['mfu']:.1%}" if r["mfu"] is not None else "-",
                      f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "-", f"{r['median_step_s']:.3f}"))
    widths = [max(len(str(x)) for x in col) for col in zip(cols, *lines)]

    def fmt(row):
        return "  ".join(str(x).ljust(w) if i == 0 else str(x).rjust(w) for i, (x, w) in enumerate(zip(row, widths)))

    table = "\n".join([fmt(cols), fmt(["-" * w for w in widths])] + [fmt(r) for r in lines])
    notes = "".join(f"{n}\n" for n in notes)
    return f"{head}\n'x row 1': tokens/s relative to the first row that ran\n\n{table}\n{notes}"


if __name__ == "__main__":
    sys.exit(main())

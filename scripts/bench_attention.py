#!/usr/bin/env python
"""Causal attention kernels side by side: which one to run at long context on this GPU.

Times ``scaled_dot_product_attention`` with each SDPA backend (flash, cuDNN, memory-efficient),
FlexAttention (compiled) and flash-attn 2 when installed, forward and forward+backward, at one
shape (batch, query heads, key/value heads, length, head dim), and prints median milliseconds and
TFLOP/s. FLOP convention: causal attention counted at half, i.e. forward 2 x B x H x T^2 x D,
backward 2.5 x forward.

The search's fitness and long-context training spend most of their time here (at 32k with
SmolLM2's shape, attention is about 80% of the FLOPs), so the fastest kernel is what
``finetune.sdpa_backends`` / ``search.sdpa_backends`` should name first.

  python scripts/bench_attention.py --heads 9 --kv-heads 3 --head-dim 64 --length 32768
  python scripts/bench_attention.py --heads 32 --kv-heads 4 --head-dim 64 --length 16384 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch
import torch.nn.functional as F


def timed(fn, repeats: int, warmup: int) -> float:
    """Median milliseconds of ``fn()`` over ``repeats`` CUDA-event timed calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def sdpa_kernel(name: str):
    def attend(q, k, v):
        from torch.nn.attention import SDPBackend, sdpa_kernel as use

        backend = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                   "efficient": SDPBackend.EFFICIENT_ATTENTION}[name]
        if k.shape[1] != q.shape[1]:  # GQA: not every backend takes enable_gqa, so repeat for all
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
            v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
        with use([backend]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return attend


def flex_kernel():
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    compiled = torch.compile(flex_attention, dynamic=False)
    masks = {}

    def attend(q, k, v):
        T = q.shape[2]
        if T not in masks:
            masks[T] = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, T, T, device="cuda")
        return compiled(q, k, v, block_mask=masks[T], enable_gqa=k.shape[1] != q.shape[1])
    return attend


def flash_attn2_kernel():
    from flash_attn import flash_attn_func

    def attend(q, k, v):  # flash-attn's layout is [B, T, H, D]
        return flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True).transpose(1, 2)
    return attend


def kernels() -> dict:
    out = {name: sdpa_kernel(name) for name in ("flash", "cudnn", "efficient")}
    out["flex"] = flex_kernel()
    try:
        import flash_attn  # noqa: F401
        out["flash_attn2"] = flash_attn2_kernel()
    except ImportError:
        pass
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=9)
    p.add_argument("--kv-heads", type=int, default=3)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--length", type=int, nargs="+", default=[32768])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--kernel", action="append", help="only these (flash, cudnn, efficient, flex, flash_attn2)")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench_attention.py times CUDA kernels; no CUDA device here")

    rows = []
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, bf16, causal, "
          f"B={args.batch} H={args.heads} Hkv={args.kv_heads} D={args.head_dim}")
    print(f"{'kernel':<12} {'length':>7} {'fwd ms':>9} {'fwd TF/s':>9} {'fwd+bwd ms':>11} {'fwd+bwd TF/s':>13}")
    for T in args.length:
        fwd_flop = 2 * args.batch * args.heads * T * T * args.head_dim
        for name, attend in kernels().items():
            if args.kernel and name not in args.kernel:
                continue
            shape = (args.batch, args.heads, T, args.head_dim)
            kv_shape = (args.batch, args.kv_heads, T, args.head_dim)
            q = torch.randn(shape, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            k = torch.randn(kv_shape, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            v = torch.randn(kv_shape, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            grad = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
            row = {"kernel": name, "length": T}
            try:
                with torch.no_grad():
                    row["fwd_ms"] = timed(lambda: attend(q, k, v), args.repeats, args.warmup)
                row["fwd_bwd_ms"] = timed(lambda: torch.autograd.backward(attend(q, k, v), grad),
                                          args.repeats, args.warmup)
            except Exception as e:  # a backend that refuses this shape/GPU: say why and go on
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
                print(f"{name:<12} {T:>7}  unavailable: {row['error']}")
                rows.append(row)
                continue
            row["fwd_tflops"] = fwd_flop / row["fwd_ms"] / 1e9
            row["fwd_bwd_tflops"] = 3.5 * fwd_flop / row["fwd_bwd_ms"] / 1e9
            rows.append(row)
            print(f"{name:<12} {T:>7} {row['fwd_ms']:>9.2f} {row['fwd_tflops']:>9.1f} "
                  f"{row['fwd_bwd_ms']:>11.2f} {row['fwd_bwd_tflops']:>13.1f}", flush=True)
            del q, k, v, grad
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "args": vars(args),
                       "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

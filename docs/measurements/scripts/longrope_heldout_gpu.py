#!/usr/bin/env python
"""Held-out check of LongRoPE factors from a search log: perplexity at the target length on books
the search never saw, against PI, NTK-aware, YaRN and dynamic NTK at the same scale.

    PYTHONPATH=src python docs/measurements/scripts/longrope_heldout_gpu.py --model DIR --log candidates.jsonl --length 32768 \\
        --books data/austen/northanger_abbey.txt data/austen/persuasion.txt --out result.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", type=Path, required=True, help="converted Hugging Face folder")
    p.add_argument("--log", type=Path, required=True, help="the search's candidate log")
    p.add_argument("--length", type=int, required=True)
    p.add_argument("--books", type=Path, nargs="+", required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()

    from longctx.models.loading import load_for_measurement
    from longctx.models.loss import window_nll
    from longctx.rope import apply_to_model, geometry_of

    model, tokenizer = load_for_measurement(args.model, torch.device("cuda"), "bfloat16")
    scale = args.length / geometry_of(model.config).original_context
    rows = [json.loads(line) for line in args.log.read_text().splitlines() if line.strip()]
    complete = [r for r in rows if r.get("complete", True) and r.get("perplexity") is not None]
    best = min(complete, key=lambda r: r["perplexity"])
    windows = []
    for book in args.books:
        ids = tokenizer(book.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
        windows.append(torch.tensor(ids[: args.length], device="cuda")[None])

    def ppl() -> float:
        nll = []
        for w in windows:
            sums, n = window_nll(model, w, chunk_size=16384)
            nll.append(sums[0] / n)
        return math.exp(sum(nll) / len(nll))

    table = {}
    for label, method, params in [("pi", "pi", {}), ("ntk", "ntk", {}), ("yarn", "yarn", {}),
                                  ("dynamic_ntk", "dynamic_ntk", {}),
                                  ("longrope (searched)", "longrope", {"factors": best["factors"], "n_hat": best["n_hat"]})]:
        apply_to_model(model, method, scale, params)
        table[label] = ppl()
        print(f"{label:22s} {table[label]:.3f}", flush=True)
    out = {"length": args.length, "scale": scale, "held_out_books": [b.stem for b in args.books],
           "search_perplexity": best["perplexity"], "n_hat": best["n_hat"], "factors": best["factors"],
           "held_out_perplexity": table, "gpu": torch.cuda.get_device_name()}
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""SmolLM2-135M with YaRN s=4 through the workflow's evaluations, timed: issue 6's GPU check.

Perplexity (first N tokens of each Austen novel, truncate mode), passkey (10 trials) and
LongChat-Lines (generated, 20 examples) at 2k, 4k, 8k, 16k and 32k tokens, then perplexity at
128k on the novels that long, with the peak GPU memory. Everything goes through
``longctx.evaluate.EVALUATIONS`` on token files made by ``longctx.data.prepare_split``, as the
evaluate rule runs them.

    PYTHONPATH=src python docs/measurements/scripts/eval_smollm2_gpu.py --model SmolLM2-135M-Instruct.Q4_1.gguf --cache /root/smollm2-bf16 --out OUT
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

import torch  # noqa: E402

K = 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--lengths", type=int, nargs="*", default=[2 * K, 4 * K, 8 * K, 16 * K, 32 * K])
    p.add_argument("--long", type=int, default=128 * K)
    p.add_argument("--scale", type=float, default=4.0)
    p.add_argument("--lines-examples", type=int, default=20)
    args = p.parse_args()

    from longctx.data import prepare_split
    from longctx.evaluate import EVALUATIONS
    from longctx.rope import apply_to_model

    from longctx.models.loading import load_for_measurement
    from longctx.models.sources import converted_folder

    folder = converted_folder(args.model, args.cache)
    model, tokenizer = load_for_measurement(folder, torch.device("cuda"), "bfloat16")
    apply_to_model(model, "yarn", args.scale, {})
    args.out.mkdir(parents=True, exist_ok=True)
    corpus = {"source": "local", "root": str(REPO / "data" / "austen"), "documents": "file",
              "splits": {"test": sorted(x.name for x in (REPO / "data" / "austen").glob("*.txt"))},
              "max_tokens": None, "max_documents": None}
    prefix = args.out / "austen"
    prepare_split(corpus, "test", folder, prefix)

    rows, started = [], time.time()
    for length in args.lengths:
        for name, kwargs in (("perplexity", {"data_prefix": prefix, "chunk_size": 16384, "batch_tokens": 65536}),
                             ("passkey", {"trials_per_length": 10}),
                             ("lines", {"examples": args.lines_examples})):
            t = time.time()
            result = EVALUATIONS[name](model, tokenizer, length, seed=1234, **kwargs)
            torch.cuda.synchronize()
            rows.append({"eval": name, "length": length, **result["metrics"], "seconds": round(time.time() - t, 1)})
            print(json.dumps(rows[-1]), flush=True)
    total_2k_32k = time.time() - started

    torch.cuda.reset_peak_memory_stats()
    t = time.time()
    long = EVALUATIONS["perplexity"](model, tokenizer, args.long, data_prefix=prefix, chunk_size=16384,
                                     batch_tokens=args.long)
    rows.append({"eval": "perplexity", "length": args.long, **long["metrics"], "documents": long["documents"],
                 "seconds": round(time.time() - t, 1),
                 "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)})
    print(json.dumps(rows[-1]), flush=True)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "method": f"yarn s={args.scale:g}",
              "seconds_2k_to_32k": round(total_2k_32k, 1), "rows": rows}
    (args.out / "eval_smollm2.json").write_text(json.dumps(result, indent=1))
    print(f"2k..32k: perplexity + passkey + lines in {total_2k_32k:.0f} s on {result['device']}", flush=True)


if __name__ == "__main__":
    main()

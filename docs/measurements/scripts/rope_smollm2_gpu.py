#!/usr/bin/env python
"""RoPE scaling methods on SmolLM2-135M without fine-tuning: perplexity and passkey by length.

Perplexity (YaRN's "first N tokens" protocol): each of Austen's six novels is tokenized as plain
text (no BOS); for each N, one forward pass over the first N tokens of every book; perplexity =
exp(mean over books of the mean token NLL), the LM head applied in chunks (longctx.loss). Methods:
none, PI / NTK-aware / YaRN at s = 2, 4, 8, and dynamic NTK. Passkey retrieval (PI's prompt,
10 seeded trials per length, longctx.evaluate.passkey): none, PI, NTK, YaRN at s = 4, dynamic NTK.
Everything runs through the longctx package (imported from ./src); SDPA attention, bf16.

GPU (SmolLM2: 8192 native context, rope theta 100000, head dim 64):
    PYTHONPATH=src python docs/measurements/scripts/rope_smollm2_gpu.py --model SmolLM2-135M-Instruct.Q4_1.gguf \\
        --cache /root/smollm2-bf16 --out results/rope_smollm2
  (--model may also be an already converted Hugging Face folder; the GGUF is converted once to a
  bf16 safetensors folder at --cache and reused.)
CPU check of every piece with a tiny random LLaMA at tiny lengths:
    PYTHONPATH=src python docs/measurements/scripts/rope_smollm2_gpu.py --smoke --out /tmp/rope_smoke
Writes <out>/rope_smollm2.json and <out>/rope_smollm2.md.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

import torch  # noqa: E402

try:
    import longctx  # noqa: E402,F401  (registers the custom rope types)
    from longctx.artifacts import atomic_path, write_json  # noqa: E402
    from longctx.evaluate.passkey import evaluate_passkey  # noqa: E402
    from longctx.models.loading import load_for_measurement  # noqa: E402
    from longctx.models.loss import window_nll  # noqa: E402
    from longctx.models.sources import converted_folder  # noqa: E402
    from longctx.rope import apply_to_model, geometry_of  # noqa: E402
except ModuleNotFoundError as e:  # the GPU image lacks some packages; they travel as wheels
    sys.exit(f"rope_smollm2_gpu: cannot import the longctx package (PYTHONPATH=src where it is not installed): "
             f"missing module {e.name!r} (install or carry its wheel)")

K = 1024
PPL_LENGTHS = [2 * K, 4 * K, 8 * K, 16 * K, 32 * K, 64 * K]
PASSKEY_LENGTHS = [2 * K, 4 * K, 8 * K, 16 * K, 32 * K]
SCALES = [2.0, 4.0, 8.0]
PASSKEY_SCALE = 4.0


def variants(scales, yarn_ramps) -> list[dict]:
    """The methods to measure: (label, method, scale, params)."""
    out = [{"label": "none", "method": "none", "scale": 1.0, "params": {}}]
    for method in ("pi", "ntk"):
        out += [{"label": f"{method} s={s:g}", "method": method, "scale": s, "params": {}} for s in scales]
    for ramp in yarn_ramps:
        name = "yarn" if ramp == "paper" else f"yarn-{ramp}"
        out += [{"label": f"{name} s={s:g}", "method": "yarn", "scale": s, "params": {"ramp": ramp}} for s in scales]
    # its scale is max(1, len / L) at every forward; the variant scale plays no part
    out.append({"label": "dynamic ntk", "method": "dynamic_ntk", "scale": 1.0, "params": {}})
    return out


def passkey_variants(yarn_ramps) -> list[dict]:
    keep = {"none", f"pi s={PASSKEY_SCALE:g}", f"ntk s={PASSKEY_SCALE:g}", f"yarn s={PASSKEY_SCALE:g}", "dynamic ntk"}
    return [v for v in variants([PASSKEY_SCALE], yarn_ramps[:1]) if v["label"] in keep]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- the model ---------------------------------------------------------------------------------


def tiny_model(cache: Path, original_context: int) -> Path:
    """--smoke: a random 2-layer LLaMA and a small BPE tokenizer trained on one novel."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from longctx.data import train_tokenizer
    from longctx.artifacts import atomic_dir

    if (cache / "config.json").exists():
        return cache
    with atomic_dir(cache) as tmp:
        tokenizer = train_tokenizer(iter([(REPO / "data/austen/persuasion.txt").read_text()]), 512, tmp)
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=original_context,
                             rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        LlamaForCausalLM(config).save_pretrained(tmp)
    return cache


# --- the measurements ----------------------------------------------------------------------------


def tokenize_books(tokenizer, data_dir: Path, longest: int) -> dict[str, torch.Tensor]:
    books = {}
    for path in sorted(data_dir.glob("*.txt")):
        ids = tokenizer(path.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
        if len(ids) < longest:
            sys.exit(f"{path}: {len(ids)} tokens, fewer than the longest length measured ({longest})")
        books[path.stem] = torch.tensor(ids[:longest], dtype=torch.long)
    if len(books) != 6:
        sys.exit(f"{data_dir}: expected Austen's six novels, found {len(books)} .txt files")
    return books


def perplexity(model, books: dict[str, torch.Tensor], length: int, device, chunk_size: int) -> dict:
    per_book = {}
    for name, ids in books.items():
        sums, count = window_nll(model, ids[None, :length].to(device), chunk_size=chunk_size)
        per_book[name] = sums[0] / count
    mean_nll = sum(per_book.values()) / len(per_book)
    return {"perplexity": math.exp(mean_nll), "mean_nll": mean_nll, "nll_by_book": per_book}


def measure(args) -> dict:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    started = time.time()
    folder = (tiny_model(args.cache, args.original_context or 128) if args.smoke
              else converted_folder(args.model, args.cache))
    model, tokenizer = load_for_measurement(folder, device, args.dtype)
    geometry = geometry_of(model.config)
    if args.original_context and geometry.original_context != args.original_context:
        sys.exit(f"the model's config says context {geometry.original_context}, --original-context says "
                 f"{args.original_context}")
    log(f"{folder}: head dim {geometry.head_dim}, rope theta {geometry.base:g}, original context "
        f"{geometry.original_context}; {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor()}), "
        f"{args.dtype}, attention {model.config._attn_implementation}")
    result = {
        "model": str(args.model) if not args.smoke else "tiny random LLaMA (--smoke)",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor()})",
        "dtype": args.dtype,
        "attention": model.config._attn_implementation,
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
                     "python": platform.python_version()},
        "geometry": {"head_dim": geometry.head_dim, "rope_theta": geometry.base,
                     "original_context": geometry.original_context},
        "protocol": {"perplexity": "first N tokens of each of the six novels (no BOS), one forward each; "
                                   "exp(mean over books of mean token NLL)",
                     "passkey": f"{args.trials} seeded trials per length (seed {args.seed}), 10 new tokens, "
                                "correct if the first integer generated is the key"},
        "perplexity": [], "passkey": [],
    }

    if args.lengths:
        books = tokenize_books(tokenizer, args.data, max(args.lengths))
        log(f"tokenized {len(books)} books: {', '.join(books)}")
        for v in variants(args.scales, args.yarn_ramps):
            t0 = time.time()
            apply_to_model(model, v["method"], v["scale"], v["params"])
            row = {**v, "rope_parameters": model.config.rope_parameters, "by_length": {}}
            for n in args.lengths:
                row["by_length"][n] = perplexity(model, books, n, device, args.chunk_size)
            row["seconds"] = time.time() - t0
            result["perplexity"].append(row)
            log(f"perplexity {v['label']:>14}: " + "  ".join(
                f"{n // K if n >= K else n}{'k' if n >= K else ''}={row['by_length'][n]['perplexity']:.4g}"
                for n in args.lengths) + f"  ({row['seconds']:.1f}s)")

    if args.passkey_lengths:
        for v in passkey_variants(args.yarn_ramps):
            t0 = time.time()
            apply_to_model(model, v["method"], v["scale"], v["params"])
            row = {**v, "rope_parameters": model.config.rope_parameters, "by_length": {}}
            for n in args.passkey_lengths:
                r = evaluate_passkey(model, tokenizer, n, trials_per_length=args.trials, seed=args.seed)
                row["by_length"][n] = {"accuracy": r["metrics"]["accuracy"], "trials": r["trials"]}
            row["seconds"] = time.time() - t0
            result["passkey"].append(row)
            log(f"passkey {v['label']:>14}: " + "  ".join(
                f"{n}={row['by_length'][n]['accuracy']:.1f}" for n in args.passkey_lengths)
                + f"  ({row['seconds']:.1f}s)")
    result["seconds"] = time.time() - started
    return result


def markdown(result: dict) -> str:
    def length_name(n: int) -> str:
        return f"{n // K}k" if n >= K and n % K == 0 else str(n)

    lines = [f"RoPE scaling without fine-tuning: {result['model']}",
             "",
             f"Machine: {result['device']}, {result['dtype']}, {result['attention']} attention; torch "
             f"{result['versions']['torch']}, transformers {result['versions']['transformers']}; "
             f"{result['seconds']:.0f} s in all. Head dim {result['geometry']['head_dim']}, rope theta "
             f"{result['geometry']['rope_theta']:g}, original context {result['geometry']['original_context']}.",
             ""]
    if result["perplexity"]:
        lengths = list(result["perplexity"][0]["by_length"])
        lines += [f"Perplexity on Austen's six novels ({result['protocol']['perplexity']}):", "",
                  "| method | " + " | ".join(length_name(int(n)) for n in lengths) + " |",
                  "|---|" + "---:|" * len(lengths)]
        for row in result["perplexity"]:
            cells = [f"{row['by_length'][n]['perplexity']:.2f}" if row["by_length"][n]["perplexity"] < 1e4
                     else f"{row['by_length'][n]['perplexity']:.3g}" for n in lengths]
            lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
        lines.append("")
    if result["passkey"]:
        lengths = list(result["passkey"][0]["by_length"])
        lines += [f"Passkey retrieval accuracy ({result['protocol']['passkey']}):", "",
                  "| method | " + " | ".join(length_name(int(n)) for n in lengths) + " |",
                  "|---|" + "---:|" * len(lengths)]
        for row in result["passkey"]:
            lines.append(f"| {row['label']} | " + " | ".join(f"{row['by_length'][n]['accuracy']:.1f}"
                                                          for n in lengths) + " |")
        lines.append("")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="SmolLM2 GGUF file, or a converted Hugging Face folder")
    p.add_argument("--cache", type=Path, help="where the bf16 safetensors conversion is kept (made once)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--data", type=Path, default=REPO / "data" / "austen", help="folder with the six novels")
    p.add_argument("--original-context", type=int, default=None, help="check the model's L (SmolLM2: 8192)")
    p.add_argument("--lengths", type=int, nargs="*", default=None, help="perplexity lengths (default 2k..64k)")
    p.add_argument("--passkey-lengths", type=int, nargs="*", default=None, help="passkey lengths (default 2k..32k)")
    p.add_argument("--scales", type=float, nargs="+", default=SCALES, help="scales for PI, NTK, YaRN")
    p.add_argument("--yarn-ramps", nargs="+", default=["paper", "code"], choices=["paper", "code"],
                   help="YaRN ramp forms for perplexity (passkey uses the first)")
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--chunk-size", type=int, default=4096, help="LM-head chunk (tokens)")
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float32", "float16"],
                   help="default: bfloat16 on GPU, float32 on CPU")
    p.add_argument("--device", default=None, help="default: cuda if available")
    p.add_argument("--smoke", action="store_true",
                   help="tiny random LLaMA (L=128) at tiny lengths on the CPU: checks every piece in a minute")
    args = p.parse_args(argv)
    if args.smoke:
        args.cache = args.cache or args.out / "tiny-model"
        args.lengths = [64, 256, 512] if args.lengths is None else args.lengths
        args.passkey_lengths = [192, 384] if args.passkey_lengths is None else args.passkey_lengths
        args.trials = min(args.trials, 2)
        args.device = args.device or "cpu"
    else:
        if args.model is None or args.cache is None:
            p.error("--model and --cache are required (or --smoke)")
        args.lengths = PPL_LENGTHS if args.lengths is None else args.lengths
        args.passkey_lengths = PASSKEY_LENGTHS if args.passkey_lengths is None else args.passkey_lengths
    on_gpu = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    args.dtype = args.dtype or ("bfloat16" if on_gpu else "float32")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    result = measure(args)
    write_json(args.out / "rope_smollm2.json", result)
    with atomic_path(args.out / "rope_smollm2.md") as tmp:
        tmp.write_text(markdown(result))
    log(f"wrote {args.out / 'rope_smollm2.json'} and {args.out / 'rope_smollm2.md'} ({result['seconds']:.0f} s)")
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()

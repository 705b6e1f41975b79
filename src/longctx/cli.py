"""Command line: ``python -m longctx <stage> --arg ...``; what the workflow's rules call.

Structured arguments (settings, variant, run facts) are JSON strings, which is how the rules pass
their params explicitly.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from longctx import stages


def _json(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="longctx", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("check-config", help="validate a config file and print the resolved config")
    c.add_argument("config")

    sub.add_parser("methods", help="list the RoPE methods and their parameters")

    c = sub.add_parser("tokenizer", help="train or copy the tokenizer")
    c.add_argument("--config-json", type=_json, required=True)
    c.add_argument("--out", required=True)

    c = sub.add_parser("prepare", help="tokenize one split of a corpus into token files")
    c.add_argument("--corpus", type=_json, required=True)
    c.add_argument("--split", required=True)
    c.add_argument("--tokenizer", required=True)
    c.add_argument("--out-prefix", required=True)
    c.add_argument("--run", type=_json, required=True)

    c = sub.add_parser("base-model", help="import or pretrain the base model")
    c.add_argument("--config-json", type=_json, required=True)
    c.add_argument("--tokenizer", required=True)
    c.add_argument("--train-data")
    c.add_argument("--out", required=True)
    c.add_argument("--work-dir")
    c.add_argument("--run", type=_json, required=True)

    for name in ("finetune", "search", "recovery"):
        c = sub.add_parser(name, help=f"{name} one variant")
        c.add_argument("--model", required=True)
        c.add_argument("--data", required=True)
        c.add_argument("--out", required=True)
        c.add_argument("--variant", type=_json, required=True)
        c.add_argument("--settings", type=_json, required=True)
        c.add_argument("--original-context", type=int, required=True)
        c.add_argument("--run", type=_json, required=True)
        c.add_argument("--seed", type=int, default=1234)
        c.add_argument("--device", default="auto")
        if name == "finetune":
            c.add_argument("--factors")
            c.add_argument("--work-dir")
        elif name == "recovery":
            c.add_argument("--long-factors", required=True, help="factors.json of the chain's last step")
            c.add_argument("--log-dir", help="where the candidate logs go (one per length)")
        else:
            c.add_argument("--log-file")
            c.add_argument("--base-factors", help="secondary search: the factors.json the model was fine-tuned with")

    c = sub.add_parser("evaluate", help="one evaluation of one variant at one length")
    c.add_argument("--eval", required=True)
    c.add_argument("--model", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--variant", type=_json, required=True)
    c.add_argument("--length", type=int, required=True)
    c.add_argument("--settings", type=_json, required=True)
    c.add_argument("--run", type=_json, required=True)
    c.add_argument("--seed", type=int, default=1234)
    c.add_argument("--device", default="auto")
    c.add_argument("--data")
    c.add_argument("--factors")

    c = sub.add_parser("report", help="gather evaluation results into summary.csv, report.md, report.html and plots")
    c.add_argument("--results", nargs="*", default=[], help="evaluation JSONs")
    c.add_argument("--search", nargs="*", default=[], help="LongRoPE search results (factors.json)")
    c.add_argument("--variants", type=_json, required=True)
    c.add_argument("--run", type=_json, required=True)
    c.add_argument("--dataset", required=True, help="the perplexity corpus's name")
    c.add_argument("--dataset-id", action="append", default=[],
                   help="other names of that corpus (hub path, folder) for matching the papers' numbers")
    c.add_argument("--finetune-steps", type=int)
    c.add_argument("--out-md", required=True)
    c.add_argument("--out-csv", required=True)
    c.add_argument("--out-html", required=True)
    c.add_argument("--plots", required=True, help="folder for the report's PNGs")

    c = sub.add_parser("compare", help="several experiments' summary.csv side by side")
    c.add_argument("--summaries", nargs="+", required=True)
    c.add_argument("--out-md", required=True)
    c.add_argument("--out-csv")

    c = sub.add_parser("wandb-runs", help="list the offline W&B runs under a folder: name, group, job_type, summary")
    c.add_argument("folder", help="e.g. results/<experiment>/wandb")
    return p


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    args = build_parser().parse_args(argv)
    cmd = args.command
    if cmd == "check-config":
        import yaml

        from longctx.config import ConfigError, load_config

        try:
            print(yaml.safe_dump(load_config(args.config), sort_keys=False))
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    elif cmd == "methods":
        from longctx.rope import METHODS

        for name, m in sorted(METHODS.items()):
            print(f"{name:10s} {m.description}")
            for k, v in m.defaults.items():
                print(f"{'':12s}{k}: {v!r}")
    elif cmd == "tokenizer":
        stages.stage_tokenizer(args.config_json, args.out)
    elif cmd == "prepare":
        stages.stage_prepare(args.corpus, args.split, args.tokenizer, args.out_prefix, args.run)
    elif cmd == "base-model":
        stages.stage_base_model(args.config_json, args.tokenizer, args.out, args.train_data, args.run, args.work_dir)
    elif cmd == "finetune":
        stages.stage_finetune(args.model, args.data, args.out, args.variant, args.settings, args.original_context,
                              args.run, args.seed, args.device, args.factors, args.work_dir)
    elif cmd == "search":
        stages.stage_search(args.model, args.data, args.out, args.variant, args.settings, args.original_context,
                            args.run, args.seed, args.device, args.log_file, base_factors_file=args.base_factors)
    elif cmd == "recovery":
        stages.stage_recovery(args.model, args.data, args.out, args.variant, args.settings, args.original_context,
                              args.run, args.seed, args.long_factors, args.device, args.log_dir)
    elif cmd == "evaluate":
        stages.stage_evaluate(args.eval, args.model, args.out, args.variant, args.length, args.settings, args.run,
                              args.seed, args.device, args.data, args.factors)
    elif cmd == "report":
        stages.stage_report(args.results, args.variants, args.run, args.dataset, args.out_md, args.out_csv,
                            args.out_html, args.plots, args.search, args.dataset_id, args.finetune_steps)
    elif cmd == "compare":
        from longctx.report import ReportError, compare

        try:
            compare(args.summaries, args.out_md, args.out_csv)
        except ReportError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    elif cmd == "wandb-runs":
        from longctx.tracking import offline_runs

        for r in offline_runs(args.folder):
            numbers = {k: v for k, v in r.summary.items() if not k.startswith("_") and isinstance(v, (int, float))}
            print(f"{r.path.name}  group={r.group}  job_type={r.job_type}  name={r.name}  "
                  f"tags={','.join(r.tags)}  {json.dumps(numbers)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

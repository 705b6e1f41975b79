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

    for name in ("finetune", "search"):
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
        else:
            c.add_argument("--log-file")

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

    c = sub.add_parser("report", help="gather evaluation results into report.md, summary.csv and plots")
    c.add_argument("--results", nargs="*", default=[])
    c.add_argument("--variants", type=_json, required=True)
    c.add_argument("--run", type=_json, required=True)
    c.add_argument("--dataset", required=True)
    c.add_argument("--out-md", required=True)
    c.add_argument("--out-csv", required=True)
    c.add_argument("--out-plot", required=True)
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
                            args.run, args.seed, args.device, args.log_file)
    elif cmd == "evaluate":
        stages.stage_evaluate(args.eval, args.model, args.out, args.variant, args.length, args.settings, args.run,
                              args.seed, args.device, args.data, args.factors)
    elif cmd == "report":
        from longctx.report import write_report

        write_report(args.results, args.variants, args.run["experiment"], args.run["model"], args.dataset,
                     args.run["original_context"], args.out_md, args.out_csv, args.out_plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())

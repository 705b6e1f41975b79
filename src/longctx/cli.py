"""Command line: ``python -m longctx <command> --arg ...``.

The jobs the workflow's rules run (``longctx.jobs``) get a subcommand each, generated from their
keyword-only signatures, as litgpt generates its CLI: ``finetune(*, model: Path, variant: Variant,
settings: dict, ...)`` becomes ``longctx finetune --model DIR --variant JSON --settings JSON ...``.
An annotation says how a value is read: ``Path``, ``str``, ``int``, ``float`` as themselves;
``dict`` and ``list`` as JSON; ``Variant`` and ``RunInfo`` as JSON rebuilt into the dataclass;
``list[Path]`` / ``list[str]`` as any number of words; ``list[Variant]`` as a JSON list. A parameter
without a default is required; ``X | None`` is optional.

Besides the jobs, commands for people: ``check-config``, ``methods``, ``wandb-runs`` (offline W&B
runs, ``--latest``: one per job), ``sbatch-preview`` (each rule's sbatch line, nothing submitted),
``suggest-resources`` (a ``resources`` section sized from a finished run's benchmark files).
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import subprocess
import sys
import types
import typing
from pathlib import Path

from longctx import jobs
from longctx.config.cluster import PREVIEW_ENV as SBATCH_PREVIEW_ENV  # read by rules/common.smk's onstart


def _json(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from None


def _rebuilt(cls):
    def parse(text: str):
        value = _json(text)
        try:
            return cls.from_dict(value)
        except (TypeError, ValueError) as e:
            raise argparse.ArgumentTypeError(f"not a {cls.__name__}: {e}") from None

    parse.__name__ = cls.__name__
    return parse


def _argument(annotation) -> dict:
    """``add_argument`` keywords that read a value of ``annotation``."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return _argument(args[0])  # X | None: an X, optional
    origin = typing.get_origin(annotation)
    if origin is list and args and hasattr(args[0], "from_dict"):
        element = _rebuilt(args[0])
        return {"type": lambda text: [element(json.dumps(x)) for x in _json(text)]}
    if origin is list and args:
        return {"type": args[0], "nargs": "*"}
    if annotation in (dict, list) or origin in (dict, list):
        return {"type": _json}
    if hasattr(annotation, "from_dict"):
        return {"type": _rebuilt(annotation)}
    return {"type": annotation}


def add_job(sub, fn) -> None:
    """A subcommand for ``fn`` with an option per keyword-only parameter."""
    p = sub.add_parser(fn.__name__.replace("_", "-"), help=(fn.__doc__ or "").strip().split("\n")[0])
    hints = typing.get_type_hints(fn)
    for name, param in inspect.signature(fn).parameters.items():
        if param.kind is not param.KEYWORD_ONLY:
            raise TypeError(f"{fn.__name__}: parameter {name} must be keyword-only")
        kwargs = _argument(hints[name])
        if param.default is param.empty:
            kwargs["required"] = True
        else:
            kwargs["default"] = param.default
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, **kwargs)
    p.set_defaults(job=fn)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="longctx", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("check-config", help="validate a config file and print the resolved config")
    c.add_argument("config")
    sub.add_parser("methods", help="list the RoPE methods and their parameters")
    c = sub.add_parser("wandb-runs", help="list the offline W&B runs under a folder: name, group, job_type, summary; "
                                          "earlier runs of a job that ran again are marked superseded")
    c.add_argument("folder", help="e.g. results/<experiment>/wandb")
    c.add_argument("--latest", action="store_true", help="only the latest run of each job")
    c = sub.add_parser("sbatch-preview", help="print the sbatch line each rule's jobs get, and whether they fit the "
                                              "cluster (sinfo); submits nothing",
                       description="Runs `snakemake --profile slurm ARGS` with "
                                   f"{SBATCH_PREVIEW_ENV}=1: it stops before the first submission, after printing "
                                   "each rule's sbatch line as snakemake-executor-plugin-slurm builds it. Jobs whose "
                                   "outputs exist are not submitted, so not shown: add -F for all of them.")
    c.add_argument("snakemake_args", nargs=argparse.REMAINDER, help="snakemake's arguments, e.g. --configfile X all -F")
    c = sub.add_parser("suggest-resources", help="a resources section sized from an experiment's benchmark files")
    c.add_argument("experiment_dir", help="results/<experiment>, whose benchmarks/**/*.tsv are read")
    c.add_argument("--config", help="the experiment's config file, to show what its jobs asked for beside")

    for fn in jobs.JOBS:
        add_job(sub, fn)
    return p


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["sbatch-preview"] and not {"-h", "--help"} & set(argv[1:2]):
        rest = argv[1:]
        return sbatch_preview(rest[1:] if rest[:1] == ["--"] else rest)
    args = build_parser().parse_args(argv)
    if hasattr(args, "job"):
        kwargs = {k: v for k, v in vars(args).items() if k not in ("command", "job")}
        try:
            args.job(**kwargs)
        except Exception as e:
            if not type(e).__module__.startswith("longctx."):
                raise  # a bug: its traceback
            print(f"error: {e}", file=sys.stderr)  # one of ours: a message naming the problem
            return 2
        return 0
    if args.command == "check-config":
        import yaml

        from longctx.config import ConfigError, load_config

        try:
            print(yaml.safe_dump(load_config(args.config), sort_keys=False))
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    elif args.command == "methods":
        from longctx.rope import METHODS

        for name, m in sorted(METHODS.items()):
            print(f"{name:10s} {m.description}")
            for k, v in m.defaults.items():
                print(f"{'':12s}{k}: {v!r}")
    elif args.command == "wandb-runs":
        from longctx.tracking.offline import latest_runs, offline_runs

        runs = offline_runs(args.folder, superseded=not args.latest)
        for r in latest_runs(runs) if args.latest else runs:
            numbers = {k: v for k, v in r.summary.items() if not k.startswith("_") and isinstance(v, (int, float))}
            print(f"{r.path.name}  {'superseded' if r.superseded else 'latest'}  group={r.group}  "
                  f"job_type={r.job_type}  name={r.name}  tags={','.join(r.tags)}  {json.dumps(numbers)}")
    elif args.command == "suggest-resources":
        from longctx.config import ConfigError, load_config
        from longctx.config.resources import STAGES, stage_resources
        from longctx.config.sizing import SizingError, measure, render

        try:
            configured = None
            if args.config:
                cfg = load_config(args.config)
                configured = {s: stage_resources(cfg, s) for s in STAGES}
            print(render(measure(args.experiment_dir), configured), end="")
        except (ConfigError, SizingError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    return 0


def sbatch_preview(snakemake_args: list[str]) -> int:
    """``snakemake --profile slurm ARGS`` that prints each rule's sbatch line and submits nothing."""
    env = {**os.environ, SBATCH_PREVIEW_ENV: "1"}
    cmd = [sys.executable, "-m", "snakemake", "--profile", "slurm", *snakemake_args]
    return subprocess.run(cmd, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())

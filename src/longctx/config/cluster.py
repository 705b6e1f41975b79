"""What a SLURM cluster offers, checked against what the workflow's jobs ask for, and the exact
``sbatch`` line each job gets; called from the workflow's ``onstart`` when jobs go to SLURM.

- ``partitions``: ``sinfo``'s nodes per partition (CPUs, memory, GPUs by type from the GRES),
  the partition's time limit and state, and which partition is the default;
- ``request_of`` reads a job's request from its snakemake resources, as
  snakemake-executor-plugin-slurm turns them into sbatch options (threads = ``--cpus-per-task``,
  ``mem_mb`` = ``--mem`` per node, ``gpu``/``gpu_model`` or ``gres``, ``nodes``, ``runtime``);
- ``check`` compares every request with its partition; each problem names the rule, the request,
  the config key it came from and the cluster's limit, so nothing is submitted that could only
  wait forever (``PD (PartitionConfig)``) or that sbatch would refuse;
- ``sbatch_line`` builds a job's submission with the plugin's own functions (``get_submit_command``,
  ``set_gres_string``), as its ``run_job`` does;
- ``SlurmRun`` ties these to a snakemake run: the log folder per experiment, earlier attempts for
  the retries, the account note, the check and the preview, before the first submission.
"""

from __future__ import annotations

import logging
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from longctx.config.attempts import Attempts, wildcard_text
from longctx.config.resources import Limits, ResourceError, stage_of_rule

SINFO_FORMAT = "%P|%n|%c|%m|%G|%l|%a"
PREVIEW_ENV = "LONGCTX_SBATCH_PREVIEW"


class ClusterError(ResourceError):
    """A job asks for more than its partition offers (or the cluster cannot be asked)."""


@dataclass(frozen=True)
class Node:
    name: str
    cpus: int
    mem_mb: int
    gpus: dict = field(default_factory=dict)  # GPU type (None = untyped) -> count


@dataclass
class Partition:
    name: str
    default: bool = False
    state: str = "up"
    max_minutes: int | None = None  # None = no limit
    nodes: list = field(default_factory=list)

    def limits(self) -> Limits:
        return Limits(self.max_minutes, max((n.mem_mb for n in self.nodes), default=None) or None,
                      f"partition {self.name}")


def minutes(text: str) -> int | None:
    """A SLURM time (``infinite``, ``30``, ``30:00``, ``2:00:00``, ``1-12:00:00``) in whole minutes."""
    text = text.strip()
    if text.lower() in ("infinite", "unlimited", "n/a", ""):
        return None
    days, _, rest = text.rpartition("-")
    parts = [int(x) for x in rest.split(":")]
    if len(parts) == 1:
        h, m, s = 0, parts[0], 0
    elif len(parts) == 2:
        h, (m, s) = 0, parts
    else:
        h, m, s = parts[-3:]
    return (int(days or 0) * 24 + h) * 60 + m + (1 if s else 0)


def gres_gpus(gres: str) -> dict:
    """GPUs by type in a node's GRES (``gpu:a100:4(S:0-1),mps:400`` -> ``{"a100": 4}``)."""
    out: dict = {}
    for item in re.sub(r"\([^)]*\)", "", gres or "").split(","):
        parts = item.strip().split(":")
        if parts[0] != "gpu":
            continue
        count = int(parts[-1]) if len(parts) > 1 and parts[-1].isdigit() else 1
        kind = parts[1] if len(parts) == 3 else None
        out[kind] = out.get(kind, 0) + count
    return out


def parse_sinfo(text: str) -> dict[str, Partition]:
    """Partitions from ``sinfo -h -N -o SINFO_FORMAT`` (one line per node and partition)."""
    out: dict[str, Partition] = {}
    for line in text.splitlines():
        cols = line.strip().split("|")
        if len(cols) != 7:
            continue
        name, node, cpus, mem, gres, limit, state = cols
        part = out.setdefault(name.rstrip("*"), Partition(name.rstrip("*"), name.endswith("*"), state,
                                                          minutes(limit)))
        part.nodes.append(Node(node, int(cpus.rstrip("+")), int(mem.rstrip("+")), gres_gpus(gres)))
    return out


def partitions(run=subprocess.run) -> dict[str, Partition]:
    """What ``sinfo`` says this cluster offers; ``ClusterError`` when it cannot be asked."""
    try:
        proc = run(["sinfo", "-h", "-N", "-o", SINFO_FORMAT], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        raise ClusterError(f"cannot ask the cluster what it offers (sinfo: {e})") from None
    if proc.returncode != 0 or not proc.stdout.strip():
        raise ClusterError(f"cannot ask the cluster what it offers (sinfo: {proc.stderr.strip() or 'no output'})")
    return parse_sinfo(proc.stdout)


def default_partition(parts: dict[str, Partition]) -> str | None:
    return next((p.name for p in parts.values() if p.default), None)


# --- what a job asks for --------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    rule: str
    partition: str | None
    cpus: int  # per node
    mem_mb: int | None  # per node
    runtime: int | None  # minutes
    gpus: int = 0  # per node
    gpu_type: str | None = None
    nodes: int = 1


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def request_of(rule: str, resources, threads: int) -> Request:
    """A job's request as the plugin submits it (``resources`` as snakemake evaluated them)."""
    get = resources.get
    gres = re.fullmatch(r"gpu(?::([A-Za-z0-9_.]+))?:(\d+)", str(get("gres") or ""))
    if gres:
        gpus, gpu_type = int(gres.group(2)), gres.group(1)
    else:
        gpu_type = get("gpu_model") or None
        gpus = _int(get("gpu")) or (1 if gpu_type else 0)
    cpus = _int(get("cpus_per_task")) or threads
    mem = _int(get("mem_mb"))
    if _int(get("mem_mb_per_cpu")):
        mem = _int(get("mem_mb_per_cpu")) * cpus
    return Request(rule, get("slurm_partition") or None, cpus, mem, _int(get("runtime")), gpus, gpu_type,
                   _int(get("nodes")) or 1)


def _key(rule: str, name: str) -> str:
    stage = stage_of_rule(rule)
    return f"resources.{stage}.{name}" if stage else f"the rule's {name}"


def problems(req: Request, parts: dict[str, Partition]) -> list[str]:
    """What in ``req`` its partition cannot give (empty when the job can start there)."""
    name = req.partition or default_partition(parts)
    if name is None:
        return [f"names no partition and the cluster has no default one; set resources.partition "
                f"(partitions: {', '.join(parts)})"]
    part = parts.get(name)
    if part is None:
        return [f"asks for partition {name!r} ({_key(req.rule, 'partition')}), which the cluster does not have "
                f"(partitions: {', '.join(parts)})"]
    where = f"partition {name}"
    out = []
    if not part.state.startswith("up"):
        out.append(f"goes to {where}, which is {part.state}")
    if req.runtime and part.max_minutes and req.runtime > part.max_minutes:
        out.append(f"asks {where} for a time limit of {req.runtime} min ({_key(req.rule, 'runtime')}), but its "
                   f"limit is {part.max_minutes} min")
    typed = (lambda n: n.gpus.get(req.gpu_type, 0)) if req.gpu_type else (lambda n: sum(n.gpus.values()))
    dims = [("CPUs", req.cpus, lambda n: n.cpus, "cpus"), ("MB of memory", req.mem_mb, lambda n: n.mem_mb, "mem_mb"),
            (f"GPUs{' of type ' + req.gpu_type if req.gpu_type else ''}", req.gpus, typed, "gpus")]
    for what, wanted, offered, key in dims:
        if wanted and wanted > max(map(offered, part.nodes), default=0):
            most = max(map(offered, part.nodes), default=0)
            out.append(f"asks {where} for {wanted} {what} per node ({_key(req.rule, key)}), but its largest node "
                       f"has {most}")
    if not out and req.nodes > 1:
        able = [n for n in part.nodes if all(not w or o(n) >= w for _, w, o, _ in dims)]
        if len(able) < req.nodes:
            out.append(f"asks {where} for {req.nodes} nodes ({_key(req.rule, 'nodes')}) with {req.cpus} CPUs, "
                       f"{req.mem_mb} MB and {req.gpus} GPUs each, but only {len(able)} of its nodes have that")
    return out


def check(requests, parts: dict[str, Partition]) -> list[str]:
    """One line per (rule, problem), with how many jobs it concerns; empty when every job fits."""
    seen: dict[str, int] = {}
    for req in requests:
        for problem in problems(req, parts):
            line = f"rule {req.rule} {problem}"
            seen[line] = seen.get(line, 0) + 1
    return [f"{line} [{n} job{'s' if n > 1 else ''}]" for line, n in seen.items()]


# --- the sbatch line ------------------------------------------------------------------------------


def sbatch_line(job, *, logdir, workdir, default_partition: str | None = None, settings=None,
                run_id: str = "<run id>", wrap: str = "<snakemake job step>") -> str:
    """The ``sbatch`` command snakemake-executor-plugin-slurm runs for ``job`` (a snakemake job, or
    anything with ``name``, ``wildcards``, ``resources`` and ``threads``): the plugin's own
    ``get_submit_command`` and ``set_gres_string``, with the parameters its ``run_job`` passes.
    ``run_id`` (the run's job name) and ``wrap`` (the snakemake command the job runs) stand in for
    what only the running executor knows."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    wildcards = wildcard_text(job.wildcards)
    account = re.split(r"[,\s]+", str(job.resources.get("slurm_account") or "").strip())[0]
    partition = job.resources.get("slurm_partition") or default_partition
    failed = {n.strip() for n in (getattr(settings, "exclude_failed_nodes", None) or "").split(",") if n.strip()}
    params = {"run_uuid": run_id,
              "slurm_logfile": Path(logdir) / f"rule_{job.name}" / wildcards / "%j.log",
              "comment_str": f"rule_{job.name}_wildcards_{wildcards}" if wildcards else f"rule_{job.name}",
              "account": f" -A {shlex.quote(account)}" if account else "",
              "partition": f" -p {shlex.quote(str(partition))}" if partition else "",
              "workdir": str(workdir)}
    call = get_submit_command(job, params, settings=settings, failed_nodes=failed) + set_gres_string(job)
    return call + ' --wrap="' + wrap.replace('"', '\\"') + '"'


# --- a starting run -------------------------------------------------------------------------------


class AccountNote(logging.Filter):
    """Replaces the plugin's three warnings about guessing an account (its guess runs
    ``sacct ... | tail -1`` without a shell, so sacct always answers ``invalid option -- '1'``)
    with one line saying what is submitted; other messages pass."""

    NOISE = ("No SLURM account given, trying to guess.", "Unable to guess SLURM account. Trying to proceed without.")

    def __init__(self, notify):
        super().__init__()
        self.notify, self.said = notify, False

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if text in self.NOISE or (text.startswith("No account was given, not able to get a SLURM account via sacct")
                                  and "invalid option" in text):
            if not self.said:
                self.said = True
                self.notify("No SLURM account set (config resources.account or resources.<stage>.account): "
                            "jobs are submitted without -A, so SLURM uses your default account")
            return False
        return True


class SlurmRun:
    """The workflow's link to SLURM for one snakemake run: made when the Snakefile is read (its
    ``ends`` and ``limits`` go to every rule's resource functions), started by ``onstart`` when the
    jobs go to SLURM. Until then (local runs, dry runs) it looks nothing up."""

    def __init__(self, log_root, notify=None, since: float | None = None):
        self.log_root = Path(log_root)
        self.notify = notify or (lambda message: print(message, file=sys.stderr))
        self.attempts = Attempts(since)
        self.parts: dict[str, Partition] = {}

    def ends(self, rule: str, wildcards, attempt: int):
        """How the earlier attempts of a job ended; None before ``start`` (a local run, or snakemake's
        job step inside a SLURM job, which evaluates the rule's resources again but submits nothing)."""
        if self.attempts.root is None:
            return None
        return self.attempts.ends(rule, wildcards, attempt)

    def limits(self, partition: str | None) -> Limits | None:
        part = self.parts.get(partition or default_partition(self.parts) or "")
        return part.limits() if part else None

    def start(self, workflow, preview: bool = False) -> None:
        """Before the first job is submitted:

        - SLURM logs go to ``log_root`` (``results/<experiment>/slurm_logs``) unless
          ``--slurm-logdir`` names a folder: the plugin reads its log folder when its executor
          starts, after the Snakefile was read, so the running executor is told here;
        - earlier attempts of a job are looked for there (``Attempts``);
        - the plugin's account guess is replaced by one line (``AccountNote``);
        - every job's request is checked against ``sinfo``; ``ClusterError`` lists what does not fit;
        - ``preview``: print each rule's sbatch line and stop (``SystemExit``) before anything is
          submitted.
        """
        executor = getattr(getattr(workflow, "scheduler", None), "_executor", None)
        settings = workflow.executor_settings
        if getattr(settings, "logdir", None) is None:
            folder = self.log_root.resolve()
            settings.logdir = folder
            if executor is not None and hasattr(executor, "slurm_logdir"):
                executor.slurm_logdir = folder
            else:
                self.notify(f"Cannot tell the SLURM executor to write its logs to {folder}; "
                            "they go to its default folder")
        logdir = Path(getattr(executor, "slurm_logdir", None) or settings.logdir)
        self.attempts.root = logdir
        logging.getLogger("snakemake.logging").addFilter(AccountNote(self.notify))
        jobs = [job for job in workflow.dag.needrun_jobs() if not job.is_local]
        self.parts = partitions()
        found = check([request_of(job.name, job.resources, job.threads) for job in jobs], self.parts)
        if preview:
            print_preview(jobs, found, logdir=logdir, workdir=workflow.workdir_init, parts=self.parts,
                          settings=settings)
            raise SystemExit(1 if found else 0)
        if found:
            raise ClusterError("these jobs ask for more than the cluster offers (sinfo), so nothing was "
                               "submitted:\n  " + "\n  ".join(found))


def print_preview(jobs, found, *, logdir, workdir, parts, settings, out=None) -> None:
    """Each rule's sbatch line (its first job's; more only where a job of the rule gets other options)."""
    out = out or sys.stdout
    default = default_partition(parts)
    by_rule: dict[str, list] = {}
    for job in jobs:
        by_rule.setdefault(job.name, []).append(job)
    for rule, rule_jobs in by_rule.items():
        shown = set()
        for job in rule_jobs:
            line = sbatch_line(job, logdir=logdir, workdir=workdir, default_partition=default, settings=settings)
            options = re.sub(r" --(output|comment) ('[^']*'|\S+)", "", line)
            if options in shown:
                continue
            shown.add(options)
            wildcards = ", ".join(f"{k}={v}" for k, v in dict(job.wildcards.items()).items())
            print(f"# rule {rule}: {len(rule_jobs)} job{'s' if len(rule_jobs) > 1 else ''}"
                  + (f" (this one: {wildcards})" if wildcards else ""), file=out)
            print(line, file=out)
    verdict = (["# every job fits its partition (sinfo)"] if not found
               else ["# does not fit the cluster (sinfo):", *(f"#   {line}" for line in found)])
    print("\n".join(verdict), file=out)

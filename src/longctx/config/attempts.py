"""How the earlier attempts of a job ended on SLURM, so that a retry grows only what ran out
(``longctx.config.resources``: time after ``TIMEOUT``, memory after ``OUT_OF_MEMORY``).

Snakemake gives a resource function the attempt number and nothing about the previous attempt.
What names a job's attempts is its SLURM log folder: snakemake-executor-plugin-slurm sends every
job's output to ``<log folder>/rule_<rule>/<wildcards>/%j.log`` (the workflow sets the log folder
to ``results/<experiment>/slurm_logs``), so that folder holds exactly the attempts of one job of
one experiment. The attempts of this run are the SLURM jobs writing there since the run started,
and their end states come, in order of preference, from

1. ``squeue --states=all``: SLURM keeps finished jobs in it for ``MinJobAge`` seconds (300 by
   default), with their state and output path, whether or not an accounting database runs; a retry
   is evaluated as soon as the executor saw the attempt end, well within that;
2. ``sacct`` where an accounting database runs, for a job squeue no longer lists;
3. the log itself: slurmstepd writes ``*** JOB 12 ON node CANCELLED AT ... DUE TO TIME LIMIT ***``
   on a timeout, ``Detected 1 oom_kill event`` (or ``Exceeded job memory limit``) when the job ran
   out of memory, ``CANCELLED AT ...`` without a reason on ``scancel``.

An attempt that none of them explains counts as ``UNKNOWN``, which grows nothing.
"""

from __future__ import annotations

import getpass
import re
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

# the output field last: a path could hold the separator
SQUEUE_FORMAT = "JobID:|,State:|,SubmitTime:|,StdOut:"
# slurmstepd's own lines in a job's output, most specific first
_LOG_STATES = [
    (re.compile(r"CANCELLED AT \S+ DUE TO TIME LIMIT"), "TIMEOUT"),
    (re.compile(r"oom_kill event|oom-kill|OOM Killed|Exceeded (job|step) memory limit"), "OUT_OF_MEMORY"),
    (re.compile(r"CANCELLED AT \S+ DUE TO PREEMPTION"), "PREEMPTED"),
    (re.compile(r"CANCELLED AT \S+ DUE TO NODE FAIL"), "NODE_FAIL"),
    (re.compile(r"\*\*\* JOB \d+ ON \S+ CANCELLED AT \S+ \*\*\*|CANCELLED AT \S+ \*\*\*"), "CANCELLED"),
]


class End(NamedTuple):
    """How one attempt ended: its SLURM job id, state (``TIMEOUT``, ``OUT_OF_MEMORY``, ``CANCELLED``,
    ``FAILED``, ..., ``UNKNOWN``) and where the state came from (``squeue``, ``sacct``, ``log``)."""

    jobid: int
    state: str
    source: str


def wildcard_text(wildcards) -> str:
    """A job's wildcards as the plugin names its log folder (``get_job_wildcards``): values joined
    by ``_``, slashes replaced."""
    values = wildcards.values() if isinstance(wildcards, dict) else (wildcards or ())
    return "_".join(map(str, values)).replace("/", "_")


def job_log_folder(log_root, rule: str, wildcards) -> Path:
    return Path(log_root) / f"rule_{rule}" / wildcard_text(wildcards)


def state_from_log(text: str) -> str | None:
    """The end state slurmstepd wrote into a job's output, or None when it wrote none."""
    for pattern, state in _LOG_STATES:
        if pattern.search(text):
            return state
    return None


def parse_squeue(text: str) -> list[tuple[int, str, float, str]]:
    """(job id, state, submit time as a timestamp, output path) per line of ``squeue -O SQUEUE_FORMAT``."""
    out = []
    for line in text.splitlines():
        parts = line.split("|", 3)
        if len(parts) < 4 or not parts[0].strip().isdigit():
            continue  # array tasks (12_3) and headers are not ours
        jobid, state, submitted, stdout = (p.strip() for p in parts)
        try:
            when = datetime.fromisoformat(submitted).timestamp()
        except ValueError:
            when = float("nan")
        out.append((int(jobid), state.split()[0] if state else "UNKNOWN", when, stdout.rstrip("|").strip()))
    return out


class Attempts:
    """The end states of the earlier attempts of a job in this run (``ends``), for the resource
    functions. ``root`` is the SLURM log folder; until it is set (jobs that do not go to SLURM)
    nothing is looked up."""

    def __init__(self, since: float | None = None, root=None, user: str | None = None, run=subprocess.run):
        self.since = time.time() if since is None else since
        self.root = Path(root) if root else None
        self.user = user or getpass.getuser()
        self._run = run

    def _command(self, args: list[str]) -> str | None:
        try:
            proc = self._run(args, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return proc.stdout if proc.returncode == 0 else None

    def ends(self, rule: str, wildcards, attempt: int) -> list[End]:
        """How attempts 1 .. attempt-1 of this job ended, oldest first (fewer when SLURM has no
        trace of some: an sbatch that failed leaves none)."""
        if self.root is None or attempt <= 1:
            return []
        folder = job_log_folder(self.root, rule, wildcards).resolve()
        since = int(self.since) - 1  # SLURM's times have whole seconds
        found: dict[int, End] = {}
        listed = self._command(["squeue", "-h", "--states=all", "-u", self.user, "-O", SQUEUE_FORMAT])
        for jobid, state, submitted, stdout in parse_squeue(listed or ""):
            if stdout and Path(stdout).parent == folder and submitted >= since:
                found[jobid] = End(jobid, state, "squeue")
        logs = {int(p.stem): p for p in folder.glob("*.log") if p.stem.isdigit() and p.stat().st_mtime >= since}
        missing = sorted(set(logs) - set(found))
        if missing:
            accounted = self._command(["sacct", "-X", "-n", "-P", "-o", "JobIDRaw,State",
                                       "-j", ",".join(map(str, missing))])
            for line in (accounted or "").splitlines():
                jobid, _, state = line.partition("|")
                if jobid.strip().isdigit() and int(jobid) in logs and state.strip():
                    found[int(jobid)] = End(int(jobid), state.split()[0], "sacct")
        for jobid in missing:
            if jobid not in found:
                state = state_from_log(logs[jobid].read_text(errors="replace"))
                found[jobid] = End(jobid, state or "UNKNOWN", "log")
        return [found[j] for j in sorted(found)][-(attempt - 1):]

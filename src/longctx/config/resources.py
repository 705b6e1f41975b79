"""What each stage of the workflow asks a cluster for, from the config's ``resources`` section.

One entry per stage (tokenizer, prepare, base_model, finetune, search, evaluate, report): partition,
account, time limit, memory, CPUs, GPUs per node, GPU type and nodes. A stage's own partition or
account wins over the section-wide one. ``RULE_STAGES`` says which stage each rule takes its entry
from.

Retries (``--retries`` in the profile) grow a request only when SLURM ended the earlier attempt for
running out of it: after ``TIMEOUT`` the time limit is multiplied by ``runtime_factor``, after
``OUT_OF_MEMORY`` the memory by ``mem_factor``, each capped by the stage's ``runtime_max`` /
``mem_mb_max`` or else the partition's limit. A cancelled, failed or preempted attempt is retried
with what it had. How an attempt ended is looked up by ``longctx.config.attempts``.

``snakemake_resources`` turns a stage into the resource names snakemake-executor-plugin-slurm reads:
``slurm_partition``, ``slurm_account``, ``runtime`` (minutes), ``mem_mb``, ``gpu``/``gpu_model`` (one
node) or ``gres`` + ``nodes`` + ``mpi`` (several nodes: the rule's command starts its own ``srun``,
see ``longctx.launch``); the CPU count is the rule's ``threads``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

from longctx.config.schema import ConfigError

STAGES = ("tokenizer", "prepare", "base_model", "finetune", "search", "evaluate", "report")
# the config entry each rule's resources come from (rules/*.smk: `stage_resources(<stage>)`)
RULE_STAGES = {"tokenizer": "tokenizer", "prepare_corpus": "prepare", "base_model": "base_model",
               "finetune": "finetune", "search": "search", "recovery": "search", "evaluate": "evaluate",
               "report": "report", "compare": "report"}


def stage_of_rule(rule: str) -> str | None:
    """The stage whose resources ``rule`` takes; evaluate_<name> is one evaluation's rule
    (``evaluate.one_job_per: evaluation``)."""
    return RULE_STAGES.get(rule) or ("evaluate" if rule.startswith("evaluate_") else None)


# what SLURM says an attempt ran out of -> the request a retry grows
GROWS_AFTER = {"TIMEOUT": "runtime", "OUT_OF_MEMORY": "mem_mb"}
# stages whose training loop runs data-parallel under accelerate/torchrun (the base model only
# when it is pretrained here); the others run as one process that sees all of the job's GPUs
DATA_PARALLEL = ("base_model", "finetune")


class ResourceError(ConfigError):
    """A resources entry that cannot be scheduled; the message names the config key."""


class Limits(NamedTuple):
    """A partition's largest time limit (minutes) and node memory (MB); None = no limit known."""

    runtime: int | None = None
    mem_mb: int | None = None
    where: str = "the partition"


class Retry(NamedTuple):
    runtime: int
    mem_mb: int
    why: str


@dataclass(frozen=True)
class StageResources:
    stage: str
    runtime: int  # minutes, first attempt
    mem_mb: int  # per node, first attempt
    cpus: int  # per node
    gpus: int = 0  # per node
    nodes: int = 1
    gpu_type: str | None = None
    partition: str | None = None
    account: str | None = None
    constraint: str | None = None
    slurm_extra: str | None = None
    runtime_factor: float = 1.0
    mem_factor: float = 1.0
    runtime_max: int | None = None  # cap of the growth; None = the partition's limit
    mem_mb_max: int | None = None

    def runtime_at(self, ends=(), limit: int | None = None) -> int:
        """Time limit in minutes after earlier attempts that ended ``ends`` (SLURM states): x
        ``runtime_factor`` per ``TIMEOUT``, capped by ``runtime_max`` and ``limit`` (the partition's)."""
        grown = math.ceil(self.runtime * self.runtime_factor ** sum(e == "TIMEOUT" for e in ends))
        return max(self.runtime, min([grown, *(c for c in (self.runtime_max, limit) if c)]))

    def mem_mb_at(self, ends=(), limit: int | None = None) -> int:
        """Memory per node after earlier attempts that ended ``ends``: x ``mem_factor`` per
        ``OUT_OF_MEMORY``, capped by ``mem_mb_max`` and ``limit`` (the largest node's memory)."""
        grown = math.ceil(self.mem_mb * self.mem_factor ** sum(e == "OUT_OF_MEMORY" for e in ends))
        return max(self.mem_mb, min([grown, *(c for c in (self.mem_mb_max, limit) if c)]))

    def retry(self, ends=(), limits: "Limits | None" = None) -> "Retry":
        """The request of the attempt after ``ends``, and a sentence saying why it is what it is."""
        limits = limits or Limits()
        runtime, mem_mb = self.runtime_at(ends, limits.runtime), self.mem_mb_at(ends, limits.mem_mb)
        return Retry(runtime, mem_mb, self._why(ends, runtime, mem_mb, limits))

    def _why(self, ends, runtime: int, mem_mb: int, limits: "Limits") -> str:
        parts = []
        for key, factor_key, unit, value, first, factor, cap in (
                ("runtime", "runtime_factor", "min", runtime, self.runtime, self.runtime_factor, self.runtime_max),
                ("mem_mb", "mem_factor", "MB", mem_mb, self.mem_mb, self.mem_factor, self.mem_mb_max)):
            what = "time limit" if key == "runtime" else "memory"
            grew = [e for e in ends if GROWS_AFTER.get(e) == key]
            if not grew:
                parts.append(f"{what} kept at {value} {unit}")
                continue
            text = f"{what} {first} -> {value} {unit} (x{factor:g} per {grew[0]}, resources.{factor_key})"
            if value < math.ceil(first * factor ** len(grew)):
                by = f"resources.{self.stage}.{key}_max" if cap == value else f"the limit of {limits.where}"
                text += f", capped by {by}"
            parts.append(text)
        return ", ".join(parts)

    def snakemake_resources(self, attempts: "Callable | None" = None, limits: "Callable | None" = None,
                            notify: "Callable[[str], None] | None" = None) -> dict:
        """The rule's ``resources:``. Runtime and memory are functions of the attempt: from the
        second attempt on, ``attempts(rule, wildcards, attempt)`` says how the earlier attempts of
        this job ended (a list of ``longctx.config.attempts.End``; None when nothing can be known:
        the first request then), ``limits(partition)`` gives the partition's ``Limits`` (or None),
        and ``notify`` gets one line per retry saying what the retry asks for and why."""
        decided = {}

        def decide(wildcards, attempt, rulename):
            wildcards = tuple(wildcards or ())
            key = (rulename, wildcards, attempt)
            if key not in decided:
                ends = attempts(rulename, wildcards, attempt) if attempt > 1 and attempts else None
                if ends is None:
                    decided[key] = Retry(self.runtime, self.mem_mb, "")
                else:
                    retry = self.retry([e.state for e in ends], (limits(self.partition) if limits else None))
                    decided[key] = retry
                    if notify:
                        seen = ", ".join(f"attempt {i} (SLURM job {e.jobid}) ended {e.state}"
                                         for i, e in enumerate(ends, start=attempt - len(ends))) or \
                            "how the earlier attempts ended is unknown (no SLURM record or log)"
                        label = f"{rulename} ({', '.join(map(str, wildcards))})" if len(wildcards) else rulename
                        notify(f"Retrying {label}, attempt {attempt}: {seen}; {retry.why} "
                               f"(requests grow only after TIMEOUT or OUT_OF_MEMORY)")
            return decided[key]

        def runtime(wildcards, attempt, rulename):
            return decide(wildcards, attempt, rulename).runtime

        def mem_mb(wildcards, attempt, rulename):
            return decide(wildcards, attempt, rulename).mem_mb

        out = {"runtime": runtime, "mem_mb": mem_mb}
        if self.partition:
            out["slurm_partition"] = self.partition
        if self.account:
            out["slurm_account"] = self.account
        if self.constraint:
            out["constraint"] = self.constraint
        if self.slurm_extra:
            out["slurm_extra"] = self.slurm_extra
        if self.nodes > 1:
            # the batch script runs the rule's command once, which starts one launcher per node by
            # srun (`mpi` tells the plugin not to wrap the command in its own one-task srun)
            out.update(nodes=self.nodes, mpi="srun", tasks=self.nodes, tasks_per_gpu=0,
                       gres=f"gpu:{self.gpu_type}:{self.gpus}" if self.gpu_type else f"gpu:{self.gpus}")
        elif self.gpus:
            out["gpu"] = self.gpus
            if self.gpu_type:
                out["gpu_model"] = self.gpu_type
        return out


def stage_resources(config: dict, stage: str) -> StageResources:
    """The resolved resources of ``stage`` (the config must have been validated)."""
    if stage not in STAGES:
        raise ResourceError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    section = config["resources"]
    entry = section[stage]
    return StageResources(
        stage=stage,
        runtime=entry["runtime"],
        mem_mb=entry["mem_mb"],
        cpus=entry["cpus"],
        gpus=entry["gpus"],
        nodes=entry["nodes"],
        gpu_type=entry["gpu_type"],
        partition=entry["partition"] or section["partition"],
        account=entry["account"] or section["account"],
        constraint=entry["constraint"],
        slurm_extra=entry["slurm_extra"],
        runtime_factor=section["runtime_factor"],
        mem_factor=section["mem_factor"],
        runtime_max=entry["runtime_max"],
        mem_mb_max=entry["mem_mb_max"],
    )


def check(config: dict) -> None:
    """Combinations the schema cannot express; errors name the key."""
    pretrain = config["model"]["source"] == "pretrain"
    for stage in STAGES:
        r = stage_resources(config, stage)
        key = f"resources.{stage}"
        if r.nodes > 1:
            if stage not in DATA_PARALLEL or (stage == "base_model" and not pretrain):
                what = "importing the base model" if stage == "base_model" else stage
                raise ResourceError(
                    f"config key '{key}.nodes': {what} runs as one process; only pretraining and "
                    f"fine-tuning spread over several nodes (set nodes: 1)"
                )
            if r.gpus < 1:
                raise ResourceError(f"config key '{key}.gpus': several nodes ({r.nodes}) need gpus per node >= 1")
        if r.gpu_type and not r.gpus:
            raise ResourceError(f"config key '{key}.gpu_type': set only together with gpus >= 1")
        for name, first in (("runtime", r.runtime), ("mem_mb", r.mem_mb)):
            cap = getattr(r, f"{name}_max")
            if cap is not None and cap < first:
                raise ResourceError(f"config key '{key}.{name}_max': the cap of the retries' growth ({cap}) is "
                                    f"below the first attempt's {name} ({first})")

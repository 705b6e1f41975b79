"""What each stage of the workflow asks a cluster for, from the config's ``resources`` section.

One entry per stage (tokenizer, prepare, base_model, finetune, search, evaluate, report): partition,
account, time limit, memory, CPUs, GPUs per node, GPU type and nodes. A stage's own partition or
account wins over the section-wide one. Every retry of a failed job (``--retries`` in the profile)
multiplies the time limit by ``runtime_factor`` and the memory by ``mem_factor``, so a job that hit
its limit comes back with more and resumes from its checkpoint or search log.

``snakemake_resources`` turns a stage into the resource names snakemake-executor-plugin-slurm reads:
``slurm_partition``, ``slurm_account``, ``runtime`` (minutes), ``mem_mb``, ``gpu``/``gpu_model`` (one
node) or ``gres`` + ``nodes`` + ``mpi`` (several nodes: the rule's command starts its own ``srun``,
see ``longctx.launch``); the CPU count is the rule's ``threads``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from longctx.config.schema import ConfigError

STAGES = ("tokenizer", "prepare", "base_model", "finetune", "search", "evaluate", "report")
# stages whose training loop runs data-parallel under accelerate/torchrun (the base model only
# when it is pretrained here); the others run as one process that sees all of the job's GPUs
DATA_PARALLEL = ("base_model", "finetune")


class ResourceError(ConfigError):
    """A resources entry that cannot be scheduled; the message names the config key."""


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

    def runtime_at(self, attempt: int) -> int:
        """Time limit in minutes of the ``attempt``-th try (1 = first)."""
        return math.ceil(self.runtime * self.runtime_factor ** (attempt - 1))

    def mem_mb_at(self, attempt: int) -> int:
        return math.ceil(self.mem_mb * self.mem_factor ** (attempt - 1))

    def snakemake_resources(self) -> dict:
        """The rule's ``resources:`` (runtime and memory grow with ``attempt``)."""

        def runtime(wildcards, attempt):
            return self.runtime_at(attempt)

        def mem_mb(wildcards, attempt):
            return self.mem_mb_at(attempt)

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

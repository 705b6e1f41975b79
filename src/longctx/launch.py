"""How a stage's process(es) start inside the job's allocation: the command that stands for
``python -m longctx``, built from the job's resources (nodes, GPUs per node).

- 0 or 1 GPU, or a stage that runs as one process (search, evaluation, importing a model):
  ``python -m longctx`` (that one process sees all of the job's GPUs);
- several GPUs on one node, data-parallel training: ``accelerate launch`` with one process per GPU;
- several nodes: ``srun`` starts one ``torchrun`` per node, and the torchrun agents meet at a c10d
  rendezvous on the first node of the job (its host name from the job's node list; the port
  derived from the job id, so two jobs sharing a node do not collide).

The training loop (``longctx.train``) is written for accelerate, which reads the environment both
launchers set. ``python -m longctx.launch probe`` checks a launch end to end: every process joins the
process group and an all-reduce adds up the ranks.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys

MODULE = "longctx"

# the first host of the allocation; SLURM_JOB_NODELIST is read from squeue when the environment
# lacks it (the slurm plugin's job step clears most SLURM_* variables before running the rule)
HEAD_NODE = ('$(scontrol show hostnames "${SLURM_JOB_NODELIST:-$(squeue -h -j "$SLURM_JOB_ID" -o %N)}" '
             '| head -n1)')
RDZV_PORT = "$((29500 + SLURM_JOB_ID % 1000))"


def module_command(nodes: int = 1, gpus_per_node: int = 0, data_parallel: bool = True,
                   module: str = MODULE) -> str:
    """The shell words that run ``python -m <module>`` across the allocation; arguments follow."""
    if nodes < 1 or gpus_per_node < 0:
        raise ValueError(f"nodes must be >= 1 and gpus per node >= 0, got nodes={nodes}, gpus={gpus_per_node}")
    if nodes > 1:
        if not data_parallel:
            raise ValueError(f"{module}: a single-process stage cannot run on {nodes} nodes")
        if gpus_per_node < 1:
            raise ValueError(f"{nodes} nodes need at least one GPU per node")
        return multi_node_command(nodes, gpus_per_node, module)
    if data_parallel and gpus_per_node > 1:
        return (f"accelerate launch --multi_gpu --num_machines 1 --num_processes {gpus_per_node} "
                f"--mixed_precision no --dynamo_backend no -m {module}")
    return f"python -m {module}"


def multi_node_command(nodes: int, procs_per_node: int, module: str = MODULE) -> str:
    """srun + torchrun with a c10d rendezvous on the job's first node (use inside an allocation)."""
    return (f"srun --nodes={nodes} --ntasks-per-node=1 --kill-on-bad-exit=1 "
            f"torchrun --nnodes={nodes} --nproc-per-node={procs_per_node} "
            f'--rdzv-backend=c10d --rdzv-endpoint="{HEAD_NODE}:{RDZV_PORT}" --rdzv-id="$SLURM_JOB_ID" '
            f"-m {module}")


def _gres_gpus(gres: str) -> int:
    """GPUs per node in a gres string like ``gpu:8`` or ``gpu:a100:8``."""
    m = re.fullmatch(r"gpu(?::[A-Za-z0-9_.]+)?:(\d+)", gres or "")
    return int(m.group(1)) if m else 0


def from_resources(resources, data_parallel: bool, module: str = MODULE) -> str:
    """``module_command`` for a snakemake job's ``resources`` (as set by ``longctx.config.resources``)."""
    nodes = int(resources.get("nodes", 1) or 1)
    if nodes > 1:
        gpus = _gres_gpus(resources.get("gres", ""))
    else:
        gpus = int(resources.get("gpu", 0) or 0) or _gres_gpus(resources.get("gres", ""))
    return module_command(nodes, gpus, data_parallel, module)


def probe() -> dict:
    """Join the process group the launcher set up and all-reduce the ranks; returns what it saw."""
    import socket

    import torch
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    total = torch.tensor([float(rank)], device="cuda" if backend == "nccl" else "cpu")
    dist.all_reduce(total)
    dist.destroy_process_group()
    return {"rank": rank, "world_size": world, "host": socket.gethostname(), "rank_sum": float(total.item()),
            "ok": float(total.item()) == world * (world - 1) / 2}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m longctx.launch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("command", help="print the launch command for an allocation")
    c.add_argument("--nodes", type=int, default=1)
    c.add_argument("--gpus-per-node", type=int, default=0)
    c.add_argument("--single-process", action="store_true", help="a stage that is not data-parallel")
    c.add_argument("--module", default=MODULE)
    sub.add_parser("probe", help="join the process group and all-reduce (run it under the launcher)")
    args = p.parse_args(argv)
    if args.command == "command":
        try:
            print(module_command(args.nodes, args.gpus_per_node, not args.single_process, args.module))
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    seen = probe()
    # one write per process, so the lines of processes sharing a stdout do not interleave
    os.write(1, (" ".join(f"{k}={shlex.quote(str(v))}" for k, v in seen.items()) + "\n").encode())
    return 0 if seen["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

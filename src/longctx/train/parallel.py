"""Multi-GPU strategies and sequence parallelism for the trainer.

Strategies (``finetune.strategy``), each an accelerate plugin built here from the config, so the
same launch command (``longctx.launch``: plain python, ``accelerate launch`` or srun + torchrun)
serves all of them:

- ``ddp``: one process, or data parallel with replicated weights (accelerate's default);
- ``fsdp``: PyTorch FSDP2 (``fully_shard`` per decoder layer), parameters, gradients and optimizer
  state sharded; ``cpu_offload`` moves them to CPU memory;
- ``deepspeed_zero2`` / ``deepspeed_zero3``: DeepSpeed ZeRO stage 2 (optimizer state and gradients
  sharded) or 3 (parameters too); ``cpu_offload`` offloads the optimizer (and, for stage 3, the
  parameters) to CPU. The DeepSpeed JSON is generated from the config (``deepspeed_config``) and
  kept beside the checkpoints. DeepSpeed is imported only when asked for.

A sharded strategy needs a process group even on one GPU (FSDP with CPU offload is how a model
whose optimizer state does not fit trains on one GPU); ``ensure_process_group_env`` gives a plain
``python -m longctx`` the torchrun environment of a world of one.

Sequence parallelism (``finetune.sequence_parallel`` = P > 1) is DeepSpeed-Ulysses written with
``torch.distributed``: each of P ranks holds T/P tokens of the same sequences; around attention an
all-to-all trades the sequence split for a head split (every rank then sees all T tokens for H/P
heads), the chosen kernel runs, and a second all-to-all trades back. Everything else (embeddings,
MLPs, norms, the chunked loss) runs on the local T/P tokens, so activation memory per GPU falls by
P. Ranks r*P .. r*P+P-1 form one sequence-parallel group; groups are data parallel to each other.
Requirements: T divisible by P, attention heads and key/value heads divisible by P.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

STRATEGIES = ("ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3")
ULYSSES = "longctx_ulysses"


class ParallelError(ValueError):
    """A strategy or sequence-parallel setting that cannot run; the message names the config key."""


# --- strategies ---------------------------------------------------------------------------------


def deepspeed_available() -> bool:
    return importlib.util.find_spec("deepspeed") is not None




def ensure_process_group_env() -> bool:
    """Set the torchrun variables of a one-process world unless a launcher set them; True if set here."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return False
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    return True


def deepspeed_config(stage: int, micro_batch_size: int, accumulation: int, grad_clip: float, bf16: bool,
                     cpu_offload: bool) -> dict:
    """The DeepSpeed JSON for ZeRO ``stage`` (2 or 3), with explicit values (no "auto")."""
    zero = {
        "stage": stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": 5e8,
    }
    if stage == 3:
        zero.update(stage3_prefetch_bucket_size=5e8, stage3_param_persistence_threshold=1e6,
                    stage3_gather_16bit_weights_on_model_save=True)
    else:
        zero.update(allgather_partitions=True, allgather_bucket_size=5e8, reduce_scatter=True)
    if cpu_offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": grad_clip if grad_clip > 0 else 0.0,
        "bf16": {"enabled": bool(bf16)},
        "zero_optimization": zero,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def accelerator_kwargs(strategy: str, model, *, accumulation: int, micro_batch_size: int, grad_clip: float,
                       mixed_precision: str, cpu_offload: bool) -> tuple[dict, dict | None]:
    """(Accelerator kwargs for ``strategy``, the DeepSpeed JSON or None)."""
    if strategy not in STRATEGIES:
        raise ParallelError(f"config key 'finetune.strategy': unknown strategy {strategy!r}; one of {STRATEGIES}")
    kwargs = {"gradient_accumulation_steps": accumulation, "mixed_precision": mixed_precision}
    if strategy == "ddp":  # (cpu_offload with ddp is refused with the other settings, train.settings)
        return kwargs, None
    if strategy == "fsdp":
        from accelerate.utils import FullyShardedDataParallelPlugin

        layers = sorted(getattr(model, "_no_split_modules", None) or [])
        if not layers:
            raise ParallelError(f"config key 'finetune.strategy': fsdp wraps each decoder layer, but "
                                f"{type(model).__name__} names no layer class (_no_split_modules)")
        kwargs["fsdp_plugin"] = FullyShardedDataParallelPlugin(
            fsdp_version=2,
            auto_wrap_policy="transformer_based_wrap",
            transformer_cls_names_to_wrap=layers,
            reshard_after_forward=True,
            cpu_offload=cpu_offload,
            state_dict_type="SHARDED_STATE_DICT",
            # activation checkpointing is transformers' own (finetune.gradient_checkpointing)
            activation_checkpointing=False,
        )
        return kwargs, None
    if not deepspeed_available():
        raise ParallelError(f"config key 'finetune.strategy': {strategy} needs the deepspeed package "
                            f"(pip install deepspeed), which is not installed; use fsdp instead")
    from accelerate.utils import DeepSpeedPlugin

    stage = 3 if strategy == "deepspeed_zero3" else 2
    config = deepspeed_config(stage, micro_batch_size, accumulation, grad_clip, mixed_precision == "bf16",
                              cpu_offload)
    kwargs["deepspeed_plugin"] = DeepSpeedPlugin(hf_ds_config=json.loads(json.dumps(config)))
    return kwargs, config


# --- sequence parallelism (DeepSpeed-Ulysses) -----------------------------------------------------


@dataclass
class SequenceParallel:
    """Where this process sits: its sequence-parallel group (of ``degree`` ranks) and data-parallel rank."""

    degree: int = 1
    group: object = None
    rank: int = 0  # within the sequence-parallel group
    dp_rank: int = 0
    dp_size: int = 1

    def shard(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """This rank's contiguous 1/degree of ``x`` along ``dim``."""
        if self.degree == 1:
            return x
        return x.chunk(self.degree, dim=dim)[self.rank]

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over the group (no gradient)."""
        if self.degree == 1:
            return x
        x = x.detach().clone()
        dist.all_reduce(x, group=self.group)
        return x


def setup_sequence_parallel(degree: int, rank: int = 0, world_size: int = 1) -> SequenceParallel:
    """Create the sequence-parallel groups (every rank must call this, in the same order)."""
    if degree < 1 or world_size % degree:
        raise ParallelError(f"config key 'finetune.sequence_parallel': {degree} does not divide the "
                            f"{world_size} processes")
    if degree == 1:
        return SequenceParallel(1, None, 0, rank, world_size)
    if not dist.is_initialized():
        raise ParallelError("config key 'finetune.sequence_parallel': needs a process group "
                            "(launch one process per GPU)")
    mine = None
    for g in range(world_size // degree):
        ranks = list(range(g * degree, (g + 1) * degree))
        group = dist.new_group(ranks)
        if rank in ranks:
            mine = group
    return SequenceParallel(degree, mine, rank % degree, rank // degree, world_size // degree)


def check_sequence_parallel(config, degree: int, seq_len: int) -> None:
    if degree == 1:
        return
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    if heads % degree or kv % degree:
        raise ParallelError(f"config key 'finetune.sequence_parallel': Ulysses splits attention heads over the "
                            f"{degree} ranks, but the model has {heads} heads and {kv} key/value heads")
    if seq_len % degree:
        raise ParallelError(f"config key 'finetune.sequence_parallel': sequence length {seq_len} is not divisible "
                            f"by {degree}")


class _AllToAll(torch.autograd.Function):
    """all_to_all_single over dim 0; with equal splits its adjoint is the same exchange."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        x = x.contiguous()
        out = torch.empty_like(x)  # contiguous, as the collective writes it in storage order
        dist.all_to_all_single(out, x, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        out = torch.empty_like(grad)
        dist.all_to_all_single(out, grad, group=ctx.group)
        return out, None


def sequence_to_heads(x: torch.Tensor, group, degree: int) -> torch.Tensor:
    """[B, H, T/P, D] (local tokens, all heads) -> [B, H/P, T, D] (all tokens, local heads)."""
    B, H, t, D = x.shape
    h = H // degree
    y = x.reshape(B, degree, h, t, D).permute(1, 0, 2, 3, 4)
    y = _AllToAll.apply(y, group)  # [source rank = sequence block, B, h, t, D]
    return y.permute(1, 2, 0, 3, 4).reshape(B, h, degree * t, D)


def heads_to_sequence(x: torch.Tensor, group, degree: int) -> torch.Tensor:
    """[B, T, H/P, D] (all tokens, local heads) -> [B, T/P, H, D] (local tokens, all heads)."""
    B, T, h, D = x.shape
    t = T // degree
    y = x.reshape(B, degree, t, h, D).permute(1, 0, 2, 3, 4)
    y = _AllToAll.apply(y, group)  # [source rank = head group, B, t, h, D]
    return y.permute(1, 2, 0, 3, 4).reshape(B, t, degree * h, D)


def ulysses_attention(inner: str, sp: SequenceParallel):
    """A transformers attention function: all-to-all, the ``inner`` kernel over the whole sequence, back."""
    from transformers import AttentionInterface

    if inner not in ("sdpa", "flex_attention", "flash_attention_2"):
        raise ParallelError(f"config key 'finetune.attention': sequence parallelism runs sdpa, flex_attention or "
                            f"flash_attention_2 inside, not {inner}")
    inner_fn = AttentionInterface._global_mapping[inner]

    def forward(module, query, key, value, attention_mask, **kwargs):
        q, k, v = (sequence_to_heads(x, sp.group, sp.degree) for x in (query, key, value))
        # position ids are the local shard's; rotary embeddings are already applied, and the inner
        # kernel must not read them as packed-sequence boundaries
        kwargs.pop("position_ids", None)
        out, _ = inner_fn(module, q, k, v, attention_mask, **kwargs)
        return heads_to_sequence(out, sp.group, sp.degree), None

    return forward


def enable_ulysses(model, inner: str, sp: SequenceParallel) -> None:
    """Route the model's attention through Ulysses (``inner`` is the kernel used on full sequences)."""
    from transformers import AttentionInterface

    AttentionInterface.register(ULYSSES, ulysses_attention(inner, sp))
    model.set_attn_implementation(ULYSSES)

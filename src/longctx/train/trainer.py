"""The model prepared for training, and one optimizer step (``Trainer``).

Preparation is a sequence of named steps, each one concern (as torchtitan's ``apply_*``):
precision -> LoRA -> activation checkpointing -> accelerator (strategy) -> attention kernel and
sequence parallelism -> compile -> optimizer and schedule -> wrapping by the strategy.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from longctx import provenance
from longctx.artifacts import atomic_dir, read_json, write_json
from longctx.models.kernels import compile_layers
from longctx.train import attention as attn
from longctx.train import checkpoint, mixed, parallel
from longctx.train.loss import LossModule
from longctx.train.lora import save_lora, with_lora
from longctx.train.packing import PackedBatch
from longctx.train.settings import TrainSettings, TrainingError, check_settings

log = logging.getLogger(__name__)


def lr_lambda(settings: TrainSettings):
    def f(step: int) -> float:
        if settings.warmup_steps and step < settings.warmup_steps:
            # from warmup_from x lr (PI: 10%; Hugging Face's Trainer, Giraffe: 0) up to lr
            return settings.warmup_from + (1 - settings.warmup_from) * step / settings.warmup_steps
        if settings.schedule == "constant":
            return 1.0
        progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
        if settings.schedule == "linear":
            return max(0.0, 1.0 - progress)
        floor = settings.min_lr_ratio  # cosine down to this fraction of lr
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def oom_message(settings: TrainSettings, backend: str) -> str:
    s = settings
    return (
        f"out of GPU memory training at {s.seq_len} tokens (micro_batch_size {s.micro_batch_size}, "
        f"gradient_checkpointing {s.gradient_checkpointing}, strategy {s.strategy}, cpu_offload {s.cpu_offload}, "
        f"sequence_parallel {s.sequence_parallel}, precision {s.precision}, attention {backend}, "
        f"lora {s.lora.enabled}). Knobs in config section 'finetune', cheapest first: micro_batch_size: 1 "
        f"(batch_size stays, gradient accumulation grows); gradient_checkpointing: true; chunk_size smaller "
        f"(LM-head loss chunk); strategy: fsdp or deepspeed_zero3 across GPUs, with cpu_offload: true; "
        f"sequence_parallel: number of GPUs sharing one sequence; lora.enabled: true; precision: bf16-pure."
    )


# --- preparing the model, one concern per step -------------------------------------------------------


def apply_precision(model, precision: str):
    """Weights in bf16 for ``bf16-pure`` (half the memory), else float32 master weights (bf16 under
    autocast, through the accelerator, for ``bf16``)."""
    return model.to(torch.bfloat16 if precision == "bf16-pure" else torch.float32)


def apply_lora(model, s: TrainSettings):
    return with_lora(model, s.lora) if s.lora.enabled else model


def apply_activation_checkpointing(model, s: TrainSettings) -> None:
    if s.gradient_checkpointing:
        activation_checkpointing(model, True)


def build_accelerator(model, s: TrainSettings, accumulation: int, precision: str, cpu: bool):
    """(the accelerate ``Accelerator`` running the strategy, its DeepSpeed JSON or None); seeds every RNG."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    if cpu and s.strategy != "ddp":
        # accelerate runs FSDP and DeepSpeed on GPUs only; CPU processes would silently run DDP
        raise TrainingError(f"config key 'finetune.strategy': {s.strategy} needs CUDA GPUs; on CPU use ddp")
    if s.strategy != "ddp":  # sharded strategies need a process group, even of one GPU
        parallel.ensure_process_group_env()
    kwargs, deepspeed_json = parallel.accelerator_kwargs(
        s.strategy, model, accumulation=accumulation, micro_batch_size=s.micro_batch_size, grad_clip=s.grad_clip,
        mixed_precision="bf16" if precision == "bf16" else "no", cpu_offload=s.cpu_offload)
    accelerator = Accelerator(cpu=cpu, **kwargs)
    engaged = {"fsdp": "FSDP", "deepspeed_zero2": "DEEPSPEED", "deepspeed_zero3": "DEEPSPEED"}.get(s.strategy)
    if engaged and accelerator.distributed_type.name != engaged:
        raise TrainingError(f"config key 'finetune.strategy': {s.strategy} needs CUDA GPUs, but this run is "
                            f"{accelerator.distributed_type.name} on {accelerator.device}; use ddp")
    set_seed(s.seed)
    return accelerator, deepspeed_json


def apply_attention(body, s: TrainSettings, accelerator):
    """The attention kernel (``finetune.attention``), inside Ulysses sequence parallelism when several
    processes share a sequence; returns (backend, the ``SequenceParallel`` layout)."""
    masked = s.document_masking or s.mixed_context.enabled  # short context windows are always masked
    backend = attn.resolve_backend(s.attention, accelerator.device, masked)
    sp = parallel.setup_sequence_parallel(s.sequence_parallel, accelerator.process_index, accelerator.num_processes)
    parallel.check_sequence_parallel(body.config, s.sequence_parallel, s.seq_len)
    if sp.degree > 1:
        parallel.enable_ulysses(body, backend, sp)
    else:
        body.set_attn_implementation(backend)
    return backend, sp


def apply_mixed_context(body, s: TrainSettings, device) -> dict | None:
    """LongRoPE2's mixed context window training: the rotary modules of short windows (the RoPE the
    model uses at ``short_max_length`` tokens, its original RoPE) and of long ones (at the target
    length), or None when it is off (``longctx.train.mixed``)."""
    if not s.mixed_context.enabled:
        return None
    from longctx.rope import geometry_of

    short = s.mixed_context.short_max_length or geometry_of(body.config).original_context
    return mixed.rotaries_at(body, {"short": short, "long": s.seq_len}, device)


def apply_compile(body, s: TrainSettings) -> None:
    if s.compile:
        compile_layers(body)


def build_optimizer(model, s: TrainSettings):
    """AdamW over the trainable parameters and its warm-up + schedule (stepped by hand, once per
    optimizer step: accelerate's wrapper would step it once per process)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if s.cpu_offload and s.strategy.startswith("deepspeed"):
        from deepspeed.ops.adam import DeepSpeedCPUAdam  # the optimizer ZeRO-Offload steps on the CPU

        optimizer = DeepSpeedCPUAdam(trainable, lr=s.lr, betas=tuple(s.betas), weight_decay=s.weight_decay,
                                     adamw_mode=True)
    else:
        # the fused CUDA kernel (one launch for all parameters) where every parameter is a plain
        # CUDA tensor; otherwise None, PyTorch's default (an explicit False would also turn off
        # its foreach kernels), e.g. for FSDP's DTensors
        fused = all(p.is_cuda and type(p.data) is torch.Tensor for p in trainable)
        optimizer = torch.optim.AdamW(trainable, lr=s.lr, betas=tuple(s.betas), weight_decay=s.weight_decay,
                                      fused=fused or None)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(s))


class Trainer:
    """The model prepared for training (precision, LoRA, attention, strategy) and one optimizer step.

    ``train`` drives it over packed data with checkpoints and metrics; ``scripts/bench_train.py``
    times its steps."""

    def __init__(self, model, settings: TrainSettings, device: str = "auto", work_dir=None, base_model_path=None):
        s = self.settings = settings
        check_settings(s)
        self.accum = s.batch_size // s.micro_batch_size
        self.save_dtype = next(model.parameters()).dtype  # the trained folder is saved in the model's dtype
        self.base_config = model.config
        self.base_model_path = base_model_path
        cpu = device == "cpu" or not torch.cuda.is_available()
        self.precision = ("bf16" if not cpu else "fp32") if s.precision == "auto" else s.precision

        model = apply_precision(model, self.precision)
        model = apply_lora(model, s)
        apply_activation_checkpointing(model, s)
        model.train()
        self.model = model
        self.accelerator, self.deepspeed_json = build_accelerator(model, s, self.accum, self.precision, cpu)
        if self.deepspeed_json is not None and work_dir is not None and self.accelerator.is_main_process:
            write_json(Path(work_dir) / "deepspeed.json", self.deepspeed_json)
        acc = self.accelerator
        body = model.get_base_model() if s.lora.enabled else model
        self._attn_before = body.config._attn_implementation
        self.backend, self.sp = apply_attention(body, s, acc)
        rotaries = apply_mixed_context(body, s, acc.device)
        apply_compile(body, s)
        optimizer, self.scheduler = build_optimizer(model, s)
        self.trainable_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
        # the loss module is what the strategy wraps, so DDP/FSDP see the whole forward
        loss_module = LossModule(model, s.chunk_size, self.backend, s.document_masking, self.sp, s.sdpa_backends,
                                 rotaries)
        try:
            self.loss_module, self.optimizer = acc.prepare(loss_module, optimizer)
        except torch.OutOfMemoryError as e:  # the weights alone do not fit
            raise TrainingError(oom_message(s, self.backend)) from e
        self.tokens_per_step = s.batch_size * s.seq_len * self.sp.dp_size  # at most, for supervised examples

    # --- one step -------------------------------------------------------------------------------

    def micro_batch_inputs(self, batch: PackedBatch, position: int) -> dict:
        """Tensors for the loss module: ids, segments and the RoPE method's training positions."""
        device = self.accelerator.device
        inputs = {"input_ids": batch.input_ids.to(device), "segments": batch.segments.to(device)}
        if batch.short is not None:
            inputs["short"] = batch.short.to(device)
        if batch.labels is not None:
            inputs["labels"] = batch.labels.to(device)
        if self.settings.randomized_positions:
            extra = _training_positions(self.base_config, batch.input_ids.shape, self.settings.seed, position)
            inputs.update({k: v.to(device) for k, v in extra.items()})
        return inputs

    def step(self, micro_batches: list[dict]) -> tuple[float, float]:
        """One optimizer step over ``accum`` micro-batches; returns (mean loss, gradient norm or None
        where the strategy does not report it). Raises ``Divergence`` on a non-finite gradient norm,
        before the weights change."""
        acc, s = self.accelerator, self.settings
        total, grad_norm = 0.0, None
        try:
            for inputs in micro_batches:
                with acc.accumulate(self.loss_module):
                    loss, logged = self.loss_module(**inputs)
                    acc.backward(loss)
                    if acc.sync_gradients:
                        grad_norm = _grad_norm(acc, self.loss_module, s.grad_clip)
                        if grad_norm is not None and not math.isfinite(grad_norm):
                            # stop before the optimizer turns the weights into NaN
                            raise Divergence(f"the gradient norm is {grad_norm}")
                    self.optimizer.step()
                    if acc.sync_gradients:
                        self.scheduler.step()
                    self.optimizer.zero_grad()
                total += float(logged) / len(micro_batches)
        except torch.OutOfMemoryError as e:
            raise TrainingError(oom_message(s, self.backend)) from e
        return total, grad_norm

    # --- saving ---------------------------------------------------------------------------------

    def resume(self, ckpt: Path, fingerprint: dict) -> tuple[int, int]:
        """(step, data position) to start from: the checkpoint's when it was made from exactly these
        inputs (``fingerprint``), else (0, 0) with the checkpoint set aside."""
        acc = self.accelerator
        progress = checkpoint.read_progress(ckpt)
        if progress is None:
            return 0, 0
        why = None
        if progress.get("format") != checkpoint.FORMAT:
            why = "it is in an older format (accelerate's pickled state), which is never loaded"
        elif not checkpoint.resumable(self.settings.strategy):
            why = f"strategy {self.settings.strategy} is not resumed (its optimizer state needs pickle)"
        elif changed := provenance.changed(progress.get("fingerprint"), fingerprint):
            why = f"it was made from other inputs (changed: {', '.join(changed)})"
        acc.wait_for_everyone()  # every process has read the checkpoint before it moves
        if why is not None:
            if acc.is_main_process:
                provenance.set_aside(ckpt, f"checkpoint not resumed: {why}")
                metrics = ckpt.parent / "metrics.jsonl"
                if metrics.exists():
                    provenance.set_aside(metrics, "its run is set aside")
            acc.wait_for_everyone()
            return 0, 0
        checkpoint.load_training_state(ckpt, self.loss_module, self.optimizer.optimizer, self.scheduler,
                                       rank=acc.process_index, distributed=acc.num_processes > 1)
        return progress["step"], progress["position"]

    def check_finite(self, step: int) -> None:
        """Raise ``Divergence`` when a parameter is NaN or infinite (every process takes part)."""
        bad = sum(int((~torch.isfinite(_local(p))).sum()) for p in self.loss_module.parameters())
        bad = torch.tensor([float(bad)], device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            bad = self.accelerator.reduce(bad, reduction="sum")
        if bad.item():
            raise Divergence(f"{int(bad.item())} parameter values are not finite after step {step}")

    def save_model(self, out_dir) -> None:
        """The trained model as a plain HF folder (LoRA: merged weights, adapter in ``adapter/``), atomically."""
        acc = self.accelerator
        acc.wait_for_everyone()
        state = acc.get_state_dict(self.loss_module)  # whole weights on the main process, whatever the sharding
        if not acc.is_main_process:
            return
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
        model = acc.unwrap_model(self.loss_module).model
        with atomic_dir(out_dir) as tmp:
            if self.settings.lora.enabled:
                save_lora(self, state, Path(tmp))
            else:
                owner = model
                if self.settings.gradient_checkpointing:
                    activation_checkpointing(owner, False)
                owner.config._attn_implementation_internal = self._attn_before
                state = {k: v.to(self.save_dtype) if v.is_floating_point() else v for k, v in state.items()}
                owner.save_pretrained(tmp, state_dict=state, safe_serialization=True)
                _record_dtype(Path(tmp), self.save_dtype)

    def close(self) -> None:
        """Drop the accelerator's references, so another Trainer in this process has the memory."""
        self.accelerator.free_memory()


def _record_dtype(folder: Path, dtype: torch.dtype) -> None:
    """config.json says the dtype the weights were saved in. save_pretrained writes the training
    copy's (float32 master weights), and a later ``dtype="auto"`` load would then run the model
    in float32: twice the memory, and no flash/cuDNN attention (OOM at 32k on an 80 GB GPU)."""
    config = read_json(folder / "config.json")
    config["dtype"] = str(dtype).removeprefix("torch.")
    write_json(folder / "config.json", config)


def activation_checkpointing(model, enable: bool) -> None:
    """Recompute each decoder layer in the backward pass (transformers >= 5.23 names it
    activation checkpointing; earlier 5.x, gradient checkpointing)."""
    if hasattr(model, "activation_checkpointing_enable"):
        if enable:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.activation_checkpointing_disable()
    elif enable:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()


class Divergence(TrainingError):
    """Training produced a non-finite loss, gradient or parameter."""


def _local(p: torch.Tensor) -> torch.Tensor:
    return p.to_local() if hasattr(p, "to_local") else p  # an FSDP2 DTensor: this process's shard


def _grad_norm(accelerator, module, clip: float) -> float | None:
    # (DeepSpeed clips inside its engine, by gradient_clipping in its JSON, and reports no norm here)
    norm = accelerator.clip_grad_norm_(module.parameters(), clip if clip > 0 else float("inf"))
    if norm is None:
        return None
    if hasattr(norm, "full_tensor"):  # an FSDP2 DTensor
        norm = norm.full_tensor()
    return float(norm)


def _training_positions(config, shape, seed: int, position: int) -> dict:
    """The RoPE method's own training position ids (Giraffe's randomized positions), else {}.

    Drawn from a generator seeded by the batch's data position, so a resumed run draws the same."""
    try:
        from longctx.rope import training_inputs
    except ImportError:
        return {}
    generator = torch.Generator().manual_seed(seed * 1_000_003 + position)
    return training_inputs(config, shape[0], shape[1], generator=generator)

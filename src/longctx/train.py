"""One training loop for pretraining the small default model and for long-context fine-tuning.

Launched through accelerate (a plain ``python -m longctx ...`` is a single process; ``accelerate
launch`` or torchrun spreads it, see ``longctx.launch``). Packed sequences of the target length come
from the token stream (BOS/EOS between documents) in a seeded order; the loss is the chunked LM-head
loss (``longctx.loss``: full logits never exist); checkpoints hold model, optimizer, scheduler, RNG
and the data position in safetensors and JSON (``longctx.checkpoint``), so a killed job restarts
where it stopped and ends with the same weights. A checkpoint records the fingerprint of the run's
inputs (starting weights and RoPE, data, settings, processes; ``longctx.provenance``) and is
resumed only on an exact match; otherwise it is set aside and the run starts fresh. A step whose
gradients or loss are not finite stops the run before the optimizer applies it, and no checkpoint
or model is written with a non-finite parameter.

What a run uses, all from the ``finetune`` config section (``TrainSettings``):

- precision: bf16 mixed precision (autocast, float32 master weights) on GPU, float32 on CPU;
  ``bf16-pure`` keeps weights and optimizer state in bf16 (half the memory, coarser updates);
- attention: flash-attn 2 when installed, else SDPA, or FlexAttention for document-masked packing
  (``longctx.attention``); the backend is recorded in the summary and in every metrics line;
- full fine-tuning or LoRA (peft): a LoRA run writes merged weights to the output folder (what every
  later stage loads) and the adapter itself to ``<output>/adapter``;
- strategies: DDP, FSDP2, DeepSpeed ZeRO-2/3 with optional CPU offload, and Ulysses sequence
  parallelism (``longctx.parallel``).

FLOP convention for MFU (``flops_per_token``): 6 x parameters for the matmuls, causal attention
counted at half (6 x layers x attention width x seq per token), recomputation not counted.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from longctx import attention as attn
from longctx import checkpoint, parallel, provenance
from longctx.data import DataError, TokenFile
from longctx.io import atomic_dir, read_json, write_json
from longctx.loss import causal_lm_nll
from longctx.model import compile_layers

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "bf16-pure", "fp32")
# dense bf16 peak per GPU (TFLOP/s), for MFU when finetune.peak_tflops is not given
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "GH200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


class TrainingError(RuntimeError):
    pass


@dataclass
class LoraSettings:
    enabled: bool = False
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: tuple = ("q_proj", "k_proj", "v_proj", "o_proj")
    modules_to_save: tuple = ()


@dataclass
class TrainSettings:
    seq_len: int
    steps: int
    batch_size: int = 8
    micro_batch_size: int = 1
    lr: float = 2e-5
    warmup_steps: int = 20
    schedule: str = "constant"  # constant | linear | cosine
    betas: tuple = (0.9, 0.95)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    gradient_checkpointing: bool = False
    checkpoint_every: int = 100
    log_every: int = 10
    seed: int = 1234
    chunk_size: int = 4096
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 | bf16-pure | fp32
    attention: str = "auto"
    sdpa_backends: tuple | None = None
    document_masking: bool = False
    randomized_positions: bool = True
    strategy: str = "ddp"
    cpu_offload: bool = False
    sequence_parallel: int = 1
    compile: bool = False
    peak_tflops: float | None = None
    lora: LoraSettings = field(default_factory=LoraSettings)

    def __post_init__(self):
        # lists (as read from YAML/JSON) become tuples, a lora dict becomes LoraSettings
        for k in ("betas", "sdpa_backends"):
            if getattr(self, k) is not None:
                setattr(self, k, tuple(getattr(self, k)))
        if isinstance(self.lora, dict):
            lora = dict(self.lora)
            for k in ("target_modules", "modules_to_save"):
                if k in lora:
                    lora[k] = tuple(lora[k])
            self.lora = LoraSettings(**lora)

    @classmethod
    def from_config(cls, section: dict, seq_len: int, seed: int) -> "TrainSettings":
        """From the ``finetune`` config section (keys not in TrainSettings, like ``corpus``, are skipped)."""
        names = {f.name for f in fields(cls)} - {"seq_len", "seed"}
        return cls(seq_len=seq_len, seed=seed, **{k: section[k] for k in names if k in section})


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [B, T]
    segments: torch.Tensor  # [B, T] document index within the row, from 0


class PackedSequences:
    """Fixed-length windows of the token stream, visited in a seeded random order, epoch after epoch.

    ``doc_starts`` (sorted stream offsets where a document's BOS sits) give each token its document,
    for document masking; a window that starts inside a document begins a segment there."""

    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int, doc_starts: np.ndarray | None = None):
        self.tokens, self.seq_len, self.seed = tokens, seq_len, seed
        self.doc_starts = np.asarray(doc_starts if doc_starts is not None else [0], dtype=np.int64)
        self.n = len(tokens) // seq_len
        if self.n == 0:
            raise DataError(f"training data has {len(tokens)} tokens, fewer than one sequence of {seq_len}")

    @classmethod
    def from_token_file(cls, data: TokenFile, seq_len: int, seed: int) -> "PackedSequences":
        # each document's BOS sits just before its own tokens (see longctx.data)
        starts = np.maximum(np.asarray(data.bounds)[:, 0] - 1, 0) if len(data.bounds) else None
        return cls(data.tokens, seq_len, seed, starts)

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def _starts(self, position: int, size: int) -> list[int]:
        out = []
        for k in range(position, position + size):
            epoch, i = divmod(k, self.n)
            out.append(int(self._order(epoch)[i]) * self.seq_len)
        return out

    def batch(self, position: int, size: int) -> torch.Tensor:
        """Sequences number position .. position+size-1 of the endless seeded stream."""
        starts = self._starts(position, size)
        return torch.from_numpy(np.stack([np.asarray(self.tokens[a : a + self.seq_len], dtype=np.int64)
                                          for a in starts]))

    def segments(self, position: int, size: int) -> torch.Tensor:
        """Each token's document within its sequence (0 for the first), for the same sequences."""
        rows = []
        for a in self._starts(position, size):
            doc = np.searchsorted(self.doc_starts, np.arange(a, a + self.seq_len), side="right")
            rows.append(doc - doc[0])
        return torch.from_numpy(np.stack(rows))

    def packed(self, position: int, size: int) -> PackedBatch:
        return PackedBatch(self.batch(position, size), self.segments(position, size))


def lr_lambda(settings: TrainSettings):
    def f(step: int) -> float:
        if settings.warmup_steps and step < settings.warmup_steps:
            # PI: warm-up from 10% of the learning rate
            return 0.1 + 0.9 * step / settings.warmup_steps
        if settings.schedule == "constant":
            return 1.0
        progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
        if settings.schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))  # cosine to 10%

    return f


FLOP_CONVENTION = ("6 x parameters (matmuls incl. LM head) + causal attention at half "
                   "(6 x layers x heads x head_dim x seq per token); recomputation not counted")


def flops_per_token(config, seq_len: int) -> float:
    """Training FLOPs per token: 6 x parameters (matmuls) + causal attention counted at half.

    Attention: 12 x layers x width x seq for full attention forward+backward (width = heads x
    head_dim), halved for causal = 6 x layers x width x seq. Recomputation (activation
    checkpointing) is not counted; nor is the saving of document masking or LoRA.
    """
    h, layers = config.hidden_size, config.num_hidden_layers
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    params = layers * (2 * h * heads * head_dim + 2 * h * kv * head_dim + 3 * h * config.intermediate_size)
    params += config.vocab_size * h
    return 6 * params + 6 * layers * heads * head_dim * seq_len


def peak_flops_per_device(device, peak_tflops: float | None = None) -> float | None:
    """Dense bf16 peak FLOP/s of one device: the given figure, else from the GPU's name, else None."""
    if peak_tflops:
        return peak_tflops * 1e12
    if torch.device(device).type != "cuda":
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_TFLOPS[key] * 1e12
    return None


class LossModule(torch.nn.Module):
    """The model plus its chunked loss, as one module for accelerate to wrap.

    Builds the targets, position ids and attention inputs of a packed batch (document masking,
    flash-attn varlen flattening, the sequence-parallel shard) and returns
    (loss to back-propagate, mean NLL of the batch for the log)."""

    def __init__(self, model, chunk_size: int, backend: str = "sdpa", document_masking: bool = False,
                 sp: parallel.SequenceParallel | None = None, sdpa_backends=None):
        super().__init__()
        self.model, self.chunk_size = model, chunk_size
        self.backend, self.document_masking = backend, document_masking
        self.sp = sp or parallel.SequenceParallel()
        self.sdpa_backends = sdpa_backends

    def forward(self, input_ids, segments, position_ids=None, attention_mask=None):
        B, T = input_ids.shape
        targets = torch.cat([input_ids[:, 1:], input_ids.new_full((B, 1), -100)], dim=1)
        kwargs = {}
        if self.document_masking:
            targets = attn.document_targets(targets, segments)
            position_ids = attn.document_positions(segments, position_ids)
            if self.backend == "flash_attention_2":
                segments = attn.row_segments(segments)
                input_ids, targets, position_ids, segments = attn.flatten_rows(input_ids, targets, position_ids,
                                                                              segments)
        else:
            if position_ids is None:
                position_ids = torch.arange(T, device=input_ids.device).expand(B, T)
            if attention_mask is not None and self.sp.degree == 1:
                kwargs["attention_mask"] = attention_mask  # randomized positions: not packed documents
        kwargs.update(attn.attention_inputs(self.backend, segments, torch.float32, self.document_masking,
                                            explicit_causal=self.sp.degree > 1))
        if self.sp.degree > 1:
            input_ids, position_ids, targets = (self.sp.shard(x) for x in (input_ids, position_ids, targets))
        with attn.sdpa_kernel_context(self.sdpa_backends):
            nll, count = causal_lm_nll(self.model, input_ids, position_ids=position_ids, chunk_size=self.chunk_size,
                                       targets=targets, **kwargs)
        if self.sp.degree == 1:
            count = max(count, 1)
            return nll / count, nll.detach() / count
        # the group's tokens are scored across its ranks; data-parallel averaging divides by every
        # rank, so each rank's share is scaled by the group size
        total = self.sp.sum(torch.tensor(float(count), device=nll.device)).clamp(min=1)
        return nll * self.sp.degree / total, self.sp.sum(nll) / total


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


class Trainer:
    """The model prepared for training (precision, LoRA, attention, strategy) and one optimizer step.

    ``train`` drives it over packed data with checkpoints and metrics; ``scripts/bench_train.py``
    times its steps."""

    def __init__(self, model, settings: TrainSettings, device: str = "auto", work_dir=None, base_model_path=None):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        s = self.settings = settings
        _check(s)
        self.accum = s.batch_size // s.micro_batch_size
        cpu = device == "cpu" or not torch.cuda.is_available()
        if cpu and s.strategy != "ddp":
            # accelerate runs FSDP and DeepSpeed on GPUs only; CPU processes would silently run DDP
            raise TrainingError(f"config key 'finetune.strategy': {s.strategy} needs CUDA GPUs; on CPU use ddp")
        if s.strategy != "ddp":  # sharded strategies need a process group, even of one GPU
            parallel.ensure_process_group_env()
        self.precision = ("bf16" if not cpu else "fp32") if s.precision == "auto" else s.precision
        self.save_dtype = next(model.parameters()).dtype
        self.base_config = model.config
        self.base_model_path = base_model_path
        model.to(torch.bfloat16 if self.precision == "bf16-pure" else torch.float32)
        if s.lora.enabled:
            model = _with_lora(model, s.lora)
        if s.gradient_checkpointing:
            activation_checkpointing(model, True)
        model.train()
        self.model = model

        accel_kwargs, self.deepspeed_json = parallel.accelerator_kwargs(
            s.strategy, model, accumulation=self.accum, micro_batch_size=s.micro_batch_size, grad_clip=s.grad_clip,
            mixed_precision="bf16" if self.precision == "bf16" else "no", cpu_offload=s.cpu_offload)
        self.accelerator = Accelerator(cpu=cpu, **accel_kwargs)
        engaged = {"fsdp": "FSDP", "deepspeed_zero2": "DEEPSPEED", "deepspeed_zero3": "DEEPSPEED"}.get(s.strategy)
        if engaged and self.accelerator.distributed_type.name != engaged:
            raise TrainingError(f"config key 'finetune.strategy': {s.strategy} needs CUDA GPUs, but this run is "
                                f"{self.accelerator.distributed_type.name} on {self.accelerator.device}; use ddp")
        set_seed(s.seed)
        if self.deepspeed_json is not None and work_dir is not None and self.accelerator.is_main_process:
            write_json(Path(work_dir) / "deepspeed.json", self.deepspeed_json)

        acc = self.accelerator
        self.backend = attn.resolve_backend(s.attention, acc.device, s.document_masking)
        self.sp = parallel.setup_sequence_parallel(s.sequence_parallel, acc.process_index, acc.num_processes)
        parallel.check_sequence_parallel(self.base_config, s.sequence_parallel, s.seq_len)
        body_owner = model.get_base_model() if s.lora.enabled else model
        self._attn_before = body_owner.config._attn_implementation
        if self.sp.degree > 1:
            parallel.enable_ulysses(body_owner, self.backend, self.sp)
        else:
            body_owner.set_attn_implementation(self.backend)
        if s.compile:
            compile_layers(body_owner)

        trainable = [p for p in model.parameters() if p.requires_grad]
        self.trainable_parameters = sum(p.numel() for p in trainable)
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
        # the scheduler is stepped by hand once per optimizer step (accelerate's wrapper would step it
        # once per process); the loss module is what is wrapped, so DDP/FSDP see the whole forward
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(s))
        loss_module = LossModule(model, s.chunk_size, self.backend, s.document_masking, self.sp, s.sdpa_backends)
        try:
            self.loss_module, self.optimizer = acc.prepare(loss_module, optimizer)
        except torch.OutOfMemoryError as e:  # the weights alone do not fit
            raise TrainingError(oom_message(s, self.backend)) from e
        self.tokens_per_step = s.batch_size * s.seq_len * self.sp.dp_size

    # --- one step -------------------------------------------------------------------------------

    def micro_batch_inputs(self, batch: PackedBatch, position: int) -> dict:
        """Tensors for the loss module: ids, segments and the RoPE method's training positions."""
        device = self.accelerator.device
        inputs = {"input_ids": batch.input_ids.to(device), "segments": batch.segments.to(device)}
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

    def save_checkpoint(self, ckpt: Path, step: int, position: int, fingerprint: dict) -> None:
        _save_checkpoint(self, ckpt, step, position, fingerprint)

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
                _save_lora(self, state, Path(tmp))
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


def _check(s: TrainSettings) -> None:
    if s.batch_size % s.micro_batch_size:
        raise TrainingError(
            f"batch_size ({s.batch_size}) must be a multiple of micro_batch_size ({s.micro_batch_size})"
        )
    if s.precision not in PRECISIONS:
        raise TrainingError(f"config key 'finetune.precision': {s.precision!r} is not one of {PRECISIONS}")
    if s.cpu_offload and s.strategy == "ddp":
        raise TrainingError("config key 'finetune.cpu_offload': offloading needs strategy fsdp or deepspeed_zero*")
    if s.precision == "bf16-pure" and s.strategy.startswith("deepspeed"):
        raise TrainingError("config key 'finetune.precision': bf16-pure is for ddp and fsdp; DeepSpeed's bf16 "
                            "(float32 master weights in its optimizer) is precision: bf16")
    if s.compile and s.sequence_parallel > 1:
        raise TrainingError("config keys 'finetune.compile' and 'finetune.sequence_parallel': not together "
                            "(the all-to-all is not traced)")


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


def _with_lora(model, lora: LoraSettings):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules), modules_to_save=list(lora.modules_to_save) or None,
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def _save_lora(trainer: Trainer, state: dict, out: Path) -> None:
    """Rebuild the LoRA model on the CPU from the gathered weights, save the adapter, merge, save.

    Rebuilding (rather than merging the training copy) works whatever the strategy sharded."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    import longctx.rope  # noqa: F401  (custom rope types)

    trained = trainer.accelerator.unwrap_model(trainer.loss_module).model
    peft_config = trained.peft_config["default"]
    config = copy.deepcopy(trainer.base_config)
    config._attn_implementation_internal = trainer._attn_before
    base = AutoModelForCausalLM.from_config(config)
    fresh = get_peft_model(base, peft_config)
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if "lora_" in k]:
        raise TrainingError(f"LoRA weights do not fit the rebuilt model: missing {missing[:5]}, "
                            f"unexpected {unexpected[:5]}")
    fresh.peft_config["default"].base_model_name_or_path = (str(trainer.base_model_path)
                                                           if trainer.base_model_path else None)
    # save_embedding_layers=False: peft would otherwise look the base model up (on the hub) to see
    # whether its vocabulary changed; embeddings trained in full are in modules_to_save anyway
    fresh.save_pretrained(out / "adapter", safe_serialization=True, save_embedding_layers=False)
    merged = fresh.merge_and_unload().to(trainer.save_dtype)
    merged.save_pretrained(out, safe_serialization=True)


def train(model, data_prefix, settings: TrainSettings, out_dir, work_dir, tracker=None, peak_flops=None,
          device: str = "auto", base_model_path=None) -> dict:
    """Train ``model`` and write it to ``out_dir`` (atomically); checkpoints go to ``work_dir``.

    Returns the metrics summary; per-step metrics are written to ``work_dir/metrics.jsonl``.
    ``peak_flops``: the whole job's peak FLOP/s for MFU (default: ``settings.peak_tflops`` or the
    GPU's known peak, times the number of processes).
    """
    s = settings
    _check(s)
    data = PackedSequences.from_token_file(TokenFile.open(data_prefix), s.seq_len, s.seed)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    # what determines the run, taken before the trainer casts or wraps the model
    fingerprint = {"model": provenance.model_digest(model), "data": provenance.token_file_digest(data_prefix),
                   "settings": provenance.digest(_comparable(s))}
    trainer = Trainer(model, s, device=device, work_dir=work_dir, base_model_path=base_model_path)
    acc, sp = trainer.accelerator, trainer.sp
    fingerprint["processes"] = acc.num_processes  # the data each process reads depends on it

    ckpt = work_dir / "checkpoint"
    step, position = trainer.resume(ckpt, fingerprint)
    last_checkpoint = step or None
    if step:
        log.info("resumed from %s at step %d (data position %d)", ckpt, step, position)

    metrics_path = work_dir / "metrics.jsonl"
    if step == 0 and metrics_path.exists() and acc.is_main_process:
        metrics_path.unlink()
    fpt = flops_per_token(trainer.base_config, s.seq_len)
    if peak_flops is None:
        per_device = peak_flops_per_device(acc.device, s.peak_tflops)
        peak_flops = per_device * acc.num_processes if per_device else None
    log.info("training %d steps at %d tokens: attention %s, precision %s, strategy %s, sequence parallel %d, "
             "%s, %d trainable parameters", s.steps, s.seq_len, trainer.backend, trainer.precision, s.strategy,
             sp.degree, "LoRA" if s.lora.enabled else "full fine-tuning", trainer.trainable_parameters)
    started, t_last, last = time.time(), time.time(), {}
    start_step = step
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    while step < s.steps:
        micro_batches = []
        for _ in range(trainer.accum):
            index = position + sp.dp_rank * s.micro_batch_size
            micro_batches.append(trainer.micro_batch_inputs(data.packed(index, s.micro_batch_size), index))
            position += s.micro_batch_size * sp.dp_size
        try:
            total_loss, grad_norm = trainer.step(micro_batches)
            if not math.isfinite(total_loss):
                raise Divergence(f"the loss is {total_loss}")
        except Divergence as e:
            raise _diverged(e, step + 1, last_checkpoint, ckpt) from None
        step += 1
        if step % s.log_every == 0 or step == s.steps:
            now = time.time()
            steps_done = step - start_step
            tok_s = trainer.tokens_per_step * min(s.log_every, steps_done) / max(now - t_last, 1e-9)
            t_last = now
            eta = (now - started) / steps_done * (s.steps - step)
            last = {
                "step": step,
                "loss": total_loss,
                "lr": trainer.scheduler.get_last_lr()[0],
                "grad_norm": grad_norm,
                "tokens_per_s": tok_s,
                "tflops_per_s": fpt * tok_s / 1e12,
                "mfu": fpt * tok_s / peak_flops if peak_flops else None,
                "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
                "attention": trainer.backend,
            }
            log.info("step %d/%d loss %.4f lr %.2e grad %s %.0f tokens/s ETA %.0fs", step, s.steps, total_loss,
                     last["lr"], "-" if grad_norm is None else f"{grad_norm:.3f}", tok_s, eta)
            if acc.is_main_process:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(last, allow_nan=False) + "\n")
            if tracker is not None:
                tracker.log({f"train/{k}": v for k, v in last.items()
                             if isinstance(v, (int, float)) and k != "step"}, step=step)
        if s.checkpoint_every and step % s.checkpoint_every == 0 and step < s.steps:
            _check_before_saving(trainer, step, last_checkpoint, ckpt)
            if checkpoint.resumable(s.strategy):
                trainer.save_checkpoint(ckpt, step, position, fingerprint)
                last_checkpoint = step

    _check_before_saving(trainer, step, last_checkpoint, ckpt)
    trainer.save_model(out_dir)
    summary = {"steps": step, "final_loss": last.get("loss"), "flops_per_token": fpt,
               "flop_convention": FLOP_CONVENTION, "attention": trainer.backend, "precision": trainer.precision,
               "strategy": s.strategy, "sequence_parallel": sp.degree, "processes": acc.num_processes,
               "trainable_parameters": trainer.trainable_parameters,
               "saved": "merged LoRA weights (adapter in adapter/)" if s.lora.enabled else "full weights",
               "settings": _comparable(s), "last": last}
    if acc.is_main_process:
        write_json(work_dir / "summary.json", summary)
        if ckpt.exists():
            shutil.rmtree(ckpt)  # the final model is written; the checkpoint is no longer needed
    acc.wait_for_everyone()
    trainer.close()
    return summary


def _comparable(settings: TrainSettings) -> dict:
    d = json.loads(json.dumps(asdict(settings)))  # tuples -> lists, as read back from JSON
    for k in ("checkpoint_every", "log_every", "peak_tflops"):
        d.pop(k)
    return d


def _diverged(error: Divergence, step: int, last_checkpoint: int | None, ckpt: Path) -> Divergence:
    kept = (f"the last good checkpoint (step {last_checkpoint}) is kept in {ckpt}" if last_checkpoint
            else "no checkpoint was kept")
    return Divergence(f"training diverged at step {step}: {error}; nothing was saved from it, {kept}; "
                      f"lower the learning rate or raise warmup_steps")


def _check_before_saving(trainer: Trainer, step: int, last_checkpoint: int | None, ckpt: Path) -> None:
    try:
        trainer.check_finite(step)
    except Divergence as e:
        raise _diverged(e, step, last_checkpoint, ckpt) from None


def _save_checkpoint(trainer: Trainer, ckpt: Path, step: int, position: int, fingerprint: dict) -> None:
    """Write the checkpoint beside the old one, then swap, so a kill mid-save keeps the last good one."""
    accelerator = trainer.accelerator
    tmp = ckpt.with_name(ckpt.name + ".new")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    checkpoint.save_training_state(tmp, trainer.loss_module, trainer.optimizer.optimizer, trainer.scheduler,
                                   rank=accelerator.process_index, distributed=accelerator.num_processes > 1)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        checkpoint.write_progress(tmp, step=step, position=position, settings=_comparable(trainer.settings),
                                  fingerprint=fingerprint)
        old = ckpt.with_name(ckpt.name + ".old")
        if ckpt.exists():
            ckpt.rename(old)
        tmp.rename(ckpt)
        if old.exists():
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    log.info("checkpoint at step %d -> %s", step, ckpt)

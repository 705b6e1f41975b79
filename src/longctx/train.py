"""One training loop for pretraining the small default model and for long-context fine-tuning.

Launched through accelerate (a plain ``python -m longctx ...`` is a single process; ``accelerate
launch`` spreads it). Packed sequences of the target length come from the token stream (BOS/EOS
between documents) in a seeded order; the loss is the chunked LM-head loss; checkpoints hold
model, optimizer, scheduler, RNG (accelerate's ``save_state``) and the data position, so a killed
job restarts where it stopped and ends with the same weights.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from longctx.data import DataError, TokenFile
from longctx.io import atomic_dir, read_json, write_json
from longctx.loss import causal_lm_nll

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    pass


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


class PackedSequences:
    """Fixed-length windows of the token stream, visited in a seeded random order, epoch after epoch."""

    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int):
        self.tokens, self.seq_len, self.seed = tokens, seq_len, seed
        self.n = len(tokens) // seq_len
        if self.n == 0:
            raise DataError(f"training data has {len(tokens)} tokens, fewer than one sequence of {seq_len}")

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def batch(self, position: int, size: int) -> torch.Tensor:
        """Sequences number position .. position+size-1 of the endless seeded stream."""
        rows = []
        for k in range(position, position + size):
            epoch, i = divmod(k, self.n)
            start = int(self._order(epoch)[i]) * self.seq_len
            rows.append(np.asarray(self.tokens[start : start + self.seq_len], dtype=np.int64))
        return torch.from_numpy(np.stack(rows))


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


def flops_per_token(config, seq_len: int) -> float:
    """Training FLOPs per token: 6 x parameters (matmuls) + causal attention counted at half.

    Attention: 12 x layers x hidden x seq for full attention forward+backward, halved for causal
    = 6 x layers x hidden x seq. Recomputation (activation checkpointing) is not counted.
    """
    h, layers = config.hidden_size, config.num_hidden_layers
    kv = getattr(config, "num_key_value_heads", config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    params = layers * (2 * h * h + 2 * h * kv * head_dim + 3 * h * config.intermediate_size) + config.vocab_size * h
    return 6 * params + 6 * layers * h * seq_len


class LossModule(torch.nn.Module):
    """The model plus its chunked loss, as one module for accelerate to wrap."""

    def __init__(self, model, chunk_size: int):
        super().__init__()
        self.model, self.chunk_size = model, chunk_size

    def forward(self, input_ids):
        nll, count = causal_lm_nll(self.model, input_ids, chunk_size=self.chunk_size)
        return nll, count


def train(model, data_prefix, settings: TrainSettings, out_dir, work_dir, tracker=None, peak_flops=None) -> dict:
    """Train ``model`` and write it to ``out_dir`` (atomically); checkpoints go to ``work_dir``.

    Returns the metrics summary; per-step metrics are written to ``work_dir/metrics.jsonl``.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    if settings.batch_size % settings.micro_batch_size:
        raise TrainingError(
            f"batch_size ({settings.batch_size}) must be a multiple of micro_batch_size ({settings.micro_batch_size})"
        )
    accum = settings.batch_size // settings.micro_batch_size
    accelerator = Accelerator(gradient_accumulation_steps=accum)
    set_seed(settings.seed)
    data = PackedSequences(TokenFile.open(data_prefix).tokens, settings.seq_len, settings.seed)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)

    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.lr, betas=tuple(settings.betas), weight_decay=settings.weight_decay
    )
    # the scheduler is stepped by hand once per optimizer step (accelerate's wrapper would step it
    # once per process); the loss module is what is wrapped, so DDP/FSDP see the whole forward
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(settings))
    loss_module, optimizer = accelerator.prepare(LossModule(model, settings.chunk_size), optimizer)
    accelerator.register_for_checkpointing(scheduler)

    step, position = 0, 0
    ckpt = work_dir / "checkpoint"
    if (ckpt / "progress.json").exists():
        progress = read_json(ckpt / "progress.json")
        if progress["settings"] != _comparable(settings):
            raise TrainingError(
                f"checkpoint {ckpt} was made with other settings; delete it to start over "
                f"(was {progress['settings']}, now {_comparable(settings)})"
            )
        accelerator.load_state(str(ckpt / "state"))
        step, position = progress["step"], progress["position"]
        log.info("resumed from %s at step %d (data position %d)", ckpt, step, position)

    metrics_path = work_dir / "metrics.jsonl"
    if step == 0 and metrics_path.exists():
        metrics_path.unlink()
    fpt = flops_per_token(model.config, settings.seq_len)
    tokens_per_step = settings.batch_size * settings.seq_len * accelerator.num_processes
    started, t_last, last = time.time(), time.time(), {}
    start_step = step
    while step < settings.steps:
        total_loss, total_tokens = 0.0, 0
        for _ in range(accum):
            batch = data.batch(position + accelerator.process_index * settings.micro_batch_size,
                               settings.micro_batch_size).to(accelerator.device)
            position += settings.micro_batch_size * accelerator.num_processes
            with accelerator.accumulate(loss_module):
                nll, count = loss_module(batch)
                loss = nll / count
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(
                        loss_module.parameters(), settings.grad_clip if settings.grad_clip > 0 else float("inf")
                    )
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad()
            total_loss += float(loss.detach()) / accum
        step += 1
        if not math.isfinite(total_loss):
            raise TrainingError(
                f"loss is {total_loss} at step {step}: training diverged; the last good checkpoint is kept in {ckpt}"
            )
        if step % settings.log_every == 0 or step == settings.steps:
            now = time.time()
            steps_done = step - start_step
            tok_s = tokens_per_step * min(settings.log_every, steps_done) / max(now - t_last, 1e-9)
            t_last = now
            eta = (now - started) / steps_done * (settings.steps - step)
            last = {
                "step": step,
                "loss": total_loss,
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": float(grad_norm),
                "tokens_per_s": tok_s,
                "tflops_per_s": fpt * tok_s / 1e12,
                "mfu": fpt * tok_s / peak_flops if peak_flops else None,
                "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
            }
            log.info("step %d/%d loss %.4f lr %.2e grad %.3f %.0f tokens/s ETA %.0fs", step, settings.steps,
                     total_loss, last["lr"], last["grad_norm"], tok_s, eta)
            if accelerator.is_main_process:
                with open(metrics_path, "a") as f:
                    import json

                    f.write(json.dumps(last) + "\n")
            if tracker is not None:
                tracker.log({f"train/{k}": v for k, v in last.items() if v is not None and k != "step"}, step=step)
        if settings.checkpoint_every and step % settings.checkpoint_every == 0 and step < settings.steps:
            _save_checkpoint(accelerator, ckpt, step, position, settings)

    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(loss_module).model
    if settings.gradient_checkpointing:
        unwrapped.gradient_checkpointing_disable()
    if accelerator.is_main_process:
        with atomic_dir(out_dir) as tmp:
            unwrapped.save_pretrained(tmp, safe_serialization=True)
    summary = {"steps": step, "final_loss": last.get("loss"), "flops_per_token": fpt,
               "flop_convention": "6N + causal attention at half; recomputation not counted",
               "settings": asdict(settings), "last": last}
    write_json(work_dir / "summary.json", summary)
    if ckpt.exists():
        shutil.rmtree(ckpt)  # the final model is written; the checkpoint is no longer needed
    return summary


def _comparable(settings: TrainSettings) -> dict:
    d = asdict(settings)
    d["betas"] = list(d["betas"])
    for k in ("checkpoint_every", "log_every"):
        d.pop(k)
    return d


def _save_checkpoint(accelerator, ckpt: Path, step: int, position: int, settings: TrainSettings) -> None:
    """Write the checkpoint beside the old one, then swap, so a kill mid-save keeps the last good one."""
    tmp = ckpt.with_name(ckpt.name + ".new")
    if tmp.exists():
        shutil.rmtree(tmp)
    accelerator.save_state(str(tmp / "state"))
    if accelerator.is_main_process:
        write_json(tmp / "progress.json", {"step": step, "position": position, "settings": _comparable(settings)})
        old = ckpt.with_name(ckpt.name + ".old")
        if ckpt.exists():
            ckpt.rename(old)
        tmp.rename(ckpt)
        if old.exists():
            shutil.rmtree(old)
    log.info("checkpoint at step %d -> %s", step, ckpt)

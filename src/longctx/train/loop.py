"""The training loop: packed data, steps, metrics, checkpoints, the final model (``train``).

Read top to bottom: the fingerprint of the run's inputs; resume from a checkpoint made from the same
inputs (``Trainer.resume``); steps with metrics every ``log_every``; a checkpoint every
``checkpoint_every`` (never of non-finite weights); the model at the end.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path

import torch

from longctx import provenance
from longctx.artifacts import write_json
from longctx.data import TokenFile
from longctx.train import checkpoint
from longctx.train.flops import FLOP_CONVENTION, flops_per_token, peak_flops_per_device
from longctx.train.mixed import MixedSequences
from longctx.train.packing import PackedSequences
from longctx.train.settings import TrainSettings, check_settings, comparable
from longctx.train.supervised import ExampleSequences
from longctx.train.trainer import Divergence, Trainer

log = logging.getLogger(__name__)


def train(model, data_prefix, settings: TrainSettings, out_dir, work_dir, tracker=None, peak_flops=None,
          device: str = "auto", base_model_path=None, short_data_prefix=None, examples=None) -> dict:
    """Train ``model`` and write it to ``out_dir`` (atomically); checkpoints go to ``work_dir``.

    Returns the metrics summary; per-step metrics are written to ``work_dir/metrics.jsonl``.
    ``peak_flops``: the whole job's peak FLOP/s for MFU (default: ``settings.peak_tflops`` or the
    GPU's known peak, times the number of processes). With ``settings.mixed_context`` on, the
    sequences are LongRoPE2's short and long windows (``longctx.train.mixed``), the short ones from
    ``short_data_prefix`` when given. ``examples`` (instead of ``data_prefix``): supervised
    (prompt, response) examples, the loss on their labelled tokens (``longctx.train.supervised``).
    """
    s = settings
    check_settings(s)
    if examples is not None:
        pad = getattr(model.config, "pad_token_id", None)
        data = ExampleSequences(examples, s.seed, pad if pad is not None else 0)
        data_digest = provenance.digest(examples)
    else:
        data = _sequences(model, data_prefix, s, short_data_prefix)
        data_digest = provenance.token_file_digest(data_prefix)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    # what determines the run, taken before the trainer casts or wraps the model
    fingerprint = {"model": provenance.model_digest(model), "data": data_digest,
                   "settings": provenance.digest(comparable(s))}
    if s.mixed_context.enabled and short_data_prefix is not None:
        fingerprint["short_data"] = provenance.token_file_digest(short_data_prefix)
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
                _save_checkpoint(trainer, ckpt, step, position, fingerprint)
                last_checkpoint = step

    _check_before_saving(trainer, step, last_checkpoint, ckpt)
    trainer.save_model(out_dir)
    summary = {"steps": step, "final_loss": last.get("loss"), "flops_per_token": fpt,
               "flop_convention": FLOP_CONVENTION, "attention": trainer.backend, "precision": trainer.precision,
               "strategy": s.strategy, "sequence_parallel": sp.degree, "processes": acc.num_processes,
               "trainable_parameters": trainer.trainable_parameters,
               "saved": "merged LoRA weights (adapter in adapter/)" if s.lora.enabled else "full weights",
               "settings": comparable(s), "last": last}
    if acc.is_main_process:
        write_json(work_dir / "summary.json", summary)
        if ckpt.exists():
            shutil.rmtree(ckpt)  # the final model is written; the checkpoint is no longer needed
    acc.wait_for_everyone()
    trainer.close()
    return summary


def _sequences(model, data_prefix, s: TrainSettings, short_data_prefix=None):
    """The training sequences: packed windows of the token stream, or mixed short and long windows."""
    data = TokenFile.open(data_prefix)
    if not s.mixed_context.enabled:
        return PackedSequences.from_token_file(data, s.seq_len, s.seed)
    from longctx.rope import geometry_of

    short = TokenFile.open(short_data_prefix) if short_data_prefix is not None else None
    limit = s.mixed_context.short_max_length or geometry_of(model.config).original_context
    return MixedSequences.from_token_files(data, short, s.seq_len, s.seed, limit, s.mixed_context.short_fraction,
                                           s.micro_batch_size)


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
        checkpoint.write_progress(tmp, step=step, position=position, settings=comparable(trainer.settings),
                                  fingerprint=fingerprint)
        old = ckpt.with_name(ckpt.name + ".old")
        if ckpt.exists():
            ckpt.rename(old)
        tmp.rename(ckpt)
        if old.exists():
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    log.info("checkpoint at step %d -> %s", step, ckpt)

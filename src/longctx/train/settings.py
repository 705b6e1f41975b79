"""What a training run uses: every knob of the ``finetune`` config section as ``TrainSettings``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

PRECISIONS = ("auto", "bf16", "bf16-pure", "fp32")


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
class MixedContextSettings:
    """LongRoPE2's mixed context window training (``finetune.mixed_context``; ``longctx.train.mixed``)."""

    enabled: bool = False
    short_fraction: float = 0.3
    short_max_length: int | None = None  # None: the model's original context
    short_corpus: str | None = None  # read by the job (which token files), recorded here for the fingerprint
    short_mscale: str = "original"  # read by the job (the fine-tuned model's short factor set)


@dataclass
class TrainSettings:
    seq_len: int
    steps: int
    batch_size: int = 8
    micro_batch_size: int = 1
    lr: float = 2e-5
    warmup_steps: int = 20
    warmup_from: float = 0.1  # the warm-up's first learning rate, as a fraction of lr
    schedule: str = "constant"  # constant | linear | cosine
    min_lr_ratio: float = 0.0  # cosine only: the end of its decay, as a fraction of lr
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
    mixed_context: MixedContextSettings = field(default_factory=MixedContextSettings)

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
        if isinstance(self.mixed_context, dict):
            self.mixed_context = MixedContextSettings(**self.mixed_context)

    @classmethod
    def from_config(cls, section: dict, seq_len: int, seed: int) -> "TrainSettings":
        """From the ``finetune`` config section (keys not in TrainSettings, like ``corpus``, are skipped)."""
        names = {f.name for f in fields(cls)} - {"seq_len", "seed"}
        return cls(seq_len=seq_len, seed=seed, **{k: section[k] for k in names if k in section})


def check_settings(s: TrainSettings) -> None:
    """Combinations no run can use, named by config key (before any model is touched)."""
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
    if s.mixed_context.enabled and not 0 <= s.mixed_context.short_fraction <= 1:
        raise TrainingError(f"config key 'finetune.mixed_context.short_fraction': must lie in [0, 1], got "
                            f"{s.mixed_context.short_fraction}")
    if not 0 <= s.min_lr_ratio <= 1:
        raise TrainingError(f"config key 'finetune.min_lr_ratio': must lie in [0, 1], got {s.min_lr_ratio}")
    if s.compile and s.sequence_parallel > 1:
        raise TrainingError("config keys 'finetune.compile' and 'finetune.sequence_parallel': not together "
                            "(the all-to-all is not traced)")



def comparable(settings: TrainSettings) -> dict:
    """The settings that change what a run computes (not how often it logs or checkpoints), as JSON."""
    d = json.loads(json.dumps(asdict(settings)))  # tuples -> lists, as read back from JSON
    for k in ("checkpoint_every", "log_every", "peak_tflops"):
        d.pop(k)
    if settings.schedule != "cosine":  # the floor of a cosine only: other runs keep their fingerprints
        d.pop("min_lr_ratio")
    return d

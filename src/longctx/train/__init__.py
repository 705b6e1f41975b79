"""One training loop for pretraining the small default model and for long-context fine-tuning.

Launched through accelerate (a plain ``python -m longctx ...`` is a single process; ``accelerate
launch`` or torchrun spreads it, see ``longctx.launch``). The modules, in the order a run meets them:

- ``settings``: ``TrainSettings``, every knob of the ``finetune`` config section, and their checks;
- ``packing``: packed sequences of the target length from the token stream, in a seeded order;
- ``mixed``: LongRoPE2's mixed context window training - short windows (original RoPE, document
  mask) and long windows (rescaled RoPE) of the target length, and the RoPE of each;
- ``trainer``: the model prepared by named steps (precision, LoRA, activation checkpointing,
  strategy, attention and sequence parallelism, compile, optimizer) and one optimizer step;
- ``loss``: the training objective on packed batches (document masking, the sequence shard);
- ``attention`` and ``parallel``: attention kernels and document masks; DDP / FSDP2 / DeepSpeed and
  Ulysses sequence parallelism;
- ``lora``: adapters and merged weights;
- ``checkpoint``: resumable state in safetensors + JSON, never pickle;
- ``flops``: the FLOP convention for MFU;
- ``loop``: ``train``, the loop itself.
"""

from longctx.train.flops import FLOP_CONVENTION, flops_per_token, peak_flops_per_device  # noqa: F401
from longctx.train.loop import train  # noqa: F401
from longctx.train.mixed import MixedSequences  # noqa: F401
from longctx.train.packing import PackedBatch, PackedSequences  # noqa: F401
from longctx.train.settings import LoraSettings, MixedContextSettings, TrainSettings, TrainingError  # noqa: F401
from longctx.train.loss import LossModule  # noqa: F401
from longctx.train.trainer import Divergence, Trainer, activation_checkpointing, lr_lambda  # noqa: F401

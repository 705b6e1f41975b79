"""FLOPs and peak throughput, for MFU.

Convention: 6 x parameters for the matmuls (LM head included), causal attention counted at half
(6 x layers x attention width x seq per token), recomputation not counted.
"""

from __future__ import annotations

import torch

# dense bf16 peak per GPU (TFLOP/s), for MFU when finetune.peak_tflops is not given
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "GH200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}

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

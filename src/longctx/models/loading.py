"""Loading a stage's model folder: safetensors only; importing longctx registers its RoPE types."""

from __future__ import annotations

import torch

from longctx.artifacts import ArtifactError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("config key 'device' is 'cuda' but no CUDA device is available")
    return torch.device(name)


def load_model(path, device="cpu", dtype: str | None = None, trust_remote_code: bool = False):
    """Load a stage's model folder (safetensors only); importing longctx registers our rope types."""
    import longctx.rope  # noqa: F401
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": DTYPES[dtype]} if dtype else {"dtype": "auto"}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), use_safetensors=True, trust_remote_code=trust_remote_code, **kwargs
        )
    except SafetensorError as e:  # cut short or overwritten: a partial copy, a full disk
        raise ArtifactError(f"model folder {path}: its safetensors weights are corrupt ({e}); delete the folder "
                            f"and rerun, which rebuilds it") from None
    return model.to(device).eval()


def load_for_measurement(path, device, dtype: str = "bfloat16"):
    """(model with SDPA attention, tokenizer) of a folder: what the measurement scripts time."""
    from longctx.data import load_tokenizer

    model = load_model(path, device=device, dtype=dtype)
    model.set_attn_implementation("sdpa")
    return model, load_tokenizer(path)

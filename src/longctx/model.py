"""The base model stage: one loader for a hub id, a local folder or a GGUF file, or pretraining.

Whatever the source, the output is a plain Hugging Face folder with safetensors weights and its
tokenizer, which every later stage loads with ``load_model``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from longctx.config import source_model_path
from longctx.io import ArtifactError, atomic_dir

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("config key 'device' is 'cuda' but no CUDA device is available")
    return torch.device(name)


def compile_layers(model) -> int:
    """``torch.compile`` each decoder layer in place; returns how many.

    Per layer rather than the whole model: one compiled graph serves every layer, compiling takes
    seconds, and what fusing buys (norms, RoPE, SwiGLU, residuals in a few kernels; 1.26x in
    training at 32k tokens on an H100, docs/training.md) is inside the layers. Attention stays the
    SDPA kernel PyTorch picks."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    for layer in layers:
        layer.compile()
    return len(layers)


def _source_kwargs(model_cfg: dict) -> tuple[str, dict]:
    """Where to load from and the loading kwargs, for the hub, local and gguf sources."""
    source, where = model_cfg["source"], model_cfg["name_or_path"]
    kwargs = {"trust_remote_code": bool(model_cfg["trust_remote_code"])}
    if source == "hub" and model_cfg["revision"]:
        kwargs["revision"] = model_cfg["revision"]
    if source in ("hub", "local"):
        kwargs["use_safetensors"] = True  # never a pickled pytorch_model.bin
    if source == "local" and not Path(where).is_dir():
        raise FileNotFoundError(f"config key 'model.name_or_path': local model folder {where} does not exist")
    if source == "gguf":
        path = source_model_path(model_cfg)
        if not path.is_file():
            raise FileNotFoundError(f"config key 'model.name_or_path': GGUF file {path} does not exist")
        where, kwargs["gguf_file"] = str(path.parent), path.name
    return where, kwargs


def prepare_tokenizer(config: dict, out_dir: str | Path, base_dir: str | Path = ".") -> None:
    """Train the BPE tokenizer (pretrain) or copy the source model's tokenizer, into ``out_dir``."""
    from longctx.config import train_corpus
    from longctx.data import iter_documents, train_tokenizer

    model_cfg = config["model"]
    with atomic_dir(out_dir) as tmp:
        if model_cfg["source"] == "pretrain":
            corpus = config["corpora"][train_corpus(config, "pretrain")]
            texts = (text for _, text in iter_documents(corpus, "train", base_dir))
            train_tokenizer(texts, model_cfg["pretrain"]["vocab_size"], tmp)
        else:
            from transformers import AutoTokenizer

            where, kwargs = _source_kwargs(model_cfg)
            kwargs.pop("use_safetensors", None)
            AutoTokenizer.from_pretrained(where, **kwargs).save_pretrained(tmp)


def new_pretrain_model(config: dict, vocab_size: int, bos: int, eos: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    p = config["model"]["pretrain"]
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=p["hidden_size"],
        intermediate_size=p["intermediate_size"],
        num_hidden_layers=p["num_layers"],
        num_attention_heads=p["num_heads"],
        num_key_value_heads=p["num_kv_heads"],
        max_position_embeddings=p["context"],
        rope_parameters={"rope_type": "default", "rope_theta": float(p["rope_theta"])},
        bos_token_id=bos,
        eos_token_id=eos,
        tie_word_embeddings=True,
    )
    torch.manual_seed(config["seed"])
    return LlamaForCausalLM(cfg)


def prepare_base_model(config: dict, tokenizer_dir, out_dir, train_prefix=None, work_dir=None, tracker=None) -> dict:
    """Write the base model (safetensors + tokenizer) to ``out_dir``; pretrain it if asked."""
    from longctx.data import load_tokenizer

    model_cfg = config["model"]
    tokenizer = load_tokenizer(tokenizer_dir)
    out_dir = Path(out_dir)
    if model_cfg["source"] == "pretrain":
        from longctx.train import TrainSettings, train

        p = model_cfg["pretrain"]
        model = new_pretrain_model(config, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
        settings = TrainSettings(
            seq_len=p["context"], steps=p["steps"], batch_size=p["batch_size"], micro_batch_size=p["batch_size"],
            lr=p["lr"], warmup_steps=p["warmup_steps"], schedule="cosine", weight_decay=0.1, grad_clip=1.0,
            checkpoint_every=max(p["steps"] // 4, 1), log_every=max(p["steps"] // 20, 1), seed=config["seed"],
        )
        summary = train(model, train_prefix, settings, out_dir, work_dir or out_dir.with_name(out_dir.name + ".work"),
                        tracker=tracker)
        tokenizer.save_pretrained(out_dir)
        return summary
    from transformers import AutoModelForCausalLM

    where, kwargs = _source_kwargs(model_cfg)
    log.info("loading %s (%s)", where, model_cfg["source"])
    model = AutoModelForCausalLM.from_pretrained(where, dtype=DTYPES[model_cfg["dtype"]], **kwargs)
    # a GGUF load leaves a quantisation marker that save_pretrained would write into the config
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(model.config, attr):
            delattr(model.config, attr)
    model.hf_quantizer = None
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return {"parameters": sum(p.numel() for p in model.parameters())}


def load_model(path, device="cpu", dtype: str | None = None, trust_remote_code: bool = False):
    """Load a stage's model folder (safetensors only); importing longctx registers our rope types."""
    import longctx.rope  # noqa: F401
    from transformers import AutoModelForCausalLM

    from safetensors import SafetensorError

    kwargs = {"dtype": DTYPES[dtype]} if dtype else {"dtype": "auto"}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), use_safetensors=True, trust_remote_code=trust_remote_code, **kwargs
        )
    except SafetensorError as e:  # cut short or overwritten: a partial copy, a full disk
        raise ArtifactError(f"model folder {path}: its safetensors weights are corrupt ({e}); delete the folder "
                            f"and rerun, which rebuilds it") from None
    return model.to(device).eval()

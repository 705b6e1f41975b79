"""A base model from elsewhere: a hub id, a local Hugging Face folder or a GGUF file (``model``
config section), imported once into a plain folder of safetensors weights and its tokenizer, which
every later stage loads with ``longctx.models.load_model``."""

from __future__ import annotations

import logging
from pathlib import Path

from longctx.artifacts import atomic_dir
from longctx.models.loading import DTYPES

log = logging.getLogger(__name__)


def source_model_path(model: dict) -> Path | None:
    """The base model's file (gguf) or folder (local) on disk, from the ``model`` section; None for
    hub ids and pretraining. Existence is not checked: the rules list it as an input, so Snakemake
    names it when it is missing, and the loader says so too."""
    if model["source"] not in ("local", "gguf"):
        return None
    where = Path(model["name_or_path"])
    if model["source"] == "gguf" and model.get("gguf_file") and not where.is_file():
        return where / model["gguf_file"]
    return where


def source_kwargs(model_cfg: dict) -> tuple[str, dict]:
    """Where to load from and the ``from_pretrained`` kwargs, for the hub, local and gguf sources."""
    source, where = model_cfg["source"], model_cfg["name_or_path"]
    kwargs = {"trust_remote_code": bool(model_cfg["trust_remote_code"])}
    if source == "hub" and model_cfg["revision"]:
        kwargs["revision"] = model_cfg["revision"]
    if source == "local" and not Path(where).is_dir():
        raise FileNotFoundError(f"config key 'model.name_or_path': local model folder {where} does not exist")
    if source == "gguf":
        path = source_model_path(model_cfg)
        if not path.is_file():
            raise FileNotFoundError(f"config key 'model.name_or_path': GGUF file {path} does not exist")
        where, kwargs["gguf_file"] = str(path.parent), path.name
    return where, kwargs


def import_tokenizer(model_cfg: dict, out_dir) -> None:
    """The source model's tokenizer, saved to ``out_dir`` (atomically)."""
    from transformers import AutoTokenizer

    where, kwargs = source_kwargs(model_cfg)
    with atomic_dir(out_dir) as tmp:
        AutoTokenizer.from_pretrained(where, **kwargs).save_pretrained(tmp)


def import_model(model_cfg: dict, tokenizer, out_dir) -> dict:
    """The source model's weights in ``model.dtype`` as safetensors, with ``tokenizer``, in ``out_dir``."""
    from transformers import AutoModelForCausalLM

    where, kwargs = source_kwargs(model_cfg)
    if model_cfg["source"] in ("hub", "local"):
        kwargs["use_safetensors"] = True  # never a pickled pytorch_model.bin
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


def converted_folder(model_path: Path, cache: Path, dtype: str = "bfloat16") -> Path:
    """A Hugging Face folder for ``model_path``: the folder itself, or a GGUF file converted once to
    ``dtype`` safetensors at ``cache`` (dequantising takes a while on the CPU; later calls reuse it)."""
    from longctx.data import load_tokenizer

    model_path, cache = Path(model_path), Path(cache)
    if (cache / "config.json").exists():
        return cache
    if model_path.is_dir() and (model_path / "config.json").exists():
        return model_path
    if not model_path.is_file() or model_path.suffix != ".gguf":
        raise FileNotFoundError(f"{model_path}: neither a .gguf file nor a Hugging Face model folder")
    log.info("converting %s to a %s safetensors folder at %s (once)", model_path, dtype, cache)
    cfg = {"source": "gguf", "name_or_path": str(model_path), "gguf_file": None, "revision": None,
           "trust_remote_code": False, "dtype": dtype}
    tokenizer_dir = cache.with_name(cache.name + ".tokenizer")
    import_tokenizer(cfg, tokenizer_dir)
    import_model(cfg, load_tokenizer(tokenizer_dir), cache)
    return cache

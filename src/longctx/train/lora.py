"""LoRA through peft: adapters on the chosen modules, and the merged weights saved afterwards."""

from __future__ import annotations

import copy
from pathlib import Path

from longctx.train.settings import LoraSettings, TrainingError


def with_lora(model, lora: LoraSettings):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules), modules_to_save=list(lora.modules_to_save) or None,
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def save_lora(trainer, state: dict, out: Path) -> None:
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

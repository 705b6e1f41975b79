"""Shared test fixtures: tiny models and token files built on the spot, never downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
AUSTEN = REPO / "data" / "austen"


def tiny_llama(vocab_size: int = 96, context: int = 32, hidden: int = 64, layers: int = 2, heads: int = 4,
               kv_heads: int = 2, theta: float = 10000.0, seed: int = 0):
    """A random LLaMA small enough for a CPU test; original context ``context``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=context, rope_parameters={"rope_type": "default", "rope_theta": theta},
                      bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(cfg).eval()


def write_token_files(prefix: Path, docs) -> None:
    """A prepared split (as ``longctx.data.prepare_split`` writes it: BOS, tokens, EOS per document)
    from token arrays; BOS is 1 and EOS 2."""
    import numpy as np

    from longctx.artifacts import write_json

    prefix.parent.mkdir(parents=True, exist_ok=True)
    stream, bounds, pos = [], [], 0
    for d in docs:
        stream += [1, *np.asarray(d).tolist(), 2]
        bounds.append((pos + 1, pos + 1 + len(d)))
        pos += len(d) + 2
    np.asarray(stream, dtype=np.uint16).tofile(prefix.with_suffix(".bin"))
    np.save(prefix.with_suffix(".idx.npy"), np.asarray(bounds, dtype=np.int64))
    write_json(prefix.with_suffix(".json"), {"split": prefix.name, "dtype": "uint16", "documents": len(docs),
                                             "tokens": int(sum(len(d) for d in docs)), "bos_token_id": 1,
                                             "eos_token_id": 2, "document_ids": [f"doc{i}" for i in range(len(docs))]})


@pytest.fixture
def make_tiny_llama():
    return tiny_llama


@pytest.fixture(scope="session")
def austen_tokenizer(tmp_path_factory):
    """A small BPE tokenizer trained on one Austen novel (a few seconds)."""
    from longctx.data import train_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    text = (AUSTEN / "persuasion.txt").read_text()
    train_tokenizer(iter([text]), 512, out)
    return out

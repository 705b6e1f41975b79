"""Corpora -> token files: local files split by chapter, hub datasets through `datasets`, budgets."""

import json

import numpy as np
import pytest

from longctx.data import DataError, TokenFile, iter_documents, prepare_split

from conftest import AUSTEN


def austen(split_files, documents="chapter", **extra):
    return {"source": "local", "root": str(AUSTEN), "documents": documents, "splits": split_files,
            "hub_path": None, "hub_name": None, "hub_revision": None, "text_field": "text",
            "max_tokens": None, "max_documents": None, **extra}


def test_chapters_become_documents():
    docs = list(iter_documents(austen({"test": ["persuasion.txt"]}), "test"))
    assert len(docs) == 24  # Persuasion has 24 chapters
    assert docs[0][0] == "persuasion/1" and docs[0][1].startswith("Chapter 1")


def test_prepare_packs_documents_with_bos_eos(tmp_path, austen_tokenizer):
    meta = prepare_split(austen({"test": ["persuasion.txt"]}), "test", austen_tokenizer, tmp_path / "test")
    data = TokenFile.open(tmp_path / "test")
    assert len(data) == meta["documents"] == 24
    a, b = data.bounds[0]
    assert data.tokens[a - 1] == meta["bos_token_id"] and data.tokens[b] == meta["eos_token_id"]
    assert sum(len(data.document(i)) for i in range(len(data))) == meta["tokens"]
    # the document's tokens are exactly the tokenizer's encoding of its text
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(austen_tokenizer))
    text = next(iter_documents(austen({"test": ["persuasion.txt"]}), "test"))[1]
    assert list(data.document(0)) == tok(text, add_special_tokens=False)["input_ids"]


def test_token_budget_stops_reading(tmp_path, austen_tokenizer):
    meta = prepare_split(austen({"test": ["persuasion.txt"]}, max_tokens=5000), "test", austen_tokenizer,
                         tmp_path / "t")
    assert 5000 <= meta["tokens"] < 5000 + 12000 and meta["documents"] < 24


def test_hub_path_reads_a_local_dataset_through_datasets(tmp_path, austen_tokenizer):
    """The hub code path (`datasets.load_dataset`, streamed) on a local dataset folder."""
    folder = tmp_path / "books"
    folder.mkdir()
    rows = [{"text": t, "id": i} for i, t in iter_documents(austen({"x": ["persuasion.txt"]}), "x")]
    with open(folder / "test.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    corpus = {"source": "hub", "root": None, "documents": "file", "splits": {"test": "test"},
              "hub_path": str(folder), "hub_name": None, "hub_revision": None, "text_field": "text",
              "max_tokens": None, "max_documents": 5}
    meta = prepare_split(corpus, "test", austen_tokenizer, tmp_path / "hub")
    assert meta["documents"] == 5 and meta["document_ids"][0] == "persuasion/1"


def test_missing_split_and_file_are_clear_errors(tmp_path, austen_tokenizer):
    with pytest.raises(DataError, match="no split 'validation'"):
        list(iter_documents(austen({"test": ["persuasion.txt"]}), "validation"))
    with pytest.raises(DataError, match="nope.txt does not exist"):
        list(iter_documents(austen({"test": ["nope.txt"]}), "test"))
    with pytest.raises(DataError, match="missing; run the prepare stage"):
        TokenFile.open(tmp_path / "absent")

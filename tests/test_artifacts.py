"""A corrupt artifact (cut short, overwritten) is named by its path, with what to delete; results
never hold a non-finite number."""

import json
import math

import numpy as np
import pytest

from longctx.data import DataError, TokenFile, iter_documents
from longctx.artifacts import ArtifactError, read_json, write_json
from longctx.search import FitnessLog

from conftest import tiny_llama


def test_a_corrupt_json_artifact_is_named_with_what_to_delete(tmp_path):
    path = tmp_path / "eval" / "perplexity-128.json"
    write_json(path, {"eval": "perplexity", "metrics": {"perplexity": 3.0}})
    path.write_text(path.read_text()[:20])  # a copy cut short
    with pytest.raises(ArtifactError, match=rf"{path} is corrupt .*delete it and rerun"):
        read_json(path)


def test_no_result_is_written_with_a_non_finite_number(tmp_path):
    with pytest.raises(ValueError, match="non-finite"):
        write_json(tmp_path / "r.json", {"metrics": {"perplexity": math.nan}})
    assert not (tmp_path / "r.json").exists()


def test_corrupt_safetensors_weights_are_named(tmp_path):
    from longctx.models import load_model

    tiny_llama().save_pretrained(tmp_path / "model")
    weights = tmp_path / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match=r"model folder .*model: its safetensors weights are corrupt.*delete"):
        load_model(tmp_path / "model")


def test_a_corrupt_line_in_a_search_log_is_named(tmp_path):
    log = tmp_path / "candidates.jsonl"
    FitnessLog(log, {"model": "m"}).record({"type": "candidate", "key": "0|1", "perplexity": 2.0})
    with open(log, "a") as f:
        f.write("{garbage}\n")
    with pytest.raises(ArtifactError, match=r"candidates.jsonl, line 3, is corrupt .*delete the file"):
        FitnessLog(log, {"model": "m"})


def test_a_cut_token_index_is_named(tmp_path):
    prefix = tmp_path / "test"
    np.arange(10, dtype=np.uint16).tofile(prefix.with_suffix(".bin"))
    np.save(prefix.with_suffix(".idx.npy"), np.array([[1, 9]], dtype=np.int64))
    write_json(prefix.with_suffix(".json"), {"dtype": "uint16", "documents": 1, "tokens": 8, "document_ids": ["a"]})
    assert len(TokenFile.open(prefix)) == 1
    prefix.with_suffix(".idx.npy").write_bytes(prefix.with_suffix(".idx.npy").read_bytes()[:40])
    with pytest.raises(ArtifactError, match=r"test.idx.npy is corrupt .*delete the token files"):
        TokenFile.open(prefix)


def test_a_non_utf8_corpus_names_its_file_and_an_encoding_reads_it(tmp_path):
    (tmp_path / "book.txt").write_bytes("Caf\xe9 au lait, na\xefve r\xe9sum\xe9.".encode("latin-1"))
    corpus = {"source": "local", "root": str(tmp_path), "documents": "file", "splits": {"train": ["book.txt"]}}
    with pytest.raises(DataError, match=r"book.txt is not utf-8 text .*encoding: latin-1"):
        list(iter_documents(corpus, "train"))
    ((_, text),) = iter_documents({**corpus, "encoding": "latin-1"}, "train")
    assert text == "Café au lait, naïve résumé."


def test_a_diverged_search_candidate_is_logged_as_null_and_read_back_as_worst(tmp_path):
    from longctx.search import Score

    log = tmp_path / "candidates.jsonl"
    book = FitnessLog(log, {"model": "m"})
    book.record({"type": "candidate", "key": "0|1", "perplexity": None, "diverged": True, "complete": True})
    assert "NaN" not in log.read_text() and "Infinity" not in log.read_text()
    assert FitnessLog(log, {"model": "m"}).known["0|1"] == Score(math.inf, True, None)
    assert json.loads(log.read_text().splitlines()[0]) == {"type": "fingerprint", "digests": {"model": "m"}}

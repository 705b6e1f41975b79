"""Resumable state is resumed only from exactly the inputs that made it: fine-tune checkpoints and
LongRoPE search logs carry a fingerprint; a mismatch sets the old state aside and starts fresh."""

import json
import logging
import re

import pytest
import torch
from safetensors.torch import load_file

from longctx import jobs, provenance
from longctx.config import Variant
from longctx.artifacts import read_json
from longctx.rope import apply_to_model
from longctx.train import train

from conftest import tiny_llama
from test_progressive import RUN, search_settings, workspace  # noqa: F401  (fixture)
from test_train import killed_after_checkpoint, settings, token_file


def weights(folder):
    return load_file(folder / "model.safetensors")


def same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def yarn_model(beta: float, seed: int = 0):
    model = tiny_llama(seed=seed)
    apply_to_model(model, "yarn", 2.0, {"beta": beta})
    return model


@pytest.mark.parametrize("changed_input", ["starting weights", "rope params"])
def test_a_checkpoint_made_from_other_inputs_is_set_aside_and_the_run_starts_fresh(tmp_path, changed_input, caplog):
    data = token_file(tmp_path)
    s = settings(steps=6, checkpoint_every=3)
    before = yarn_model(beta=32)
    after = yarn_model(beta=32, seed=1) if changed_input == "starting weights" else yarn_model(beta=16)

    with killed_after_checkpoint(3):
        train(before, data, s, tmp_path / "out", tmp_path / "work")
    with caplog.at_level(logging.WARNING, logger="longctx.provenance"):
        train(after, data, s, tmp_path / "out", tmp_path / "work")
    train(yarn_model(beta=32, seed=1) if changed_input == "starting weights" else yarn_model(beta=16), data, s,
          tmp_path / "clean", tmp_path / "clean_work")

    # the model is what a clean run on the new inputs gives, not a continuation of the old checkpoint
    assert same_weights(weights(tmp_path / "out"), weights(tmp_path / "clean"))
    set_aside = list((tmp_path / "work").glob("checkpoint.set-aside-*"))
    assert len(set_aside) == 1 and (set_aside[0] / "progress.json").exists()  # kept, not deleted
    assert "changed: model" in caplog.text and "starting fresh" in caplog.text


def test_a_checkpoint_of_other_settings_is_set_aside_too(tmp_path):
    data = token_file(tmp_path)
    with killed_after_checkpoint(3):
        train(tiny_llama(), data, settings(steps=6, checkpoint_every=3), tmp_path / "out", tmp_path / "work")
    train(tiny_llama(), data, settings(steps=6, checkpoint_every=3, lr=1e-3), tmp_path / "out", tmp_path / "work")
    train(tiny_llama(), data, settings(steps=6, checkpoint_every=3, lr=1e-3), tmp_path / "clean", tmp_path / "cw")
    assert same_weights(weights(tmp_path / "out"), weights(tmp_path / "clean"))
    assert list((tmp_path / "work").glob("checkpoint.set-aside-*"))


def test_a_checkpoint_records_the_fingerprint_of_its_inputs(tmp_path):
    data = token_file(tmp_path)
    model = tiny_llama()
    expected_model = provenance.model_digest(model)
    with killed_after_checkpoint(3):
        train(model, data, settings(steps=6, checkpoint_every=3), tmp_path / "out", tmp_path / "work")
    recorded = read_json(tmp_path / "work" / "checkpoint" / "progress.json")["fingerprint"]
    assert recorded["model"] == expected_model
    assert recorded["data"] == provenance.token_file_digest(data) and recorded["processes"] == 1
    # content, not paths: the same weights saved elsewhere have the same digest
    tiny_llama().save_pretrained(tmp_path / "copy")
    from longctx.models import load_model

    assert provenance.model_digest(load_model(tmp_path / "copy")) == expected_model


def test_a_search_log_of_other_settings_is_set_aside_and_never_mixed_in(workspace, tmp_path, caplog):  # noqa: F811
    variant = Variant("lr-x4", "longrope", 4.0, {}, finetune=False, search=True)

    def search(out_dir, documents, log_file):
        out = out_dir / "factors.json"
        jobs.search(model=workspace / "base", data=workspace / "data" / "validation", out=out, variant=variant,
                    settings=search_settings(documents=documents, iterations=2), run=RUN, device="cpu",
                    log_file=log_file)
        return read_json(out)

    shared_log = tmp_path / "search" / "candidates.jsonl"
    first = search(tmp_path / "a", 2, shared_log)
    with caplog.at_level(logging.WARNING, logger="longctx.provenance"):
        rerun = search(tmp_path / "a", 3, shared_log)  # search.documents 2 -> 3, same log file
    clean = search(tmp_path / "b", 3, tmp_path / "clean.jsonl")

    assert rerun["resumed_from_log"] == 0 and rerun["evaluated"] == clean["evaluated"]
    assert (rerun["factors"], rerun["n_hat"], rerun["perplexity"]) == \
        (clean["factors"], clean["n_hat"], clean["perplexity"])
    assert rerun["perplexity"] != first["perplexity"]
    assert re.search(r"changed: [a-z, ]*documents", caplog.text)
    aside = list(shared_log.parent.glob("candidates.jsonl.set-aside-*"))
    assert len(aside) == 1 and len(aside[0].read_text().splitlines()) == first["evaluated"] + 1  # kept whole
    head = json.loads(shared_log.read_text().splitlines()[0])
    assert head["type"] == "fingerprint" and set(head["digests"]) >= {"model", "documents", "task", "algorithm"}


def test_a_search_rerun_with_the_same_inputs_recomputes_nothing(workspace, tmp_path):  # noqa: F811
    variant = Variant("lr-x4", "longrope", 4.0, {}, finetune=False, search=True)
    out, log_file = tmp_path / "factors.json", tmp_path / "candidates.jsonl"
    for _ in range(2):
        jobs.search(model=workspace / "base", data=workspace / "data" / "validation", out=out, variant=variant,
                    settings=search_settings(), run=RUN, device="cpu", log_file=log_file)
    again = read_json(out)
    assert again["resumed_from_log"] == again["evaluated"] > 0
    assert not list(tmp_path.glob("candidates.jsonl.set-aside-*"))

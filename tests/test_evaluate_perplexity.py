"""Perplexity by length: truncate and sliding window, document selection, clear errors."""

import math

import pytest

from longctx.data import TokenFile, prepare_split
from longctx.evaluate import EVALUATIONS, EvaluationError
from longctx.evaluate.perplexity import sliding_windows
from longctx.data import load_tokenizer

from conftest import AUSTEN, tiny_llama

N = 64


@pytest.fixture(scope="module")
def token_files(tmp_path_factory, austen_tokenizer):
    """Four documents of Persuasion's text: about 40, 150, 400 and 700 tokens."""
    root = tmp_path_factory.mktemp("docs")
    text = (AUSTEN / "persuasion.txt").read_text()[20000:]
    names = []
    for k, chars in enumerate((150, 600, 1600, 2800)):
        (root / f"doc{k}.txt").write_text(text[k * 5000 : k * 5000 + chars])
        names.append(f"doc{k}.txt")
    corpus = {"source": "local", "root": str(root), "documents": "file", "splits": {"test": names},
              "hub_path": None, "hub_name": None, "hub_revision": None, "text_field": "text",
              "max_tokens": None, "max_documents": None}
    prefix = tmp_path_factory.mktemp("tokens") / "test"
    prepare_split(corpus, "test", austen_tokenizer, prefix)
    return prefix


@pytest.fixture(scope="module")
def model(austen_tokenizer):
    return tiny_llama(vocab_size=len(load_tokenizer(austen_tokenizer)), context=N)


def ppl(model, prefix, length, **kw):
    return EVALUATIONS["perplexity"](model, None, length, data_prefix=prefix, **kw)


@pytest.mark.parametrize("bos,text", [(False, N), (True, N - 1)])  # a window's text tokens: N, or N-1 after BOS
def test_sliding_with_stride_equal_to_window_is_truncate(model, token_files, bos, text):
    truncate = ppl(model, token_files, N, bos=bos)
    sliding = ppl(model, token_files, N, mode="sliding", stride=text, document_tokens=text, bos=bos)
    assert truncate["document_ids"] == sliding["document_ids"]
    assert truncate["bos"] is sliding["bos"] is bos
    assert sliding["metrics"]["nll"] == pytest.approx(truncate["metrics"]["nll"], rel=1e-6)
    assert sliding["metrics"]["perplexity"] == pytest.approx(truncate["metrics"]["perplexity"], rel=1e-6)


def test_sliding_scores_every_token_once(model, token_files):
    data = TokenFile.open(token_files)
    for n_tokens in (N, N + 1, 3 * N + 5, 700):
        for stride in (1, 16, N):
            windows = sliding_windows(n_tokens, N, stride)
            assert all(end - begin <= N for begin, end, _ in windows)
            scored = [t for begin, end, first in windows for t in range(first, end)]
            assert scored == list(range(1, n_tokens))  # every target once, in order
            # after a BOS, the first token is a target too
            after_bos = sliding_windows(n_tokens, N - 1, min(stride, N - 1), first_target=0)
            assert [t for begin, end, first in after_bos for t in range(first, end)] == list(range(n_tokens))
    # a smaller stride gives every token more context: a different figure, same documents
    doc_len = min(len(data.document(i)) for i in data.documents_at_least(4 * N))
    wide = ppl(model, token_files, N, mode="sliding", stride=N // 4, document_tokens=doc_len)
    coarse = ppl(model, token_files, N, mode="sliding", stride=N - 1, document_tokens=doc_len)  # N-1 after BOS
    assert wide["document_ids"] == coarse["document_ids"]
    assert wide["metrics"]["nll"] != pytest.approx(coarse["metrics"]["nll"], rel=1e-6)
    assert math.isfinite(wide["metrics"]["perplexity"])


def test_short_documents_are_left_out_and_counted(model, token_files):
    data = TokenFile.open(token_files)
    lengths = sorted(len(data.document(i)) for i in range(len(data)))
    length = lengths[1] + 1  # only the two longest documents qualify
    result = ppl(model, token_files, length)
    assert result["documents"] == 2 and result["documents_too_short"] == 2
    assert result["length"] == length and result["mode"] == "truncate"
    with pytest.raises(EvaluationError, match=r"only 2 of 4 documents have at least \d+ tokens; need 3"):
        ppl(model, token_files, length, min_documents=3)
    with pytest.raises(EvaluationError, match="document_tokens"):
        ppl(model, token_files, N, mode="sliding", document_tokens=N - 2)  # a window holds N-1 after BOS
    with pytest.raises(EvaluationError, match="unknown mode"):
        ppl(model, token_files, N, mode="strided")


def test_random_model_perplexity_is_near_the_vocabulary_size(model, token_files):
    """An untrained model predicts about uniformly: perplexity near the vocabulary size."""
    result = ppl(model, token_files, N)
    vocab = model.config.vocab_size
    assert 0.5 * vocab < result["metrics"]["perplexity"] < 2 * vocab


def test_corrupted_weights_are_recorded_as_diverged_never_as_a_nan_result(tmp_path, token_files, austen_tokenizer):
    import json

    import torch

    from longctx import jobs
    from longctx.config import RunInfo, Variant
    from longctx.data import load_tokenizer as tokenizer_of

    broken = tiny_llama(vocab_size=len(tokenizer_of(austen_tokenizer)), context=N)
    with torch.no_grad():
        broken.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
    broken.save_pretrained(tmp_path / "model")
    tokenizer_of(austen_tokenizer).save_pretrained(tmp_path / "model")
    variant = Variant("broken", "none", 1.0, {}, finetune=False, search=False)
    out = tmp_path / "perplexity-64.json"
    jobs.evaluate(evaluation="perplexity", model=tmp_path / "model", outs=[out], variant=variant, lengths=[N], settings={},
                  run=RunInfo("t", "local", "m", N, 0), device="cpu", data=token_files)

    text = out.read_text()
    assert "NaN" not in text and "Infinity" not in text  # a strict JSON file, no NaN result
    result = json.loads(text)
    assert result["metrics"]["perplexity"] is None and "perplexity" in result["diverged"]

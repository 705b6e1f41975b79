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


# --- the released codes' protocol: the same documents at every length, BOS before each window -----


def test_with_min_document_tokens_every_length_reads_the_same_documents(model, token_files):
    """YaRN/LongRoPE's --dataset-min-tokens: documents chosen once, each length reads their first N tokens."""
    data = TokenFile.open(token_files)
    lengths = sorted(len(data.document(i)) for i in range(len(data)))
    floor = lengths[2]  # the two longest documents
    same = [ppl(model, token_files, n, min_document_tokens=floor)["document_ids"] for n in (16, 32, N)]
    assert same[0] == same[1] == same[2] and len(same[0]) == 2
    assert len(ppl(model, token_files, 16)["document_ids"]) == 4  # without it, every document of >= N tokens
    # tiers (LongRoPE's scripts: >= 131072 up to 128k, >= 262144 at 256k): the smallest that holds N
    assert ppl(model, token_files, N, min_document_tokens=[N, floor])["document_ids"] == \
        ppl(model, token_files, N)["document_ids"]
    assert ppl(model, token_files, N + 1, min_document_tokens=[N, floor])["document_ids"] == same[0]
    with pytest.raises(EvaluationError, match=r"evaluate\.perplexity\.min_document_tokens \(40\) is below the "
                                              r"evaluation length 64"):
        ppl(model, token_files, N, min_document_tokens=40)
    with pytest.raises(EvaluationError, match=rf"only 2 of 4 documents have at least {floor} tokens; need 3 .*"
                                              r"evaluate\.perplexity\.min_document_tokens"):
        ppl(model, token_files, 16, min_document_tokens=floor, min_documents=3)


def test_a_length_above_min_document_tokens_is_a_config_error_naming_the_key():
    import yaml

    from conftest import REPO
    from longctx.config import ConfigError, validate

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["evaluate"]["perplexity"]["min_document_tokens"] = 512  # the default's lengths reach 1024
    with pytest.raises(ConfigError, match=r"'evaluate\.perplexity\.min_document_tokens': 512 is below the "
                                          r"evaluation length 1024"):
        validate(cfg)
    cfg["evaluate"]["perplexity"]["min_document_tokens"] = [512, 1024]
    validate(cfg)


def _hand_nll(model, window, first: int) -> float:
    """Mean NLL of ``window``'s tokens from index ``first`` on, from the model's full logits."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([window])).logits[0].float()
    targets = torch.tensor(window[first:])
    return float(torch.nn.functional.cross_entropy(logits[first - 1 : -1], targets))


def test_each_window_starts_with_bos_which_is_never_scored(model, token_files, austen_tokenizer):
    data = TokenFile.open(token_files)
    bos = load_tokenizer(austen_tokenizer).bos_token_id
    docs = [data.document(i).tolist() for i in data.documents_at_least(N)]
    with_bos = EVALUATIONS["perplexity"](model, load_tokenizer(austen_tokenizer), N, data_prefix=token_files)
    assert with_bos["bos"] is True
    # BOS + the first N-1 tokens; the N-1 text tokens are the targets, the first one too
    expected = sum(_hand_nll(model, [bos] + d[: N - 1], 1) for d in docs) / len(docs)
    assert with_bos["metrics"]["nll"] == pytest.approx(expected, rel=1e-5)
    # bos: false is the first N tokens, the first not scored (as before)
    without = ppl(model, token_files, N, bos=False)
    assert without["bos"] is False
    expected = sum(_hand_nll(model, d[:N], 1) for d in docs) / len(docs)
    assert without["metrics"]["nll"] == pytest.approx(expected, rel=1e-5)
    assert without["metrics"]["nll"] != pytest.approx(with_bos["metrics"]["nll"], rel=1e-4)


def test_every_sliding_window_starts_with_bos(model, token_files):
    """As the released codes do (add_start_token before each window): BOS + up to N-1 text tokens."""
    data = TokenFile.open(token_files)
    bos, stride = model.config.bos_token_id, 20
    i = data.documents_at_least(2 * N)[0]
    doc = data.document(i).tolist()[: 2 * N]
    total, count = 0.0, 0
    for begin, end, first in sliding_windows(len(doc), N - 1, stride, first_target=0):
        window = [bos] + doc[begin:end]
        n = end - first
        total += n * _hand_nll(model, window, len(window) - n)
        count += n
    result = ppl(model, token_files, N, mode="sliding", stride=stride, document_tokens=2 * N, max_documents=1)
    assert result["document_ids"] == [data.meta["document_ids"][i]] and result["bos"] is True
    assert count == len(doc)  # every text token scored once, the first one too
    assert result["metrics"]["nll"] == pytest.approx(total / count, rel=1e-5)

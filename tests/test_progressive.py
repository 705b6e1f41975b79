"""LongRoPE's progressive extension: the chain as variants, the secondary search, recovery factor sets."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from longctx import config as lc
from longctx import jobs
from longctx.artifacts import read_json, write_json
from longctx.search import final_record, recovery_task
from longctx.rope import apply_to_model, geometry_of

from conftest import write_token_files

REPO = Path(__file__).resolve().parents[1]
RUN = lc.RunInfo(experiment="t", model_source="pretrain", model="pretrain", original_context=16, seed=0)


def default_config():
    return yaml.safe_load((REPO / "config.yaml").read_text())


def search_settings(**over):
    cfg = lc.load_config(REPO / "config.yaml")
    s = {k: v for k, v in cfg["search"].items() if k not in ("corpus", "split")}
    s.update({"population": 6, "iterations": 1, "mutations": 2, "crossovers": 2, "parents": 3, "documents": 2,
              "n_hat_choices": [0, 1, 2, 4]})
    s.update(over)
    return s


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny saved model (original context 16) and validation documents of 100-200 tokens."""
    from conftest import tiny_llama

    root = tmp_path_factory.mktemp("progressive")
    tiny_llama(context=16).save_pretrained(root / "base")
    rng = np.random.default_rng(0)
    write_token_files(root / "data" / "validation", [rng.integers(3, 96, n) for n in (150, 90, 200, 120)])
    return root


# --- the chain as variants ----------------------------------------------------------------------


def test_a_chain_resolves_into_variants_in_dag_order():
    cfg = default_config()
    cfg["progressive"] = [{"name": "lr", "steps": [{"scale": 4, "finetune_steps": 30}, {"scale": 8, "finetune_steps": 20},
                                                   {"scale": 32}], "recovery": [1, 2]}]
    chain = [v for v in lc.variants(lc.validate(cfg)) if v.chain == "lr"]
    assert [v.name for v in chain] == ["lr-x4-ft", "lr-x8-ft", "lr-x32", "lr-x32-recovery"]
    assert [v.start for v in chain] == [None, "lr-x4-ft", "lr-x8-ft", "lr-x8-ft"]  # the weights each starts from
    # the paper's recipe by default: a fine-tuned step's factors are searched on the base model, a
    # search-only step's on the last fine-tuned weights (and recovery on the final ones)
    assert [v.search_start for v in chain] == [None, None, "lr-x8-ft", "lr-x8-ft"]
    assert [v.finetune_steps for v in chain] == [30, 20, None, None]
    assert all(v.search and v.method == "longrope" for v in chain)
    final = chain[-1]
    assert (final.recovery_of, final.recovery_lengths, final.scale) == ("lr-x32", (128, 256), 32.0)


def test_the_papers_llama2_recipe_searches_128k_and_256k_on_the_base_model():
    """LongRoPE section 3.3: both fine-tuned steps' factors come from the pretrained model; 256k
    fine-tunes from the 128k fine-tuned weights; 2048k is a secondary search on the 256k ones."""
    chain = {v.name: v for v in lc.variants(lc.load_config(REPO / "config/paper/longrope.yaml")) if v.chain}
    x32, x64, x512, final = (chain[f"longrope-llama2-{s}"] for s in ("x32-ft", "x64-ft", "x512", "x512-recovery"))
    assert (x32.search_start, x32.start, x32.finetune_steps) == (None, None, 400)
    assert (x64.search_start, x64.start, x64.finetune_steps) == (None, "longrope-llama2-x32-ft", 600)
    assert (x512.search_start, x512.start, x512.finetune) == ("longrope-llama2-x64-ft", "longrope-llama2-x64-ft", False)
    assert (final.search_start, final.start, final.recovery_of) == ("longrope-llama2-x64-ft",) * 2 + ("longrope-llama2-x512",)


def test_search_on_finetuned_keeps_the_secondary_search_chain_and_finetune_from_base_restarts():
    cfg = default_config()
    cfg["progressive"] = [{"name": "lr", "recovery": [1], "steps": [
        {"scale": 2, "finetune_steps": 10},
        {"scale": 4, "finetune_steps": 10, "search_on": "finetuned"},  # secondary search on lr-x2-ft
        {"scale": 8, "finetune_steps": 10, "finetune_from": "base"},  # base-searched factors, base weights
        {"scale": 16, "search_on": "base"}]}]  # a search-only step on the pretrained model runs on it
    chain = {v.name: v for v in lc.variants(lc.validate(cfg)) if v.chain}
    assert [(v.search_start, v.start) for v in chain.values()] == [
        (None, None), ("lr-x2-ft", "lr-x2-ft"), (None, None), (None, None), (None, None)]
    assert chain["lr-x16-recovery"].recovery_of == "lr-x16"


def test_a_standalone_search_and_a_chain_step_that_would_search_alike_share_one_search():
    cfg = default_config()
    cfg["variants"] = [{"method": "longrope", "scale": 4, "search": True},
                       {"method": "longrope", "scale": 8, "search": True},
                       {"method": "longrope", "scale": 4, "search": True, "finetune": True}]
    cfg["progressive"] = [{"name": "lr", "steps": [{"scale": 4, "finetune_steps": 30}, {"scale": 8}],
                           "recovery": [1]}]
    cfg["evaluate"]["ruler"]["enabled"] = False  # the default runs it on yarn-x4, not among these variants
    owners = lc.search_owners(lc.variants(lc.validate(cfg)))
    # base weights at 4x: one search for the standalone variant, its fine-tuned twin and the chain's first step
    assert owners["longrope-x4-search-ft"] == owners["lr-x4-ft"] == "longrope-x4-search"
    assert owners["longrope-x8-search"] == "longrope-x8-search"
    assert owners["lr-x8"] == "lr-x8"  # 8x on the chain's fine-tuned weights: not the base model's 8x search
    assert owners["lr-x8-recovery"] == "lr-x8-recovery"
    # a fine-tuned later step searching on the base model (the paper's 256k factors) shares the
    # base model's search at its scale, though it fine-tunes from the chain's weights
    cfg["progressive"][0]["steps"] = [{"scale": 4, "finetune_steps": 30}, {"scale": 8, "finetune_steps": 30}]
    named = {v.name: v for v in lc.variants(lc.validate(cfg))}
    owners = lc.search_owners(list(named.values()))
    assert owners["lr-x8-ft"] == "longrope-x8-search" and named["lr-x8-ft"].start == "lr-x4-ft"


def test_the_embedded_default_runs_a_scaled_down_chain():
    names = {v.name: v for v in lc.variants(lc.load_config(REPO / "config.yaml"))}
    assert names["longrope-prog-x4-ft"].finetune_steps == 40
    assert names["longrope-prog-x8"].start == "longrope-prog-x4-ft" and not names["longrope-prog-x8"].finetune
    assert names["longrope-prog-x8-recovery"].recovery_lengths == (128,)
    # today's chain: 4x searched on the base model, 8x and recovery on the 4x fine-tuned weights
    assert [names[f"longrope-prog-{s}"].search_start for s in ("x4-ft", "x8", "x8-recovery")] == [
        None, "longrope-prog-x4-ft", "longrope-prog-x4-ft"]


@pytest.mark.parametrize("chain,key", [
    ({"steps": [{"scale": 4}, {"scale": 2}]}, r"progressive\[0\]\.steps\[1\]\.scale"),  # scales must grow
    ({"steps": [{"scale": 1}]}, r"progressive\[0\]\.steps\[0\]\.scale"),
    ({"steps": [{"scale": 4}], "recovery": [4]}, r"progressive\[0\]\.recovery\[0\]"),  # not below the last scale
    ({"steps": [{"scale": 4}], "params": {"factors": [1.0]}}, r"progressive\[0\]\.params"),
    ({"steps": [{"scale": 4, "finetune_steps": 0}]}, r"progressive\[0\]\.steps\[0\]\.finetune_steps"),
    ({"name": "pi", "steps": [{"scale": 4}], "recovery": []}, r"progressive"),  # pi-x4 is taken
    ({"steps": [{"scale": 4}, {"scale": 8, "finetune_from": "base"}]},
     r"progressive\[0\]\.steps\[1\]\.finetune_from': only a step with finetune_steps"),
    ({"steps": [{"scale": 4}, {"scale": 8, "search_on": "finetuned"}]},
     r"progressive\[0\]\.steps\[1\]\.search_on': .*no earlier step fine-tunes"),
])
def test_chain_mistakes_name_their_key(chain, key):
    cfg = default_config()
    cfg["progressive"] = [chain]
    with pytest.raises(lc.ConfigError, match=key):
        lc.validate(cfg)


# --- secondary search ---------------------------------------------------------------------------


def test_secondary_search_multiplies_the_finetuned_factors(workspace, tmp_path):
    """A later chain step searches lambda' and the model runs with lambda_ft * lambda'."""
    from longctx.evaluate.perplexity import window_nll
    from longctx.models import load_model

    base = [1.0, 1.0, 1.1, 1.2, 1.5, 1.8, 2.0, 2.2]  # what the weights were "fine-tuned" with at 2x
    tuned = tmp_path / "tuned.json"
    write_json(tuned, {"scale": 2.0, "rope_scale": 2.0, "factors": base, "n_hat": 0,
                       "rope_params": {"factors": base, "n_hat": 0}})
    variant = lc.Variant("c-x4", "longrope", 4.0, {}, finetune=False, search=True)
    out = tmp_path / "search" / "factors.json"
    jobs.search(model=workspace / "base", data=workspace / "data" / "validation", out=out, variant=variant,
                settings=search_settings(), run=RUN, device="cpu", base_factors=tuned)
    found = read_json(out)
    assert found["kind"] == "secondary" and found["base_factors"] == base
    assert found["factors"] == pytest.approx([a * b for a, b in zip(base, found["relative_factors"])])
    assert found["rope_params"]["factors"] == found["factors"]
    # the relative PI seed (lambda' = 4 / 2 everywhere) was scored as the model with 2 x lambda_ft
    model = load_model(workspace / "base")
    lengths = {f"doc{i}": n for i, n in enumerate((150, 90, 200, 120))}
    assert all(lengths[d] >= 64 for d in found["documents"])
    from longctx.data import TokenFile

    data = TokenFile.open(workspace / "data" / "validation")
    # search.bos (default): BOS (1 here) + the first 63 tokens of each document
    windows = torch.stack([torch.as_tensor([1] + data.document(int(d[3:]))[:63].tolist()) for d in found["documents"]])
    log = [r for r in map(json.loads, (out.parent / "factors.log.jsonl").read_text().splitlines())
           if r["type"] == "candidate"]
    assert log[0]["factors"] == [2.0] * 8 and log[0]["n_hat"] == 0
    apply_to_model(model, "longrope", 4.0, {"factors": [2 * b for b in base], "n_hat": 0})
    sums, n = window_nll(model, windows)
    assert log[0]["perplexity"] == pytest.approx(math.exp(sum(s / n for s in sums) / len(sums)), rel=1e-5)


def test_a_search_with_too_few_long_documents_fails_before_loading_the_model(workspace, tmp_path):
    from longctx.search import SearchError

    variant = lc.Variant("x", "longrope", 8.0, {}, finetune=False, search=True)
    with pytest.raises(SearchError, match=r"validation: only 2 of 4 documents have at least 128 tokens.*search\.documents"):
        jobs.search(model=tmp_path / "no-model-here", data=workspace / "data" / "validation", out=tmp_path / "f.json",
                    variant=variant, settings=search_settings(documents=3), run=RUN, device="cpu")


# --- short-context recovery ---------------------------------------------------------------------


@pytest.mark.parametrize("short_n_hat,long_n_hat", [(2, 4), (0, 0)])  # our rope type; transformers' longrope
def test_recovery_factors_serve_short_sequences_and_the_long_ones_long(workspace, short_n_hat, long_n_hat):
    """Through the model: at most the switch length it runs as with the recovery set alone, above it
    as with the long set alone."""
    from longctx.models import load_model

    model = load_model(workspace / "base")
    geometry = geometry_of(model.config)
    long_set = {"factors": [1.0, 1.5, 2.5, 4.0, 6.0, 8.0, 9.0, 10.0], "n_hat": long_n_hat}
    task = recovery_task(geometry, 16, 8.0, long_set, search_settings())
    assert task.space.lambda_max == 1.25  # the lower bound of the recovery length (1.25 x 16/16), not 1.25 x 8
    assert {"pi", "ntk", "yarn"} <= set(task.seeds) and task.seeds["pi"] == pytest.approx([1.0] * 8)
    short = {"factors": [1.0, 1.0, 1.05, 1.1, 1.1, 1.2, 1.25, 1.25], "n_hat": short_n_hat}
    both = final_record({"rope_params": long_set, "length": 128, "perplexity": 1.0},
                        [{"length": 16, **short, "history": []}], "c-x8")
    assert [s["max_length"] for s in both["rope_params"]["factor_sets"]] == [16, None]

    def logits(params, n):
        apply_to_model(model, "longrope", 8.0, params)
        ids = torch.arange(3, 3 + n)[None] % 90 + 3
        with torch.no_grad():
            return model(ids).logits

    for n, alone in ((16, short), (12, short), (17, long_set), (64, long_set)):
        combined = logits(both["rope_params"], n)
        torch.testing.assert_close(combined, logits(alone, n), rtol=0, atol=0)
    # and the two sets do differ where it matters
    assert not torch.equal(logits(short, 16), logits(long_set, 16))


def test_recovery_stage_gives_the_final_model_its_factor_sets(workspace, tmp_path):
    long_file = tmp_path / "long.json"
    long_params = {"factors": [1.0, 1.5, 2.5, 4.0, 6.0, 8.0, 9.0, 10.0], "n_hat": 4}
    write_json(long_file, {"kind": "search", "scale": 8.0, "length": 128, "perplexity": 50.0, **long_params,
                           "rope_params": long_params})
    variant = lc.Variant("c-x8-recovery", "longrope", 8.0, {}, False, True, recovery_of="c-x8",
                         recovery_lengths=(16, 32))
    out = tmp_path / "rec" / "factors.json"
    jobs.recovery(model=workspace / "base", data=workspace / "data" / "validation", out=out, variant=variant,
                  settings=search_settings(), run=RUN, long_factors=long_file, device="cpu")
    found = read_json(out)
    sets = found["rope_params"]["factor_sets"]
    assert [s["max_length"] for s in sets] == [16, 32, None]
    assert sets[-1]["factors"] == long_params["factors"] and sets[-1]["n_hat"] == 4
    assert [r["length"] for r in found["recoveries"]] == [16, 32]
    for r, bound in zip(found["recoveries"], (1.25, 2.5)):  # each length's own, lower, maximum lambda
        assert r["kind"] == "recovery" and r["lambda_max"] == bound and max(r["factors"]) <= bound
    assert (found["length"], found["history"]) == (16, found["recoveries"][0]["history"])  # what the report plots
    # the evaluate stage loads it as the variant's RoPE
    model = jobs.extended_model(workspace / "base", variant, out)
    assert model.config.rope_parameters["rope_type"] == "longctx_longrope"
    assert [s["max_length"] for s in model.config.rope_parameters["factor_sets"]] == [16, 32, None]


def test_a_chain_runs_stage_by_stage(tmp_path, austen_tokenizer):
    """Search 2x on the base, fine-tune 1 step there, secondary search at 4x on those weights, recovery
    at 1x: each stage's output feeds the next as the rules wire them."""
    from conftest import tiny_llama
    from longctx.data import load_tokenizer
    from longctx.models import load_model

    tiny_llama(vocab_size=512, context=16).save_pretrained(tmp_path / "models" / "base")
    load_tokenizer(austen_tokenizer).save_pretrained(tmp_path / "models" / "base")
    rng = np.random.default_rng(1)
    for split in ("train", "validation"):
        write_token_files(tmp_path / "data" / split, [rng.integers(3, 512, 160) for _ in range(4)])
    cfg = default_config()
    cfg["progressive"] = [{"name": "c", "steps": [{"scale": 2, "finetune_steps": 1}, {"scale": 4}], "recovery": [1]}]
    cfg["model"]["pretrain"]["context"] = 16
    cfg["evaluate"]["passkey"]["enabled"] = False  # its prompt needs more than 16 tokens
    cfg = lc.validate(cfg)
    chain = {v.name: v for v in lc.variants(cfg) if v.chain == "c"}
    assert list(chain) == ["c-x2-ft", "c-x4", "c-x4-recovery"]
    settings = search_settings()
    ft = {**{k: v for k, v in cfg["finetune"].items() if k != "corpus"}, "batch_size": 2, "micro_batch_size": 2,
          "warmup_steps": 0, "checkpoint_every": 1, "log_every": 1}
    models, search = tmp_path / "models", tmp_path / "search"
    val = tmp_path / "data" / "validation"

    jobs.search(model=models / "base", data=val, out=search / "c-x2-ft" / "factors.json", variant=chain["c-x2-ft"],
                settings=settings, run=RUN, device="cpu")
    jobs.finetune(model=models / "base", data=tmp_path / "data" / "train", out=models / "c-x2-ft",
                  variant=chain["c-x2-ft"], settings=ft, run=RUN, device="cpu",
                  factors=search / "c-x2-ft" / "factors.json", work_dir=tmp_path / "work" / "c-x2-ft")
    step1 = read_json(search / "c-x2-ft" / "factors.json")
    tuned = load_model(models / "c-x2-ft")  # the weights carry the factors they were fine-tuned with
    assert tuned.config.longctx_rope["params"]["factors"] == step1["factors"]
    jobs.search(model=models / "c-x2-ft", data=val, out=search / "c-x4" / "factors.json", variant=chain["c-x4"],
                settings=settings, run=RUN, device="cpu", base_factors=search / "c-x2-ft" / "factors.json")
    step2 = read_json(search / "c-x4" / "factors.json")
    assert step2["kind"] == "secondary" and step2["base_factors"] == step1["factors"]
    assert step2["factors"] == pytest.approx([a * b for a, b in zip(step1["factors"], step2["relative_factors"])])
    jobs.recovery(model=models / "c-x2-ft", data=val, out=search / "c-x4-recovery" / "factors.json",
                  variant=chain["c-x4-recovery"], settings=settings, run=RUN, long_factors=search / "c-x4" / "factors.json",
                  device="cpu")
    final = read_json(search / "c-x4-recovery" / "factors.json")
    sets = final["rope_params"]["factor_sets"]
    assert [s["max_length"] for s in sets] == [16, None] and sets[-1]["factors"] == step2["factors"]
    # the final model: fine-tuned weights of step 1, the short set up to 16 tokens, the 4x set beyond
    model = jobs.extended_model(models / "c-x2-ft", chain["c-x4-recovery"], search / "c-x4-recovery" / "factors.json")
    assert model.config.longctx_rope["scale"] == 4.0


def test_the_papers_recipe_runs_stage_by_stage(tmp_path, austen_tokenizer):
    """LongRoPE's recipe, scaled down: 2x and 4x searched on the base model, fine-tune 2x from base and
    4x (with its own, unmultiplied, factors) from the 2x weights, a secondary search at 8x on the 4x
    weights, recovery at 1x. Each job gets the weights the variants name, as the rules pass them."""
    from conftest import tiny_llama
    from longctx.data import load_tokenizer
    from longctx.models import load_model

    tiny_llama(vocab_size=512, context=16).save_pretrained(tmp_path / "models" / "base")
    load_tokenizer(austen_tokenizer).save_pretrained(tmp_path / "models" / "base")
    rng = np.random.default_rng(2)
    for split in ("train", "validation"):
        write_token_files(tmp_path / "data" / split, [rng.integers(3, 512, 160) for _ in range(4)])
    cfg = default_config()
    cfg["progressive"] = [{"name": "p", "recovery": [1], "steps": [
        {"scale": 2, "finetune_steps": 1}, {"scale": 4, "finetune_steps": 1}, {"scale": 8}]}]
    cfg["model"]["pretrain"]["context"] = 16
    cfg["evaluate"]["passkey"]["enabled"] = False  # its prompt needs more than 16 tokens
    chain = {v.name: v for v in lc.variants(lc.validate(cfg)) if v.chain == "p"}
    assert list(chain) == ["p-x2-ft", "p-x4-ft", "p-x8", "p-x8-recovery"]
    settings = search_settings()
    ft = {**{k: v for k, v in cfg["finetune"].items() if k != "corpus"}, "batch_size": 2, "micro_batch_size": 2,
          "warmup_steps": 0, "checkpoint_every": 1, "log_every": 1}
    models, search, val = tmp_path / "models", tmp_path / "search", tmp_path / "data" / "validation"

    def weights(name):  # rules/common.smk: models/<variant>, or the base model
        return models / (name or "base")

    def factors(name):
        return search / name / "factors.json"

    for name in ("p-x2-ft", "p-x4-ft"):  # both on the base model, no factors to multiply
        v = chain[name]
        jobs.search(model=weights(v.search_start), data=val, out=factors(name), variant=v, settings=settings,
                    run=RUN, device="cpu")
        jobs.finetune(model=weights(v.start), data=tmp_path / "data" / "train", out=models / name, variant=v,
                      settings=ft, run=RUN, device="cpu", factors=factors(name), work_dir=tmp_path / "work" / name)
    x2, x4 = read_json(factors("p-x2-ft")), read_json(factors("p-x4-ft"))
    assert x4["kind"] == "search" and "base_factors" not in x4  # searched on the pretrained model
    # the 4x step fine-tunes with its own factors (not x2's times a relative set), from the 2x weights
    assert chain["p-x4-ft"].start == "p-x2-ft"
    tuned = load_model(models / "p-x4-ft")
    assert tuned.config.longctx_rope["scale"] == 4.0 and tuned.config.longctx_rope["params"]["factors"] == x4["factors"]
    assert x4["factors"] != x2["factors"]
    x8v = chain["p-x8"]
    jobs.search(model=weights(x8v.search_start), data=val, out=factors("p-x8"), variant=x8v, settings=settings,
                run=RUN, device="cpu", base_factors=factors(x8v.search_start))
    x8 = read_json(factors("p-x8"))
    # the secondary search multiplies the factors the 4x weights were fine-tuned with: 2x over them
    assert x8["kind"] == "secondary" and x8["base_factors"] == x4["factors"]
    assert x8["factors"] == pytest.approx([a * b for a, b in zip(x4["factors"], x8["relative_factors"])])
    rec = chain["p-x8-recovery"]
    jobs.recovery(model=weights(rec.search_start), data=val, out=factors(rec.name), variant=rec, settings=settings,
                  run=RUN, long_factors=factors("p-x8"), device="cpu")
    sets = read_json(factors(rec.name))["rope_params"]["factor_sets"]
    assert [s["max_length"] for s in sets] == [16, None] and sets[-1]["factors"] == x8["factors"]
    model = jobs.extended_model(weights(rec.start), rec, factors(rec.name))
    assert model.config.longctx_rope["scale"] == 8.0

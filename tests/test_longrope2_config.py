"""LongRoPE and LongRoPE2 side by side in one experiment: a variant's (or chain's) own ``search`` and
``finetune`` keys over the sections', checked like the sections, and mistakes named by key."""

from pathlib import Path

import pytest
import yaml

from longctx import config as lc

REPO = Path(__file__).resolve().parents[1]
LONGROPE2 = {"fitness": "needle", "critical_dim": {"enabled": True}, "n_hat_choices": [0]}


def default_config():
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_a_variants_own_settings_go_over_the_sections_and_its_search_is_its_own():
    cfg = default_config()
    cfg["variants"] = [{"method": "longrope", "scale": 4, "search": True},
                       {"name": "lr2-x4", "method": "longrope", "scale": 4, "search": LONGROPE2},
                       {"name": "lr2-x4-ft", "method": "longrope", "scale": 4, "search": LONGROPE2,
                        "finetune": {"mixed_context": {"enabled": True, "short_fraction": 0.5}, "steps": 7}}]
    cfg["evaluate"]["ruler"]["variants"] = ["base"]  # config.yaml's names a variant this test replaces
    cfg = lc.validate(cfg)
    named = {v.name: v for v in lc.variants(cfg)}
    plain, lr2, lr2_ft = named["longrope-x4-search"], named["lr2-x4"], named["lr2-x4-ft"]
    assert (plain.search_settings, lr2.search_settings) == ({}, LONGROPE2) and lr2_ft.finetune and lr2_ft.search
    settings = lc.search_settings_for(cfg, lr2)
    assert settings["fitness"] == "needle" and settings["critical_dim"] == {**cfg["search"]["critical_dim"],
                                                                            "enabled": True}
    assert settings["population"] == cfg["search"]["population"] and "corpus" not in settings
    assert lc.search_settings_for(cfg, plain)["fitness"] == "perplexity"
    ft = lc.finetune_settings_for(cfg, lr2_ft)
    assert (ft["steps"], ft["mixed_context"]["short_fraction"], ft["lr"]) == (7, 0.5, cfg["finetune"]["lr"])
    assert lc.short_corpus(cfg, lr2_ft) == lc.train_corpus(cfg, "finetune") and lc.short_corpus(cfg, plain) is None
    # LongRoPE2's search is not LongRoPE's; its two variants share one
    owners = lc.search_owners(list(named.values()))
    assert (owners["longrope-x4-search"], owners["lr2-x4"], owners["lr2-x4-ft"]) == \
        ("longrope-x4-search", "lr2-x4", "lr2-x4")
    # what a job receives rebuilds the same variant
    assert lc.Variant.from_dict(lr2_ft.to_dict()) == lr2_ft


def test_a_chains_own_settings_reach_every_stage():
    cfg = default_config()
    cfg["progressive"] = [{"name": "c", "steps": [{"scale": 4, "finetune_steps": 5}], "recovery": [],
                           "search": LONGROPE2, "finetune": {"mixed_context": {"enabled": True}}}]
    chain = [v for v in lc.variants(lc.validate(cfg)) if v.chain == "c"]
    assert [v.name for v in chain] == ["c-x4-ft"]
    assert chain[0].search_settings == LONGROPE2 and chain[0].finetune_settings == {"mixed_context": {"enabled": True}}


@pytest.mark.parametrize("change,key", [
    (lambda c: c["variants"].append({"name": "x", "method": "longrope", "scale": 4, "search": {"fitness": "needl"}}),
     r"'variants\[4\]\.search\.fitness': 'needl' is not one of"),
    (lambda c: c["variants"].append({"name": "x", "method": "longrope", "scale": 4,
                                     "search": {"critical_dim": {"enabled": True, "index": -1}}}),
     r"'variants\[4\]\.search\.critical_dim\.index'"),
    (lambda c: c["variants"].append({"name": "x", "method": "longrope", "scale": 4,
                                     "search": {"needle": {"depths": [1.5]}}}),
     r"'variants\[4\]\.search\.needle\.depths'"),
    (lambda c: c["variants"].append({"name": "x", "method": "longrope", "scale": 4, "search": {"split": "test"}}),
     r"'variants\[4\]\.search\.split': set per experiment"),
    (lambda c: c["variants"].append({"name": "x", "method": "pi", "scale": 4,
                                     "finetune": {"mixed_context": {"enabled": True}}}),
     r"'variants\[4\]\.finetune\.mixed_context\.enabled': .* x is pi"),
    (lambda c: c["finetune"].update(mixed_context={"enabled": True}),
     r"'finetune\.mixed_context\.enabled': .* pi-x4-ft is pi"),
    (lambda c: c["variants"].append({"name": "x", "method": "longrope", "scale": 4, "finetune": {
        "mixed_context": {"enabled": True, "short_corpus": "nope"}}}),
     r"'variants\[4\]\.finetune\.mixed_context\.short_corpus': no corpus named 'nope'"),
    (lambda c: c["progressive"][0].update(search={"critical_dim": {"enabled": True}}),
     r"'progressive\[0\]\.search\.critical_dim\.enabled': .* longrope-prog-x8 is a chain's secondary"),
    (lambda c: c["search"].update(critical_dim={"enabled": True}),
     r"'search\.critical_dim\.enabled': .* secondary"),
])
def test_longrope2_mistakes_name_their_key(change, key):
    cfg = default_config()
    change(cfg)
    with pytest.raises(lc.ConfigError, match=key):
        lc.validate(cfg)

"""From the config to evaluate jobs: which evaluations, lengths and settings; the stage writes the JSON."""

import inspect
import json

import pytest

from longctx import jobs
from longctx.config import RunInfo, Variant
from longctx.config import load_config
from longctx.config.evaluations import enabled_evaluations, lengths_for, settings_for
from longctx.evaluate import EVALUATIONS
from longctx.evaluate import wikiqa

from conftest import REPO, tiny_llama

# (GovReport needs room for its 512-token summaries: at its paper length, 16k)
ALL_ON = {"evaluate": {"lines": {"enabled": True}, "wikiqa": {"enabled": True},
                       "govreport": {"enabled": True, "lengths": [16384]},
                       "harness": {"enabled": True, "task_sets": ["pi", "longrope"]}}}


def test_default_config_runs_perplexity_passkey_and_ruler_on_two_variants():
    from longctx.config import variants
    from longctx.config.evaluations import variants_for

    config = load_config(REPO / "config.yaml")
    assert enabled_evaluations(config) == ["perplexity", "passkey", "ruler"]
    assert lengths_for(config, "passkey") == [128, 256, 512, 1024]
    names = [v.name for v in variants(config)]
    assert variants_for(config, "passkey", names) == names
    assert variants_for(config, "ruler", names) == ["base", "yarn-x4"] and lengths_for(config, "ruler") == [512, 1024]
    assert settings_for(config, "ruler")["samples"] == 4 and "variants" not in settings_for(config, "ruler")


def test_every_setting_is_an_argument_of_its_evaluation():
    """Evaluations take **_ so extra keys would be silently ignored: every config key must be a real argument."""
    config = load_config(REPO / "config.yaml", ALL_ON)
    names = enabled_evaluations(config)
    assert names == ["perplexity", "passkey", "lines", "wikiqa_ffqa", "wikiqa_altqa", "ruler", "govreport", "harness"]
    for name in names:
        fn = wikiqa._evaluate if name.startswith("wikiqa_") else EVALUATIONS[name]
        accepted = {p.name for p in inspect.signature(fn).parameters.values() if p.kind == p.KEYWORD_ONLY}
        assert set(settings_for(config, name)) <= accepted, name
    assert settings_for(config, "wikiqa_altqa")["hub_path"] == "abacusai/WikiQA-Altered_Numeric_QA"
    assert settings_for(config, "passkey")["batch_size"] == 16  # from evaluate.generation
    assert settings_for(config, "govreport")["batch_size"] == 4  # its own key wins


def test_lengths_per_evaluation():
    config = load_config(REPO / "config.yaml", {**ALL_ON, "evaluate": {**ALL_ON["evaluate"], "lengths": [512, 4096],
                                                                         "passkey": {"grid_points": 8}}})
    assert lengths_for(config, "perplexity") == [512, 4096]
    assert lengths_for(config, "passkey") == [512 * k for k in range(1, 9)]  # PI's grid up to the longest
    assert lengths_for(config, "wikiqa_ffqa") == [2048, 4096, 8192, 16384]  # the dataset's splits
    assert lengths_for(config, "harness") == [128]  # inside the original context


def test_evaluate_stage_writes_the_result(tmp_path, austen_tokenizer):
    from longctx.data import load_tokenizer

    tokenizer = load_tokenizer(austen_tokenizer)
    model_dir = tmp_path / "model"
    tiny_llama(vocab_size=len(tokenizer), context=64).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    variant = Variant("pi-x4", "pi", 4.0, {}, finetune=False, search=False)
    out = tmp_path / "eval" / "lines-512.json"
    jobs.evaluate(evaluation="lines", model=model_dir, out=out, variant=variant, length=512,
                  settings={"examples": 2, "max_new_tokens": 4}, run=RunInfo("t", "local", "tiny", 64, 1), device="cpu")
    result = json.loads(out.read_text())
    assert result["eval"] == "lines" and result["length"] == 512 and result["variant"] == "pi-x4"
    assert result["rope"] == "linear" and 0 <= result["metrics"]["accuracy"] <= 1
    assert len(result["examples"]) == 2


@pytest.mark.parametrize("override,message", [
    ({"evaluate": {"ruler": {"variants": ["yarn-x8"]}}}, "evaluate.ruler.variants': no variant named 'yarn-x8'"),
    ({"evaluate": {"ruler": {"lengths": [128]}}}, "evaluate.ruler': length 128 is below what ruler needs"),
    ({"evaluate": {"wikiqa": {"tasks": ["nq"]}}}, "evaluate.wikiqa.tasks"),
    ({"evaluate": {"lines": {"source": "web"}}}, "evaluate.lines.source"),
    ({"evaluate": {"harness": {"task_sets": ["yarn"]}}}, "evaluate.harness.task_sets"),
])
def test_bad_evaluation_config_names_the_key(override, message):
    from longctx.config import ConfigError

    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(REPO / "config.yaml", override)

"""From the config to evaluate jobs: which evaluations, lengths and settings; the stage writes the JSON."""

import inspect
import re
import json

import pytest

from longctx import jobs
from longctx.config import RunInfo, Variant
from longctx.config import load_config, variants
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
    jobs.evaluate(evaluation="lines", model=model_dir, outs=[out], variant=variant, lengths=[512],
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


@pytest.fixture
def pi_x4_on_a_tiny_model(tmp_path, austen_tokenizer):
    """(model folder, its tokenizer, a PI x4 variant, run facts): what an evaluate job is given."""
    from longctx.data import load_tokenizer

    tokenizer = load_tokenizer(austen_tokenizer)
    model_dir = tmp_path / "model"
    tiny_llama(vocab_size=len(tokenizer), context=64).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model_dir, tokenizer, Variant("pi-x4", "pi", 4.0, {}, finetune=False, search=False), \
        RunInfo("t", "local", "tiny", 64, 1)


def test_one_job_for_several_lengths_keeps_each_result_made_from_the_same_inputs(tmp_path, pi_x4_on_a_tiny_model):
    """evaluate.one_job_per: evaluation - one process, one JSON per length; a rerun with a length added
    computes only that length, and a changed model recomputes them all."""
    model_dir, tokenizer, variant, run = pi_x4_on_a_tiny_model
    settings = {"trials_per_length": 1, "max_new_tokens": 3}

    def evaluate(lengths):
        outs = [tmp_path / "eval" / f"passkey-{n}.json" for n in lengths]
        jobs.evaluate(evaluation="passkey", model=model_dir, outs=outs, variant=variant, lengths=lengths,
                      settings=settings, run=run, device="cpu")
        return {n: json.loads(o.read_text()) for n, o in zip(lengths, outs)}

    first = evaluate([256, 384])
    assert {r["length"] for r in first.values()} == {256, 384} and first[256]["fingerprint"] != first[384]["fingerprint"]
    second = evaluate([256, 384, 512])
    assert second[256] == first[256] and second[384] == first[384]  # kept as they were (same seconds, too)
    assert second[512]["eval"] == "passkey" and second[512]["length"] == 512
    tiny_llama(vocab_size=len(tokenizer), context=64, seed=1).save_pretrained(model_dir)  # other weights
    third = evaluate([256, 384, 512])
    assert all(third[n]["fingerprint"] != second[n]["fingerprint"] for n in (256, 384, 512))


def test_one_job_per_variant_keeps_what_per_evaluation_jobs_made_and_computes_only_the_rest(tmp_path,
                                                                                           pi_x4_on_a_tiny_model):
    """evaluate.one_job_per: variant - one process runs every evaluation of a variant; results carry
    the same fingerprints as those of one job per evaluation, so switching grouping recomputes nothing."""
    from longctx.evaluate import EvaluationError

    model_dir, _, variant, run = pi_x4_on_a_tiny_model
    passkey = {"trials_per_length": 1, "max_new_tokens": 3}
    lines = {"examples": 1}
    common = dict(model=model_dir, variant=variant, run=run, device="cpu")
    outs = {(e, n): tmp_path / "eval" / f"{e}-{n}.json" for e in ("passkey", "lines") for n in (512, 640)}
    jobs.evaluate(evaluation="passkey", lengths=[512], outs=[outs["passkey", 512]], settings=passkey, **common)
    before = outs["passkey", 512].read_text()

    plan = [{"evaluation": "passkey", "lengths": [512, 640], "outs": [str(outs["passkey", n]) for n in (512, 640)],
             "settings": passkey, "reads_data": False},
            {"evaluation": "lines", "lengths": [512, 640], "outs": [str(outs["lines", n]) for n in (512, 640)],
             "settings": lines, "reads_data": False}]
    jobs.evaluate_variant(plan=plan, **common)
    assert outs["passkey", 512].read_text() == before  # kept: made from the same inputs
    results = {k: json.loads(o.read_text()) for k, o in outs.items()}
    assert {(r["eval"], r["length"]) for r in results.values()} == set(outs)
    assert len({r["fingerprint"] for r in results.values()}) == 4
    # an evaluation that reads token files, given none: refused before the model loads
    with pytest.raises(EvaluationError, match="reads token files, but no --data"):
        jobs.evaluate_variant(plan=[{**plan[0], "reads_data": True}], **common)


def planned_evaluate_jobs(grouping: str) -> dict[str, int]:
    """Evaluate rule -> jobs in a dry run of the embedded default with ``evaluate.one_job_per: grouping``."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "2", "--config",
                           f'evaluate={{"one_job_per": "{grouping}"}}'], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {rule: int(n) for rule, n in re.findall(r"^(evaluate\w*)\s+(\d+)\s*$", proc.stdout + proc.stderr, re.M)}


def test_one_job_per_variant_plans_one_job_per_variant():
    names = [v.name for v in variants(load_config(REPO / "config.yaml"))]
    assert planned_evaluate_jobs("variant") == {f"evaluate_variant_{re.sub(r'[^A-Za-z0-9_]', '_', n)}": 1
                                                for n in names}


def test_one_job_per_evaluation_plans_a_job_per_variant_and_evaluation():
    # the embedded default: 8 variants x (perplexity, passkey), RULER on two variants
    assert planned_evaluate_jobs("evaluation") == {"evaluate_perplexity": 8, "evaluate_passkey": 8,
                                                   "evaluate_ruler": 2}

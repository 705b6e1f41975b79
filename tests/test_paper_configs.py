"""The papers as ready configs (config/paper/*.yaml, config/smollm2.yaml): each validates, and a
Snakemake dry run plans the jobs of that paper - its variants (method x scale, fine-tuned or
searched, progressive steps and recovery), its evaluations at their lengths - with the cluster
resources each job asks SLURM for. Dry runs contact no hub: they only plan.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from longctx.config import finetune_settings_for, load_config, original_context, search_settings_for, variants
from longctx.config.evaluations import enabled_evaluations

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    "pi": REPO / "config/paper/pi.yaml",
    "pi_ft10000": REPO / "config/paper/pi_ft10000.yaml",
    "giraffe": REPO / "config/paper/giraffe.yaml",
    "giraffe_llama2": REPO / "config/paper/giraffe_llama2.yaml",
    "longrope": REPO / "config/paper/longrope.yaml",
    "longrope_mistral": REPO / "config/paper/longrope_mistral.yaml",
    "longrope2": REPO / "config/paper/longrope2.yaml",
    "smollm2": REPO / "config/smollm2.yaml",
}


def parse_jobs(text: str) -> list[dict]:
    """The jobs of a `snakemake -n -p` printout: rule, wildcards, resources and input files of each."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", text):
        head = re.match(r"(?:local)?rule (\w+):", block)
        if not head:
            continue
        job = {"rule": head.group(1), "wildcards": {}, "resources": {}}
        for key in ("wildcards", "resources"):
            line = re.search(rf"^\s+{key}: (.*)$", block, re.M)
            if line:
                job[key] = dict(item.split("=", 1) for item in line.group(1).split(", "))
        inputs = re.search(r"^\s+input: (.*)$", block, re.M)
        job["input"] = inputs.group(1).split(", ") if inputs else []
        jobs.append(job)
    return jobs


def link_corpora(config_path: Path, workdir: Path) -> None:
    """Local corpora are read relative to the working directory (and checked when the config is read):
    link the repository's into ``workdir``."""
    for corpus in yaml.safe_load(config_path.read_text())["corpora"].values():
        if corpus["source"] == "local" and not (workdir / corpus["root"]).exists():
            (workdir / corpus["root"]).parent.mkdir(parents=True, exist_ok=True)
            (workdir / corpus["root"]).symlink_to(REPO / corpus["root"])


def place_model_file(config_path: Path, workdir: Path) -> None:
    """A stand-in for a config's model file or folder on disk (gguf, local): the user's, an input of
    the tokenizer and base-model rules, so a dry run needs it to exist (its contents are not read)."""
    link_corpora(config_path, workdir)
    model = yaml.safe_load(config_path.read_text())["model"]
    if model["source"] in ("gguf", "local"):
        path = workdir / model["name_or_path"]
        if model["source"] == "gguf":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        else:
            path.mkdir(parents=True, exist_ok=True)


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory):
    """Name -> parsed jobs; all dry runs at once (each is mostly Python start-up and DAG building)."""
    procs = {}
    for name, cfg in CONFIGS.items():
        workdir = tmp_path_factory.mktemp(name)
        place_model_file(cfg, workdir)
        cmd = [sys.executable, "-m", "snakemake", "-n", "-p", "-s", str(REPO / "Snakefile"),
               "--configfile", str(cfg), "-d", str(workdir), "--cores", "1"]
        procs[name] = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = {}
    for name, proc in procs.items():
        text, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name}: dry run failed\n{text[-3000:]}"
        out[name] = parse_jobs(text)
    return out


def by_rule(jobs, rule):
    return [j for j in jobs if j["rule"] == rule]


def trained(jobs):
    return {j["wildcards"]["variant"] for j in by_rule(jobs, "finetune")}


def searched(jobs):
    return {j["wildcards"]["variant"] for j in by_rule(jobs, "search")}


def evaluated(jobs):
    """(variant, evaluation) -> sorted lengths."""
    out = {}
    for j in by_rule(jobs, "evaluate"):
        out.setdefault((j["wildcards"]["variant"], j["wildcards"]["eval"]), []).append(int(j["wildcards"]["length"]))
    return {k: sorted(v) for k, v in out.items()}


def one_resources(jobs, rule):
    """The resources every job of a rule asks for (they are per stage, so all alike)."""
    (res,) = {tuple(sorted(j["resources"].items())) for j in by_rule(jobs, rule)}
    return dict(res)


@pytest.mark.parametrize("name", CONFIGS)
def test_each_config_validates_with_hub_or_gguf_model_and_its_context(name):
    config = load_config(CONFIGS[name])
    assert config["model"]["source"] == ("gguf" if name == "smollm2" else "hub")
    assert original_context(config) == {"pi": 2048, "pi_ft10000": 2048, "giraffe": 2048, "giraffe_llama2": 4096,
                                         "longrope": 4096,
                                         "longrope_mistral": 8192, "longrope2": 8192, "smollm2": 8192}[name]
    assert all(v.method != "none" or v.finetune or v.name == "base" for v in variants(config))


def test_pi_llama7b_pi_and_direct_finetuning_at_8k_16k_32k(dry_runs):
    jobs = dry_runs["pi"]
    assert trained(jobs) == {f"{m}-x{s}-ft" for m in ("pi", "none") for s in (4, 8, 16)}
    assert not searched(jobs)
    evals = evaluated(jobs)
    # PG19 perplexity at PI's Table 1 lengths for every model, extrapolation (base) included
    for v in ("base", "pi-x4", "pi-x16-ft", "none-x4-ft"):
        assert evals[(v, "perplexity")] == [2048, 4096, 8192, 16384, 32768]
    # passkey k_max grid: 32 lengths evenly spaced up to 32768; GovReport at 16k; short benchmarks at 2k
    assert len(evals[("pi-x4-ft", "passkey")]) == 32 and evals[("pi-x4-ft", "passkey")][-1] == 32768
    assert evals[("pi-x8-ft", "govreport")] == [16384]
    # PI Table 5: GovReport scores PI-16384 only, after 10 epochs on the train split at 16384; the
    # evaluation reads that fine-tune, the model's other evaluations its own weights
    assert {v for v, e in evals if e == "govreport"} == {"pi-x8-ft"}
    assert [j["wildcards"]["variant"] for j in by_rule(jobs, "finetune_govreport")] == ["pi-x8-ft"]
    reads = {i for j in jobs if j["rule"].startswith("evaluate") for i in j["input"]}
    assert "results/pi-llama7b/task_models/govreport/pi-x8-ft" in reads
    govreport = load_config(CONFIGS["pi"])["evaluate"]["govreport"]["finetune"]
    assert (govreport["epochs"], govreport["length"], govreport["split"]) == (10, 16384, "train")
    assert evals[("none-x16-ft", "harness")] == [2048]
    config = load_config(CONFIGS["pi"])
    ppl = config["evaluate"]["perplexity"]
    assert (ppl["mode"], ppl["stride"], ppl["document_tokens"]) == ("sliding", 256, 32768)
    assert config["evaluate"]["harness"]["task_sets"] == ["pi"]
    assert (config["finetune"]["steps"], config["finetune"]["lr"], config["finetune"]["warmup_steps"]) == (1000, 2e-5, 20)
    # 4 nodes x 8 A100 for fine-tuning (PI's 32 GPUs), one A100 per evaluation
    ft = one_resources(jobs, "finetune")
    assert (ft["nodes"], ft["gres"], ft["mem_mb"], ft["runtime"]) == ("4", "gpu:a100:8", "480000", "1440")
    # PI section 3.1: batch 64 at 8192 for 7B, 128 at 16k and 32k
    batch = {v.name: finetune_settings_for(config, v)["batch_size"] for v in variants(config) if v.finetune}
    assert batch == {"pi-x4-ft": 64, "none-x4-ft": 64, "pi-x8-ft": 128, "none-x8-ft": 128,
                     "pi-x16-ft": 128, "none-x16-ft": 128}
    ev = one_resources(jobs, "evaluate")
    assert (ev["gpu"], ev["gpu_model"]) == ("1", "a100")
    prepared = {(j["wildcards"]["corpus"], j["wildcards"]["split"]) for j in by_rule(jobs, "prepare_corpus")}
    assert prepared == {("pile", "train"), ("pg19", "test")}


def test_pi_direct_finetuning_10000_steps_is_its_own_experiment(dry_runs):
    jobs = dry_runs["pi_ft10000"]
    assert trained(jobs) == {"none-x4-ft"}
    config = load_config(CONFIGS["pi_ft10000"])
    assert config["finetune"]["steps"] == 10000 and config["report"]["compare"] == ["pi-llama7b"]
    assert one_resources(jobs, "finetune")["runtime"] == "1200"


@pytest.mark.parametrize("name,model,length", [("giraffe", "huggyllama/llama-13b", 2048),
                                               ("giraffe_llama2", "meta-llama/Llama-2-13b-hf", 4096)])
def test_giraffe_13b_bases_positions_and_retrieval_evaluations(dry_runs, name, model, length):
    jobs = dry_runs[name]
    assert trained(jobs) == {"pi-x4-ft", "pi-x16-ft", "giraffe_power-x4-ft", "giraffe_truncated-x4-ft",
                             "giraffe_randomized-x4-ft"}
    evals = evaluated(jobs)
    assert {e for (_, e) in evals} == {"lines", "wikiqa_ffqa", "wikiqa_altqa"}
    assert evals[("giraffe_power-x4-ft", "wikiqa_ffqa")] == [2048, 4096, 8192, 16384]
    assert evals[("pi-x16-ft", "lines")][-1] == 24576
    # evaluation scales: the fine-tuned weights of pi-x4-ft evaluated with PI at 8 (trained once)
    assert {"pi-x4-ft@x8", "pi-x16-ft@x12", "pi-x16-ft@x32"} <= {v for (v, _) in evals}
    at8 = [j for j in jobs if j["rule"].startswith("evaluate") and j["wildcards"].get("variant") == "pi-x4-ft@x8"]
    assert at8 and all(any(i.endswith("models/pi-x4-ft") for i in j["input"]) for j in at8)
    if name == "giraffe":
        # IFT (LoRA, Vicuna template) of the linear x4 model, evaluated at 4 and at 8 on the tuned weights
        assert [j["wildcards"]["variant"] for j in by_rule(jobs, "instruct")] == ["pi-x4-ft-ift"]
        ift8 = [j for j in jobs if j["rule"].startswith("evaluate")
                and j["wildcards"].get("variant") == "pi-x4-ft-ift@x8"]
        assert ift8 and all(any(i.endswith("models/pi-x4-ft-ift") for i in j["input"]) for j in ift8)
        config = load_config(CONFIGS[name])
        assert config["evaluate"]["wikiqa"]["prompt_format"] == "vicuna"
        assert (config["instruct"]["dataset"]["template"], config["instruct"]["lora"]["enabled"]) == ("vicuna", True)
    # the 13B model fine-tunes on 2 nodes of 8 A100; RedPajama is the only prepared corpus
    assert one_resources(jobs, "finetune")["gres"] == "gpu:a100:8"
    assert {j["wildcards"]["corpus"] for j in by_rule(jobs, "prepare_corpus")} == {"redpajama"}
    config = load_config(CONFIGS[name])
    ft = config["finetune"]
    assert ft["batch_size"] == 32 and config["model"]["name_or_path"] == model
    # every scale trains at the base model's context (positions compressed), with the Hugging Face
    # Trainer's AdamW and schedule of Giraffe's script: betas (0.9, 0.999), 300 warm-up steps from 0
    assert ft["length"] == length and original_context(config) == length
    assert (ft["lr"], ft["betas"], ft["warmup_steps"], ft["warmup_from"], ft["schedule"]) == (
        2e-5, [0.9, 0.999], 300, 0.0, "linear")
    by_name = {v.name: v for v in variants(config)}
    assert by_name["giraffe_truncated-x4-ft"].params == {"cutoff_length": length}
    assert by_name["giraffe_power-x4-ft"].params == {"power": 0.5}  # linear_scale: false, the default


def test_longrope_llama2_progressive_128k_256k_2048k_with_recovery(dry_runs):
    jobs = dry_runs["longrope"]
    # 128k and 256k fine-tuned with their searched factors; 2048k by a secondary search alone
    assert trained(jobs) == {"longrope-llama2-x32-ft", "longrope-llama2-x64-ft"}
    assert searched(jobs) == {"longrope-x2-search", "longrope-x4-search", "longrope-llama2-x32-ft",
                              "longrope-llama2-x64-ft", "longrope-llama2-x512"}
    assert [j["wildcards"]["variant"] for j in by_rule(jobs, "recovery")] == ["longrope-llama2-x512-recovery"]
    chain = {v.name: v for v in variants(load_config(CONFIGS["longrope"])) if v.chain}
    assert chain["longrope-llama2-x32-ft"].finetune_steps == 400 and chain["longrope-llama2-x64-ft"].finetune_steps == 600
    # the paper's recipe (section 3.3): 128k and 256k factors searched on the pretrained model, 256k
    # fine-tuned from the 128k weights, 2048k a secondary search on the 256k weights
    inputs = {(j["rule"], j["wildcards"]["variant"]): j["input"] for j in jobs if j["rule"] in ("search", "finetune")}
    R = "results/longrope-llama2-7b"
    for step in ("x32-ft", "x64-ft"):
        assert f"{R}/models/base" in inputs[("search", f"longrope-llama2-{step}")]
        assert not any(f.endswith("factors.json") for f in inputs[("search", f"longrope-llama2-{step}")])
    ft64 = inputs[("finetune", "longrope-llama2-x64-ft")]
    assert f"{R}/models/longrope-llama2-x32-ft" in ft64 and f"{R}/search/longrope-llama2-x64-ft/factors.json" in ft64
    assert f"{R}/models/longrope-llama2-x64-ft" in inputs[("search", "longrope-llama2-x512")]
    assert f"{R}/search/longrope-llama2-x64-ft/factors.json" in inputs[("search", "longrope-llama2-x512")]
    assert chain["longrope-llama2-x512"].target_length(4096) == 2097152
    assert chain["longrope-llama2-x512-recovery"].recovery_lengths == (4096, 8192)
    evals = evaluated(jobs)
    assert evals[("longrope-llama2-x512-recovery", "perplexity")] == [4096, 8192, 16384, 32768, 65536, 131072, 262144]
    assert evals[("longrope-llama2-x512-recovery", "harness")] == [4096]
    assert ("dynamic_ntk-x4", "passkey") in evals
    # fine-tuning on 16 A100 (2 nodes), each search on one A100 for up to 3 days
    ft, search = one_resources(jobs, "finetune"), one_resources(jobs, "search")
    assert (ft["nodes"], ft["gres"]) == ("2", "gpu:a100:8")
    assert (search["gpu"], search["runtime"]) == ("1", "4320")
    assert one_resources(jobs, "recovery") == search
    assert enabled_evaluations(load_config(CONFIGS["longrope"])) == ["perplexity", "passkey", "harness"]


def test_longrope_mistral_searches_128k_on_the_base_model_and_finetunes_with_it_at_16k_on_4_gpus(dry_runs):
    jobs = dry_runs["longrope_mistral"]
    # the paper (section 4.1): the 128k (16x) factors, searched on the base model, fine-tuned at 16k
    assert trained(jobs) == searched(jobs) == {"longrope-mistral-x16-ft"}
    (search_job,) = by_rule(jobs, "search")
    assert "results/longrope-mistral-7b/models/base" in search_job["input"]
    (ft_job,) = by_rule(jobs, "finetune")
    assert "results/longrope-mistral-7b/search/longrope-mistral-x16-ft/factors.json" in ft_job["input"]
    assert [j["wildcards"]["variant"] for j in by_rule(jobs, "recovery")] == ["longrope-mistral-x16-recovery"]
    config = load_config(CONFIGS["longrope_mistral"])
    named = {v.name: v for v in variants(config)}
    assert finetune_settings_for(config, named["longrope-mistral-x16-ft"])["length"] == 16384
    assert named["longrope-mistral-x16-recovery"].recovery_lengths == (8192,)
    assert (config["finetune"]["lr"], config["finetune"]["schedule"], config["finetune"]["batch_size"]) == (1e-6, "constant", 64)
    ft = one_resources(jobs, "finetune")
    assert (ft["gpu"], ft["gpu_model"]) == ("4", "a100") and "nodes" not in ft


def test_longrope2_llama3_to_128k_beside_yarn_ntk_and_longrope_with_the_papers_midtraining(dry_runs):
    jobs = dry_runs["longrope2"]
    assert trained(jobs) == {"yarn-x16-ft", "ntk-x16-ft", "longrope-x16-search-ft", "longrope2-x16-ft"}
    assert searched(jobs) == {"longrope-x16-search-ft", "longrope2-x16-ft"}
    # only LongRoPE2's fine-tune reads Fineweb-Edu's short documents, beside RedPajama
    inputs = {j["wildcards"]["variant"]: " ".join(j["input"]) for j in by_rule(jobs, "finetune")}
    assert "data/fineweb_edu/train.bin" in inputs["longrope2-x16-ft"] and "data/redpajama/train.bin" in inputs[
        "longrope2-x16-ft"]
    assert "fineweb_edu" not in inputs["longrope-x16-search-ft"]
    config = load_config(CONFIGS["longrope2"])
    named = {v.name: v for v in variants(config)}
    lr2, lr = (search_settings_for(config, named[n]) for n in ("longrope2-x16-ft", "longrope-x16-search-ft"))
    # App. B: P=64, 40 iterations, p=0.3; section 3.2: 10 PG19 books, a needle at the start of each
    assert (lr2["population"], lr2["iterations"], lr2["mutation_prob"]) == (64, 40, 0.3)
    assert (lr2["fitness"], lr2["documents"], lr2["needle"]["depths"], lr2["critical_dim"]["enabled"]) == \
        ("needle", 10, [0.0], True)
    assert (lr["fitness"], lr["documents"], lr["critical_dim"]["enabled"]) == ("perplexity", 5, False)
    ft = finetune_settings_for(config, named["longrope2-x16-ft"])
    # 10B tokens at 128k in 1192 steps of 64, lr 2e-5, cosine; 30% short windows (Table 1)
    assert ft["steps"] * ft["batch_size"] * 131072 == pytest.approx(10e9, rel=0.01)
    assert (ft["lr"], ft["schedule"], ft["mixed_context"]["enabled"], ft["mixed_context"]["short_fraction"]) == \
        (2e-5, "cosine", True, 0.3)
    assert not finetune_settings_for(config, named["longrope-x16-search-ft"])["mixed_context"]["enabled"]
    # 64 A100 for mid-training (8 nodes x 8); search and evaluations on one
    ft_res, search = one_resources(jobs, "finetune"), one_resources(jobs, "search")
    assert (ft_res["nodes"], ft_res["gres"]) == ("8", "gpu:a100:8") and search["gpu"] == "1"
    assert evaluated(jobs)[("longrope2-x16-ft", "perplexity")] == [4096, 8192, 16384, 32768, 65536, 131072]
    assert evaluated(jobs)[("longrope2-x16-ft", "harness")] == [8192]


def test_smollm2_whole_chain_on_one_gpu(dry_runs):
    jobs = dry_runs["smollm2"]
    assert trained(jobs) == {"pi-x4-ft", "yarn-x4-ft", "smollm2-longrope-x4-ft", "longrope2-x4-ft"}
    # the chain's first step searches the base weights at 4x as longrope-x4-search does: one search for both;
    # LongRoPE2's two variants share theirs likewise
    assert searched(jobs) == {"longrope-x4-search", "smollm2-longrope-x8", "longrope2-x4-search"}
    (chain_ft,) = [j for j in by_rule(jobs, "finetune") if j["wildcards"]["variant"] == "smollm2-longrope-x4-ft"]
    assert any(f.endswith("search/longrope-x4-search/factors.json") for f in chain_ft["input"])
    evals = evaluated(jobs)
    assert evals[("base", "perplexity")] == [8192, 16384, 32768, 65536]
    assert evals[("smollm2-longrope-x8-recovery", "passkey")] == [8192, 32768, 65536]
    # RULER at 1x-4x on the base model and the 4x variants; LongChat-Lines is off (0 for every variant)
    assert evals[("pi-x4-ft", "ruler")] == [8192, 16384, 32768] and ("smollm2-longrope-x8", "ruler") not in evals
    assert Counter(e for (_, e) in evals) == Counter({"perplexity": 11, "passkey": 11, "ruler": 9})
    # LongRoPE2 fine-tunes with as many tokens as LongRoPE's 4x step, its short windows from chapters
    config = load_config(CONFIGS["smollm2"])
    named = {v.name: v for v in variants(config)}
    lr2 = finetune_settings_for(config, named["longrope2-x4-ft"])
    assert lr2["steps"] * lr2["batch_size"] == named["smollm2-longrope-x4-ft"].finetune_steps * config["finetune"][
        "batch_size"] and lr2["mixed_context"]["short_corpus"] == "austen_chapters"
    (lr2_ft,) = [j for j in by_rule(jobs, "finetune") if j["wildcards"]["variant"] == "longrope2-x4-ft"]
    assert any(f.endswith("search/longrope2-x4-search/factors.json") for f in lr2_ft["input"])
    # every GPU stage on one GPU of any type; nothing spans nodes
    for rule in ("finetune", "search", "recovery", "evaluate"):
        res = one_resources(jobs, rule)
        assert res["gpu"] == "1" and "gpu_model" not in res and "nodes" not in res
    # fine-tuning, search and perplexity read different novels
    config = load_config(CONFIGS["smollm2"])
    splits = config["corpora"]["austen"]["splits"]
    assert not set(splits["test"]) & (set(splits["train"]) | set(splits["validation"]))
    assert (config["search"]["split"], config["evaluate"]["perplexity"]["split"]) == ("validation", "test")


def test_a_missing_model_file_fails_the_dry_run_naming_it(tmp_path):
    link_corpora(CONFIGS["smollm2"], tmp_path)
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-s", str(REPO / "Snakefile"), "--configfile",
                           str(CONFIGS["smollm2"]), "-d", str(tmp_path), "--cores", "1"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "data/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" in proc.stdout + proc.stderr


def test_a_paper_config_run_from_the_repository_plans_its_own_experiment_only():
    """config.yaml (the embedded default) is not merged under a config file given on the command line."""
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", "config/paper/pi.yaml"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (proc.stdout + proc.stderr).replace(str(REPO), "<repo>")  # a checkout's own path may say anything
    assert "longrope" not in text and "austen" not in text and "results/pi-llama7b/" in text

"""What the cluster offers against what the jobs ask for, how earlier attempts ended, and the sbatch
line each job gets - without a cluster: on `sinfo`,
`squeue` and SLURM log text captured from the one-node CI cluster (.ci/slurm_up.sh) and, where
marked, written in sinfo's format for a GPU cluster. tests/test_slurm.py runs the same code against
the real cluster."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from longctx.config import load_config, validate
from longctx.config.attempts import Attempts, End, job_log_folder, parse_squeue, state_from_log, wildcard_text
from longctx.config.cluster import (AccountNote, Partition, check, minutes, parse_sinfo, print_preview, problems,
                                    request_of, sbatch_line)
from longctx.config.resources import RULE_STAGES, stage_resources

REPO = Path(__file__).resolve().parents[1]

# `sinfo -h -N -o "%P|%n|%c|%m|%G|%l|%a"` on the one-node CI cluster (.ci/slurm_up.sh on 2 cores)
SINFO_CI = "debug*|vm|2|21694|(null)|infinite|up\n"
# the same format for a made-up cluster: CPU nodes, two GPU node types, a short debug partition,
# a partition that is down
SINFO_GPU = """\
cpu*|c001|64|256000|(null)|2-00:00:00|up
cpu*|c002|64|256000|(null)|2-00:00:00|up
gpu|g001|64|512000|gpu:a100:4(S:0-1)|1-00:00:00|up
gpu|g002|64|512000|gpu:a100:4(S:0-1)|1-00:00:00|up
gpu|g003|128|1024000|gpu:h100:8(S:0-1),mps:800|1-00:00:00|up
debug|c001|64|256000|(null)|30:00|up
old|x001|16|64000|(null)|infinite|down
"""


def requests(config: dict, rules=RULE_STAGES):
    """Each rule's first-attempt request, as the plugin would submit it."""
    out = []
    for rule in rules:
        r = stage_resources(config, RULE_STAGES[rule])
        res = {k: (v([], 1, rule) if callable(v) else v) for k, v in r.snakemake_resources().items()}
        out.append(request_of(rule, res, r.cpus))
    return out


def default_config(resources: dict | None = None) -> dict:
    """The embedded default, its resources section updated by ``resources``."""
    return load_config(REPO / "config.yaml", {"resources": resources} if resources is not None else None)


def schema_resources_config() -> dict:
    """The embedded default with no resources section: every stage at the schema's defaults."""
    raw = yaml.safe_load((REPO / "config.yaml").read_text())
    raw.pop("resources")
    raw["corpora"]["austen"]["root"] = str(REPO / raw["corpora"]["austen"]["root"])
    return validate(raw)


# --- sinfo ----------------------------------------------------------------------------------------


def test_sinfo_of_the_one_node_ci_cluster():
    parts = parse_sinfo(SINFO_CI)
    assert list(parts) == ["debug"]
    debug = parts["debug"]
    assert debug.default and debug.state == "up" and debug.max_minutes is None
    assert [(n.name, n.cpus, n.mem_mb, n.gpus) for n in debug.nodes] == [("vm", 2, 21694, {})]
    assert debug.limits() == (None, 21694, "partition debug")


def test_sinfo_of_a_gpu_cluster_gives_gpus_by_type_and_time_limits():
    parts = parse_sinfo(SINFO_GPU)
    assert [p.name for p in parts.values() if p.default] == ["cpu"]
    assert parts["gpu"].max_minutes == 24 * 60 and parts["debug"].max_minutes == 30
    assert [n.gpus for n in parts["gpu"].nodes] == [{"a100": 4}, {"a100": 4}, {"h100": 8}]
    assert parts["old"].state == "down" and parts["cpu"].limits().mem_mb == 256000


@pytest.mark.parametrize("text, expected", [("infinite", None), ("UNLIMITED", None), ("45", 45), ("30:00", 30),
                                            ("0:30", 1), ("1:30:00", 90), ("2-00:00:00", 2880)])
def test_slurm_times_in_minutes(text, expected):
    assert minutes(text) == expected


# --- requests against partitions ------------------------------------------------------------------


def test_the_schema_defaults_do_not_fit_the_one_node_cluster_and_each_problem_is_named():
    """Issue 20: 4 CPUs for base_model, finetune and search on a 2-CPU node used to wait forever."""
    found = check(requests(schema_resources_config()), parse_sinfo(SINFO_CI))
    assert found == [
        f"rule {rule} asks partition debug for 4 CPUs per node (resources.{stage}.cpus), but its largest node has 2 "
        f"[1 job]" for rule, stage in [("base_model", "base_model"), ("finetune", "finetune"), ("search", "search"),
                                       ("recovery", "search")]]


def test_the_embedded_default_fits_the_one_node_cluster():
    assert check(requests(default_config()), parse_sinfo(SINFO_CI)) == []


def test_gpu_time_and_partition_problems_name_the_key_and_the_limit():
    parts = parse_sinfo(SINFO_GPU)
    cfg = default_config({
        "partition": "gpu",
        "tokenizer": {"partition": "gpux"},
        "prepare": {"partition": "old"},
        "finetune": {"gpus": 8, "gpu_type": "h100", "nodes": 2, "cpus": 64, "mem_mb": 400000},
        "search": {"gpus": 1, "gpu_type": "v100"},
        "evaluate": {"runtime": 2000, "mem_mb": 2000000},
        "report": {"partition": "debug", "runtime": 15}})
    found = {r.rule: problems(r, parts) for r in requests(cfg)}
    assert found["tokenizer"] == ["asks for partition 'gpux' (resources.tokenizer.partition), which the cluster "
                                  "does not have (partitions: cpu, gpu, debug, old)"]
    assert found["prepare_corpus"] == ["goes to partition old, which is down"]
    assert found["finetune"] == ["asks partition gpu for 2 nodes (resources.finetune.nodes) with 64 CPUs, 400000 MB "
                                 "and 8 GPUs each, but only 1 of its nodes have that"]
    assert found["search"] == found["recovery"] == [
        "asks partition gpu for 1 GPUs of type v100 per node (resources.search.gpus), but its largest node has 0"]
    assert found["evaluate"] == [
        "asks partition gpu for a time limit of 2000 min (resources.evaluate.runtime), but its limit is 1440 min",
        "asks partition gpu for 2000000 MB of memory per node (resources.evaluate.mem_mb), but its largest node has "
        "1024000"]
    assert found["report"] == found["compare"] == [] and found["base_model"] == []
    assert problems(request_of("tokenizer", {}, 1), {"p": Partition("p", nodes=[])}) == [
        "names no partition and the cluster has no default one; set resources.partition (partitions: p)"]


def test_requests_are_read_as_the_plugin_reads_the_resources():
    r = request_of("finetune", {"gres": "gpu:a100:4", "nodes": 2, "mem_mb": 1000, "runtime": 60}, 16)
    assert (r.gpus, r.gpu_type, r.nodes, r.cpus, r.mem_mb, r.runtime, r.partition) == (4, "a100", 2, 16, 1000, 60, None)
    r = request_of("evaluate", {"gpu": 2, "gpu_model": "h100", "slurm_partition": "gpu", "mem_mb_per_cpu": 100}, 8)
    assert (r.gpus, r.gpu_type, r.mem_mb, r.partition) == (2, "h100", 800, "gpu")
    r = request_of("report", {"gpu_model": "a100", "cpus_per_task": 3}, 1)
    assert (r.cpus, r.mem_mb, r.runtime, r.gpus, r.gpu_type) == (3, None, None, 1, "a100")


# --- how earlier attempts ended -------------------------------------------------------------------


def test_slurm_log_lines_tell_how_a_job_ended():
    # slurmstepd's lines, as the CI cluster wrote them into a job's output (scancel; the time limit)
    assert state_from_log("start\nslurmstepd-vm: error: *** JOB 61 ON vm CANCELLED AT 2026-12-01T12:47:02 ***\n") \
        == "CANCELLED"
    assert state_from_log("start\nslurmstepd-vm: error: *** JOB 59 ON vm CANCELLED AT 2026-12-01T12:48:03 DUE TO "
                          "TIME LIMIT ***\n") == "TIMEOUT"
    # cgroup memory enforcement (not on the CI cluster): slurmstepd's messages, old and new
    assert state_from_log("slurmstepd: error: Detected 1 oom_kill event in StepId=12.batch. Some of the step "
                          "tasks have been OOM Killed.") == "OUT_OF_MEMORY"
    assert state_from_log("slurmstepd: error: Exceeded job memory limit") == "OUT_OF_MEMORY"
    assert state_from_log("*** JOB 7 ON n1 CANCELLED AT 2026-01-01T00:00:00 DUE TO PREEMPTION ***") == "PREEMPTED"
    # a program's own words are not SLURM's: a CUDA out-of-memory error is not a host memory limit
    assert state_from_log("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB") is None


def test_attempts_of_a_job_come_from_squeue_then_its_log_folder(tmp_path):
    """squeue (with finished jobs, MinJobAge) names the attempts writing to the job's log folder since
    the run started; a job squeue has forgotten is read from its log (sacct answers nothing here)."""
    root = tmp_path / "slurm_logs"
    folder = job_log_folder(root, "finetune", {"variant": "pi-x2-ft"})
    assert folder == root / "rule_finetune" / "pi-x2-ft"
    assert wildcard_text({"variant": "a", "eval": "b/c", "length": 512}) == "a_b_c_512"
    folder.mkdir(parents=True)
    since = time.time() - 100
    submitted = lambda dt: time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since + dt))  # noqa: E731
    other = job_log_folder(root, "finetune", ["pi-x4-ft"])
    squeue = "\n".join([
        f"40|TIMEOUT|{submitted(-3600)}|{folder}/%j.log|",  # an earlier run of the workflow
        f"51|CANCELLED|{submitted(5)}|{folder}/%j.log|",
        f"52|COMPLETED|{submitted(6)}|{other}/%j.log|",  # another job
        f"53_1|COMPLETED|{submitted(7)}|{folder}/%A_%a.log|",  # an array task, not ours
        f"56|TIMEOUT|{submitted(30)}|{folder}/%j.log|"])
    (folder / "54.log").write_text("slurmstepd: error: *** JOB 54 ON vm CANCELLED AT 2026-12-01T12:00:00 DUE TO TIME "
                                   "LIMIT ***\n")  # squeue forgot it (MinJobAge)
    calls = []

    def run(args, **kwargs):
        calls.append(args[0])
        if args[0] == "squeue":
            return SimpleNamespace(returncode=0, stdout=squeue + "\n", stderr="")
        return SimpleNamespace(returncode=1, stdout="", stderr="Slurm accounting storage is disabled")

    attempts = Attempts(since, root, user="someone", run=run)
    assert attempts.ends("finetune", ["pi-x2-ft"], 1) == [] and calls == []  # a first attempt asks nothing
    assert attempts.ends("finetune", ["pi-x2-ft"], 4) == [End(51, "CANCELLED", "squeue"), End(54, "TIMEOUT", "log"),
                                                          End(56, "TIMEOUT", "squeue")]
    assert attempts.ends("finetune", ["pi-x2-ft"], 2) == [End(56, "TIMEOUT", "squeue")]
    assert calls == ["squeue", "sacct", "squeue", "sacct"]
    assert Attempts(since, None, run=run).ends("finetune", ["pi-x2-ft"], 3) == []  # not a SLURM run
    assert [r[:2] for r in parse_squeue(squeue)] == [(40, "TIMEOUT"), (51, "CANCELLED"), (52, "COMPLETED"),
                                                      (56, "TIMEOUT")]


def test_sacct_answers_for_a_job_squeue_forgot_where_accounting_runs(tmp_path):
    folder = job_log_folder(tmp_path, "search", ["longrope-x4-search"])
    folder.mkdir(parents=True)
    (folder / "70.log").write_text("no slurmstepd line\n")

    def run(args, **kwargs):
        out = {"squeue": "", "sacct": "70|OUT_OF_MEMORY\n"}[args[0]]
        return SimpleNamespace(returncode=0, stdout=out, stderr="")

    assert Attempts(time.time() - 10, tmp_path, run=run).ends("search", ["longrope-x4-search"], 2) == [
        End(70, "OUT_OF_MEMORY", "sacct")]


# --- the plugin's account guess --------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("sacct") is None, reason="needs SLURM's sacct, which the plugin's guess runs")
def test_the_plugins_account_guess_becomes_one_line():
    """The plugin's own guess (its `sacct ... | tail -1` without a shell fails on every cluster) logs
    three warnings; through the filter the workflow installs, one line says what happens instead."""
    from snakemake_executor_plugin_slurm.accounts import get_account

    logger = logging.getLogger("test-account-note")
    logger.propagate = False
    seen, said = [], []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    logger.warning("No SLURM account given, trying to guess.")  # as Executor.get_account_arg does
    assert get_account(logger) is None
    logger.warning("Unable to guess SLURM account. Trying to proceed without.")
    assert any("invalid option" in m for m in seen), seen  # the plugin bug, reproduced
    seen.clear()
    logger.addFilter(AccountNote(said.append))
    logger.warning("No SLURM account given, trying to guess.")
    get_account(logger)
    logger.warning("Unable to guess SLURM account. Trying to proceed without.")
    logger.warning("Guessed SLURM account: proj1")  # what a working guess would say still shows
    assert seen == ["Guessed SLURM account: proj1"]
    assert said == ["No SLURM account set (config resources.account or resources.<stage>.account): jobs are "
                    "submitted without -A, so SLURM uses your default account"]


# --- the sbatch line ------------------------------------------------------------------------------


class Resources(dict):
    __getattr__ = dict.__getitem__


def fake_job(config, rule, wildcards=None, attempt=1):
    r = stage_resources(config, RULE_STAGES[rule])
    res = {k: (v(list((wildcards or {}).values()), attempt, rule) if callable(v) else v)
           for k, v in r.snakemake_resources().items()}
    return SimpleNamespace(name=rule, wildcards=Resources(wildcards or {}), resources=Resources(res), threads=r.cpus,
                           is_local=False)


def test_sbatch_line_is_the_plugins_submission_for_the_job():
    pytest.importorskip("snakemake_executor_plugin_slurm")
    cfg = default_config({"account": "proj 1", "evaluate": {"gpus": 1, "gpu_type": "a100", "cpus": 4}})
    line = sbatch_line(fake_job(cfg, "evaluate", {"variant": "pi-x4-ft", "eval": "perplexity", "length": 512}),
                       logdir="/w/results/austen-tiny/slurm_logs", workdir="/w", default_partition="debug")
    assert line == (
        "sbatch --parsable --job-name '<run id>' "
        "--output /w/results/austen-tiny/slurm_logs/rule_evaluate/pi-x4-ft_perplexity_512/%j.log --export=ALL "
        "--comment rule_evaluate_wildcards_pi-x4-ft_perplexity_512  -A proj  -p debug -t 10 --mem 2500 "
        '--cpus-per-task=4 -D /w --gpus=a100:1 --wrap="<snakemake job step>"')


def test_preview_prints_one_line_per_rule_unless_its_jobs_differ():
    pytest.importorskip("snakemake_executor_plugin_slurm")
    cfg = default_config()
    jobs = [fake_job(cfg, "evaluate", {"variant": v, "eval": "perplexity", "length": 128}) for v in ("base", "pi-x4")]
    jobs.append(fake_job(cfg, "finetune", {"variant": "pi-x4-ft"}))
    other = fake_job(cfg, "finetune", {"variant": "yarn-x4-ft"})
    other.resources["runtime"] = 99  # --set-resources finetune:runtime=99 on one job, say
    jobs.append(other)
    lines = []
    print_preview(jobs, [], logdir="/l", workdir="/w", parts=parse_sinfo(SINFO_CI), settings=None,
                  out=SimpleNamespace(write=lines.append))
    text = "".join(lines)
    assert text.count("\nsbatch ") + text.startswith("sbatch ") == 3, text
    assert "# rule evaluate: 2 jobs (this one: variant=base, eval=perplexity, length=128)" in text
    assert " -t 99 " in text and "# every job fits its partition (sinfo)" in text


def test_nothing_is_looked_up_before_a_slurm_run_starts(tmp_path):
    """A local run, or snakemake's job step inside a SLURM job (it evaluates the resources again):
    no squeue, and the first request whatever the attempt."""
    from longctx.config.cluster import SlurmRun

    run = SlurmRun(tmp_path / "slurm_logs", notify=lambda m: pytest.fail(f"nothing to say: {m}"))
    assert run.ends("finetune", ["pi-x2-ft"], 2) is None and run.limits(None) is None
    res = stage_resources(default_config(), "finetune").snakemake_resources(run.ends, run.limits, run.notify)
    assert (res["runtime"](["pi-x2-ft"], 3, "finetune"), res["mem_mb"](["pi-x2-ft"], 3, "finetune")) == (15, 2300)

"""What each rule asks a SLURM cluster for, and how its processes start inside the allocation.

The launch command is checked as text for 1 GPU, 4 GPUs on one node and 2 nodes x 8 GPUs, built
the way the workflow builds it: config `resources` -> the rule's snakemake resources -> command.
The resources are checked through a snakemake dry run (what the rules really ask for) and through
the slurm plugin's own sbatch-line builder (what the cluster would be sent).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from longctx import launch
from longctx.config import ConfigError, load_config, validate
from longctx.config.attempts import End
from longctx.config.resources import STAGES, Limits, stage_of_rule, stage_resources

REPO = Path(__file__).resolve().parents[1]


def config_with(resources: dict, **top) -> dict:
    return load_config(REPO / "config.yaml", {"resources": resources, **top})


def command_for(config: dict, stage: str, data_parallel: bool = True) -> str:
    """The launch command exactly as the rule builds it: from the job's snakemake resources."""
    return launch.from_resources(stage_resources(config, stage).snakemake_resources(), data_parallel)


# --- the launch command, as text ------------------------------------------------------------------


def test_one_gpu_is_plain_python():
    cfg = config_with({"finetune": {"gpus": 1}})
    assert command_for(cfg, "finetune") == "python -m longctx"
    assert command_for(config_with({}), "finetune") == "python -m longctx"  # a CPU job


def test_four_gpus_on_one_node_start_one_process_per_gpu_with_accelerate():
    cfg = config_with({"finetune": {"gpus": 4, "gpu_type": "a100"}})
    words = shlex.split(command_for(cfg, "finetune"))
    assert words[:2] == ["accelerate", "launch"]
    assert words[words.index("--num_processes") + 1] == "4"
    assert words[words.index("--num_machines") + 1] == "1"
    assert "--multi_gpu" in words and words[-2:] == ["-m", "longctx"]


def test_two_nodes_of_eight_gpus_srun_one_torchrun_per_node_meeting_on_the_first_node():
    cfg = config_with({"finetune": {"gpus": 8, "nodes": 2}})
    cmd = command_for(cfg, "finetune")
    assert cmd == (
        "srun --nodes=2 --ntasks-per-node=1 --kill-on-bad-exit=1 "
        "torchrun --nnodes=2 --nproc-per-node=8 --rdzv-backend=c10d "
        '--rdzv-endpoint="$(scontrol show hostnames "${SLURM_JOB_NODELIST:-$(squeue -h -j "$SLURM_JOB_ID" -o %N)}" '
        '| head -n1):$((29500 + SLURM_JOB_ID % 1000))" --rdzv-id="$SLURM_JOB_ID" -m longctx'
    )
    # what the shell makes of it on a job whose first node is gpu017 (job 1234567)
    script = f'scontrol() {{ echo gpu017; echo gpu018; }}; SLURM_JOB_ID=1234567; printf "%s\\n" {cmd.replace("srun ", "", 1)}'
    words = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert "--rdzv-endpoint=gpu017:30067" in words and "--rdzv-id=1234567" in words


def test_single_process_stages_see_all_gpus_from_one_process():
    cfg = config_with({"search": {"gpus": 4}, "evaluate": {"gpus": 2}})
    assert command_for(cfg, "search", data_parallel=False) == "python -m longctx"
    assert command_for(cfg, "evaluate", data_parallel=False) == "python -m longctx"


def test_impossible_allocations_are_named_by_key():
    with pytest.raises(ConfigError, match=r"resources\.search\.nodes"):
        config_with({"search": {"gpus": 8, "nodes": 2}})
    with pytest.raises(ConfigError, match=r"resources\.finetune\.gpus"):
        config_with({"finetune": {"nodes": 2}})
    with pytest.raises(ConfigError, match=r"resources\.base_model\.nodes"):  # importing is one process
        config_with({"base_model": {"gpus": 8, "nodes": 2}},
                    model={"source": "hub", "name_or_path": "org/model", "original_context": 4096})
    with pytest.raises(ConfigError, match=r"resources\.finetune\.runtme"):
        config_with({"finetune": {"runtme": 60}})


# --- the resources each rule asks for -------------------------------------------------------------


def test_defaults_per_stage_and_overrides_per_experiment():
    raw = yaml.safe_load((REPO / "config.yaml").read_text())
    del raw["resources"]  # the schema's defaults
    raw["corpora"]["austen"]["root"] = str(REPO / raw["corpora"]["austen"]["root"])
    default = validate(raw)
    assert {s: stage_resources(default, s).runtime for s in STAGES} == {
        "tokenizer": 30, "prepare": 60, "base_model": 120, "finetune": 240, "search": 240, "evaluate": 60,
        "report": 15}
    # the embedded default sets its own, sized from its measured run (config.yaml)
    embedded = config_with({})
    assert {s: (stage_resources(embedded, s).mem_mb, stage_resources(embedded, s).cpus) for s in STAGES} == {
        "tokenizer": (1600, 1), "prepare": (1700, 1), "base_model": (2300, 2), "finetune": (2300, 2),
        "search": (2000, 1), "evaluate": (2500, 1), "report": (2000, 1)}
    cfg = config_with({"partition": "cpu", "account": "proj1",
                       "finetune": {"partition": "gpu", "gpus": 8, "gpu_type": "h100", "runtime": 1440,
                                    "mem_mb": 480000, "cpus": 64}})
    ft = stage_resources(cfg, "finetune").snakemake_resources()
    assert {k: v for k, v in ft.items() if not callable(v)} == {
        "slurm_partition": "gpu", "slurm_account": "proj1", "gpu": 8, "gpu_model": "h100"}
    assert stage_resources(cfg, "finetune").cpus == 64
    report = stage_resources(cfg, "report").snakemake_resources()
    assert report["slurm_partition"] == "cpu" and "gpu" not in report


def _ended(*states):
    """An ``attempts`` function: the earlier attempts of any job ended ``states`` (oldest first)."""
    return lambda rule, wildcards, attempt: [End(100 + i, s, "squeue") for i, s in enumerate(states[:attempt - 1])]


def test_a_retry_grows_only_what_the_last_attempts_ran_out_of():
    cfg = config_with({"runtime_factor": 2, "mem_factor": 1.5, "finetune": {"runtime": 100, "mem_mb": 1000}})
    stage = stage_resources(cfg, "finetune")

    def asked(*states):
        res = stage.snakemake_resources(_ended(*states))
        return [(res["runtime"](["v"], a, "finetune"), res["mem_mb"](["v"], a, "finetune"))
                for a in range(1, len(states) + 2)]

    # a cancel (scancel, a killed snakemake), a failure or a preemption: retried with what it had
    assert asked("CANCELLED", "FAILED") == [(100, 1000)] * 3
    assert asked("PREEMPTED", "NODE_FAIL", "UNKNOWN") == [(100, 1000)] * 4
    # out of time: only the time limit grows; out of memory: only the memory
    assert asked("TIMEOUT", "TIMEOUT") == [(100, 1000), (200, 1000), (400, 1000)]
    assert asked("OUT_OF_MEMORY", "CANCELLED", "OUT_OF_MEMORY") == [(100, 1000), (100, 1500), (100, 1500),
                                                                     (100, 2250)]
    # no lookup (a local run): the first request, whatever the attempt
    plain = stage.snakemake_resources()
    assert plain["runtime"](["v"], 3, "finetune") == 100 and plain["mem_mb"](["v"], 3, "finetune") == 1000


def test_retry_growth_is_capped_by_the_stage_maximum_or_the_partition_and_says_why():
    cfg = config_with({"finetune": {"runtime": 100, "mem_mb": 1000, "runtime_max": 300}})
    stage = stage_resources(cfg, "finetune")
    limits = Limits(runtime=1000, mem_mb=1800, where="partition debug")
    said = []
    res = stage.snakemake_resources(_ended("TIMEOUT", "TIMEOUT", "OUT_OF_MEMORY", "OUT_OF_MEMORY"),
                                    lambda partition: limits, said.append)
    assert [res["runtime"](["pi-x2-ft"], a, "finetune") for a in (2, 3, 4, 5)] == [200, 300, 300, 300]
    assert [res["mem_mb"](["pi-x2-ft"], a, "finetune") for a in (2, 3, 4, 5)] == [1000, 1000, 1500, 1800]
    assert len(said) == 4  # one line per retry, though runtime and memory are asked for separately
    assert said[0].startswith("Retrying finetune (pi-x2-ft), attempt 2: attempt 1 (SLURM job 100) ended TIMEOUT;")
    assert "time limit 100 -> 200 min (x2 per TIMEOUT, resources.runtime_factor), memory kept at 1000 MB" in said[0]
    assert "time limit 100 -> 300 min" in said[1] and "capped by resources.finetune.runtime_max" in said[1]
    assert "memory 1000 -> 1800 MB" in said[3] and "capped by the limit of partition debug" in said[3]
    with pytest.raises(ConfigError, match=r"resources\.finetune\.mem_mb_max"):
        config_with({"finetune": {"mem_mb": 1000, "mem_mb_max": 500}})


def _dry_run_jobs(config: dict, tmp_path: Path) -> dict:
    """rule -> (resources, threads, shell command) of its first job in a snakemake dry run of ``config``
    (with cores enough that no rule's threads are capped, as on a cluster)."""
    path = tmp_path / "config.yaml"
    config = {**config, "corpora": {n: {**c, "root": str(REPO / c["root"]) if c.get("root") else None}
                                    for n, c in config["corpora"].items()}}
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "-F", "-s", str(REPO / "Snakefile"),
                           "-d", str(tmp_path), "--configfile", str(path), "--cores", "1024"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    jobs = {}
    for block in re.split(r"\n(?=\[[^\]]+\]\n(?:local)?rule )", proc.stdout):
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        if rule:
            res = re.search(r"^\s+resources: (.*)$", block, re.M)
            threads = re.search(r"^\s+threads: (\d+)$", block, re.M)
            shell = re.search(r"^Shell command: (.*)$", block, re.M)
            jobs.setdefault(rule.group(1), (dict(kv.split("=", 1) for kv in res.group(1).split(", ")) if res else {},
                                            int(threads.group(1)) if threads else 1,
                                            shell.group(1) if shell else ""))
    return jobs


def test_dry_run_rules_ask_for_the_configured_resources_and_launch_over_the_nodes(tmp_path):
    """A paper-sized fine-tune (2 nodes x 8 H100) and the rest on CPU partitions, as the rules see it."""
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["resources"] = {"partition": "cpu", "finetune": {"partition": "gpu", "gpus": 8, "gpu_type": "h100",
                                                         "nodes": 2, "cpus": 32, "runtime": 2880,
                                                         "mem_mb": 400000},
                        "evaluate": {"gpus": 1, "runtime": 90}}
    jobs = _dry_run_jobs(cfg, tmp_path)
    res, threads, shell = jobs["finetune"]
    assert res["runtime"] == "2880" and res["mem_mb"] == "400000" and threads == 32
    assert res["slurm_partition"] == "gpu" and res["nodes"] == "2" and res["gres"] == "gpu:h100:8"
    assert res["mpi"] == "srun" and res["tasks"] == "2"
    assert shell.startswith("srun --nodes=2 --ntasks-per-node=1 ") and " torchrun --nnodes=2 --nproc-per-node=8 " in shell
    assert "-m longctx finetune --model " in shell
    # config.yaml groups evaluations into jobs (evaluate.one_job_per): any one of them
    res, threads, shell = next(job for rule, job in sorted(jobs.items()) if rule.startswith("evaluate"))
    assert res["gpu"] == "1" and res["runtime"] == "90" and res["slurm_partition"] == "cpu"
    assert shell.startswith(("python -m longctx evaluate ", "python -m longctx evaluate-variant "))
    res, threads, shell = jobs["tokenizer"]
    assert res["runtime"] == "30" and res["mem_mb"] == "4000" and "gpu" not in res
    assert shell.startswith("python -m longctx tokenizer ")


@pytest.mark.parametrize("path", [REPO / "config.yaml", *sorted((REPO / "configs").glob("*.yaml"))],
                         ids=lambda p: p.name)
def test_every_shipped_config_asks_for_schedulable_resources(path, tmp_path):
    """The embedded default and the paper configs: every rule's request matches its config entry."""
    cfg = load_config(path)
    raw = yaml.safe_load(path.read_text())
    jobs = _dry_run_jobs(raw, tmp_path)
    rule_stage = {rule: stage_of_rule(rule) for rule in jobs if stage_of_rule(rule)}
    assert set(rule_stage) >= set(jobs) - {"all"}, "a rule whose resources come from no stage"
    for rule, (res, threads, shell) in jobs.items():
        if rule == "all":
            continue
        want = stage_resources(cfg, rule_stage[rule])
        assert int(res["runtime"]) == want.runtime and int(res["mem_mb"]) == want.mem_mb, rule
        assert threads == want.cpus, rule
        assert int(res.get("gpu", 0)) == (want.gpus if want.nodes == 1 else 0), rule


def test_plugin_turns_the_resources_into_the_intended_sbatch_options():
    """The installed snakemake-executor-plugin-slurm's own sbatch-line builder, on our resources."""
    submit = pytest.importorskip("snakemake_executor_plugin_slurm.submit_string")
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    class Resources(dict):
        __getattr__ = dict.__getitem__

    def sbatch_line(config, stage, attempt=1):
        r = stage_resources(config, stage)
        res = {k: (v([], attempt, stage) if callable(v) else v)
               for k, v in r.snakemake_resources(_ended("TIMEOUT", "OUT_OF_MEMORY")).items()}
        job = SimpleNamespace(resources=Resources(res), threads=r.cpus)
        params = {"run_uuid": "run", "slurm_logfile": "log", "comment_str": "c", "workdir": "/w",
                  "account": f" -A {res['slurm_account']}" if "slurm_account" in res else "",
                  "partition": f" -p {res['slurm_partition']}" if "slurm_partition" in res else ""}
        return shlex.split(submit.get_submit_command(job, params) + set_gres_string(job))

    cfg = config_with({"account": "proj1", "finetune": {"partition": "gpu", "gpus": 8, "gpu_type": "h100",
                                                        "nodes": 2, "cpus": 32, "runtime": 600, "mem_mb": 400000}})
    line = sbatch_line(cfg, "finetune", attempt=3)  # after a TIMEOUT and an OUT_OF_MEMORY
    for option in ["-A", "proj1", "-p", "gpu", "-t", "1200", "--mem", "600000", "--nodes=2", "--ntasks=2",
                   "--cpus-per-task=32", "--gres=gpu:h100:8"]:
        assert option in line, (option, line)
    assert not any(w.startswith("--ntasks-per-gpu") for w in line)
    cfg = config_with({"finetune": {"gpus": 4, "cpus": 16}})
    line = sbatch_line(cfg, "finetune")
    assert "--gpus=4" in line and "--cpus-per-task=16" in line and not any(w.startswith("--nodes") for w in line)
    line = sbatch_line(config_with({}), "prepare")
    assert "--ntasks=1" in line and "--cpus-per-task=1" in line and not any("gpu" in w for w in line)


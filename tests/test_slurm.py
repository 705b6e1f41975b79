"""`snakemake --profile slurm all` through a real SLURM cluster (CI: `.ci/slurm_up.sh` first).

A tiny experiment (pretrain 30 steps, PI x2 fine-tuned 6 steps, two evaluation lengths, one passkey
trial) runs once through the cluster and once locally at the same time; every job must have gone
through sbatch, its SLURM log under the experiment's folder, and summary.csv must hold the same
values; the first status check comes seconds after the first submission, and the plugin's account
guess is one quiet line. Each rule's line from `python -m longctx sbatch-preview` equals the sbatch
call the plugin made. Then a longer fine-tune is killed with scancel after its first checkpoint: the
profile's retry resubmits it with the same time limit and memory, and it resumes from the checkpoint;
a job that runs out of time is retried with twice the time. A request the node cannot give fails
before anything is submitted, naming the rule, the request and the limit. Before all that, the
multi-node launch command (srun + torchrun) runs a rendezvous probe inside a real allocation, and
the embedded default (config.yaml as shipped) runs to its report through the profile.
Skipped only where SLURM is not installed (no `sbatch`); installed but down is a failure.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from longctx import config as lc
from longctx import launch

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "slurm-tiny"
VARIANT = "pi-x2-ft"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("sbatch") is None, reason="SLURM is not installed here (no sbatch); "
                       "CI runs .ci/slurm_up.sh to get a one-node cluster"),
]


def _env(path_first: Path | None = None) -> dict:
    # jobs inherit PATH through sbatch --export=ALL: put this interpreter's environment first
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join(str(p) for p in (path_first, Path(sys.executable).parent, env.get("PATH", "")) if p)
    return env


def slurm_recorder(folder: Path) -> Path:
    """A folder holding an `sbatch` and an `squeue` that note when they were called with which
    arguments (in calls.txt), then run the real ones: first on snakemake's PATH, it shows when the
    SLURM plugin submitted jobs and when it checked their status."""
    folder.mkdir(parents=True, exist_ok=True)
    for command in ("sbatch", "squeue"):
        shim = folder / command
        shim.write_text(f'#!/bin/sh\necho "$(date +%s.%N) {command} $*" >> {shlex.quote(str(folder / "calls.txt"))}\n'
                        f'exec {shlex.quote(shutil.which(command))} "$@"\n')
        shim.chmod(0o755)
    return folder


def tiny_config(partition: str, finetune: dict | None = None, finetune_resources: dict | None = None) -> dict:
    one_cpu = {"runtime": 10, "mem_mb": 1500, "cpus": 1}
    return {
        "experiment": EXPERIMENT,
        "seed": 7,
        "corpora": {"austen": {"source": "local", "root": str(REPO / "data" / "austen"), "documents": "chapter",
                               "splits": {"train": ["persuasion.txt"], "test": ["northanger_abbey.txt"]}}},
        "model": {"source": "pretrain",
                  "pretrain": {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_layers": 2,
                               "num_heads": 4, "num_kv_heads": 2, "context": 128, "steps": 30, "batch_size": 8,
                               "warmup_steps": 5}},
        "variants": [{"method": "pi", "scale": 2, "finetune": True}],
        "finetune": {"steps": 6, "batch_size": 2, "micro_batch_size": 2, "warmup_steps": 1, "checkpoint_every": 3,
                     "log_every": 1, **(finetune or {})},
        "evaluate": {"length_multiples": [2, 4], "perplexity": {"max_documents": 4},
                     "passkey": {"trials": 1, "max_new_tokens": 4}},
        "wandb": {"mode": "disabled"},
        "resources": {"partition": partition,
                      **{stage: dict(one_cpu) for stage in ("tokenizer", "prepare", "base_model", "search",
                                                            "evaluate", "report")},
                      "finetune": {**one_cpu, **(finetune_resources or {})}},
    }


def snakemake(workdir: Path, config: dict, *args: str, slurm: bool, path_first: Path | None = None,
              snakefile: Path = REPO / "Snakefile") -> subprocess.Popen:
    """Start snakemake from the repository root, as a user does (`--profile slurm` finds ./slurm/,
    with its status-check timing)."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(snakefile), "-d", str(workdir), "--configfile", str(path)]
    cmd += ["--profile", "slurm"] if slurm else ["--cores", "2"]
    out = workdir / ("slurm-run.out" if slurm else "local-run.out")
    with open(out, "a") as f:
        proc = subprocess.Popen(cmd + list(args), cwd=REPO, env=_env(path_first), stdout=f, stderr=subprocess.STDOUT)
    proc.output = out
    return proc


def stop(proc: subprocess.Popen) -> None:
    """Interrupt snakemake as Ctrl-C does: it cancels its SLURM jobs before it exits."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_for_exit(proc: subprocess.Popen, timeout: float, what: str) -> None:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc)
        raise AssertionError(f"{what} did not finish in {timeout:.0f}s; see {proc.output}")


def wait(proc: subprocess.Popen, timeout: float, what: str) -> None:
    wait_for_exit(proc, timeout, what)
    out = proc.output.read_text()
    assert proc.returncode == 0, f"{what} failed:\n{out[-4000:]}"


def squeue(*args: str) -> list[list[str]]:
    out = subprocess.run(["squeue", "-h", "--states=all", *args], capture_output=True, text=True, check=True).stdout
    return [line.split("|") for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def partition() -> str:
    """The cluster's default partition; the cluster must answer (installed but down is a failure)."""
    proc = subprocess.run(["sinfo", "-h", "-o", "%P|%t"], capture_output=True, text=True)
    rows = [line.split("|") for line in proc.stdout.split()]
    if proc.returncode != 0 or not any(state.startswith(("idle", "mix", "alloc")) for _, state in rows):
        pytest.fail(f"SLURM is installed but no node is up (sinfo: {proc.stdout.strip() or proc.stderr.strip()}); "
                    "run .ci/slurm_up.sh")
    default = [name for name, _ in rows if name.endswith("*")]
    return (default or [rows[0][0]])[0].rstrip("*")


def test_multi_node_launch_meets_at_its_rendezvous_inside_an_allocation(partition, tmp_path):
    """The srun + torchrun command of a multi-node job, in a real allocation (one node here, two
    processes on CPU), with the job step's environment as the slurm plugin leaves it (SLURM_JOB_ID
    but no node list): both ranks join the rendezvous on the first node and all-reduce."""
    script = tmp_path / "probe.sh"
    script.write_text(
        "#!/bin/bash\n"
        "for v in $(compgen -e | grep '^SLURM_'); do\n"
        "  case $v in SLURM_JOB_ID|SLURM_JOBID|SLURM_CLUSTER_NAME|SLURM_SUBMIT_DIR|SLURM_SUBMIT_HOST) ;; *) unset $v ;; esac\n"
        "done\n"
        f"{launch.multi_node_command(1, 2, module='longctx.launch')} probe\n")
    out = tmp_path / "probe.out"
    subprocess.run(["sbatch", "--wait", "-p", partition, "-N", "1", "-n", "1", "-c", "2", "-t", "5", "-o", str(out),
                    str(script)], env=_env(), check=True, capture_output=True, timeout=240)
    seen = sorted(re.findall(r"rank=(\d+) world_size=(\d+) host=\S+ rank_sum=\S+ ok=(\w+)", out.read_text()))
    assert seen == [("0", "2", "True"), ("1", "2", "True")], out.read_text()


def test_a_request_the_cluster_cannot_give_fails_before_any_submission(partition, tmp_path):
    """Issue 20: a fine-tune asking for more CPUs than the node has waited in PD (PartitionConfig)
    forever. Now the run stops before its first sbatch, naming the rule, the request, the config key
    and what sinfo says the partition offers."""
    most = max(int(c) for c in subprocess.run(["sinfo", "-h", "-N", "-p", partition, "-o", "%c"], capture_output=True,
                                              text=True, check=True).stdout.split())
    config = tiny_config(partition, finetune_resources={"cpus": most + 2})
    proc = snakemake(tmp_path, config, "all", slurm=True)
    wait_for_exit(proc, 180, "snakemake with a fine-tune too large for the node")
    out = proc.output.read_text()
    assert proc.returncode == 1, out[-3000:]
    assert (f"Cluster error: these jobs ask for more than the cluster offers (sinfo), so nothing was submitted:\n"
            f"  rule finetune asks partition {partition} for {most + 2} CPUs per node (resources.finetune.cpus), "
            f"but its largest node has {most} [1 job]\n") in out, out[-3000:]
    assert "has been submitted with SLURM jobid" not in out


TIMEOUT_SNAKEFILE = """\
# one job that outlasts a 1-minute limit on its first attempt; the workflow's SLURM link as
# rules/common.smk sets it up (longctx.config.cluster.SlurmRun), resources as a stage's
from longctx.config.cluster import SlurmRun
from longctx.config.resources import StageResources

SLURM = SlurmRun("results/timeout/slurm_logs")
STAGE = StageResources("finetune", runtime=1, mem_mb=500, cpus=1, partition=config["partition"],
                       runtime_factor=2, mem_factor=1.5)

onstart:
    SLURM.start(workflow)

rule slow:
    output: "results/timeout/done.txt"
    resources: **STAGE.snakemake_resources(SLURM.ends, SLURM.limits, SLURM.notify)
    # outlasts a 1-minute allocation (the limit SLURM gave this job, not the job step's own view)
    shell: 'if [ "$(squeue -h -j "$SLURM_JOB_ID" -o %l)" = 1:00 ]; then sleep 600; fi; echo done > {output}'
"""


def test_the_embedded_default_completes_through_the_profile(partition, tmp_path):
    """Issue 20: `snakemake --profile slurm all` on config.yaml as shipped (its resources fit this
    cluster): every job but `all` goes through sbatch and the report holds every result."""
    (tmp_path / "data").symlink_to(REPO / "data")  # config.yaml reads data/austen from the working directory
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    proc = snakemake(tmp_path, config, "all", slurm=True)
    wait(proc, 1500, "snakemake --profile slurm all on config.yaml")
    submitted, rules = submissions(proc.output.read_text())
    assert set(submitted) == {j for j, rule in rules.items() if rule != "all"}, "jobs not submitted to SLURM"
    rules_run = {rule for rule, _, _ in submitted.values()}
    assert {"base_model", "finetune", "search", "recovery", "report"} <= rules_run
    assert any(rule.startswith("evaluate") for rule in rules_run)
    out = tmp_path / "results" / config["experiment"]
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(r["status"] == "ok" for r in rows), [r for r in rows if r["status"] != "ok"][:3]
    assert {"perplexity", "passkey", "ruler"} <= {r["eval"] for r in rows}
    assert {r["variant"] for r in rows} == {v.name for v in lc.variants(lc.load_config(REPO / "config.yaml"))}
    assert (out / "report.md").is_file() and (out / "report.html").is_file()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, partition):
    """The tiny experiment through SLURM and locally, started together (the cluster job waits a lot);
    the SLURM run with --verbose (the plugin logs each sbatch call) and its squeue calls recorded."""
    root = tmp_path_factory.mktemp("slurm")
    config = tiny_config(partition)
    started = time.time()
    recorder = slurm_recorder(root / "recorder")
    on_slurm = snakemake(root / "slurm", config, "all", "--verbose", slurm=True, path_first=recorder)
    # beside them (it mostly sleeps), a job that runs out of time: test_a_job_out_of_time_...
    (root / "timeout").mkdir()
    (root / "timeout" / "Snakefile").write_text(TIMEOUT_SNAKEFILE)
    out_of_time = snakemake(root / "timeout", {"partition": partition}, slurm=True,
                            snakefile=root / "timeout" / "Snakefile")
    local = snakemake(root / "local", config, "all", slurm=False)
    try:
        wait(local, 900, "the local run")
        wait(on_slurm, 900, "snakemake --profile slurm all")
        wait_for_exit(out_of_time, 600, "the job that outlasts its first time limit")
    finally:
        stop(local)
        stop(on_slurm)
        stop(out_of_time)
    # finished jobs leave squeue after MinJobAge (300 s): what it says now, for the tests below
    ended = {int(i): (st, limit, mem) for i, st, limit, mem in squeue("-o", "%i|%T|%l|%m")}
    return {"root": root, "slurm": root / "slurm", "local": root / "local", "partition": partition, "squeue": ended,
            "seconds": time.time() - started, "config": config, "slurm_calls": recorder / "calls.txt",
            "timeout": out_of_time}


def submissions(run_log: str) -> dict[int, tuple[str, int, Path]]:
    """snakemake job id -> (rule, SLURM job id, SLURM log) from a run's output."""
    rules = {int(m.group(2)): m.group(1)
             for m in re.finditer(r"^(?:local)?rule (\w+):\n(?:    .*\n)*?    jobid: (\d+)$", run_log, re.M)}
    out = {}
    for m in re.finditer(r"^Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (.+)\)\.$", run_log, re.M):
        out[int(m.group(1))] = (rules[int(m.group(1))], int(m.group(2)), Path(m.group(3)))
    return out, rules


def test_every_job_goes_through_sbatch(runs):
    run_log = (runs["slurm"] / "slurm-run.out").read_text()
    submitted, rules = submissions(run_log)
    local_jobs = {j for j, rule in rules.items() if rule == "all"}
    assert set(submitted) == set(rules) - local_jobs, "jobs that were not submitted to SLURM"
    assert sorted({rule for rule, _, _ in submitted.values()}) == [
        "base_model", "evaluate", "finetune", "prepare_corpus", "report", "tokenizer"]
    slurm_ids = [sid for _, sid, _ in submitted.values()]
    assert len(set(slurm_ids)) == len(slurm_ids) == 1 + 2 + 1 + 1 + 8 + 1
    for rule, sid, log in submitted.values():
        # slurmd wrote each job's output to the log named by its job id, under the experiment's folder
        assert log.is_file() and log.name == f"{sid}.log", log
        assert log.is_relative_to(runs["slurm"] / "results" / EXPERIMENT / "slurm_logs" / f"rule_{rule}")
        assert f"rule {rule}:" in log.read_text() or f"localrule {rule}:" in log.read_text(), log
    assert not (runs["slurm"] / "results" / "slurm_logs").exists()
    # the plugin's account guess (a broken sacct call) is one line saying what happens instead
    assert "not able to get a SLURM account" not in run_log and "trying to guess" not in run_log
    assert run_log.count("No SLURM account set (config resources.account") == 1
    # the last jobs are still in squeue (MinJobAge): finished, in the configured partition, under
    # the run's job name
    seen = {int(i): (state, part) for i, state, part in squeue("-o", "%i|%T|%P")}
    recent = [sid for sid in slurm_ids if sid in seen]
    assert max(slurm_ids) in recent
    for sid in recent:
        assert seen[sid] == ("COMPLETED", runs["partition"]), (sid, seen[sid])


def test_the_first_status_check_comes_seconds_after_the_first_submission(runs):
    """The profile's slurm-init-seconds-before-status-checks (5 s; the plugin's default is 40 s,
    longer than most of these jobs take): the plugin's first squeue for the run's jobs comes within
    seconds of its first sbatch."""
    calls = [line.split(" ", 2) for line in runs["slurm_calls"].read_text().splitlines()]
    first_sbatch = min(float(t) for t, command, _ in calls if command == "sbatch")
    checks = sorted(float(t) for t, command, args in calls if command == "squeue" and "--name" in args)
    after = [t - first_sbatch for t in checks if t > first_sbatch]
    assert after and after[0] <= 5 + 3, after[:3]


def _summary(workdir: Path) -> list[dict]:
    with open(workdir / "results" / EXPERIMENT / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    # timing metrics differ between any two runs; everything else must not
    return sorted((r for r in rows if not re.search(r"seconds|per_s|time", r["metric"])),
                  key=lambda r: (r["variant"], r["eval"], r["length"], r["metric"]))


def test_results_match_a_local_run(runs):
    on_slurm, local = _summary(runs["slurm"]), _summary(runs["local"])
    assert len(on_slurm) >= 8 and {r["variant"] for r in on_slurm} == {"base", VARIANT}
    assert {r["eval"] for r in on_slurm} == {"perplexity", "passkey"}
    assert [(r["variant"], r["eval"], r["length"], r["metric"], r["value"]) for r in on_slurm] == [
        (r["variant"], r["eval"], r["length"], r["metric"], r["value"]) for r in local]


def test_sbatch_preview_prints_the_sbatch_call_the_plugin_made(runs):
    """`python -m longctx sbatch-preview` (nothing submitted) against the plugin's own sbatch calls
    in the run above (its --verbose log): for each rule, the same line but for the run's job name
    and the wrapped job step, which only a running executor knows."""
    made = {}
    for line in (runs["slurm"] / "slurm-run.out").read_text().splitlines():
        if line.startswith("sbatch call: "):
            call = line.removeprefix("sbatch call: ")
            made[re.search(r"--comment (\S+)", call).group(1)] = call
    recorder = slurm_recorder(runs["root"] / "preview-recorder")
    proc = subprocess.run([sys.executable, "-m", "longctx", "sbatch-preview", "-s", "Snakefile", "-d",
                           str(runs["slurm"]), "--configfile", str(runs["slurm"] / "config.yaml"), "-F", "all"],
                          cwd=REPO, env=_env(recorder), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    calls = (recorder / "calls.txt").read_text() if (recorder / "calls.txt").exists() else ""
    assert " sbatch " not in calls, "the preview submitted something"
    assert (runs["slurm"] / "results" / EXPERIMENT / "report.md").is_file()  # -F removed no output
    shown = [line for line in proc.stdout.splitlines() if line.startswith("sbatch ")]
    rules = re.findall(r"^# rule (\w+): (\d+) jobs?", proc.stdout, re.M)
    assert sorted(rule for rule, _ in rules) == ["base_model", "evaluate", "finetune", "prepare_corpus", "report",
                                                 "tokenizer"]
    assert len(shown) == len(rules) and proc.stdout.rstrip().endswith("# every job fits its partition (sinfo)")

    def comparable(call):
        return re.sub(r"--job-name ('[^']*'|\S+)", "--job-name X", call.split(' --wrap="')[0])

    for line in shown:
        comment = re.search(r"--comment (\S+)", line).group(1)
        assert comparable(line) == comparable(made[comment]), (line, made[comment])
    tokenizer = next(line for line in shown if "--comment rule_tokenizer " in line)
    assert f" -p {runs['partition']} -t 10 --mem 1500 --ntasks=1 --cpus-per-task=1 " in tokenizer, tokenizer


def test_a_job_out_of_time_is_retried_with_twice_the_time(runs):
    """SLURM ends the first attempt at its 1-minute limit (TIMEOUT); the retry, told by squeue how the
    attempt ended, asks for 2 minutes and the same memory, and finishes (run beside the experiment
    by the `runs` fixture)."""
    proc = runs["timeout"]
    out = proc.output.read_text()
    assert proc.returncode == 0, out[-4000:]
    jobs = [int(m) for m in re.findall(r"^Job \d+ has been submitted with SLURM jobid (\d+)", out, re.M)]
    assert len(jobs) == 2, out[-3000:]
    state = runs["squeue"]
    assert state[jobs[0]] == ("TIMEOUT", "1:00", "500M") and state[jobs[1]] == ("COMPLETED", "2:00", "500M")
    assert (f"Retrying slow, attempt 2: attempt 1 (SLURM job {jobs[0]}) ended TIMEOUT; time limit 1 -> 2 min (x2 per "
            f"TIMEOUT, resources.runtime_factor), memory kept at 500 MB") in out
    log = runs["root"] / "timeout" / "results" / "timeout" / "slurm_logs" / "rule_slow" / f"{jobs[0]}.log"
    assert "DUE TO TIME LIMIT" in log.read_text()


def _read_step(progress: Path) -> int:
    for _ in range(50):  # the trainer swaps checkpoints by renaming; try again mid-swap
        try:
            return json.loads(progress.read_text())["step"]
        except (FileNotFoundError, json.JSONDecodeError):
            time.sleep(0.05)
    raise AssertionError(f"cannot read {progress}")


def test_finetune_killed_by_scancel_resumes_from_its_checkpoint(runs):
    """A longer fine-tune in the same experiment (upstream outputs are reused): killed after its
    first checkpoint, retried by the profile with the same time limit and memory (a cancel is not a
    shortage; issue 20: the retries asked for 1.5x and 2.25x the memory), resumed, finished."""
    steps, every = 200, 20
    config = tiny_config(runs["partition"], finetune={"steps": steps, "checkpoint_every": every, "log_every": 20},
                         finetune_resources={"runtime": 7, "cpus": 2})
    workdir = runs["slurm"]
    progress = workdir / "results" / EXPERIMENT / "work" / VARIANT / "checkpoint" / "progress.json"
    proc = snakemake(workdir, config, f"results/{EXPERIMENT}/models/{VARIANT}", slurm=True)
    try:
        deadline = time.time() + 240
        while not progress.exists():
            assert proc.poll() is None, "snakemake ended before the fine-tune made a checkpoint"
            assert time.time() < deadline, "no checkpoint within 240 s"
            time.sleep(0.1)
        checkpoint_step = _read_step(progress)
        running = [(i, limit, cpus) for i, comment, limit, cpus in squeue("-t", "RUNNING", "-o", "%i|%k|%l|%C")
                   if comment == f"rule_finetune_wildcards_{VARIANT}"]
        assert len(running) == 1, running
        killed, first_limit, cpus = running[0]
        assert cpus == "2"  # resources.finetune.cpus -> the rule's threads -> --cpus-per-task
        subprocess.run(["scancel", killed], check=True)
        wait(proc, 300, "the fine-tune after scancel")
    finally:
        stop(proc)
    run_log = (workdir / "slurm-run.out").read_text()
    jobs = [int(m.group(1)) for m in re.finditer(r"^Job \d+ has been submitted with SLURM jobid (\d+) "
                                                 r"\(log: \S+/rule_finetune/\S+\)\.$", run_log, re.M)]
    assert int(killed) in jobs and jobs[-1] > int(killed), "the killed job was not resubmitted"
    state = {int(i): (s, limit, mem) for i, s, limit, mem in squeue("-o", "%i|%T|%l|%m")}
    assert state[int(killed)] == ("CANCELLED", first_limit, "1500M") and first_limit == "7:00"
    assert state[jobs[-1]] == ("COMPLETED", "7:00", "1500M")  # the retry asked for what the first had
    assert (f"Retrying finetune ({VARIANT}), attempt 2: attempt 1 (SLURM job {killed}) ended CANCELLED; time limit "
            f"kept at 7 min, memory kept at 1500 MB (requests grow only after TIMEOUT or OUT_OF_MEMORY)") in run_log
    log = (workdir / "results" / EXPERIMENT / "logs" / "finetune" / f"{VARIANT}.log").read_text()
    resumed = re.search(r"resumed from \S+checkpoint at step (\d+)", log)
    assert resumed, log[-2000:]
    assert int(resumed.group(1)) >= checkpoint_step and int(resumed.group(1)) % every == 0
    assert int(resumed.group(1)) < steps
    assert f"step {steps}/{steps}" in log
    summary = json.loads((workdir / "results" / EXPERIMENT / "work" / VARIANT / "summary.json").read_text())
    assert summary["steps"] == steps
    assert (workdir / "results" / EXPERIMENT / "models" / VARIANT / "model.safetensors").is_file()

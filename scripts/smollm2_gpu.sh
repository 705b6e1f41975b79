#!/usr/bin/env bash
# config/smollm2.yaml through Snakemake on one GPU machine, in time-boxed runs that resume.
#
#   bash scripts/smollm2_gpu.sh GGUF OUT [SECONDS] [WHEELS]
#
# GGUF     the SmolLM2-135M-Instruct Q4_1 file (see config/smollm2.yaml for where it comes from)
# OUT      where the report, summary, evaluation JSONs, logs and benchmarks are copied after the run
# SECONDS  stop Snakemake after this long (default 540): it interrupts the running jobs, which
#          resume on the next call (fine-tuning from its last checkpoint, a search from its log)
# WHEELS   a folder of wheels (searched recursively) to install first if snakemake, gguf or
#          jsonschema is missing: a GPU machine without network gets them this way
#
# Making WHEELS on a machine with network, for the GPU machine's Python (3.12 here):
#   pip wheel snakemake==9.27.1 gguf -w wheels/        # the whole closure, built for this Python
#   # then replace each compiled (cpXY) wheel by its cp312 build:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 NAME==VERSION -d wheels/
#   rm wheels/pulp-*.whl                                 # 16 MB of solver binaries the greedy scheduler skips
#
# SNAKEMAKE_ARGS (environment): more Snakemake options, e.g. "--set-threads finetune=4 evaluate=1".
# TARGETS (environment): what to build instead of `all`, as paths under the experiment's folder,
#   e.g. TARGETS="eval/yarn-x4/perplexity-8192.json eval/base/ruler-32768.json" (a partial re-measure).
#
# Everything that must outlive one call lives under $STATE (default /root/smollm2-run): the
# results folder, Snakemake's own .snakemake state and the installed wheels. Call it again with the
# same STATE to go on; a finished DAG makes the call a no-op apart from the copy.
set -euo pipefail
gguf=$(realpath "$1"); out=$2; seconds=${3:-540}; wheels=${4:-}
state=${STATE:-/root/smollm2-run}
mkdir -p "$state/results" "$state/snakemake" "$state/site" "$out" data/smollm2

export PYTHONPATH="$PWD/src:$state/site${PYTHONPATH:+:$PYTHONPATH}"
if ! python -c "import snakemake, gguf, jsonschema" 2>/dev/null; then
    [ -n "$wheels" ] || { echo "snakemake/gguf/jsonschema missing and no WHEELS folder given" >&2; exit 2; }
    # every wheel under WHEELS, without resolving: the folder holds the whole closure that the
    # machine lacks (pip download/wheel of snakemake, gguf and jsonschema for its Python)
    python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$state/site" \
        $(find "$wheels" -type f -name '*.whl' | awk -F/ '!seen[$NF]++')
fi
ln -sf "$gguf" data/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
# the link is made anew in each call's fresh working tree; Snakemake reads a link's own mtime, so
# give it the file's, or every call would find the model "updated" and rerun the whole DAG
touch -h -r "$gguf" data/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
# Snakemake's record of finished and interrupted jobs survives the call with the results
rm -rf .snakemake && ln -s "$state/snakemake" .snakemake

targets=(all)
if [ -n "${TARGETS:-}" ]; then
    targets=()
    for t in $TARGETS; do targets+=("$state/results/smollm2-135m/$t"); done
fi
started=$(date +%s)
# the CPU stages and the evaluations overlap on the GPU (one GPU, 16 cores: two fine-tunes, or one and
# four evaluations, or eight evaluations at a time); W&B is not installed on the GPU machine, so
# tracking is off there; the greedy scheduler needs no ILP solver (pulp's 16 MB of binaries stay
# off the machine)
set +e
timeout --signal=INT --kill-after=60 "$seconds" \
    python -m snakemake --cores 16 --configfile config/smollm2.yaml \
    --config results_dir="$state/results" 'wandb={mode: disabled}' \
    --rerun-incomplete --keep-going --printshellcmds --scheduler greedy ${SNAKEMAKE_ARGS:-} "${targets[@]}" > "$out/snakemake.log" 2>&1
rc=$?
set -e
echo "snakemake exit $rc after $(( $(date +%s) - started )) s" | tee -a "$out/snakemake.log"
grep -E "steps \(|Error|error" "$out/snakemake.log" | tail -5 || true

exp="$state/results/smollm2-135m"
# one archive (the device link returns few files): report, summary, plots, every evaluation JSON,
# job logs and benchmarks, search logs and factors, training metrics
(cd "$exp" && tar czf "$out/results.tgz" --ignore-failed-read report.md report.html summary.csv plots eval logs \
    benchmarks search $(ls -d work/*/metrics.jsonl 2>/dev/null)) || true
exit $rc

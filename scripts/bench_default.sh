#!/usr/bin/env bash
# Time the embedded default DAG (`snakemake --cores N` on config.yaml) under each grouping of its
# evaluations into jobs (evaluate.one_job_per), side by side on one machine, and its no-op rerun.
#
#   bash scripts/bench_default.sh [ROUNDS] [GROUPING ...]     (default: 1 round of evaluation variant)
#
# Runs in a scratch copy of this checkout (its .venv must exist: `bash scripts/setup.sh`), so the
# checkout's results/ are untouched. Groupings alternate round by round, so a busier minute of a
# shared machine does not land on one of them only. Prints one line per run (snakemake's "Elapsed
# time", jobs run, median of three no-op reruns) and whether every summary.csv holds the same values.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
ROUNDS=${1:-1}
shift || true
if [ $# -eq 0 ]; then GROUPINGS=(evaluation variant); else GROUPINGS=("$@"); fi
CORES=${CORES:-2}
SNAKEMAKE="$REPO/.venv/bin/snakemake"
[ -x "$SNAKEMAKE" ] || { echo "bench_default: no .venv here; run bash scripts/setup.sh first" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf "%-11s %5s %9s %5s %10s\n" grouping round dag_s jobs noop_s
for round in $(seq 1 "$ROUNDS"); do
  for grouping in "${GROUPINGS[@]}"; do
    dir="$work/$grouping-$round"
    mkdir -p "$dir"
    ln -s "$REPO/data" "$dir/data"
    sed "s/^  one_job_per: .*/  one_job_per: $grouping/" "$REPO/config.yaml" > "$dir/config.yaml"
    grep -q "^  one_job_per: $grouping" "$dir/config.yaml" || { echo "config.yaml has no evaluate.one_job_per line" >&2; exit 2; }
    run=("$SNAKEMAKE" -s "$REPO/Snakefile" -d "$dir" --configfile "$dir/config.yaml" --cores "$CORES")
    "${run[@]}" > "$dir/run.log" 2>&1 || { echo "the $grouping run failed: $dir/run.log" >&2; tail -20 "$dir/run.log" >&2; exit 1; }
    elapsed=$(sed -n 's/^Elapsed time: \([0-9]*\):\([0-9]*\):\([0-9.]*\)$/\1 \2 \3/p' "$dir/run.log" | awk '{printf "%.1f", $1*3600+$2*60+$3}')
    jobs=$(grep -c "^Finished jobid" "$dir/run.log" || true)
    noops=()
    for _ in 1 2 3; do
      s=$(date +%s.%N); "${run[@]}" > "$dir/noop.log" 2>&1; e=$(date +%s.%N)
      grep -q "Nothing to be done" "$dir/noop.log" || { echo "the $grouping rerun was not a no-op: $dir/noop.log" >&2; exit 1; }
      noops+=("$(echo "$e - $s" | bc)")
    done
    noop=$(printf "%s\n" "${noops[@]}" | sort -n | sed -n 2p)
    printf "%-11s %5s %9s %5s %10.2f\n" "$grouping" "$round" "$elapsed" "$jobs" "$noop"
    cut -d, -f1-11 "$dir/results/austen-tiny/summary.csv" | sort > "$work/summary-$grouping-$round.csv"
  done
done
first=$(ls "$work"/summary-*.csv | head -1)
same=yes
for f in "$work"/summary-*.csv; do cmp -s "$first" "$f" || { same=no; echo "differs: $(basename "$f") vs $(basename "$first")"; }; done
echo "summary.csv values identical across runs: $same ($(($(wc -l < "$first") - 1)) rows)"

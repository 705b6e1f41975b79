#!/usr/bin/env bash
# The longest sequence a model shape trains at: scripts/bench_train.py at each length in turn
# (ascending), stopping at the first length that fails (out of memory, or anything else).
#
#   bash scripts/max_length.sh OUT NPROC "LENGTH LENGTH ..." [bench_train.py arguments ...]
#
# OUT      gets one JSON and one log per length tried, and summary.txt (length -> ok / failed)
# NPROC    processes (GPUs) for torchrun; 1 runs plain python
# Each length runs one untimed step and one timed step unless the arguments say otherwise
# (--warmup, --steps): enough to show that a step fits, and its speed.
#
# Example (two GPUs, FSDP2 + Ulysses across both, bf16 weights and optimizer state, checkpointing):
#   bash scripts/max_length.sh out/ 2 "16384 262144 524288" --shape llama2-7b --strategy fsdp \
#       --sequence-parallel 2 --precision bf16-pure --row "longctx:gradient_checkpointing=true"
set -uo pipefail
out=$1; nproc=$2; lengths=$3; shift 3
mkdir -p "$out"
here=$(dirname "$0")
if [ "$nproc" -gt 1 ]; then launch=(torchrun --standalone --nproc-per-node "$nproc"); else launch=(python); fi
longest=none
for length in $lengths; do
    started=$(date +%s)
    "${launch[@]}" "$here/bench_train.py" --length "$length" --warmup 1 --steps 1 --json "$out/$length.json" "$@" \
        > "$out/$length.log" 2>&1
    rc=$?
    # bench_train.py reports an out-of-memory row in its table and JSON and still exits 0
    if [ $rc -eq 0 ] && ! python -c "import json, sys; sys.exit(any(r['status'] != 'ok' for r in json.load(open(sys.argv[1]))['rows']))" "$out/$length.json"; then
        rc=3
    fi
    took=$(( $(date +%s) - started ))
    case $rc in 0) status=ok; longest=$length ;; 3) status="failed (a row did not train: see its JSON)" ;; *) status="failed (exit $rc)" ;; esac
    echo "$length $status ${took}s" | tee -a "$out/summary.txt"
    # the table bench_train.py printed, or why it failed
    grep -E "^(row|longctx|transformers|\(1\))" "$out/$length.log" | head -4
    [ $rc -eq 0 ] || break
done
echo "longest length that trained: $longest" | tee -a "$out/summary.txt"

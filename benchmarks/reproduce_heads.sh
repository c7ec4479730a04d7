#!/usr/bin/env bash
# The head experiments of docs/results.md on the MiniLM models fine-tuned by benchmarks/finetune_glue.py:
#
#   python benchmarks/finetune_glue.py --tasks rte mrpc cola sst2 --out runs/minilm
#   bash benchmarks/reproduce_heads.sh            # results in results/minilm/
#
# Every step is an analyze.py run with a results folder of its own; rerunning the script resumes
# unfinished runs and skips finished ones (same arguments, same folders).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUNS=${RUNS:-runs/minilm}
OUT=${OUT:-results/minilm}
TASKS=${TASKS:-"sst2 rte mrpc cola"}
EFFECTIVENESS_TASKS=${EFFECTIVENESS_TASKS:-"sst2 rte"}
TRANSFER_TASKS=${TRANSFER_TASKS:-$TASKS}  # tasks pruned with the other tasks' rankings
COMMON=(--trainer.enable_progress_bar=false)

run_of() {  # the run directory and best checkpoint of a task
  local dir
  dir=$(ls -d "$RUNS/$1"/version_* | sort -V | tail -1)
  echo "$dir" "$(ls "$dir"/checkpoints/best-*.ckpt | head -1)"
}

if [ -z "${SKIP_HEADS:-}" ]; then  # SKIP_HEADS=1: the heads folders are done already
  for task in $TASKS; do
    read -r dir ckpt < <(run_of "$task")
    "$PY" analyze.py heads --config "$dir/config.yaml" --ckpt_path "$ckpt" --output_dir "$OUT/$task-heads" \
      --structural true "${COMMON[@]}"
  done
fi

for task in $EFFECTIVENESS_TASKS; do
  read -r dir ckpt < <(run_of "$task")
  "$PY" analyze.py effectiveness --config "$dir/config.yaml" --ckpt_path "$ckpt" \
    --output_dir "$OUT/$task-effectiveness" "${COMMON[@]}"
done

# universality: prune tasks with the other tasks' AttAttr rankings, next to their own
for task in $TRANSFER_TASKS; do
  read -r dir ckpt < <(run_of "$task")
  others=()
  for other in $TASKS; do [ "$other" != "$task" ] && others+=("$OUT/$other-heads"); done
  list=$(IFS=,; echo "${others[*]}")
  "$PY" analyze.py heads --config "$dir/config.yaml" --ckpt_path "$ckpt" --output_dir "$OUT/$task-transfer" \
    --methods "[attattr]" --transfer_from "[$list]" "${COMMON[@]}"
done
# the transfer folders hold each task's own AttAttr importance too; tasks without one use their heads folder
results=$(for task in $TASKS; do
  if [ -d "$OUT/$task-transfer" ]; then printf '%s,' "$OUT/$task-transfer"; else printf '%s,' "$OUT/$task-heads"; fi
done)
"$PY" analyze.py universality --results "[${results%,}]" --output_dir "$OUT/universality"

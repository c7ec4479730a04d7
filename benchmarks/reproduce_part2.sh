#!/usr/bin/env bash
# Sections 7-10 of docs/results.md: attribution trees, faithfulness of four edge explanations, the
# planted ground truth and adversarial triggers, on the MiniLM models of benchmarks/finetune_glue.py
# and the quickstart model:
#
#   python benchmarks/finetune_glue.py --tasks rte mrpc cola sst2 --out runs/minilm
#   make quickstart                                  # runs/quickstart/version_0
#   python benchmarks/planted_pairs.py --out data/planted-pairs   # the planted word-pair task
#   python benchmarks/finetune_glue.py --data-dir data/planted-pairs --tasks mrpc --out runs/planted --epochs 2 \
#       --max-train-samples 0
#   bash benchmarks/reproduce_part2.sh               # results in results/minilm/ and results/quickstart-*
#
# Every step is an analyze.py run with a results folder of its own; rerunning resumes unfinished runs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUNS=${RUNS:-runs/minilm}
OUT=${OUT:-results/minilm}
QUICKSTART=${QUICKSTART:-runs/quickstart/version_0}
COMMON=(--trainer.enable_progress_bar=false)

run_of() {  # the run directory and best checkpoint of a task
  local dir
  dir=$(ls -d "$RUNS/$1"/version_* | sort -V | tail -1)
  echo "$dir" "$(ls "$dir"/checkpoints/best-*.ckpt | head -1)"
}

# faithfulness: 100 dev examples (RTE: 50, its pairs are long)
for spec in sst2:100 mrpc:100 cola:100 rte:50; do
  task=${spec%%:*}
  read -r dir ckpt < <(run_of "$task")
  "$PY" analyze.py faithfulness --config "$dir/config.yaml" --ckpt_path "$ckpt" --output_dir "$OUT/$task-faithfulness" \
    --n_examples "${spec##*:}" "${COMMON[@]}"
done
# the planted ground truth: the quickstart model's 500 dev examples
"$PY" analyze.py faithfulness --config "$QUICKSTART/config.yaml" --ckpt_path "$QUICKSTART/checkpoints/last.ckpt" \
  --output_dir results/quickstart-faithfulness --n_examples 500 --ks "[1,2,4,8,16,32]" "${COMMON[@]}"
# the planted word-to-word interaction of benchmarks/planted_pairs.py (MiniLM fine-tuned on it), scored with its truth file
PLANTED=${PLANTED:-runs/planted/mrpc}
read -r dir ckpt < <(RUNS=$(dirname "$PLANTED") run_of "$(basename "$PLANTED")")
"$PY" analyze.py faithfulness --config "$dir/config.yaml" --ckpt_path "$ckpt" --output_dir results/planted-faithfulness \
  --truth data/planted-pairs/truth.jsonl --n_examples 100 "${COMMON[@]}"
"$PY" analyze.py tree --config "$dir/config.yaml" --ckpt_path "$ckpt" --output_dir results/planted-graphs \
  --index "[0,1,2,3]" --mode graph --words true "${COMMON[@]}"
# trees of a few dev examples
read -r dir ckpt < <(run_of sst2)
"$PY" analyze.py tree --config "$dir/config.yaml" --ckpt_path "$ckpt" --output_dir "$OUT/sst2-trees" \
  --index "[0,1,2,3,4,5,6,7]" "${COMMON[@]}"
read -r dir ckpt < <(run_of mrpc)
"$PY" analyze.py tree --config "$dir/config.yaml" --ckpt_path "$ckpt" --output_dir "$OUT/mrpc-trees" \
  --index "[0,1,2,3]" "${COMMON[@]}"
# triggers: mined from the first 500 training examples (the official setting)
for spec in sst2:500 mrpc:500 rte:500; do
  task=${spec%%:*}
  read -r dir ckpt < <(run_of "$task")
  "$PY" analyze.py attack --config "$dir/config.yaml" --ckpt_path "$ckpt" --output_dir "$OUT/$task-attack" \
    --n_source "${spec##*:}" "${COMMON[@]}"
done
"$PY" benchmarks/results_tables.py "$OUT" --fill=docs/results.md

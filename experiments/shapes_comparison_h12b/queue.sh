#!/bin/bash
# The third comparison's queue (plan: experiments/benchmarks/README.md, "The third comparison"): for each seed from
# $1 (default 20) to 79, Imagen's and the VAE's run of that seed side by side on the two cores, each by the plan's
# per-run command; a run whose record (comparison_run.json) exists is skipped, so the queue can be restarted after
# an interruption (a run with checkpoints resumes from them; remove a run directory that has none first).
# Logs go to workdirs/h12b_cmp/. Run from the repository root, with the project installed in .venv.
set -u
export IMAGEN_JAX_CACHE=${IMAGEN_JAX_CACHE:-$PWD/.cache}
RUNS=experiments/shapes_comparison_h12b/runs
LOGS=workdirs/h12b_cmp
mkdir -p "$LOGS"
COMMON=(--seeds 60 --first_seed 20 --budget_minutes 10 --throughput experiments/shapes_comparison/throughput.json
  --num_samples 1024 --set data.num_holdout_pairs=12 --out experiments/shapes_comparison_h12b)
for s in $(seq "${1:-20}" 79); do
  pids=()
  if [ ! -f "$RUNS/imagen_shapes_px16_seed$s/comparison_run.json" ]; then
    .venv/bin/python experiments/compare_baselines.py --configs configs/imagen_shapes.py:px16 "${COMMON[@]}" \
      --run_seeds "$s" --set imagen_shapes_px16:sample.guidance_scale=4.0 > "$LOGS/imagen_$s.log" 2>&1 &
    pids+=($!)
  fi
  if [ ! -f "$RUNS/vae_shapes_px16_seed$s/comparison_run.json" ]; then
    .venv/bin/python experiments/compare_baselines.py --configs configs/vae_shapes.py:px16 "${COMMON[@]}" \
      --run_seeds "$s" --set vae_shapes_px16:train.learning_rate=5e-4 --set vae_shapes_px16:sample.temperature=0.8 \
      > "$LOGS/vae_$s.log" 2>&1 &
    pids+=($!)
  fi
  for p in "${pids[@]}"; do
    wait "$p"
    rc=$?  # taken at once: inside the echo below, $? would be the command substitution's (date's) status
    echo "$(date -u +%FT%TZ) seed $s pid $p rc $rc" >> "$LOGS/queue.log"
  done
done

#!/bin/bash
# The third comparison's queue (plan: experiments/benchmarks/README.md, "The third comparison"): for each seed from
# $1 (default 20) to 79, Imagen's run and then the VAE's, each by the plan's per-run command, at most two at a time
# on the two cores: a run starts as soon as fewer than two comparison runs are going (counted over the whole machine,
# so runs started by an earlier, stopped queue are waited for). A run whose record (comparison_run.json) exists is
# skipped, so the queue can be restarted after an interruption (a run with checkpoints resumes from them; remove a
# run directory that has none first). Logs go to workdirs/h12b_cmp/. Run from the repository root, with the
# project installed in .venv.
set -u
export IMAGEN_JAX_CACHE=${IMAGEN_JAX_CACHE:-$PWD/.cache}
RUNS=experiments/shapes_comparison_h12b/runs
LOGS=workdirs/h12b_cmp
mkdir -p "$LOGS"
COMMON=(--seeds 60 --first_seed 20 --budget_minutes 10 --throughput experiments/shapes_comparison/throughput.json
  --num_samples 1024 --set data.num_holdout_pairs=12 --out experiments/shapes_comparison_h12b)
running() { pgrep -fc "experiments/compare_baselines.py" || true; }
launch() {  # launch NAME SEED ARGS...: one run in the background, its exit logged to queue.log when it ends
  local name=$1 seed=$2
  shift 2
  while [ "$(running)" -ge 2 ]; do sleep 20; done
  (
    .venv/bin/python experiments/compare_baselines.py "$@" > "$LOGS/${name}_$seed.log" 2>&1
    rc=$?
    echo "$(date -u +%FT%TZ) seed $seed $name rc $rc" >> "$LOGS/queue.log"
  ) &
  sleep 20  # let it show up in `running` before the next launch counts
}
for s in $(seq "${1:-20}" 79); do
  if [ ! -f "$RUNS/imagen_shapes_px16_seed$s/comparison_run.json" ]; then
    launch imagen "$s" --configs configs/imagen_shapes.py:px16 "${COMMON[@]}" \
      --run_seeds "$s" --set imagen_shapes_px16:sample.guidance_scale=4.0
  fi
  if [ ! -f "$RUNS/vae_shapes_px16_seed$s/comparison_run.json" ]; then
    launch vae "$s" --configs configs/vae_shapes.py:px16 "${COMMON[@]}" \
      --run_seeds "$s" --set vae_shapes_px16:train.learning_rate=5e-4 --set vae_shapes_px16:sample.temperature=0.8
  fi
done
wait

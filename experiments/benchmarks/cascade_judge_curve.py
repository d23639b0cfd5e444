"""Judge accuracy of every kept checkpoint of one cascade stage: the learning curve behind a quality number.

For each checkpoint of --stage, samples the cascade from text up to that stage (earlier stages at their latest
checkpoint) for the held-out-combination prompts (the ones `sample.judge_prompts` uses, same seed) and judges
the images at that stage's resolution. For an SR stage, --real_lowres also super-resolves real held-out
images downsampled to its low-res size, which isolates the SR stage from the base's mistakes. EMA weights
(what sampling uses) by default; --raw judges the optimised weights too, to see what the EMA lags behind.

python experiments/benchmarks/cascade_judge_curve.py --workdir /tmp/sc --stage base16
python experiments/benchmarks/cascade_judge_curve.py --workdir /tmp/sc --stage sr32 --real_lowres --raw \
    --out experiments/benchmarks/results/shapes_cascade_judge_curve.jsonl

Prints (and appends to --out) one JSON line per (checkpoint, weights, inputs).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from imagen_jax import cascade, experiment
from imagen_jax import workdir as workdir_lib
from imagen_jax.data.shapes import parse_caption, render
from imagen_jax.evaluation.alignment import judge_accuracy
from imagen_jax.models.imagen import resize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workdir", required=True, help="a trained cascade workdir (its config.json is used)"
    )
    parser.add_argument("--stage", required=True, help="the stage whose checkpoints are judged")
    parser.add_argument("--steps", default="", help="comma-separated checkpoint steps (default: all kept)")
    parser.add_argument("--prompts", type=int, default=256, help="held-out prompts per checkpoint")
    parser.add_argument("--real_lowres", action="store_true", help="SR stage: also from real low-res images")
    parser.add_argument("--raw", action="store_true", help="also judge the raw (non-EMA) weights")
    parser.add_argument("--out", default="", help="a .jsonl file the rows are appended to")
    args = parser.parse_args()

    config = workdir_lib.saved_config(args.workdir)
    if config is None or "stages" not in config:
        raise SystemExit(f"{args.workdir} holds no cascade config.json: train a cascade stage there first.")
    config.train_stage = args.stage
    exp = experiment.build(config, args.workdir)
    stages = exp.family.cascade_range("", args.stage)
    target = stages[-1]
    stage_exp = cascade.stage_experiment(exp, target.name)
    checkpointer = stage_exp.checkpointer()
    steps = [int(s) for s in args.steps.split(",") if s] or checkpointer.all_steps()
    if not steps:
        raise SystemExit(f"Stage {target.name!r} has no checkpoint in {stage_exp.run_dir}.")

    earlier = {s.name: cascade.restore_stage_params(exp, s.name, train_command="")[0] for s in stages[:-1]}
    prompts = exp.dataset.prompts(args.prompts, split="holdout", seed=config.sample.seed)
    rng = jax.random.fold_in(jax.random.key(config.sample.seed), 1)  # as sample_cascade's held-out judge
    real_lowres = None
    if args.real_lowres:
        if not target.is_super_resolution:
            raise SystemExit(f"--real_lowres needs an SR stage; {target.name!r} is text-only.")
        draw = np.random.default_rng(0)
        real = np.stack([render(parse_caption(c), config.data.image_size, draw) for c in prompts])
        real = jnp.asarray(real, jnp.float32) / 127.5 - 1
        real_lowres = np.asarray(resize(resize(real, target.image_size), target.lowres_size))

    inputs = {"text": None} | ({"real_lowres": real_lowres} if real_lowres is not None else {})
    rows = []
    for step in steps:
        state, _ = stage_exp.restore(checkpointer, step)
        weights = {"ema": state.ema_params} | ({"raw": state.params} if args.raw else {})
        for name, params in weights.items():
            for source, lowres in inputs.items():
                start = time.perf_counter()
                images = cascade.generate_cascade_for_prompts(
                    exp,
                    earlier | {target.name: params},
                    prompts,
                    rng,
                    start=target.name if lowres is not None else "",
                    stop=target.name,
                    lowres=lowres,
                )[target.name]
                scores = judge_accuracy(images, prompts)
                row = {"stage": target.name, "step": step, "weights": name, "inputs": source}
                row |= {k: round(float(v), 4) for k, v in scores.items()}
                row["seconds"] = round(time.perf_counter() - start, 1)
                print(json.dumps(row), flush=True)
                rows.append(row)
    checkpointer.close()
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()

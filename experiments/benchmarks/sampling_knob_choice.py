"""Would choosing each run's sampling knob on validation prompts change the 16x16 comparison? (issue 19, item 3)

The comparison (experiments/shapes_comparison/report.md) samples every run with its config's knob: Imagen at
guidance 3 (chosen on seed 0 from 1 / 3 / 5), the VAE and VQ-VAE at temperature 1.0 (never tuned). This study
re-evaluates the comparison's own checkpoints with each knob value twice, on two independent draws of 256
held-out-pair prompts (with their real reference images and sampling noise):

  validation  eval.seed 1: picks the run's knob (the highest alignment; a tie keeps the config's value)
  test        eval.seed 0: the comparison's draw, where the chosen knob's alignment is reported

Held-out prompts only (`eval.prompt_sets=('holdout',)`), so a test number can differ from the comparison's own
for the same knob: the sampling noise is drawn per prompt set. Each (run, eval seed) is one
`python -m imagen_jax.main ... --config.mode=eval` on a copy of the run's workdir (the committed eval/ folder is
not touched); its alignments go to <out>/<run>_eval<seed>.json, which a later call reuses.

python experiments/benchmarks/sampling_knob_choice.py --seeds 3-9 \
    --out experiments/benchmarks/results/sampling_knob_choice

Prints per model the test alignment at each knob value and with the per-run choice, mean ± 95% Student-t
half-width over seeds, and writes them to <out>/summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from compare_baselines import mean_ci  # noqa: E402  (experiments/: the comparison's own interval)

# model -> (config, steps of the comparison's budget, knob, values, the config's value)
MODELS = {
    "imagen_shapes_px16": ("configs/imagen_shapes.py:px16", 1317, "guidance_scale", (2.0, 3.0, 4.0), 3.0),
    "vae_shapes_px16": ("configs/vae_shapes.py:px16", 7446, "temperature", (0.5, 0.8, 1.0), 1.0),
    "vae_shapes_vq_px16": ("configs/vae_shapes.py:vq,px16", 5189, "temperature", (0.5, 0.8, 1.0), 1.0),
}
VALIDATION, TEST = 1, 0  # eval.seed of each prompt draw


def evaluate(model: str, seed: int, eval_seed: int, runs: str, out: str, work: str) -> dict[str, float]:
    """{knob value: held-out alignment} of one comparison run under one prompt draw (cached in <out>)."""
    config, steps, knob, values, default = MODELS[model]
    name = f"{model}_seed{seed}"
    result = os.path.join(out, f"{name}_eval{eval_seed}.json")
    if os.path.exists(result):
        with open(result) as f:
            alignment = json.load(f)["alignment"]
        if sorted(alignment, key=float) == [str(v) for v in values]:
            return alignment
        # a result for other knob values than MODELS names now: evaluated again below
    source = os.path.join(runs, name)
    if not os.path.isdir(os.path.join(source, "checkpoints")):
        sys.exit(
            f"error: {source} has no checkpoints (they stay out of git); train it with the command in its "
            f"comparison_run.json first."
        )
    workdir = os.path.join(work, name)
    if not os.path.exists(workdir):
        shutil.copytree(
            source, workdir, ignore=shutil.ignore_patterns("eval", "samples", "tensorboard", ".lock")
        )
    shutil.rmtree(os.path.join(workdir, "eval"), ignore_errors=True)
    others = tuple(v for v in values if v != default)
    command = [
        sys.executable, "-m", "imagen_jax.main", "--config", config, "--workdir", workdir,
        f"--config.seed={seed}", f"--config.train.steps={steps}", "--config.mode=eval",
        "--config.eval.num_samples=256", f"--config.eval.seed={eval_seed}", "--config.eval.prompt_sets=('holdout',)",
        f"--config.eval.sweep_option={knob}", f"--config.eval.sweep_values={others}",
    ]  # fmt: skip
    with open(workdir + ".log", "a") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
    with open(os.path.join(workdir, "eval", f"{steps}.json")) as f:
        report = json.load(f)
    alignment = {str(default): report["prompt_sets"]["holdout"]["alignment"]["all"]}
    for point in report["sweep"]["points"]:
        alignment[str(point["value"])] = point["alignment"]["all"]
    with open(result, "w") as f:
        json.dump({"model": model, "seed": seed, "eval_seed": eval_seed, "knob": knob, "alignment": alignment,
                   "command": " ".join(command)}, f, indent=1)  # fmt: skip
    return alignment


def choose(validation: dict[str, float], default: float) -> str:
    """The knob value with the highest validation alignment; a tie keeps the config's value, then the lowest."""
    return max(sorted(validation, key=float), key=lambda v: (validation[v], float(v) == default))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--seeds", default="3-9", help="the comparison's seeds, e.g. 3-9 (whose checkpoints exist)"
    )
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated, of " + ", ".join(MODELS))
    parser.add_argument("--runs", default="experiments/shapes_comparison/runs")
    parser.add_argument("--out", default="experiments/benchmarks/results/sampling_knob_choice")
    parser.add_argument(
        "--work", default="workdirs/sampling_knob_choice", help="the workdir copies evaluated"
    )
    args = parser.parse_args()
    low, _, high = args.seeds.partition("-")
    try:
        seeds = list(range(int(low), int(high or low) + 1))
    except ValueError:
        sys.exit(f"error: --seeds takes a range like 3-9, got {args.seeds!r}")
    if len(seeds) < 2:
        sys.exit(
            f"error: --seeds {args.seeds} names {len(seeds)} seed(s); an interval over seeds needs at least 2"
        )
    if os.path.realpath(args.work) == os.path.realpath(args.runs):
        sys.exit("error: --work must not be --runs: the runs' committed eval/ folders would be replaced")
    os.makedirs(args.out, exist_ok=True)
    summary = {}
    for model in args.models.split(","):
        default = MODELS[model][4]
        chosen, tests = [], []
        for seed in seeds:
            validation = evaluate(model, seed, VALIDATION, args.runs, args.out, args.work)
            test = evaluate(model, seed, TEST, args.runs, args.out, args.work)
            chosen.append(choose(validation, default))
            tests.append(test)
        rows = {f"{MODELS[model][2]}={v}": [t[v] for t in tests] for v in sorted(tests[0], key=float)}
        rows["chosen on validation"] = [t[c] for t, c in zip(tests, chosen, strict=True)]
        summary[model] = {"seeds": seeds, "chosen": chosen, "test": rows}
        print(f"{model} (chosen per seed: {' '.join(chosen)})")
        for label, values in rows.items():
            mean, half = mean_ci(values)
            summary[model].setdefault("test_mean_ci", {})[label] = [mean, half]
            print(
                f"  test, {label:24s} {mean:.3f} ± {half:.3f}   per seed {' '.join(f'{v:.3f}' for v in values)}"
            )
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()

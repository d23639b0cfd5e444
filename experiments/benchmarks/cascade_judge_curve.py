"""Judge accuracy of every kept checkpoint of one cascade stage: the learning curve behind a quality number.

For each checkpoint of --stage, samples the cascade from text up to that stage (earlier stages at their latest
checkpoint) for the held-out-combination prompts (the ones `sample.judge_prompts` uses, same seed) and judges
the images at that stage's resolution. For an SR stage, --real_lowres also super-resolves real held-out
images downsampled to its low-res size, which isolates the SR stage from the base's mistakes. EMA weights
(what sampling uses) by default; --raw judges the optimised weights too, to see what the EMA lags behind.
--sample KEY=VALUE judges with another way of sampling (stages.sr64.sample.steps=30): a sampling ablation on
trained checkpoints, with the training minutes unchanged.

python experiments/benchmarks/cascade_judge_curve.py --workdir /tmp/sc --stage base16
python experiments/benchmarks/cascade_judge_curve.py --workdir /tmp/sc --stage sr32 --real_lowres --raw \
    --out experiments/benchmarks/results/shapes_cascade_judge_curve.jsonl

Prints (and appends to --out) one JSON line per (checkpoint, weights, inputs). With --started (the stage's
training command's launch, a Unix time or an ISO date) each row also gets the training minutes of the cascade at
that checkpoint: --earlier_minutes (the earlier stages' whole commands) plus the minutes from the launch to the
checkpoint's write. --plot draws the rows of --out for --stage (from text, EMA) against those minutes, each point
with its 95% binomial interval; rows with a "seed" (a whole cascade trained end to end by its commands, minutes
those commands' wall clock) as separate points:

python experiments/benchmarks/cascade_judge_curve.py --workdir /tmp/sc64 --stage sr64 --real_lowres \
    --started <the sr64 command's launch, e.g. 2026-12-03T13:01:56> --earlier_minutes <base16's command minutes> \
    --out experiments/benchmarks/results/shapes_cascade64_judge_curve.jsonl \
    --plot experiments/benchmarks/results/shapes_cascade64_time_to_quality.png
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from imagen_jax import cascade, experiment
from imagen_jax import workdir as workdir_lib
from imagen_jax.data.shapes import parse_caption, render
from imagen_jax.evaluation.alignment import judge_accuracy
from imagen_jax.models.imagen import resize
from imagen_jax.sample import SamplingError, set_sampling_option


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
    parser.add_argument("--started", default="", help="the stage command's launch: Unix seconds or ISO date")
    parser.add_argument(
        "--earlier_minutes", type=float, default=0.0, help="the earlier stages' training minutes"
    )
    parser.add_argument("--goal", default="0.95,60", help="accuracy,minutes drawn as dashed lines on --plot")
    parser.add_argument("--plot", default="", help="a .png of --out's rows for --stage against their minutes")
    parser.add_argument("--plot_only", action="store_true", help="redraw --plot from --out, judge nothing")
    parser.add_argument(
        "--sample",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="how to sample (repeatable): a sample.* or stages.<name>.sample.* key, e.g. stages.sr64.sample.steps=30",
    )
    args = parser.parse_args()
    if args.plot_only:
        return plot(_read_rows(args.out, args.stage), args.plot, args.goal)
    started = _unix_time(args.started) if args.started else None

    config = workdir_lib.saved_config(args.workdir)
    if config is None or "stages" not in config:
        raise SystemExit(f"{args.workdir} holds no cascade config.json: train a cascade stage there first.")
    config.train_stage = args.stage
    for item in args.sample:
        try:
            set_sampling_option(config, item)
        except SamplingError as err:
            raise SystemExit(f"--sample {err}") from None
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
                if args.sample:
                    row["sampling"] = args.sample
                if started is not None:  # the folder's mtime: its last entry, written as Orbax finalises it
                    written = os.path.getmtime(os.path.join(stage_exp.run_dir, "checkpoints", str(step)))
                    row["minutes"] = round(args.earlier_minutes + (written - started) / 60, 2)
                print(json.dumps(row), flush=True)
                rows.append(row)
    checkpointer.close()
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    if args.plot:
        plot(_read_rows(args.out, args.stage) if args.out else rows, args.plot, args.goal)


def _unix_time(text: str) -> float:
    """Seconds since the epoch from Unix seconds or an ISO date (UTC when it names no zone)."""
    try:
        return float(text)
    except ValueError:
        moment = datetime.datetime.fromisoformat(text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.UTC)
        return moment.timestamp()


def _read_rows(path: str, stage: str) -> list[dict]:
    if not path or not os.path.exists(path):
        raise SystemExit(f"--plot needs the rows of --out ({path!r} does not exist).")
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if r["stage"] == stage and "ablation" not in r]  # ablation rows: other networks


def plot(rows: list[dict], path: str, goal: str) -> None:
    """Held-out accuracy (from text, EMA weights) against the cascade's training minutes at each checkpoint, with
    95% binomial intervals; from real low-res images as a second line when measured; the goal as dashed lines."""
    from imagen_jax.evaluation import plots

    if not path:
        raise SystemExit("--plot_only needs --plot PATH.")
    fig, ax = plots.pyplot().subplots(figsize=(6.4, 4.2), dpi=120)
    for inputs, label in (
        ("text", "cascade from text, per checkpoint"),
        ("real_lowres", "SR stage from real low-res images"),
    ):
        mine = sorted(
            (
                r
                for r in rows
                if r["inputs"] == inputs and r["weights"] == "ema" and "minutes" in r and "seed" not in r
            ),
            key=lambda r: r["minutes"],
        )
        if not mine:
            continue
        xs, ys = [r["minutes"] for r in mine], [r["all"] for r in mine]
        bars = [plots.binomial_halfwidth(r["all"], int(r["count"])) for r in mine]
        ax.errorbar(xs, ys, yerr=bars, fmt="o-", capsize=3, label=f"{label} (bars: 95% binomial)")
        for r in mine if inputs == "text" else ():
            ax.annotate(
                f"step {r['step']}",
                (r["minutes"], r["all"]),
                textcoords="offset points",
                xytext=(4, -12),
                fontsize=7,
            )
    ends = [r for r in rows if "seed" in r]  # the two commands end to end in one workdir, one row per seed
    if ends:
        bars = [plots.binomial_halfwidth(r["all"], int(r["count"])) for r in ends]
        ax.errorbar(
            [r["minutes"] for r in ends],
            [r["all"] for r in ends],
            yerr=bars,
            fmt="s",
            capsize=3,
            label=f"end to end, the config as committed ({len(ends)} seeds; minutes: both commands)",
        )
        # the labels stacked below, best first: the seeds' squares sit within a minute of each other
        for i, r in enumerate(sorted(ends, key=lambda r: -r["all"])):
            ax.annotate(
                f"seed {r['seed']}",
                (r["minutes"], r["all"]),
                textcoords="offset points",
                xytext=(40, -24 - 11 * i),
                fontsize=7,
                arrowprops=dict(arrowstyle="-", lw=0.5, color="0.5"),
            )
    accuracy, minutes = (float(v) for v in goal.split(","))
    ax.axhline(accuracy, color="tab:red", ls="--", lw=1, label=f"goal: {accuracy:.2f} held-out")
    ax.axvline(minutes, color="tab:red", ls=":", lw=1, label=f"goal: {minutes:g} minutes of training in all")
    ax.set_xlabel("cascade training minutes (earlier stages + this one up to the checkpoint)")
    ax.set_ylabel("held-out judge accuracy (all attributes right)")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.set_title(
        f"{rows[0]['stage'] if rows else ''}: held-out accuracy of the cascade's last stage", fontsize=8
    )
    ax.legend(fontsize=7, loc="lower right")
    plots.save(fig, path)


if __name__ == "__main__":
    main()

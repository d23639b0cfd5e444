"""Time to quality of the quickstart: held-out judge accuracy against wall-clock minutes of its one command.

For each seed, runs the README's command as a child process,

    python -m imagen_jax.main --config configs/quickstart.py --workdir <dir>/seed<s> --config.seed=<s>
        --config.train.keep_every=<every> [--config.<key>=<value> ...]

notes the wall time (from the launch: start-up, compilation and checkpoint writing included) at which each kept
checkpoint appears, and the command's total time and its own held-out judge line. Then judges every kept
checkpoint's EMA parameters on --prompts held-out prompts, exactly as the run's judge does (sample.judge_prompts
prompts of the held-out colour-shape pairs, drawn with sample.seed; the config's sampler and guidance). Appends one
JSON row per (seed, step) to --out and draws the curve (mean over seeds, one thin line per seed) to --plot.

python experiments/benchmarks/quickstart_time_to_quality.py --seeds 0,1,2 --every 250 \
    --out experiments/benchmarks/results/quickstart_time_to_quality.jsonl \
    --plot experiments/benchmarks/results/quickstart_time_to_quality.png

--override (repeatable) passes a --config.<key>=<value> to the command: an ablation is the same run with one
lever undone. --plot_only redraws the PNG from --out. Run it on an idle machine: the minutes are wall clock.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap
import time

REPO = pathlib.Path(__file__).resolve().parents[2]


def train(workdir: pathlib.Path, seed: int, every: int, overrides: list[str]) -> dict:
    """Runs the quickstart command; returns its total seconds, the seconds at which each checkpoint appeared, its
    own held-out judge accuracy and its console output's last lines."""
    command = [
        sys.executable,
        "-m",
        "imagen_jax.main",
        "--config",
        str(REPO / "configs" / "quickstart.py"),
        "--workdir",
        str(workdir),
        f"--config.seed={seed}",
        f"--config.train.keep_every={every}",
        f"--config.train.checkpoint_every={every}",
        *[f"--config.{o}" for o in overrides],
    ]
    log_path = workdir.parent / f"{workdir.name}.log"
    cpu_before = cpu_times()
    appeared: dict[int, float] = {}
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            time.sleep(0.5)
            folder = workdir / "checkpoints"
            for name in os.listdir(folder) if folder.is_dir() else ():
                if name.isdigit() and int(name) not in appeared:
                    appeared[int(name)] = time.perf_counter() - start
    total = time.perf_counter() - start
    cpu_after = cpu_times()
    output = log_path.read_text(encoding="utf-8", errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"the quickstart failed ({proc.returncode}); see {log_path}:\n{output[-2000:]}")
    match = re.search(r"held-out judge accuracy: ([0-9.]+)", output)
    return {
        "command": " ".join(command[1:]),
        "total_seconds": total,
        "checkpoint_seconds": appeared,
        "run_heldout": float(match.group(1)) if match else None,
        "steal": steal_fraction(cpu_before, cpu_after),
    }


def cpu_times() -> list[int] | None:
    """The machine's CPU time counters (/proc/stat's first line, in ticks), or None where there is none."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            return [int(x) for x in stat.readline().split()[1:]]
    except OSError:
        return None


def steal_fraction(before: list[int] | None, after: list[int] | None) -> float | None:
    """The share of CPU time the hypervisor gave to other machines between two cpu_times() readings (the 8th
    counter, "steal"): a run on a virtual machine whose host is busy is slower than the same run on an idle one,
    whatever its own load average says."""
    if before is None or after is None or len(before) < 8:
        return None
    total = sum(after[:8]) - sum(before[:8])
    return round((after[7] - before[7]) / total, 3) if total else None


def judge_checkpoints(workdir: pathlib.Path, prompts: int) -> dict[int, dict]:
    """{step: the judge's scores} for every kept checkpoint's EMA parameters (the run's own judge, re-run)."""
    from imagen_jax import parallel

    parallel.skip_absent_tpu_runtime()  # before JAX starts: stay on the CPU where libtpu is installed for compiles
    import jax

    from imagen_jax import experiment, sample
    from imagen_jax import workdir as workdir_lib
    from imagen_jax.evaluation.alignment import judge_accuracy

    config = workdir_lib.saved_config(str(workdir))
    exp = experiment.build(config, str(workdir))
    heldout = exp.dataset.prompts(prompts, split="holdout", seed=config.sample.seed)
    rng = jax.random.fold_in(jax.random.key(config.sample.seed), 1)  # as sample_and_judge's held-out judge
    # and its chunk, since the noise is drawn per chunk (rows before 2026-12-03 09:30 used SAMPLE_CHUNK)
    grid = len(config.sample.prompts) * int(config.sample.num_per_prompt)
    chunk = sample.report_chunk(grid, int(config.sample.judge_prompts))
    checkpointer = exp.checkpointer()
    scores = {}
    try:
        for step in checkpointer.all_steps():
            state, _ = exp.restore(checkpointer, step)
            images = sample.generate_for_prompts(exp, state.ema_params, heldout, rng, chunk=chunk)
            scores[step] = judge_accuracy(images, heldout)
    finally:
        checkpointer.close()
    return scores


def plot(rows: list[dict], path: str, title: str) -> None:
    """Held-out accuracy against minutes: one thin line per seed, the mean over seeds at each step (its minutes
    averaged too) with the seeds' range as error bars, each point labelled with its step, and the goal (0.90 within
    10 minutes) as dashed lines."""
    import numpy as np

    from imagen_jax.evaluation import plots

    fig, ax = plots.pyplot().subplots(figsize=(6.4, 4.2), dpi=120)
    seeds = sorted({r["seed"] for r in rows})
    for seed in seeds:
        mine = sorted((r for r in rows if r["seed"] == seed), key=lambda r: r["step"])
        ax.plot([r["minutes"] for r in mine], [r["heldout"] for r in mine], "-", lw=0.8, alpha=0.5)
    steps = sorted({r["step"] for r in rows})
    mean_x, mean_y, low, high = [], [], [], []
    for step in steps:
        at = [r for r in rows if r["step"] == step]
        accs = np.array([r["heldout"] for r in at])
        mean_x.append(float(np.mean([r["minutes"] for r in at])))
        mean_y.append(float(accs.mean()))
        low.append(float(accs.mean() - accs.min()))
        high.append(float(accs.max() - accs.mean()))
    label = f"mean of {len(seeds)} seeds (bars: min-max)" if len(seeds) > 1 else f"seed {seeds[0]}"
    ax.errorbar(mean_x, mean_y, yerr=[low, high], fmt="o-", color="black", capsize=3, lw=1.5, label=label)
    for x, y, step in zip(mean_x, mean_y, steps, strict=True):
        ax.annotate(f"step {step}", (x, y), textcoords="offset points", xytext=(4, -12), fontsize=7)
    ax.axhline(0.9, color="tab:red", ls="--", lw=1, label="goal: 0.90 held-out")
    ax.axvline(10, color="tab:red", ls=":", lw=1, label="goal: 10 minutes (idle 2-core CPU)")
    ax.set_xlabel("wall-clock minutes since the command started (at the checkpoint's write)")
    ax.set_ylabel("held-out judge accuracy (all attributes right)")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7, loc="upper left")
    plots.save(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--every", type=int, default=250, help="keep a checkpoint every this many steps")
    parser.add_argument("--prompts", type=int, default=256, help="held-out prompts judged per checkpoint")
    parser.add_argument("--override", action="append", default=[], help="key=value for --config.key=value")
    parser.add_argument("--dir", default="/tmp/qs_ttq", help="where the runs' workdirs go")
    parser.add_argument("--label", default="quickstart", help="the rows' label (e.g. an ablation's name)")
    parser.add_argument("--out", default="", help="a .jsonl file the rows are appended to")
    parser.add_argument("--plot", default="", help="a .png the curve (rows of --label in --out) is drawn to")
    parser.add_argument("--plot_only", action="store_true")
    parser.add_argument("--judge_only", action="store_true", help="judge the existing runs' checkpoints only")
    args = parser.parse_args()

    if not args.plot_only:
        load = os.getloadavg()
        for seed in (int(s) for s in args.seeds.split(",")):
            workdir = pathlib.Path(args.dir) / f"{args.label}_seed{seed}"
            if args.judge_only:  # a run already made (e.g. cut short): its checkpoints, no times
                run = {"total_seconds": float("nan"), "checkpoint_seconds": {}, "run_heldout": None}
            elif workdir.exists():
                raise SystemExit(f"{workdir} exists: give another --dir or --label (runs start afresh).")
            else:
                workdir.parent.mkdir(parents=True, exist_ok=True)
                run = train(workdir, seed, args.every, args.override)
            scores = judge_checkpoints(workdir, args.prompts)
            for step, judged in sorted(scores.items()):
                row = {
                    "label": args.label,
                    "seed": seed,
                    "step": step,
                    "minutes": round(run["checkpoint_seconds"].get(step, float("nan")) / 60, 2),
                    "heldout": round(float(judged["all"]), 4),
                    **{k: round(float(judged[k]), 4) for k in ("shape", "colour", "size", "position")},
                    "command_minutes": round(run["total_seconds"] / 60, 2),
                    "command_heldout": run["run_heldout"],
                    "overrides": args.override,
                    "prompts": args.prompts,
                    "steal": run.get("steal"),
                    "loadavg_before": [round(x, 2) for x in load],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                }
                print(json.dumps(row), flush=True)
                if args.out:
                    with open(args.out, "a", encoding="utf-8") as f:
                        f.write(json.dumps(row) + "\n")
    if args.plot and args.out:
        rows = [json.loads(line) for line in open(args.out, encoding="utf-8") if line.strip()]
        rows = [
            r for r in rows if r["label"] == args.label and r["minutes"] == r["minutes"]
        ]  # timed rows only
        loads = [x for r in rows for x in (r["loadavg_before"][0], r["loadavg_after"][0])]
        overrides = " ".join(rows[0].get("overrides", ()))
        title = (
            textwrap.fill(f"configs/quickstart.py {overrides}".strip(), 110)
            + f"\nheld-out judge accuracy ({rows[0]['prompts']} prompts)\n2-core CPU, 1-minute load average "
            f"{min(loads):.0f}-{max(loads):.0f} at start and end"
        )
        plot(rows, args.plot, title)


if __name__ == "__main__":
    main()

"""The tuning behind a comparison's configs, as one table: every tuning run (a compare_baselines.py output directory
of one config on seed 0 with its --set overrides) with its held-out and training-prompt alignment, FID and
per-attribute accuracy, the chosen setting of each model marked.

    python experiments/tuning_table.py --runs '/tmp/tune/*' --out experiments/shapes_comparison/tuning

writes tuning.md and tuning.json. The choice per model: the highest held-out alignment (every attribute right),
ties broken by the lower held-out FID; a model whose default already wins keeps its config unchanged.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
import sys
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from imagen_jax.evaluation.plots import binomial_halfwidth  # noqa: E402

ATTRIBUTES = ("shape", "colour", "size", "position")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", required=True, help="a glob of compare_baselines.py output directories")
    p.add_argument("--out", required=True, help="path without extension: <out>.md and <out>.json")
    p.add_argument("--title", default="Tuning on seed 0", help="the markdown's heading")
    p.add_argument("--note", action="append", default=[], help="a paragraph after the table (repeatable)")
    return p.parse_args(argv)


def overrides_of(argv: list[str]) -> list[str]:
    """The --set values of a compare_baselines.py command line, in order."""
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--set"]


def rows_of(results_path: str) -> list[dict[str, Any]]:
    """One row per run of a compare_baselines.py results.json."""
    with open(results_path, encoding="utf-8") as f:
        results = json.load(f)
    rows = []
    for run in results["runs"]:
        sets = run["eval"]["prompt_sets"]
        rows.append(
            {
                "model": run["model"],
                "seed": run["seed"],
                "overrides": overrides_of(results["argv"]),
                "steps": run["steps"],
                "batch_size": run["batch_size"],
                "holdout": sets["holdout"]["alignment"]["all"],
                "train": sets["train"]["alignment"]["all"],
                "holdout_attributes": {a: sets["holdout"]["alignment"][a] for a in ATTRIBUTES},
                "holdout_fid": sets["holdout"]["fid"],
                "train_fid": sets["train"]["fid"],
                "num_samples": run["eval"]["num_samples"],
                "results": results_path,
                "command": shlex.join(["python", "experiments/compare_baselines.py", *results["argv"]]),
                **({"sweep": sweep_of(run)} if "sweep" in run["eval"] else {}),
            }
        )
    return rows


def sweep_of(run: dict[str, Any]) -> dict[str, Any]:
    """A run's sampling sweep on held-out prompts: the option, the config's own value (from the run's saved
    config.json) and {value: (held-out alignment, held-out FID)}."""
    sweep = run["eval"]["sweep"]
    option = sweep["option"]
    path = os.path.join(run["workdir"], "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            default = float(json.load(f)["sample"][option])
    except (OSError, KeyError) as e:
        raise SystemExit(
            f"{path}: the run's saved config with sample.{option} is needed to read its sweep ({e})"
        ) from e
    points = {
        str(float(p["value"])): (p["alignment"]["all"], p["fid"])
        for p in sweep["points"]
        if p["prompt_set"] == "holdout"
    }
    if str(default) not in points:  # the run's own evaluation is the config's value
        holdout = run["eval"]["prompt_sets"]["holdout"]
        points[str(default)] = (holdout["alignment"]["all"], holdout["fid"])
    return {"option": option, "default": default, "points": points}


def choose_knob(sweep: dict[str, Any]) -> str:
    """The sampling value with the highest held-out alignment; a tie keeps the config's value, then the lower FID."""
    points = sweep["points"]
    return max(points, key=lambda v: (points[v][0], float(v) == sweep["default"], -points[v][1]))


def common_overrides(rows: list[dict[str, Any]]) -> list[str]:
    """The overrides every run shares (the setting the tuning is for, e.g. a data split), in the first row's
    order; none when there is only one run (its overrides are what it tunes)."""
    if len(rows) < 2:
        return []
    return [o for o in rows[0]["overrides"] if all(o in r["overrides"] for r in rows)]


def tuned_overrides(row: dict[str, Any], common: list[str]) -> list[str]:
    """A row's own training and sampling overrides: those every run shares and evaluation settings (eval.*, such
    as a sweep's values, shown in the knob section) left out."""
    return [o for o in row["overrides"] if o not in common and not o.startswith("eval.")]


def choose(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{model: its chosen row}: highest held-out alignment, then lowest held-out FID."""
    chosen: dict[str, dict[str, Any]] = {}
    for row in rows:
        best = chosen.get(row["model"])
        if best is None or (row["holdout"], -row["holdout_fid"]) > (best["holdout"], -best["holdout_fid"]):
            chosen[row["model"]] = row
    return chosen


def markdown(rows: list[dict[str, Any]], title: str, notes: list[str] = ()) -> str:
    chosen = choose(rows)
    common = common_overrides(rows)
    lines = [
        f"# {title}",
        "",
        "Each row: one training run on seed 0 under the comparison's budget (the same probed steps as the "
        "comparison; the override named changes the config for that run only), evaluated like the comparison. "
        "Chosen per model: the highest held-out alignment (every attribute right), ties broken by the lower "
        "held-out FID. Alignment over "
        f"{rows[0]['num_samples']} images per prompt set, +- the half-width of its 95% binomial interval "
        "(normal approximation): one seed, so this is the judge's sampling noise, not the seeds' spread.",
        "",
        *(
            [f"Every run: `{' '.join(common)}`; (config as is) below means with only that.", ""]
            if common
            else []
        ),
        "| model | override | steps | held-out alignment | shape / colour / size / position | train alignment "
        "| held-out FID | train FID | chosen |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for model in dict.fromkeys(r["model"] for r in rows):
        for row in sorted((r for r in rows if r["model"] == model), key=lambda r: tuned_overrides(r, common)):
            attributes = " / ".join(f"{row['holdout_attributes'][a]:.3f}" for a in ATTRIBUTES)
            halfwidth = binomial_halfwidth(row["holdout"], row["num_samples"])
            lines.append(
                f"| {model} | {', '.join(tuned_overrides(row, common)) or '(config as is)'} | {row['steps']} | "
                f"{row['holdout']:.3f} ± {halfwidth:.3f} | {attributes} | {row['train']:.3f} | "
                f"{row['holdout_fid']:.3g} | {row['train_fid']:.3g} | {'**yes**' if chosen[model] is row else ''} |"
            )
    lines += knob_lines(rows, chosen)
    for note in notes:
        lines += ["", note]
    lines += ["", "Commands (each trains and evaluates one run):", ""]
    lines += [f"    {row['command']}" for row in rows]
    return "\n".join(lines) + "\n"


def knob_lines(rows: list[dict[str, Any]], chosen: dict[str, dict[str, Any]]) -> list[str]:
    """Each model's sampling knob on its chosen run's sweep (held-out alignment, then FID, per value)."""
    lines = [
        "",
        "## Sampling knob, on each model's chosen run",
        "",
        "Chosen: the highest held-out alignment, a tie keeping the config's value.",
        "",
    ]
    for model, row in chosen.items():
        if "sweep" not in row:
            swept = [r for r in rows if r["model"] == model and "sweep" in r]
            lines.append(
                f"- {model}: no sweep on its chosen run"
                + (
                    " (the sweep ran on another of its runs; evaluate the chosen one with a sweep)"
                    if swept
                    else ""
                )
            )
            continue
        sweep = row["sweep"]
        best = choose_knob(sweep)
        values = " / ".join(
            f"{v}: {a:.3f} (FID {fid:.3g})"
            for v, (a, fid) in sorted(sweep["points"].items(), key=lambda i: float(i[0]))
        )
        lines.append(f"- {model}, {sweep['option']} (config {sweep['default']}): {values}; chosen **{best}**")
    return lines


def main(argv: list[str] | None = None) -> str:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    paths = sorted(glob.glob(os.path.join(args.runs, "results.json")))
    if not paths:
        raise SystemExit(f"no results.json under {args.runs}: give compare_baselines.py output directories")
    rows = [row for path in paths for row in rows_of(path)]
    with open(args.out + ".json", "w", encoding="utf-8") as f:
        common = common_overrides(rows)
        best = choose(rows)
        chosen = {m: tuned_overrides(r, common) for m, r in best.items()}
        knobs = {
            m: {"option": r["sweep"]["option"], "value": float(choose_knob(r["sweep"]))}
            for m, r in best.items()
            if "sweep" in r
        }
        json.dump({"rows": rows, "common": common, "chosen": chosen, "knobs": knobs}, f, indent=2)
    with open(args.out + ".md", "w", encoding="utf-8") as f:
        f.write(markdown(rows, args.title, args.note))
    return args.out + ".md"


if __name__ == "__main__":
    print(main())

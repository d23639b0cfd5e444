"""Imagen vs GAN vs VAE on equal terms: every (config x seed) trained on the same budget, evaluated with the same
prompts, reference images, feature space and metrics, summarised as mean +- 95% CI (Student t) over seeds.

    python experiments/compare_baselines.py --configs configs/imagen_shapes.py,configs/gan_shapes.py,configs/vae_shapes.py \
        --seeds 3 --budget_images 64000 --out experiments/baselines

Budget (one of): --budget_images N (the same number of training images for every model: steps = N / batch),
--budget_steps N (the same step count), --budget_minutes M (each model's steps set from its own throughput,
measured by a short probe run; wall time is not reproducible, so the report records the steps it gave). Probes are
kept in --throughput (default <out>/throughput.json) and reused, so that tuning runs and the comparison share one
conversion; run them on an idle machine, back to back. Overrides that do not change a step's cost (learning rates,
loss weights, the seed, the held-out split, sample.* and eval.*: THROUGHPUT_FREE) share their config's probe; any
other override is probed on its own. --set KEY=VALUE overrides every model's config, --set MODEL:KEY=VALUE one
model's (e.g. vae_shapes_px16:sample.temperature=0.5, a family's sampling knob chosen in tuning). The seeds are
--first_seed .. --first_seed + --seeds - 1 (fresh seeds such as 10-19 keep the tuning seed 0 out of the result);
the first seed's runs carry the sampling sweeps and the report's sample grids.
Runs go to <out>/runs/<config>_seed<s>/; each finished run leaves its record (command, steps, evaluation
settings, every number) in <out>/runs/<config>_seed<s>/comparison_run.json. A later call with the same command and
evaluation settings takes the run from its record, training and evaluating nothing (checkpoints stay out of git,
so a record is all a committed comparison keeps of its runs); a run with a record that does not match, or none,
is trained (a run already trained to its steps only resumes) and evaluated. --run_seeds runs a subset of the
seeds and writes their records only, so that a comparison can grow in pieces (side by side, or over days); a
call without it takes or makes every (config, seed)'s record, then writes the report. The report is
<out>/report.md, every number also in <out>/results.json; it opens with its result, stated from the numbers: which
model has the highest held-out alignment, and whether its 95% interval is disjoint from each other model's
(verdict_lines). --borrow CONFIG SEEDS DIR adds a model whose runs another comparison made (DIR, its --out), read
from their records and never trained here: each must have been made by the command this call would give it (its
own seed and workdir, this call's overrides and budget) under this call's evaluation settings, so that a new
comparison of two models can be reported beside earlier, independent seeds of the others. Training runs in this
process through imagen_jax.main (the same code path as the command line).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

DEFAULT_CONFIGS = (
    "configs/imagen_shapes.py,configs/gan_shapes.py,configs/vae_shapes.py,configs/vae_shapes.py:vq"
)
# Per-family sampling sweeps when a config's eval section names none (FID-vs-alignment curves).
DEFAULT_SWEEPS = {
    "imagen": ("guidance_scale", (1.0, 3.0, 5.0)),
    "gan": ("truncation", (0.5, 1.0, 0.0)),
    "vae": ("temperature", (0.5, 0.8, 1.0)),
}
SHARED_EVAL_KEYS = (  # eval settings taken from the first config (or the CLI) and used for every model
    "num_samples",
    "prompt_sets",
    "feature_space",
    "inception_weights",
    "cache_dir",
    "feature_net",
    "kid_subsets",
    "kid_subset_size",
    "pr_k",
    "seed",
    "batch_size",
    "grid_images",
    "clip_weights",
)
METRICS = (  # (key in the eval report, column title, formatting scale)
    ("fid", "FID", 1.0),
    ("kid", "KID x 10^3", 1e3),
    ("precision", "precision", 1.0),
    ("recall", "recall", 1.0),
    ("alignment", "alignment (all)", 1.0),
)
CLIP_METRIC = ("clip_score", "CLIP score", 1.0)  # a column when a CLIP is configured (--clip_weights)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default=DEFAULT_CONFIGS, help="comma-separated config files (file[:variant])")
    p.add_argument(
        "--seeds", type=int, default=3, help="seeds per config: --first_seed .. --first_seed + N - 1"
    )
    p.add_argument(
        "--first_seed",
        type=int,
        default=0,
        help="the first seed (e.g. 10 for fresh seeds after tuning on seed 0); its runs carry the sweeps and grids",
    )
    p.add_argument(
        "--run_seeds",
        help="train and evaluate only these of the seeds (e.g. 3-5 or 3,7) and write their records, no report",
    )
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget_images", type=int, help="training images per run (steps = this / batch)")
    budget.add_argument("--budget_steps", type=int, help="training steps per run")
    budget.add_argument("--budget_minutes", type=float, help="training wall minutes per run (via a probe)")
    p.add_argument("--out", required=True, help="output directory (runs/, report.md, results.json)")
    p.add_argument("--num_samples", type=int, help="eval.num_samples for every model")
    p.add_argument("--feature_space", choices=("shapes", "inception"), help="eval.feature_space")
    p.add_argument("--inception_weights", help="eval.inception_weights (with --feature_space inception)")
    p.add_argument("--cache_dir", help="eval.cache_dir (the shapes feature network's cache)")
    p.add_argument(
        "--clip_weights",
        help="eval.clip_weights: a Hugging Face CLIP directory or a family=clip workdir; adds the CLIP score",
    )
    p.add_argument(
        "--no_sweep", action="store_true", help="skip the sampling-option sweeps (otherwise run on seed 0)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for every run, e.g. --set mesh.cpu_devices=0, or for one model's runs only, "
        "MODEL:KEY=VALUE with MODEL a run name such as vae_shapes_px16 (repeatable)",
    )
    p.add_argument(
        "--probe_steps", type=int, default=60, help="steps of the throughput probe (--budget_minutes)"
    )
    p.add_argument(
        "--probe_only",
        action="store_true",
        help="with --budget_minutes: probe every config's throughput into --throughput, train nothing",
    )
    p.add_argument(
        "--borrow",
        nargs=3,
        action="append",
        default=[],
        metavar=("CONFIG", "SEEDS", "DIR"),
        help="report CONFIG's seeds SEEDS (e.g. 10-19) from the records of the comparison in DIR (its --out), "
        "made by the same command and evaluation as this call's; nothing is trained for them (repeatable)",
    )
    p.add_argument(
        "--tuning", help="a markdown file of the tuning behind the configs, linked from the report"
    )
    p.add_argument(
        "--throughput",
        help="JSON of probed throughputs, read and extended (--budget_minutes); default <out>/throughput.json",
    )
    args = p.parse_args(argv)
    for value in (args.budget_images, args.budget_steps, args.budget_minutes):
        if value is not None and value <= 0:
            p.error("the budget must be positive")
    if args.probe_only and args.budget_minutes is None:
        p.error("--probe_only probes for --budget_minutes")
    if args.seeds < 1:
        p.error("--seeds must be >= 1")
    if args.first_seed < 0:
        p.error("--first_seed must be >= 0")
    args.seed_list = list(range(args.first_seed, args.first_seed + args.seeds))
    try:
        args.run_seeds = parse_seed_list(args.run_seeds, args.seed_list) if args.run_seeds else None
    except ValueError as e:
        p.error(f"--run_seeds: {e}")
    args.configs = split_configs(args.configs)
    for config in args.configs + [config for config, _, _ in args.borrow]:
        if not os.path.isfile(config.split(":", 1)[0]):
            p.error(f"config file {config.split(':', 1)[0]} does not exist")
    own_models = [run_name(c) for c in args.configs]
    borrowed = []
    for config, seeds, directory in args.borrow:
        if run_name(config) in own_models + [b.model for b in borrowed]:
            p.error(
                f"--borrow: {run_name(config)} is already in the comparison (--configs or another --borrow)"
            )
        try:
            seed_list = parse_seed_list(seeds, None)
        except ValueError as e:
            p.error(f"--borrow {config}: {e}")
        if not os.path.isdir(os.path.join(directory, "runs")):
            p.error(
                f"--borrow {config}: {directory} holds no runs/ of a comparison (give that comparison's --out)"
            )
        borrowed.append(
            argparse.Namespace(config=config, model=run_name(config), seeds=seed_list, out=directory)
        )
    args.borrow = borrowed
    args.models = own_models + [b.model for b in borrowed]  # every --set scope
    if args.borrow and args.run_seeds is not None:
        p.error("--borrow adds records to the report; --run_seeds writes records only: use one or the other")
    try:  # every item's form and scope, once (the model asked for does not change what is refused)
        overrides_for("", args.set, args.models)
    except ValueError as e:
        p.error(f"--set: {e}")
    return args


def split_configs(text: str) -> list[str]:
    """--configs as a list: commas separate config files, except inside a variant argument (an item without
    ".py" continues the previous one): "a.py:vq,px16,b.py" -> ["a.py:vq,px16", "b.py"]."""
    configs: list[str] = []
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        if ".py" not in item and configs and ":" in configs[-1]:
            configs[-1] += "," + item
        else:
            configs.append(item)
    return configs


def overrides_for(model: str, sets: list[str], models: list[str] | None = None) -> list[str]:
    """The --set overrides of one model's runs, in order: "KEY=VALUE" for every model, "MODEL:KEY=VALUE" for the
    model named (a config key has no colon). A scope naming none of `models` is an error, not an override that
    silently does nothing."""
    own = []
    for item in sets:
        if "=" not in item:
            raise ValueError(f"{item!r} is not KEY=VALUE or MODEL:KEY=VALUE")
        scope, colon, _ = item.split("=", 1)[0].rpartition(":")
        if not colon:
            own.append(item)
            continue
        if models is not None and scope not in models:
            raise ValueError(
                f"{item!r} names the model {scope!r}, which is none of the comparison's ({', '.join(models)}: "
                "--configs, --borrow)"
            )
        if scope == model:
            own.append(item.split(":", 1)[1])
    return own


def parse_seed_list(text: str, seed_list: list[int] | None) -> list[int]:
    """ "3-5,8" -> [3, 4, 5, 8]; every seed must be one of the comparison's (seed_list; None: any)."""
    seeds: list[int] = []
    for item in (i.strip() for i in text.split(",")):
        lo, _, hi = item.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise ValueError(f"{item!r} is not a seed or a range of seeds like 3-5")
        seeds += range(int(lo), int(hi or lo) + 1)
    outside = [] if seed_list is None else sorted(s for s in set(seeds) if s not in seed_list)
    if not seeds or outside:
        raise ValueError(
            f"seeds {outside} are outside the comparison's ({seed_list[0]} .. {seed_list[-1]}: --first_seed, --seeds)"
            if outside
            else f"{text!r} names no seed"
        )
    return sorted(set(seeds))


RECORD = "comparison_run.json"  # a finished run's record, in its workdir


def _as_json(value: Any) -> Any:
    return json.loads(json.dumps(value))


def read_record(workdir: str, command: str, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The run's record when it was made by this training command under these evaluation settings, else None."""
    path = os.path.join(workdir, RECORD)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        record = json.load(f)
    if record.get("command") != command or record.get("eval_settings") != _as_json(settings):
        return None
    return record


def write_record(workdir: str, record: dict[str, Any]) -> None:
    """Written whole or not at all (a temporary file, then a rename)."""
    path = os.path.join(workdir, RECORD)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(_as_json(record), f, indent=1)
    os.replace(path + ".tmp", path)


def run_name(config_path: str) -> str:
    """configs/quickstart.py:tiny -> quickstart_tiny; configs/vae_shapes.py:vq,px16 -> vae_shapes_vq_px16."""
    base, _, variant = config_path.partition(":")
    name = os.path.splitext(os.path.basename(base))[0]
    return f"{name}_{variant.replace(',', '_').replace('=', '')}" if variant else name


# Overrides that leave a training step's cost unchanged: a config probed once serves every value of these.
THROUGHPUT_FREE = (
    "seed",
    "train.learning_rate",
    "train.g_learning_rate",
    "train.d_learning_rate",
    "train.warmup_steps",
    "train.ema_decay",
    "model.free_bits",
    "model.kl_warmup_steps",
    "model.commitment_cost",
    "gan.loss",
    "gan.mismatch_weight",
    "diffusion.loss_weighting",
    "diffusion.min_snr_gamma",
    "data.num_holdout_pairs",  # which colour-shape pairs are held out, not how many images a step sees
)
THROUGHPUT_FREE_SECTIONS = ("sample.", "eval.")  # settings read after training only


def costly_overrides(overrides: list[str]) -> list[str]:
    """The overrides that may change a training step's cost (all but THROUGHPUT_FREE's and those of
    THROUGHPUT_FREE_SECTIONS), sorted."""
    return sorted(
        o
        for o in overrides
        if o.split("=", 1)[0] not in THROUGHPUT_FREE and not o.startswith(THROUGHPUT_FREE_SECTIONS)
    )


def throughput_key(config_path: str, overrides: list[str]) -> str:
    """The probe a run's budget comes from: its config, with the overrides that change a step's cost."""
    return " ".join([run_name(config_path), *costly_overrides(overrides)])


def judging_off(config) -> list[str]:
    """The override that stops a run judging prompts after training (the evaluation judges its own), if the
    config's family judges at all."""
    return ["sample.judge_prompts=0"] if "judge_prompts" in config.get("sample", {}) else []


def _main_argv(config_path: str, workdir: str, seed: int, overrides: list[str]) -> list[str]:
    return ["--config", config_path, "--workdir", workdir, f"--config.seed={seed}"] + [
        f"--config.{o}" for o in overrides
    ]


def load_config(config_path: str, workdir: str, seed: int, overrides: list[str]):
    from imagen_jax import workdir as workdir_lib

    config, _, _ = workdir_lib.parse_command_line(
        ["main", *_main_argv(config_path, workdir, seed, overrides)]
    )
    return config


def _train(argv: list[str]) -> float:
    """Runs imagen_jax.main with argv in this process; wall seconds. Raises on a non-zero exit."""
    from imagen_jax import main as main_lib

    start = time.time()
    code = main_lib.main(["imagen_jax.main", *argv])
    if code != 0:
        raise SystemExit(f"training failed (exit {code}): python -m imagen_jax.main {shlex.join(argv)}")
    return time.time() - start


def steps_for_budget(
    args: argparse.Namespace, config_path: str, batch_size: int, overrides: list[str], may_probe: bool = True
) -> tuple[int, dict[str, Any] | None]:
    """(training steps of one config under the budget, the throughput probe they come from or None); with
    may_probe False a config without a recorded probe is an error rather than a probe run."""
    if args.budget_steps:
        return int(args.budget_steps), None
    if args.budget_images:
        return max(1, math.ceil(args.budget_images / batch_size)), None
    probe = probe_throughput(args, config_path, overrides, may_probe)
    return max(1, int(args.budget_minutes * 60 * probe["images_per_sec"] / batch_size)), probe


def probe_throughput(
    args: argparse.Namespace, config_path: str, overrides: list[str], may_probe: bool = True
) -> dict[str, Any]:
    """The probe of (config, costly overrides) from --throughput, or a new one (args.probe_steps steps of seed 0,
    its median logged images/s after the first interval, which holds compilation), added to the file."""
    path = args.throughput or os.path.join(args.out, "throughput.json")
    probes = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            probes = json.load(f)
    key = throughput_key(config_path, overrides)
    if key in probes:
        return probes[key]
    if not may_probe:
        raise SystemExit(
            f"--borrow {config_path}: {path} holds no probe of {key!r}, so this call's budget gives it no steps; "
            "give --throughput the file its comparison used."
        )
    probe_dir = os.path.join(args.out, "probes", key.replace(" ", "_").replace("=", "-"))
    if os.path.exists(probe_dir):
        raise SystemExit(f"{probe_dir} exists from an unfinished probe; remove it and run again.")
    probe_overrides = costly_overrides(overrides) + judging_off(load_config(config_path, probe_dir, 0, []))
    probe_overrides += [f"train.steps={args.probe_steps}", "train.log_every=5"]
    _train(_main_argv(config_path, probe_dir, 0, probe_overrides))
    with open(os.path.join(probe_dir, "metrics.jsonl"), encoding="utf-8") as f:
        rates = [json.loads(line)["images_per_sec"] for line in f if line.strip()][1:]  # [0] holds compile
    if not rates:
        raise SystemExit(f"the probe of {config_path} logged no throughput; raise --probe_steps")
    probes[key] = {
        "images_per_sec": float(sorted(rates)[len(rates) // 2]),
        "rates": rates,
        "probe_steps": args.probe_steps,
        "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python -m imagen_jax.main "
        + shlex.join(_main_argv(config_path, "<probe>", 0, probe_overrides)),
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(probes, f, indent=2)
    os.replace(path + ".tmp", path)
    return probes[key]


def eval_settings(
    args: argparse.Namespace, first_config, config, seed: int = 0, first_seed: int | None = None
):
    """The shared eval settings (first config's, then the CLI's) with this model's own sweep (the first seed only,
    --first_seed unless first_seed is given: the report plots that seed's curve, and a sweep costs a full
    evaluation per value)."""
    from imagen_jax.evaluation import run as eval_run

    shared = eval_run.settings_of(first_config, sweep=False)
    settings = eval_run.settings_of(config, sweep=False)
    for key in SHARED_EVAL_KEYS:
        settings[key] = shared[key]
    for key in ("num_samples", "feature_space", "inception_weights", "cache_dir", "clip_weights"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    own_sweep = settings.sweep_option in config.get("sample", {})  # a config may inherit another family's
    if not own_sweep:
        settings.sweep_option, settings.sweep_values = "", ()
    if not settings.sweep_option and config.family in DEFAULT_SWEEPS:
        settings.sweep_option, settings.sweep_values = DEFAULT_SWEEPS[config.family]
    if args.no_sweep or seed != (args.first_seed if first_seed is None else first_seed):
        settings.sweep_option, settings.sweep_values = "", ()
    eval_run.check_settings(settings)
    return settings


def evaluate_run(config, workdir: str, settings) -> dict[str, Any]:
    from imagen_jax.modes import evaluate

    return evaluate.run(config, workdir, settings=settings)


# ------------------------------------------------------------------------------------------------- summary


def mean_ci(values: list[float]) -> tuple[float, float | None]:
    """(mean, half-width of the 95% Student-t confidence interval), None for a single value."""
    from scipy import stats

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n))


def welch_p(a: list[float], b: list[float]) -> float:
    """Two-sided p-value of Welch's t-test that a's and b's means differ (unequal variances)."""
    from scipy import stats

    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def welch_interval(a: list[float], b: list[float]) -> tuple[float, float]:
    """95% confidence interval of mean(a) - mean(b) by Welch's t (unequal variances, Welch-Satterthwaite degrees
    of freedom): the size of a difference, where welch_p says only whether there is one."""
    from scipy import stats

    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    return float(ci.low), float(ci.high)


def verdict_lines(runs: list[dict[str, Any]], models: list[str], split: str) -> list[str]:
    """The result on alignment over `split`'s prompts, stated from the numbers: the model with the highest mean, and
    for each other model whether their 95% Student-t intervals (mean_ci) are disjoint, with the difference of means,
    Welch's p-value and the difference's Welch 95% interval beside it (secondary: the intervals are the criterion
    the comparison is judged by)."""
    values = {m: [_metric(r["eval"], split, "alignment") for r in runs if r["model"] == m] for m in models}
    if len(models) < 2 or any(len(v) < 2 for v in values.values()):
        return []  # a single seed has no interval; a single model has nothing to be ahead of
    intervals = {m: mean_ci(v) for m, v in values.items()}
    best = max(models, key=lambda m: intervals[m][0])
    low = intervals[best][0] - intervals[best][1]
    lines = [
        f"## Result: alignment on {split} prompts",
        "",
        "| model | mean ± 95% half-width | interval | vs the best: difference of means | Welch p | intervals "
        "| the difference's Welch 95% interval |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    overlapping = []
    for m in models:
        mean, half = intervals[m]
        if m == best:
            diff, p, relation, between = "", "", "(highest mean)", ""
        else:
            disjoint = mean + half < low
            overlapping += [] if disjoint else [m]
            diff = f"{intervals[best][0] - mean:+.4f}"
            p = f"{welch_p(values[best], values[m]):.2g}"
            relation = "disjoint" if disjoint else "overlap"
            between = "[{:+.4f}, {:+.4f}]".format(*welch_interval(values[best], values[m]))
        lines.append(
            f"| {m} | {mean:.4f} ± {half:.4f} | [{mean - half:.4f}, {mean + half:.4f}] | {diff} | {p} | {relation} "
            f"| {between} |"
        )
    counts = {len(v) for v in values.values()}
    seeds = (
        f"{counts.pop()} seeds per model"
        if len(counts) == 1
        else "seeds: " + ", ".join(f"{m} {len(values[m])}" for m in models)
    )
    if overlapping:
        verdict = (
            f"**{best} has the highest mean, but its interval overlaps "
            f"{'those of ' if len(overlapping) > 1 else 'that of '}{_join(overlapping)}: over these seeds the "
            f"comparison does not separate {best} from {'them' if len(overlapping) > 1 else 'it'}.**"
        )
    else:
        verdict = f"**{best} is ahead of every other model, with disjoint 95% intervals.**"
    return lines + ["", f"{verdict} ({seeds}.)", ""]


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _metric(report: dict[str, Any], split: str, key: str) -> float:
    r = report["prompt_sets"][split]
    if key == "clip_score":
        return float(r["clip_score"]["mean"])
    return float(r["alignment"]["all"] if key == "alignment" else r[key])


def _cell(values: list[float], scale: float) -> str:
    mean, ci = mean_ci([v * scale for v in values])
    return f"{mean:.4g}" if ci is None else f"{mean:.4g} ± {ci:.2g}"


def plot_curves(runs: list[dict[str, Any]], path: str) -> str:
    """Training losses against step, one panel per model (a GAN's d_loss and g_loss side by side), every seed a thin
    line and the seeds' mean with min-max bars; a matplotlib PNG (imagen_jax/evaluation/plots.py)."""
    from imagen_jax.evaluation import plots

    panels: dict[str, dict[str, list]] = {}
    for r in runs:
        # a results.json written before 2026-12-02 holds one list: the loss
        curve = r["curve"] if isinstance(r["curve"], dict) else {"loss": r["curve"]}
        for name, points in curve.items():
            panels.setdefault(r["model"], {}).setdefault(name, []).append((r["seed"], points))
    return plots.curves_figure(panels, path)


def plot_alignment(runs: list[dict[str, Any]], models: list[str], splits: list[str], path: str) -> str:
    """Alignment per model and prompt set, mean with its 95% Student-t interval (mean_ci) and each seed's value."""
    from imagen_jax.evaluation import plots

    values = {
        m: {s: [_metric(r["eval"], s, "alignment") for r in runs if r["model"] == m] for s in splits}
        for m in models
    }
    intervals = {m: {s: mean_ci(v) for s, v in per.items()} for m, per in values.items()}
    return plots.alignment_figure(values, intervals, path)


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for package in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "scipy", "ml-collections"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = "not installed"
    import jax

    versions["devices"] = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
    return versions


def write_report(args: argparse.Namespace, argv: list[str], runs: list[dict[str, Any]]) -> str:
    """<out>/report.md and <out>/results.json from the finished runs; returns the report's path."""
    out = args.out
    models = list(dict.fromkeys(r["model"] for r in runs))
    first = runs[0]["eval"]
    splits = list(first["prompt_sets"])
    space = first["feature_space"]
    with_clip = all("clip_score" in r["eval"]["prompt_sets"][s] for r in runs for s in splits)
    metrics = METRICS + ((CLIP_METRIC,) if with_clip else ())
    lines = [
        "# Baseline comparison on the built-in shapes data",
        "",
        f"{len(args.configs)} model{'s' if len(args.configs) > 1 else ''} x {args.seeds} seed(s) "
        f"({_seeds_text(args)}){_borrowed_text(args)}; budget: {_budget_text(args)}. Every number is the mean ± "
        "the half-width of its 95% Student-t confidence interval over seeds (a single seed shows no interval).",
        "",
        f"**Feature space of FID, KID, precision and recall: `{space}`** "
        f"({_space_text(first)}). Alignment is the shapes judge's accuracy (every attribute right) on the same "
        f"generated images. Each prompt set: {first['num_samples']} generated images against as many real "
        f"images of the same split and captions ({first['reference']}).",
        "",
    ]
    lines += _feature_net_lines(runs)
    lines += _budget_lines(runs, models)
    if args.tuning:
        lines += [
            f"Tuning (seed 0, before these runs): [{os.path.basename(args.tuning)}]"
            f"({os.path.relpath(args.tuning, out)}).",
            "",
        ]
    lines += verdict_lines(runs, models, "holdout" if "holdout" in splits else splits[-1])
    for split in splits:
        lines += [
            f"## {split} prompts",
            "",
            "| model | steps | images seen | " + " | ".join(t for _, t, _ in metrics) + " |",
        ]
        lines.append("|" + " --- |" * (3 + len(metrics)))
        for model in models:
            mine = [r for r in runs if r["model"] == model]
            cells = [
                _cell([_metric(r["eval"], split, key) for r in mine], scale) for key, _, scale in metrics
            ]
            steps = sorted({r["steps"] for r in mine})
            seen = sorted({r["steps"] * r["batch_size"] for r in mine})
            lines.append(
                f"| {model} | {','.join(map(str, steps))} | {','.join(map(str, seen))} | "
                + " | ".join(cells)
                + " |"
            )
        lines.append("")
    if with_clip:
        lines += _clip_lines(runs, splits)
    figure = plot_alignment(runs, models, splits, os.path.join(out, "alignment.png"))
    lines += [f"![alignment per model]({os.path.relpath(figure, out)})", ""]
    attributes = ("shape", "colour", "size", "position")
    lines += ["## Alignment per attribute", "", "| model | prompt set | " + " | ".join(attributes) + " |"]
    lines.append("|" + " --- |" * (2 + len(attributes)))
    for model in models:
        mine = [r for r in runs if r["model"] == model]
        for split in splits:
            cells = [
                _cell([r["eval"]["prompt_sets"][split]["alignment"][a] for r in mine], 1.0)
                for a in attributes
            ]
            lines.append(f"| {model} | {split} | " + " | ".join(cells) + " |")
    first_seed = args.first_seed
    lines += ["", f"## Samples (seed {first_seed}, the same prompts for every model)", ""]
    for split in splits:
        lines.append(f"{split} prompts:")
        lines.append("")
        lines.append(
            " ".join(
                f"![{r['model']}]({os.path.relpath(r['eval']['prompt_sets'][split]['grid'], out)})"
                for r in runs
                if r["seed"] == first_seed and "grid" in r["eval"]["prompt_sets"][split]
            )
        )
        lines.append("")
    lines += [f"## Sampling sweeps (FID vs alignment, seed {first_seed})", ""]
    for r in runs:
        if r["seed"] == first_seed and "sweep" in r["eval"]:
            sweep = r["eval"]["sweep"]
            lines.append(
                f"- {r['model']} ({sweep['option']}): ![sweep]({os.path.relpath(sweep['plot'], out)})"
            )
            for p in sweep["points"]:
                lines.append(
                    f"  - {sweep['option']}={p['value']}, {p['prompt_set']} prompts: FID {p['fid']:.4g}, "
                    f"alignment {p['alignment']['all']:.3f}, precision {p['precision']:.3f}, recall {p['recall']:.3f}"
                    + (f", CLIP score {p['clip_score']['mean']:.2f}" if "clip_score" in p else "")
                )
    lines += [
        "",
        "## Training curves",
        "",
        f"![training loss]({os.path.relpath(runs[0]['curves_png'], out)})",
        "",
    ]
    lines += [
        "## Reproduce",
        "",
        "This report:",
        "",
        "    " + shlex.join(["python", "experiments/compare_baselines.py", *argv]),
        "",
    ]
    lines += ["Each run (train, then evaluate with the settings in results.json):", ""]
    for r in runs:
        lines.append("    " + r["command"])
    lines += [
        "",
        "| run | model | seed | config | train s, this call | step s, logged | eval s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in runs:
        logged = r.get("logged_step_seconds")
        lines.append(
            f"| {os.path.relpath(r['workdir'], out)} | {r['model']} | {r['seed']} | "
            f"{os.path.relpath(os.path.join(r['workdir'], 'config.json'), out)} | {r['train_seconds']:.0f} | "
            f"{'-' if logged is None else f'{logged:.0f}'} | {r['eval']['seconds']:.0f} |"
        )
    lines += [
        "",
        "train s, this call: the wall seconds of the training call that made the run's record (a few when that "
        "call found the run already trained, and only resumed it); step s, logged: the run's own time in training steps from "
        "its metrics.jsonl (each interval's images over its logged images/s, compilation included), whichever "
        "process trained it. Runs trained side by side on one machine log slower steps than the probes.",
    ]
    lines += ["", *_version_lines(runs, out), ""]
    path = os.path.join(out, "report.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"argv": argv, "runs": runs}, f, indent=2)
    return path


def _feature_net_lines(runs: list[dict[str, Any]]) -> list[str]:
    """A warning, with the runs of each, when the runs' FID, KID, precision and recall were measured by different
    copies of the feature network: a copy trained again from the same spec on another CPU differs in its last
    bits, so its feature scale and features differ too. Nothing when every run used the same copy."""
    groups: dict[tuple[str, float | None], dict[str, list[int]]] = {}
    for r in runs:
        e = r["eval"]
        key = (e["feature_space"], e.get("feature_space_info", {}).get("feature_scale"))  # None: Inception's
        groups.setdefault(key, {}).setdefault(r["model"], []).append(r["seed"])
    if len(groups) == 1:
        return []
    lines = [
        f"**The feature network differs between runs** ({len(groups)} copies): FID, KID, precision and recall "
        "of runs in different groups were measured by different instruments and are not strictly comparable. "
        "Alignment, the judge's, is analytic and does not depend on it.",
        "",
    ]
    for (space, scale), seeds in groups.items():
        who = "; ".join(f"{m} seeds {seed_ranges(s)}" for m, s in seeds.items())
        lines.append(
            f"- `{space}`, feature scale {'not recorded' if scale is None else f'{scale:.6g}'}: {who}"
        )
    return lines + [""]


def _version_lines(runs: list[dict[str, Any]], out: str) -> list[str]:
    """The software each run was trained and evaluated with (its record's), one line per distinct set."""
    groups: dict[str, list[str]] = {}
    for r in runs:
        versions = r.get("versions")
        key = ", ".join(f"{k} {v}" for k, v in versions.items()) if versions else ""
        groups.setdefault(key, []).append(os.path.relpath(r["workdir"], out))
    if list(groups) == [""]:
        return ["Versions: not recorded by these runs."]
    if len(groups) == 1:
        return [f"Versions (every run): {next(iter(groups))}"]
    return ["Versions:", ""] + [
        f"- {', '.join(names)}: {key or 'not recorded'}" for key, names in groups.items()
    ]


def _clip_lines(runs: list[dict[str, Any]], splits: list[str]) -> list[str]:
    """The CLIP score's agreement with the judge: Pearson's r between the two over every run, per prompt set."""
    from imagen_jax.evaluation.clip_score import pearson, pearson_interval

    clip = runs[0]["eval"]["prompt_sets"][splits[0]]["clip_score"]["clip"]
    lines = [
        f"CLIP score: 100 x max(cosine, 0) by `{clip}` (eval.clip_weights), mean over the generated images. "
        "Its Pearson correlation with the judge's alignment across the runs:",
        "",
    ]
    for split in splits:
        pairs = [
            (_metric(r["eval"], split, "clip_score"), _metric(r["eval"], split, "alignment")) for r in runs
        ]
        r_value = pearson([a for a, _ in pairs], [b for _, b in pairs])
        low, high = pearson_interval(r_value, len(pairs))
        interval = (
            f" (95% interval by Fisher's z: {low:.2f} to {high:.2f})" if low == low else ""
        )  # nan: n <= 3
        lines.append(f"- {split} prompts: r = {r_value:.3f} over {len(pairs)} runs{interval}")
    return lines + [""]


def _borrowed_text(args: argparse.Namespace) -> str:
    """The --borrow models, said as what they are: another comparison's runs, not re-run."""
    if not args.borrow:
        return ""
    parts = [f"{b.model} seeds {seed_ranges(b.seeds)} from {b.out}" for b in args.borrow]
    return (
        f", beside {_join(parts)}: another comparison's runs of the same command, budget and evaluation, read from "
        "their records and not re-run here (independent seeds of the same runs)"
    )


def seed_ranges(seeds: list[int]) -> str:
    """[10, 11, 12, 15, 17, 18] -> "10-12,15,17-18" (parse_seed_list's form)."""
    spans: list[list[int]] = []
    for s in sorted(set(seeds)):
        if spans and s == spans[-1][1] + 1:
            spans[-1][1] = s
        else:
            spans.append([s, s])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _seeds_text(args: argparse.Namespace) -> str:
    first = args.first_seed
    return f"seed {first}" if args.seeds == 1 else f"seeds {first}-{first + args.seeds - 1}"


def _budget_lines(runs: list[dict[str, Any]], models: list[str]) -> list[str]:
    """The conversion of a wall-clock budget into steps, per model (none for a budget in images or steps)."""
    probed = {r["model"]: r for r in runs if r.get("throughput_probe")}
    if not probed:
        return []
    lines = [
        "Budget conversion: steps = minutes x 60 x images/s / batch, the images/s the median of a probe's logged "
        "rates (after its first interval, which holds compilation), probed back to back on the same machine:",
        "",
        "| model | probe images/s | probed (UTC) | batch | steps | images seen |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for model in models:
        if model in probed:
            r = probed[model]
            p = r["throughput_probe"]
            lines.append(
                f"| {model} | {p['images_per_sec']:.1f} | {p['measured']} | {r['batch_size']} | {r['steps']} | "
                f"{r['steps'] * r['batch_size']} |"
            )
    return lines + [""]


def _budget_text(args: argparse.Namespace) -> str:
    if args.budget_images:
        return f"{args.budget_images} training images per run"
    if args.budget_steps:
        return f"{args.budget_steps} training steps per run"
    return f"{args.budget_minutes} training minutes per run (steps from each model's probed throughput)"


def _space_text(report: dict[str, Any]) -> str:
    info = report["feature_space_info"]
    if report["feature_space"].startswith("shapes-cnn"):
        acc = info.get("validation_accuracy", {})
        return (
            "the penultimate layer of a small CNN trained once on shapes images to classify shape, colour, size "
            "and position; its validation accuracy " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items())
        )
    return f"pytorch-fid's InceptionV3 pool features, weights {info.get('weights')}"


# What each family logs as its training loss (the GAN: one per network).
LOSS_KEYS = ("loss", "d_loss", "g_loss")


def _curve(workdir: str) -> dict[str, list[tuple[int, float]]]:
    """{loss key: [(step, value), ...]} of every LOSS_KEYS entry the run's metrics.jsonl holds."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    curves = {key: [(r["step"], r[key]) for r in records if key in r] for key in LOSS_KEYS}
    return {key: points for key, points in curves.items() if points}


def logged_step_seconds(workdir: str, batch_size: int) -> float | None:
    """Seconds the run spent in training steps by its own metrics.jsonl: each logged interval's images over its
    logged images/s, summed (compilation included, checkpoints and sampling not), whichever process trained it and
    across resumes. An interval whose start is unknown (the first after a resume from an earlier step) is left
    out. None when the run logged no throughput."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    total, previous, counted = 0.0, 0, False
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            record = json.loads(line)
            step, rate = int(record["step"]), record.get("images_per_sec")
            if step > previous and rate:
                total += (step - previous) * batch_size / rate
                counted = True
            previous = step
    return total if counted else None


def train_and_evaluate(
    config,
    settings,
    config_path: str,
    seed: int,
    workdir: str,
    steps: int,
    overrides: list[str],
) -> dict[str, Any]:
    """Trains one (config, seed) to `steps` (resuming a run already there) and evaluates it under `settings`;
    its record."""
    from imagen_jax.workdir import require_checkpoint

    print(f"== {run_name(config_path)}, seed {seed}: {steps} steps into {workdir}", flush=True)
    train_seconds = _train(_main_argv(config_path, workdir, seed, overrides))
    reached = require_checkpoint(workdir)
    if reached != steps:  # a SIGTERM saves early and exits 0: never evaluate a half-trained run
        raise SystemExit(f"{workdir} stopped at step {reached} of {steps}; run the same command to resume.")
    report = evaluate_run(config, workdir, settings)
    return {
        "family": config.family,
        "config": config_path,
        "seed": seed,
        "steps": steps,
        "batch_size": int(config.train.batch_size),
        "workdir": workdir,
        "train_seconds": train_seconds,
        "logged_step_seconds": logged_step_seconds(workdir, int(config.train.batch_size)),
        "eval_settings": settings.to_dict(),
        "eval": report,
        "curve": _curve(workdir),
        "versions": _versions(),  # this process's, which trained and evaluated the run
    }


def model_plan(
    args: argparse.Namespace, config_path: str, may_probe: bool = True
) -> tuple[Any, list[str], int, dict[str, Any] | None]:
    """(the config at seed 0, the overrides of its every run, its steps under the budget, their probe or None)."""
    own = overrides_for(run_name(config_path), args.set, args.models)
    base = load_config(config_path, os.path.join(args.out, "runs", f"{run_name(config_path)}_seed0"), 0, own)
    steps, probe = steps_for_budget(args, config_path, int(base.train.batch_size), own, may_probe)
    return base, own + [f"train.steps={steps}"] + judging_off(base), steps, probe


def run_plan(
    args: argparse.Namespace,
    config_path: str,
    overrides: list[str],
    out: str,
    seed: int,
    first_config,
    first_seed: int,
) -> tuple[str, str, Any, Any]:
    """(workdir, training command, config, evaluation settings) of one run of the comparison in `out`."""
    workdir = os.path.join(out, "runs", f"{run_name(config_path)}_seed{seed}")
    command = "python -m imagen_jax.main " + shlex.join(_main_argv(config_path, workdir, seed, overrides))
    config = load_config(config_path, workdir, seed, overrides)
    return workdir, command, config, eval_settings(args, first_config, config, seed, first_seed)


def borrowed_runs(args: argparse.Namespace, first_config) -> list[dict[str, Any]]:
    """The records of --borrow's runs, each checked against the command and evaluation settings this call would
    give it in its own comparison's directory (with or without the sampling sweep, which the lender ran on its first
    seed only and which changes no other number); a run without such a record is an error (nothing is trained)."""
    runs = []
    for b in args.borrow:
        _, overrides, _, _ = model_plan(args, b.config, may_probe=False)
        for seed in b.seeds:
            workdir, command, config, settings = run_plan(  # first seed -1: the run without its sweep
                args, b.config, overrides, b.out, seed, first_config, -1
            )
            record = read_record(workdir, command, settings.to_dict()) or read_record(
                workdir, command, eval_settings(args, first_config, config, seed, seed).to_dict()
            )
            if record is None:
                raise SystemExit(
                    f"--borrow {b.config}: {os.path.join(workdir, RECORD)} is missing or was not made by\n  "
                    f"{command}\nunder this call's evaluation settings; a borrowed run must be one this call "
                    "would have made (same overrides, budget and evaluation), finished in its own comparison."
                )
            print(f"== {b.model}, seed {seed}: borrowed from its record {os.path.join(workdir, RECORD)}")
            runs.append({**record, "borrowed_from": b.out})
    return runs


def main(argv: list[str] | None = None) -> str:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.probe_only:
        for config_path in args.configs:
            probe = probe_throughput(
                args, config_path, overrides_for(run_name(config_path), args.set, args.models)
            )
            print(f"{run_name(config_path)}: {probe['images_per_sec']:.1f} images/s", flush=True)
        return args.throughput or os.path.join(args.out, "throughput.json")
    runs: list[dict[str, Any]] = []
    first_config = None
    for config_path in args.configs:
        model = run_name(config_path)
        base, overrides, steps, probe = model_plan(args, config_path)
        first_config = first_config or base
        for seed in args.seed_list:
            if args.run_seeds is not None and seed not in args.run_seeds:
                continue
            workdir, command, config, settings = run_plan(
                args, config_path, overrides, args.out, seed, first_config, args.first_seed
            )
            record = read_record(workdir, command, settings.to_dict())
            if record is None:
                record = train_and_evaluate(config, settings, config_path, seed, workdir, steps, overrides)
                record = {"model": model, "command": command, "throughput_probe": probe, **record}
                write_record(workdir, record)
            else:
                print(f"== {model}, seed {seed}: from its record {os.path.join(workdir, RECORD)}", flush=True)
            runs.append(record)
    if args.run_seeds is not None:
        print(f"records written for seeds {args.run_seeds}; the report: the same command without --run_seeds")
        return ""
    runs += borrowed_runs(args, first_config)
    curves = plot_curves(runs, os.path.join(args.out, "training_curves.png"))
    for r in runs:
        r["curves_png"] = curves
    path = write_report(args, argv, runs)
    print(f"report: {path}")
    return path


if __name__ == "__main__":
    main()

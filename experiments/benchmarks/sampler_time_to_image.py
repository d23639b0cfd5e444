"""Samplers compared on time-to-image (64x64, a ~3.5-5M-parameter U-Net, CPU) and on judge accuracy (a trained
quickstart workdir): ancestral 250 steps, DDIM 50, DPM-Solver++(2M) 20 and 25, Heun on 18 Karras levels.

(a) Speed. A U-Net built with imagen_jax.models.unet (dim 32, channel multipliers 1,2,4, 2 res blocks per level,
    self-attention over pixels + text at the lowest level; random init), conditioned on 16 random text tokens of
    width 64, sampled for ONE image through imagen_jax.diffusion.samplers.sample with classifier-free guidance
    in one batched call (guidance.classifier_free_guidance, so every model evaluation runs batch 2) and dynamic
    thresholding, v-prediction on the cosine schedule, as models/imagen.py generate does. Each sampler is
    compiled ahead of time (compile_s = lower + compile), then run once (first_run_s) and --repeats more times,
    interleaved across samplers so that load from other processes hits all alike (run_s = median).
(b) Quality. The EMA parameters of the latest checkpoint of --workdir, restored as `main.py` sample mode does
    (imagen_jax.experiment.build + restore), generate one image for each of --num-prompts held-out prompts
    (dataset.prompts(split="holdout", seed=sample.seed), the set sample mode judges) with the config's guidance
    scale and thresholding and the sampler/steps overridden; every sampler sees the same prompts and the same
    noise (by default the very noise sample mode uses, so the config's own sampler reproduces the held-out
    judge accuracy in <workdir>/samples/step_<N>.json). The shapes judge (imagen_jax.evaluation.alignment) scores every image; each sampler is
    compared with ancestral-250 on the same images' outcomes (paired: who wins where they disagree, exact
    two-sided sign-test p-value).

    python experiments/benchmarks/sampler_time_to_image.py --workdir /tmp/qs [--num-prompts 128] [--repeats 3]
    python experiments/benchmarks/sampler_time_to_image.py --skip-quality            # speed only, ~5 min
    python experiments/benchmarks/sampler_time_to_image.py --workdir /tmp/qs --skip-speed

Writes experiments/benchmarks/results/sampler_time_to_image.json (--out) and prints tables.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from imagen_jax.diffusion import samplers
from imagen_jax.diffusion.guidance import classifier_free_guidance
from imagen_jax.models.unet import UNet

DEFAULT_RUNS = "ancestral:250,ddim:50,dpmpp_2m:20,dpmpp_2m:25,heun:18"
DEFAULT_OUT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "results", "sampler_time_to_image.json"
)
REFERENCE_RUN = ("ancestral", 250)  # what the fast samplers are compared with


def parse_runs(text: str) -> list[tuple[str, int]]:
    """'ancestral:250,dpmpp_2m:20' -> [("ancestral", 250), ("dpmpp_2m", 20)], validated."""
    runs = []
    for item in text.split(","):
        name, _, steps = item.strip().partition(":")
        if name not in samplers.SAMPLERS or not steps.isdigit() or int(steps) < 1:
            raise argparse.ArgumentTypeError(
                f"bad sampler run {item!r}: write sampler:steps with sampler one of {samplers.SAMPLERS} "
                f"and steps a positive integer, e.g. {DEFAULT_RUNS}"
            )
        runs.append((name, int(steps)))
    if len(set(runs)) != len(runs):
        raise argparse.ArgumentTypeError(f"sampler runs repeat one another: {text}")
    return runs


def model_evaluations(sampler: str, steps: int) -> int:
    """Guided model calls per image: Heun's second-order steps call the model twice, the step to sigma = 0
    once; the other samplers call it once per step (t_end = 0)."""
    return 2 * steps - 1 if sampler == "heun" else steps


def run_name(sampler: str, steps: int) -> str:
    return f"{sampler}-{steps}"


# ----------------------------------------------------------------------------------------------- speed


def build_speed_model(args: argparse.Namespace) -> tuple[UNet, Any, jax.Array, jax.Array]:
    """(unet, params, text [1, L, D], text_mask [1, L]) for the speed benchmark; random init, fixed seed."""
    unet = UNet(
        dim=args.dim,
        channel_mult=(1, 2, 4),
        num_res_blocks=2,
        attn_levels=(2,),
        cross_attn_levels=(),
        head_dim=args.head_dim,
        cond_dim=args.cond_dim,
    )
    k_text, k_init = jax.random.split(jax.random.key(0))
    text = jax.random.normal(k_text, (1, args.text_tokens, args.text_width), jnp.float32)
    mask = jnp.ones((1, args.text_tokens), bool)
    image = jnp.zeros((1, args.image_size, args.image_size, 3), jnp.float32)
    variables = jax.jit(unet.init)(k_init, image, jnp.zeros((1,), jnp.float32), text, mask)
    params = nn.meta.unbox(variables["params"])
    return unet, params, text, mask


def make_generate(unet: UNet, sampler: str, steps: int, guidance: float, thresholding: str) -> Callable:
    """generate(params, text [B,L,D], mask [B,L], noise [B,H,W,3], rng) -> x0 [B,H,W,3], guided as
    models/imagen.py generate: [conditional; unconditional] in one U-Net call per evaluation."""

    def generate(params, text, mask, noise, rng):
        batch = noise.shape[0]

        def model_fn_with_drop(x_t, log_snr, drop_text):
            reps = x_t.shape[0] // batch
            tile = lambda a: jnp.concatenate([a] * reps, axis=0)
            return unet.apply({"params": params}, x_t, log_snr, tile(text), tile(mask), drop_text)

        model_fn = classifier_free_guidance(model_fn_with_drop, guidance)
        return samplers.sample(
            model_fn,
            noise,
            rng,
            sampler=sampler,
            steps=steps,
            schedule="cosine",
            prediction="v",
            thresholding=thresholding,
        )

    return generate


def benchmark_speed(args: argparse.Namespace) -> dict[str, Any]:
    """Compile and run times per sampler run, for one image; see the module docstring."""
    unet, params, text, mask = build_speed_model(args)
    num_params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
    noise = jax.random.normal(jax.random.key(1), (1, args.image_size, args.image_size, 3), jnp.float32)
    rng = jax.random.key(2)
    call_args = (params, text, mask, noise, rng)
    print(
        f"\n(a) speed: U-Net {num_params / 1e6:.2f}M parameters, {args.image_size}x{args.image_size}, "
        f"batch 1 (2 with guidance), guidance {args.guidance}, {args.thresholding} thresholding, "
        f"{args.repeats} timed runs each"
    )
    compiled, rows = {}, {}
    for sampler, steps in args.runs:
        fn = jax.jit(make_generate(unet, sampler, steps, args.guidance, args.thresholding))
        start = time.perf_counter()
        compiled[(sampler, steps)] = fn.lower(*call_args).compile()
        compile_s = time.perf_counter() - start
        start = time.perf_counter()
        image = compiled[(sampler, steps)](*call_args).block_until_ready()
        first_s = time.perf_counter() - start
        if not bool(jnp.all(jnp.isfinite(image))):
            raise RuntimeError(f"{run_name(sampler, steps)} produced non-finite values")
        rows[(sampler, steps)] = {"compile_s": compile_s, "first_run_s": first_s, "times": []}
        print(f"  compiled {run_name(sampler, steps)}: {compile_s:.1f} s, first run {first_s:.2f} s")
    for _ in range(args.repeats):
        for key, fn in compiled.items():
            start = time.perf_counter()
            fn(*call_args).block_until_ready()
            rows[key]["times"].append(time.perf_counter() - start)

    results = []
    for (sampler, steps), row in rows.items():
        evals = model_evaluations(sampler, steps)
        run_s = statistics.median(row["times"])
        results.append(
            {
                "sampler": sampler,
                "steps": steps,
                "model_evals": evals,
                "compile_s": round(row["compile_s"], 2),
                "first_run_s": round(row["first_run_s"], 3),
                "run_s": round(run_s, 3),
                "run_s_min": round(min(row["times"]), 3),
                "run_s_max": round(max(row["times"]), 3),
                "ms_per_eval": round(1000 * run_s / evals, 1),
            }
        )
    ratios = {}
    reference = rows.get(REFERENCE_RUN)
    if reference is not None:
        ref_s = statistics.median(reference["times"])
        for (sampler, steps), row in rows.items():
            if (sampler, steps) != REFERENCE_RUN:
                ratios[f"{run_name(*REFERENCE_RUN)} / {run_name(sampler, steps)}"] = round(
                    ref_s / statistics.median(row["times"]), 2
                )
    print_table(
        results,
        ("sampler", "steps", "model_evals", "compile_s", "first_run_s", "run_s", "ms_per_eval"),
    )
    for name, ratio in ratios.items():
        print(f"  time-to-image ratio {name}: {ratio}x")
    return {
        "model": {
            "num_params": num_params,
            "dim": args.dim,
            "channel_mult": [1, 2, 4],
            "num_res_blocks": 2,
            "attn_levels": [2],
            "head_dim": args.head_dim,
            "cond_dim": args.cond_dim,
            "text_tokens": args.text_tokens,
            "text_width": args.text_width,
            "image_size": args.image_size,
        },
        "guidance_scale": args.guidance,
        "thresholding": args.thresholding,
        "prediction": "v",
        "schedule": "cosine",
        "batch": 1,
        "repeats": args.repeats,
        "runs": results,
        "speed_ratios": ratios,
    }


# --------------------------------------------------------------------------------------------- quality


def sign_test_p(wins: int, losses: int) -> float:
    """Exact two-sided binomial (sign test) p-value of wins vs losses under p = 1/2."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


def load_trained(workdir: str) -> tuple[Any, Any, int]:
    """(experiment, EMA params, step) of the latest checkpoint in workdir, as main.py's sample mode reads it."""
    from imagen_jax import experiment
    from imagen_jax import workdir as workdir_lib

    config = workdir_lib.saved_config(workdir)
    if config is None:
        raise SystemExit(
            f"error: {workdir} holds no config.json: train it first "
            f"(python -m imagen_jax.main --config configs/quickstart.py --workdir {workdir}) or pass another "
            "--workdir, or --skip-quality."
        )
    step = workdir_lib.require_checkpoint(workdir)
    exp = experiment.build(config, workdir)
    checkpointer = exp.checkpointer()
    state, _ = exp.restore(checkpointer, step)
    checkpointer.close()
    return exp, state.ema_params, step


def benchmark_quality(args: argparse.Namespace) -> dict[str, Any]:
    """Judge accuracy per sampler run on the same held-out prompts and noise; see the module docstring."""
    from imagen_jax.evaluation.alignment import ATTRIBUTES, judge_scores
    from imagen_jax.sample import generate_for_prompts

    exp, params, step = load_trained(args.workdir)
    config = exp.config
    prompts = exp.dataset.prompts(args.num_prompts, split="holdout", seed=config.sample.seed)
    seed = config.sample.seed if args.seed is None else args.seed
    rng = jax.random.fold_in(jax.random.key(seed), 1)  # sample_and_judge's held-out noise, for seed
    overrides = {} if args.quality_thresholding is None else {"thresholding": args.quality_thresholding}
    thresholding = overrides.get("thresholding", config.sample.thresholding)
    print(
        f"\n(b) quality: {args.workdir} step {step} (EMA), {config.data.image_size}x{config.data.image_size}, "
        f"{config.diffusion.prediction}-prediction, guidance {config.sample.guidance_scale}, "
        f"{thresholding} thresholding, {len(prompts)} held-out prompts "
        f"({len(set(prompts))} distinct), same noise for every sampler"
    )
    outcomes: dict[tuple[str, int], list[dict[str, bool]]] = {}
    results = []
    for sampler, steps in args.runs:
        start = time.perf_counter()
        images = generate_for_prompts(
            exp, params, prompts, rng, chunk=args.chunk, sampler=sampler, steps=steps, **overrides
        )
        seconds = time.perf_counter() - start
        scores = judge_scores(images, prompts)
        outcomes[(sampler, steps)] = scores
        row = {"sampler": sampler, "steps": steps, "model_evals": model_evaluations(sampler, steps)}
        row.update({key: round(float(np.mean([s[key] for s in scores])), 4) for key in ATTRIBUTES})
        row["count"] = len(scores)
        row["wall_s"] = round(seconds, 1)
        results.append(row)
        print(f"  {run_name(sampler, steps)}: judge accuracy {row['all']:.3f} ({seconds:.0f} s)")

    paired = {}
    reference = outcomes.get(REFERENCE_RUN)
    if reference is not None:
        for key, scores in outcomes.items():
            if key == REFERENCE_RUN:
                continue
            wins = sum(s["all"] and not r["all"] for s, r in zip(scores, reference, strict=True))
            losses = sum(r["all"] and not s["all"] for s, r in zip(scores, reference, strict=True))
            paired[f"{run_name(*key)} vs {run_name(*REFERENCE_RUN)}"] = {
                "accuracy_difference": round((wins - losses) / len(prompts), 4),
                "only_this_right": wins,
                "only_reference_right": losses,
                "sign_test_p": round(sign_test_p(wins, losses), 4),
            }
    print_table(results, ("sampler", "steps", "model_evals", *ATTRIBUTES, "wall_s"))
    for name, row in paired.items():
        print(
            f"  {name}: {row['accuracy_difference']:+.3f} (right only here {row['only_this_right']}, "
            f"only with the reference {row['only_reference_right']}, sign test p = {row['sign_test_p']:.3f})"
        )
    return {
        "workdir": os.path.abspath(args.workdir),
        "checkpoint_step": step,
        "image_size": config.data.image_size,
        "prediction": config.diffusion.prediction,
        "schedule": config.diffusion.schedule,
        "guidance_scale": config.sample.guidance_scale,
        "thresholding": thresholding,
        "num_prompts": len(prompts),
        "distinct_prompts": len(set(prompts)),
        "runs": results,
        "paired_vs_reference": paired,
    }


# ------------------------------------------------------------------------------------------------- main


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    cells = [[str(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  " + "  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for r in cells:
        print("  " + "  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="/tmp/qs", help="trained quickstart workdir (quality part)")
    parser.add_argument("--runs", type=parse_runs, default=parse_runs(DEFAULT_RUNS), help="sampler:steps,...")
    parser.add_argument("--quality-runs", type=parse_runs, default=None, help="default: --runs")
    parser.add_argument("--num-prompts", type=int, default=128, help="held-out prompts judged per sampler")
    parser.add_argument("--chunk", type=int, default=64, help="prompts per generate call (quality)")
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="quality noise seed; default the workdir's sample.seed, whose noise (with --chunk 64) is the one "
        "sample mode judges its held-out prompts with",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs per sampler after the first (speed)"
    )
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--image-size", type=int, default=64, help="speed part")
    parser.add_argument("--dim", type=int, default=32, help="speed part: U-Net channels at full resolution")
    parser.add_argument("--cond-dim", type=int, default=128, help="speed part: U-Net conditioning width")
    parser.add_argument("--head-dim", type=int, default=32, help="speed part: attention head width")
    parser.add_argument("--text-tokens", type=int, default=16, help="speed part")
    parser.add_argument("--text-width", type=int, default=64, help="speed part")
    parser.add_argument(
        "--guidance", type=float, default=3.0, help="speed part: guidance scale (quickstart's)"
    )
    parser.add_argument(
        "--thresholding", default="dynamic", choices=("none", "static", "dynamic"), help="speed part"
    )
    parser.add_argument(
        "--quality-thresholding",
        default=None,
        choices=("none", "static", "dynamic"),
        help="quality part: override the workdir's sample.thresholding (an ablation)",
    )
    parser.add_argument("--out", default=DEFAULT_OUT, help="JSON results file")
    args = parser.parse_args(argv)
    if args.skip_speed and args.skip_quality:
        parser.error("--skip-speed and --skip-quality together leave nothing to run")
    for name in ("num_prompts", "chunk", "repeats", "image_size", "dim", "text_tokens", "text_width"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.guidance == 1.0:
        parser.error("--guidance 1 runs no guidance (a single conditional call); this benchmark times CFG")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    report: dict[str, Any] = {
        "command": "python experiments/benchmarks/sampler_time_to_image.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "jax": jax.__version__,
        "device": f"{jax.devices()[0].platform} ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores visible)",
    }
    print(f"# jax {jax.__version__} on {report['device']}")
    if not args.skip_speed:
        report["speed"] = benchmark_speed(args)
    if not args.skip_quality:
        quality_args = argparse.Namespace(**vars(args))
        quality_args.runs = args.quality_runs or args.runs
        report["quality"] = benchmark_quality(quality_args)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

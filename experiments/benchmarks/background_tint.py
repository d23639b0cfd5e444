"""Background tint and judge accuracy of trained single-stage shapes runs, under the run's sampling or another.

For each --workdir (a finished shapes run, e.g. the quickstart's), restores its latest checkpoint's EMA parameters,
samples the held-out prompts its report judges (sample.judge_prompts of them by default, sample.seed, the report's
chunk and noise), and prints one JSON row: the judge's accuracy and the backgrounds' error from the data's flat
(24, 24, 24) (evaluation/background.py: "tint", the mean background colour's distance, and "rms", in 0..255 units;
the data's own images score 0), and how the per-sample background offsets split into a cast all samples share
("offset_mean", a bias) and one each sample draws ("offset_std", per channel, beside "noise_mean_std": the standard
deviation of a 4-D standard-normal draw's per-channel spatial mean at the run's resolution, 127.5 / sqrt(H W) in the
same units). --sample KEY=VALUE (repeatable) samples another way, the training untouched: a sampling ablation on the
same weights. --zero_mean_noise is a diagnostic: every 4-D Gaussian draw of sampling (the initial noise; an
ancestral sampler's fresh noise too) gets its per-image, per-channel spatial mean removed, to see how much of the
backgrounds' colour is the noise's own mean carried through to the image.

python experiments/benchmarks/background_tint.py --workdir /tmp/qs --sample sample.sampler=ancestral \
    --sample sample.steps=50 --label ancestral50 --out experiments/benchmarks/results/background_tint.jsonl
"""

from __future__ import annotations

import argparse
import json
import time

from imagen_jax import parallel

parallel.skip_absent_tpu_runtime()  # before JAX starts: stay on the CPU where libtpu is installed for compiles

import jax  # noqa: E402
import numpy as np  # noqa: E402

from imagen_jax import experiment, sample  # noqa: E402
from imagen_jax import workdir as workdir_lib  # noqa: E402
from imagen_jax.evaluation.alignment import judge_accuracy  # noqa: E402
from imagen_jax.evaluation.background import background_offsets, summarize_offsets  # noqa: E402


def describe_sampler(options) -> str:
    """The diffusion sampler in words, or the family's sampling options for a one-pass generator (GAN, VAE)."""
    if "sampler" not in options:
        skip = ("prompts", "judge_prompts", "num_per_prompt", "seed")
        return (
            ", ".join(f"{k} {v}" for k, v in options.items() if k not in skip and v not in ("", ()))
            or "one pass"
        )
    return (
        f"{options.sampler} {options.steps} steps, guidance {options.guidance_scale}, "
        f"interval {tuple(options.get('guidance_interval', ()))}, {options.thresholding} thresholding"
    )


def remove_noise_means() -> None:
    """--zero_mean_noise: from here on, every 4-D jax.random.normal draw [N, H, W, C] has its per-(image, channel)
    spatial mean subtracted (a diagnostic: the sampler's noise without its lowest frequency)."""
    normal = jax.random.normal

    def zero_mean_normal(key, shape=(), dtype=float, *args, **kwargs):
        draw = normal(key, shape, dtype, *args, **kwargs)
        return draw - draw.mean(axis=(1, 2), keepdims=True) if len(shape) == 4 else draw

    if not getattr(normal, "zero_mean", False):
        zero_mean_normal.zero_mean = True
        jax.random.normal = zero_mean_normal


def measure(
    workdir: str,
    settings: list[str],
    prompts: int | None,
    step: int | None = None,
    zero_mean_noise: bool = False,
) -> dict:
    """One row: the run's checkpoint `step` (default: its latest) sampled for its held-out prompts with `settings`
    applied."""
    config = workdir_lib.saved_config(workdir)
    if config is None:
        raise SystemExit(f"{workdir} holds no config.json: give the workdir of a trained run.")
    if "stages" in config:
        raise SystemExit(f"{workdir} is a cascade: this script measures single-stage runs.")
    for item in settings:
        try:
            sample.set_sampling_option(config, item)
        except sample.SamplingError as err:
            raise SystemExit(f"--sample {err}") from None
    exp = experiment.build(config, workdir)
    count = int(prompts or config.sample.judge_prompts)
    if count <= 0:
        raise SystemExit(
            f"{workdir} judges no held-out prompts (sample.judge_prompts = 0): give --prompts N."
        )
    heldout = exp.dataset.prompts(count, split="holdout", seed=config.sample.seed)
    grid = len(config.sample.prompts) * int(config.sample.num_per_prompt)
    chunk = sample.report_chunk(grid, count)  # the report's chunk: the noise is drawn per chunk
    rng = jax.random.fold_in(jax.random.key(config.sample.seed), 1)  # as sample_and_judge's held-out judge
    if step is None:
        params, step = experiment.restore_latest(exp)
    else:
        checkpointer = exp.checkpointer()
        try:
            if step not in checkpointer.all_steps():
                raise SystemExit(f"{workdir} has no checkpoint at step {step}: {checkpointer.all_steps()}")
            params = exp.restore(checkpointer, step)[0].ema_params
        finally:
            checkpointer.close()
    if zero_mean_noise:  # after the build and restore: only sampling's draws change
        remove_noise_means()
    start = time.perf_counter()
    images = sample.generate_for_prompts(exp, params, heldout, rng, chunk=chunk)
    seconds = time.perf_counter() - start
    judge = judge_accuracy(images, heldout)
    offsets, rms = background_offsets(images)
    background = summarize_offsets(offsets, rms)
    return {
        "workdir": workdir,
        "seed": int(config.seed),
        "step": step,
        "sampling": [*settings, "zero_mean_noise"] if zero_mean_noise else settings,
        "sampler": describe_sampler(config.sample),
        "prompts": count,
        "heldout": round(judge["all"], 4),
        "shape": round(judge["shape"], 4),
        "colour": round(judge["colour"], 4),
        "tint": round(background["tint"], 3),
        "rms": round(background["rms"], 3),
        "measured_images": background["count"],
        "offset_mean": np.round(offsets.mean(axis=0), 2).tolist(),
        "offset_std": np.round(offsets.std(axis=0), 2).tolist(),
        "noise_mean_std": round(127.5 / float(np.sqrt(np.prod(np.shape(images)[1:3]))), 2),
        "sampling_seconds": round(seconds, 1),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", action="append", required=True, help="a trained run (repeatable)")
    parser.add_argument(
        "--sample", action="append", default=[], metavar="KEY=VALUE", help="a sample.* setting (repeatable)"
    )
    parser.add_argument(
        "--prompts", type=int, default=0, help="held-out prompts (default: sample.judge_prompts)"
    )
    parser.add_argument(
        "--step", type=int, default=None, help="a kept checkpoint's step (default: the latest)"
    )
    parser.add_argument(
        "--zero_mean_noise", action="store_true", help="diagnostic: sampling noise without its spatial mean"
    )
    parser.add_argument("--label", default="as trained", help="the rows' label (the sampling variant's name)")
    parser.add_argument("--out", default="", help="a .jsonl file the rows are appended to")
    args = parser.parse_args()
    for workdir in args.workdir:
        row = {
            "label": args.label,
            **measure(workdir, args.sample, args.prompts or None, args.step, args.zero_mean_noise),
        }
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()

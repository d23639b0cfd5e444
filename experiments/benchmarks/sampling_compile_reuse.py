"""Guided seconds per image of a sampling session, before and after sampling was compiled once per setting (issue 19).

One session is what training's report and an evaluation ask of the sampler, in order: the grid (the quickstart's 8
prompts x 4), the held-out judge (64 prompts, one chunk), then a guidance sweep over two more values on 64 prompts
each: 4 calls, 224 images, one sampler, steps and chunk shape per call. Each session runs in a fresh Python
process (cold caches), for both ways of calling the family's generate:

  before  jax.jit(functools.partial(family.generate, **options)) built on every call, as
          sample.generate_for_prompts did until 2026-12-02: every call traces and compiles again
  after   sample.generate_for_prompts (sample.compiled_generate): one compilation per (chunk shape, sampler,
          steps, thresholding); guidance_scale is traced, so the sweep reuses the held-out judge's program

The parameters are the quickstart's at its random init (what is timed does not depend on the weights), the
sampling settings the config's (dpmpp_2m, 20 steps, guidance 3, so two network passes per step).

python experiments/benchmarks/sampling_compile_reuse.py --repeats 3 \
    --out experiments/benchmarks/results/sampling_compile_reuse.json

Prints one JSON line per session and the medians; --out writes them with the load average around each session.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import fresh_process  # this folder: run as a script, it is on sys.path

CALLS = (("grid", 32, 64, 3.0), ("heldout", 64, 64, 3.0), ("sweep", 64, 64, 5.0), ("sweep", 64, 64, 7.0))


def session(mode: str, config_arg: str) -> dict:
    """Runs the CALLS once in this process; returns seconds per call and in all."""
    import functools

    import jax
    import numpy as np

    from imagen_jax import experiment, sample, workdir

    config = workdir.load_config_file(config_arg)
    exp = experiment.build(config, tempfile.mkdtemp(prefix="sampling_reuse_"))
    params = exp.init_state(jax.random.key(0)).ema_params
    prompts = exp.dataset.prompts(128, split="holdout", seed=0)

    def before(prompts, rng, chunk, **options):  # the code of sample.generate_for_prompts before issue 19
        embeddings, mask = (np.asarray(a) for a in exp.text_encoder.encode(prompts))
        chunk = min(chunk, len(prompts))
        generate = jax.jit(functools.partial(exp.family.generate, **options))
        images = []
        for index, start in enumerate(range(0, len(prompts), chunk)):
            pad = max(0, start + chunk - len(prompts))
            emb = np.concatenate([embeddings[start : start + chunk], np.repeat(embeddings[-1:], pad, 0)])
            msk = np.concatenate([mask[start : start + chunk], np.repeat(mask[-1:], pad, 0)])
            out = generate(params, emb, msk, jax.random.fold_in(rng, index))
            images.append(np.asarray(out)[: chunk - pad])
        return np.concatenate(images)

    def after(prompts, rng, chunk, **options):
        return sample.generate_for_prompts(exp, params, prompts, rng, chunk=chunk, **options)

    generate = before if mode == "before" else after
    calls, start = [], time.perf_counter()
    for name, count, chunk, guidance in CALLS:
        t, cached = time.perf_counter(), sample._compiled_generate._cache_size()
        images = generate(prompts[:count], jax.random.key(1), chunk, guidance_scale=guidance)
        compiled = 1 if mode == "before" else sample._compiled_generate._cache_size() - cached
        calls.append(
            {
                "call": name,
                "images": int(images.shape[0]),
                "guidance": guidance,
                "seconds": round(time.perf_counter() - t, 2),
                "compilations": int(compiled),
            }
        )
    total = time.perf_counter() - start
    images = sum(c["images"] for c in calls)
    return {
        "mode": mode,
        "seconds": round(total, 2),
        "images": images,
        "seconds_per_image": round(total / images, 4),
        "compilations": sum(c["compilations"] for c in calls),
        "calls": calls,
        "sampling": exp.family.sampling_summary(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="sessions per mode, each in a fresh process")
    parser.add_argument(
        "--config", default=os.path.join(os.path.dirname(__file__), "../../configs/shapes_base.py")
    )
    parser.add_argument("--out", default="")
    parser.add_argument("--one", default="", help=argparse.SUPPRESS)  # internal: run one session of this mode
    args = parser.parse_args()
    if args.one:
        fresh_process.emit(session(args.one, args.config))
        return

    rows = []
    for repeat in range(args.repeats):
        for mode in ("before", "after"):  # interleaved, so a change in the machine's load hits both
            load = os.getloadavg()
            row = fresh_process.child_result(__file__, "--one", mode, "--config", args.config) | {
                "repeat": repeat
            }
            row["loadavg_before"] = [round(x, 2) for x in load]
            row["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
            print(json.dumps(row), flush=True)
            rows.append(row)
    summary = {}
    for mode in ("before", "after"):
        mine = [r for r in rows if r["mode"] == mode]
        summary[mode] = {
            "median_seconds": statistics.median(r["seconds"] for r in mine),
            "median_seconds_per_image": statistics.median(r["seconds_per_image"] for r in mine),
        }
    summary["speedup"] = round(summary["before"]["median_seconds"] / summary["after"]["median_seconds"], 2)
    print(json.dumps(summary))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(
                {
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "calls": CALLS,
                    "summary": summary,
                    "sessions": rows,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()

"""CLIP reranking and CLIP score against the analytic judge, on a trained single-stage shapes workdir (the quickstart)
and a CLIP (a family=clip workdir such as configs/clip_shapes.py's, or a Hugging Face CLIP directory).

1. Reranking: for each of --candidates N, the held-out colour-shape prompts are sampled N times each and the sample
   with the highest CLIP score is kept (rerank.best_of, as sample.rerank=N does); the judge's held-out accuracy of
   the kept images and the wall time (compilation excluded: a warm-up call first).
2. Does the CLIP score follow the judge? Per sample: over the largest N's candidates, the ROC AUC of the CLIP score
   for judged-right against judged-wrong samples and the point-biserial correlation. Across models: the mean CLIP
   score and the judge's accuracy of one sample per prompt for every (checkpoint, guidance) pair, and their Pearson
   correlation. Timings include the CLIP scoring; the machine this ran on may have been shared (say so).

python experiments/benchmarks/clip_rerank.py --workdir /tmp/qs22 --clip /tmp/clip21 \
    --out experiments/benchmarks/results/clip_rerank.json
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from imagen_jax import experiment, rerank, sample
from imagen_jax import workdir as workdir_lib
from imagen_jax.evaluation import alignment, clip_score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="a trained single-stage shapes workdir")
    parser.add_argument(
        "--clip", required=True, help="a family=clip workdir or a Hugging Face CLIP directory"
    )
    parser.add_argument("--prompts", type=int, default=128, help="held-out colour-shape prompts")
    parser.add_argument("--candidates", default="1,4,16")
    parser.add_argument(
        "--steps", default="", help="checkpoints for the across-models correlation (all kept)"
    )
    parser.add_argument(
        "--guidance", default="1,3,5", help="guidance scales for the across-models correlation"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    exp = experiment.build(workdir_lib.saved_config(args.workdir), args.workdir)
    params, step = experiment.restore_latest(exp, ema=True)
    scorer = rerank.open_scorer(args.clip)
    prompts = exp.dataset.prompts(args.prompts, split="holdout", seed=args.seed)
    drawn = {}

    def generate(p, key, **kw):  # keeps the last call's candidates for the per-sample analysis
        drawn["images"] = sample.generate_for_prompts(exp, params, p, key, **kw)
        return drawn["images"]

    sample.generate_for_prompts(exp, params, prompts[:64], jax.random.key(99))  # compile outside the timings
    clip_score.clip_scores(scorer, np.zeros((2, 32, 32, 3), np.float32), prompts[:2])
    result = {
        "workdir": args.workdir,
        "step": step,
        "clip": scorer.name,
        "prompts": len(prompts),
        "rerank": [],
    }
    result["sampling"] = exp.family.sampling_summary()
    every = None
    for n in [int(c) for c in args.candidates.split(",")]:
        start = time.perf_counter()
        kept, kept_scores, scores = rerank.best_of(generate, scorer, prompts, n, jax.random.key(args.seed))
        seconds = time.perf_counter() - start
        judge = alignment.judge_accuracy(kept, prompts)
        row = {
            "candidates": n,
            "heldout_judge": judge["all"],
            "per_attribute": {k: judge[k] for k in ("shape", "colour", "size", "position")},
            "clip_score_kept": float(kept_scores.mean()),
            "clip_score_candidates": float(scores.mean()),
            "seconds": round(seconds, 1),
            "seconds_per_prompt": round(seconds / len(prompts), 3),
        }
        print(json.dumps(row), flush=True)
        result["rerank"].append(row)
        every = (n, scores, drawn["images"])
    # per sample: the largest N's candidates, judged one by one
    n, scores, candidates = every
    repeated = [p for p in prompts for _ in range(n)]
    right = np.asarray([s["all"] for s in alignment.judge_scores(candidates, repeated)], bool)
    flat = scores.reshape(-1)
    result["per_sample"] = {
        "samples": int(flat.size),
        "judged_right": float(right.mean()),
        "auc": clip_score.roc_auc(flat[right], flat[~right]) if right.any() and (~right).any() else None,
        "point_biserial_r": clip_score.pearson(flat, right.astype(float)),
    }
    print(json.dumps(result["per_sample"]), flush=True)
    # across models: checkpoints x guidance scales, one sample per prompt
    checkpointer = exp.checkpointer()
    steps = [int(s) for s in args.steps.split(",")] if args.steps else checkpointer.all_steps()
    points = []
    for ckpt in steps:
        state, _ = exp.restore(checkpointer, ckpt)
        for guidance in [float(g) for g in args.guidance.split(",")]:
            images = sample.generate_for_prompts(
                exp, state.ema_params, prompts, jax.random.key(args.seed + 1), guidance_scale=guidance
            )
            point = {
                "step": ckpt,
                "guidance_scale": guidance,
                "heldout_judge": alignment.judge_accuracy(images, prompts)["all"],
                "clip_score": float(clip_score.clip_scores(scorer, images, prompts).mean()),
            }
            print(json.dumps(point), flush=True)
            points.append(point)
    checkpointer.close()
    result["across_models"] = {
        "points": points,
        "pearson_r": clip_score.pearson(
            [p["clip_score"] for p in points], [p["heldout_judge"] for p in points]
        ),
    }
    print(json.dumps({"pearson_r": result["across_models"]["pearson_r"]}), flush=True)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()

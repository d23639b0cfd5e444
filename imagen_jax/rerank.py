"""Either CLIP from a path, and reranking with it (DALL-E's use of CLIP).

open_scorer(path): a Hugging Face CLIP checkpoint directory (config.json with model_type "clip") or a workdir
trained with family "clip" (its saved config, frozen text encoder and latest EMA parameters) as an
evaluation.clip_score.Scorer. `reranking` wraps a generate function so that sample.rerank = N draws N candidates
per prompt and keeps the one with the highest CLIP score (sample.clip_weights names the CLIP).
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from imagen_jax import experiment
from imagen_jax import workdir as workdir_lib
from imagen_jax.evaluation import clip_score


def family_scorer(exp: experiment.Experiment, params: Any) -> clip_score.FamilyClipScorer:
    """A family=clip experiment with its parameters as a scorer (its own frozen text encoder encodes the texts)."""
    name = f"clip-workdir:{os.path.basename(os.path.normpath(exp.workdir))}"
    return clip_score.FamilyClipScorer(exp.family, params, exp.text_encoder.encode, name)


@functools.lru_cache(maxsize=4)
def open_scorer(path: str, key: str = "sample.clip_weights") -> clip_score.Scorer:
    """The CLIP at `path` as a scorer (opened once per process and path)."""
    path = os.path.abspath(os.path.expanduser(path))
    if clip_score.clip_kind(path, key) == "hf":
        return clip_score.HfClipScorer(path)
    config = workdir_lib.saved_config(path)
    exp = experiment.build(config, path)
    params, step = experiment.restore_latest(exp, ema=True)
    scorer = family_scorer(exp, params)
    scorer.name = f"{scorer.name}@{step}"
    return scorer


def best_of(
    generate: Callable[..., np.ndarray],
    scorer: clip_score.Scorer,
    prompts: Sequence[str],
    n: int,
    rng: jax.Array,
    **kwargs: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images [P, H, W, 3], the kept images' CLIP scores [P], every candidate's [P, n]): n candidates per prompt
    from generate(prompts, rng, **kwargs), the best by CLIP score kept."""
    prompts = list(prompts)
    repeated = [p for p in prompts for _ in range(n)]
    candidates = generate(repeated, rng, **kwargs)
    scores = clip_score.clip_scores(scorer, candidates, repeated).reshape(len(prompts), n)
    best = np.argmax(scores, axis=1)
    images = candidates.reshape(len(prompts), n, *candidates.shape[1:])[np.arange(len(prompts)), best]
    return images, scores[np.arange(len(prompts)), best], scores


def reranking(generate_for_prompts: Callable[..., np.ndarray], sample: Any) -> Callable[..., np.ndarray]:
    """generate_for_prompts(exp, params, prompts, rng, **options) itself when sample.rerank is 1; else the same
    call drawing sample.rerank candidates per prompt and keeping the best by sample.clip_weights' CLIP score
    (it prints the kept and the average candidate's score)."""
    n = int(clip_score.sample_option(sample, "rerank"))
    if n == 1:
        return generate_for_prompts
    scorer = open_scorer(str(clip_score.sample_option(sample, "clip_weights")))

    def generate(exp, params, prompts, rng, **options):
        start = time.time()
        images, kept, scores = best_of(
            lambda p, key, **kw: generate_for_prompts(exp, params, p, key, **kw),
            scorer,
            prompts,
            n,
            rng,
            **options,
        )
        print(
            f"reranked {len(prompts)} prompts, best of {n} by {scorer.name}: CLIP score {kept.mean():.2f} "
            f"(candidates {scores.mean():.2f}), {time.time() - start:.1f} s"
        )
        return images

    return generate


def report_heldout_auc(
    exp: experiment.Experiment, params: Any, step: int, out_dir: str | None = None
) -> dict:
    """A family=clip experiment's held-out ROC AUC (clip_score.heldout_auc on sample.judge_prompts images),
    printed and written to <out_dir>/clip_<step>.json (default <workdir>/samples)."""
    n = int(exp.config.sample.judge_prompts)
    if n < 1:
        return {}
    report = clip_score.heldout_auc(
        family_scorer(exp, params), exp.dataset, n, seed=int(exp.config.sample.seed)
    )
    report["step"] = int(step)
    out_dir = out_dir or os.path.join(exp.workdir, "samples")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"clip_{step}.json")
    if jax.process_index() == 0:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
    print(clip_score.format_auc(report))
    print(f"clip: {path}")
    return report

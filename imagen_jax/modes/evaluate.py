"""mode=eval: FID, KID, precision/recall and text alignment of a trained workdir's EMA parameters, written to
<workdir>/eval/ (the measurements: evaluation/run.py)."""

import os
from typing import Any

import ml_collections

from imagen_jax import experiment, rerank, sample
from imagen_jax import workdir as workdir_lib
from imagen_jax.evaluation import run as eval_run
from imagen_jax.models.registry import get_family


def subject(exp: experiment.Experiment, params: Any) -> eval_run.Subject:
    """The experiment's family with `params`, as evaluation/run.py evaluates it."""
    return eval_run.Subject(
        generate=lambda prompts, key, **options: sample.generate_for_prompts(
            exp, params, prompts, key, **options
        ),
        family=exp.config.family,
        sampling=exp.family.sampling_summary(),
        sample_defaults=exp.config.sample.to_dict() if "sample" in exp.config else {},
    )


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    prompts: list[str] | None = None,
    settings: ml_collections.ConfigDict | None = None,
) -> dict[str, Any]:
    """Restores the latest checkpoint's EMA parameters, evaluates with `settings` (default: the config's eval
    section), prints the numbers and where they were written."""
    if get_family(config).capabilities.staged:
        raise workdir_lib.UserError(
            "mode=eval evaluates single-stage experiments; a cascade is not supported yet (sample it with "
            "mode=sample)."
        )
    settings = eval_run.settings_of(config) if settings is None else settings
    eval_run.check_settings(settings)
    eval_run.check_sweep(settings, config)
    workdir_lib.check_same_experiment(workdir, config, "evaluate")
    workdir_lib.require_checkpoint(workdir)
    exp = experiment.build(config, workdir)
    params, step = experiment.restore_latest(exp, ema=True)
    print(f"Evaluating the EMA parameters at step {step} ({settings.num_samples} samples per prompt set) ...")
    clip = rerank.open_scorer(settings.clip_weights, "eval.clip_weights") if settings.clip_weights else None
    report = eval_run.evaluate(
        subject(exp, params), exp.dataset, exp.config.data.image_size, exp.workdir, step, settings, clip=clip
    )
    for line in eval_run.format_report(report):
        print(line)
    print(f"eval: {os.path.join(exp.workdir, 'eval', f'{step}.json')}")
    return report

"""mode=sample: samples a trained workdir (its saved config is used when --config is omitted; a --config of another
experiment is refused, naming the keys) for the config's prompts or the --prompt ones, writes the grid into
<workdir>/sample/ (never over the training run's samples/, so it may run while the workdir trains) and prints the
judge's verdict; a cascade is sampled stage after stage (cascade.py)."""

import os

import ml_collections

from imagen_jax import cascade, experiment, sample
from imagen_jax import workdir as workdir_lib
from imagen_jax.models.registry import get_family

PyTree = object
OUT_DIR = "sample"  # under the workdir: this mode's grids, apart from the training run's samples/


def report_samples(
    exp: experiment.Experiment, params: PyTree, step: int, prompts: list[str], out_dir: str | None = None
) -> None:
    """Samples the grid and the held-out judge prompts with `params` and prints where and how well (the grid in
    out_dir, default <workdir>/samples)."""
    print(f"Sampling with the EMA parameters at step {step} ({exp.family.sampling_summary()}) ...")
    result = sample.sample_and_judge(exp, params, step, prompts=prompts or None, out_dir=out_dir)
    print(f"samples: {result['grid']} (captions in {os.path.splitext(result['grid'])[0]}.txt)")
    if "edit_grid" in result:
        print(f"input, mask and results: {result['edit_grid']}")
    print(sample.format_judge("judge accuracy", result["grid_judge"]))
    if "heldout_judge" in result:
        print(sample.format_judge("held-out judge accuracy", result["heldout_judge"]))
        print(sample.format_background("held-out backgrounds", result["heldout_background"]))


def report_cascade(
    exp: experiment.Experiment,
    prompts: list[str],
    stop: str = "",
    after_training: bool = False,
    out_dir: str | None = None,
) -> None:
    """Samples the cascade up to `stop` and prints where every stage's PNG grid went (out_dir, default
    <workdir>/samples). After training a stage whose earlier stages are not trained yet, says so instead of
    failing."""
    try:
        result = cascade.sample_cascade(exp, prompts or None, stop=stop, out_dir=out_dir)
    except sample.SamplingError as err:
        if not after_training:
            raise
        print(f"No cascade samples yet: {err}")
        return
    for name, path in result.grids.items():
        print(f"stage {name} (step {result.steps[name]}): {path}")
    if result.edit_grid:
        print(f"input, mask and results: {result.edit_grid}")
    print(sample.format_judge(f"judge accuracy at stage {result.final_stage}", result.grid_judge))
    if result.heldout_judge is not None:
        print(sample.format_judge("held-out judge accuracy", result.heldout_judge))
        print(sample.format_background("held-out backgrounds", result.heldout_background))


def run(config: ml_collections.ConfigDict, workdir: str, prompts: list[str]) -> None:
    workdir_lib.check_same_experiment(workdir, config, "sample")
    out_dir = os.path.join(workdir, OUT_DIR)
    if get_family(config).capabilities.staged:
        report_cascade(experiment.build(config, workdir), prompts, out_dir=out_dir)
        return
    workdir_lib.require_checkpoint(workdir)  # before building anything in the workdir
    exp = experiment.build(config, workdir)
    params, step = experiment.restore_latest(exp, ema=True)
    report_samples(exp, params, step, prompts, out_dir=out_dir)

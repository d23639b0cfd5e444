"""mode=train: trains (resuming from the workdir's last checkpoint), then samples and judges; a cascade trains
config.train_stage and samples the stages trained so far; a family that reconstructs reports its held-out
reconstructions; a CLIP (a family that generates nothing) reports its held-out ROC AUC."""

import os

import ml_collections

from imagen_jax import experiment, rerank
from imagen_jax import workdir as workdir_lib
from imagen_jax.evaluation.reconstruction import reconstruction_report
from imagen_jax.modes.sample import report_cascade, report_samples
from imagen_jax.training import trainer


def run(config: ml_collections.ConfigDict, workdir: str, prompts: list[str]) -> None:
    workdir_lib.prepare_for_training(workdir, config)
    exp = experiment.build(config, workdir)
    state, step, preempted = trainer.train(exp)
    if preempted:
        return
    if exp.family.capabilities.staged:
        report_cascade(exp, prompts, stop=config.train_stage, after_training=True)
        return
    if not exp.family.capabilities.generates:
        rerank.report_heldout_auc(exp, state.ema_params, step)
        return
    report_samples(exp, state.ema_params, step, prompts)
    if exp.family.capabilities.reconstructs:
        report = reconstruction_report(
            exp.family.reconstruct,
            state.ema_params,
            exp.dataset,
            exp.text_encoder.encode,
            os.path.join(exp.workdir, "samples"),
            step,
            seed=config.sample.seed,
        )
        for key, value in report.items():
            print(f"{key}: {value}")

"""The one entry point: python -m imagen_jax.main --config configs/<experiment>.py --workdir <dir> [--config.k=v]

Modes (config.mode): train (resumes from the workdir's last checkpoint, then samples and judges), sample
(reads a trained workdir back; its saved config is used when --config is omitted), encode_text (precomputes
the text embeddings of the dataset's captions into the cache that train and sample read), eval (FID, KID,
precision/recall and text alignment of a trained workdir into <workdir>/eval/; evaluation/run.py).
"""

import json
import os
import sys

from imagen_jax import workdir as workdir_lib


def _run(config, workdir: str, prompts: list[str]) -> None:
    from imagen_jax import experiment, parallel, sample

    mesh, train = config.get("mesh", {}), config.train
    parallel.split_host_cpu(  # one JAX device per CPU core, where the config asks; before JAX starts
        int(mesh.get("cpu_devices", 0)), int(train.batch_size), int(train.get("grad_accum_steps", 1))
    )
    parallel.initialize_distributed(config.get("distributed"))  # multi-host runs; before any other JAX use

    workdir_lib.check_config(config, prompts)
    if config.mode == "describe":  # sizes and costs of every stage, nothing trained or allocated
        from imagen_jax.models.family import describe

        for row in describe(config):
            print(json.dumps(row), flush=True)
        return
    cascade = "stages" in config  # a cascade trains one stage per run and samples all of them
    if config.mode == "eval":  # FID/KID/precision/recall and alignment into <workdir>/eval/
        from imagen_jax.evaluation import run as eval_run

        eval_run.run_mode(config, workdir)
        return
    if config.mode == "encode_text":
        workdir_lib.prepare_for_training(workdir, config)  # the cache belongs to this experiment's text encoder
        _encode_text(config, workdir, prompts)
        return
    if config.mode == "train":
        workdir_lib.prepare_for_training(workdir, config)
        exp = experiment.build(config, workdir)
        from imagen_jax.training import trainer

        state, step, preempted = trainer.train(exp)
        if preempted:
            return
        if cascade:
            _sample_cascade(exp, prompts, stop=config.train_stage, after_training=True)
            return
        params = state.ema_params
    elif cascade:
        _sample_cascade(experiment.build(config, workdir), prompts)
        return
    else:
        step = workdir_lib.require_checkpoint(workdir)  # before building anything in the workdir
        exp = experiment.build(config, workdir)
        checkpointer = exp.checkpointer()
        state, _ = exp.restore(checkpointer, step)
        checkpointer.close()
        params = state.ema_params
    print(f"Sampling with the EMA parameters at step {step} ({exp.family.sampling_summary()}) ...")
    result = sample.sample_and_judge(exp, params, step, prompts=prompts or None)
    print(f"samples: {result['grid']} (captions in {os.path.splitext(result['grid'])[0]}.txt)")
    print(sample.format_judge("judge accuracy", result["grid_judge"]))
    if "heldout_judge" in result:
        print(sample.format_judge("held-out judge accuracy", result["heldout_judge"]))
    after_training = getattr(exp.family, "after_training", None)  # optional family hook (models/family.py)
    if config.mode == "train" and after_training is not None:
        for key, value in after_training(exp, params, step).items():
            print(f"{key}: {value}")


def _encode_text(config, workdir: str, prompts: list[str]) -> None:
    """Precomputes the T5 embeddings of the dataset's captions and the sampling prompts into the cache that
    training and sampling then read (text.cache_dir, or <workdir>/text/cache)."""
    from imagen_jax.data import pipeline
    from imagen_jax.text import encoder as text_encoder

    dataset = pipeline.build_dataset(config)
    encoder = text_encoder.build_text_encoder(config.text, workdir, corpus=dataset.caption_corpus)
    sample = config.sample
    captions = [""] + list(prompts or sample.prompts) + dataset.caption_corpus()
    if sample.judge_prompts:
        captions += dataset.prompts(sample.judge_prompts, split="holdout", seed=sample.seed)
    directory = text_encoder.encode_captions_to_cache(
        encoder, captions, text_encoder.text_cache_dir(config.text, workdir), config.text.encode_batch_size
    )
    print(
        f"text embeddings: {len(set(captions))} distinct captions cached in {directory} "
        f"({encoder.num_model_calls} encoder calls this run); training and sampling read them from there."
    )


def _sample_cascade(exp, prompts: list[str], stop: str = "", after_training: bool = False) -> None:
    """Samples the cascade up to `stop` and prints where every stage's PNG grid went. After training a stage
    whose earlier stages are not trained yet, says so instead of failing."""
    from imagen_jax import sample

    try:
        result = sample.sample_cascade(exp, prompts or None, stop=stop)
    except sample.SamplingError as err:
        if not after_training:
            raise
        print(f"No cascade samples yet: {err}")
        return
    for name, path in result["grids"].items():
        print(f"stage {name} (step {result['steps'][name]}): {path}")
    print(sample.format_judge(f"judge accuracy at stage {result['final_stage']}", result["grid_judge"]))
    if "heldout_judge" in result:
        print(sample.format_judge("held-out judge accuracy", result["heldout_judge"]))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    try:
        config, workdir, prompts = workdir_lib.parse_command_line(argv)
        _run(config, workdir, prompts)
    except workdir_lib.USER_ERRORS as err:
        if os.environ.get("IMAGEN_JAX_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

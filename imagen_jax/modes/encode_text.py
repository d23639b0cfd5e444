"""mode=encode_text: precomputes the T5 embeddings of the dataset's captions and the sampling prompts into the cache
that training and sampling then read (text.cache_dir, or <workdir>/text/cache). A pretrained encoder runs sharded
over each process's devices by mesh.logical_axis_rules, as in training (experiment.text_placement)."""

import ml_collections

from imagen_jax import experiment
from imagen_jax import workdir as workdir_lib
from imagen_jax.data import pipeline
from imagen_jax.text import encoder as text_encoder


def run(config: ml_collections.ConfigDict, workdir: str, prompts: list[str]) -> None:
    workdir_lib.prepare_for_training(workdir, config)  # the cache belongs to this experiment's text encoder
    dataset = pipeline.build_dataset(config)
    encoder = text_encoder.build_text_encoder(
        config.text, workdir, dataset.caption_corpus, *experiment.text_placement(config)
    )
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

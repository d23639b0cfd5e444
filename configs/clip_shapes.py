"""A CLIP trained on the built-in shapes data (family "clip"): shapes_base's data, frozen text encoder, trainer
and checkpoints, a small ViT over the 32x32 images and a transformer over the text encoder's token embeddings,
symmetric InfoNCE with a learned temperature (imagen_jax/models/contrastive.py).

python -m imagen_jax.main --config configs/clip_shapes.py --workdir /tmp/clip
python -m imagen_jax.main --config configs/clip_shapes.py:tiny --workdir /tmp/clip_tiny   # seconds, for tests

After training it prints the ROC AUC with which its score separates held-out colour-shape images' own captions
from captions with one attribute changed (sample.judge_prompts images). Point eval.clip_weights or
sample.clip_weights (reranking) at the workdir to score another model's samples with it.
"""

import ml_collections

from imagen_jax.config_files import parse_arg, sibling


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = parse_arg(arg, tiny=False)
    # shapes_base's data, text, sample and mesh sections: the same captions and frozen text encoder
    c = sibling(__file__, "shapes_base").get_config("tiny" if variant.tiny else None)
    c.family = "clip"
    del c.diffusion, c.eval

    c.model = ml_collections.ConfigDict()
    c.model.patch_size = 4  # 32x32 -> 8x8 patches
    c.model.projection_dim = 64
    c.model.vision = ml_collections.ConfigDict()
    c.model.vision.width = 96
    c.model.vision.layers = 4
    c.model.vision.heads = 4
    c.model.vision.mlp_dim = 192
    c.model.vision.activation = "gelu"  # quick_gelu | gelu
    # 3x3 conv + GELU layer(s) at full resolution before the patches; () = a plain ViT. Without it the held-out
    # shape AUC was 0.79 (overall 0.943) while seen pairs scored 1.000: the linear patch embedding ties a shape's
    # response to its colour, so unseen colour-shape pairs were misread (experiments/benchmarks/README.md).
    c.model.vision.stem_channels = (32,)
    c.model.text = ml_collections.ConfigDict()
    c.model.text.width = 64
    c.model.text.layers = 2
    c.model.text.heads = 4
    c.model.text.mlp_dim = 128
    c.model.text.activation = "gelu"

    c.train.steps = 1500
    c.train.batch_size = 64
    c.train.learning_rate = 1e-3
    c.train.warmup_steps = 100
    c.train.ema_decay = 0.995
    c.train.checkpoint_every = 500
    c.sample.judge_prompts = (
        512  # held-out images whose right and wrong captions the AUC after training scores
    )

    if variant.tiny:
        c.model.patch_size = 4  # 16x16 -> 4x4 patches
        c.model.projection_dim = 16
        for tower in (c.model.vision, c.model.text):
            tower.width, tower.layers, tower.heads, tower.mlp_dim = 16, 1, 2, 32
        c.model.vision.stem_channels = (4,)
        c.train.steps = 4
        c.train.batch_size = 8
        c.train.warmup_steps = 2
        c.train.checkpoint_every = 2
        c.sample.judge_prompts = 16
    return c

"""Imagen on the built-in shapes data: the name the baseline comparison uses for configs/shapes_base.py (32x32, 500 steps of
batch 32, the same data, text encoder and sampling prompts as configs/gan_shapes.py and configs/vae_shapes.py).

python experiments/compare_baselines.py --configs configs/imagen_shapes.py,configs/gan_shapes.py,configs/vae_shapes.py \
    --seeds 3 --budget_minutes 20 --out DIR
Variants are shapes_base's (configs/imagen_shapes.py:tiny).
"""

import ml_collections

from imagen_jax.config_files import sibling


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return sibling(__file__, "shapes_base").get_config(arg)

"""The VAE baseline at 64x64 on COCO captions from TFDS (data read from a local TFDS directory; nothing is
downloaded): the model of configs/vae_shapes.py one level deeper, so the latent grid stays 8x8.

python -m imagen_jax.main --config configs/vae_coco64.py --workdir /tmp/vae_coco64
python -m imagen_jax.main --config configs/vae_coco64.py:vq --workdir /tmp/vq_coco64
"""

import ml_collections

from imagen_jax.config_files import parse_arg, sibling


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    vae_shapes = sibling(__file__, "vae_shapes")
    own = {name: default for name, default in vae_shapes.VARIANTS.items() if name != "px16"}  # 64x64 here
    variant = parse_arg(arg, **own)
    c = vae_shapes.get_config(arg)
    c.data.source = "tfds"
    c.data.tfds_name = "coco_captions"
    c.data.image_size = 64
    if not variant.tiny:
        c.model.dim = 64
        c.model.channel_mult = (1, 2, 2, 4)  # 64 -> 8x8 latent grid
        c.model.num_res_blocks = 2
        c.model.latent_channels = 16
        c.model.cond_dim = 256
        c.model.codebook_size = 512
        c.model.prior_dim = 256
        c.model.prior_heads = 8
        c.model.prior_layers = 6
        c.train.steps = 100_000
        c.train.batch_size = 128
        c.train.learning_rate = 3e-4
        c.train.warmup_steps = 1000
        c.train.log_every = 100
        c.train.checkpoint_every = 2000
        c.train.ema_decay = 0.999
        c.model.kl_warmup_steps = 10_000
        c.sample.prompts = (
            "a man riding a horse on a beach",
            "a plate of food with broccoli and rice",
            "a red double decker bus on a city street",
            "a cat sleeping on a laptop keyboard",
        )
        c.sample.judge_prompts = 0  # the shapes judge applies to shapes captions only
    return c

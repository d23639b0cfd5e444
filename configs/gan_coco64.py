"""GAN baseline at 64x64 on real captioned images (TFDS coco_captions): configs/gan_shapes.py scaled up, with a T5
text encoder read from a local checkpoint (the built-in random-init encoder carries no meaning for real captions).

python -m imagen_jax.main --config configs/gan_coco64.py --workdir W --config.text.pretrained_dir=T5_DIR
python -m imagen_jax.main --config configs/gan_coco64.py --workdir W --config.mode=describe   # sizes, FLOPs
"""

import ml_collections

from imagen_jax.config_files import parse_arg, sibling


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = parse_arg(arg, tiny=False)
    c = sibling(__file__, "gan_shapes").get_config()
    c.data.source = "tfds"
    c.data.tfds_name = "coco_captions"
    c.data.image_size = 64

    # T5 v1.1 base's shape; give its weights and spiece.model with --config.text.pretrained_dir.
    c.text.vocab_size = 32128
    c.text.max_length = 64
    c.text.dtype = "bfloat16"
    c.text.t5.update(dict(d_model=768, d_kv=64, d_ff=2048, num_heads=12, num_layers=12))

    g, d = c.model.generator, c.model.discriminator
    g.update(dict(noise_dim=128, dim=64, channel_mult=(1, 2, 4, 8, 8), text_dim=256, affine_hidden=256))
    g.update(dict(cross_attn_levels=(2,), head_dim=64))  # token cross-attention at 16x16
    d.update(dict(dim=64, channel_mult=(1, 2, 4, 8, 8), text_dim=256))

    c.train.update(dict(steps=300_000, batch_size=256, g_learning_rate=1e-4, d_learning_rate=4e-4))
    c.train.update(dict(ema_decay=0.9999, log_every=100, checkpoint_every=5000, keep_checkpoints=3))
    c.sample.prompts = (
        "a man riding a wave on top of a surfboard",
        "a plate of food with broccoli and rice",
        "a red double decker bus driving down a street",
        "a giraffe standing next to a tree in a field",
    )
    c.sample.judge_prompts = 0  # the analytic judge reads shapes scenes only
    c.mesh.cpu_devices = 0

    if variant.tiny:
        c.text.t5.update(dict(d_model=32, d_kv=8, d_ff=64, num_heads=2, num_layers=1))
        c.text.max_length = 16
        g.update(
            dict(noise_dim=8, dim=8, channel_mult=(1, 2, 2, 2, 2), text_dim=16, affine_hidden=16, head_dim=8)
        )
        d.update(dict(dim=8, channel_mult=(1, 2, 2, 2, 2), text_dim=16))
        c.train.update(dict(steps=4, batch_size=8, log_every=2, checkpoint_every=2))
    return c

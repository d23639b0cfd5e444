"""A two-stage cascade on the built-in shapes, CPU-sized: a 16x16 text-to-image base and a 16 -> 32 SR stage.

Each run trains one stage in the same workdir (config.train_stage); sampling runs the whole cascade:
python -m imagen_jax.main --config configs/shapes_cascade.py --workdir /tmp/sc         # base16, 45 min on a shared 2-core CPU
python -m imagen_jax.main --config configs/shapes_cascade.py:sr32 --workdir /tmp/sc    # sr32, 12 min
python -m imagen_jax.main --config.mode=sample --workdir /tmp/sc --prompt "a large red circle at the top"
Each stage trains for its own length with its own EMA (STAGE_TRAIN); flags still override them. The times are
wall minutes on an idle 2-core CPU; the README's "Cascade" section gives the judge accuracy they reach.
Tiny variant (8 -> 16, seconds): configs/shapes_cascade.py:tiny (and :sr32,tiny for its SR stage)
"""

import functools

import ml_collections

from imagen_jax.config_files import parse_arg, sibling

# Training length and EMA per stage. EMA decay 0.999 averages over ~1000 steps, too long for the SR stage's
# 2000 steps (its EMA weights still held 14% of the early, unconverged ones: 0.75 vs the raw weights' 1.00
# judge accuracy on real low-res inputs, 0.785 for the cascade), so the SR stage averages over ~200.
STAGE_TRAIN = {
    "base16": dict(steps=6000, ema_decay=0.999),
    "sr32": dict(steps=2000, ema_decay=0.995),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    # stage: the one this run trains (:sr32 or :stage=sr32); tiny: 8 -> 16 at tiny widths
    variant = parse_arg(arg, stage=tuple(STAGE_TRAIN), tiny=False)
    shapes_base = sibling(__file__, "shapes_base")
    c = shapes_base.get_config("tiny" if variant.tiny else None)  # data, text, train, mesh, distributed
    base_model, base_diffusion, base_sample = c.model, c.diffusion, c.sample
    # The recipe measured for this cascade (2026-11-30 / 12-02), kept when the quickstart's own changed (issue 19):
    # base16 the base U-Net, uniform loss weighting, Adam at 1e-3, an EMA without warm-up.
    base_model.efficient = False
    base_diffusion.loss_weighting = "uniform"
    c.train.update(dict(learning_rate=1e-3, ema_decay=0.99, ema_warmup=False))
    del c.model, c.diffusion
    c.train_stage = variant.stage
    c.cascade = ("base16", "sr32")
    c.data.image_size = 32
    cascades = sibling(__file__, "imagen_cascade")  # the cascade configs' shared sections
    c.sample = cascades.cascade_sample_section(tuple(base_sample.prompts))
    c.sample.judge_prompts = base_sample.judge_prompts
    how = functools.partial(cascades.stage_sample_section, base_sample)

    c.stages = ml_collections.ConfigDict()
    c.stages.base16 = ml_collections.ConfigDict(
        dict(
            image_size=16,
            lowres_size=0,
            train_crop=0,
            model=base_model,
            diffusion=base_diffusion,
            sample=how(),
        )
    )
    sr_model = ml_collections.ConfigDict(base_model.to_dict())  # the base U-Net for base16, as in the paper
    sr_model.update(dict(dim=32, channel_mult=(1, 2, 4), num_res_blocks=(1, 2, 2), attn_levels=(2,)))
    sr_model.efficient = True  # the Efficient U-Net for the SR stage, as in the paper
    c.stages.sr32 = ml_collections.ConfigDict(
        dict(
            image_size=32,
            lowres_size=16,
            train_crop=24,  # random 24x24 crops of the 32x32 image, conditioned on their 12x12 low-res
            model=sr_model,
            diffusion=ml_collections.ConfigDict(base_diffusion.to_dict()),
            augmentation=ml_collections.ConfigDict(dict(schedule="cosine", max_level=0.5)),
            sample=how(steps=10, guidance_scale=1.0, aug_level=0.1),
        )
    )

    if not variant.tiny:  # the measured recipe: batch 64, a checkpoint every 500 steps
        c.train.update(dict(batch_size=64, checkpoint_every=500, keep_every=1000, log_every=100))
        c.train.update(STAGE_TRAIN[c.train_stage])
        c.sample.judge_prompts = 256  # held-out prompts judged after each stage's training
    else:  # 8 -> 16 at tiny widths, seconds long, for tests
        c.data.image_size = 16
        c.cascade = ("base16", "sr32")
        c.stages.base16.image_size = 8
        c.stages.sr32.update(dict(image_size=16, lowres_size=8, train_crop=8))
        c.stages.sr32.model.update(dict(dim=8, channel_mult=(1, 2), num_res_blocks=(1, 1), attn_levels=(1,)))
        c.stages.sr32.model.update(dict(cross_attn_levels=(), head_dim=8, cond_dim=32))
        c.stages.sr32.sample.steps = 2
    return c

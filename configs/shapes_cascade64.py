"""A two-stage cascade on the built-in shapes ending at 64x64, CPU-sized: a 16x16 text-to-image base and a
16 -> 64 SR stage (4x, the paper's ratio: 64 -> 256 -> 1024).

Each run trains one stage in the same workdir (config.train_stage); sampling runs the whole cascade:
python -m imagen_jax.main --config configs/shapes_cascade64.py --workdir /tmp/sc64         # base16
python -m imagen_jax.main --config configs/shapes_cascade64.py:sr64 --workdir /tmp/sc64    # sr64
python -m imagen_jax.main --config.mode=sample --workdir /tmp/sc64 --prompt "a large red circle at the top"
The stages train independently (the SR stage on real images' low-res versions); run base16 first, so that the sr64
command ends by sampling and judging the whole cascade. Tiny variant (8 -> 32, seconds): :tiny (and :sr64,tiny).

base16 is the quickstart's network and recipe (configs/quickstart.py, GroupNorm in 8 groups) for 2000 steps, on the
64x64 renders downsampled. sr64 is a base U-Net (efficient=False: its first level runs at full resolution), dim 16,
levels at 64/32/16, trained on whole 64x64 images at batch 16 and sampled at augmentation level 0. Seeds 0 / 1 / 2
end to end (2026-12-04, README "Cascade"): the cascade at 64x64 1.000 / 0.988 / 0.965 held-out in 25-26 min of
training. What got it there, per seed (experiments/benchmarks/README.md, "shapes cascade at 64 px"): GroupNorm32
(one channel per group at dim 32, blind to a channel's mean) 0.965 / 0.812 / 0.883; 8 groups, SR sampled at aug
level 0.1: 1.000 / 0.941 / 0.930; then aug level 0 (guidance 3 on top of it cost seed 2 0.047). base16 for 2000
rather than 1500 steps: seed 0 with GroupNorm32, the cascade 0.949 -> 0.965. Measured against the alternatives at
about the same cost per step: on 32x32 crops at batch 64 the SR stage reached 0.867 held-out at 64x64 from text,
and the paper's Efficient U-Net of dim 32 (levels at half resolution) 0.637, drawing round shapes as polygons.
"""

import functools

import ml_collections

from imagen_jax.config_files import parse_arg, sibling

# Training length, learning rate and EMA per stage (flags still override them).
STAGE_TRAIN = {
    "base16": dict(steps=2000, batch_size=64, learning_rate=2e-3, ema_decay=0.995),  # 1500: see the docstring
    "sr64": dict(steps=1500, batch_size=16, learning_rate=1e-3, ema_decay=0.995),  # whole 64x64 images
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    # stage: the one this run trains (:sr64 or :stage=sr64); tiny: 8 -> 32 at tiny widths
    variant = parse_arg(arg, stage=tuple(STAGE_TRAIN), tiny=False)
    quickstart = sibling(__file__, "quickstart")
    c = quickstart.get_config("tiny" if variant.tiny else None)  # data, text, train, mesh, distributed
    base_model, base_diffusion, base_sample = c.model, c.diffusion, c.sample
    del c.model, c.diffusion
    c.train_stage = variant.stage
    c.cascade = ("base16", "sr64")
    c.data.image_size = 64
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
    sr_model = ml_collections.ConfigDict(base_model.to_dict())
    sr_model.update(dict(dim=16, channel_mult=(1, 2, 4), num_res_blocks=(1, 2, 2), attn_levels=(2,)))
    sr_model.efficient = False
    sr_diffusion = ml_collections.ConfigDict(base_diffusion.to_dict())
    sr_diffusion.loss_weighting = "uniform"
    c.stages.sr64 = ml_collections.ConfigDict(
        dict(
            image_size=64,
            lowres_size=16,
            # Whole images, not crops: every example holds a whole object, whose shape the SR stage must complete
            # from a 16x16 blob (32x32 crops, batch 64, at about the same cost per step: 0.867 held-out from real
            # low-res at step 1500, 0.906 at 2500; whole images, batch 16: 0.973 at step 1500).
            train_crop=0,
            model=sr_model,
            diffusion=sr_diffusion,
            augmentation=ml_collections.ConfigDict(dict(schedule="cosine", max_level=0.5)),
            sample=how(steps=10, guidance_scale=1.0, aug_level=0.0),  # aug level 0.1: see the docstring
        )
    )

    if not variant.tiny:
        c.train.update(dict(checkpoint_every=500, keep_every=500, log_every=100))
        c.train.update(STAGE_TRAIN[c.train_stage])
        c.sample.judge_prompts = 256  # held-out prompts judged after each stage's training
    else:  # 8 -> 32 at tiny widths, seconds long, for tests
        c.data.image_size = 32
        c.stages.base16.image_size = 8
        c.stages.sr64.update(dict(image_size=32, lowres_size=8))
        c.stages.sr64.model.update(dict(dim=8, channel_mult=(1, 2), num_res_blocks=(1, 1), attn_levels=(1,)))
        c.stages.sr64.model.update(dict(cross_attn_levels=(), head_dim=8, cond_dim=32))
        c.stages.sr64.sample.steps = 2
    return c

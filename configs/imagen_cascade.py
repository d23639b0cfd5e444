"""The paper's cascade (Saharia et al. 2022): base 64x64 (2B), 64->256 (600M) and 256->1024 (400M) stages.

One workdir holds the whole cascade; each run trains one stage (config.train_stage), so the three stage files
(configs/imagen_base64.py, imagen_sr256.py, imagen_sr1024.py) are this config with train_stage set:

python -m imagen_jax.main --config configs/imagen_base64.py --workdir W --config.text.pretrained_dir=T5_XXL_DIR
python -m imagen_jax.main --config configs/imagen_sr256.py  --workdir W --config.text.pretrained_dir=T5_XXL_DIR
python -m imagen_jax.main --config configs/imagen_sr1024.py --workdir W --config.text.pretrained_dir=T5_XXL_DIR
python -m imagen_jax.main --config.mode=sample --workdir W --prompt "..."   # the whole cascade

Architectures: App. F.1 (base U-Net, 512 channels, mults 1,2,3,4, 3 res blocks, attention + cross-attention at
32/16/8) and App. B.1/F.2 (Efficient U-Nets, 128 channels, res blocks 2/4/8/8, attention at the lowest level
only; the 1024 stage has no self-attention, only text cross-attention). Widths the paper leaves open (the
conditioning width, the 1024 stage's deepest block count) are chosen so that the parameter counts land within
a few percent of 2B / 600M / 400M (tests/test_cascade.py checks them with jax.eval_shape).
The only built-in data are the shapes; a large captioned image source is needed for a real run.
"""

import ml_collections

from imagen_jax.config_files import parse_arg, sibling
from imagen_jax.models.imagen import SAMPLE_OPTIONS

STAGES = ("base64", "sr256", "sr1024")


def _model(**fields) -> ml_collections.ConfigDict:
    model = ml_collections.ConfigDict(
        dict(
            dropout=0.0,
            remat=True,
            dtype="bfloat16",
            efficient=True,
            cross_attn_levels=(),
            attn_levels=(),
            attention_implementation="xla",  # "cudnn" on NVIDIA GPUs
            norm_groups=32,  # GroupNorm32 (Nichol-Dhariwal's, Imagen's)
        )
    )
    model.update(fields)
    return model


def _diffusion(schedule: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            schedule=schedule,
            prediction="eps",
            loss_weighting="uniform",
            min_snr_gamma=5.0,
            cond_drop_prob=0.1,
            offset_noise=0.0,
        )
    )


def _sample(guidance_scale: float, steps: int, aug_level: float | None = None) -> ml_collections.ConfigDict:
    sample = ml_collections.ConfigDict(
        dict(
            sampler="ddim",
            steps=steps,
            guidance_scale=guidance_scale,
            thresholding="dynamic",
            dynamic_threshold_percentile=99.5,
        )
    )
    if aug_level is not None:
        sample.aug_level = aug_level
    return sample


def _augmentation() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(schedule="cosine", max_level=0.5))


def stage_sample_section(single_stage: ml_collections.ConfigDict, **extra) -> ml_collections.ConfigDict:
    """How a cascade stage samples, taken from a single-stage config's sample section (every Imagen sampling
    option it sets: sampler, steps, guidance, its interval, thresholding, ...), with `extra` (e.g. aug_level, or
    steps of its own) on top."""
    return ml_collections.ConfigDict(
        {k: single_stage[k] for k in SAMPLE_OPTIONS if k in single_stage} | extra
    )


def cascade_sample_section(prompts: tuple[str, ...]) -> ml_collections.ConfigDict:
    """The top-level sample section of a cascade: what is sampled, not how (that is per stage)."""
    return ml_collections.ConfigDict(
        dict(
            prompts=prompts,
            num_per_prompt=4,
            seed=0,
            judge_prompts=0,
            start_stage="",  # "": the first stage; an SR stage needs sample.lowres_image
            stop_stage="",  # "": the last stage
            lowres_image="",  # a PNG to super-resolve when starting at an SR stage
        )
    )


def get_config(arg: str | None = None, train_stage: str = "base64") -> ml_collections.ConfigDict:
    variant = parse_arg(arg, tiny=False)
    # the shared sections: data, text, train, mesh, distributed
    c = sibling(__file__, "shapes_base").get_config()
    del c.model, c.diffusion
    c.train_stage = train_stage
    c.cascade = STAGES
    c.data.image_size = 1024
    c.data.max_objects = 2
    c.text.spiece_model = ""  # T5's spiece.model with --config.text.pretrained_dir
    c.text.vocab_size = 32128
    c.text.max_length = 128
    c.text.dtype = "bfloat16"
    c.text.t5.update(dict(d_model=4096, d_kv=64, d_ff=10240, num_heads=64, num_layers=24))  # T5-XXL
    c.train.update(dict(steps=2_500_000, batch_size=2048, learning_rate=1e-4, warmup_steps=10_000))
    c.train.optimizer = "adam"  # the SR stages (paper); configs/imagen_base64.py sets adafactor
    c.train.update(dict(ema_decay=0.9999, log_every=100, checkpoint_every=5000, keep_checkpoints=3))
    c.sample = cascade_sample_section(("a photo of a corgi wearing a red hat",))

    c.stages = ml_collections.ConfigDict()
    c.stages.base64 = ml_collections.ConfigDict(
        dict(
            image_size=64,
            lowres_size=0,
            train_crop=0,
            model=_model(
                dim=512,
                channel_mult=(1, 2, 3, 4),
                num_res_blocks=3,
                attn_levels=(1, 2, 3),  # 32, 16, 8: text tokens joined to the keys/values of self-attention
                head_dim=64,
                cond_dim=2048,  # 4 x the channels, as Improved DDPM's embedding
                efficient=False,
            ),
            diffusion=_diffusion("cosine"),
            sample=_sample(guidance_scale=1.35, steps=250),
        )
    )
    c.stages.sr256 = ml_collections.ConfigDict(
        dict(
            image_size=256,
            lowres_size=64,
            train_crop=0,
            model=_model(
                dim=128,
                channel_mult=(1, 2, 4, 8),
                num_res_blocks=(2, 4, 8, 8),
                attn_levels=(3,),  # self-attention with text tokens at the lowest resolution only
                head_dim=128,  # 8 heads at 1024 channels
                cond_dim=512,
            ),
            diffusion=_diffusion("cosine"),
            augmentation=_augmentation(),
            sample=_sample(guidance_scale=8.0, steps=100, aug_level=0.0),
        )
    )
    c.stages.sr1024 = ml_collections.ConfigDict(
        dict(
            image_size=1024,
            lowres_size=256,
            train_crop=256,  # trained on 64 -> 256 crops, applied to whole 256 images at inference
            model=_model(
                dim=128,
                channel_mult=(1, 2, 4, 8),
                num_res_blocks=(2, 4, 8, 8),  # App. F.3 as written
                cross_attn_levels=(3,),  # no self-attention, text cross-attention at the lowest level
                head_dim=128,
                cond_dim=512,
            ),
            diffusion=_diffusion("linear_beta_1000"),
            augmentation=_augmentation(),
            sample=_sample(guidance_scale=8.0, steps=100, aug_level=0.0),
        )
    )

    if variant.tiny:  # the same cascade at 8 -> 16 -> 32 and tiny widths, seconds long, for tests
        tiny = sibling(__file__, "shapes_base").get_config("tiny")
        c.text, c.train = tiny.text, tiny.train
        c.data.image_size = 32
        c.sample.prompts, c.sample.num_per_prompt = tiny.sample.prompts, 1
        for name, size in zip(STAGES, (8, 16, 32), strict=True):
            stage = c.stages[name]
            stage.image_size = size
            stage.lowres_size = size // 2 if stage.lowres_size else 0
            stage.train_crop = 16 if stage.train_crop else 0
            stage.model.update(dict(dim=8, channel_mult=(1, 2), head_dim=8, cond_dim=16))
            stage.model.update(dict(dtype="float32", remat=False))
            blocks = stage.model.num_res_blocks
            stage.model.num_res_blocks = 1 if isinstance(blocks, int) else (1, 1)
            stage.model.attn_levels = tuple(level for level in (1,) if stage.model.attn_levels)
            stage.model.cross_attn_levels = tuple(level for level in (1,) if stage.model.cross_attn_levels)
            stage.sample.steps = 2
    return c

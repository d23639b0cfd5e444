"""The Imagen diffusion family: a cascade of text-conditioned U-Net stages (e.g. 64 -> 256 -> 1024), each with its
own U-Net, noise schedule, objective, guidance scale, sampler, step count and noise-conditioning augmentation.

One run trains one stage (config.train_stage). The base stage learns p(x | text) at its resolution; a
super-resolution (SR) stage learns p(x | text, lowres) on random crops of the high-res image, its low-res
condition made by downsampling the crop and corrupting it at a random augmentation level. Sampling runs the
cascade from prompts, or from any stage given a low-res image, and stops at any stage.

A config either lists stages (config.cascade = names in order, config.stages.<name> = image_size,
lowres_size, train_crop, model, diffusion, augmentation, sample) or is a single stage (config.model,
config.diffusion, config.sample at the top, at data.image_size): the quickstart is the one-stage cascade.
See family.py for the contract; generate() samples the trained stage. The family keeps each stage's settings as
frozen values (DiffusionSpec, AugmentationSpec, the sampling defaults), read from the config once.
"""

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from imagen_jax.diffusion import objectives, samplers, schedules
from imagen_jax.diffusion.augmentation import noise_condition_augment, sample_aug_levels
from imagen_jax.diffusion.guidance import check_interval, classifier_free_guidance
from imagen_jax.models import layers
from imagen_jax.models.family import Capabilities
from imagen_jax.models.unet import UNet

PyTree = Any
SINGLE_STAGE = "base"  # the name of the one stage of a config without config.stages
SAMPLE_OPTIONS = (
    "sampler",
    "steps",
    "guidance_scale",
    "guidance_interval",
    "thresholding",
    "dynamic_threshold_percentile",
    "eta",
    "spacing",
)
# The sampling settings a stage's sample section may leave out (configs written before they were options).
SAMPLE_DEFAULTS = {"eta": 0.0, "spacing": "karras", "guidance_interval": ()}
# Editing inputs of one generate_stage call (never stage defaults): init_image [S,S,C] or [B,S,S,C] in [-1,1] and
# strength (0..1, how much of the diffusion to redo; SDEdit); known_image and known_mask [S,S,1] or [B,S,S,1]
# (1 = keep the known pixel, 0 = regenerate; RePaint-style replacement), resample_steps (RePaint's jumps).
EDIT_OPTIONS = ("init_image", "strength", "known_image", "known_mask", "resample_steps")


def build_unet(model_config: ml_collections.ConfigDict, lowres_cond: bool = False) -> UNet:
    """The U-Net described by a stage's model section (efficient defaults to True when absent)."""
    blocks = model_config.num_res_blocks
    return UNet(
        dim=model_config.dim,
        channel_mult=tuple(model_config.channel_mult),
        num_res_blocks=blocks if isinstance(blocks, int) else tuple(blocks),
        attn_levels=tuple(model_config.attn_levels),
        cross_attn_levels=tuple(model_config.cross_attn_levels),
        head_dim=model_config.head_dim,
        cond_dim=model_config.cond_dim,
        lowres_cond=lowres_cond,
        efficient=model_config.get("efficient", True),
        dropout=model_config.dropout,
        remat=model_config.remat,
        dtype=model_config.dtype,
        attention_implementation=model_config.get("attention_implementation", "xla"),
        norm_groups=model_config.get("norm_groups", layers.NORM_GROUPS),
    )


def is_cascade(config: ml_collections.ConfigDict) -> bool:
    """True for a config that lists stages (config.cascade / config.stages)."""
    return "stages" in config


def stage_sections(config: ml_collections.ConfigDict) -> list[tuple[str, ml_collections.ConfigDict]]:
    """[(name, section)] in cascade order; a single-stage config gives [("base", a view of its top level)]."""
    if not is_cascade(config):
        view = ml_collections.ConfigDict()
        view.image_size, view.lowres_size, view.train_crop = config.data.image_size, 0, 0
        view.model, view.diffusion, view.sample = config.model, config.diffusion, config.sample
        return [(SINGLE_STAGE, view)]
    names = list(config.cascade)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"config.cascade={tuple(names)} must name each stage once, lowest resolution first.")
    missing = [n for n in names if n not in config.stages]
    if missing:
        raise ValueError(
            f"config.cascade names {missing} but config.stages has only {sorted(config.stages)}."
        )
    return [(name, config.stages[name]) for name in names]


@dataclasses.dataclass(frozen=True)
class DiffusionSpec:
    """How a stage is trained: the model's prediction target, the loss weighting (and min-SNR's gamma), how
    often the text is dropped for classifier-free guidance, and the offset noise's strength (0: none)."""

    prediction: str
    loss_weighting: str
    min_snr_gamma: float
    cond_drop_prob: float
    offset_noise: float = 0.0


@dataclasses.dataclass(frozen=True)
class AugmentationSpec:
    """An SR stage's noise-conditioning augmentation: its schedule's name and the largest training level."""

    schedule: str
    max_level: float


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of the cascade, built from its config section."""

    name: str
    image_size: int  # the side of the images it generates
    lowres_size: int  # the side of its low-res condition; 0 for the base (text-only) stage
    train_crop: int  # the side of the random crops it trains on (== image_size: whole images)
    unet: UNet
    schedule: schedules.Schedule
    diffusion: DiffusionSpec
    augmentation: AugmentationSpec | None  # None for the base stage
    sample_defaults: tuple[tuple[str, Any], ...]  # (option, value) of the stage's sample section

    @property
    def is_super_resolution(self) -> bool:
        return self.lowres_size > 0

    def sample_option(self, key: str, options: dict[str, Any]) -> Any:
        """A sampling option: the call's override, else the stage's sampling default."""
        return options[key] if key in options else dict(self.sample_defaults)[key]


def _build_stage(name: str, section: ml_collections.ConfigDict, previous: "Stage | None") -> Stage:
    size, lowres = int(section.image_size), int(section.lowres_size)
    crop = int(section.train_crop) or size
    where = f"stages.{name}"
    if previous is None and lowres:
        raise ValueError(f"{where}.lowres_size={lowres}: the first stage of a cascade must be text-only (0).")
    if previous is not None and lowres != previous.image_size:
        raise ValueError(
            f"{where}.lowres_size={lowres} must equal the previous stage's image_size={previous.image_size}."
        )
    if not 0 < crop <= size or (lowres and (crop * lowres) % size):
        raise ValueError(
            f"{where}.train_crop={section.train_crop} must be in 1..image_size={size} (0: whole images) and "
            f"give a whole low-res crop (train_crop * lowres_size / image_size)."
        )
    if lowres and lowres >= size:
        raise ValueError(f"{where}: lowres_size={lowres} must be smaller than image_size={size}.")
    objectives.check_prediction(section.diffusion.prediction)
    if lowres:
        augmentation = section.augmentation
        if not 0.0 <= augmentation.max_level <= 1.0 or not 0.0 <= section.sample.aug_level <= 1.0:
            raise ValueError(f"{where}: augmentation.max_level and sample.aug_level must be in [0, 1].")
        schedules.get_schedule(augmentation.schedule)
    elif "augmentation" in section or "aug_level" in section.sample:
        raise ValueError(f"{where} is text-only: noise-conditioning augmentation applies to SR stages only.")
    diffusion = section.diffusion
    keys = SAMPLE_OPTIONS + (("aug_level",) if lowres else ())
    return Stage(
        name=name,
        image_size=size,
        lowres_size=lowres,
        train_crop=crop,
        unet=build_unet(section.model, lowres_cond=bool(lowres)),
        schedule=schedules.get_schedule(diffusion.schedule),
        diffusion=DiffusionSpec(
            prediction=diffusion.prediction,
            loss_weighting=diffusion.loss_weighting,
            min_snr_gamma=float(diffusion.min_snr_gamma),
            cond_drop_prob=float(diffusion.cond_drop_prob),
            offset_noise=_offset_noise(diffusion, where),
        ),
        augmentation=(
            AugmentationSpec(section.augmentation.schedule, float(section.augmentation.max_level))
            if lowres
            else None
        ),
        sample_defaults=tuple((key, _sample_default(section.sample, key, f"{where}.sample")) for key in keys),
    )


def _sample_default(sample: ml_collections.ConfigDict, key: str, where: str) -> Any:
    """A stage's default of one sampling option: its sample section's, else SAMPLE_DEFAULTS' (configs written
    before the option); the guidance interval checked and made a tuple (a saved config.json holds a list)."""
    value = sample[key] if key in sample else SAMPLE_DEFAULTS[key]
    if key == "guidance_interval":
        return check_interval(value, f"{where}.guidance_interval")
    return value


def _offset_noise(diffusion: ml_collections.ConfigDict, where: str) -> float:
    """diffusion.offset_noise (0 for configs written before it), checked: a standard deviation, so >= 0."""
    value = float(diffusion.get("offset_noise", 0.0))
    if not value >= 0.0:
        raise ValueError(f"{where}.diffusion.offset_noise={value} must be >= 0 (0: plain Gaussian noise).")
    return value


def resize(images: jax.Array, size: int) -> jax.Array:
    """images [B,H,W,C] -> [B,size,size,C], bilinear (antialiased when shrinking)."""
    if images.shape[1] == size and images.shape[2] == size:
        return images
    return jax.image.resize(images, (images.shape[0], size, size, images.shape[-1]), "linear")


def random_crops(rng: jax.Array, images: jax.Array, crop: int) -> jax.Array:
    """A random crop per example: images [B,S,S,C] -> [B,crop,crop,C]."""
    if crop == images.shape[1]:
        return images
    offsets = jax.random.randint(rng, (images.shape[0], 2), 0, images.shape[1] - crop + 1)
    take = lambda image, o: jax.lax.dynamic_slice(image, (o[0], o[1], 0), (crop, crop, image.shape[-1]))
    return jax.vmap(take)(images, offsets)


def _edit_inputs(options: dict[str, Any], batch: int, size: int, channels: int, name: str) -> dict[str, Any]:
    """The editing options of a generate_stage call, checked and broadcast: init / known [B,S,S,C] float32,
    mask [B,S,S,1] (1 = known) or None, strength (a Python float) and resample_steps (a Python int)."""
    strength = float(options.get("strength", 1.0))
    resample_steps = options.get("resample_steps", 1)
    init, known, mask = (options.get(k) for k in ("init_image", "known_image", "known_mask"))
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength={strength} must be in [0, 1] (the share of the diffusion to redo).")
    if init is None and "strength" in options and strength != 1.0:
        raise ValueError(f"strength={strength} applies to an init_image; stage {name!r} was given none.")
    if (known is None) != (mask is None):
        raise ValueError("Inpainting needs both known_image and known_mask (1 where the image is kept).")
    if not isinstance(resample_steps, int) or resample_steps < 1 or (resample_steps > 1 and known is None):
        raise ValueError(f"resample_steps={resample_steps!r}: a positive int, above 1 only with known_image.")

    def batched(array: Any, depth: int, what: str) -> jax.Array | None:
        if array is None:
            return None
        array = jnp.asarray(array, jnp.float32)
        array = array[None] if array.ndim == 3 else array
        if array.ndim != 4 or array.shape[1:3] != (size, size) or array.shape[0] not in (1, batch):
            raise ValueError(
                f"{what} of shape {tuple(array.shape)} does not fit stage {name!r}: give [{size},{size},{depth}] "
                f"or [{batch},{size},{size},{depth}]."
            )
        return jnp.broadcast_to(array, (batch, size, size, array.shape[-1]))

    return dict(
        init=batched(init, channels, "init_image"),
        known=batched(known, channels, "known_image"),
        mask=batched(mask, 1, "known_mask"),
        strength=strength,
        resample_steps=resample_steps,
    )


class ImagenFamily:
    """The cascade of `stages`; trains `train_stage` (the only stage of a single-stage config). A config with
    config.stages declares itself staged (capabilities.staged): cascade.py keeps each stage's run apart."""

    kind = "imagen"

    def __init__(self, stages: list[Stage], train_stage: str, staged: bool):
        self.stages = list(stages)
        names = [s.name for s in self.stages]
        if train_stage not in names:
            raise ValueError(f"config.train_stage={train_stage!r} is not a stage; choose one of {names}.")
        self.train_stage = self.stage(train_stage)
        self.unet = self.train_stage.unet
        self.capabilities = Capabilities(
            staged=staged, optimizers=("adam", "adafactor"), traced_sample_options=("guidance_scale",)
        )

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "ImagenFamily":
        """The cascade described by the config (config.stages, or the single stage at its top level), checked."""
        stages: list[Stage] = []
        for name, section in stage_sections(config):
            stages.append(_build_stage(name, section, stages[-1] if stages else None))
        train_stage = config.get("train_stage", SINGLE_STAGE) if is_cascade(config) else SINGLE_STAGE
        family = cls(stages, train_stage, staged=is_cascade(config))
        if family.train_stage.image_size > config.data.image_size:
            raise ValueError(
                f"Stage {train_stage!r} makes {family.train_stage.image_size}px images but "
                f"data.image_size={config.data.image_size}: the data must be at least as large."
            )
        return family

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise ValueError(f"No stage named {name!r}; the cascade is {[s.name for s in self.stages]}.")

    # Training -------------------------------------------------------------------------------------------------

    def stage_inputs(
        self, images: jax.Array, rng: jax.Array, stage: Stage | None = None
    ) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
        """(x0 [B,c,c,3], lowres [B,c,c,3] or None, aug_log_snr [B] or None) for data images [B,S,S,3]:
        resized to the stage's image_size and randomly cropped to c = train_crop; for an SR stage the crop
        is downsampled to the low-res scale, upsampled back and noise-augmented at a level ~ U(0, max_level)."""
        stage = stage or self.train_stage
        crop_rng, level_rng, noise_rng = jax.random.split(rng, 3)
        x0 = random_crops(crop_rng, resize(images, stage.image_size), stage.train_crop)
        if not stage.is_super_resolution:
            return x0, None, None
        lowres = resize(
            resize(x0, stage.train_crop * stage.lowres_size // stage.image_size), stage.train_crop
        )
        augmentation = stage.augmentation
        levels = sample_aug_levels(level_rng, x0.shape[0], augmentation.max_level)
        lowres, aug_log_snr = noise_condition_augment(lowres, levels, noise_rng, augmentation.schedule)
        return x0, lowres, aug_log_snr

    def init(self, rng: jax.Array, batch: dict[str, jax.Array]) -> PyTree:
        """Parameters of the trained stage's U-Net (logically boxed) for a batch's shapes."""
        x0, lowres, aug_log_snr = self.stage_inputs(batch["images"], jax.random.key(0))
        log_snr = jnp.zeros(x0.shape[:1], jnp.float32)
        kwargs = {"lowres": lowres, "aug_log_snr": aug_log_snr} if lowres is not None else {}
        return self.unet.init(rng, x0, log_snr, batch["text_embeddings"], batch["text_mask"], **kwargs)[
            "params"
        ]

    def ema_of(self, params: PyTree) -> PyTree:
        """The EMA averages every parameter of the trained stage."""
        return params

    def loss(
        self, params: PyTree, batch: dict[str, jax.Array], rng: jax.Array, train: bool = True
    ) -> jax.Array:
        """Mean diffusion loss of the trained stage over the batch (scalar), text dropped at cond_drop_prob."""
        diffusion = self.train_stage.diffusion
        noise_rng, drop_rng, dropout_rng = jax.random.split(rng, 3)
        input_rng = jax.random.fold_in(rng, 3)  # crops and augmentation (unused by a whole-image base stage)
        x0, lowres, aug_log_snr = self.stage_inputs(batch["images"], input_rng)
        x_t, log_snr, noise = objectives.sample_training_inputs(
            noise_rng, x0, self.train_stage.schedule, diffusion.offset_noise
        )
        drop_text = jax.random.bernoulli(drop_rng, diffusion.cond_drop_prob, x0.shape[:1])
        kwargs = {"lowres": lowres, "aug_log_snr": aug_log_snr} if lowres is not None else {}
        pred = self.unet.apply(
            {"params": params},
            x_t,
            log_snr,
            batch["text_embeddings"],
            batch["text_mask"],
            drop_text,
            train=train,
            rngs={"dropout": dropout_rng},
            **kwargs,
        )
        per_example = objectives.diffusion_loss(
            pred,
            x0,
            noise,
            log_snr,
            prediction=diffusion.prediction,
            weighting=diffusion.loss_weighting,
            min_snr_gamma=diffusion.min_snr_gamma,
        )
        return jnp.mean(per_example)

    # Sampling -------------------------------------------------------------------------------------------------

    def generate(
        self, params: PyTree, text_embeddings: jax.Array, text_mask: jax.Array, rng: jax.Array, **options: Any
    ) -> jax.Array:
        """Images [B,H,W,3] in [-1,1] from the trained stage (see generate_stage; an SR stage needs lowres)."""
        return self.generate_stage(self.train_stage.name, params, text_embeddings, text_mask, rng, **options)

    def sampling_summary(self) -> str:
        """The trained stage's default sampler settings, e.g. 'dpmpp_2m, 20 steps, guidance 3.0, static'."""
        sample = dict(self.train_stage.sample_defaults)
        interval = sample["guidance_interval"]
        where = f" at log-SNR {interval[0]:g}..{interval[1]:g}" if interval else ""
        return (
            f"{sample['sampler']}, {sample['steps']} steps, guidance {sample['guidance_scale']}{where}, "
            f"{sample['thresholding']} thresholding"
        )

    def check_sample_options(self, options: dict[str, Any]) -> None:
        """A ValueError for an option generate_stage does not take (checked per stage when it is sampled)."""
        unknown = set(options) - set(SAMPLE_OPTIONS) - set(EDIT_OPTIONS) - {"aug_level", "image_size"}
        if unknown:
            raise ValueError(f"Unknown sampling option(s) {sorted(unknown)} for the imagen family.")

    def generate_stage(
        self,
        name: str,
        params: PyTree,
        text_embeddings: jax.Array,
        text_mask: jax.Array,
        rng: jax.Array,
        lowres: jax.Array | None = None,
        **options: Any,
    ) -> jax.Array:
        """Images [B,S,S,3] in [-1,1] from stage `name` for text [B,L,D] / mask [B,L]; an SR stage also takes
        lowres [B,r,r,3] in [-1,1] (upsampled to S, then noise-augmented at sample.aug_level). Options override
        the stage's config.sample: sampler, steps, guidance_scale, guidance_interval, thresholding, dynamic_threshold_percentile,
        eta, spacing, aug_level, image_size (S; default the stage's image_size). Editing (EDIT_OPTIONS): init_image
        with strength s starts from the image noised to t = s and runs ceil(s * steps) steps (s = 0 returns the
        image itself); known_image with known_mask keeps the known pixels (resample_steps: RePaint's jumps)."""
        stage = self.stage(name)
        unknown = set(options) - set(SAMPLE_OPTIONS) - set(EDIT_OPTIONS) - {"aug_level", "image_size"}
        if unknown:
            raise ValueError(f"Unknown sampling option(s) {sorted(unknown)} for stage {name!r}.")
        opt = lambda key: stage.sample_option(key, options)
        size = int(options.get("image_size", stage.image_size))
        batch = text_embeddings.shape[0]
        channels = stage.unet.out_channels
        edit = _edit_inputs(options, batch, size, channels, name)
        if edit["init"] is not None and edit["strength"] == 0.0:
            return edit["init"]  # nothing of the diffusion is redone: the input itself
        noise_rng, sample_rng = jax.random.split(rng)
        aug_rng = jax.random.fold_in(rng, 2)
        cond: dict[str, jax.Array] = {}
        if stage.is_super_resolution:
            if lowres is None:
                raise ValueError(
                    f"Stage {name!r} is a super-resolution stage: it needs a low-res image "
                    f"[B,{stage.lowres_size},{stage.lowres_size},3] to start from."
                )
            lowres, aug_log_snr = noise_condition_augment(
                resize(lowres.astype(jnp.float32), size),
                opt("aug_level"),
                aug_rng,
                stage.augmentation.schedule,
            )
            cond = {"lowres": lowres, "aug_log_snr": aug_log_snr}
        elif lowres is not None or "aug_level" in options:
            raise ValueError(f"Stage {name!r} is text-only: it takes no low-res image or aug_level.")

        def model_fn_with_drop(x_t: jax.Array, log_snr: jax.Array, drop_text: jax.Array) -> jax.Array:
            reps = x_t.shape[0] // batch  # the guidance wrapper stacks [conditional; unconditional]
            tile = lambda a: jnp.concatenate([a] * reps, axis=0)
            return stage.unet.apply(
                {"params": params},
                x_t,
                log_snr,
                tile(text_embeddings),
                tile(text_mask),
                drop_text,
                **{k: tile(v) for k, v in cond.items()},
            )

        noise = jax.random.normal(noise_rng, (batch, size, size, channels), jnp.float32)
        model_fn = classifier_free_guidance(
            model_fn_with_drop, opt("guidance_scale"), check_interval(opt("guidance_interval"))
        )
        steps, t_start = int(opt("steps")), 1.0
        if edit["init"] is not None and edit["strength"] < 1.0:
            t_start = edit["strength"]
            steps = max(1, math.ceil(steps * t_start))
        images = samplers.sample(
            model_fn,
            noise,
            sample_rng,
            sampler=opt("sampler"),
            steps=steps,
            schedule=stage.schedule,
            prediction=stage.diffusion.prediction,
            thresholding=opt("thresholding"),
            threshold_percentile=opt("dynamic_threshold_percentile"),
            eta=float(opt("eta")),
            spacing=opt("spacing"),
            t_start=t_start,
            init=edit["init"],
            known=edit["known"],
            mask=edit["mask"],
            resample_steps=edit["resample_steps"],
        )
        return jnp.clip(images, -1.0, 1.0)

    def cascade_range(self, start: str = "", stop: str = "") -> list[Stage]:
        """The stages from `start` to `stop` inclusive ("" = the first / the last)."""
        names = [s.name for s in self.stages]
        first = names.index(self.stage(start).name) if start else 0
        last = names.index(self.stage(stop).name) if stop else len(names) - 1
        if first > last:
            raise ValueError(f"The cascade {names} cannot start at {start!r} and stop before it at {stop!r}.")
        return self.stages[first : last + 1]

    def generate_cascade(
        self,
        params_by_stage: dict[str, PyTree],
        text_embeddings: jax.Array,
        text_mask: jax.Array,
        rng: jax.Array,
        *,
        start: str = "",
        stop: str = "",
        lowres: jax.Array | None = None,
        stage_options: dict[str, dict[str, Any]] | None = None,
    ) -> dict[str, jax.Array]:
        """{stage name: images [B,S,S,3] in [-1,1]} for every stage from `start` to `stop`, each stage
        super-resolving the previous one's output; starting at an SR stage needs `lowres` (e.g. a user's image)."""
        stage_options = stage_options or {}
        outputs: dict[str, jax.Array] = {}
        for index, stage in enumerate(self.cascade_range(start, stop)):
            if stage.name not in params_by_stage:
                raise ValueError(
                    f"No parameters for stage {stage.name!r}: it must be trained before sampling."
                )
            outputs[stage.name] = lowres = self.generate_stage(
                stage.name,
                params_by_stage[stage.name],
                text_embeddings,
                text_mask,
                jax.random.fold_in(rng, index),
                lowres=lowres if stage.is_super_resolution else None,
                **stage_options.get(stage.name, {}),
            )
        return outputs

"""The registry of families: config.family -> the family built from the config, checked against what it declares
(models/family.py)."""

from collections.abc import Callable

import ml_collections

from imagen_jax.models.family import Family


def _imagen(config: ml_collections.ConfigDict) -> Family:
    from imagen_jax.models.imagen import ImagenFamily

    return ImagenFamily.from_config(config)


def _gan(config: ml_collections.ConfigDict) -> Family:
    from imagen_jax.models.gan import GanFamily

    return GanFamily.from_config(config)


def _vae(config: ml_collections.ConfigDict) -> Family:
    from imagen_jax.models.vae import VaeFamily

    return VaeFamily.from_config(config)


def _clip(config: ml_collections.ConfigDict) -> Family:
    from imagen_jax.models.contrastive import ClipFamily

    return ClipFamily.from_config(config)


FAMILIES: dict[str, Callable[[ml_collections.ConfigDict], Family]] = {
    "imagen": _imagen,
    "gan": _gan,
    "vae": _vae,
    "clip": _clip,
}


def get_family(config: ml_collections.ConfigDict) -> Family:
    """The family named by config.family, built from the config (checked: a ValueError names a bad setting)."""
    if config.family not in FAMILIES:
        raise ValueError(
            f"Unknown family {config.family!r}; config.family must be one of {sorted(FAMILIES)}."
        )
    family = FAMILIES[config.family](config)
    optimizer = str(config.train.get("optimizer", "adam"))
    if optimizer not in family.capabilities.optimizers:
        raise ValueError(
            f"train.optimizer={optimizer!r}: the {family.kind} family trains with "
            f"{' or '.join(family.capabilities.optimizers)} only; set train.optimizer accordingly."
        )
    accum = int(config.train.get("grad_accum_steps", 1))
    if accum != 1 and not family.capabilities.grad_accum:
        raise ValueError(
            f"train.grad_accum_steps={accum}: the {family.kind} family trains without gradient accumulation; "
            "set train.grad_accum_steps=1."
        )
    return family

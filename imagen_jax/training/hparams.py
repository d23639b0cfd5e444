"""The training hyper-parameters a train step closes over: read once from config.train into a frozen object, so no
ConfigDict is ever read inside a jitted function."""

import dataclasses

import ml_collections

from imagen_jax.errors import UserError

OPTIMIZERS = ("adam", "adafactor")


@dataclasses.dataclass(frozen=True)
class TrainHparams:
    """What the optimizer and the step need of config.train.

    learning_rate: the peak step size of a one-network family (None when the config gives per-network rates);
    g_learning_rate / d_learning_rate: the GAN's two networks' (None elsewhere); adam_b1 / adam_b2: Adam's decay
    rates (None: optimizers.ADAM_B1 / ADAM_B2); warmup_steps: linear warm-up from 0 to the peak; grad_clip: global-norm clipping (0: off);
    optimizer: "adam" | "adafactor"; ema_decay: the parameter average's decay; ema_warmup: whether that decay
    warms up as min(ema_decay, (1 + t) / (10 + t)) (None: the config does not say, and the family's
    capabilities.ema_warmup decides); grad_accum_steps: micro-batches per step.
    """

    optimizer: str
    learning_rate: float | None
    g_learning_rate: float | None
    d_learning_rate: float | None
    adam_b1: float | None
    adam_b2: float | None
    warmup_steps: int
    grad_clip: float
    ema_decay: float
    ema_warmup: bool | None
    grad_accum_steps: int


# Keys that configs saved before they existed lack, with the value those runs trained with (a saved config is read
# back by sample and eval). Not defaults of new experiments: every config file states these keys.
_SAVED_BEFORE = {"optimizer": "adam", "grad_accum_steps": 1}


def check_optimizer_name(name: str) -> str:
    """`name` if it names an optimizer, else a ValueError listing them."""
    if name not in OPTIMIZERS:
        raise UserError(f"train.optimizer={name!r} is not an optimizer; choose one of {OPTIMIZERS}.")
    return name


def from_config(train: ml_collections.ConfigDict) -> TrainHparams:
    """The hyper-parameters in config.train, checked (an unknown optimizer is refused)."""

    def get(key: str, cast: type) -> object:
        if key in train:
            return cast(train[key])
        if key in _SAVED_BEFORE:
            return cast(_SAVED_BEFORE[key])
        return None

    return TrainHparams(
        optimizer=check_optimizer_name(str(get("optimizer", str))),
        learning_rate=get("learning_rate", float),
        g_learning_rate=get("g_learning_rate", float),
        d_learning_rate=get("d_learning_rate", float),
        adam_b1=get("adam_b1", float),
        adam_b2=get("adam_b2", float),
        warmup_steps=int(train.warmup_steps),
        grad_clip=float(train.grad_clip),
        ema_decay=float(train.ema_decay),
        ema_warmup=get("ema_warmup", bool),
        grad_accum_steps=get("grad_accum_steps", int),
    )

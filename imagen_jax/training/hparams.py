"""The training hyper-parameters a train step closes over: read once from config.train into a frozen object, so no
ConfigDict is ever read inside a jitted function."""

import dataclasses

import ml_collections

from imagen_jax.errors import UserError

OPTIMIZERS = ("adam", "adafactor")
# After the warm-up: constant (Imagen's), or decaying to lr_final_fraction x the peak at train.steps.
LR_SCHEDULES = ("constant", "cosine", "linear")


@dataclasses.dataclass(frozen=True)
class TrainHparams:
    """What the optimizer and the step need of config.train.

    learning_rate: the peak step size of a one-network family (None when the config gives per-network rates);
    g_learning_rate / d_learning_rate: the GAN's two networks' (None elsewhere); adam_b1 / adam_b2: Adam's decay
    rates (None: optimizers.ADAM_B1 / ADAM_B2); warmup_steps: linear warm-up from 0 to the peak; lr_schedule: after the
    warm-up, constant | cosine | linear (the last two decay to lr_final_fraction x the peak at total_steps, the
    config's train.steps); grad_clip: global-norm clipping (0: off);
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
    lr_schedule: str
    lr_final_fraction: float
    total_steps: int
    grad_clip: float
    ema_decay: float
    ema_warmup: bool | None
    grad_accum_steps: int


# Keys that configs saved before they existed lack, with the value those runs trained with (a saved config is read
# back by sample and eval). Not defaults of new experiments: every config file states these keys.
_SAVED_BEFORE = {
    "optimizer": "adam",
    "grad_accum_steps": 1,
    "lr_schedule": "constant",
    "lr_final_fraction": 0.0,
}


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

    schedule = str(get("lr_schedule", str))
    if schedule not in LR_SCHEDULES:
        raise UserError(f"train.lr_schedule={schedule!r} is not a schedule; choose one of {LR_SCHEDULES}.")
    final = float(get("lr_final_fraction", float))
    if not 0.0 <= final <= 1.0:
        raise UserError(f"train.lr_final_fraction={final} must lie in [0, 1] (a fraction of the peak rate).")
    total = int(train.get("steps", 0))  # a decaying schedule needs it; a constant one does not
    if schedule != "constant" and total <= int(train.warmup_steps):
        raise UserError(
            f"train.lr_schedule={schedule!r} decays from the end of the warm-up to train.steps, but train.steps="
            f"{total} <= train.warmup_steps={train.warmup_steps}; shorten the warm-up or use 'constant'."
        )
    return TrainHparams(
        optimizer=check_optimizer_name(str(get("optimizer", str))),
        learning_rate=get("learning_rate", float),
        g_learning_rate=get("g_learning_rate", float),
        d_learning_rate=get("d_learning_rate", float),
        adam_b1=get("adam_b1", float),
        adam_b2=get("adam_b2", float),
        warmup_steps=int(train.warmup_steps),
        lr_schedule=schedule,
        lr_final_fraction=final,
        total_steps=total,
        grad_clip=float(train.grad_clip),
        ema_decay=float(train.ema_decay),
        ema_warmup=get("ema_warmup", bool),
        grad_accum_steps=get("grad_accum_steps", int),
    )

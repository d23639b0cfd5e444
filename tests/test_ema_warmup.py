"""train.ema_warmup: the EMA's decay at step t is min(decay, (1 + t) / (10 + t)) when on, and the average after n
updates of constant parameters p from e0 is e0 * P_n + p * (1 - P_n), P_n = prod_{t<n} decay_t. Checked against
that closed form, through the one apply_gradients every family's step ends in; the key is read from the config,
validated at the door, and a config without it keeps the family's declared default."""

import math

import jax.numpy as jnp
import ml_collections
import optax
import pytest

from imagen_jax import checks
from imagen_jax.errors import UserError
from imagen_jax.models.family import Capabilities
from imagen_jax.training import hparams, state
from imagen_jax.training.steps.update import Ema, apply_gradients


def train_section(**fields) -> ml_collections.ConfigDict:
    base = dict(optimizer="adam", learning_rate=1e-3, warmup_steps=2, grad_clip=1.0, ema_decay=0.99)
    return ml_collections.ConfigDict({**base, **fields})


class _Family:
    def __init__(self, ema_warmup: bool):
        self.capabilities = Capabilities(ema_warmup=ema_warmup)

    def ema_of(self, params):
        return params


def _average_after(ema: Ema, n: int) -> float:
    """The EMA after n updates of parameters held at 1.0 (a zero learning rate), starting from 0.0."""
    train_state = state.create({"w": jnp.ones(())}, optax.sgd(0.0))
    train_state = train_state.replace(ema_params={"w": jnp.zeros(())})
    for _ in range(n):
        train_state, _ = apply_gradients(train_state, {"w": jnp.zeros(())}, optax.sgd(0.0), ema=ema)
    return float(train_state.ema_params["w"])


@pytest.mark.parametrize("decay", [0.5, 0.999])
def test_warmed_up_average_matches_the_closed_form(decay):
    n = 12
    # (1 + t) / (10 + t) < decay for t < cap; after it the decay is constant
    cap = min(n, max(0, math.ceil((10 * decay - 1) / (1 - decay))))
    warm = math.factorial(cap) * math.factorial(9) / math.factorial(cap + 9)  # prod_{t<cap} (1+t)/(10+t)
    closed = 1.0 - warm * decay ** (n - cap)
    ema = Ema.of_family(_Family(ema_warmup=False), decay, warmup=True)
    assert _average_after(ema, n) == pytest.approx(closed, rel=1e-5)
    # without the warm-up the average keeps decay**n of its start: at 0.999 it has barely moved
    plain = Ema.of_family(_Family(ema_warmup=False), decay, warmup=False)
    assert _average_after(plain, n) == pytest.approx(1.0 - decay**n, rel=1e-5)
    if decay == 0.999:
        assert 1.0 - 1.0 / math.comb(n + 9, 9) == pytest.approx(closed)  # P_n = 1 / C(n+9, 9) before the cap
        assert _average_after(plain, n) < 0.02 < 0.99 < _average_after(ema, n)


def test_the_config_key_decides_and_its_absence_keeps_the_family_default():
    on, off, absent = train_section(ema_warmup=True), train_section(ema_warmup=False), train_section()
    assert hparams.from_config(on).ema_warmup is True
    assert hparams.from_config(off).ema_warmup is False
    assert hparams.from_config(absent).ema_warmup is None
    for default in (True, False):  # e.g. the GAN declares True, imagen and the VAE False
        family = _Family(ema_warmup=default)
        assert Ema.of_family(family, 0.99, hparams.from_config(absent).ema_warmup).warmup is default
        assert Ema.of_family(family, 0.99, hparams.from_config(on).ema_warmup).warmup is True
        assert Ema.of_family(family, 0.99, hparams.from_config(off).ema_warmup).warmup is False


def test_the_door_refuses_a_non_bool():
    """A config file's key keeps its bool type against command-line overrides (ml_collections); a hand-edited
    config.json ("ema_warmup": 1) is what the door must catch."""
    from configs import quickstart

    config = quickstart.get_config("tiny")
    checks.check_structure(config)
    edited = config.to_dict()
    edited["train"]["ema_warmup"] = 1
    with pytest.raises(UserError, match=r"train.ema_warmup=1 .* must be true or false"):
        checks.check_structure(ml_collections.ConfigDict(edited))

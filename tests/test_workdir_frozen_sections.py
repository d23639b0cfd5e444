"""A resumed run must train the same experiment: what the model computes is frozen, how attention runs is not."""

import pytest

from configs import quickstart
from imagen_jax import workdir
from imagen_jax.errors import UserError


def test_the_attention_kernel_may_change_between_runs_but_the_model_may_not(tmp_path):
    config = quickstart.get_config("tiny")
    workdir.prepare_for_training(str(tmp_path), config)
    config.model.attention_implementation = "cudnn"  # the same numbers up to rounding, on another kernel
    config.text.attention_implementation = "cudnn"
    workdir.prepare_for_training(str(tmp_path), config)
    del config.model["attention_implementation"]  # a run saved before the key existed
    workdir.prepare_for_training(str(tmp_path), config)
    config.model.dim = 16
    with pytest.raises(UserError, match="model.dim"):
        workdir.prepare_for_training(str(tmp_path), config)

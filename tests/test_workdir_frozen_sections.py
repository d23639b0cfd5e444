"""A resumed run must train the same experiment: what the model computes is frozen, how attention runs is not.
A cascade stage's checkpoint is checked against its own stage's section and the shared ones only."""

import json

import pytest

from configs import quickstart, shapes_cascade64
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


def record_of(config) -> dict:
    """What a checkpoint's JSON record holds: the config it was trained with."""
    return {"config": json.loads(config.to_json())}


def test_a_stage_checkpoint_is_checked_against_its_own_stage_not_the_whole_cascade():
    config = shapes_cascade64.get_config("tiny")
    other_sr = shapes_cascade64.get_config("tiny")
    other_sr.stages.sr64.model.dim = 16  # trained beside another SR stage
    other_sr.cascade = ("base16",)  # ... or alone
    workdir.check_checkpoint_config(record_of(other_sr), config, 2, "ckpts", stage="base16")
    with pytest.raises(UserError, match=r"stages\.sr64\.model\.dim: 16 -> 8"):  # the whole cascade compared
        workdir.check_checkpoint_config(record_of(other_sr), config, 2, "ckpts")
    # The SR stage's own checkpoint is checked against its section.
    with pytest.raises(UserError, match=r"stages\.sr64\.model\.dim: 16 -> 8"):
        workdir.check_checkpoint_config(record_of(other_sr), config, 2, "ckpts", stage="sr64")
    other_base = shapes_cascade64.get_config("tiny")
    other_base.stages.base16.model.dim = 16
    with pytest.raises(UserError, match=r"stages\.base16\.model\.dim"):
        workdir.check_checkpoint_config(record_of(other_base), config, 2, "ckpts", stage="base16")
    shared = shapes_cascade64.get_config("tiny")
    shared.text.max_length = 32  # a section every stage depends on
    with pytest.raises(UserError, match=r"text\.max_length"):
        workdir.check_checkpoint_config(record_of(shared), config, 2, "ckpts", stage="base16")


def test_a_key_added_since_the_run_resumes_at_its_old_value_only(tmp_path):
    """A run saved before model.norm_groups existed used GroupNorm32: it resumes under a config holding 32 (the
    same network) and is refused one holding the quickstart's 8 (another network)."""
    config = quickstart.get_config("tiny")
    del config.model["norm_groups"]
    del config.diffusion["offset_noise"]
    workdir.prepare_for_training(str(tmp_path), config)  # the saved run, from before the keys
    config.model.norm_groups, config.diffusion.offset_noise = 8, 0.0
    with pytest.raises(UserError, match=r"model\.norm_groups: None -> 8"):
        workdir.prepare_for_training(str(tmp_path), config)
    config.model.norm_groups = 32
    workdir.prepare_for_training(str(tmp_path), config)


def test_a_run_saved_before_num_holdout_pairs_resumes_with_six_held_out_only(tmp_path):
    """data.num_holdout_pairs changes which captions training sees: a run saved before the key held out 6 pairs,
    so it resumes under 6 and is refused under 12 (another data key added since, text_join, is not frozen)."""
    config = quickstart.get_config("tiny")
    del config.data["num_holdout_pairs"]
    workdir.prepare_for_training(str(tmp_path), config)
    config.data.num_holdout_pairs = 12
    with pytest.raises(UserError, match=r"data\.num_holdout_pairs: None -> 12"):
        workdir.prepare_for_training(str(tmp_path), config)
    config.data.num_holdout_pairs = 6
    workdir.prepare_for_training(str(tmp_path), config)

"""The shapes feature network (trained once, cached by its spec) and evaluation end to end on the tiny quickstart."""

import dataclasses
import json
import os
import pathlib
import platform
import shutil
import sys

import jax
import numpy as np
import pytest

from imagen_jax.data import shapes
from imagen_jax.evaluation import feature_net
from imagen_jax.evaluation import run as eval_run

TINY_NET = feature_net.FeatureNetSpec(image_size=16, widths=(8, 16), feature_dim=32, steps=80, batch_size=32)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def tiny_net(cache_dir):
    logs = []
    net = feature_net.load_or_train(TINY_NET, cache_dir, log=logs.append)
    assert len(logs) == 1 and "Training the shapes feature network once" in logs[0]
    return net


def test_feature_net_learns_the_attributes_and_is_cached_by_its_spec(tiny_net, cache_dir):
    accuracy = tiny_net.info["validation_accuracy"]
    # 80 steps of a tiny net: position and size are easy (chance 0.2 and 0.5), shape and colour take longer
    assert accuracy["position"] > 0.8 and accuracy["size"] > 0.7
    logs = []
    again = feature_net.load_or_train(TINY_NET, cache_dir, log=logs.append)
    assert logs == [] and again.name == tiny_net.name  # read back, never retrained
    images = shapes.ShapesDataset(16, seed=3).batch(0, 10)["images"]
    np.testing.assert_array_equal(again.features(images), tiny_net.features(images))
    other = dataclasses.replace(TINY_NET, seed=1)
    assert other.key() != TINY_NET.key()  # a changed spec would train into another folder


def test_feature_net_training_is_deterministic(tiny_net):
    short = dataclasses.replace(TINY_NET, steps=3)
    params, accuracy, scale = feature_net.train(short)
    params2, accuracy2, scale2 = feature_net.train(short)
    assert accuracy == accuracy2 and scale == scale2
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2), strict=True):
        np.testing.assert_array_equal(a, b)


def test_features_are_batched_and_resized(tiny_net):
    images = shapes.ShapesDataset(32, seed=4).batch(0, 5)["images"]  # 32 px into a 16 px network
    features = tiny_net.features(images, batch_size=2)
    assert features.shape == (5, 32) and features.dtype == np.float32
    np.testing.assert_allclose(features[3:], tiny_net.features(images[3:]), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ evaluation and the comparison

CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "quickstart.py")
TINY = CONFIG + ":tiny"
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "experiments"))
import compare_baselines  # noqa: E402


def test_the_tiny_config_shares_the_cached_test_network():
    from imagen_jax.workdir import parse_command_line

    config, _, _ = parse_command_line(["main", "--config", TINY, "--workdir", "/tmp/unused"])
    assert eval_run.feature_net_spec(eval_run.settings_of(config), config.data.image_size) == TINY_NET


def test_real_images_score_as_real(tiny_net, cache_dir):
    # Real images of the split scored as if generated: the judge reads them right, they lie on the real
    # manifold, and their FID to the reference is below that of images with scrambled colours or of noise.
    settings = eval_run.default_settings()
    settings.kid_subsets, settings.kid_subset_size, settings.cache_dir = 5, 32, cache_dir
    features = eval_run._Features(_tiny_settings(settings), 16, log=print)
    data = shapes.ShapesDataset(16, seed=0)
    reference = eval_run.reference_batch(data, "holdout", 64, seed=0)
    other = eval_run.reference_batch(data, "holdout", 64, seed=1)
    assert other["captions"] != reference["captions"]  # another eval seed, another reference
    real_features = features.features(reference["images"])
    real = eval_run.evaluate_images(other["images"], other["captions"], real_features, features, settings)
    assert real["alignment"]["all"] > 0.9 and real["precision"] > 0.8 and real["recall"] > 0.8
    scrambled = other["images"][..., ::-1]  # RGB -> BGR: new colours, same shapes
    fake = eval_run.evaluate_images(scrambled, other["captions"], real_features, features, settings)
    assert fake["fid"] > real["fid"] and fake["alignment"]["colour"] < 0.5
    noise = np.random.default_rng(0).uniform(-1, 1, other["images"].shape).astype(np.float32)
    fake = eval_run.evaluate_images(noise, other["captions"], real_features, features, settings)
    assert fake["fid"] > 3 * real["fid"] and fake["alignment"]["all"] == 0.0


def _tiny_settings(settings):
    settings.feature_net.widths = TINY_NET.widths
    settings.feature_net.feature_dim = TINY_NET.feature_dim
    settings.feature_net.steps = TINY_NET.steps
    settings.feature_net.batch_size = TINY_NET.batch_size
    return settings


def test_mean_ci_is_the_student_t_interval():
    mean, half_width = compare_baselines.mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half_width == pytest.approx(
        4.302653 / np.sqrt(3), rel=1e-6
    )  # t(0.975, 2) * sd / sqrt(n)
    assert compare_baselines.mean_ci([5.0]) == (5.0, None)


def test_eval_mode_refuses_bad_settings_and_untrained_workdirs(tmp_path, capsys):
    from imagen_jax.main import main

    code = main(
        [
            "m",
            "--config",
            TINY,
            "--workdir",
            str(tmp_path),
            "--config.mode=eval",
            "--config.eval.feature_space=inception",
        ]
    )
    assert code == 2 and "eval.inception_weights" in capsys.readouterr().err
    code = main(["m", "--config", TINY, "--workdir", str(tmp_path), "--config.mode=eval"])
    assert code == 2 and "no checkpoint" in capsys.readouterr().err


def test_compare_baselines_end_to_end(tmp_path, cache_dir, tiny_net):
    out = tmp_path / "cmp"
    argv = [
        "--configs",
        TINY,
        "--seeds",
        "1",
        "--budget_images",
        "16",
        "--out",
        str(out),
        "--cache_dir",
        cache_dir,
    ]
    report_path = compare_baselines.main(argv)
    report = pathlib.Path(report_path).read_text()
    workdir = out / "runs" / "quickstart_tiny_seed0"
    assert sorted(os.listdir(workdir / "checkpoints"))[-1] == "2"  # 16 images at batch 8
    result = json.loads((workdir / "eval" / "2.json").read_text())
    assert result["feature_space"] == tiny_net.name and result["num_samples"] == 16
    for split in ("train", "holdout"):
        r = result["prompt_sets"][split]
        assert {"fid", "kid", "kid_std", "precision", "recall", "alignment"} <= set(r)
        assert np.isfinite(r["fid"]) and r["fid"] >= 0 and 0 <= r["precision"] <= 1
        assert (workdir / "eval" / f"2_{split}.png").exists()
    # the sweep: guidance 1.0 sampled anew, 3.0 is the config's default and reuses the main evaluation
    points = result["sweep"]["points"]
    assert [(p["value"], p["prompt_set"]) for p in points] == [
        (1.0, "train"),
        (1.0, "holdout"),
        (3.0, "train"),
        (3.0, "holdout"),
    ]
    assert points[2]["fid"] == result["prompt_sets"]["train"]["fid"]
    assert (workdir / "eval" / "2_sweep.png").exists()
    assert list((workdir / "tensorboard" / "eval").iterdir())
    # the report: the feature space named, a row per model in each table, commands to reproduce
    assert f"`{tiny_net.name}`" in report and "| quickstart_tiny | 2 | 16 |" in report
    assert "python -m imagen_jax.main --config" in report and (out / "training_curves.png").exists()
    assert "![alignment per model](alignment.png)" in report and (out / "alignment.png").exists()
    fid = result["prompt_sets"]["holdout"]["fid"]
    assert f"{fid:.4g}" in report

    # The comparison grows by a seed from the runs' records alone, as a committed one must (checkpoints stay out
    # of git): seed 1 alone is trained and leaves a record, then the 2-seed report is written training nothing.
    shutil.rmtree(workdir / "checkpoints")
    assert json.loads((workdir / "comparison_run.json").read_text())["eval"] == result
    assert compare_baselines.main(argv[:3] + ["2", "--run_seeds", "1"] + argv[4:]) == ""
    seed1 = out / "runs" / "quickstart_tiny_seed1"
    assert (seed1 / "comparison_run.json").exists() and not (workdir / "checkpoints").exists()
    shutil.rmtree(seed1 / "checkpoints")
    report = pathlib.Path(compare_baselines.main(argv[:3] + ["2"] + argv[4:])).read_text()
    assert "1 model x 2 seed(s)" in report and f"{fid:.4g}" in report
    assert f"Versions (every run): python {platform.python_version()}, " in report  # the runs' own
    assert not (workdir / "checkpoints").exists() and not (seed1 / "checkpoints").exists()
    # a record made under other evaluation settings is not reused: the run is evaluated anew (and trained
    # anew, its checkpoints being gone)
    other = argv[:3] + ["2", "--run_seeds", "1", "--num_samples", "8"] + argv[4:]
    compare_baselines.main(other)
    assert (seed1 / "checkpoints").exists()
    assert json.loads((seed1 / "comparison_run.json").read_text())["eval"]["num_samples"] == 8


def test_a_sweep_must_name_a_sampling_setting_of_the_config():
    from imagen_jax.workdir import parse_command_line

    argv = ["main", "--config", TINY, "--workdir", "/tmp/unused", "--config.eval.sweep_option=temperature"]
    config, _, _ = parse_command_line(argv)
    with pytest.raises(ValueError, match="not a sampling setting of this imagen config"):
        eval_run.settings_of(config)
    assert eval_run.settings_of(config, sweep=False).sweep_option == "temperature"

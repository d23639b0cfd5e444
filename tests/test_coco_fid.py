"""The zero-shot COCO FID-N protocol (eval.protocol=coco_fid30k, evaluation/coco.py) end to end on TFDS's mock
coco_captions: COCO's val2014 (Karpathy val + test + restval) for prompts and reference, seed-fixed prompts, the
reference statistics equal to features of the centre-cropped, resized validation images, FID and CLIP score."""

import sys
import types

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.object_detection import coco as tfds_coco

from imagen_jax.data import pipeline
from imagen_jax.data import tfds as tfds_lib
from imagen_jax.evaluation import clip_score, coco, metrics
from imagen_jax.evaluation import run as eval_run

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from test_clip import save_hf_clip  # noqa: E402


@pytest.fixture
def mock_coco(monkeypatch):
    # coco's builder code spells one dtype as tf.int64; TensorFlow is needed to prepare COCO, not to read it.
    monkeypatch.setattr(tfds_coco, "tf", types.SimpleNamespace(int64=np.int64))
    with tfds.testing.mock_data(num_examples=6):
        yield tfds_lib.open_source("coco_captions", "train", "/nonexistent")


def test_fid30k_protocol_on_mock_coco(mock_coco, tmp_path):
    source = mock_coco
    assert coco.validation_split(source) == "val+test+restval"
    records = coco.open_split(source, coco.COCO_VAL2014)
    assert len(records) == 18  # the three splits' 6 mock examples each
    prompts = coco.draw_prompts(source, records, 24, seed=3)
    assert (
        prompts == coco.draw_prompts(source, records, 24, seed=3) != coco.draw_prompts(source, records, 24, 4)
    )
    every = {c for i in range(len(records)) for c in source.parser.captions(records[i])}
    assert set(prompts) <= every and len(prompts) == 24

    settings = eval_run.default_settings()
    settings.update(
        protocol="coco_fid30k",
        num_samples=10,
        num_reference=12,
        grid_images=4,
        cache_dir=str(tmp_path / "cache"),
        sweep_option="guidance_scale",
        sweep_values=(1.0, 2.0),
    )
    settings.feature_net.update(widths=(4,), feature_dim=8, steps=2, batch_size=8)
    eval_run.check_settings(settings)
    calls = []

    def generate(prompts, key, chunk=64, **options):
        calls.append((len(prompts), options))
        return np.random.default_rng(len(calls)).uniform(-1, 1, (len(prompts), 16, 16, 3)).astype(np.float32)

    subject = eval_run.Subject(generate, "imagen", "test", {"guidance_scale": 1.0})
    clip_dir = tmp_path / "clip"
    save_hf_clip(clip_dir)
    scorer = clip_score.HfClipScorer(str(clip_dir))
    report = eval_run.evaluate(
        subject, source, 16, str(tmp_path), 7, settings, log=lambda s: None, clip=scorer
    )
    assert calls == [(10, {}), (10, {"guidance_scale": 2.0})]  # the default's value is not generated twice
    val = report["prompt_sets"]["val"]
    assert val["fid"] > 0 and 0 <= val["clip_score"]["mean"] <= 100
    assert "12 images of coco_captions split 'val+test+restval'" in report["reference"]
    assert (tmp_path / "eval" / "7.json").is_file() and (tmp_path / "eval" / "7_sweep_clip.png").is_file()
    assert "FID-10" in eval_run.format_report(report)[0]

    # the reference statistics are those of the centre-cropped, resized images the protocol names
    features = eval_run._Features(settings, 16, log=lambda s: None)
    order = np.random.default_rng([0, 0x5EED]).permutation(len(records))[:12]
    images = []
    for i in order:
        image = source.parser(records[int(i)])["image"]
        side = min(image.shape[:2])
        top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
        images.append(pipeline.resize(image[top : top + side, left : left + side], 16) / 127.5 - 1)
    expected = metrics.FeatureStats.of(features.features(np.stack(images).astype(np.float32)))
    stats = coco.reference_stats(source, records, 16, features.features, 12, 0, batch_size=5)
    np.testing.assert_allclose(stats.mean, expected.mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.covariance, expected.covariance, rtol=1e-4, atol=1e-6)


def test_protocol_settings_are_checked():
    settings = eval_run.default_settings()
    settings.protocol = "coco"
    with pytest.raises(eval_run.UserError, match="eval.protocol='coco'"):
        eval_run.check_settings(settings)
    settings.protocol, settings.num_reference = "coco_fid30k", -1
    with pytest.raises(eval_run.UserError, match="eval.num_reference"):
        eval_run.check_settings(settings)

"""TFDS sources: tfds.testing.mock_data drives coco_captions and cifar10 as their real feature structures; the
shapes builder, prepared into a temporary data_dir without TensorFlow, holds exactly the built-in shapes data and
trains the tiny quickstart through the Grain pipeline, whose saved iterator state continues the stream; a
dataset that is not prepared gives one message with the command that prepares it."""

import pathlib
import types

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.object_detection import coco

from configs import quickstart
from imagen_jax import experiment
from imagen_jax.data import pipeline, shapes_tfds
from imagen_jax.data import tfds as tfds_lib
from imagen_jax.data.shapes import ShapesDataset
from imagen_jax.main import main
from imagen_jax.training import trainer

CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "quickstart.py")
SHAPES = shapes_tfds.ShapesConfig(name="t16", image_size=16, train_examples=48, holdout_examples=8)
SHAPES_NAME = "imagen_jax_shapes/t16"


def _records(source) -> list[dict]:
    return [source[i] for i in range(len(source))]


def _batches(source, size: int, crop: str = "center", steps: int = 2) -> list[dict]:
    spec = pipeline.PipelineSpec(seed=0, per_process_batch=4, augment=pipeline.Augment(size, crop))
    batches = pipeline.GrainBatches(source.records, source.parser, spec)
    return [next(batches) for _ in range(steps)]


def test_cifar10_through_mock_data_is_captioned_from_its_labels():
    with tfds.testing.mock_data(num_examples=12):
        source = tfds_lib.open_source("cifar10", "train", "/nonexistent")
        names = source.builder.info.features["label"].names
        raw = [source.records[i] for i in range(len(source))]
        records = _records(source)
        for r, x in zip(raw, records, strict=True):
            assert x["captions"] == (f"a photo of a {names[int(r['label'])]}",)
            assert x["image"].shape == (32, 32, 3) and x["image"].dtype == np.uint8
        assert source.caption_corpus() == [f"a photo of a {n}" for n in names]
        for batch in _batches(source, 32):  # 32px, centre crop of a square: the record's own pixels
            for image, text in zip(batch["images"], batch["captions"], strict=True):
                pixels = np.rint((image + 1) * 127.5).astype(np.uint8)
                assert any(np.array_equal(pixels, r["image"]) and (text,) == r["captions"] for r in records)
        templated = tfds_lib.open_source("cifar10", "train", "/nonexistent", "{label}, a picture")
        assert templated[0]["captions"][0].endswith(", a picture")
        with pytest.raises(ValueError, match="must contain"):
            tfds_lib.open_source("cifar10", "train", "/nonexistent", "a photo")


def test_coco_captions_through_mock_data_crops_resizes_and_picks_a_caption(monkeypatch):
    # coco's builder code spells one dtype as tf.int64; TensorFlow is needed to prepare COCO, not to read it.
    monkeypatch.setattr(coco, "tf", types.SimpleNamespace(int64=np.int64))
    with tfds.testing.mock_data(num_examples=8):
        source = tfds_lib.open_source("coco_captions", "train", "/nonexistent")
        assert source.eval_split == "val"
        records = _records(source)
        assert all(len(r["captions"]) > 1 for r in records)
        assert len({r["image"].shape for r in records}) > 1  # the mock's images vary in size
        expected = []
        for r in records:
            h, w = r["image"].shape[:2]
            side = min(h, w)
            square = r["image"][(h - side) // 2 :][:side, (w - side) // 2 :][:, :side]
            expected.append(pipeline.resize(square, 16))
        for batch in _batches(source, 16, steps=4):  # two epochs of 8
            for image, text in zip(batch["images"], batch["captions"], strict=True):
                pixels = np.rint((image + 1) * 127.5).astype(np.uint8)
                match = [i for i, e in enumerate(expected) if np.array_equal(pixels, e)]
                assert match and text in records[match[0]]["captions"]
        prompts = source.prompts(3, seed=1)
        assert len(set(prompts)) == 3
        corpus = source.caption_corpus()
        assert set(corpus) == {c for r in records for c in r["captions"]}


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory) -> str:
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    shapes_tfds.prepare(data_dir, SHAPES)
    return data_dir


def test_prepared_shapes_builder_holds_the_shapes_data(shapes_dir):
    source = tfds_lib.open_source(SHAPES_NAME, "train", shapes_dir)
    built = ShapesDataset(16, seed=0).batch(0, 48, split="train")  # what the builder rendered
    expected = {
        (c, np.rint((im + 1) * 127.5).astype(np.uint8).tobytes())
        for c, im in zip(built["captions"], built["images"], strict=True)
    }
    assert {(r["captions"][0], r["image"].tobytes()) for r in _records(source)} == expected
    assert source.eval_split == "holdout"
    plain = source.caption_corpus()
    assert set(plain) == {c for c, _ in expected}
    source.caption_variant = pipeline.swap_left_right  # set by build_dataset when data.random_flip is on
    assert set(source.caption_corpus()) == set(plain) | {pipeline.swap_left_right(c) for c in plain}
    holdout = tfds_lib.open_source(SHAPES_NAME, "holdout", shapes_dir)
    assert len(holdout) == 8 and set(source.prompts(4)) <= {r["captions"][0] for r in _records(holdout)}


def test_a_dataset_not_prepared_gets_the_command_that_prepares_it(tmp_path, capsys):
    empty = str(tmp_path / "empty")
    for name, command in (
        ("imagen_jax_shapes/32px", f"python -m imagen_jax.data.shapes_tfds --data_dir {empty} --config 32px"),
        ("coco_captions", f"tfds build coco_captions --data_dir={empty} --file_format=array_record"),
    ):
        flags = [
            "--config.data.source=tfds",
            f"--config.data.tfds_name={name}",
            f"--config.data.tfds_data_dir={empty}",
        ]
        code = main(
            [
                "imagen_jax.main",
                "--config",
                CONFIG + ":tiny",
                "--workdir",
                str(tmp_path / name.replace("/", "_")),
                *flags,
            ]
        )
        out, err = capsys.readouterr()
        assert code == 2 and "Traceback" not in out + err
        assert len(err.strip().splitlines()) == 1 and command in err and "not prepared" in err


def test_training_reads_the_prepared_shapes_and_checkpoints_the_iterator(shapes_dir, tmp_path, monkeypatch):
    config = quickstart.get_config("tiny")
    config.data.source = "tfds"
    config.data.tfds_name = SHAPES_NAME
    config.data.tfds_data_dir = shapes_dir
    config.data.crop, config.data.random_flip = "random", True
    config.train.steps, config.train.checkpoint_every, config.train.log_every = 2, 1, 1
    # One level, no attention: the data path is under test, and this U-Net compiles ~3x faster than :tiny's.
    config.model.channel_mult, config.model.num_res_blocks = (1,), (1,)
    config.model.attn_levels, config.model.cross_attn_levels = (), ()
    exp = experiment.build(config, str(tmp_path / "wd"))
    _, step, _ = trainer.train(exp)
    assert step == 2
    checkpointer = exp.checkpointer()
    state = checkpointer.restore_data(2)
    checkpointer.close()
    assert state["next_step"] == 2 and state["spec"]["process_count"] == 1
    resumed = next(pipeline.train_batches(exp.dataset, 8, 2, config, state=state))
    fresh = pipeline.train_batches(exp.dataset, 8, 0, config)
    third = [next(fresh) for _ in range(3)][2]
    np.testing.assert_array_equal(resumed["images"], third["images"])
    assert resumed["captions"] == third["captions"]
    assert resumed["images"].shape == (8, 16, 16, 3)
    # A rerun resumes at step 2 (nothing left to train, so nothing compiles) and hands the trainer's pipeline
    # the iterator state of the checkpoint.
    given = []
    original = pipeline.train_batches
    monkeypatch.setattr(pipeline, "train_batches", lambda *a: given.append(a) or original(*a))
    trainer.train(experiment.build(config, str(tmp_path / "wd")))
    assert given[0][2] == 2 and given[0][5] == state

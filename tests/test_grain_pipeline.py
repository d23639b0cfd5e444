"""The Grain pipeline on in-memory records whose images carry their own index: same seed -> same batches,
processes see disjoint examples and an epoch covers every example once, a restored iterator state (also
through a real Orbax checkpoint) continues with the exact next batch, flips keep the caption true (checked by
the shapes judge), crops and paired super-resolution crops cut where they say."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from imagen_jax.data import pipeline
from imagen_jax.data.shapes import ObjectSpec, Scene, caption, render, score
from imagen_jax.training.checkpoint import Checkpointer

NUM = 24  # records
SIZE = 8  # image side


def _record(i: int) -> dict:
    """Record i: an image whose pixels are all i (so a batch image names its record), two captions."""
    return {"image": np.full((SIZE, SIZE, 3), i, np.uint8), "captions": (f"record {i} a", f"record {i} b")}


RECORDS = [_record(i) for i in range(NUM)]


def _identity(record: dict) -> dict:
    return record


def _spec(**overrides) -> pipeline.PipelineSpec:
    fields = dict(seed=3, per_process_batch=4, augment=pipeline.Augment(SIZE))
    fields.update(overrides)
    return pipeline.PipelineSpec(**fields)


def _ids(batch: dict) -> list[int]:
    """The record index of every image of a batch ([-1, 1] floats back to the constant pixel value)."""
    values = np.rint((batch["images"] + 1.0) * 127.5).astype(int)
    assert (values == values[:, :1, :1, :1]).all()
    return [int(v) for v in values[:, 0, 0, 0]]


def _take(batches, n: int) -> list[dict]:
    return [next(batches) for _ in range(n)]


def test_same_seed_same_batches_and_another_seed_another_order():
    a, b = (_take(pipeline.GrainBatches(RECORDS, _identity, _spec()), 8) for _ in range(2))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["images"], y["images"])
        assert x["captions"] == y["captions"]
    c = _take(pipeline.GrainBatches(RECORDS, _identity, _spec(seed=4)), 8)
    assert [_ids(x) for x in a] != [_ids(x) for x in c]
    for x in a:  # the caption is one of its own record's
        assert all(cap.startswith(f"record {i} ") for i, cap in zip(_ids(x), x["captions"], strict=True))


def test_processes_see_disjoint_examples_and_each_epoch_every_example_once():
    steps_per_epoch = NUM // (2 * 4)  # 2 processes x 4 per process
    seen = {
        p: [
            _ids(x)
            for x in _take(
                pipeline.GrainBatches(RECORDS, _identity, _spec(process_index=p, process_count=2)),
                2 * steps_per_epoch,
            )
        ]
        for p in (0, 1)
    }
    for epoch in range(2):
        window = slice(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch)
        ids = {p: sum(seen[p][window], []) for p in (0, 1)}
        assert not set(ids[0]) & set(ids[1])
        assert sorted(ids[0] + ids[1]) == list(range(NUM))
    first = sum(seen[0][:steps_per_epoch], []) + sum(seen[1][:steps_per_epoch], [])
    second = sum(seen[0][steps_per_epoch:], []) + sum(seen[1][steps_per_epoch:], [])
    assert first != second  # each epoch has its own order
    # One process with the whole batch sees, per step, the union of the two processes' batches.
    whole = [_ids(x) for x in _take(pipeline.GrainBatches(RECORDS, _identity, _spec(per_process_batch=8)), 3)]
    for step in range(3):
        assert sorted(whole[step]) == sorted(seen[0][step] + seen[1][step])


def test_captions_are_chosen_anew_each_epoch():
    spec = _spec(per_process_batch=NUM)  # one batch per epoch
    chosen = {i: set() for i in range(NUM)}
    for batch in _take(pipeline.GrainBatches(RECORDS, _identity, spec), 6):
        for i, cap in zip(_ids(batch), batch["captions"], strict=True):
            chosen[i].add(cap)
    assert all(chosen[i] <= set(RECORDS[i]["captions"]) for i in range(NUM))
    assert sum(len(c) == 2 for c in chosen.values()) > NUM // 2  # P(one caption in 6 epochs) = 1/32


@pytest.mark.parametrize("worker_count", [0, 1])
def test_restored_state_continues_with_the_exact_next_batch(worker_count):
    spec = _spec(worker_count=worker_count, augment=pipeline.Augment(SIZE, "random", random_flip=True))
    original = pipeline.GrainBatches(RECORDS, _identity, spec)
    _take(original, 5)  # mid-epoch: 6 batches per epoch
    state = original.get_state()
    expected = _take(original, 4)
    resumed = pipeline.GrainBatches(RECORDS, _identity, spec, start_step=5, state=state)
    for x, y in zip(expected, _take(resumed, 4), strict=True):
        np.testing.assert_array_equal(x["images"], y["images"])
        assert x["captions"] == y["captions"]
    # Without a state, starting at step 5 gives the same batches (the stream is a function of the step).
    fresh = _take(pipeline.GrainBatches(RECORDS, _identity, spec, start_step=5), 1)[0]
    np.testing.assert_array_equal(fresh["images"], expected[0]["images"])


def test_iterator_state_through_an_orbax_checkpoint(tmp_path):
    spec = _spec()
    batches = pipeline.GrainBatches(RECORDS, _identity, spec)
    _take(batches, 3)
    checkpointer = Checkpointer(str(tmp_path / "ckpt"), keep=2)
    checkpointer.save(3, {"w": jnp.zeros(2)}, {"data": {"next_step": 3}}, pipeline.iterator_state(batches))
    expected = _take(batches, 2)  # the loop goes on while the save is written
    checkpointer.close()
    restored = Checkpointer(str(tmp_path / "ckpt"), keep=2).restore_data(3)
    assert restored["next_step"] == 3
    resumed = pipeline.GrainBatches(RECORDS, _identity, spec, start_step=3, state=restored)
    assert [_ids(x) for x in _take(resumed, 2)] == [_ids(x) for x in expected]
    with pytest.raises(ValueError, match="per_process_batch 4 -> 8"):
        pipeline.GrainBatches(RECORDS, _identity, _spec(per_process_batch=8), start_step=3, state=restored)


def test_swap_left_right_words():
    assert pipeline.swap_left_right("a red circle to the left of a blue square") == (
        "a red circle to the right of a blue square"
    )
    assert (
        pipeline.swap_left_right("Left hand, RIGHT eye, rightmost seat")
        == "Right hand, LEFT eye, leftmost seat"
    )
    assert pipeline.swap_left_right("leftover copyright bright") == "leftover copyright bright"


def test_flipped_images_keep_their_captions_true():
    """A flipped shapes image, captioned by the pipeline, still reads as its caption to the analytic judge."""
    rng = np.random.default_rng(0)
    scenes = [Scene((ObjectSpec("triangle", "red", "large", p),)) for p in ("left", "right")]
    scenes += [
        Scene((ObjectSpec("circle", "blue", "large"), ObjectSpec("square", "yellow", "small")), r)
        for r in ("to the left of", "to the right of")
    ]
    records = [{"image": render(s, 32, rng), "captions": (caption(s),)} for s in scenes]
    augment = pipeline.Augment(32, random_flip=True)
    flipped = 0
    for index, record in enumerate(records):
        for draw in range(8):
            out = augment(record, np.random.default_rng([index, draw]))
            mirrored = np.array_equal(out["images"], pipeline._to_float(record["image"][:, ::-1]))
            flipped += mirrored
            assert (
                out["captions"] != record["captions"][0]
                if mirrored
                else out["captions"] == record["captions"][0]
            )
            assert score(out["images"], out["captions"])["all"], out["captions"]
    assert 0 < flipped < 32


def test_crops_and_paired_super_resolution_crops():
    image = np.arange(6 * 10 * 3, dtype=np.uint8).reshape(6, 10, 3)
    np.testing.assert_array_equal(pipeline.square_crop(image, "center", None), image[:, 2:8])
    offsets = set()
    for seed in range(60):  # P(an offset never drawn) = 5 * 0.8**60 < 1e-5
        crop = pipeline.square_crop(image, "random", np.random.default_rng(seed))
        left = int(crop[0, 0, 0]) // 3
        np.testing.assert_array_equal(crop, image[:, left : left + 6])
        offsets.add(left)
    assert offsets == set(range(5))
    square = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    high, low = pipeline.paired_crops(square, 8, 4, np.random.default_rng(2))  # 16 -> 4: crop 8 -> 2
    assert high.shape == (8, 8, 3) and low.shape == (2, 2, 3)
    windows = [square[t : t + 8, s : s + 8] for t in range(9) for s in range(9)]
    assert any(np.array_equal(high, w) for w in windows)
    np.testing.assert_array_equal(low, pipeline.resize(high, 2))
    out = pipeline.Augment(16, sr_crop=8, sr_lowres_size=4)(
        {"image": square, "captions": ("x",)}, np.random.default_rng(3)
    )
    assert out["images"].shape == (8, 8, 3) and out["lowres_images"].shape == (2, 2, 3)
    with pytest.raises(ValueError, match="whole low-res crop"):
        pipeline.paired_crops(square, 6, 4, np.random.default_rng(0))


def test_text_join_and_config_checks():
    def encode(captions):
        lengths = np.array([[len(c)] for c in captions], np.float32)
        return lengths[:, :, None] * np.ones((1, 1, 2), np.float32), np.ones((len(captions), 1), bool)

    batch = next(pipeline.GrainBatches(RECORDS, _identity, _spec(), join=encode))
    np.testing.assert_array_equal(batch["text_embeddings"][:, 0, 0], [len(c) for c in batch["captions"]])
    assert batch["text_mask"].shape == (4, 1)
    config = ml_collections.ConfigDict({"seed": 0, "data": {"image_size": SIZE, "crop": "middle"}})
    with pytest.raises(ValueError, match="data.crop='middle'"):
        pipeline.PipelineSpec.from_config(config, 4)
    config.data.crop = "random"
    config.data.sr_crop = 4
    with pytest.raises(ValueError, match="sr_crop and data.sr_lowres_size go together"):
        pipeline.PipelineSpec.from_config(config, 4)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        pipeline.GrainBatches(RECORDS[:3], _identity, _spec())

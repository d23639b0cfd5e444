"""The built-in shapes dataset and its judge: determinism, grammar, held-out pairs, judge accuracy both ways."""

import dataclasses
import itertools

import numpy as np
import pytest
from scipy import ndimage

from imagen_jax.data import shapes
from imagen_jax.data.shapes import ObjectSpec, Scene, ShapesDataset
from imagen_jax.errors import UserError


def _uint8(images: np.ndarray) -> np.ndarray:
    return np.rint((images + 1.0) * 127.5).astype(np.uint8)


def _two_object_scenes(n: int, seed: int) -> list[Scene]:
    ds = ShapesDataset(32, max_objects=2, holdout_combinations=False, two_object_fraction=1.0)
    return ds.sample_scenes(np.random.default_rng(seed), n)


# ------------------------------------------------------------------------------------------ determinism


def test_batch_is_a_pure_function_of_seed_step_process():
    a = ShapesDataset(32, max_objects=2, seed=3).batch(step=7, batch_size=16, process_index=1)
    b = ShapesDataset(32, max_objects=2, seed=3).batch(step=7, batch_size=16, process_index=1)  # "resumed"
    np.testing.assert_array_equal(a["images"], b["images"])
    assert a["captions"] == b["captions"]
    assert a["images"].shape == (16, 32, 32, 3) and a["images"].dtype == np.float32
    assert a["images"].min() >= -1.0 and a["images"].max() <= 1.0
    ds = ShapesDataset(32, max_objects=2, seed=3)
    for other in (
        ds.batch(step=7, batch_size=16, process_index=0),
        ds.batch(step=8, batch_size=16, process_index=1),
        ShapesDataset(32, max_objects=2, seed=4).batch(step=7, batch_size=16, process_index=1),
    ):
        assert not np.array_equal(a["images"], other["images"])
        assert a["captions"] != other["captions"]


def test_render_has_exact_palette_inside_and_background_outside():
    image = shapes.render(
        Scene((ObjectSpec("square", "orange", "large", "centre"),)), 64, np.random.default_rng(0)
    )
    assert image.dtype == np.uint8 and image.shape == (64, 64, 3)
    assert tuple(image[32, 32]) == shapes.COLOURS["orange"]  # centre within +-0.05, half-side >= 0.17
    assert tuple(image[0, 0]) == shapes.BACKGROUND
    colours = {tuple(c) for c in image.reshape(-1, 3)}
    assert len(colours) > 2  # anti-aliased edges


@pytest.mark.parametrize("size", [16, 24, 100])
def test_any_size_renders(size):
    batch = ShapesDataset(size, max_objects=2).batch(0, 4)
    assert batch["images"].shape == (4, size, size, 3)


@pytest.mark.parametrize(
    "kwargs", [dict(image_size=8), dict(image_size=32, max_objects=3), dict(image_size=32.5)]
)
def test_bad_dataset_arguments_are_rejected(kwargs):
    with pytest.raises(ValueError):
        ShapesDataset(**kwargs)


def test_unknown_split_is_rejected():
    with pytest.raises(ValueError, match="split"):
        ShapesDataset(32).batch(0, 2, split="validation")


# ---------------------------------------------------------------------------------------------- grammar


def test_caption_parse_round_trip_over_the_whole_grammar():
    one, two = shapes.all_scenes(1), shapes.all_scenes(2)
    assert len(one) == 8 * 3 * 2 * 5
    assert len(two) == (8 * 3 * 2) * (7 * 3 * 2) * 4
    captions = [shapes.caption(s) for s in one + two]
    assert len(set(captions)) == len(captions)
    for scene, text in zip(one + two, captions, strict=True):
        assert shapes.parse_caption(text) == scene


def test_caption_forms():
    scene = Scene(
        (ObjectSpec("circle", "red", "large"), ObjectSpec("square", "blue", "small")), "to the left of"
    )
    assert shapes.caption(scene) == "a large red circle to the left of a small blue square"
    assert shapes.caption(Scene((ObjectSpec("triangle", "green", "large", "centre"),))) == (
        "a large green triangle in the centre"
    )
    assert shapes.parse_caption("  A small blue square on the LEFT. ") == Scene(
        (ObjectSpec("square", "blue", "small", "left"),)
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a red circle at the top",
        "a huge red circle at the top",
        "a large pink circle at the top",
        "a large red hexagon at the top",
        "a large red circle in the corner",
        "a large red circle at the top of a small blue square",
        "a large red circle to the left of",
    ],
)
def test_parse_rejects_captions_outside_the_grammar(text):
    with pytest.raises(ValueError, match="not in the shapes grammar"):
        shapes.parse_caption(text)


def test_invalid_scenes_are_rejected():
    with pytest.raises(ValueError):
        ObjectSpec("circle", "pink", "large", "top")
    with pytest.raises(ValueError):
        Scene((ObjectSpec("circle", "red", "large"),))  # one object needs a position
    with pytest.raises(ValueError):
        Scene((ObjectSpec("circle", "red", "large"), ObjectSpec("circle", "blue", "large")), "near")


def test_caption_corpus_covers_every_word():
    vocabulary = set(" ".join([*shapes.COLOURS, *shapes.SHAPES, *shapes.SIZES, "a"]).split())
    vocabulary |= set(" ".join([*shapes.POSITION_PHRASES.values(), *shapes.RELATIONS]).split())
    corpus = ShapesDataset(32, max_objects=1).caption_corpus(100)
    assert len(corpus) == 100
    assert set(" ".join(corpus).split()) == vocabulary
    assert corpus == ShapesDataset(32, max_objects=1).caption_corpus(100)
    for text in corpus:
        shapes.parse_caption(text)


# ------------------------------------------------------------------------------------ held-out pairs


def _pairs(scene: Scene) -> set[tuple[str, str]]:
    return {(o.colour, o.shape) for o in scene.objects}


def test_holdout_pairs_leave_every_colour_and_shape_in_training():
    held = set(shapes.HOLDOUT_PAIRS)
    assert 4 <= len(held) <= 6
    train_pairs = set(itertools.product(shapes.COLOURS, shapes.SHAPES)) - held
    assert {c for c, _ in train_pairs} == set(shapes.COLOURS)
    assert {s for _, s in train_pairs} == set(shapes.SHAPES)


def test_held_out_pairs_never_in_train_and_always_in_holdout():
    held = set(shapes.HOLDOUT_PAIRS)
    ds = ShapesDataset(32, max_objects=2, holdout_combinations=True)
    rng = np.random.default_rng(0)
    train, holdout = ds.sample_scenes(rng, 3000, "train"), ds.sample_scenes(rng, 3000, "holdout")
    assert all(not (_pairs(s) & held) for s in train)
    assert all(_pairs(s) & held for s in holdout)
    assert {len(s.objects) for s in train} == {1, 2} == {len(s.objects) for s in holdout}
    assert all(len({o.colour for o in s.objects}) == len(s.objects) for s in train + holdout)
    assert set().union(*map(_pairs, train)) == set(itertools.product(shapes.COLOURS, shapes.SHAPES)) - held
    prompts = ds.prompts(64, "holdout")
    assert len(prompts) == 64 and prompts == ds.prompts(64, "holdout")
    assert all(_pairs(shapes.parse_caption(p)) & held for p in prompts)
    batch = ds.batch(0, 64, split="train")
    assert all(not (_pairs(shapes.parse_caption(c)) & held) for c in batch["captions"])


@pytest.mark.parametrize("n", range(1, len(shapes.HOLDOUT_ORDER) + 1))
def test_every_number_of_held_out_pairs_leaves_every_colour_and_shape_in_training(n):
    ds = ShapesDataset(16, max_objects=1, num_holdout_pairs=n)
    held = set(ds.holdout_pairs)
    assert len(held) == n and ds.holdout_pairs == shapes.HOLDOUT_ORDER[:n]
    train_pairs = set(itertools.product(shapes.COLOURS, shapes.SHAPES)) - held
    assert {c for c, _ in train_pairs} == set(shapes.COLOURS)
    assert {s for _, s in train_pairs} == set(shapes.SHAPES)
    rng = np.random.default_rng(n)
    train, holdout = ds.sample_scenes(rng, 1500, "train"), ds.sample_scenes(rng, 1500, "holdout")
    assert set().union(*map(_pairs, train)) == train_pairs
    assert set().union(*map(_pairs, holdout)) == held


def test_the_default_holds_out_the_six_pairs_of_before_and_bad_counts_are_refused():
    assert ShapesDataset(16).holdout_pairs == shapes.HOLDOUT_PAIRS == shapes.HOLDOUT_ORDER[:6]
    assert len(set(shapes.HOLDOUT_ORDER)) == 16  # at 16 each colour keeps one shape: no 17th can go
    assert ShapesDataset(16, holdout_combinations=False, num_holdout_pairs=12).holdout_pairs == ()
    for bad in (0, 17, 2.5):
        with pytest.raises(UserError, match="num_holdout_pairs must be an integer from 1 to 16"):
            ShapesDataset(16, num_holdout_pairs=bad)


def test_the_config_key_reaches_training_data_and_the_eval_reference():
    from configs import quickstart
    from imagen_jax.data import pipeline
    from imagen_jax.evaluation import run as eval_run

    config = quickstart.get_config("tiny")
    assert pipeline.build_dataset(config).holdout_pairs == shapes.HOLDOUT_PAIRS
    config.data.num_holdout_pairs = 12
    dataset = pipeline.build_dataset(config)
    held = set(shapes.HOLDOUT_ORDER[:12])
    assert set(dataset.holdout_pairs) == held
    reference = eval_run.reference_batch(dataset, "holdout", 64, seed=0)
    assert all(_pairs(shapes.parse_caption(c)) & held for c in reference["captions"])
    assert {p for c in reference["captions"] for p in _pairs(shapes.parse_caption(c))} - set(
        shapes.HOLDOUT_PAIRS
    )
    train = dataset.batch(0, 64, split="train")
    assert all(not (_pairs(shapes.parse_caption(c)) & held) for c in train["captions"])
    # a TFDS dataset's splits are fixed when it is prepared: the count would do nothing there, so it is refused
    config.data.source = "tfds"
    with pytest.raises(UserError, match="num_holdout_pairs=12 applies to data.source=shapes"):
        pipeline.build_dataset(config)


def test_without_holdout_both_splits_draw_from_everything():
    ds = ShapesDataset(32, max_objects=1, holdout_combinations=False)
    rng = np.random.default_rng(1)
    everything = set(itertools.product(shapes.COLOURS, shapes.SHAPES))
    for split in shapes.SPLITS:
        assert set().union(*map(_pairs, ds.sample_scenes(rng, 2000, split))) == everything


def test_one_object_prompts_are_distinct_until_exhausted():
    ds = ShapesDataset(32, max_objects=1)
    distinct_holdout = len(shapes.HOLDOUT_PAIRS) * 2 * 5
    prompts = ds.prompts(distinct_holdout + 4, "holdout", seed=1)
    assert len(set(prompts)) == distinct_holdout
    assert prompts[distinct_holdout:] == prompts[:4]


# ------------------------------------------------------------------------------------------------ judge


@pytest.mark.parametrize("size,max_objects,n", [(32, 1, 1000), (32, 2, 800), (64, 1, 600), (64, 2, 600)])
def test_judge_reads_the_datasets_own_images(size, max_objects, n):
    ds = ShapesDataset(size, max_objects=max_objects, two_object_fraction=1.0)
    batch = ds.batch(step=11, batch_size=n, split="train")
    images = _uint8(batch["images"])
    scores = [shapes.score(image, text) for image, text in zip(images, batch["captions"], strict=True)]
    accuracy = np.mean([s["all"] for s in scores])
    assert accuracy >= 0.99, accuracy
    # float input in [-1, 1] reads the same as uint8
    assert all(shapes.score(batch["images"][i], batch["captions"][i]) == scores[i] for i in range(20))


def test_judge_reads_holdout_images_and_survives_mild_noise_and_blur():
    ds = ShapesDataset(32, max_objects=2)
    batch = ds.batch(step=2, batch_size=300, split="holdout")
    rng = np.random.default_rng(0)
    blurred = ndimage.gaussian_filter(_uint8(batch["images"]).astype(np.float32), (0, 0.6, 0.6, 0))
    noisy = np.clip(np.rint(blurred + rng.normal(0, 12, blurred.shape)), 0, 255).astype(np.uint8)
    accuracy = np.mean([shapes.score(x, t)["all"] for x, t in zip(noisy, batch["captions"], strict=True)])
    assert accuracy >= 0.97, accuracy


def test_judge_on_hand_painted_objects():
    """Objects painted with slicing and an explicit disc formula, independent of the renderer."""
    image = np.zeros((64, 64, 3), np.uint8) + np.uint8(shapes.BACKGROUND)
    image[28:36, 6:14] = shapes.COLOURS["yellow"]  # 8x8 square, centroid (10, 32): small, on the left
    yy, xx = np.mgrid[0:64, 0:64] + 0.5
    image[(xx - 44) ** 2 + (yy - 32) ** 2 <= 12**2] = shapes.COLOURS["purple"]  # disc d=24: large
    (disc, square) = shapes.judge_image(image)  # largest first
    assert (disc.shape, disc.colour, disc.size) == ("circle", "purple", "large")
    assert (square.shape, square.colour, square.size, square.position) == (
        "square",
        "yellow",
        "small",
        "left",
    )
    np.testing.assert_allclose(square.centroid, (10 / 64, 32 / 64), atol=1e-6)
    np.testing.assert_allclose(disc.centroid, (44 / 64, 32 / 64), atol=0.01)
    np.testing.assert_allclose(square.area, 64 / 64**2, rtol=1e-6)
    assert shapes.score(image, "a small yellow square to the left of a large purple circle")["all"]
    assert shapes.score(image, "a large purple circle to the right of a small yellow square")["all"]


def test_judge_sees_nothing_in_a_blank_or_noise_image():
    blank = np.full((32, 32, 3), shapes.BACKGROUND, np.uint8)
    assert shapes.judge_image(blank) == []
    assert shapes.score(blank, "a large red circle at the top") == dict.fromkeys(
        ("shape", "colour", "size", "position", "all"), False
    )
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert not shapes.score(noise, "a large red circle at the top")["all"]


def _mutations(scene: Scene, rng: np.random.Generator) -> dict[str, Scene]:
    """One wrong caption per attribute: a colour absent from the scene, another shape, size, position."""
    objects = list(scene.objects)
    i = int(rng.integers(len(objects)))
    obj = objects[i]
    used = {o.colour for o in objects}
    swap = {
        "colour": dataclasses.replace(
            obj, colour=str(rng.choice([c for c in shapes.COLOURS if c not in used]))
        ),
        "shape": dataclasses.replace(
            obj, shape=str(rng.choice([s for s in shapes.SHAPES if s != obj.shape]))
        ),
        "size": dataclasses.replace(obj, size="small" if obj.size == "large" else "large"),
    }
    out = {
        k: Scene(tuple(v if j == i else o for j, o in enumerate(objects)), scene.relation)
        for k, v in swap.items()
    }
    if scene.relation is None:
        position = str(rng.choice([p for p in shapes.POSITIONS if p != obj.position]))
        out["position"] = Scene((dataclasses.replace(obj, position=position),))
    else:
        out["position"] = Scene(
            scene.objects, str(rng.choice([r for r in shapes.RELATIONS if r != scene.relation]))
        )
    return out


@pytest.mark.parametrize("max_objects", [1, 2])
def test_judge_rejects_each_wrong_attribute(max_objects):
    ds = ShapesDataset(32, max_objects=max_objects, two_object_fraction=1.0)
    rng = np.random.default_rng(5)
    scenes = ds.sample_scenes(rng, 150)
    for scene in scenes:
        image = shapes.render(scene, 32, rng)
        detections = shapes.judge_image(image)
        assert shapes.score_detections(detections, scene)["all"]
        for attribute, wrong in _mutations(scene, rng).items():
            result = shapes.score_detections(detections, wrong)
            assert not result["all"] and not result[attribute], (shapes.caption(wrong), result)
            assert all(result[k] for k in ("shape", "colour", "size", "position") if k != attribute)


def test_relation_is_symmetric_and_object_count_matters():
    scene = _two_object_scenes(1, seed=9)[0]
    image = shapes.render(scene, 64, np.random.default_rng(0))
    inverse = {"to the left of": "to the right of", "to the right of": "to the left of", "above": "below"}
    inverse["below"] = "above"
    flipped = Scene(scene.objects[::-1], inverse[scene.relation])
    assert shapes.score(image, shapes.caption(flipped))["all"]
    first = dataclasses.replace(scene.objects[0], position="centre")
    assert not any(shapes.score(image, shapes.caption(Scene((first,)))).values())

"""The CLIP family (trained here), CLIP score, the held-out AUC and reranking: the math against closed forms and
brute force, the family end to end through main on the tiny config, and eval / rerank with a saved random CLIP."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_jax.data import shapes
from imagen_jax.evaluation import alignment, clip_score
from imagen_jax.evaluation import run as eval_run
from imagen_jax.models import contrastive

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from test_clip import save_hf_clip  # noqa: E402

CLIP_TINY = "configs/clip_shapes.py:tiny"
QUICKSTART_TINY = "configs/quickstart.py:tiny"


@pytest.fixture(scope="module")
def hf_clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf_clip")
    save_hf_clip(path)
    return str(path)


def test_contrastive_loss_is_clips_symmetric_cross_entropy():
    rng = np.random.default_rng(0)
    image, text = (rng.normal(size=(5, 8)) for _ in range(2))
    image, text = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (image, text))
    scale = np.log(20.0)

    def reference(same):
        logits = 20.0 * image @ text.T
        targets = same / same.sum(1, keepdims=True)
        ce = lambda z: -(targets * (z - np.log(np.exp(z).sum(1, keepdims=True)))).sum(1).mean()
        return 0.5 * (ce(logits) + ce(logits.T))

    for same in (
        np.eye(5, dtype=bool),
        np.eye(5, dtype=bool) | (np.arange(5)[:, None] // 2 == np.arange(5) // 2),
    ):
        loss, accuracy = contrastive.contrastive_loss(jnp.asarray(image), jnp.asarray(text), scale, same)
        np.testing.assert_allclose(float(loss), reference(same.astype(float)), rtol=1e-5)
        best = np.argmax(image @ text.T, axis=1)
        assert float(accuracy) == pytest.approx(np.mean(same[np.arange(5), best]))
    # the temperature is clamped at 100, as CLIP's
    high, _ = contrastive.contrastive_loss(jnp.asarray(image), jnp.asarray(text), 9.0, np.eye(5, dtype=bool))
    capped, _ = contrastive.contrastive_loss(
        jnp.asarray(image), jnp.asarray(text), np.log(100.0), np.eye(5, dtype=bool)
    )
    assert float(high) == pytest.approx(float(capped), rel=1e-5)


def test_same_captions_finds_repeats():
    emb = np.random.default_rng(1).normal(size=(4, 3, 2)).astype(np.float32)
    emb[2] = emb[0]
    mask = np.ones((4, 3), bool)
    same = np.asarray(contrastive.same_captions(jnp.asarray(emb), jnp.asarray(mask)))
    expected = np.eye(4, dtype=bool)
    expected[0, 2] = expected[2, 0] = True
    np.testing.assert_array_equal(same, expected)


def test_roc_auc_against_brute_force_and_pearson():
    rng = np.random.default_rng(2)
    pos, neg = rng.integers(0, 5, 40).astype(float), rng.integers(0, 5, 60).astype(float)  # many ties
    brute = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert clip_score.roc_auc(pos, neg) == pytest.approx(brute)
    assert clip_score.roc_auc([2.0, 3.0], [0.0, 1.0]) == 1.0 and clip_score.roc_auc([0.0], [1.0]) == 0.0
    x = rng.normal(size=50)
    assert clip_score.pearson(x, 3 * x + 1) == pytest.approx(1.0)
    assert clip_score.pearson(x, -x) == pytest.approx(-1.0)


def test_pearson_interval_is_fishers_closed_form_and_covers_the_truth_95_percent_of_the_time():
    assert clip_score.pearson_interval(0.0, 28) == pytest.approx((-np.tanh(0.392), np.tanh(0.392)), abs=1e-5)
    assert all(np.isnan(clip_score.pearson_interval(0.5, 3))) and all(
        np.isnan(clip_score.pearson_interval(1.0, 9))
    )
    rng, rho, n, covered = np.random.default_rng(3), 0.6, 12, 0
    cov = [[1, rho], [rho, 1]]
    for _ in range(2000):  # coverage of bivariate-normal samples' intervals: 0.95 up to sampling error
        x, y = rng.multivariate_normal([0, 0], cov, n).T
        low, high = clip_score.pearson_interval(clip_score.pearson(x, y), n)
        covered += low <= rho <= high
    assert abs(covered / 2000 - 0.95) < 0.015


def test_wrong_captions_change_one_attribute_and_the_judge_sees_it():
    data = shapes.ShapesDataset(32, max_objects=2, two_object_fraction=0.5)
    batch = data.batch(0, 12, split="holdout")
    rng = np.random.default_rng(0)
    assert all(s["all"] for s in alignment.judge_scores(batch["images"], batch["captions"]))
    for attribute in clip_score.ATTRIBUTES:
        wrong = [clip_score.wrong_caption(c, attribute, rng) for c in batch["captions"]]
        for right, changed in zip(batch["captions"], wrong, strict=True):
            a, b = shapes.parse_caption(right), shapes.parse_caption(changed)
            assert a != b and a.objects[1:] == b.objects[1:]  # only the first object or the relation changes
        scores = alignment.judge_scores(batch["images"], wrong)
        key = "position" if attribute == "position" else attribute
        assert not any(s[key] for s in scores), attribute


def test_clip_score_convention_and_best_of(hf_clip):
    scorer = clip_score.HfClipScorer(hf_clip, batch_size=4)
    data = shapes.ShapesDataset(16)
    batch = data.batch(0, 6)
    prompts = batch["captions"][:3]
    images = batch["images"]
    cos = np.sum(
        scorer.embed_images(images) * scorer.embed_texts([prompts[i // 2] for i in range(6)]), axis=1
    )
    scores = clip_score.clip_scores(scorer, images, [prompts[i // 2] for i in range(6)])
    np.testing.assert_allclose(scores, 100 * np.maximum(cos, 0), rtol=1e-5, atol=1e-4)

    from imagen_jax import rerank

    calls = []

    def generate(repeated, key, **options):  # candidates 2i, 2i + 1 for prompt i
        calls.append((list(repeated), options))
        return images

    kept, kept_scores, every = rerank.best_of(
        generate, scorer, prompts, 2, jax.random.key(0), guidance_scale=2.0
    )
    assert calls == [([p for p in prompts for _ in range(2)], {"guidance_scale": 2.0})]
    np.testing.assert_allclose(every, scores.reshape(3, 2), rtol=1e-5, atol=1e-4)
    best = np.argmax(every, axis=1)
    np.testing.assert_array_equal(kept, images[2 * np.arange(3) + best])
    np.testing.assert_allclose(kept_scores, every.max(axis=1))


def test_clip_family_trains_through_main_and_scores_with_its_own_encoder(tmp_path, capsys):
    from imagen_jax import rerank
    from imagen_jax.main import main

    workdir = str(tmp_path / "clip")
    assert main(["m", "--config", CLIP_TINY, "--workdir", workdir]) == 0
    out = capsys.readouterr().out
    assert "held-out ROC AUC, right vs one-attribute-wrong captions" in out
    report = json.loads((tmp_path / "clip" / "samples" / "clip_4.json").read_text())
    assert report["judge_auc"] == 1.0 and 0.0 <= report["auc"] <= 1.0 and report["count"] == 16
    metrics = [json.loads(line) for line in (tmp_path / "clip" / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "accuracy", "logit_scale"} <= set(metrics[-1])

    # the workdir opens as a scorer: its own frozen text encoder, the EMA parameters of its last checkpoint
    scorer = rerank.open_scorer(workdir)
    assert scorer.name.endswith("@4")
    batch = shapes.ShapesDataset(16).batch(0, 3)
    emb, mask = scorer.encode(batch["captions"])
    expected = np.asarray(scorer.family.embed_texts(scorer.params, emb, mask))
    np.testing.assert_allclose(scorer.embed_texts(batch["captions"]), expected, rtol=1e-5, atol=1e-6)
    resized = np.asarray(clip_score.resize_images(jnp.asarray(batch["images"]), 32, "bilinear"))
    assert scorer.embed_images(resized).shape == (3, 16)  # another model's 32 px samples are resized to 16

    # a CLIP generates nothing: sampling it is refused at the door, in one line
    assert main(["m", "--workdir", workdir, "--config.mode=sample"]) == 2
    assert "generates no images" in capsys.readouterr().err


def test_rerank_and_clip_settings_are_checked_at_the_door(tmp_path, capsys, hf_clip):
    from imagen_jax.main import main

    base = ["m", "--config", QUICKSTART_TINY, "--workdir", str(tmp_path / "w"), "--config.mode=sample"]
    assert main([*base, "--config.sample.rerank=4"]) == 2
    assert "--config.sample.clip_weights=" in capsys.readouterr().err
    assert main([*base, "--config.sample.rerank=0"]) == 2
    assert "sample.rerank" in capsys.readouterr().err
    assert main([*base, "--config.sample.rerank=2", f"--config.sample.clip_weights={tmp_path}"]) == 2
    assert "has no config.json" in capsys.readouterr().err
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    assert main([*base, "--config.sample.rerank=2", f"--config.sample.clip_weights={tmp_path}"]) == 2
    assert "neither a Hugging Face CLIP" in capsys.readouterr().err
    cascade = [
        "m",
        "--config",
        "configs/shapes_cascade.py:tiny",
        "--workdir",
        str(tmp_path / "c"),
        "--config.mode=sample",
    ]
    assert main([*cascade, "--config.sample.rerank=2", f"--config.sample.clip_weights={hf_clip}"]) == 2
    assert "single-stage" in capsys.readouterr().err
    settings = eval_run.default_settings()
    settings.clip_weights = str(tmp_path / "nowhere")
    with pytest.raises(eval_run.UserError, match="eval.clip_weights"):
        eval_run.check_settings(settings)
    settings.clip_weights = hf_clip
    eval_run.check_settings(settings)


def test_eval_adds_clip_score_and_plots_fid_against_it(tmp_path, hf_clip):
    data = shapes.ShapesDataset(16)
    settings = eval_run.default_settings()
    settings.update(
        num_samples=8,
        kid_subsets=2,
        kid_subset_size=4,
        grid_images=0,
        cache_dir=str(tmp_path / "cache"),
        sweep_option="guidance_scale",
        sweep_values=(1.0, 3.0),
        clip_weights=hf_clip,
    )
    settings.feature_net.update(widths=(4,), feature_dim=8, steps=2, batch_size=8)

    def generate(
        prompts, key, chunk=64, guidance_scale=1.0
    ):  # real images of the prompts, noisier at low guidance
        rendered = [
            shapes.render(shapes.parse_caption(p), 16, np.random.default_rng(i))
            for i, p in enumerate(prompts)
        ]
        images = np.stack(rendered).astype(np.float32) / 127.5 - 1
        noise = np.random.default_rng(0).normal(size=images.shape) / guidance_scale
        return np.clip(images + 0.3 * noise, -1, 1).astype(np.float32)

    subject = eval_run.Subject(generate, "imagen", "test", {"guidance_scale": 1.0})
    scorer = clip_score.HfClipScorer(hf_clip)
    report = eval_run.evaluate(subject, data, 16, str(tmp_path), 0, settings, log=lambda s: None, clip=scorer)
    for split in settings.prompt_sets:
        r = report["prompt_sets"][split]
        assert r["clip_score"]["clip"] == scorer.name and 0 <= r["clip_score"]["mean"] <= 100
    assert len(report["sweep"]["points"]) == 4 and all("clip_score" in p for p in report["sweep"]["points"])
    assert (tmp_path / "eval" / "0_sweep_clip.png").is_file()
    assert any("CLIP score" in line for line in eval_run.format_report(report))


def test_compare_baselines_reports_clip_score_and_its_correlation_with_the_judge():
    import pathlib

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "experiments"))
    import compare_baselines

    runs = []
    for clip, judge in ((60.0, 0.2), (70.0, 0.4), (80.0, 0.9)):
        sets = {"holdout": {"clip_score": {"mean": clip, "clip": "clip:x"}, "alignment": {"all": judge}}}
        runs.append({"eval": {"prompt_sets": sets}})
    lines = compare_baselines._clip_lines(runs, ["holdout"])
    r = clip_score.pearson([60, 70, 80], [0.2, 0.4, 0.9])
    assert "`clip:x`" in lines[0] and f"- holdout prompts: r = {r:.3f} over 3 runs" in lines
    runs.append(
        {"eval": {"prompt_sets": {"holdout": {"clip_score": {"mean": 75.0}, "alignment": {"all": 0.5}}}}}
    )
    r4 = clip_score.pearson([60, 70, 80, 75], [0.2, 0.4, 0.9, 0.5])
    low, high = clip_score.pearson_interval(r4, 4)
    assert (
        f"- holdout prompts: r = {r4:.3f} over 4 runs (95% interval by Fisher's z: {low:.2f} to {high:.2f})"
        in (compare_baselines._clip_lines(runs, ["holdout"]))
    )
    assert compare_baselines._metric(runs[1]["eval"], "holdout", "clip_score") == 70.0

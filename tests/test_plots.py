"""The figures (evaluation/plots.py, matplotlib on Agg): the GAN's panel of the comparison's training curves plots its
d_loss and g_loss (its metrics hold no `loss`), the seeds' mean is the mean, and the sweep's alignment bars are the
95% binomial interval."""

import json
import math
import sys

import numpy as np
import pytest

from imagen_jax.evaluation import plots

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "experiments"))
import compare_baselines  # noqa: E402


@pytest.fixture
def figures(monkeypatch):
    """The figures the plots module saves, kept open for inspection (and still written)."""
    kept = []
    real_save = plots.save

    def keep(fig, path):
        kept.append(fig)
        fig.savefig(path)
        return path

    monkeypatch.setattr(plots, "save", keep)
    yield kept
    for fig in kept:
        plots.pyplot().close(fig)
    assert real_save is not None


def _metrics(path, rows):
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_the_gan_panel_plots_d_loss_and_g_loss_and_the_mean_of_seeds(tmp_path, figures):
    runs = []
    for seed in (0, 1):
        gan = [{"step": s, "d_loss": 1.0 + seed, "g_loss": 2.0 * s + seed} for s in (10, 20, 30)]
        imagen = [{"step": s, "loss": 0.5 / s + seed} for s in (10, 20, 30)]
        for model, rows in (("gan_shapes", gan), ("imagen_shapes", imagen)):
            curve = compare_baselines._curve(_metrics(tmp_path / f"{model}{seed}", rows))
            runs.append({"model": model, "seed": seed, "curve": curve})
    assert set(runs[0]["curve"]) == {"d_loss", "g_loss"} and set(runs[1]["curve"]) == {"loss"}
    path = compare_baselines.plot_curves(runs, str(tmp_path / "curves.png"))
    assert (tmp_path / "curves.png").stat().st_size > 0 and path.endswith("curves.png")
    gan_axis, imagen_axis = figures[0].axes
    assert gan_axis.get_title() == "gan_shapes"
    labels = gan_axis.get_legend_handles_labels()[1]
    assert [label.split()[0] for label in labels] == ["d_loss", "g_loss"]
    # the thick line of each series is the mean over seeds: g_loss = 2 step + seed -> 2 step + 0.5
    mean_lines = [container.lines[0] for container in gan_axis.containers]
    np.testing.assert_allclose(mean_lines[1].get_ydata(), [20.5, 40.5, 60.5])
    np.testing.assert_allclose(mean_lines[0].get_ydata(), [1.5, 1.5, 1.5])
    assert imagen_axis.get_xlabel() == "training step"
    # results.json written before the curves were per loss key hold a plain list: read as "loss"
    old = [{"model": "imagen_shapes", "seed": 0, "curve": [(10, 1.0), (20, 0.5)]}]
    compare_baselines.plot_curves(old, str(tmp_path / "old.png"))
    assert figures[1].axes[0].get_legend_handles_labels()[1][0].startswith("loss")


def test_sweep_alignment_bars_are_the_binomial_interval(tmp_path, figures):
    assert plots.binomial_halfwidth(0.5, 100) == pytest.approx(1.96 * 0.05)
    assert plots.binomial_halfwidth(1.0, 100) == 0.0 and plots.binomial_halfwidth(0.3, 0) == 0.0
    points = [
        {"value": g, "prompt_set": "holdout", "fid": 10.0 / g, "alignment": {"all": a, "count": 64}}
        for g, a in ((1.0, 0.25), (3.0, 0.5), (5.0, 0.75))
    ]
    plots.sweep_figure(points, "guidance_scale", "shapes-cnn", str(tmp_path / "sweep.png"))
    axis = figures[0].axes[0]
    assert "FID" in axis.get_ylabel() and "alignment" in axis.get_xlabel()
    bar = axis.collections[0].get_segments()[
        1
    ]  # the x error bar of the middle point: 0.5 +- 1.96 sqrt(.25/64)
    np.testing.assert_allclose(
        sorted(bar[:, 0]), [0.5 - 1.96 * math.sqrt(0.25 / 64), 0.5 + 1.96 * math.sqrt(0.25 / 64)]
    )

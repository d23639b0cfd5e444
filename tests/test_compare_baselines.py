"""experiments/compare_baselines.py's budget bookkeeping (config lists, run names, throughput probes shared by
tuning and comparison), the report's verdict and experiments/tuning_table.py's choice, on hand-made inputs (no
training)."""

import argparse
import json
import pathlib
import sys

import numpy as np
import pytest
from scipy import stats

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "experiments"))
import compare_baselines  # noqa: E402
import tuning_table  # noqa: E402

FOUR = "configs/imagen_shapes.py:px16,configs/gan_shapes.py:px16,configs/vae_shapes.py:px16,configs/vae_shapes.py:vq,px16"


def test_configs_split_at_files_not_inside_a_variant():
    configs = compare_baselines.split_configs(FOUR)
    assert configs[-1] == "configs/vae_shapes.py:vq,px16" and len(configs) == 4
    assert [compare_baselines.run_name(c) for c in configs] == [
        "imagen_shapes_px16",
        "gan_shapes_px16",
        "vae_shapes_px16",
        "vae_shapes_vq_px16",
    ]
    assert compare_baselines.split_configs("a.py, ,b.py:tiny") == ["a.py", "b.py:tiny"]


def test_learning_rates_share_a_probe_and_costly_overrides_get_their_own():
    key = compare_baselines.throughput_key
    config = "configs/gan_shapes.py:px16"
    plain = key(config, [])
    assert key(config, ["train.g_learning_rate=1e-4", "train.d_learning_rate=2e-4", "seed=3"]) == plain
    assert key(config, ["gan.r1_gamma=1.0"]) != plain
    assert key(config, ["gan.r1_gamma=1.0", "model.generator.dim=8"]) == key(
        config, ["model.generator.dim=8", "gan.r1_gamma=1.0"]
    )


def _args(tmp_path, **kw):
    values = dict(
        budget_steps=None,
        budget_images=None,
        budget_minutes=0.5,
        out=str(tmp_path / "out"),
        throughput=str(tmp_path / "throughput.json"),
        probe_steps=60,
    )
    values.update(kw)
    return argparse.Namespace(**values)


def test_a_recorded_probe_sets_the_steps_without_training(tmp_path):
    config = "configs/vae_shapes.py:vq,px16"
    probe = {"images_per_sec": 40.0, "rates": [40.0], "probe_steps": 60, "measured": "then", "command": "c"}
    (tmp_path / "throughput.json").write_text(json.dumps({"vae_shapes_vq_px16": probe}))
    args = _args(tmp_path)
    # 0.5 minutes x 60 s x 40 images/s / batch 8 = 150 steps, for every learning rate
    assert compare_baselines.steps_for_budget(args, config, 8, ["train.learning_rate=4e-3"]) == (150, probe)
    assert compare_baselines.steps_for_budget(
        _args(tmp_path, budget_minutes=None, budget_images=20), config, 8, []
    ) == (
        3,
        None,
    )
    assert not (tmp_path / "out").exists()  # nothing probed


def test_logged_step_seconds_sum_each_interval_across_a_resume(tmp_path):
    records = [(10, 20.0), (20, 40.0), (30, 40.0), (20, 80.0), (30, 80.0), (40, 0.0)]
    (tmp_path / "metrics.jsonl").write_text(
        "\n".join(json.dumps({"step": s, "images_per_sec": r, "loss": 1.0}) for s, r in records) + "\n"
    )
    # batch 4: 10 x 4 / 20 + 10 x 4 / 40 + 10 x 4 / 40; the resumed record at step 20 has no known start and
    # is left out; then 10 x 4 / 80; a zero rate counts nothing
    assert compare_baselines.logged_step_seconds(str(tmp_path), 4) == pytest.approx(2 + 1 + 1 + 0.5)
    assert compare_baselines.logged_step_seconds(str(tmp_path / "none"), 4) is None


def test_an_unfinished_probe_is_refused_not_reused(tmp_path):
    args = _args(tmp_path)
    (tmp_path / "out" / "probes" / "gan_shapes_px16").mkdir(parents=True)
    with pytest.raises(SystemExit, match="unfinished probe; remove it"):
        compare_baselines.probe_throughput(args, "configs/gan_shapes.py:px16", [])


def _results(path: pathlib.Path, model: str, sets: list[str], holdout: float, fid: float, sweep=None) -> None:
    alignment = {"all": holdout, "shape": holdout, "colour": 1.0, "size": 1.0, "position": 1.0}
    prompt_set = {"alignment": alignment, "fid": fid}
    run = {
        "model": model,
        "seed": 0,
        "steps": 100,
        "batch_size": 32,
        "workdir": str(path / "run"),
        "eval": {"num_samples": 256, "prompt_sets": {"holdout": prompt_set, "train": prompt_set}},
    }
    if sweep:  # (option, the config's value, {value: (held-out alignment, FID)})
        option, default, points = sweep
        (path / "run").mkdir(parents=True)
        (path / "run" / "config.json").write_text(json.dumps({"sample": {option: default}}))
        run["eval"]["sweep"] = {
            "option": option,
            "points": [
                {
                    "value": v,
                    "prompt_set": split,
                    "alignment": {"all": a if split == "holdout" else 1.0},
                    "fid": f,
                }
                for v, (a, f) in points.items()
                for split in ("train", "holdout")
            ],
        }
    argv = ["--configs", "x.py", "--seeds", "1"] + [a for s in sets for a in ("--set", s)]
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps({"argv": argv, "runs": [run]}))


def test_the_tuning_table_chooses_by_held_out_alignment_then_fid(tmp_path):
    _results(tmp_path / "runs" / "a", "vae", [], 0.50, 10.0)
    _results(tmp_path / "runs" / "b", "vae", ["train.learning_rate=1e-3"], 0.60, 30.0)
    _results(tmp_path / "runs" / "c", "vae", ["model.free_bits=1.0"], 0.60, 20.0)  # same alignment, lower FID
    _results(tmp_path / "runs" / "d", "gan", ["train.g_learning_rate=1e-4"], 0.10, 5.0)
    out = tmp_path / "tuning"
    tuning_table.main(["--runs", str(tmp_path / "runs" / "*"), "--out", str(out)])
    table = json.loads((tmp_path / "tuning.json").read_text())
    assert table["chosen"] == {"vae": ["model.free_bits=1.0"], "gan": ["train.g_learning_rate=1e-4"]}
    text = (tmp_path / "tuning.md").read_text()
    chosen_rows = [line for line in text.splitlines() if line.endswith("| **yes** |")]
    assert len(chosen_rows) == 2 and "model.free_bits=1.0 | 100 | 0.600" in chosen_rows[0]
    assert "| vae | (config as is) | 100 | 0.500 ± 0.061 |" in text  # 1.96 sqrt(0.25 / 256) = 0.06125


def test_the_tuning_table_names_an_override_every_run_shares_once(tmp_path):
    split = "data.num_holdout_pairs=12"
    _results(tmp_path / "runs" / "a", "vae", [split], 0.50, 10.0)
    _results(tmp_path / "runs" / "b", "vae", [split, "train.learning_rate=5e-4"], 0.60, 30.0)
    _results(tmp_path / "runs" / "c", "gan", [split, "eval.sweep_values=(0.5,1.0)"], 0.10, 5.0)
    tuning_table.main(["--runs", str(tmp_path / "runs" / "*"), "--out", str(tmp_path / "tuning")])
    table = json.loads((tmp_path / "tuning.json").read_text())
    assert table["common"] == [split]
    assert table["chosen"] == {"vae": ["train.learning_rate=5e-4"], "gan": []}
    text = (tmp_path / "tuning.md").read_text()
    assert f"Every run: `{split}`" in text and "| gan | (config as is) | 100 |" in text
    assert "| vae | train.learning_rate=5e-4 | 100 | 0.600" in text


def test_the_tuning_table_chooses_the_sampling_knob_on_the_chosen_runs_sweep(tmp_path):
    # the VAE's as-is run (its own eval at temperature 1.0: 0.50) swept 0.5 / 0.8 (the train prompts all 1.0)
    _results(
        tmp_path / "runs" / "a",
        "vae",
        [],
        0.50,
        10.0,
        ("temperature", 1.0, {0.5: (0.58, 9.0), 0.8: (0.58, 8.0)}),
    )
    # Imagen's sweep ties its config's value with a better-FID one: the tie keeps the config's
    _results(
        tmp_path / "runs" / "b",
        "imagen",
        [],
        0.70,
        5.0,
        ("guidance_scale", 3.0, {3.0: (0.70, 5.0), 4.0: (0.70, 1.0)}),
    )
    # the GAN's chosen run has no sweep; its swept run lost
    _results(tmp_path / "runs" / "c", "gan", [], 0.30, 5.0, ("truncation", 1.0, {0.5: (0.2, 1.0)}))
    _results(tmp_path / "runs" / "d", "gan", ["train.g_learning_rate=1e-4"], 0.40, 5.0)
    tuning_table.main(["--runs", str(tmp_path / "runs" / "*"), "--out", str(tmp_path / "tuning")])
    knobs = json.loads((tmp_path / "tuning.json").read_text())["knobs"]
    assert knobs == {  # 0.5 and 0.8 tie on alignment, neither is the config's: the lower FID (0.8)
        "vae": {"option": "temperature", "value": 0.8},
        "imagen": {"option": "guidance_scale", "value": 3.0},
    }
    text = (tmp_path / "tuning.md").read_text()
    assert (
        "- vae, temperature (config 1.0): 0.5: 0.580 (FID 9) / 0.8: 0.580 (FID 8) / 1.0: 0.500 (FID 10)"
        in text
    )
    assert "- gan: no sweep on its chosen run (the sweep ran on another" in text


def test_the_tuning_table_refuses_an_empty_glob(tmp_path):
    with pytest.raises(SystemExit, match="no results.json"):
        tuning_table.main(["--runs", str(tmp_path / "none*"), "--out", str(tmp_path / "t")])


def test_the_alignment_figure_gets_each_models_seeds_and_student_t_interval(tmp_path, monkeypatch):
    from imagen_jax.evaluation import plots

    seen = {}
    monkeypatch.setattr(
        plots, "alignment_figure", lambda values, intervals, path: seen.update(v=values, i=intervals) or path
    )

    def run(model, holdout):
        sets = {"holdout": {"alignment": {"all": holdout}}, "train": {"alignment": {"all": 1.0}}}
        return {"model": model, "eval": {"prompt_sets": sets}}

    runs = [run("imagen", 0.5), run("imagen", 0.6), run("imagen", 0.7), run("gan", 0.1)]
    path = compare_baselines.plot_alignment(
        runs, ["imagen", "gan"], ["holdout", "train"], str(tmp_path / "a.png")
    )
    assert path == str(tmp_path / "a.png")
    assert seen["v"]["imagen"]["holdout"] == [0.5, 0.6, 0.7] and seen["v"]["gan"]["holdout"] == [0.1]
    mean, half = seen["i"]["imagen"]["holdout"]
    # t(0.975, 2) = 4.3027; sd 0.1 over 3 seeds
    assert mean == pytest.approx(0.6) and half == pytest.approx(4.3027 * 0.1 / 3**0.5, rel=1e-4)
    assert seen["i"]["gan"]["holdout"] == (0.1, None)


def test_the_alignment_figure_draws(tmp_path):
    from imagen_jax.evaluation import plots

    values = {"a": {"holdout": [0.2, 0.4]}, "b": {"holdout": [0.9]}}
    intervals = {"a": {"holdout": (0.3, 0.5)}, "b": {"holdout": (0.9, None)}}
    path = plots.alignment_figure(values, intervals, str(tmp_path / "f.png"))
    assert pathlib.Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_seeds_name_seeds_of_the_comparison():
    assert compare_baselines.parse_seed_list("3-5,8, 4", list(range(10))) == [3, 4, 5, 8]
    with pytest.raises(ValueError, match=r"seeds \[10, 11\] are outside the comparison's \(0 .. 9"):
        compare_baselines.parse_seed_list("9-11", list(range(10)))
    with pytest.raises(ValueError, match="not a seed or a range"):
        compare_baselines.parse_seed_list("3..5", list(range(10)))
    with pytest.raises(SystemExit):  # argparse's one message, exit 2
        compare_baselines.parse_args(
            ["--configs", FOUR, "--budget_steps", "5", "--out", "o", "--run_seeds", "3"]
        )


def test_first_seed_shifts_the_comparisons_seeds_and_its_sweep(tmp_path):
    argv = [
        "--configs",
        FOUR,
        "--budget_steps",
        "5",
        "--out",
        str(tmp_path),
        "--seeds",
        "10",
        "--first_seed",
        "10",
    ]
    args = compare_baselines.parse_args(argv + ["--run_seeds", "12-13,19"])
    assert args.seed_list == list(range(10, 20)) and args.run_seeds == [12, 13, 19]
    for outside in ("9", "20", "0-2"):  # seed 0 is the tuning seed, not one of these
        with pytest.raises(SystemExit):
            compare_baselines.parse_args(argv + ["--run_seeds", outside])
    with pytest.raises(SystemExit):
        compare_baselines.parse_args(argv[:-1] + ["-1"])
    config = compare_baselines.load_config("configs/imagen_shapes.py:px16", str(tmp_path / "w"), 10, [])
    sweeps = {s: compare_baselines.eval_settings(args, config, config, s).sweep_option for s in (0, 10, 11)}
    assert sweeps == {0: "", 10: "guidance_scale", 11: ""}  # the first seed's run carries the sweep


def test_a_scoped_set_reaches_only_its_models_runs():
    sets = [
        "data.num_holdout_pairs=12",
        "vae_shapes_px16:sample.temperature=0.5",
        "imagen_shapes_px16:a.b=c:d",
    ]
    models = ["imagen_shapes_px16", "vae_shapes_px16", "vae_shapes_vq_px16"]
    own = compare_baselines.overrides_for
    assert own("vae_shapes_px16", sets, models) == ["data.num_holdout_pairs=12", "sample.temperature=0.5"]
    assert own("vae_shapes_vq_px16", sets, models) == ["data.num_holdout_pairs=12"]
    assert own("imagen_shapes_px16", sets, models) == [
        "data.num_holdout_pairs=12",
        "a.b=c:d",
    ]  # ':' in a value
    with pytest.raises(ValueError, match="names the model 'vae_shapes', which is none of"):
        own("vae_shapes_px16", ["vae_shapes:sample.temperature=0.5"], models)
    with pytest.raises(ValueError, match="is not KEY=VALUE"):
        own("vae_shapes_px16", ["sample.temperature"], models)
    with pytest.raises(SystemExit):  # a misspelt model is refused before anything trains
        compare_baselines.parse_args(
            [
                "--configs",
                FOUR,
                "--budget_steps",
                "5",
                "--out",
                "o",
                "--set",
                "vae_px16:sample.temperature=0.5",
            ]
        )


def test_settings_read_after_training_share_the_probe():
    key = compare_baselines.throughput_key
    config = "configs/vae_shapes.py:px16"
    free = ["data.num_holdout_pairs=12", "sample.temperature=0.5", "eval.sweep_values=(0.5,1.0)"]
    assert key(config, free) == key(config, []) == "vae_shapes_px16"
    assert key(config, free + ["data.image_size=32"]) == "vae_shapes_px16 data.image_size=32"


def test_a_record_is_reused_only_for_its_own_command_and_settings(tmp_path):
    record = {"command": "python -m imagen_jax.main --config.seed=1", "eval_settings": {"num_samples": 256}}
    compare_baselines.write_record(str(tmp_path), record)
    assert not list(tmp_path.glob("*.tmp"))
    read = compare_baselines.read_record
    assert read(str(tmp_path), record["command"], {"num_samples": 256}) == record
    assert read(str(tmp_path), record["command"], {"num_samples": 128}) is None
    assert read(str(tmp_path), "python -m imagen_jax.main --config.seed=2", {"num_samples": 256}) is None
    assert read(str(tmp_path / "none"), record["command"], {"num_samples": 256}) is None


def test_the_report_names_each_runs_versions():
    runs = [
        {"workdir": "out/runs/a_seed0", "versions": {"jax": "0.10.2", "devices": "2 x cpu"}},
        {"workdir": "out/runs/a_seed1", "versions": {"jax": "0.10.2", "devices": "2 x cpu"}},
        {"workdir": "out/runs/b_seed0"},
    ]
    assert compare_baselines._version_lines(runs[:2], "out") == [
        "Versions (every run): jax 0.10.2, devices 2 x cpu"
    ]
    assert compare_baselines._version_lines(runs, "out") == [
        "Versions:",
        "",
        "- runs/a_seed0, runs/a_seed1: jax 0.10.2, devices 2 x cpu",
        "- runs/b_seed0: not recorded",
    ]


def _alignment_runs(values: dict[str, list[float]]) -> list[dict]:
    """Runs that hold only what verdict_lines reads: the model and its held-out alignment."""
    return [
        {"model": m, "eval": {"prompt_sets": {"holdout": {"alignment": {"all": v}}}}}
        for m, vs in values.items()
        for v in vs
    ]


def test_welch_p_is_the_closed_form_welch_test():
    a, b = [0.99, 0.97, 0.98, 0.95], [0.93, 0.96, 0.90]
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    t = (np.mean(a) - np.mean(b)) / np.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))  # Welch-Satterthwaite
    assert compare_baselines.welch_p(a, b) == pytest.approx(2 * stats.t.sf(abs(t), dof), rel=1e-9)
    half = stats.t.ppf(0.975, dof) * np.sqrt(va + vb)  # the difference's interval on the same t
    low, high = compare_baselines.welch_interval(a, b)
    assert (low, high) == pytest.approx(
        (np.mean(a) - np.mean(b) - half, np.mean(a) - np.mean(b) + half), rel=1e-9
    )


def test_the_verdict_says_overlap_or_disjoint_from_the_intervals():
    # means 0.97 / 0.95 / 0.30, sd 0.01 / 0.02 / 0.05 over 3 seeds: half-widths 4.303 * sd / sqrt(3)
    runs = _alignment_runs(
        {"vae": [0.93, 0.95, 0.97], "imagen": [0.96, 0.97, 0.98], "gan": [0.25, 0.30, 0.35]}
    )
    lines = compare_baselines.verdict_lines(runs, ["imagen", "gan", "vae"], "holdout")
    text = "\n".join(lines)
    # imagen [0.9452, 0.9948]; vae [0.9003, 0.9997] overlaps it; gan [0.1758, 0.4242] lies below it
    assert "| imagen | 0.9700 ± 0.0248 | [0.9452, 0.9948] |  |  | (highest mean) |  |" in lines
    assert "| gan | 0.3000 ± 0.1242 | [0.1758, 0.4242] | +0.6700 |" in text and text.count("disjoint |") == 1
    low, high = stats.ttest_ind([0.96, 0.97, 0.98], [0.25, 0.30, 0.35], equal_var=False).confidence_interval()
    assert f"| disjoint | [{low:+.4f}, {high:+.4f}] |" in text and 0.5 < low < 0.67 < high < 0.85
    assert "| vae | 0.9500 ± 0.0497 | [0.9003, 0.9997] | +0.0200 |" in text and "| overlap |" in text
    assert (
        "**imagen has the highest mean, but its interval overlaps that of vae: over these seeds the comparison does "
        "not separate imagen from it.**" in text
    )
    # borderline against imagen [0.9452, 0.9948]: b's mean 0.94 lies below its lower bound but b's upper bound
    # 0.9897 above it (overlap); d's upper bound 0.9498 lies between its lower bound and its mean (overlap); c's
    # upper bound 0.9398 lies below its lower bound (disjoint). A rule on means, or on the best's mean or upper
    # bound, gets one of them wrong.
    runs = _alignment_runs(
        {
            "imagen": [0.96, 0.97, 0.98],
            "b": [0.92, 0.94, 0.96],
            "c": [0.905, 0.915, 0.925],
            "d": [0.915, 0.925, 0.935],
        }
    )
    text = "\n".join(compare_baselines.verdict_lines(runs, ["imagen", "b", "c", "d"], "holdout"))
    assert "| b | 0.9400 ± 0.0497 | [0.8903, 0.9897] | +0.0300 |" in text
    assert "| c | 0.9150 ± 0.0248 | [0.8902, 0.9398] |" in text
    assert "| d | 0.9250 ± 0.0248 | [0.9002, 0.9498] |" in text
    assert text.count("| overlap |") == 2 and text.count("| disjoint |") == 1
    assert (
        "overlaps those of b and d: over these seeds the comparison does not separate imagen from them.**"
        in text
    )
    runs = _alignment_runs({"imagen": [0.96, 0.97, 0.98], "gan": [0.25, 0.30, 0.35]})
    text = "\n".join(compare_baselines.verdict_lines(runs, ["imagen", "gan"], "holdout"))
    assert (
        "**imagen is ahead of every other model, with disjoint 95% intervals.** (3 seeds per model.)" in text
    )
    # unequal seed counts (borrowed models): each model's count, not a bare '4/3'
    runs = _alignment_runs({"imagen": [0.96, 0.97, 0.98, 0.97], "gan": [0.25, 0.30, 0.35]})
    text = "\n".join(compare_baselines.verdict_lines(runs, ["imagen", "gan"], "holdout"))
    assert "disjoint 95% intervals.** (seeds: imagen 4, gan 3.)" in text
    # one seed has no interval: no verdict rather than a made-up one
    assert (
        compare_baselines.verdict_lines(_alignment_runs({"a": [0.9], "b": [0.5]}), ["a", "b"], "holdout")
        == []
    )


def test_a_borrowed_model_needs_a_recorded_probe_not_a_new_one(tmp_path):
    with pytest.raises(SystemExit, match="holds no probe of 'gan_shapes_px16'"):
        compare_baselines.probe_throughput(_args(tmp_path), "configs/gan_shapes.py:px16", [], may_probe=False)
    assert not (tmp_path / "out").exists()  # nothing probed


def test_seed_ranges_round_trip_through_parse_seed_list():
    assert compare_baselines.seed_ranges([18, 10, 11, 12, 15, 17]) == "10-12,15,17-18"
    assert compare_baselines.parse_seed_list("10-12,15,17-18", None) == [10, 11, 12, 15, 17, 18]
    assert compare_baselines.seed_ranges([4]) == "4"


def test_borrowed_runs_are_the_lenders_records_when_made_by_the_same_command(tmp_path):
    """A comparison of Imagen alone (seeds 20-21) reports the GAN's seeds 3-4 from another comparison's records,
    written here as that comparison would have (its first seed, 3, carries the GAN's sweep: seed 4 borrowed alone
    is still its own run); a record made with other overrides is refused, and nothing is trained."""
    lend, out = tmp_path / "lend", tmp_path / "new"
    gan = "configs/gan_shapes.py:px16"
    lender = compare_baselines.parse_args(
        ["--configs", "configs/imagen_shapes.py:px16," + gan, "--budget_steps", "5", "--out", str(lend)]
        + ["--seeds", "2", "--first_seed", "3", "--set", "gan_shapes_px16:gan.loss=hinge"]
    )
    first = compare_baselines.load_config("configs/imagen_shapes.py:px16", str(lend / "x"), 0, [])
    for seed in (3, 4):
        workdir = lend / "runs" / f"gan_shapes_px16_seed{seed}"
        workdir.mkdir(parents=True)
        command = (
            f"python -m imagen_jax.main --config {gan} --workdir {workdir} --config.seed={seed} "
            "--config.gan.loss=hinge --config.train.steps=5 --config.sample.judge_prompts=0"
        )
        config = compare_baselines.load_config(gan, str(workdir), seed, ["gan.loss=hinge"])
        settings = compare_baselines.eval_settings(lender, first, config, seed).to_dict()
        assert settings["sweep_option"] == ("truncation" if seed == 3 else "")
        compare_baselines.write_record(
            str(workdir),
            {"model": "gan_shapes_px16", "seed": seed, "command": command, "eval_settings": settings},
        )
    borrow = ["--borrow", gan, "3-4", str(lend)]
    argv = ["--configs", "configs/imagen_shapes.py:px16", "--budget_steps", "5", "--out", str(out)]
    argv += ["--seeds", "2", "--first_seed", "20"]
    argv_hinge = ["--set", "gan_shapes_px16:gan.loss=hinge"]
    args = compare_baselines.parse_args(argv + borrow + argv_hinge)
    runs = compare_baselines.borrowed_runs(args, first)
    assert [(r["seed"], r["borrowed_from"]) for r in runs] == [(3, str(lend)), (4, str(lend))]
    assert "gan_shapes_px16 seeds 3-4 from " + str(lend) in compare_baselines._borrowed_text(args)
    alone = compare_baselines.parse_args(argv + ["--borrow", gan, "4", str(lend)] + argv_hinge)
    assert [r["seed"] for r in compare_baselines.borrowed_runs(alone, first)] == [4]
    plain = compare_baselines.parse_args(argv + borrow)  # without the lender's hinge loss: not its runs
    with pytest.raises(
        SystemExit, match="gan_shapes_px16_seed3/comparison_run.json is missing or was not made"
    ):
        compare_baselines.borrowed_runs(plain, first)
    assert not out.exists()


def test_borrow_is_refused_for_a_model_of_the_comparison_a_directory_without_runs_or_with_run_seeds(
    tmp_path, capsys
):
    (tmp_path / "lend" / "runs").mkdir(parents=True)
    argv = ["--configs", FOUR, "--budget_steps", "5", "--out", str(tmp_path / "out"), "--seeds", "2"]
    parse = compare_baselines.parse_args
    lend = str(tmp_path / "lend")
    for bad, message in (
        (["configs/gan_shapes.py:px16", "0-1", lend], "gan_shapes_px16 is already in the comparison"),
        (["configs/quickstart.py", "0-1", str(tmp_path)], "holds no runs/ of a comparison"),
        (["configs/quickstart.py", "x", lend], "'x' is not a seed or a range"),
        (["configs/quickstart.py", "0-1", lend, "--run_seeds", "0"], "use one or the other"),
    ):
        with pytest.raises(SystemExit):
            parse(argv + ["--borrow", *bad])
        assert message in capsys.readouterr().err
    args = parse(argv + ["--borrow", "configs/quickstart.py", "0-1", lend])
    assert [(b.model, b.seeds) for b in args.borrow] == [("quickstart", [0, 1])]


def test_the_report_warns_when_runs_measured_fid_with_different_feature_nets():
    def run(model, seed, scale):
        info = {"feature_scale": scale}
        return {
            "model": model,
            "seed": seed,
            "eval": {"feature_space": "shapes-cnn-16px-1e", "feature_space_info": info},
        }

    same = [run("imagen", 0, 5.8), run("vae", 0, 5.8), run("imagen", 1, 5.8)]
    assert compare_baselines._feature_net_lines(same) == []
    inception = [
        {
            "model": m,
            "seed": 0,
            "eval": {"feature_space": "inception", "feature_space_info": {"weights": "w"}},
        }
        for m in ("imagen", "vae")
    ]
    # no scale recorded: one instrument, no warning
    assert compare_baselines._feature_net_lines(inception) == []
    mixed = same + [run("imagen", 2, 5.9), run("imagen", 3, 5.9), run("vae", 3, 5.9)]
    lines = compare_baselines._feature_net_lines(mixed)
    assert lines[0].startswith("**The feature network differs between runs** (2 copies)")
    assert lines[2:] == [
        "- `shapes-cnn-16px-1e`, feature scale 5.8: imagen seeds 0-1; vae seeds 0",
        "- `shapes-cnn-16px-1e`, feature scale 5.9: imagen seeds 2-3; vae seeds 3",
        "",
    ]

"""plot_results.py, the report of a sweep, on runs written here with known values."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, SCRIPT_ENV

sys.path.insert(0, str(ROOT / "sweep"))
import plot_results  # noqa: E402


def make_run(
    runs_dir: Path,
    algorithm: str,
    variant: str,
    env_id: str = "BreakoutNoFrameskip-v4",
    seed: int = 1,
    returns=(),
    dead=(0.1, 0.2),
    srank=(100.0, 80.0),
    done=True,
    game_every: int = 100,
    metric_every: int = 1000,
    name: str = "",
    **config,
) -> Path:
    """A run folder as the training scripts write it: real TensorBoard events (a game every `game_every` steps, the
    metrics every `metric_every` steps from 0), config.json (`config` adds keys) and done.json."""
    from torch.utils.tensorboard import SummaryWriter

    run_dir = runs_dir / (name or f"{env_id.replace('/', '-')}__{algorithm}__{variant}__{seed}")
    writer = SummaryWriter(str(run_dir))
    for i, value in enumerate(returns):
        writer.add_scalar("charts/episodic_return", value, game_every * (i + 1))
    for i, (d, s) in enumerate(zip(dead, srank)):
        writer.add_scalar("representation/dead_fraction", d, metric_every * i)
        writer.add_scalar("representation/srank", s, metric_every * i)
        writer.add_scalar("representation/effective_rank", 2 * s, metric_every * i)
    writer.close()
    config = {"algorithm": algorithm, "variant": variant, "env_id": env_id, "seed": seed, **config}
    (run_dir / "config.json").write_text(json.dumps(config))
    if done:
        (run_dir / "done.json").write_text("{}")
    return run_dir


def report(runs_dir: Path, out: Path, capsys, *flags: str) -> tuple[str, str]:
    """Run the report in this process; return results.md and what it printed on stderr."""
    plot_results.main(["--runs-dir", str(runs_dir), "--out", str(out), "--reps", "500", *flags])
    captured = capsys.readouterr()
    assert "report:" in captured.out
    return (out / "results.md").read_text(), captured.err


def row(markdown: str, game: str, variant: str) -> list[str]:
    """The first table row of `game` and `variant`: a variant id (`tanh_hr`, shown as `tanh + HR`) or a group's label."""
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[:2] in ([game, variant], [game, plot_results.variant_label(variant)]):
            return cells
    raise AssertionError(f"no row for {game} {variant}")


def test_report_values(workdir, capsys):
    runs = workdir / "runs"
    scores = {}  # (game, variant) -> per-seed final returns
    for variant, offset in [("tanh", 0.0), ("tanh_hr", 10.0)]:
        for seed in (1, 2, 3):
            # 150 games: the first 50 score 1000 (left out), the last 100 average 20 + offset + seed
            breakout = [1000.0] * 50 + [19.0 + offset + seed, 21.0 + offset + seed] * 50
            make_run(
                runs,
                "ppo",
                variant,
                "BreakoutNoFrameskip-v4",
                seed,
                breakout,
                dead=(0.5, 0.1 * seed),
                srank=(300.0, 100.0 + seed),
            )
            make_run(runs, "ppo", variant, "PongNoFrameskip-v4", seed, [float(seed) + offset / 10] * 3)
            scores.setdefault(("Breakout", variant), []).append(20.0 + offset + seed)
            scores.setdefault(("Pong", variant), []).append(seed + offset / 10)
    make_run(runs, "ppo", "tanh", "TetrisNoFrameskip-v4", 1, [5.0])  # no published scores
    markdown, _ = report(runs, workdir / "out", capsys)

    cells = row(markdown, "Breakout", "tanh_hr")
    assert cells[2] == "3" and cells[4] == "32.0 ± 1.0"  # mean ± std over seeds of the last 100 games
    assert cells[5] == "1.052 ± 0.035"  # (32 - 1.7) / (30.5 - 1.7), std 1 / 28.8
    assert cells[6] == "0.200 ± 0.100" and cells[7] == "102.0 ± 1.0"
    assert row(markdown, "Tetris", "tanh")[5] == "n/a (no published scores)"
    assert "Tetris left out: no published human and random scores" in markdown

    from rliable import metrics

    hns = np.array(
        [[plot_results.human_normalized(scores[(game, "tanh")][s], game) for game in ["Breakout", "Pong"]] for s in range(3)]
    )
    iqm, median = metrics.aggregate_iqm(hns), metrics.aggregate_median(hns)
    aggregate_row = next(line for line in markdown.splitlines() if line.startswith("| tanh | 3 |"))
    assert f"{iqm:.3f} [" in aggregate_row and f"{median:.3f} [" in aggregate_row

    out = workdir / "out"
    kinds = ["return", "dead_fraction", "srank", "effective_rank", "dormant_fraction", "learning_speed"]
    figures = [f"ppo_{kind}" for kind in kinds]
    for name in [*figures, "aggregate_iqm"]:  # each as PNG, and as PDF for a paper
        assert (out / f"{name}.png").stat().st_size > 1000 and (out / f"{name}.pdf").stat().st_size > 1000, name
        assert f"]({name}.png)" in markdown
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 13
    hr1 = next(r for r in rows if r["variant"] == "tanh_hr" and r["game"] == "Breakout" and r["seed"] == "1")
    assert float(hr1["final_return"]) == pytest.approx(31.0) and hr1["games"] == "150" and hr1["group"] == "tanh + HR"
    assert (hr1["env_id"], hr1["sticky_action_probability"]) == ("BreakoutNoFrameskip-v4", "0")


def test_bootstrap_intervals_contain_the_point_estimates():
    scores = np.random.default_rng(0).normal(1.0, 0.3, size=(5, 4))
    library, _ = plot_results.bootstrap_method()
    points, intervals = plot_results.interval_estimates(scores, 2000, 0, library)
    assert intervals.shape == (2, 2) and np.all(intervals[0] <= points) and np.all(points <= intervals[1])
    assert np.all(intervals[1] - intervals[0] > 0)
    here = plot_results._bootstrap_here(scores, 4000, np.random.default_rng(1))
    np.testing.assert_allclose(here, intervals, atol=0.1)  # the same method, another draw


def test_report_without_finished_games_still_plots(workdir, capsys):
    runs = workdir / "runs"
    for variant in ["relu", "tanh"]:
        make_run(runs, "dqn", variant, "BreakoutNoFrameskip-v4", 1, returns=())
    markdown, _ = report(runs, workdir / "out", capsys)
    assert "n/a (no finished game yet)" in row(markdown, "Breakout", "tanh")[4]
    assert row(markdown, "Breakout", "tanh")[6] == "0.200"
    assert "no finished game yet on Breakout" in markdown
    for name in ["dqn_return.png", "dqn_dead_fraction.png", "dqn_srank.png", "aggregate_iqm.png"]:
        assert (workdir / "out" / name).exists()


def test_report_counts_finished_training_runs_only(workdir, capsys):
    """Evaluation-only runs are never seeds, unfinished runs are listed apart, two runs of one seed are an error (one moved
    out as it says, the report is made)."""
    runs = workdir / "runs"
    make_run(runs, "ppo", "tanh", "BreakoutNoFrameskip-v4", 1, [4.0])
    make_run(runs, "ppo", "tanh", "BreakoutNoFrameskip-v4", 2, [100.0], done=False)
    evaluation = make_run(runs, "ppo", "tanh", "BreakoutNoFrameskip-v4", 3, [200.0])
    config = json.loads((evaluation / "config.json").read_text())
    (evaluation / "config.json").write_text(json.dumps({**config, "eval_only": True}))
    markdown, err = report(runs, workdir / "out", capsys)
    assert row(markdown, "Breakout", "tanh")[2:5] == ["1", "1,000", "4.0"]
    assert f"warning: {evaluation}: an evaluation-only run" in err
    assert (
        "## Unfinished runs" in markdown
        and "| BreakoutNoFrameskip-v4__ppo__tanh__2 | ppo | tanh | Breakout | 2 | 1,000 |" in markdown
    )

    twin = runs / "BreakoutNoFrameskip-v4__ppo__tanh__1__again"
    shutil.copytree(runs / "BreakoutNoFrameskip-v4__ppo__tanh__1", twin)
    result = run_report(workdir, runs)
    assert result.returncode != 0 and result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert (
        "BreakoutNoFrameskip-v4__ppo__tanh__1 and" in result.stderr
        and f"{twin.name} are both ppo tanh on Breakout with seed 1" in result.stderr
    )
    assert "move one out of" in result.stderr
    twin.rename(workdir / twin.name)  # out of runs/, as the line says: the report counts the seed once
    assert row(report(runs, workdir / "out", capsys)[0], "Breakout", "tanh")[2:5] == ["1", "1,000", "4.0"]


def test_eval_only_runs_are_marked_in_config(workdir):
    """A training run's config.json says eval_only false, an --eval-model run's true (the report leaves those out)."""
    from conftest import read_config, run_ok

    tiny = [
        "--num-envs",
        "2",
        "--num-steps",
        "32",
        "--total-timesteps",
        "64",
        "--num-minibatches",
        "2",
        "--update-epochs",
        "1",
        "--metrics-interval",
        "0",
        "--save-model",
        "--eval-episodes",
        "1",
    ]
    trained = run_ok("ppo_atari_hadamard.py", *tiny, cwd=workdir)
    assert read_config(trained)["eval_only"] is False
    (workdir / "eval").mkdir()
    evaluated = run_ok(
        "ppo_atari_hadamard.py",
        "--eval-model",
        str(trained / "ppo_atari_hadamard.pt"),
        "--eval-episodes",
        "1",
        cwd=workdir / "eval",
    )
    assert read_config(evaluated)["eval_only"] is True


def run_report(workdir: Path, runs_dir: Path, *flags: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        str(ROOT / "sweep" / "plot_results.py"),
        "--runs-dir",
        str(runs_dir),
        "--out",
        str(workdir / "out"),
    ]
    return subprocess.run([*command, *flags], cwd=workdir, env=SCRIPT_ENV, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("case", ["missing", "empty", "no events", "bad --steps"])
def test_report_bad_input_is_one_clear_line(workdir, case):
    runs = workdir / "runs"
    if case != "missing":
        runs.mkdir()
    if case in ("no events", "bad --steps"):
        (runs / "BreakoutNoFrameskip-v4__ppo__tanh__1").mkdir()
        (runs / "BreakoutNoFrameskip-v4__ppo__tanh__1" / "config.json").write_text("{}")
    result = run_report(workdir, runs, *(["--steps", "250k,1.5x"] if case == "bad --steps" else []))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error:") and "Traceback" not in result.stderr, result.stderr
    assert len(lines) == (2 if case == "no events" else 1)  # the warning on the run, then the error
    assert not (workdir / "out").exists()


def test_a_run_without_events_is_one_warning_line(workdir, capsys):
    runs = workdir / "runs"
    make_run(runs, "ppo", "tanh", "BreakoutNoFrameskip-v4", 1, [3.0])
    broken = runs / "BreakoutNoFrameskip-v4__ppo__tanh__2"
    broken.mkdir()
    (broken / "config.json").write_text(
        json.dumps({"algorithm": "ppo", "variant": "tanh", "env_id": "BreakoutNoFrameskip-v4", "seed": 2})
    )
    (runs / "_slurm").mkdir()  # benchmark.sh's Slurm files: not a run
    markdown, err = report(runs, workdir / "out", capsys)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"warning: {broken}: no TensorBoard events"), err
    assert row(markdown, "Breakout", "tanh")[2] == "1"


def test_curve_band_ends_with_the_shortest_seed_and_says_what_it_is():
    """The mean curve stops where the shortest seed ends (past it the mean would jump as a seed drops out); its band
    is a percentile bootstrap of the mean for 3 seeds or more (within the runs' range), the range of 2 seeds, none
    for 1; the same curves give the same band. Steps read 250k, 1.5M."""
    steps = np.arange(0, 1000, 100)
    curves = [(steps, np.zeros(10)), (steps, np.ones(10)), (steps[:5], np.full(5, 5.0)), (steps[:3], np.full(3, 2.0))]
    grid, mean, low, high, kind = plot_results.band(curves)
    np.testing.assert_array_equal(grid, [0, 100, 200])
    np.testing.assert_allclose(mean, [2.0] * 3)
    assert kind == "95% bootstrap CI" and np.all(0.0 <= low) and np.all(low < mean) and np.all(mean < high)
    assert np.all(high <= 5.0)
    np.testing.assert_array_equal(plot_results.band(curves)[2], low)
    grid, mean, low, high, kind = plot_results.band(curves[1:3])
    assert kind == "range" and grid[-1] == 400 and np.all(low == 1.0) and np.all(high == 5.0)
    single = plot_results.band([(steps, np.ones(10))])
    assert single[4] == "" and np.isnan(single[2]).all() and np.isnan(single[3]).all()
    assert [plot_results.steps_label(x) for x in (0, 0.2, 500, 250_000, 1_500_000, 10_000_000)] == [
        "0",
        "0.2",
        "500",
        "250k",
        "1.5M",
        "10M",
    ]


@pytest.mark.parametrize(
    "case, other, label",
    [
        ("learning rate", {"learning_rate": 0.001}, "tanh (lr 0.001)"),
        ("sticky actions", {"env_id": "ALE/Breakout-v5"}, "tanh (ALE/Breakout-v5, sticky 0.25)"),
        ("budget", {"total_timesteps": 1000}, "tanh (1k steps)"),
    ],
)
def test_runs_with_other_settings_are_another_group(workdir, capsys, case, other, label):
    """Two settings of one variant in one runs folder are two groups, the other one named by how it differs, in the
    tables and the csv; an older config.json without a key reads as the script's default (the same group)."""
    runs = workdir / "runs"
    base = {"env_id": "BreakoutNoFrameskip-v4", "total_timesteps": 2000}
    make_run(runs, "ppo", "tanh", seed=1, returns=[1.0] * 20, **base, learning_rate=2.5e-4)  # the script's default
    make_run(runs, "ppo", "tanh", seed=2, returns=[3.0] * 20, **base)  # written before learning_rate was recorded
    make_run(runs, "ppo", "tanh_hr", seed=1, returns=[5.0] * 20, **base)
    make_run(runs, "ppo", "tanh", seed=1, returns=[9.0] * 10, name="other", **{**base, **other})
    markdown, err = report(runs, workdir / "out", capsys)

    assert row(markdown, "Breakout", "tanh")[2:5] == ["2", "2,000", "2.0 ± 1.4"]
    assert row(markdown, "Breakout", label)[2] == "1" and row(markdown, "Breakout", label)[4] == "9.0"
    assert row(markdown, "Breakout", "tanh + HR")[2] == "1"
    assert f"warning: ppo tanh on Breakout: runs with different settings, reported as 2 groups: tanh; {label}" in err
    groups = {(r["run"], r["group"]) for r in csv.DictReader((workdir / "out" / "results.csv").open())}
    assert ("other", label) in groups and ("BreakoutNoFrameskip-v4__ppo__tanh__2", "tanh") in groups
    learning_speed = markdown[markdown.index("Learning speed") :]
    assert f"| Breakout | {label} | 1 |" in learning_speed and "| Breakout | tanh | 2 |" in learning_speed


def test_representation_at_fixed_steps_and_learning_speed(workdir, capsys):
    """The metrics at fixed steps are each seed's last value at or before the step, mean ± std over seeds (min and
    max in representation.csv), steps past the budget left out; the return AUC rewards learning earlier."""
    runs = workdir / "runs"
    for seed in (1, 2, 3):
        dead = [0.1 * i + 0.01 * seed for i in range(7)]  # at 0, 100k, ..., 600k
        make_run(
            runs,
            "ppo",
            "tanh",
            "BreakoutNoFrameskip-v4",
            seed,
            returns=[0.0] * 5 + [10.0] * 5,
            game_every=60_000,
            dead=dead,
            srank=[50.0] * 7,
            metric_every=100_000,
            total_timesteps=600_000,
            metrics_interval=100_000,
        )
    # one seed of tanh + HR that reaches the same final score sooner: 10 from the third game on
    make_run(
        runs,
        "ppo",
        "tanh_hr",
        "BreakoutNoFrameskip-v4",
        1,
        returns=[0.0] * 2 + [10.0] * 8,
        game_every=60_000,
        dead=[0.0] * 7,
        srank=[90.0] * 7,
        metric_every=100_000,
        total_timesteps=600_000,
        metrics_interval=100_000,
    )
    # a DQN run's last probe one interval before its budget (as the DQN script made them before it probed its final
    # network) counts there
    make_run(runs, "dqn", "tanh", "PongNoFrameskip-v4", 1, returns=[1.0], dead=[0.1 * i for i in range(7)],
             srank=[50.0] * 7, metric_every=100_000, total_timesteps=700_000, metrics_interval=100_000)  # fmt: skip
    markdown, _ = report(runs, workdir / "out", capsys, "--steps", "250k,500k,700k,1M", "--window", "3")
    assert "| Pong | tanh | 700k | 1 | 0.600 | 100.0 | 50.0 |" in markdown

    fixed = [line for line in markdown.splitlines() if line.startswith("| Breakout | tanh | ")][1:]  # after the summary row
    assert fixed[:2] == [
        "| Breakout | tanh | 250k | 3 | 0.220 ± 0.010 | 100.0 ± 0.0 | 50.0 ± 0.0 |",
        "| Breakout | tanh | 500k | 3 | 0.520 ± 0.010 | 100.0 ± 0.0 | 50.0 ± 0.0 |",
    ]
    assert not any("| 1M |" in line or "| Breakout | tanh | 700k |" in line for line in markdown.splitlines())  # past 600k
    rows = list(csv.DictReader((workdir / "out" / "representation.csv").open()))
    wanted = ("ppo", "tanh", "250000", "dead_fraction")
    dead_250k = next(r for r in rows if (r["algorithm"], r["variant"], r["step"], r["metric"]) == wanted)
    assert (dead_250k["runs"], dead_250k["mean"], dead_250k["std"], dead_250k["min"], dead_250k["max"]) == (
        "3",
        "0.22",
        "0.01",
        "0.21",
        "0.23",
    )

    # 100 bins of 6k steps: games end at 60k, 120k, ... (bins 10, 20, ...); the first 10 at 360k (bin 60) for tanh,
    # at 180k (bin 30) for tanh + HR: AUC 10 * 40 / 100 = 4 and 10 * 70 / 100 = 7; both end at 10 (the last 3 games)
    assert "| Breakout | tanh | 3 | 4.0 [4.0, 4.0] | 10.0 [10.0, 10.0] | 95% bootstrap CI |" in markdown
    assert "| Breakout | tanh + HR | 1 | 7.0 | 10.0 | none (1 seed) |" in markdown
    assert {r["variant"]: r["return_auc"] for r in csv.DictReader((workdir / "out" / "results.csv").open())}["tanh_hr"] == "7"
    # the aggregate of one run per game is that run's score, with no interval (resampling it would give [x, x])
    hns = plot_results.human_normalized(10.0, "Breakout")
    assert f"| tanh + HR | 1 | {hns:.3f} | {hns:.3f} | one run per game: no CI |" in markdown


def test_reports_of_the_same_runs_are_identical(workdir, capsys, monkeypatch):
    """results.md, the csv files and the figures are byte-identical when the same runs are reported again (fixed
    bootstrap seeds, ordered groups, no dates), also from another path to the runs, which the report does not write."""
    runs = workdir / "runs"
    for variant in ["tanh", "tanh_hr"]:
        for seed in (1, 2, 3):
            returns = list(np.random.default_rng(seed).normal(5.0 if variant == "tanh" else 8.0, 2.0, size=40))
            make_run(
                runs,
                "pqn",
                variant,
                "BreakoutNoFrameskip-v4",
                seed,
                returns[: 30 + 5 * seed],
                dead=(0.1 * seed, 0.3, 0.2),
                srank=(90.0, 70.0 + seed, 60.0),
                total_timesteps=4000,
            )
    report(runs, workdir / "first", capsys)
    monkeypatch.chdir(workdir)
    report(Path("runs"), workdir / "second", capsys)
    first = sorted(p.name for p in (workdir / "first").iterdir())
    assert first == sorted(p.name for p in (workdir / "second").iterdir()) and len(first) == 3 + 2 * 7
    for name in first:
        assert (workdir / "first" / name).read_bytes() == (workdir / "second" / name).read_bytes(), name
    for name in ["results.md", "results.csv", "representation.csv"]:
        assert str(workdir) not in (workdir / "first" / name).read_text()


def test_gate_and_layer_norm_variants_are_named_and_ordered(workdir, capsys):
    """The gates and the LayerNorm switch have readable names; the tables list the paper's variants, then the gates, then
    the variants with the LayerNorm switched; `gate` and `layer_norm` are spelled by the variant, not a group's setting."""
    names = {
        "glu": "GLU",
        "swiglu_ln": "SwiGLU (LayerNorm)",
        "bilinear": "bilinear",
        "tanh_hr_ln": "tanh + HR (LayerNorm)",
        "tanh_pm_ln": "tanh (param-matched, LayerNorm)",
        "tanh_noln": "tanh (no LayerNorm)",
        "tanh_hr_all_noln": "tanh + HR (all layers, no LayerNorm)",
        "tanh_hr_ln_redo": "tanh + HR (LayerNorm, ReDo)",
    }
    assert {variant: plot_results.variant_label(variant) for variant in names} == names
    runs = workdir / "runs"
    configs = {"tanh_ln": {"layer_norm": True}, "glu": {"hadamard": True, "gate": "glu"}, "tanh_hr": {"hadamard": True}}
    for variant, config in {**configs, "tanh": {}}.items():
        make_run(runs, "ppo", variant, returns=[1.0] * 20, **config)
    markdown, err = report(runs, workdir / "out", capsys)
    assert "different settings" not in err
    first_table = [
        cells[1] for cells in (line.strip("|").split("|") for line in markdown.splitlines()) if cells[0].strip() == "Breakout"
    ]
    assert [label.strip() for label in first_table[:4]] == ["tanh", "tanh + HR", "GLU", "tanh (LayerNorm)"]

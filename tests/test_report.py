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


def make_run(runs_dir: Path, algorithm: str, variant: str, env_id: str, seed: int, returns=(), dead=(0.1, 0.2),
             srank=(100.0, 80.0), done=True) -> Path:
    from torch.utils.tensorboard import SummaryWriter

    run_dir = runs_dir / f"{env_id.replace('/', '-')}__{algorithm}__{variant}__{seed}"
    writer = SummaryWriter(str(run_dir))
    for i, value in enumerate(returns):
        writer.add_scalar("charts/episodic_return", value, 100 * (i + 1))
    for i, (d, s) in enumerate(zip(dead, srank)):
        writer.add_scalar("representation/dead_fraction", d, 1000 * i)
        writer.add_scalar("representation/srank", s, 1000 * i)
    writer.close()
    (run_dir / "config.json").write_text(json.dumps({"algorithm": algorithm, "variant": variant, "env_id": env_id, "seed": seed}))
    if done:
        (run_dir / "done.json").write_text("{}")
    return run_dir


def report(runs_dir: Path, out: Path, capsys) -> tuple[str, str]:
    """Run the report in this process; return results.md and what it printed on stderr."""
    plot_results.main(["--runs-dir", str(runs_dir), "--out", str(out), "--reps", "500"])
    captured = capsys.readouterr()
    assert "report:" in captured.out
    return (out / "results.md").read_text(), captured.err


def row(markdown: str, game: str, variant: str) -> list[str]:
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[:2] == [game, variant]:
            return cells
    raise AssertionError(f"no row for {game} {variant}")


def test_report_values(workdir, capsys):
    runs = workdir / "runs"
    scores = {}  # (game, variant) -> per-seed final returns
    for variant, offset in [("tanh", 0.0), ("tanh_hr", 10.0)]:
        for seed in (1, 2, 3):
            # 150 games: the first 50 score 1000 (left out), the last 100 average 20 + offset + seed
            breakout = [1000.0] * 50 + [19.0 + offset + seed, 21.0 + offset + seed] * 50
            make_run(runs, "ppo", variant, "BreakoutNoFrameskip-v4", seed, breakout, dead=(0.5, 0.1 * seed), srank=(300.0, 100.0 + seed))
            make_run(runs, "ppo", variant, "ALE/Pong-v5", seed, [float(seed) + offset / 10] * 3)
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

    hns = np.array([[plot_results.human_normalized(scores[(game, "tanh")][s], game) for game in ["Breakout", "Pong"]] for s in range(3)])
    iqm, median = metrics.aggregate_iqm(hns), metrics.aggregate_median(hns)
    aggregate_row = next(line for line in markdown.splitlines() if line.startswith("| tanh | 3 |"))
    assert f"{iqm:.3f} [" in aggregate_row and f"{median:.3f} [" in aggregate_row

    out = workdir / "out"
    for name in ["results.md", "results.csv", "ppo_return.png", "ppo_dead_fraction.png", "ppo_srank.png", "aggregate_iqm.png"]:
        assert (out / name).stat().st_size > 1000 or name == "results.csv", name
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 13
    hr1 = next(r for r in rows if r["variant"] == "tanh_hr" and r["game"] == "Breakout" and r["seed"] == "1")
    assert float(hr1["final_return"]) == pytest.approx(31.0) and hr1["games"] == "150"


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
    """Evaluation-only runs are never seeds, unfinished runs are listed apart, two runs of one seed are an error."""
    runs = workdir / "runs"
    make_run(runs, "ppo", "tanh", "BreakoutNoFrameskip-v4", 1, [4.0])
    make_run(runs, "ppo", "tanh", "BreakoutNoFrameskip-v4", 2, [100.0], done=False)
    evaluation = make_run(runs, "ppo", "tanh", "BreakoutNoFrameskip-v4", 3, [200.0])
    config = json.loads((evaluation / "config.json").read_text())
    (evaluation / "config.json").write_text(json.dumps({**config, "eval_only": True}))
    markdown, err = report(runs, workdir / "out", capsys)
    assert row(markdown, "Breakout", "tanh")[2:5] == ["1", "1,000", "4.0"]
    assert f"warning: {evaluation}: an evaluation-only run" in err
    assert "## Unfinished runs" in markdown and "| BreakoutNoFrameskip-v4__ppo__tanh__2 | ppo | tanh | Breakout | 2 | 1,000 |" in markdown

    twin = runs / "BreakoutNoFrameskip-v4__ppo__tanh__1__again"
    shutil.copytree(runs / "BreakoutNoFrameskip-v4__ppo__tanh__1", twin)
    result = run_report(workdir, runs)
    assert result.returncode != 0 and result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "BreakoutNoFrameskip-v4__ppo__tanh__1 and" in result.stderr and f"{twin.name} are both ppo tanh on Breakout with seed 1" in result.stderr


def test_eval_only_runs_are_marked_in_config(workdir):
    """A training run's config.json says eval_only false, an --eval-model run's true (the report leaves those out)."""
    from conftest import read_config, run_ok

    tiny = ["--num-envs", "2", "--num-steps", "32", "--total-timesteps", "64", "--num-minibatches", "2", "--update-epochs", "1",
            "--metrics-interval", "0", "--save-model", "--eval-episodes", "1"]
    trained = run_ok("ppo_atari_hadamard.py", *tiny, cwd=workdir)
    assert read_config(trained)["eval_only"] is False
    (workdir / "eval").mkdir()
    evaluated = run_ok("ppo_atari_hadamard.py", "--eval-model", str(trained / "ppo_atari_hadamard.pt"), "--eval-episodes", "1", cwd=workdir / "eval")
    assert read_config(evaluated)["eval_only"] is True


def run_report(workdir: Path, runs_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "sweep" / "plot_results.py"), "--runs-dir", str(runs_dir), "--out", str(workdir / "out")],
                          cwd=workdir, env=SCRIPT_ENV, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("case", ["missing", "empty", "no events"])
def test_report_bad_input_is_one_clear_line(workdir, case):
    runs = workdir / "runs"
    if case != "missing":
        runs.mkdir()
    if case == "no events":
        (runs / "BreakoutNoFrameskip-v4__ppo__tanh__1").mkdir()
        (runs / "BreakoutNoFrameskip-v4__ppo__tanh__1" / "config.json").write_text("{}")
    result = run_report(workdir, runs)
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
    (broken / "config.json").write_text(json.dumps({"algorithm": "ppo", "variant": "tanh", "env_id": "BreakoutNoFrameskip-v4", "seed": 2}))
    (runs / "_slurm").mkdir()  # benchmark.sh's Slurm files: not a run
    markdown, err = report(runs, workdir / "out", capsys)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"warning: {broken}: no TensorBoard events"), err
    assert row(markdown, "Breakout", "tanh")[2] == "1"


def test_curve_band_is_a_bootstrap_interval_within_the_runs():
    """The band is a percentile bootstrap of the mean over seeds: inside the runs' range (a score band never
    below the lowest run, here 0), around the mean, none where one run is left; steps read 250k, 1.5M."""
    steps = np.arange(0, 1000, 100)
    curves = [(steps, np.zeros(10)), (steps, np.ones(10)), (steps[:5], np.full(5, 5.0)), (steps[:3], np.full(3, 2.0))]
    grid, mean, low, high = plot_results.band(curves)
    np.testing.assert_allclose(mean, [2.0] * 3 + [2.0] * 2 + [0.5] * 5)
    assert np.all(low >= 0.0) and np.all(low <= mean) and np.all(mean <= high) and np.all(high <= 5.0)
    assert np.all(high[5:] <= 1.0)  # only the runs present at a step are drawn
    single = plot_results.band([(steps, np.ones(10))])
    assert np.isnan(single[2]).all() and np.isnan(single[3]).all()
    assert [plot_results.steps_label(x) for x in (0, 0.2, 500, 250_000, 1_500_000, 10_000_000)] == ["0", "0.2", "500", "250k", "1.5M", "10M"]

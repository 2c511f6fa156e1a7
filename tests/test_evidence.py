"""The committed evidence (evidence/): the sweep that makes it runs the README's comparison, and the committed report is
the one its committed runs give."""

import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, SCRIPT_ENV

sys.path.insert(0, str(ROOT / "sweep"))
import plot_results  # noqa: E402

EVIDENCE = ROOT / "evidence"
PQN_PRESET = "--num-envs 128 --num-steps 32 --update-epochs 2 --num-minibatches 32 --end-e 0.001"


def finished_runs() -> list[str]:
    return sorted(path.parent.name for path in (EVIDENCE / "runs").glob("*/done.json"))


def test_the_evidence_sweep_runs_the_comparison_seed_by_seed():
    """PQN's four variants at purejaxql's preset for seeds 1, 2, 3, then PPO's and DQN's tanh and tanh + HR for seeds 1, 2:
    1M steps each, a checkpoint every 100k steps, in that order; finished runs are skipped, not run again."""
    result = subprocess.run(
        ["bash", str(EVIDENCE / "sweep.sh")],
        env={**SCRIPT_ENV, "DRY_RUN": "1", "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    order, commands = [], {}
    for line in result.stdout.splitlines():
        if line.startswith("# skip"):
            order.append(line.split(": ")[-1])
        elif not line.startswith("#"):
            name = re.search(r"--run-name (\S+)", line).group(1)
            order.append(name)
            commands[name] = line
    expected = [
        f"BreakoutNoFrameskip-v4__pqn_atari_hadamard__{variant}__{seed}"
        for seed in (1, 2, 3)
        for variant in ("tanh", "tanh_hr", "relu", "tanh_pm")
    ]
    expected += [
        f"BreakoutNoFrameskip-v4__{script}_atari_hadamard__{variant}__{seed}"
        for seed in (1, 2)
        for script in ("ppo", "dqn")
        for variant in ("tanh", "tanh_hr")
    ]
    assert order == expected
    assert not set(commands) & set(finished_runs())  # a finished run is never run again
    for name, command in commands.items():
        assert "--total-timesteps 1000000" in command and "--checkpoint-interval 100000" in command, command
        assert (PQN_PRESET in command) == ("__pqn_" in name), command


def test_the_committed_report_is_the_one_the_committed_runs_give(tmp_path, monkeypatch):
    """`python sweep/plot_results.py --runs-dir evidence/runs --out evidence/report`, in a checkout whose evidence/runs holds
    the finished runs only (as committed), remakes the committed tables. Runs of a sweep going on here are left out."""
    if not finished_runs():
        pytest.skip("no finished evidence run is committed yet")
    for name in finished_runs():  # what git keeps of each finished run
        run = tmp_path / "evidence" / "runs" / name
        run.mkdir(parents=True)
        for path in (EVIDENCE / "runs" / name).iterdir():
            if path.name in ("config.json", "done.json") or path.name.startswith("events.out.tfevents."):
                shutil.copy2(path, run / path.name)
    monkeypatch.chdir(tmp_path)
    plot_results.main(["--runs-dir", "evidence/runs", "--out", "report"])
    committed, made = EVIDENCE / "report", tmp_path / "report"
    tables = sorted(path.name for path in committed.iterdir() if path.suffix in (".md", ".csv"))
    assert "results.md" in tables and sorted(path.name for path in made.iterdir() if path.suffix in (".md", ".csv")) == tables
    for name in tables:
        assert (made / name).read_text() == (committed / name).read_text(), f"evidence/report/{name} is not what the runs give"
    for figure in sorted(committed.glob("*.png")):
        assert (made / figure.name).exists(), figure.name

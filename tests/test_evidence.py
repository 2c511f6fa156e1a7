"""The committed evidence (evidence/): the sweep that makes it runs the README's comparison, the committed report is
the one its committed runs give, and the README's "Results" quote that report."""

import json
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


def test_the_pqn_runs_ran_purejaxqls_preset():
    """Each committed PQN run is purejaxql's preset run whole: 128 envs x 32 steps, a batch of 4096 in 32 minibatches of
    128, 2 epochs, 1M steps (the preset's end-to-end test: a tiny run of it spends 30 s creating its 128 emulators)."""
    runs = [name for name in finished_runs() if "__pqn_atari_hadamard__" in name]
    if not runs:
        pytest.skip("no finished PQN evidence run is committed yet")
    for name in runs:
        config = json.loads((EVIDENCE / "runs" / name / "config.json").read_text())
        preset = {key: config[key] for key in ("num_envs", "num_steps", "batch_size", "minibatch_size", "update_epochs")}
        assert preset == {"num_envs": 128, "num_steps": 32, "batch_size": 4096, "minibatch_size": 128, "update_epochs": 2}
        assert config["end_e"] == 0.001 and config["total_timesteps"] == 1_000_000, name
        assert json.loads((EVIDENCE / "runs" / name / "done.json").read_text())["global_step"] == 999_424, name  # 244 batches


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


def table_rows(text: str, after: str) -> list[list[str]]:
    """The cells of the body rows of the first markdown table from the first line that starts with `after` on (that line
    may be the table's header)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(after))
    rows = []
    for line in lines[start:]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    return rows[2:]  # below the header and its rule


def test_the_readme_results_quote_the_committed_report():
    """README "Results": each algorithm's count of finished runs is the committed one, and each algorithm's table of what
    its finished runs show (PQN's; PPO's and DQN's once they have one) quotes the report: seeds, final return and return
    AUC (with their intervals), and the representation at 250k, 500k and 1M."""
    readme = (ROOT / "README.md").read_text()
    results = readme[readme.index("\n## Results\n") :]
    for row in table_rows(results, "| algorithm | variants |"):
        algorithm = row[0].split(",")[0].lower()
        finished = sum(f"__{algorithm}_atari_hadamard__" in name for name in finished_runs())
        assert row[4].startswith(f"{finished} of "), (
            f"README Results says {row[4]!r} for {row[0]!r}; evidence/runs/ holds {finished}"
        )
    report = (EVIDENCE / "report" / "results.md").read_text()
    headers = re.findall(r"^\*\*What the finished runs show: (\w+) .*$", results, flags=re.MULTILINE)
    assert "PQN" in headers
    for header in headers:
        section = report[report.index(f"\n## {header.lower()}\n") :].split("\n## ")[1]
        speed = {row[1]: row for row in table_rows(section, "Learning speed")}
        fixed = {(row[1], row[2]): row for row in table_rows(section, "Representation at fixed steps")}
        quoted = table_rows(results, f"**What the finished runs show: {header} ")
        assert sorted(row[0] for row in quoted) == sorted(speed), f"the README's {header} table shows every variant"
        for variant, seeds, final, auc, dead, effective_rank, srank in quoted:
            assert [seeds, final, auc] == [speed[variant][2], speed[variant][4], speed[variant][3]], (header, variant)
            for column, values in ((4, dead), (5, effective_rank)):
                means = [float(fixed[(variant, step)][column].split(" ± ")[0]) for step in ("250k", "500k", "1M")]
                assert [float(value) for value in values.split(" / ")] == means, (header, variant, values)
            assert float(srank) == float(fixed[(variant, "1M")][6].split(" ± ")[0]), (header, variant)

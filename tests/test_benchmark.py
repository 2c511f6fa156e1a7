"""benchmark.sh (sweeps, resume, Slurm); the report's own tests are in test_report.py. Most sweep tests run a stand-in for
python whose training runs only write what a finished run writes (the sweep's own checks run on the real python); one
test runs the quick profile end to end with tiny budgets, PPO for real, and its report."""

import json
import math
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import (
    ROOT,
    SCRIPT_ENV,
    SMALL_ROLLOUT,
    assert_steps_increase,
    one_line_failure,
    read_scalars,
    snapshot,
    with_close_match,
)
from test_report import row

BENCHMARK = ROOT / "benchmark.sh"
VARIANT_FLAGS = {"relu": ["--activation", "relu"], "tanh": [], "tanh_hr": ["--hadamard"], "tanh_pm": ["--param-matched"]}
# Tiny PPO settings: two iterations of 2 envs x 32 steps, a probe every iteration.
TINY_PPO = ["--total-timesteps", "128", "--", *SMALL_ROLLOUT, "--metrics-interval", "64", "--metrics-batch-size", "32"]

# Stands in for python: records the run of a training script it was asked for and writes what a finished run writes (a
# config.json of the flags it was given, which leaves out the defaults as an older script's leaves out newer fields;
# done.json). Anything else, such as the sweep's checks before it starts, is the real python's.
FAKE_PYTHON = r"""#!/usr/bin/env bash
[[ "$1" == *_atari_hadamard.py ]] || exec REAL_PYTHON "$@"
script="$1"; shift
name=""; args=("$@"); config=""
while [[ $# -gt 0 ]]; do
    key="${1#--}"; shift
    if [[ $# -gt 0 && "$1" != --* ]]; then value="$1"; shift; else value=true; fi
    [[ "$key" == run-name ]] && name="$value"
    [[ "$value" =~ ^(true|-?[0-9]+(\.[0-9]+)?)$ ]] || value="\"$value\""
    config+="${config:+, }\"${key//-/_}\": $value"
done
echo "$name OMP_NUM_THREADS=$OMP_NUM_THREADS $(basename "$script") ${args[*]}" >> calls.txt
if [[ -n "${FAKE_FAIL:-}" ]]; then echo "error: boom" >&2; exit 1; fi
mkdir -p "runs/$name" && echo "{$config}" > "runs/$name/config.json" && echo '{}' > "runs/$name/done.json"
"""


def bench(*args: str, cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(BENCHMARK), *args],
        cwd=cwd,
        env={**SCRIPT_ENV, "PYTHON": sys.executable, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def commands(result: subprocess.CompletedProcess) -> list[str]:
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line and not line.startswith("#")]


def arg(command: str, flag: str) -> str:
    words = command.split()
    return words[words.index(flag) + 1]


def variant_flags_of(command: str) -> list[str]:
    """The flags of a sweep's command that its variant gives (between --seed's value and --run-name)."""
    words = command.split()
    return words[words.index("--seed") + 2 : words.index("--run-name")]


@pytest.fixture
def fake_python(workdir: Path) -> str:
    path = workdir / "fake_python"
    path.write_text(FAKE_PYTHON.replace("REAL_PYTHON", sys.executable))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def calls(workdir: Path) -> list[str]:
    path = workdir / "calls.txt"
    return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []


# ------------------------------------------------------------------------------------------------------------
# benchmark.sh
def test_dry_run_prints_the_paper_comparison_and_runs_nothing(workdir):
    lines = commands(bench("--dry-run", cwd=workdir))
    assert len(lines) == 3 * 4 * 5 * 3  # scripts x variants x games x seeds
    names = set()
    for line in lines:
        assert line.startswith(f"OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 {sys.executable} {ROOT}/")
        name = arg(line, "--run-name")
        env_id, stem, variant, seed = name.split("__")
        assert arg(line, "--env-id") == env_id and arg(line, "--seed") == seed
        assert line.split()[3] == str(ROOT / f"{stem}.py")
        assert variant_flags_of(line) == VARIANT_FLAGS[variant], line
        assert "--total-timesteps" not in line  # each script's own budget
        names.add((env_id, stem, variant, seed))
    games = {f"{g}NoFrameskip-v4" for g in ["Breakout", "Pong", "BeamRider", "SpaceInvaders", "MsPacman"]}
    assert {n[0] for n in names} == games
    assert {n[1] for n in names} == {"ppo_atari_hadamard", "dqn_atari_hadamard", "pqn_atari_hadamard"}
    assert {n[3] for n in names} == {"1", "2", "3"} and len(names) == len(lines)
    assert list(workdir.iterdir()) == []


def test_dry_run_maps_the_gates_and_the_layer_norm_switch_to_flags(workdir):
    """The gates, PQN's `_all` (--hadamard-scope all) before `_pm`, `_ln` (PPO, DQN: --layer-norm) or `_noln` (PQN:
    --no-layer-norm) after a variant, and `_redo` last (--redo-interval, REDO_INTERVAL's or 10000), for each script."""
    gates = {gate: ["--hadamard", "--gate", gate] for gate in ("glu", "swiglu", "bilinear")}
    expected = {
        "ppo_atari_hadamard": {"tanh_ln": ["--layer-norm"], "tanh_hr_ln": ["--hadamard", "--layer-norm"], **gates},
        "dqn_atari_hadamard": {
            "relu_pm_ln": ["--activation", "relu", "--param-matched", "--layer-norm"],
            "tanh_hr_ln_redo": ["--hadamard", "--layer-norm", "--redo-interval", "10000"],
        },
        "pqn_atari_hadamard": {
            "tanh_noln": ["--no-layer-norm"],
            "tanh_hr_noln": ["--hadamard", "--no-layer-norm"],
            "glu_noln": ["--hadamard", "--gate", "glu", "--no-layer-norm"],
            "tanh_redo": ["--redo-interval", "10000"],
            "tanh_hr_all": ["--hadamard", "--hadamard-scope", "all"],
            "relu_all_pm": ["--activation", "relu", "--hadamard-scope", "all", "--param-matched"],
            "glu_all_noln": ["--hadamard", "--gate", "glu", "--hadamard-scope", "all", "--no-layer-norm"],
        },
    }
    for stem, variants in expected.items():
        sweep = ["--scripts", stem.split("_")[0], "--variants", ",".join(variants), "--games", "Breakout", "--seeds", "1"]
        lines = commands(bench(*sweep, "--dry-run", cwd=workdir))
        assert {arg(line, "--run-name").split("__")[2]: variant_flags_of(line) for line in lines} == variants
    lines = commands(bench("--scripts", "ppo", "--variants", "tanh_redo", "--dry-run", cwd=workdir, REDO_INTERVAL="4096"))
    assert {tuple(variant_flags_of(line)) for line in lines} == {("--redo-interval", "4096")}
    assert list(workdir.iterdir()) == []


def test_help_lists_every_option_the_sweep_takes(workdir):
    """`bash benchmark.sh --help` (what its unknown-option line points to) names every option its parser takes, and the
    close-match list is the parser's options."""
    result = bench("--help", cwd=workdir)
    assert result.returncode == 0 and result.stderr == "" and result.stdout.startswith("Usage: bash benchmark.sh")
    text = BENCHMARK.read_text()
    parsed = set(re.findall(r"^ {8}(?:-h\|)?(--[a-z-]+)\)", text, re.M))
    listed = set(re.search(r"^OPTIONS=\(([^)]*)\)", text, re.M).group(1).split())
    assert len(parsed) > 20 and parsed == listed, parsed ^ listed
    assert all(re.search(rf"^ +{option}\b", result.stdout, re.M) for option in parsed - {"--help"}), result.stdout
    assert list(workdir.iterdir()) == []


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--bogus"], {}, "unknown option --bogus (flags for the training scripts go after --)"),  # no close match
        (["--seed", "7"], {}, "unknown option --seed; did you mean --seeds?"),
        (["--game", "Pong"], {}, "did you mean --games?"),
        (["Pong"], {}, "unexpected argument 'Pong'"),
        (["--", "--seed", "3"], {}, "use benchmark.sh --seeds"),
        (["--", "--env-id=PongNoFrameskip-v4"], {}, "use benchmark.sh --games"),
        (["--", "--redo-interval", "1000"], {}, "sets --redo-interval, which the sweep varies: use benchmark.sh --variants"),
        (["--variants", "tanh_redo"], {"REDO_INTERVAL": "abc"}, "REDO_INTERVAL must be a positive integer, got 'abc'"),
        (
            [],
            {"SCRIPT_ARGS": "--hadamard"},
            "SCRIPT_ARGS sets --hadamard, which the sweep varies: use benchmark.sh --variants",
        ),
        ([], {"PPO_ARGS": "--num-envs 4 --run-name mine"}, "PPO_ARGS sets --run-name"),
        (
            [],
            {"PQN_ARGS": "--no-layer-norm"},
            "PQN_ARGS sets --no-layer-norm, which the sweep varies: use benchmark.sh --variants",
        ),
        (["--", "--gate", "glu"], {}, "a flag after -- sets --gate, which the sweep varies"),
        ([], {"PQN_ARGS": "--hadamard-scope=all"}, "PQN_ARGS sets --hadamard-scope, which the sweep varies"),
        (["--games", "Breakout,Foo"], {}, "unknown game 'Foo' (not an ale-py ROM)"),
        (["--games", "Breakot"], {}, "unknown game 'Breakot' (not an ale-py ROM); did you mean Breakout"),
        (
            ["--games", "pong,Breakout-v4"],
            {},
            "env id 'Breakout-v4' is not one the scripts take: use BreakoutNoFrameskip-v4, ALE/Breakout-v5 or Breakout-v5",
        ),
        (["--mismatched", "keep"], {}, "--mismatched must be skip or redo, got 'keep'"),
        (["--report-only", "--games", "Pong", "--dry-run"], {}, "runs nothing: --games --dry-run would do nothing"),
        (["--slurm", "--jobs", "8"], {}, "--jobs sets the runs at once of a local sweep: with --slurm, use --slurm-parallel"),
        # the scripts' flags, parsed by each script's Args before the sweep starts
        (
            ["--", "--num-env", "16"],
            {},
            "the flags after -- for ppo_atari_hadamard.py: Unrecognized options: --num-env, 16; did you mean --num-envs?",
        ),
        ([], {"PQN_ARGS": "--num-steps x"}, "PQN_ARGS for pqn_atari_hadamard.py: Error parsing --num-steps"),
    ],
)
def test_bad_options_stop_before_anything_runs(workdir, fake_python, args, env, message):
    """A typo or a script flag that fights the sweep: one line, exit 2, nothing run and nothing written."""
    result = bench(*args, cwd=workdir, PYTHON=fake_python, **env)
    assert result.returncode == 2 and result.stdout == ""
    assert (
        result.stderr.strip().splitlines() == [f"error: {result.stderr.strip()[len('error: ') :]}"]
        and message in result.stderr
    )
    assert sorted(path.name for path in workdir.iterdir()) == ["fake_python"], "nothing written"
    followed = with_close_match(result.stderr, args)
    if followed:  # the first close match, given instead of the typo as the line says, makes a sweep that starts
        assert commands(bench("--dry-run", *followed, cwd=workdir, PYTHON=fake_python, **env)), followed


def test_dry_run_estimates_the_duration_from_finished_runs(workdir):
    """At the speed of the finished runs of the same script here (done.json: steps and wall time), for the steps each run
    has left, or says it cannot (and what makes it can)."""
    done = workdir / "runs" / "BreakoutNoFrameskip-v4__ppo_atari_hadamard__tanh__9"
    done.mkdir(parents=True)
    (done / "done.json").write_text(json.dumps({"global_step": 1000, "wall_time_s": 10.0}))  # 100 steps per second
    sweep = "--dry-run --games Breakout --variants tanh --seeds 1,2 --jobs 2".split()
    header = bench("--scripts", "ppo", *sweep, cwd=workdir).stdout.splitlines()[0]
    assert header.endswith("duration unknown: give --total-timesteps to estimate it"), header
    sweep += ["--total-timesteps", "36000"]  # as the line says
    header = bench("--scripts", "ppo", *sweep, cwd=workdir).stdout.splitlines()[0]
    assert header.endswith(
        "2 to run (0 of them interrupted: they resume from their checkpoints), 0 running in another sweep (left alone), "
        "0 finished (skipped); about 0.2 h of runs in all, 0.1 h at 2 at once (at the median speed of the finished runs here)"
    )
    header = bench("--scripts", "ppo,dqn", *sweep, cwd=workdir).stdout.splitlines()[0]
    assert header.endswith("duration unknown: no finished run of dqn_atari_hadamard here to time")
    # an interrupted run counts only the steps left after the last step its log shows
    interrupted = workdir / "runs" / "BreakoutNoFrameskip-v4__ppo_atari_hadamard__tanh__1"
    interrupted.mkdir()
    (interrupted / "train.log").write_text(
        "step    90,000/360,000 ( 25%)  elapsed 0:15:00\ninterrupted at step 93000: checkpoint written to x; run the same"
        " command to resume\n# resume\nresuming from step 93000 (x): new games start\nstep   180,000/360,000 ( 50%)\n"
    )
    sweep = "--dry-run --games Breakout --variants tanh --seeds 1 --total-timesteps 360000 --jobs 2".split()
    header = bench("--scripts", "ppo", *sweep, cwd=workdir).stdout.splitlines()[0]
    # (one run left: 2 at once take as long as it does)
    assert "1 to run (1 of them interrupted" in header and "about 0.5 h of runs in all, 0.5 h at 2 at once" in header


def test_flags_environment_and_passthrough(workdir):
    sweep = "--scripts ppo --variants tanh_hr,relu --threads 2 --total-timesteps 1000 --dry-run -- --num-envs 4 --track"
    result = bench(*sweep.split(), cwd=workdir, GAMES="Pong ALE/Breakout-v5", SEEDS="7", SCRIPT_ARGS="--capture-video")
    lines = commands(result)
    assert len(lines) == 4
    assert {arg(line, "--env-id") for line in lines} == {"PongNoFrameskip-v4", "ALE/Breakout-v5"}
    assert "ALE-Breakout-v5__ppo_atari_hadamard__tanh_hr__7" in {arg(line, "--run-name") for line in lines}
    for line in lines:
        assert line.startswith("OMP_NUM_THREADS=2 ") and arg(line, "--seed") == "7"
        assert line.endswith("--total-timesteps 1000 --capture-video --num-envs 4 --track")
    # flags for one script only
    sweep = "--scripts ppo,pqn --games Pong --seeds 1 --variants tanh --dry-run".split()
    lines = commands(bench(*sweep, cwd=workdir, PPO_ARGS="--num-steps 8", THREADS="3"))
    assert len(lines) == 2 and all(line.startswith("OMP_NUM_THREADS=3 MKL_NUM_THREADS=3 ") for line in lines)
    assert [line.endswith("--num-steps 8") for line in lines] == [True, False]
    # a flag beats its environment variable
    lines = commands(
        bench("--scripts", "ppo", "--games", "MsPacman", "--num-seeds", "2", "--dry-run", cwd=workdir, GAMES="Pong", SEEDS="9")
    )
    assert {arg(line, "--env-id") for line in lines} == {"MsPacmanNoFrameskip-v4"}
    assert sorted({arg(line, "--seed") for line in lines}) == ["1", "2"]


def test_quick_profile_dry_run(workdir):
    lines = commands(bench("--quick", "--dry-run", cwd=workdir))
    assert len(lines) == 4 * 2
    assert {arg(line, "--env-id") for line in lines} == {"BreakoutNoFrameskip-v4"}
    assert {arg(line, "--seed") for line in lines} == {"1", "2"}
    assert all("ppo_atari_hadamard.py" in line and arg(line, "--total-timesteps") == "50000" for line in lines)
    assert {arg(line, "--run-name").split("__")[2] for line in lines} == set(VARIANT_FLAGS)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--variants", "tanh,tanh_xx"], "unknown variant 'tanh_xx'"),
        (["--variants", "glu_hr"], "unknown variant 'glu_hr'"),
        (["--variants", "tanh_redo_ln"], "unknown variant 'tanh_redo_ln'"),
        (["--variants", "tanh_pm_all"], "unknown variant 'tanh_pm_all'"),
        (["--variants", "glu_pm"], "unknown variant 'glu_pm'"),
        (["--variants", "tanh_hr_pm"], "unknown variant 'tanh_hr_pm'"),
        (["--scripts", "dqn", "--variants", "tanh_hr_all"], "only PQN has --hadamard-scope all (_all)"),
        (["--scripts", "ppo", "--variants", "tanh,tanh_noln"], "variant 'tanh_noln' is not one of ppo_atari_hadamard.py's"),
        (
            ["--scripts", "pqn", "--variants", "glu_ln"],
            "variant 'glu_ln' is not one of pqn_atari_hadamard.py's: it has LayerNorm",
        ),
        (["--jobs", "0"], "--jobs must be a positive integer"),
        (["--scripts", "sac"], "sac_atari_hadamard.py not found"),
        (["--seeds", "1,b"], "seeds must be integers"),
        (["--total-timesteps", "-5"], "--total-timesteps must be a positive integer"),
        (["--slurm", "--slurm-grace", "0"], "--slurm-grace must be a positive number of seconds"),
    ],
)
def test_bad_input_is_one_clear_line(workdir, args, message):
    result = bench(*args, cwd=workdir)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.stderr
    assert list(workdir.iterdir()) == []


@pytest.mark.parametrize("mode", [["--dry-run"], [], ["--slurm"], ["--report-only"], ["--seed", "1"]])
@pytest.mark.parametrize(
    "python, message",
    [("/missing/python", "python '/missing/python' not found"), ("false", "'false' does not run as python 3.9 or newer")],
)
def test_the_sweeps_python_is_checked_first_in_every_mode(workdir, mode, python, message):
    """A PYTHON that is not there or is no python: one line, before a dry run prints its commands or a job is written."""
    result = bench(*mode, cwd=workdir, PYTHON=python)
    assert result.returncode == 2 and result.stdout == "" and one_line_failure(result).startswith(f"error: {message}")
    assert list(workdir.iterdir()) == []


def test_games_are_named_as_ale_py_names_them_by_the_sweeps_python(workdir):
    """A short name in any case is ale-py's game (one game, one run name); env ids keep their form. Every python the sweep
    runs is PYTHON's: a python3 that fails stays unused."""
    bin_dir = workdir / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text('#!/usr/bin/env bash\ntouch "$(dirname "$0")/python3_ran"; exit 1\n')
    (bin_dir / "python3").chmod(0o755)
    games = "pong,ms_pacman,MSPACMAN,space_invaders,ALE/breakout-v5,Breakout-v5"
    sweep = ["--scripts", "ppo", "--variants", "tanh", "--seeds", "1", "--games", games, "--dry-run"]
    lines = commands(bench(*sweep, cwd=workdir, PATH=f"{bin_dir}:{os.environ['PATH']}"))
    assert [arg(line, "--env-id") for line in lines] == [
        "PongNoFrameskip-v4",
        "MsPacmanNoFrameskip-v4",
        "SpaceInvadersNoFrameskip-v4",
        "ALE/Breakout-v5",
        "Breakout-v5",
    ]
    assert arg(lines[3], "--run-name") == "ALE-Breakout-v5__ppo_atari_hadamard__tanh__1"
    assert not (bin_dir / "python3_ran").exists()


def test_a_run_of_another_bool_setting_is_named_by_its_flag_and_that_flag_skips_it(workdir, fake_python):
    """A bool setting that differs reads as the scripts' flags (`--no-anneal-lr, this sweep: --anneal-lr`); the sweep with
    the run's flag, as the line says, takes the finished run for its own."""
    name = "BreakoutNoFrameskip-v4__ppo_atari_hadamard__tanh__1"
    (workdir / "runs" / name).mkdir(parents=True)
    (workdir / "runs" / name / "config.json").write_text(json.dumps({"anneal_lr": False}))  # the rest: the defaults
    (workdir / "runs" / name / "done.json").write_text("{}")
    sweep = ["--scripts", "ppo", "--games", "Breakout", "--variants", "tanh", "--seeds", "1", "--dry-run"]
    line = one_line_failure(bench(*sweep, cwd=workdir, PYTHON=fake_python))
    assert f"runs/{name} holds a run with other settings (--no-anneal-lr, this sweep: --anneal-lr): run this" in line, line
    result = bench(*sweep, "--", "--no-anneal-lr", cwd=workdir, PYTHON=fake_python)
    assert commands(result) == [] and "1 finished (skipped)" in result.stdout, result.stdout


def test_a_finished_run_of_another_budget_is_refused_unless_skipped_or_redone(workdir, fake_python):
    """After a 50k-step sweep the same sweep at the scripts' budget stops before anything starts, naming the runs and the
    flag that differs, in every mode; --mismatched skip leaves them out, --mismatched redo moves them to runs/_replaced/
    and runs them again. A field missing from a config.json is the field's default."""
    sweep = ["--scripts", "ppo", "--games", "Breakout", "--variants", "tanh,tanh_hr", "--seeds", "1"]
    names = [f"BreakoutNoFrameskip-v4__ppo_atari_hadamard__{variant}__1" for variant in ("tanh", "tanh_hr")]
    assert bench(*sweep, "--total-timesteps", "50000", cwd=workdir, PYTHON=fake_python).returncode == 0
    runs = workdir / "runs"
    before = snapshot(runs)
    for mode in ([], ["--dry-run"], ["--slurm"]):
        result = bench(*sweep, *mode, cwd=workdir, PYTHON=fake_python)
        line = one_line_failure(result)
        assert result.returncode == 2 and result.stdout == "", result.stdout
        assert line.startswith(
            f"error: 2 runs in runs/ hold other settings than this sweep's, e.g. runs/{names[0]} "
            "(--total-timesteps 50000, this sweep: 10000000): run this sweep with their flags, or give "
            "--mismatched skip"
        ), line
        assert "--mismatched redo to move them to runs/_replaced/ and run them again" in line
        assert snapshot(runs) == before and len(calls(workdir)) == 2

    skipped = bench(*sweep, "--mismatched", "skip", "--dry-run", cwd=workdir, PYTHON=fake_python)
    assert commands(skipped) == []
    assert "0 finished (skipped), 2 of other settings (skipped: --mismatched skip)" in skipped.stdout
    assert f"# skip (other settings: --total-timesteps 50000, this sweep: 10000000): {names[1]}" in skipped.stdout

    redone = bench(*sweep, "--mismatched", "redo", cwd=workdir, PYTHON=fake_python)
    assert redone.returncode == 0, redone.stderr
    assert "2 of other settings: they move to runs/_replaced/ and run again" in redone.stdout
    assert calls(workdir)[2:] == names
    for name in names:
        (old,) = (runs / "_replaced").glob(f"{name}-*")
        assert re.fullmatch(rf"{name}-\d{{8}}-\d{{6}}", old.name) and f"moved runs/{name} " in redone.stdout
        assert json.loads((old / "config.json").read_text())["total_timesteps"] == 50000 and (old / "done.json").exists()
        assert "total_timesteps" not in json.loads((runs / name / "config.json").read_text())  # the script's default
    again = bench(*sweep, cwd=workdir, PYTHON=fake_python)
    assert again.returncode == 0 and "2 finished (skipped); nothing to run" in again.stdout, again.stderr
    # the 50k sweep now meets runs of the default budget
    line = one_line_failure(bench(*sweep, "--total-timesteps", "50000", cwd=workdir, PYTHON=fake_python))
    assert "(--total-timesteps not in its config.json (the default, 10000000), this sweep: 50000)" in line


def test_an_interrupted_run_of_other_settings_is_refused_and_redo_moves_it_aside(workdir, fake_python, fake_sbatch):
    """An interrupted run (its checkpoint, no done.json) that another command started is refused before anything starts;
    --slurm --mismatched redo moves it aside, checkpoint and all, before the job is written (not with --dry-run, which
    moves nothing)."""
    sweep = ["--scripts", "ppo", "--games", "Pong", "--variants", "relu", "--seeds", "3"]
    name = "PongNoFrameskip-v4__ppo_atari_hadamard__relu__3"
    assert bench(*sweep, "--", "--num-envs", "4", cwd=workdir, PYTHON=fake_python).returncode == 0
    run_dir = workdir / "runs" / name
    (run_dir / "done.json").unlink()
    (run_dir / "checkpoint.pt").write_text("left by the interrupted run")
    before = snapshot(workdir / "runs")
    line = one_line_failure(bench(*sweep, "--", "--num-envs", "16", cwd=workdir, PYTHON=fake_python))
    assert line.startswith(
        f"error: runs/{name} holds a run with other settings (--num-envs 4, this sweep: 16): run this "
        "sweep with its flags, or give --mismatched skip to leave it as it is or --mismatched redo"
    ), line
    redo = [*sweep, "--slurm", "--mismatched", "redo"]
    line = one_line_failure(
        bench(*redo, "--dry-run", "--", "--num-envs", "16", cwd=workdir, PYTHON=fake_python, PATH=fake_sbatch)
    )
    assert "a dry run moves no run aside" in line
    assert snapshot(workdir / "runs") == before and calls(workdir) == [name]

    result = bench(*redo, "--", "--num-envs", "16", cwd=workdir, PYTHON=fake_python, PATH=fake_sbatch)
    assert result.returncode == 0 and "Submitted batch job 42" in result.stdout, result.stderr
    (old,) = (workdir / "runs" / "_replaced").iterdir()
    assert (old / "checkpoint.pt").read_text() == "left by the interrupted run" and not run_dir.exists()
    job = slurm_job(result.stdout)
    assert "#SBATCH --array=0-0" in job.read_text() and (job.parent / "tasks.tsv").read_text().startswith(f"{name}\t")


def test_resume_skips_finished_runs_and_resumes_interrupted_ones(workdir, fake_python):
    sweep = ["--scripts", "ppo", "--games", "Breakout", "--variants", "tanh,tanh_hr", "--seeds", "1,2", "--jobs", "2"]
    result = bench(*sweep, cwd=workdir, PYTHON=fake_python)
    assert result.returncode == 0, result.stderr
    assert sorted(calls(workdir)) == sorted(
        f"BreakoutNoFrameskip-v4__ppo_atari_hadamard__{v}__{s}" for v in ["tanh", "tanh_hr"] for s in [1, 2]
    )
    assert "OMP_NUM_THREADS=1" in (workdir / "calls.txt").read_text()
    assert "4 of 4 runs finished now" in result.stdout

    # the same command again: every run finished, nothing runs
    result = bench(*sweep, cwd=workdir, PYTHON=fake_python)
    assert result.returncode == 0 and len(calls(workdir)) == 4, result.stdout
    assert (
        "0 to run (0 of them interrupted: they resume from their checkpoints), 0 running in another sweep (left alone), "
        "4 finished (skipped); nothing to run"
    ) in result.stdout

    # an interrupted run (no done.json) runs again with the same command, in its own folder (the script resumes it from
    # its checkpoint), its log appended to
    interrupted = workdir / "runs" / "BreakoutNoFrameskip-v4__ppo_atari_hadamard__tanh_hr__2"
    (interrupted / "done.json").unlink()
    (interrupted / "checkpoint.pt").write_text("left by the interrupted run")
    log = (interrupted / "train.log").read_text()
    dry = bench(*sweep, "--dry-run", cwd=workdir, PYTHON=fake_python)
    assert commands(dry) and len(commands(dry)) == 1 and interrupted.name in commands(dry)[0]
    assert (
        dry.stdout.count("# skip (finished):") == 3
        and "(1 of them interrupted: they resume from their checkpoints)" in dry.stdout
    )
    result = bench(*sweep, cwd=workdir, PYTHON=fake_python)
    assert result.returncode == 0, result.stderr
    assert calls(workdir)[4:] == [interrupted.name] and f"resume {interrupted.name}" in result.stdout
    assert (interrupted / "done.json").exists() and (interrupted / "checkpoint.pt").exists()
    assert (interrupted / "train.log").read_text().startswith(log)
    assert [line.split()[3] for line in (interrupted / "train.log").read_text().splitlines() if line.startswith("# ")] == [
        "start",
        "resume",
    ]


def test_runs_dir_puts_the_sweep_elsewhere(workdir, fake_python):
    """--runs-dir sweep1/runs: each run works in sweep1/ (the scripts write runs/<name>/ there); a second launch skips
    them; the Slurm job hands the folder to its tasks."""
    sweep = ["--runs-dir", "sweep1/runs", "--scripts", "ppo", "--games", "Pong", "--variants", "tanh", "--seeds", "1,2"]
    result = bench(*sweep, cwd=workdir, PYTHON=fake_python)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (workdir / "sweep1" / "runs").iterdir() if not p.name.startswith(".")) == [
        "PongNoFrameskip-v4__ppo_atari_hadamard__tanh__1",
        "PongNoFrameskip-v4__ppo_atari_hadamard__tanh__2",
    ]
    assert (workdir / "sweep1" / "runs" / "PongNoFrameskip-v4__ppo_atari_hadamard__tanh__1" / "train.log").exists()
    assert not (workdir / "runs").exists()
    again = bench(*sweep, cwd=workdir, PYTHON=fake_python)
    assert "0 to run" in again.stdout and "2 finished (skipped)" in again.stdout
    dqn = [*sweep[:2], *"--scripts dqn --games Pong --variants tanh --seeds 1 --slurm".split()]
    job = slurm_job(bench(*dqn, cwd=workdir, PYTHON=fake_python).stdout).read_text()
    assert job.rstrip().endswith(f'"$((SLURM_ARRAY_TASK_ID + 1))" {workdir.resolve() / "sweep1" / "runs"}')


def test_a_run_going_on_in_another_sweep_is_left_alone(workdir, fake_python):
    import fcntl

    name = "PongNoFrameskip-v4__ppo_atari_hadamard__tanh__1"
    running = workdir / "runs" / name
    running.mkdir(parents=True)
    (running / "train.log").write_text("still training")
    (workdir / "runs" / ".locks").mkdir()
    with open(workdir / "runs" / ".locks" / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the other sweep's run task holds it
        result = bench(
            "--scripts", "ppo", "--games", "Pong", "--variants", "tanh", "--seeds", "1,2", cwd=workdir, PYTHON=fake_python
        )
    assert result.returncode == 0, result.stderr
    assert (
        "1 running in another sweep (left alone)" in result.stdout and "1 running in another sweep; 0 failed" in result.stdout
    )
    assert calls(workdir) == ["PongNoFrameskip-v4__ppo_atari_hadamard__tanh__2"]
    assert (running / "train.log").read_text() == "still training"


def test_a_failed_run_is_reported_and_retried(workdir, fake_python):
    sweep = ["--scripts", "ppo", "--games", "Pong", "--variants", "relu", "--seeds", "1"]
    result = bench(*sweep, cwd=workdir, PYTHON=fake_python, FAKE_FAIL="1")
    assert result.returncode != 0
    log = workdir / "runs" / "PongNoFrameskip-v4__ppo_atari_hadamard__relu__1" / "train.log"
    assert (
        "FAILED PongNoFrameskip-v4__ppo_atari_hadamard__relu__1" in result.stderr
        and str(log.relative_to(workdir)) in result.stderr
    )
    assert "error: boom" in log.read_text() and "1 failed" in result.stdout
    result = bench(*sweep, cwd=workdir, PYTHON=fake_python)
    assert result.returncode == 0 and (log.parent / "done.json").exists()


def processes_in(folder: Path) -> list[str]:
    """The command lines of the processes working in `folder` (a sweep's runs and run tasks)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cwd").resolve() == folder.resolve():
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:  # gone, or not ours to read
            pass
    return found


def test_a_signal_to_the_sweep_stops_its_runs_with_checkpoints_and_the_same_command_resumes_them(workdir):
    """Two real PPO runs at once: SIGTERM, then SIGINT, to benchmark.sh reach the runs, which write their checkpoints and
    stop; the sweep waits for them and exits 143 / 130, leaving no process behind. The same command then resumes both
    from their checkpoints, appending to their logs, and they end at exactly their budget."""
    sweep = "--scripts ppo --games Breakout --variants tanh,tanh_hr --seeds 1 --jobs 2 --total-timesteps 2048".split()
    sweep += ["--", *SMALL_ROLLOUT, "--metrics-interval", "0"]
    names = [f"BreakoutNoFrameskip-v4__ppo_atari_hadamard__{variant}__1" for variant in ("tanh", "tanh_hr")]
    logs = [workdir / "runs" / name / "train.log" for name in names]
    steps = []
    progress = lambda log: log.read_text().count("\nstep ") if log.exists() else 0  # noqa: E731 (progress lines so far)
    for signum in (signal.SIGTERM, signal.SIGINT):
        before = [progress(log) for log in logs]
        # SIGINT at its default, as from a terminal: a shell that starts with it ignored (a background job) cannot trap it
        sweep_process = subprocess.Popen(
            ["bash", str(BENCHMARK), *sweep],
            cwd=workdir,
            env={**SCRIPT_ENV, "PYTHON": sys.executable},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        deadline = time.time() + 300
        while not all(progress(log) > count for log, count in zip(logs, before)):  # each run has done an iteration
            assert sweep_process.poll() is None and time.time() < deadline, sweep_process.communicate()
            time.sleep(0.1)
        sweep_process.send_signal(signum)
        stdout, stderr = sweep_process.communicate(timeout=300)
        assert sweep_process.returncode == 128 + signum, stdout + stderr
        assert (
            "stopping the runs; each writes its checkpoint" in stderr
            and "2 unfinished (run the same command to resume" in stdout
        )
        assert processes_in(workdir) == [], "no run or run task outlives the sweep"
        for name, log in zip(names, logs):
            step = int(re.findall(r"interrupted at step (\d+): checkpoint written", log.read_text())[-1])
            assert f"interrupted {name} at step {step}" in stdout and 0 < step < 2048
            steps.append(step)
    result = bench(*sweep, cwd=workdir)
    assert result.returncode == 0 and "2 of 2 runs finished now" in result.stdout, result.stdout + result.stderr
    for name, log, first, second in zip(names, logs, steps[:2], steps[2:]):
        text = log.read_text()
        assert [line.split()[3] for line in text.splitlines() if line.startswith("# ")] == ["start", "resume", "resume"]
        assert f"resuming from step {first} " in text and f"resuming from step {second} " in text
        assert json.loads((workdir / "runs" / name / "done.json").read_text())["global_step"] == 2048
        assert_steps_increase(read_scalars(workdir / "runs" / name))


def slurm_job(stdout: str) -> Path:
    return Path(next(word.rstrip(":") for word in stdout.split() if word.rstrip(":").endswith("job.sbatch")))


def test_slurm_writes_an_array_job_from_the_template(workdir, fake_python, fake_sbatch):
    """The job script from the template (written, not submitted: where sbatch is absent, or with --dry-run), its printed
    sbatch command as typed (from another folder, a fake sbatch), and an array task run from it as Slurm starts one.
    tests/test_slurm.py submits to a real Slurm."""
    sweep = "--slurm --scripts ppo --games Breakout --variants tanh,tanh_hr --seeds 1,2 --slurm-time 2:00:00 --slurm-cpus 3"
    sweep = [*sweep.split(), "--slurm-grace", "120", "--sbatch-args", "--partition=gpu --gres=gpu:1"]
    sweep += [*(["--dry-run"] if shutil.which("sbatch") else []), "--", "--num-envs", "4"]
    result = bench(*sweep, cwd=workdir, PYTHON=fake_python)
    assert result.returncode == 0, result.stderr
    assert ("dry run: not submitted" if shutil.which("sbatch") else "sbatch not found") in result.stdout
    job = slurm_job(result.stdout)
    assert job.is_file() and job.parent.parent == workdir / "runs" / "_slurm"
    submit = re.search(r"submit (?:the job script there )?with: (.+)$", result.stdout, re.M).group(1)
    assert subprocess.run(["bash", "-c", submit], cwd="/", env=dict(SCRIPT_ENV, PATH=fake_sbatch)).returncode == 0
    assert (workdir / "bin" / "submitted").read_text().strip() == str(job)
    text = job.read_text()
    assert not re.search(r"\{\{[A-Z_]+\}\}", text) and text.startswith("#!/bin/bash")
    for line in [
        "#SBATCH --array=0-3",
        "#SBATCH --time=2:00:00",
        "#SBATCH --cpus-per-task=3",
        "#SBATCH --partition=gpu",
        "#SBATCH --gres=gpu:1",
        "#SBATCH --requeue",
        "#SBATCH --signal=B:USR1@120",
        "#SBATCH --open-mode=append",
        f"cd {workdir}",
    ]:
        assert line in text.splitlines(), line
    tasks = (job.parent / "tasks.tsv").read_text().splitlines()
    assert len(tasks) == 4 and all(task.endswith("--num-envs 4") for task in tasks)
    assert subprocess.run(["bash", "-n", str(job)]).returncode == 0

    # an array task runs its line of the task list, as Slurm would start it
    task_env = dict(SCRIPT_ENV, SLURM_ARRAY_TASK_ID="2")
    run = subprocess.run(["bash", str(job)], cwd="/", env=task_env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    name = tasks[2].split("\t")[0]
    assert calls(workdir) == [name] and (workdir / "runs" / name / "done.json").exists()
    # again: the finished task is skipped
    run = subprocess.run(["bash", str(job)], cwd="/", env=task_env, capture_output=True, text=True, timeout=60)
    assert "skip" in run.stdout and calls(workdir) == [name]
    # a new launch leaves the finished run out of the array
    result = bench(*sweep, cwd=workdir, PYTHON=fake_python)
    assert "#SBATCH --array=0-2" in slurm_job(result.stdout).read_text()


@pytest.fixture
def fake_sbatch(workdir: Path) -> str:
    """A PATH whose sbatch writes what it was given to bin/submitted and says it submitted job 42."""
    bin_dir = workdir / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(
        '#!/usr/bin/env bash\necho "$@" > "$(dirname "$0")/submitted"\necho "Submitted batch job 42"\n'
    )
    (bin_dir / "sbatch").chmod(0o755)
    return f"{bin_dir}:{os.environ['PATH']}"


def test_slurm_submits_with_sbatch(workdir, fake_python, fake_sbatch):
    result = bench("--slurm", "--quick", cwd=workdir, PYTHON=fake_python, PATH=fake_sbatch)
    assert result.returncode == 0, result.stderr
    assert "Submitted batch job 42" in result.stdout
    job = slurm_job(result.stdout)
    assert (workdir / "bin" / "submitted").read_text().strip() == str(job)
    assert "#SBATCH --array=0-7" in job.read_text()


# ------------------------------------------------------------------------------------------------------------
def test_quick_profile_end_to_end_with_report(workdir):
    """`benchmark.sh --quick --report` with tiny budgets: 8 real PPO runs, 2 at once, then the report."""
    result = bench("--quick", "--report", "--out", "results", *TINY_PPO, cwd=workdir, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dirs = sorted(p for p in (workdir / "runs").iterdir() if not p.name.startswith("."))
    assert len(run_dirs) == 8
    for run_dir in run_dirs:
        config = json.loads((run_dir / "config.json").read_text())
        env_id, stem, variant, seed = run_dir.name.split("__")
        assert (config["variant"], config["env_id"], str(config["seed"]), config["total_timesteps"]) == (
            variant,
            env_id,
            seed,
            128,
        )
        assert (run_dir / "done.json").exists() and (run_dir / "train.log").exists()
        assert any(run_dir.glob("events.out.tfevents.*"))

    markdown = (workdir / "results" / "results.md").read_text()
    for variant in VARIANT_FLAGS:
        cells = row(markdown, "Breakout", variant)
        assert cells[2] == "2" and cells[3] == "128"
        assert not math.isnan(float(cells[6].split(" ")[0])) and float(cells[7].split(" ")[0]) >= 1  # dead fraction, srank
    for name in ["ppo_return.png", "ppo_dead_fraction.png", "ppo_srank.png", "aggregate_iqm.png"]:
        assert (workdir / "results" / name).stat().st_size > 1000, name

    # resume: the same command again runs nothing
    again = bench("--quick", "--dry-run", *TINY_PPO, cwd=workdir)
    assert commands(again) == [] and again.stdout.count("# skip (finished):") == 8
    # the quick profile's own budget does not take these runs for its own
    line = one_line_failure(bench("--quick", "--dry-run", cwd=workdir))
    assert line.startswith(
        "error: 8 runs in runs/ hold other settings than this sweep's, e.g. runs/BreakoutNoFrameskip-v4__"
        "ppo_atari_hadamard__relu__1 (--total-timesteps 128, this sweep: 50000; --metrics-interval 64, "
        "this sweep: 5000; --metrics-batch-size 32, this sweep: 1024; and 4 more): "
    ), line


# ------------------------------------------------------------------------------------------------------------
# the three scripts, side by side
ALGORITHM_SPECIFIC_HELP = {"activation", "hadamard", "batch_size", "compile", "metrics_batch_size"}


def test_shared_flags_have_the_same_help_in_every_script():
    """A flag the scripts share reads the same in each `--help` (its Args docstring), unless what it does differs by
    algorithm."""
    docs = {}
    for script in ("ppo_atari_hadamard.py", "dqn_atari_hadamard.py", "pqn_atari_hadamard.py"):
        source = (ROOT / script).read_text()
        block = source[source.index("class Args:") : source.index("\n\n\n", source.index("class Args:"))]
        docs[script] = dict(re.findall(r'^    (\w+): [^\n]*\n    """(.*?)"""', block, re.M))
    shared = {name for fields in docs.values() for name in fields if sum(name in other for other in docs.values()) > 1}
    assert {"seed", "env_id", "fire_on_life_loss", "metrics_interval", "total_timesteps"} <= shared
    for name in sorted(shared - ALGORITHM_SPECIFIC_HELP):
        helps = {script: fields[name] for script, fields in docs.items() if name in fields}
        assert len(set(helps.values())) == 1, (name, helps)

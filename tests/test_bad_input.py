"""Bad input to the three training scripts: each is one line on stderr and a non-zero exit before anything is written."""

import dataclasses
import importlib.metadata
import json
import re
import shlex
import sys
from pathlib import Path

import pytest
import torch
import tyro

import dqn_atari_hadamard as dqn
import ppo_atari_hadamard as ppo
import pqn_atari_hadamard as pqn
from conftest import (
    ROOT,
    help_example,
    one_line_failure,
    read_config,
    run_fails,
    run_here,
    run_ok,
    run_script,
    with_close_match,
)

PPO, DQN, PQN = "ppo_atari_hadamard.py", "dqn_atari_hadamard.py", "pqn_atari_hadamard.py"
SCRIPTS = [PPO, DQN, PQN]
MODULES = {PPO: ppo, DQN: dqn, PQN: pqn}
ROLLOUT = [PPO, PQN]  # the scripts that compute batch_size, minibatch_size and num_iterations

# (scripts, flags, what the line says)
BAD_FLAGS = [
    (SCRIPTS, ["--run-name", "../escape"], "--run-name '../escape' is not one folder name"),
    (SCRIPTS, ["--run-name", "exp/a"], "--run-name 'exp/a' is not one folder name"),
    (SCRIPTS, ["--env-id", "Breakout-v4"], "unsupported env id 'Breakout-v4': use BreakoutNoFrameskip-v4, ALE/Breakout-v5"),
    (ROLLOUT, ["--batch-size", "64"], "Unrecognized options: --batch-size, 64"),
    (ROLLOUT, ["--minibatch-size", "64"], "Unrecognized options: --minibatch-size, 64"),
    (ROLLOUT, ["--num-iterations", "3"], "Unrecognized options: --num-iterations, 3"),
    ([PPO], ["--hadamrd"], "Unrecognized options: --hadamrd (did you mean --hadamard?)"),
    ([DQN], ["--buffer-size", "16"], "--buffer-size 16 is less than one --batch-size of 32"),
    (
        [DQN],
        ["--total-timesteps", "1000", "--learning-starts", "1000"],
        "--learning-starts 1000 is not below --total-timesteps 1000: the run would never learn",
    ),
    ([DQN, PQN], ["--start-e", "0.01", "--end-e", "0.5"], "--start-e 0.01 is below --end-e 0.5"),
    (SCRIPTS, ["--gate", "glu"], "--gate glu is a form of the two-branch representation: give it with --hadamard"),
    (SCRIPTS, ["--gate", "swiglu", "--param-matched"], "--gate swiglu is a form of the two-branch representation"),
    (
        SCRIPTS,
        ["--hadamard", "--gate", "bilinear", "--activation", "relu"],
        "--gate bilinear has its own activations (identity and identity): leave --activation out",
    ),
    ([PPO], ["--gate", "lstm"], "invalid choice 'lstm' for argument '--gate'"),
    (
        [PQN],
        ["--redo-tau", "0.1"],
        "--redo-conv, --redo-rule and --redo-tau set ReDo, which --redo-interval turns on (0: off)",
    ),
]


@pytest.mark.parametrize(
    "script, flags, message", [(s, flags, message) for scripts, flags, message in BAD_FLAGS for s in scripts]
)
def test_bad_flags_are_one_line_errors(workdir, script, flags, message):
    line = run_fails(script, *flags, cwd=workdir)
    assert line.startswith("error: ") and message in line, line
    followed = with_close_match(line, flags)
    if followed:  # given instead of the typo, as the line says, the close match is a valid command
        MODULES[script].check_args(tyro.cli(MODULES[script].Args, args=followed))


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_real_process_stops_with_one_line_and_exit_1(workdir, script):
    """The checks above run the script in the test's process (conftest.run_here); here a real `python <script>`: one line
    on stderr, nothing else (no traceback, no warning), exit 1, nothing written."""
    result = run_script(script, "--run-name", "../escape", cwd=workdir)
    line = one_line_failure(result)
    assert result.returncode == 1 and result.stdout == "" and not (workdir / "runs").exists()
    assert line == "error: --run-name '../escape' is not one folder name (no '/', not '.' or '..', 255 bytes at most)", line


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_flag_tyro_rejects_is_one_line_with_exit_2(workdir, script):
    """tyro's box of several lines becomes one line with its message; exit 2 as tyro's (the first in a real process)."""
    result = run_script(script, "--activation", "Tanh", cwd=workdir)
    line = one_line_failure(result)
    assert result.returncode == 2 and not (workdir / "runs").exists()
    choices = "('tanh', 'relu', 'sigmoid', 'gelu')"
    assert line == f"error: invalid choice 'Tanh' for argument '--activation'. Expected one of {choices}.", line
    result = run_here(script, "--seed", "abc", cwd=workdir)
    line = one_line_failure(result)
    assert result.returncode == 2 and line == "error: parsing --seed: invalid literal for int() with base 10: 'abc'", line


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_lists_the_flags_but_not_the_computed_fields(workdir, script):
    """--help lists every flag but the computed fields, and its example run is valid (test_ppo.py runs PPO's as printed)."""
    result = run_here(script, "--help", cwd=workdir)
    assert result.returncode == 0 and result.stderr == "" and result.stdout.startswith("usage:"), result.stderr
    module = MODULES[script]
    module.check_args(tyro.cli(module.Args, args=help_example(result.stdout, script)))
    flags = {word.rstrip(",") for word in result.stdout.split() if word.startswith("--")}
    computed = MODULES[script].COMPUTED
    assert computed == ({"batch_size", "minibatch_size", "num_iterations"} if script in ROLLOUT else set())
    assert computed <= {field.name for field in dataclasses.fields(MODULES[script].Args)}
    for field in dataclasses.fields(MODULES[script].Args):  # every other field is a flag (a bool's is --name or --no-name)
        assert (f"--{field.name.replace('_', '-')}" in flags) == (field.name not in computed), field.name
    assert not (workdir / "runs").exists()


@pytest.mark.parametrize("script", SCRIPTS)
def test_track_without_wandb_says_to_install_the_package_that_gives_it(workdir, script, monkeypatch):
    """--track where wandb cannot be imported is one line: `pip install wandb`. The package it names is the one that gives
    the module, and requirements.txt installs it."""
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError, as where it is not installed
    line = run_fails(script, "--track", cwd=workdir)
    assert line == "error: --track needs wandb: pip install wandb", line
    package = line.split("pip install ")[1]
    assert package in importlib.metadata.packages_distributions()["wandb"]
    assert re.search(rf"^{package}>=", (ROOT / "requirements.txt").read_text(), re.M)


@pytest.mark.parametrize("script", SCRIPTS)
def test_eval_model_on_a_folder_says_it_is_a_folder(workdir, script):
    (workdir / "trained").mkdir()
    line = run_fails(script, "--eval-model", "trained", cwd=workdir)
    assert "trained is a folder, not a model file" in line, line


@pytest.mark.parametrize("script", SCRIPTS)
def test_eval_model_with_network_flags_other_than_the_models(workdir, script):
    """A network flag given with a value other than the model's is an error naming the model's value; a flag given with the
    model's value is accepted (the error names the next flag). A training flag, which would do nothing, is an error."""
    module = MODULES[script]
    saved = module.Args(activation="relu", hadamard=True)
    network = (module.Agent if script == PPO else module.QNetwork)(4, "relu", True)
    torch.save(module.model_state(saved, network, 4), workdir / "model.pt")
    cases = [
        (["--activation", "gelu"], "trained with --activation relu, not --activation gelu; leave --activation out"),
        (["--activation", "relu", "--param-matched"], "trained with --no-param-matched, not --param-matched"),
    ]
    if script == PQN:
        cases.append((["--hadamard-scope", "all"], "trained with --hadamard-scope representation, not --hadamard-scope all"))
        cases.append((["--no-layer-norm"], "trained with --layer-norm, not --no-layer-norm"))
    else:
        cases.append((["--layer-norm"], "trained with --no-layer-norm, not --layer-norm"))
    for flags, message in cases:
        line = run_fails(script, "--eval-model", "model.pt", *flags, cwd=workdir)
        assert line.startswith("error: model file model.pt was trained") and message in line, line
    line = run_fails(script, "--eval-model", "model.pt", "--total-timesteps", "100", "--learning_rate=0.1", cwd=workdir)
    assert line == "error: --eval-model trains nothing: --learning-rate, --total-timesteps would do nothing; leave them out"


CHECK_ARGS_CASES = [
    (SCRIPTS, {"run_name": ""}, "--run-name '' is not one folder name"),
    (SCRIPTS, {"run_name": "."}, "--run-name '.' is not one folder name"),
    (SCRIPTS, {"run_name": ".."}, "--run-name '..' is not one folder name"),
    (SCRIPTS, {"run_name": "x" * 256}, "is not one folder name"),
    (SCRIPTS, {"exp_name": "a/b"}, "--exp-name 'a/b' is not one folder name"),
    (SCRIPTS, {"seed": -1}, "--seed must be in [0, 2**31 - 1]"),
    (SCRIPTS, {"seed": 2**31}, "--seed must be in [0, 2**31 - 1]"),
    ([DQN], {"eval_model": "model.pt", "eval_episodes": 0}, "--eval-model needs --eval-episodes of at least 1"),
    (SCRIPTS, {"capture_video": True, "eval_episodes": 0}, "--capture-video records the evaluation's games"),
    (SCRIPTS, {"redo_interval": -1}, "--redo-interval must be zero or positive, got -1"),
    (SCRIPTS, {"redo_interval": 100, "redo_tau": 1.5}, "--redo-tau must be in [0, 1], got 1.5"),
    (SCRIPTS, {"redo_interval": 100, "redo_tau": -0.1}, "--redo-tau must be in [0, 1], got -0.1"),
    (SCRIPTS, {"redo_conv": True}, "--redo-conv, --redo-rule and --redo-tau set ReDo, which --redo-interval turns on"),
    (SCRIPTS, {"redo_rule": "dead"}, "--redo-conv, --redo-rule and --redo-tau set ReDo, which --redo-interval turns on"),
    (SCRIPTS, {"redo_interval": 100, "redo_rule": "dead", "redo_tau": 0.1}, "--redo-tau is the dormant rule's threshold"),
    (SCRIPTS, {"wandb_entity": "me"}, "--wandb-project-name and --wandb-entity name the W&B run of --track"),
    (SCRIPTS, {"wandb_project_name": "x"}, "--wandb-project-name and --wandb-entity name the W&B run of --track"),
    ([DQN, PQN], {"exploration_fraction": 1.5}, "--exploration-fraction must be in [0, 1], got 1.5"),
    (SCRIPTS, {"eval_episodes": 3}, "--eval-episodes sets the evaluation that --save-model, --capture-video or --eval-model"),
    ([DQN, PQN], {"eval_epsilon": 0.0}, "--eval-epsilon sets the evaluation that --save-model, --capture-video or"),
    (SCRIPTS, {"metrics_interval": 0, "metrics_batch_size": 32}, "--metrics-batch-size sets the states of the metrics"),
    ([DQN, PQN], {"exploration_fraction": 0.0, "start_e": 0.5}, "--start-e starts the decay that --exploration-fraction 0"),
]


@pytest.mark.parametrize(
    "script, fields, message", [(s, fields, message) for scripts, fields, message in CHECK_ARGS_CASES for s in scripts]
)
def test_check_args_rejects(script, fields, message):
    with pytest.raises(SystemExit) as exc:
        MODULES[script].check_args(MODULES[script].Args(**fields))
    assert str(exc.value.code).startswith("error: ") and message in str(exc.value.code), exc.value.code


@pytest.mark.parametrize("script", SCRIPTS)
def test_check_args_accepts_the_edges(script):
    """The largest seed, a run name of 255 bytes, ReDo's tau of 0 and 1 (its states of --metrics-batch-size with the metrics
    off), and DQN's learning start one step before the end are valid."""
    module = MODULES[script]
    module.check_args(module.Args(seed=2**31 - 1, run_name="x" * 255, exp_name="my.exp"))
    for tau in (0.0, 1.0):  # ReDo's threshold at both ends of [0, 1]
        redo = dict(redo_interval=1, redo_tau=tau, redo_conv=True)
        module.check_args(module.Args(**redo, metrics_interval=0, metrics_batch_size=32))
    if script == DQN:
        module.check_args(module.Args(total_timesteps=1000, learning_starts=999, buffer_size=32, start_e=0.5, end_e=0.5))


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_flags_a_hint_names_read_back_as_the_settings(script):
    """as_flag, which the hints use to name settings, gives every field as a command line reads it back: bools as --x or
    --no-x, None, small floats, a name with a space or a leading '-'."""
    module = MODULES[script]
    assert module.as_flag("exp_name", "-x") == "--exp-name=-x" and module.as_flag("hadamard", False) == "--no-hadamard"
    for name in ("-x", "-odd name"):
        settings = module.Args(exp_name=name, hadamard=True, learning_rate=2.5e-5, wandb_entity="me", track=True)
        fields = {key: value for key, value in dataclasses.asdict(settings).items() if key not in module.COMPUTED}
        line = " ".join(module.as_flag(key, value) for key, value in fields.items())
        assert "--no-save-model" in line and "--eval-model None" in line and "--learning-rate 2.5e-05" in line, line
        parsed = dataclasses.asdict(tyro.cli(module.Args, args=shlex.split(line)))
        assert {key: parsed[key] for key in fields} == fields


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_run_saved_with_a_setting_that_does_nothing_resumes(tmp_path, script):
    """A setting refused where it does nothing (--metrics-batch-size with the metrics and ReDo off; --start-e with
    --exploration-fraction 0) is not compared on resume: a run saved with it (before the refusal) resumes without it.
    Any other setting is still compared."""
    module = MODULES[script]
    inert = {"metrics_interval": 0, "metrics_batch_size": 32}
    if script != PPO:
        inert |= {"exploration_fraction": 0.0, "start_e": 0.5}
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    saved = {**dataclasses.asdict(module.Args(**inert)), "algorithm": module.ALGORITHM}
    (run_dir / "config.json").write_text(json.dumps(saved))
    command = {key: value for key, value in inert.items() if key not in ("metrics_batch_size", "start_e")}
    assert module.check_resume(str(run_dir), module.Args(**command)) == (None, saved)
    with pytest.raises(SystemExit) as exc:
        module.check_resume(str(run_dir), module.Args(**command, learning_rate=0.5))
    assert "(this command: --learning-rate 0.5); resume it with its own" in str(exc.value.code), exc.value.code


@pytest.mark.parametrize("script", SCRIPTS)
def test_env_ids(script):
    """The three id styles and their sticky-action defaults; any other version of a known game is an error that names the
    three, and an unknown game keeps its close-match hint."""
    parse_env_id = MODULES[script].parse_env_id
    ids = ("MsPacmanNoFrameskip-v4", "ALE/MsPacman-v5")
    for env_id, sticky in ((ids[0], 0.0), (ids[1], 0.25), ("MsPacman-v5", 0.0)):
        assert parse_env_id(env_id, None) == ("ms_pacman", sticky)
        assert parse_env_id(env_id, 0.1) == ("ms_pacman", 0.1)
    for env_id in ("MsPacman-v4", "ALE/MsPacman-v4", "MsPacmanNoFrameskip-v5", "ALE/MsPacmanNoFrameskip-v4", "MsPacman-v0"):
        with pytest.raises(SystemExit) as exc:
            parse_env_id(env_id, None)
        expected = f"error: unsupported env id {env_id!r}: use {', '.join(ids)} (sticky actions 0.25) or MsPacman-v5"
        assert exc.value.code == expected, exc.value.code
    with pytest.raises(SystemExit) as exc:
        parse_env_id("Breakot-v4", None)
    assert "unknown Atari game in env id 'Breakot-v4'" in exc.value.code, exc.value.code
    assert "did you mean BreakoutNoFrameskip-v4" in exc.value.code, exc.value.code
    meant = re.search(r"did you mean ([^,? ]+)", exc.value.code).group(1)  # the first close match, given as the line says
    assert parse_env_id(meant, None) == ("breakout", 0.0)


TINY = {
    PPO: ["--num-envs", "2", "--num-steps", "32", "--total-timesteps", "64", "--num-minibatches", "2", "--update-epochs", "1"],
    DQN: ["--total-timesteps", "50", "--learning-starts", "20", "--buffer-size", "100"],
}
TINY[PQN] = TINY[PPO]


@pytest.mark.parametrize("script", SCRIPTS)
def test_an_ale_v5_run_records_its_sticky_actions_and_is_named_without_a_slash(workdir, script):
    """config.json records the sticky-action probability used (ALE/...-v5: 0.25), the flag's value stays None; the default run
    name has '-' for the id's '/', so the run is one folder under runs/."""
    run_dir = run_ok(script, *TINY[script], "--env-id", "ALE/Breakout-v5", "--metrics-interval", "0", cwd=workdir)
    assert run_dir.name.startswith(f"ALE-Breakout-v5__{Path(script).stem}__1__"), run_dir.name
    config = read_config(run_dir)
    assert config["sticky_action_probability"] == 0.25 and config["repeat_action_probability"] is None
    assert config["env_id"] == "ALE/Breakout-v5" and config["run_name"] == run_dir.name

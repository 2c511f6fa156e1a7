"""Shared test helpers: run a training script end to end in a temporary folder, read its TensorBoard events back."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Two cores on CI: one torch thread per script keeps the env threads and torch from fighting.
SCRIPT_ENV = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_SILENT="true")


def run_script(script: str, *args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python <script> <args>` in `cwd`, capturing its output."""
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args], cwd=cwd, env=SCRIPT_ENV, capture_output=True, text=True, timeout=timeout
    )


def run_ok(script: str, *args: str, cwd: Path) -> Path:
    """Run a script that must succeed; return its single run directory under `cwd/runs`."""
    return run_ok_output(script, *args, cwd=cwd)[0]


def run_ok_output(script: str, *args: str, cwd: Path) -> tuple[Path, str]:
    """`run_ok`, and what the script printed."""
    result = run_script(script, *args, cwd=cwd)
    assert result.returncode == 0, f"{script} {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    run_dirs = sorted((cwd / "runs").iterdir())
    assert len(run_dirs) == 1, run_dirs
    return run_dirs[0], result.stdout


def assert_progress_and_outputs(stdout: str, run_dir: Path, videos: bool):
    """Every progress line gives the percent done, the elapsed time and the ETA; the last line says where the outputs are."""
    progress = [line for line in stdout.splitlines() if line.startswith("step ")]
    assert progress and all(re.search(r"\(\s*\d+%\)  elapsed \d+:\d\d:\d\d  ETA \d+:\d\d:\d\d  SPS", line) for line in progress), progress
    assert "(100%)" in progress[-1] and "ETA 0:00:00" in progress[-1]
    last = stdout.strip().splitlines()[-1]
    assert last.startswith(f"done: outputs in runs/{run_dir.name}/"), last
    assert (f"videos in videos/{run_dir.name}/" in last) == videos, last


def run_fails(script: str, *args: str, cwd: Path) -> str:
    """Run a script that must stop with one clear line and a non-zero exit, writing no run directory; return that line."""
    result = run_script(script, *args, cwd=cwd)
    assert result.returncode != 0, result.stdout
    assert not (cwd / "runs").exists(), "a failed start must not leave a run directory"
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def assert_bad_model_files_rejected(script: str, algorithm: str, misfit: dict, workdir: Path):
    """Missing, corrupt, foreign, partial and misfitting model files each stop `--eval-model` with one clear line.
    `misfit` is a complete checkpoint of `algorithm` whose weights do not fit the network its args describe."""
    import torch

    torch.save({"algorithm": "ppo" if algorithm != "ppo" else "dqn", "state_dict": {}}, workdir / "foreign.pt")
    torch.save({"algorithm": algorithm, "state_dict": {}}, workdir / "partial.pt")
    torch.save(misfit, workdir / "misfit.pt")
    (workdir / "corrupt.pt").write_bytes(b"\x00not a model" * 10)
    expected = {"missing.pt": "not found", "corrupt.pt": "cannot read model file", "foreign.pt": f"not a {algorithm.upper()} model",
                "partial.pt": "lacks", "misfit.pt": "does not fit"}
    for name, message in expected.items():
        assert message in run_fails(script, "--eval-model", name, cwd=workdir), name


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the run's TensorBoard event files: {tag: [(step, value), ...]}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def read_config(run_dir: Path) -> dict:
    return json.loads((run_dir / "config.json").read_text())


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


def assert_metrics_do_not_change_the_run(script: str, args: list, probe_flags: list, workdir: Path) -> dict:
    """The same run with the probe on (`probe_flags`) and off (`--metrics-interval 0`) logs identical losses and
    identical games: the probe draws with its own generator and touches no training generator (DESIGN section 4).
    Returns the scalars of both runs."""
    scalars = {}
    for name, flags in (("on", probe_flags), ("off", ["--metrics-interval", "0"])):
        (workdir / name).mkdir()
        scalars[name] = read_scalars(run_ok(script, *args, *flags, cwd=workdir / name))
    assert any(tag.startswith("representation/") for tag in scalars["on"])
    assert not any(tag.startswith("representation/") for tag in scalars["off"]), "--metrics-interval 0 turns the probe off"
    compared = [tag for tag in scalars["on"] if tag.startswith("losses/") or tag in ("charts/episodic_return", "charts/episodic_length")]
    assert "charts/episodic_return" in compared and any(tag.startswith("losses/") for tag in compared), "the run must learn and finish a game"
    for tag in compared:
        assert scalars["on"][tag] == scalars["off"][tag], tag
    return scalars


def assert_fire_on_life_loss(module, steps: int = 300):
    """`module.FireOnLifeLoss` on the real env, with a random policy that never picks FIRE: in Breakout the step after
    each life loss that leaves the game going sends FIRE and is marked forced, and no other step is; with the flag off
    nothing is forced (and the ball, never relaunched, costs no further life); MsPacman has no FIRE and is untouched."""
    import numpy as np
    from ale_py import Action

    for rom, enabled in (("breakout", True), ("breakout", False), ("ms_pacman", True)):
        envs = module.make_env(rom, 2, 0.0)
        action_set = list(envs.ale.get_action_set())
        fire = module.fire_action(envs, enabled)
        assert fire == (action_set.index(Action.FIRE) if enabled and Action.FIRE in action_set else None)
        never_fire = [i for i, action in enumerate(action_set) if action != Action.FIRE]
        _, info = envs.reset(seed=0)
        fire_on_life_loss = module.FireOnLifeLoss(fire, info["lives"])
        rng = np.random.default_rng(0)
        life_lost, life_losses, forced_steps = np.zeros(2, dtype=bool), 0, 0
        for _ in range(steps):
            actions, forced = fire_on_life_loss.actions(rng.choice(never_fire, 2))
            np.testing.assert_array_equal(forced, life_lost & (fire is not None))
            assert [action_set[a] for a in actions[forced]] == [Action.FIRE] * forced.sum()
            assert Action.FIRE not in [action_set[a] for a in actions[~forced]]
            _, _, terminated, _, info = envs.step(actions)
            fire_on_life_loss.step(info["lives"])
            life_lost = terminated & (info["lives"] > 0)
            life_losses, forced_steps = life_losses + life_lost.sum(), forced_steps + forced.sum()
        envs.close()
        if rom == "breakout" and enabled:
            assert forced_steps >= 4 and forced_steps >= life_losses - 2, (forced_steps, life_losses)
        elif rom == "breakout":
            assert forced_steps == 0 and life_losses <= 2, life_losses
        else:
            assert forced_steps == 0 and life_losses > 0, life_losses

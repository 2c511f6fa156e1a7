"""Shared test helpers: run a training script end to end in a temporary folder, read its TensorBoard events back."""

import contextlib
import difflib
import gc
import io
import json
import os
import random
import re
import resource
import runpy
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Two cores on CI: one torch thread per script keeps the env threads and torch from fighting.
SCRIPT_ENV = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_SILENT="true")
# and in the tests' own process too (the other core runs the other test worker, or the script a test started): torch's
# default of a thread per core made the in-process rollouts on the real env three times slower
torch.set_num_threads(1)


def file_size_limit(limit: Optional[int]):
    """A `preexec_fn` that makes every write past `limit` bytes of a file fail with EFBIG (what a full disk does with
    ENOSPC), or None for no limit."""

    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error to the writer, not a signal that kills it
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec if limit is not None else None


def run_script(
    script: str, *args: str, cwd: Path, timeout: float = 600, max_file_size: Optional[int] = None
) -> subprocess.CompletedProcess:
    """Run `python <script> <args>` in `cwd`, capturing its output (with `max_file_size`, under that file size limit)."""
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=cwd,
        env=SCRIPT_ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=file_size_limit(max_file_size),
    )


class _Text(io.StringIO):
    """What a script prints, caught as a pipe would take it (UTF-8, not a terminal)."""

    encoding = "utf-8"


def run_here(script: str, *args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """`run_script` in this process: the script runs as `__main__` (runpy) with `args` as its command line, in `cwd`, and
    its exit is what python makes of it (a SystemExit's message on stderr and exit 1, or its code). For the checks that
    stop a run before it trains: the same code as a real start without a new python importing torch (a real process's line
    and exit are checked in test_bad_input.py). What the script changes in this process (signal handlers, generators) is
    put back; one that is still running after `timeout` seconds fails the test."""

    def too_long(signum, frame):
        raise TimeoutError(f"{script} {' '.join(args)} still running after {timeout} s")

    out, err = _Text(), _Text()
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    generators = random.getstate(), np.random.get_state(), torch.get_rng_state()
    argv, here, excepthook = sys.argv, os.getcwd(), threading.excepthook
    sys.argv = [str(ROOT / script), *args]
    os.chdir(cwd)
    alarm = signal.signal(signal.SIGALRM, too_long)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(sys.argv[0], run_name="__main__")
        returncode = 0
    except SystemExit as exc:
        returncode = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        if exc.code is not None and not isinstance(exc.code, int):
            err.write(f"{exc.code}\n")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, alarm)
        sys.argv, threading.excepthook = argv, excepthook
        os.chdir(here)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        random.setstate(generators[0])
        np.random.set_state(generators[1])
        torch.set_rng_state(generators[2])
        gc.collect()  # the script's envs and networks go now
    return subprocess.CompletedProcess([sys.executable, script, *args], returncode, out.getvalue(), err.getvalue())


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
    assert progress and all(
        re.search(r"\(\s*\d+%\)  elapsed \d+:\d\d:\d\d  ETA \d+:\d\d:\d\d  SPS", line) for line in progress
    ), progress
    assert "(100%)" in progress[-1] and "ETA 0:00:00" in progress[-1]
    last = stdout.strip().splitlines()[-1]
    assert last.startswith(f"done: outputs in runs/{run_dir.name}/"), last
    assert (f"videos in videos/{run_dir.name}/" in last) == videos, last


def help_example(help_text: str, script: str) -> list[str]:
    """The flags of the example run that `script --help` prints (its one line `python <script> ...`)."""
    (line,) = [line.strip() for line in help_text.splitlines() if line.strip().startswith(f"python {script} ")]
    return shlex.split(line)[2:]


def with_close_match(message: str, args: list) -> Optional[list]:
    """`args` as a `did you mean X` in `message` says: the word closest to X (the typo) replaced by X, the first close
    match named; None when the message names none."""
    meant = re.search(r"did you mean ([^,? ]+)", message)
    if meant is None:
        return None
    typo = difflib.get_close_matches(meant.group(1), args, n=1)[0]
    return [meant.group(1) if arg == typo else arg for arg in args]


def probe_off(args: list) -> list:
    """`args` with the probe off: `--metrics-interval 0`, and no `--metrics-batch-size` (refused with the metrics off)."""
    probe = ("--metrics-interval", "--metrics-batch-size")  # each with its value after it
    kept = [arg for i, arg in enumerate(args) if arg not in probe and (i == 0 or args[i - 1] not in probe)]
    return [*kept, "--metrics-interval", "0"]


def one_line_failure(result: subprocess.CompletedProcess) -> str:
    """A run that stopped with one clear line on stderr and a non-zero exit; returns that line."""
    assert result.returncode != 0, result.stdout
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def run_fails(script: str, *args: str, cwd: Path) -> str:
    """Run a script (in this process: `run_here`) that must stop with one clear line and a non-zero exit, writing no run
    directory; return that line."""
    line = one_line_failure(run_here(script, *args, cwd=cwd))
    assert not (cwd / "runs").exists(), "a failed start must not leave a run directory"
    return line


def assert_bad_model_files_rejected(script: str, algorithm: str, small_network: torch.nn.Module, workdir: Path, **args):
    """Missing, corrupt, foreign, partial and misfitting model files each stop `--eval-model` with one clear line, and so
    does a game or network flag given other than the model's (at its default too). The misfit is a complete model file
    of `algorithm` whose weights (`small_network`'s: 64 units) do not fit the network of its args (512 tanh units; `args`
    adds what else the script's model file holds)."""
    misfit = {
        "algorithm": algorithm,
        "args": {"env_id": "BreakoutNoFrameskip-v4", "activation": "tanh", "hadamard": False, "param_matched": False, **args},
        "num_actions": 4,
        "representation_width": 512,
        "state_dict": small_network.state_dict(),
    }
    torch.save({"algorithm": "ppo" if algorithm != "ppo" else "dqn", "state_dict": {}}, workdir / "foreign.pt")
    torch.save({"algorithm": algorithm, "state_dict": {}}, workdir / "partial.pt")
    torch.save(misfit, workdir / "misfit.pt")
    (workdir / "corrupt.pt").write_bytes(b"\x00not a model" * 10)
    expected = {
        "missing.pt": "not found",
        "corrupt.pt": "cannot read model file",
        "foreign.pt": f"not a {algorithm.upper()} model",
        "partial.pt": "lacks",
        "misfit.pt": "does not fit",
    }
    for name, message in expected.items():
        assert message in run_fails(script, "--eval-model", name, cwd=workdir), name
    # a game or network flag given on the command line is the one asked for, even at its default: not the model's
    torch.save(
        {**misfit, "args": {**misfit["args"], "env_id": "PongNoFrameskip-v4", "activation": "relu", "hadamard": True}},
        workdir / "pong.pt",
    )
    for flags, message in (
        (["--env-id", "BreakoutNoFrameskip-v4"], "trained on PongNoFrameskip-v4, not BreakoutNoFrameskip-v4"),
        (["--activation=tanh"], "trained with --activation relu, not --activation tanh"),
        (["--no-hadamard"], "trained with --hadamard, not --no-hadamard"),
    ):
        assert message in run_fails(script, "--eval-model", "pong.pt", *flags, cwd=workdir), flags


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
    identical games: the probe draws with its own generator and touches no training generator.
    Returns the scalars of both runs."""
    scalars = {}
    for name, flags in (("on", probe_flags), ("off", ["--metrics-interval", "0"])):
        (workdir / name).mkdir()
        scalars[name] = read_scalars(run_ok(script, *args, *flags, cwd=workdir / name))
    assert any(tag.startswith("representation/") for tag in scalars["on"])
    assert not any(tag.startswith("representation/") for tag in scalars["off"]), "--metrics-interval 0 turns the probe off"
    compared = [
        tag
        for tag in scalars["on"]
        if tag.startswith("losses/") or tag in ("charts/episodic_return", "charts/episodic_length")
    ]
    assert "charts/episodic_return" in compared and any(tag.startswith("losses/") for tag in compared), (
        "the run must learn and finish a game"
    )
    for tag in compared:
        assert scalars["on"][tag] == scalars["off"][tag], tag
    return scalars


def assert_fire_on_life_loss(module, steps: int = 300):
    """`module.FireOnLifeLoss` on the real env, with a random policy that never picks FIRE: in Breakout the step after
    each life loss that leaves the game going sends FIRE and is marked forced, and no other step is; with the flag off
    nothing is forced (and the ball, never relaunched, costs no further life); MsPacman has no FIRE and is untouched."""
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


# ----------------------------------------------------------------------------- interrupts, checkpoints, resume
RESUMED = "resumed"  # the --run-name of the interrupted and resumed runs


class Background:
    """A training script running in the background, its output collected as it comes."""

    def __init__(self, script: str, *args: str, cwd: Path, max_file_size: Optional[int] = None):
        self.started = time.time()
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / script), *args],
            cwd=cwd,
            env=SCRIPT_ENV,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=file_size_limit(max_file_size),
        )
        self.out, self.err = [], []
        self.readers = [
            threading.Thread(target=lambda pipe=pipe, lines=lines: lines.extend(pipe), daemon=True)
            for pipe, lines in ((self.process.stdout, self.out), (self.process.stderr, self.err))
        ]
        for reader in self.readers:
            reader.start()

    def wait_for(self, ready, timeout: float = 300):
        """Until `ready()` holds; the script must still be running."""
        deadline = time.time() + timeout
        while not ready():
            assert self.process.poll() is None, (
                f"the script ended early:\n{''.join(self.out)[-3000:]}\n{''.join(self.err)[-3000:]}"
            )
            assert time.time() < deadline, "timed out"
            time.sleep(0.05)

    def finish(self, timeout: float = 300) -> subprocess.CompletedProcess:
        returncode = self.process.wait(timeout)
        for reader in self.readers:
            reader.join(10)
        return subprocess.CompletedProcess(self.process.args, returncode, "".join(self.out), "".join(self.err))


def interrupt(
    script: str,
    *args: str,
    cwd: Path,
    signals=(signal.SIGTERM,),
    ready=None,
    delay: float = 0.0,
    between: float = 0.3,
    max_file_size: Optional[int] = None,
) -> subprocess.CompletedProcess:
    """Run the script, send `signals` (`between` seconds apart) once `ready()` holds (default: its first progress line, the
    end of its first iteration) and `delay` seconds more; return what it did."""
    run = Background(script, *args, cwd=cwd, max_file_size=max_file_size)
    run.wait_for(ready or (lambda: any(line.startswith("step ") for line in run.out)))
    time.sleep(delay)
    for i, signum in enumerate(signals):
        time.sleep(between if i else 0)
        run.process.send_signal(signum)
    return run.finish()


def interrupted_line(result: subprocess.CompletedProcess, signum: int) -> int:
    """The interrupted run's exit (128 + signal, no traceback, its last line) and the step of its checkpoint."""
    assert result.returncode == 128 + signum, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    match = re.fullmatch(
        rf"interrupted at step (\d+): checkpoint written to runs/{RESUMED}/checkpoint.pt; run the same command to resume", last
    )
    assert match, last
    return int(match.group(1))


def snapshot(folder: Path) -> dict:
    return {path.relative_to(folder): (path.stat().st_size, path.stat().st_mtime_ns) for path in sorted(folder.rglob("*"))}


def run_fails_leaving(script: str, *args: str, cwd: Path, run_dir: Path) -> str:
    """Run a script (in this process: `run_here`) that must stop with one clear line and a non-zero exit, leaving `run_dir`
    exactly as it was; return the line."""
    before = snapshot(run_dir)
    line = one_line_failure(run_here(script, *args, cwd=cwd))
    assert snapshot(run_dir) == before, "the run must be left as it was"
    return line


def assert_steps_increase(scalars: dict):
    """Every tag's steps strictly increase; games (several envs can end one on the same step) never go back."""
    for tag, events in scalars.items():
        steps = [step for step, _ in events]
        if tag.startswith("charts/episodic_"):
            assert steps == sorted(steps), tag
        else:
            assert all(a < b for a, b in zip(steps, steps[1:])), (tag, steps)


def assert_interrupted_run_resumes(script: str, args: list, workdir: Path, ready=None) -> tuple[dict, dict, Path]:
    """SIGTERM mid-run (once `ready()`), then the same command: the interrupted run exits 143 with one line naming its
    checkpoint; a truncated checkpoint, one whose weights do not fit the network, another network and another algorithm
    are one-line errors that leave the run as it was; the same command (with --keep-checkpoint) then resumes from that step
    and ends at exactly --total-timesteps with every TensorBoard tag's steps increasing; run again, it is a finished run;
    --eval-model takes the checkpoint. Returns the interruption's checkpoint, the scalars and the run dir."""
    args = [*args, "--run-name", RESUMED]
    total = int(args[args.index("--total-timesteps") + 1])
    run_dir = workdir / "runs" / RESUMED
    step = interrupted_line(interrupt(script, *args, cwd=workdir, ready=ready and (lambda: ready(run_dir))), signal.SIGTERM)
    assert 0 < step < total
    checkpoint_file = run_dir / "checkpoint.pt"
    checkpoint = torch.load(checkpoint_file, weights_only=True)
    assert checkpoint["global_step"] == step and not (run_dir / "done.json").exists()

    shutil.copy(checkpoint_file, workdir / "checkpoint.pt")
    with open(checkpoint_file, "r+b") as f:  # as a crash mid-write would leave it, were the write not atomic
        f.truncate(checkpoint_file.stat().st_size // 2)
    assert "cannot read checkpoint" in run_fails_leaving(script, *args, cwd=workdir, run_dir=run_dir)
    layer = next(iter(checkpoint["state_dict"]))  # a checkpoint of another version of the network: a layer of another shape
    torch.save({**checkpoint, "state_dict": {**checkpoint["state_dict"], layer: torch.zeros(3)}}, checkpoint_file)
    assert "does not fit the network" in run_fails_leaving(script, *args, cwd=workdir, run_dir=run_dir)
    shutil.copy(workdir / "checkpoint.pt", checkpoint_file)
    other = "dqn_atari_hadamard.py" if script != "dqn_atari_hadamard.py" else "ppo_atari_hadamard.py"
    assert f"holds a {checkpoint['algorithm']} run" in run_fails_leaving(
        other, "--run-name", RESUMED, cwd=workdir, run_dir=run_dir
    )
    line = run_fails_leaving(script, *args, "--hadamard", cwd=workdir, run_dir=run_dir)
    assert "other settings: --no-hadamard (this command: --hadamard);" in line, line
    own = re.search(r"resume it with its own \(the same command with (.+) added\)", line).group(1)

    # as the line says (--keep-checkpoint: a finished run's checkpoint goes by default)
    result = run_script(script, *args, "--hadamard", *shlex.split(own), "--keep-checkpoint", cwd=workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"resuming from step {step} (runs/{RESUMED}/checkpoint.pt)" in result.stdout
    done = json.loads((run_dir / "done.json").read_text())
    assert done["global_step"] == total and done["resumes"] == 1, done
    scalars = read_scalars(run_dir)
    assert_steps_increase(scalars)
    assert "finished run" in run_fails_leaving(script, *args, cwd=workdir, run_dir=run_dir)
    evaluated = run_script(
        script, "--eval-model", str(checkpoint_file), "--eval-episodes", "1", cwd=workdir
    )  # a checkpoint is a model file too
    assert evaluated.returncode == 0 and "evaluation: mean return" in evaluated.stdout, evaluated.stderr[-3000:]
    return checkpoint, scalars, run_dir


# the iterations of the small PPO and PQN runs: 2 envs x 32 steps, one epoch of two minibatches
SMALL_ROLLOUT = "--num-envs 2 --num-steps 32 --num-minibatches 2 --update-epochs 1".split()
# the rollout runs of PPO and PQN that their SIGTERM-and-resume tests use: 8 of those iterations, the probe every 128 steps;
# --save-model writes the finished training's checkpoint before its evaluation
ROLLOUT_RESUME_ITERATIONS = 8
ROLLOUT_RESUME_ARGS = [
    *SMALL_ROLLOUT,
    *"--total-timesteps 512 --metrics-interval 128 --metrics-batch-size 32 --save-model --eval-episodes 1".split(),
]


def assert_rollout_run_resumed_as_one(scalars: dict, run_dir: Path, learning_rate: float):
    """A ROLLOUT_RESUME_ARGS run, interrupted and resumed, logged every iteration once, annealed the learning rate as one
    run does, and its optimizer took as many steps as one run's (so it was restored, not started afresh)."""
    batch, iterations = 64, ROLLOUT_RESUME_ITERATIONS
    assert [step for step, _ in scalars["charts/SPS"]] == list(range(batch, batch * iterations + 1, batch))
    np.testing.assert_allclose(
        [lr for _, lr in scalars["charts/learning_rate"]],
        [learning_rate * (1 - i / iterations) for i in range(iterations)],
        rtol=1e-6,
    )
    final = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert final["global_step"] == batch * iterations and final["iteration"] == iterations
    assert {int(state["step"]) for state in final["optimizer"]["state"].values()} == {iterations * 2}


def assert_restores(module, checkpoint: dict, network, optimizer):
    """`module.restore` (PPO's, PQN's) puts the network, the optimizer, the probe's and ReDo's generators and the global
    generators back exactly as `checkpoint` holds them."""
    probe_generator, redo_generator = torch.Generator().manual_seed(99), torch.Generator().manual_seed(98)
    module.restore(checkpoint, network, optimizer, probe_generator, redo_generator)
    assert_same_state(network.state_dict(), checkpoint["state_dict"])
    assert_same_state(optimizer.state_dict(), checkpoint["optimizer"])
    assert_same_state(probe_generator.get_state(), checkpoint["probe_generator"])
    assert_same_state(redo_generator.get_state(), checkpoint["redo_generator"])
    assert_same_state(module.rng_states(), checkpoint["rng"])


def assert_same_state(a, b, path="state"):
    """Two nested state dicts (tensors, numbers, lists, tuples, dicts) hold the same values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a.cpu(), b.cpu()), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (path, a.keys(), b.keys())
        for key in a:
            assert_same_state(a[key], b[key], f"{path}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)

"""Ctrl-C, SIGTERM and SIGUSR1 in the three training scripts: a checkpoint and one line, no traceback; a second Ctrl-C
exits at once; a signal during the evaluation; W&B resumes the same run. Each script's SIGTERM-and-resume test is in its
own test file (conftest.assert_interrupted_run_resumes)."""

import json
import re
import signal

import pytest
import torch

from conftest import (
    RESUMED,
    SMALL_ROLLOUT,
    Background,
    interrupt,
    interrupted_line,
    read_config,
    read_scalars,
    run_fails_leaving,
    run_script,
)

# runs long enough to be interrupted after their first iteration, the probe off
ROLLOUT = [*SMALL_ROLLOUT, "--total-timesteps", "4096", "--metrics-interval", "0"]  # PPO and PQN
LONG = {
    "ppo_atari_hadamard.py": ROLLOUT,
    "pqn_atari_hadamard.py": ROLLOUT,
    "dqn_atari_hadamard.py": "--total-timesteps 4000 --learning-starts 100 --buffer-size 500 --metrics-interval 0".split(),
}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGUSR1], ids=["ctrl-c", "sigusr1"])
@pytest.mark.parametrize("script", LONG)
def test_a_signal_writes_a_checkpoint_and_one_line(workdir, script, signum):
    """Ctrl-C and SIGUSR1 (Slurm's warning before a time limit) stop the run as SIGTERM does: the current iteration
    finishes, a checkpoint is written, one line says so, the exit is 128 + the signal, and no traceback."""
    step = interrupted_line(interrupt(script, *LONG[script], "--run-name", RESUMED, cwd=workdir, signals=(signum,)), signum)
    assert torch.load(workdir / "runs" / RESUMED / "checkpoint.pt", weights_only=True)["global_step"] == step


@pytest.mark.parametrize("script", ["ppo_atari_hadamard.py", "pqn_atari_hadamard.py"])
def test_a_second_ctrl_c_exits_at_once(workdir, script):
    """Two Ctrl-C within an iteration of 1,024 steps: the second exits at once, without a checkpoint."""
    args = "--num-envs 4 --num-steps 256 --total-timesteps 8192 --num-minibatches 4 --update-epochs 1".split()
    args += ["--metrics-interval", "0", "--checkpoint-interval", "0", "--run-name", RESUMED]
    result = interrupt(script, *args, cwd=workdir, signals=(signal.SIGINT, signal.SIGINT), delay=0.5)
    assert result.returncode == 130 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "interrupted again: exiting at once, without a checkpoint"
    assert not (workdir / "runs" / RESUMED / "checkpoint.pt").exists()


def test_a_second_ctrl_c_during_a_checkpoint_leaves_the_previous_one(workdir):
    """DQN with a 150k-transition buffer (a 1 GB checkpoint): a second Ctrl-C while the checkpoint is being written exits
    at once, and the previous checkpoint is intact (the write goes to a temporary file renamed only once it is complete)."""
    args = [*LONG["dqn_atari_hadamard.py"], "--buffer-size", "150000", "--run-name", RESUMED]
    step = interrupted_line(interrupt("dqn_atari_hadamard.py", *args, cwd=workdir), signal.SIGTERM)
    checkpoint = workdir / "runs" / RESUMED / "checkpoint.pt"
    before = checkpoint.stat().st_size, checkpoint.stat().st_mtime_ns
    result = interrupt("dqn_atari_hadamard.py", *args, cwd=workdir, signals=(signal.SIGINT, signal.SIGINT), between=0.2)
    assert result.returncode == 130 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"resuming from step {step} " in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "interrupted again: exiting at once, without a checkpoint"
    assert (checkpoint.stat().st_size, checkpoint.stat().st_mtime_ns) == before
    assert torch.load(checkpoint, weights_only=True, mmap=True)["global_step"] == step


@pytest.mark.parametrize("script", LONG)
def test_a_signal_during_the_evaluation_resumes_at_the_evaluation(workdir, script):
    """Training is checkpointed before the evaluation after it: SIGTERM there exits at once with one line, and the same
    command, as the line says, evaluates again from that checkpoint, with no trace of the interrupted evaluation in
    TensorBoard."""
    args = ["--total-timesteps", "128", "--metrics-interval", "0", "--save-model", "--run-name", RESUMED]
    args += [*(["--learning-starts", "64", "--buffer-size", "500"] if script == "dqn_atari_hadamard.py" else SMALL_ROLLOUT)]
    args += ["--eval-episodes", "2"]  # games of a second or two: the signal comes in the first
    run = Background(script, *args, cwd=workdir)
    run.wait_for(lambda: any(line.startswith("model saved to") for line in run.out))
    run.process.send_signal(signal.SIGTERM)
    result = run.finish()
    assert result.returncode == 143 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == (
        f"interrupted during the evaluation: training is finished, checkpointed to "
        f"runs/{RESUMED}/checkpoint.pt; run the same command to resume"
    )
    resumed = run_script(script, *args, cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from step 128 " in resumed.stdout and "evaluation: mean return" in resumed.stdout
    run_dir = workdir / "runs" / RESUMED
    assert len(read_scalars(run_dir)["eval/episodic_return"]) == 2
    assert json.loads((run_dir / "done.json").read_text())["global_step"] == 128


def test_wandb_resumes_the_same_run(workdir):
    """--track (offline) first given on resume starts a W&B run from the checkpoint's step, and says so; the run resumed
    again logs to that W&B run, its id kept in config.json; resumed with other W&B names, it is one line (that run is in
    the first project)."""
    untracked = [*SMALL_ROLLOUT, "--total-timesteps", "512", "--metrics-interval", "0", "--run-name", RESUMED]
    args = [*untracked, "--track"]
    script = "ppo_atari_hadamard.py"
    step = interrupted_line(interrupt(script, *untracked, cwd=workdir), signal.SIGTERM)
    tracked = interrupt(script, *args, cwd=workdir)
    assert f"--track from step {step} on: a new W&B run (the run was not tracked before)" in tracked.stdout, tracked.stdout
    interrupted_line(tracked, signal.SIGTERM)
    run_dir = workdir / "runs" / RESUMED
    wandb_id = read_config(run_dir)["wandb_id"]
    assert re.fullmatch(r"[a-z0-9]{8}", wandb_id), wandb_id
    moved = run_fails_leaving(script, *args, "--wandb-project-name", "other", cwd=workdir, run_dir=run_dir)
    assert "W&B run is in --wandb-project-name hadamard-atari: resume it with the same W&B names" in moved, moved
    resumed = run_script(script, *args, cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert read_config(run_dir)["wandb_id"] == wandb_id
    assert len(list(run_dir.glob(f"wandb/offline-run-*-{wandb_id}"))) == 2, list(run_dir.glob("wandb/*"))


def test_a_periodic_checkpoint_that_cannot_be_written_is_a_warning_and_the_previous_one_stays(tmp_path, capsys):
    """The write goes to a temporary file: when it fails (here a folder stands where that file would go), the previous
    checkpoint is untouched and, outside a signal, a warning says what the checkpoint needs and the run goes on
    (tests/test_resume.py has a real write error, and the one-line failure of a checkpoint on a signal)."""
    import ppo_atari_hadamard as ppo
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(tmp_path)
    path = tmp_path / "checkpoint.pt"
    assert ppo.save_checkpoint(str(path), {"global_step": 64}, writer, on_signal=False)
    (tmp_path / "checkpoint.pt.tmp").mkdir()
    assert not ppo.save_checkpoint(str(path), {"global_step": 128}, writer, on_signal=False)
    warning = capsys.readouterr().err.strip()
    assert re.fullmatch(
        r"warning: cannot write checkpoint .*checkpoint.pt \(RuntimeError: .*Is a directory\): it needs "
        r"about 0.0 MiB \(the previous one's size\) next to the previous one, [\d,.]+ MiB free on its disk; "
        r"the previous one, if any, stays; training goes on and tries again at the next checkpoint",
        warning,
    ), warning
    assert torch.load(path, weights_only=True)["global_step"] == 64
    writer.close()

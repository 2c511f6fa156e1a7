"""benchmark.sh --slurm on a real one-node Slurm on localhost (sweep/slurm_local.sh starts munged, slurmctld and slurmd):
an array of runs that finish, a requeued task whose run resumes from its checkpoint, and a run longer than its time
limit that finishes over several allocations. Skipped, with the reason, where Slurm is not installed or not root."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, SCRIPT_ENV, SMALL_ROLLOUT, assert_steps_increase, read_scalars

SLURM_LOCAL = ROOT / "sweep" / "slurm_local.sh"
TINY_PPO = [*SMALL_ROLLOUT, "--metrics-interval", "0"]  # PPO runs of 2 envs x 32 steps; the probe off


def free_ports(count: int) -> list[int]:
    """Ports that nothing listens on now, as the system hands them out."""
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """The environment that points sbatch, squeue and scontrol at a one-node cluster started for these tests, on ports of
    its own, as the line slurm_local.sh prints last sets it: each test worker (pytest-xdist) that runs one of them has its
    cluster, as has a suite run beside this one."""
    if os.geteuid() != 0:
        pytest.skip("the local Slurm cluster needs root (munged, slurmctld and slurmd run as root)")
    if not shutil.which("slurmctld", path=os.environ["PATH"] + ":/usr/sbin:/sbin"):
        pytest.skip("Slurm is not installed (Debian's slurm-wlm and munge; .ci/run installs them)")
    folder = tmp_path_factory.mktemp("slurm")
    ctld, slurmd = free_ports(2)
    ports = {**os.environ, "SLURM_LOCAL_CTLD_PORT": str(ctld), "SLURM_LOCAL_SLURMD_PORT": str(slurmd)}
    try:
        started = subprocess.run(
            ["bash", str(SLURM_LOCAL), "start", str(folder)], env=ports, capture_output=True, text=True, timeout=120
        )
        assert started.returncode == 0, started.stdout + started.stderr
        export = started.stdout.strip().splitlines()[-1]  # the line a user types to point Slurm's commands at it
        conf = subprocess.run(["bash", "-c", f'{export} && printf %s "$SLURM_CONF"'], capture_output=True, text=True).stdout
        assert export.startswith("export ") and Path(conf) == folder / "slurm.conf", export
        yield {**SCRIPT_ENV, "PYTHON": sys.executable, "SLURM_CONF": conf}
    finally:  # (a start that failed half way leaves daemons too)
        subprocess.run(["bash", str(SLURM_LOCAL), "stop", str(folder)], capture_output=True, timeout=120)


def submit(workdir: Path, env: dict, *args: str) -> tuple[str, str]:
    """benchmark.sh --slurm with `args`; returns the job id sbatch gave and what the sweep printed."""
    result = subprocess.run(
        ["bash", str(ROOT / "benchmark.sh"), "--slurm", "--slurm-cpus", "1", "--slurm-mem", "1G", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return re.search(r"Submitted batch job (\d+)", result.stdout).group(1), result.stdout


def wait_until(condition, env: dict, job: str, timeout: float, what: str):
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            queue = subprocess.run(["squeue", "-j", job], env=env, capture_output=True, text=True).stdout
            pytest.fail(f"timed out waiting for {what}; squeue:\n{queue}")
        time.sleep(0.5)


def job_ended(env: dict, job: str) -> bool:
    return subprocess.run(["squeue", "-h", "-j", job], env=env, capture_output=True, text=True).stdout.strip() == ""


def slurm_output(workdir: Path) -> str:
    return "".join(path.read_text() for path in sorted((workdir / "runs" / "_slurm").glob("*/slurm-*.out")))


def assert_finished(run_dir: Path, total: int) -> str:
    """The run ended at exactly `total` steps, its TensorBoard steps increasing; returns its log."""
    assert json.loads((run_dir / "done.json").read_text())["global_step"] == total
    assert_steps_increase(read_scalars(run_dir))
    return (run_dir / "train.log").read_text()


def test_an_array_of_two_runs_finishes(workdir, slurm):
    sweep = "--scripts ppo --games Breakout --variants tanh,tanh_hr --seeds 1 --total-timesteps 128".split()
    job, printed = submit(workdir, slurm, *sweep, "--", *TINY_PPO)
    runs = [workdir / "runs" / f"BreakoutNoFrameskip-v4__ppo_atari_hadamard__{variant}__1" for variant in ("tanh", "tanh_hr")]
    wait_until(lambda: job_ended(slurm, job), slurm, job, 300, "both array tasks")
    for run_dir in runs:
        assert (run_dir / "done.json").exists(), slurm_output(workdir)
        assert_finished(run_dir, 128)
    assert slurm_output(workdir).count(" done  BreakoutNoFrameskip-v4__ppo_atari_hadamard__") == 2
    # the report hint, typed as printed in another folder and a shell without the sweep's PYTHON
    hint = printed.split("when it has finished, write the report with: ")[1].splitlines()[0]
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in slurm.items() if k != "PYTHON"}
    result = subprocess.run(["bash", "-c", hint], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 finished runs" in (workdir / "results" / "results.md").read_text() and list(elsewhere.iterdir()) == []


def test_a_requeued_task_resumes_its_run_from_the_checkpoint(workdir, slurm):
    """`scontrol requeue` of the running task: Slurm sends SIGTERM to the task's processes, the run writes its checkpoint,
    and the task that Slurm starts again resumes it, to exactly --total-timesteps."""
    sweep = "--scripts ppo --games Breakout --variants tanh --seeds 1 --total-timesteps 3072".split()
    job, _ = submit(workdir, slurm, *sweep, "--", *TINY_PPO)
    log = workdir / "runs" / "BreakoutNoFrameskip-v4__ppo_atari_hadamard__tanh__1" / "train.log"
    wait_until(lambda: log.exists() and "\nstep " in log.read_text(), slurm, job, 300, "the run's first iteration")
    requeued = subprocess.run(["scontrol", "requeue", f"{job}_0"], env=slurm, capture_output=True, text=True)
    assert requeued.returncode == 0, requeued.stderr
    wait_until(lambda: job_ended(slurm, job), slurm, job, 300, "the requeued task")
    text = assert_finished(log.parent, 3072)
    step = int(re.search(r"interrupted at step (\d+): checkpoint written", text).group(1))
    assert f"resuming from step {step} " in text and 0 < step < 3072
    assert [line.split()[3] for line in text.splitlines() if line.startswith("# ")] == ["start", "resume"]


def test_a_run_longer_than_its_time_limit_finishes_over_several_allocations(workdir, slurm):
    """A one-minute limit with the warning 30 s before it (Slurm sends it up to 60 s early, on its 30 s tick): at each
    warning the run writes its checkpoint and the task requeues itself, until the run ends at exactly its budget."""
    # about 65 s of training here (2 envs x 128 steps an iteration), more than the 30 s an allocation gives it at most
    sweep = "--scripts ppo --games Breakout --variants tanh --seeds 1 --total-timesteps 12288 --slurm-time 1 --slurm-grace 30"
    flags = "--num-envs 2 --num-steps 128 --num-minibatches 2 --update-epochs 1 --metrics-interval 0"
    job, _ = submit(workdir, slurm, *sweep.split(), "--", *flags.split())
    wait_until(lambda: job_ended(slurm, job), slurm, job, 900, "the run over its allocations")
    text = assert_finished(workdir / "runs" / "BreakoutNoFrameskip-v4__ppo_atari_hadamard__tanh__1", 12288)
    allocations = [line.split()[3] for line in text.splitlines() if line.startswith("# ")]
    starts = allocations.count("start")
    assert allocations == ["start"] * starts + ["resume"] * (len(allocations) - starts) and len(allocations) > starts, (
        allocations
    )
    # A warning that comes while python loads torch, before the script handles signals, ends the run at once: that
    # allocation resumes nothing, and if it came before the first checkpoint the next one starts the run again.
    output = slurm_output(workdir)
    assert output.count("before its first checkpoint") == starts - 1, output
    assert 1 <= text.count("resuming from step ") <= len(allocations) - starts, text
    assert output.count(f"requeueing Slurm job {job}_0") == len(allocations) - 1, output

"""What a run folder holds across starts: the interrupt line's hint followed literally, one process per run folder (its
lock), the checkpoint of a finished run removed or kept, a checkpoint that cannot be written (a real file size limit, as a full
disk), starts and wall time counted in done.json, and the checks a checkpoint passes before anything is written."""

import importlib
import json
import os
import re
import shlex
import shutil
import signal
import time

import pytest
import torch

from conftest import SMALL_ROLLOUT, Background, interrupt, one_line_failure, run_here, run_script

# short runs, interrupted after their first iteration (PPO, PQN) or step (DQN), the probe off
ROLLOUT = [*SMALL_ROLLOUT, "--total-timesteps", "512", "--metrics-interval", "0"]  # PPO and PQN
SHORT = {
    "ppo_atari_hadamard.py": ROLLOUT,
    "pqn_atari_hadamard.py": ROLLOUT,
    "dqn_atari_hadamard.py": "--total-timesteps 600 --learning-starts 100 --buffer-size 500 --metrics-interval 0".split(),
}
PQN = "pqn_atari_hadamard.py"


def starts(run_dir) -> list:
    return (run_dir / "starts.log").read_text().splitlines()


@pytest.mark.parametrize("script", SHORT)
def test_a_run_without_run_name_is_its_folders_only_writer_and_resumes_as_its_interrupt_line_says(workdir, script):
    """The Quick start's path: a run without --run-name. While it runs (here stopped, still holding its folder), a second
    process on the same folder is one line and an exit, writing nothing; another --run-name, as the line says, trains, and
    the same command once the run has ended resumes it. SIGTERM: the interrupt line's hint, appended to the same command
    as it says, resumes the run (whose checkpoint holds --run-name None) to its end; a stale checkpoint.pt.tmp of a killed
    writer goes, and so does the finished run's checkpoint (no --keep-checkpoint)."""
    run = Background(script, *SHORT[script], cwd=workdir)
    run.wait_for(lambda: any(line.startswith("step ") for line in run.out))
    run_name = next(line for line in run.out if " representation, " in line).split(":")[0]
    run_dir = workdir / "runs" / run_name
    second = [*SHORT[script], "--run-name", run_name]
    run.process.send_signal(signal.SIGSTOP)
    try:
        line = one_line_failure(run_here(script, *second, cwd=workdir))
        assert re.fullmatch(
            rf"error: runs/{re.escape(run_name)} is in use by another process \(its start: .* pid {run.process.pid} on .*\): "
            r"wait for it to end, or give another --run-name",
            line,
        ), line
        another = Background(script, *SHORT[script], "--run-name", "another", cwd=workdir)  # as the line says: it trains
        try:
            another.wait_for(lambda: any(line.startswith("step ") for line in another.out))
        finally:
            another.process.kill()
            another.finish()
    finally:
        run.process.send_signal(signal.SIGCONT)
    assert len(starts(run_dir)) == 1 and len(starts(workdir / "runs" / "another")) == 1
    shutil.rmtree(workdir / "runs" / "another")
    run.process.send_signal(signal.SIGTERM)
    interrupted = run.finish()
    assert interrupted.returncode == 143 and "Traceback" not in interrupted.stderr, interrupted.stderr[-3000:]
    last = interrupted.stdout.strip().splitlines()[-1]
    match = re.fullmatch(
        rf"interrupted at step (\d+): checkpoint written to runs/{run_name}/checkpoint.pt; "
        r"run the same command (.+) to resume",
        last,
    )
    assert match, last
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["args"]["run_name"] is None
    (run_dir / "checkpoint.pt.tmp").write_bytes(b"left by a process killed while it wrote a checkpoint")

    follow = shlex.split(match.group(2).removeprefix("with "))  # "with --run-name <name>"
    assert [*SHORT[script], *follow] == second  # the in-use line's "wait for it to end", then the same command: it resumes
    resumed = run_script(script, *SHORT[script], *follow, cwd=workdir)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resuming from step {match.group(1)} " in resumed.stdout
    done = json.loads((run_dir / "done.json").read_text())
    total = int(SHORT[script][SHORT[script].index("--total-timesteps") + 1])
    assert done["global_step"] == total and done["resumes"] == 1, done
    assert [entry.split(": ", 1)[1] for entry in starts(run_dir)] == ["start", f"resume from step {match.group(1)}"]
    assert not (run_dir / "checkpoint.pt").exists() and not (run_dir / "checkpoint.pt.tmp").exists()
    assert sorted((workdir / "runs").iterdir()) == [run_dir]


def test_a_kept_checkpoint_is_the_finished_trainings(workdir):
    """--keep-checkpoint keeps the checkpoint of the finished training, written at its end (with no evaluation after it
    and no periodic checkpoint on the way), not the last periodic one or none."""
    run_dir = workdir / "runs" / "kept"
    result = run_script(PQN, *SHORT[PQN], "--checkpoint-interval", "0", "--keep-checkpoint", "--run-name", "kept", cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["global_step"] == 512


def test_starts_that_ended_before_a_checkpoint_count_and_wall_time_counts_start_up(workdir):
    """A run killed (SIGKILL) before its first checkpoint starts again from step 0: done.json counts that start in its
    resumes (from starts.log), and its wall time is that of the whole last process, Python's start-up included. A
    checkpoint that cannot be read is one line, and removing the file as it says starts the run again."""
    args = [*SHORT[PQN], "--run-name", "killed"]
    run = Background(PQN, *args, cwd=workdir)
    run.wait_for(lambda: any(line.startswith("step ") for line in run.out))
    run.process.kill()
    run.finish()
    run_dir = workdir / "runs" / "killed"
    assert not (run_dir / "checkpoint.pt").exists()
    (run_dir / "checkpoint.pt").write_bytes(b"not a checkpoint")
    line = one_line_failure(run_here(PQN, *args, cwd=workdir))
    match = re.fullmatch(r"error: cannot read checkpoint (\S+) .*: remove the file to train the run again from step 0", line)
    assert match, line
    os.remove(workdir / match.group(1))

    run = Background(PQN, *args, cwd=workdir)
    run.wait_for(lambda: run.out)  # its first line comes after the imports, the envs and the network are made
    start_up = time.time() - run.started
    result = run.finish()
    whole = time.time() - run.started
    assert result.returncode == 0, result.stderr[-3000:]
    assert "holds no checkpoint: training it again from step 0" in result.stdout
    done = json.loads((run_dir / "done.json").read_text())
    assert done["resumes"] == 1 and len(starts(run_dir)) == 2, done
    assert start_up < done["wall_time_s"] < whole, (start_up, done, whole)


MAX_FILE_SIZE = 2 * 2**20  # more than config.json, the events and starts.log; less than a PQN checkpoint (20 MB)


def test_a_periodic_checkpoint_that_cannot_be_written_is_a_warning_and_training_goes_on(workdir):
    """Every iteration's checkpoint fails (a real write error, EFBIG under a file size limit; torch says "unexpected pos"
    as on a full disk): each is a warning that says what the checkpoint needs and what the disk has, training goes on
    and tries again at the next interval, and the run finishes."""
    result = run_script(
        PQN, *SHORT[PQN], "--checkpoint-interval", "64", "--run-name", "full", cwd=workdir, max_file_size=MAX_FILE_SIZE
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    warnings = result.stderr.strip().splitlines()
    assert len(warnings) == 512 // 64, warnings
    for warning in warnings:
        assert re.fullmatch(
            r"warning: cannot write checkpoint runs/full/checkpoint.pt \(RuntimeError: .*unexpected pos.*\): "
            r"it needs more than the 2.0 MiB written before it failed, [\d,.]+ MiB free on its disk; "
            r"the previous one, if any, stays; training goes on and tries again at the next checkpoint",
            warning,
        ), warning
    run_dir = workdir / "runs" / "full"
    assert json.loads((run_dir / "done.json").read_text())["global_step"] == 512
    assert not (run_dir / "checkpoint.pt").exists() and not (run_dir / "checkpoint.pt.tmp").exists()


def test_a_checkpoint_on_a_signal_that_cannot_be_written_is_one_line_and_the_previous_one_stays(workdir):
    """SIGTERM must leave a checkpoint: when it cannot be written (the same real write error), the run stops with one
    line and a non-zero exit, and the previous checkpoint is as it was."""
    args = [*SHORT[PQN], "--run-name", "full"]
    assert interrupt(PQN, *args, cwd=workdir).returncode == 143
    checkpoint = workdir / "runs" / "full" / "checkpoint.pt"
    before, step = (checkpoint.stat().st_size, checkpoint.stat().st_mtime_ns), torch.load(checkpoint)["global_step"]
    result = interrupt(PQN, *args, cwd=workdir, max_file_size=MAX_FILE_SIZE)
    line = one_line_failure(result)
    assert re.fullmatch(
        r"error: cannot write checkpoint runs/full/checkpoint.pt \(RuntimeError: .*\): it needs about "
        r"[\d.]+ MiB \(the previous one's size\) next to the previous one, [\d,.]+ MiB free on its disk; "
        r"the previous one, if any, stays",
        line,
    ), line
    assert (checkpoint.stat().st_size, checkpoint.stat().st_mtime_ns) == before
    assert torch.load(checkpoint)["global_step"] == step
    assert not (checkpoint.parent / "checkpoint.pt.tmp").exists()


def test_a_full_disk_at_start_is_one_line(workdir):
    """A write that fails as the run starts (config.json, under a file size limit of 200 bytes) is one line, no traceback."""
    result = run_script(PQN, *SHORT[PQN], "--run-name", "full", cwd=workdir, max_file_size=200)
    line = one_line_failure(result)
    assert re.fullmatch(
        r"error: cannot write runs/full/config.json \(\[Errno 27\] File too large\): "
        r"[\d,.]+ MiB free on its disk",
        line,
    ), line


def test_a_folder_written_while_the_command_started_is_one_line_and_the_command_again_takes_it(tmp_path):
    """Between a start's look at its run folder (what decides a fresh start or a resume) and its lock on it, another
    process that wrote the folder and ended is one line, with nothing written: `run the command again`, which looks at the
    folder as it is now and takes it."""
    import pqn_atari_hadamard as pqn

    run_dir = str(tmp_path / "run")
    checked = pqn.folder_state(run_dir)  # empty: a fresh start
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "config.json"), "w") as f:  # another start of the run, meanwhile
        f.write("{}")
    with pytest.raises(
        SystemExit,
        match=rf"^error: {re.escape(run_dir)} changed while this command started \(another process wrote it meanwhile\): "
        r"run the command again$",
    ):
        pqn.own_run_folder(run_dir, checked, "start")
    assert (tmp_path / "run" / "starts.log").read_text() == ""
    starts_log, count = pqn.own_run_folder(run_dir, pqn.folder_state(run_dir), "start")  # the command again
    starts_log.close()
    assert count == 1 and len(starts(tmp_path / "run")) == 1


def test_cuda_generator_states_restore_what_fits():
    """A checkpoint saves one CUDA generator state per visible GPU: where fewer are visible, each visible device gets its
    own saved state and the current device always gets one; a checkpoint written on a CPU restores none."""
    import pqn_atari_hadamard as pqn

    saved = [torch.Generator().manual_seed(seed).get_state()[:16] for seed in range(4)]  # a CUDA generator's state is 16 bytes

    def fit(*args) -> dict:  # {device: index of the saved state it gets}
        return {
            device: next(i for i, state in enumerate(saved) if state is chosen)
            for device, chosen in pqn.cuda_rng_states_that_fit(*args).items()
        }

    assert fit(saved, 2, 0) == {0: 0, 1: 1}  # written on 4 GPUs, resumed on 2
    assert fit(saved, 8, 3) == {0: 0, 1: 1, 2: 2, 3: 3}
    assert fit(saved[:1], 8, 0) == {0: 0}  # written on 1 GPU, resumed on 8
    assert fit(saved[:1], 2, 1) == {0: 0, 1: 0}  # the current device gets the run's state
    assert fit([], 2, 0) == {} and fit(saved, 0, 0) == {}  # written on a CPU; resumed on one
    states = pqn.rng_states()
    pqn.set_rng_states({**states, "cuda": saved})  # four GPUs' worth on a machine with fewer (here none)
    assert torch.equal(pqn.rng_states()["torch"], states["torch"])


def test_a_checkpoint_is_checked_against_the_network_and_optimizer_before_anything_is_written():
    """check_checkpoint loads the checkpoint into the network and optimizer this command builds: another network's weights
    or optimizer state, or a ReDo generator state that is not one, are one line; one that fits passes and leaves the global
    generators as they were."""
    import pqn_atari_hadamard as pqn

    def built(width: int):
        network = pqn.QNetwork(4, width=width)
        optimizer = torch.optim.RAdam(network.parameters(), lr=2.5e-4)
        network(torch.zeros(2, 4, 84, 84, dtype=torch.uint8)).sum().backward()
        optimizer.step()  # the optimizer holds state of the parameters' shapes
        return network, optimizer

    network, optimizer = built(64)
    other_rng = {**pqn.rng_states(), "torch": torch.Generator().manual_seed(7).get_state()}
    checkpoint = {"state_dict": network.state_dict(), "optimizer": optimizer.state_dict(), "rng": other_rng}
    checkpoint["redo_generator"] = torch.Generator().manual_seed(7).get_state()
    (fresh_network, fresh_optimizer), (wide_network, wide_optimizer) = built(64), built(512)
    before = pqn.rng_states()
    pqn.check_checkpoint(checkpoint, "checkpoint.pt", fresh_optimizer, state_dict=fresh_network)
    assert torch.equal(pqn.rng_states()["torch"], before["torch"])
    misfit_network = (
        r"^error: checkpoint checkpoint.pt does not fit the network and optimizer of this command "
        r"\(RuntimeError: Error\(s\) in loading state_dict for QNetwork: size mismatch for fc.0.weight: "
        r"copying a param with shape torch.Size\(\[64, 3136\]\) from checkpoint, .*\); "
        r"the run is left as it is$"
    )
    with pytest.raises(SystemExit, match=misfit_network):
        pqn.check_checkpoint(checkpoint, "checkpoint.pt", wide_optimizer, state_dict=wide_network)
    misfit_optimizer = {**checkpoint, "state_dict": wide_network.state_dict()}  # the network fits, its optimizer does not
    with pytest.raises(
        SystemExit,
        match=r"\(ValueError: optimizer state exp_avg of shape \(64, 3136\) for a parameter "
        r"of shape \(512, 3136\)\)",
    ):
        pqn.check_checkpoint(misfit_optimizer, "checkpoint.pt", wide_optimizer, state_dict=wide_network)
    bad_generator = {**checkpoint, "redo_generator": torch.zeros(3, dtype=torch.uint8)}  # ReDo's, not a generator state
    with pytest.raises(SystemExit, match=r"^error: checkpoint checkpoint.pt does not fit .*\(RuntimeError: .*"):
        pqn.check_checkpoint(bad_generator, "checkpoint.pt", fresh_optimizer, state_dict=fresh_network)
    assert torch.equal(pqn.rng_states()["torch"], before["torch"])


def test_a_finished_runs_hints_work_as_printed(workdir):
    """The same command on a finished run is one line: `give another --run-name, or remove the folder to train it again`.
    Each, done as it says, trains a run to its end."""
    args = [*SMALL_ROLLOUT, "--total-timesteps", "128", "--metrics-interval", "0", "--run-name", "finished"]  # 2 iterations
    assert run_script(PQN, *args, cwd=workdir).returncode == 0
    line = one_line_failure(run_here(PQN, *args, cwd=workdir))
    assert line.endswith("holds a finished run (done.json): give another --run-name, or remove the folder to train it again")
    assert run_script(PQN, *args, "--run-name", "another", cwd=workdir).returncode == 0  # another --run-name, as said
    shutil.rmtree(workdir / "runs" / "finished")  # or the folder removed
    assert run_script(PQN, *args, cwd=workdir).returncode == 0
    assert all((workdir / "runs" / name / "done.json").exists() for name in ("finished", "another"))


@pytest.mark.parametrize("module", ["ppo_atari_hadamard", "pqn_atari_hadamard"])
def test_a_checkpoint_from_before_redo_resumes_without_it(module):
    """A checkpoint written before ReDo existed holds no ReDo generator or next ReDo step (it ran without ReDo): it is
    not refused for them, its check passes, and restoring it leaves ReDo's generator as the command seeded it."""
    script = importlib.import_module(module)
    assert not {"redo_generator", "next_redo_step"} & script.RESUME_KEYS
    network = script.Agent(4, width=8) if module.startswith("ppo") else script.QNetwork(4, width=8)
    optimizer = torch.optim.Adam(network.parameters())
    probe_generator = torch.Generator().manual_seed(5)
    checkpoint = {"state_dict": network.state_dict(), "optimizer": optimizer.state_dict(), "rng": script.rng_states()}
    checkpoint["probe_generator"] = probe_generator.get_state()
    script.check_checkpoint(checkpoint, "checkpoint.pt", optimizer, state_dict=network)
    redo_generator = torch.Generator().manual_seed(98)
    script.restore(checkpoint, network, optimizer, torch.Generator(), redo_generator)
    assert torch.equal(redo_generator.get_state(), torch.Generator().manual_seed(98).get_state())

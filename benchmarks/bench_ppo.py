"""Speed of ppo_atari_hadamard.py at CleanRL's settings (8 envs x 128 steps, 4 epochs x 4 minibatches).

Usage: python benchmarks/bench_ppo.py [--iterations 6] [--compile] [--reference path/to/cleanrl/ppo_atari.py]

Prints, for tanh and tanh + HR:
- loop SPS: steady-state steps per second of the real training loop (a subprocess on Breakout; the
  first iteration, which pays start-up, is left out);
- update alone: the same `update` on a synthetic batch in this process (the ceiling of the issue; goal:
  the loop reaches 85% of it); learner alone: that update plus the rollout's policy forward passes, i.e.
  the loop with free environment steps;
- metrics cost: one `common_metrics.probe` of the default probe (1024 states), as a share of the time the loop
  takes for the default `--metrics-interval` steps (goal: under 1%).
With `--reference`, CleanRL's ppo_atari.py (gymnasium-1.x names) runs in the same session and its SPS is
the baseline of the ratio. Medians over `--repeats` runs; the machine is shared, so read the ratios.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]  # the repo root, where the training scripts are
sys.path.insert(0, str(ROOT))
import common_metrics  # noqa: E402
import ppo_atari_hadamard as ppo  # noqa: E402


def steady_sps(run_root: Path) -> float:
    """Steps per second between the first and the last logged iteration of the run under `run_root`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((run_root / "runs").iterdir())), size_guidance={"scalars": 0})
    events.Reload()
    sps = events.Scalars("charts/SPS")
    return (sps[-1].step - sps[0].step) / (sps[-1].wall_time - sps[0].wall_time)


def loop_sps(script: Path, iterations: int, flags: list[str]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(script.resolve()), "--total-timesteps", str(1024 * iterations), *flags]
        subprocess.run(cmd, cwd=tmp, check=True, capture_output=True)
        return steady_sps(Path(tmp))


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def ceiling_sps(hadamard: bool, compile: bool, device: torch.device, repeats: int = 3) -> tuple[float, float]:
    """The update step alone (4 epochs x 4 minibatches of 256) on a synthetic 1024-state batch, and the learner
    alone: that update plus the rollout's 128 policy forward passes on 8 states (each returning its actions to the CPU)."""
    args = ppo.Args(hadamard=hadamard)
    args.batch_size, args.minibatch_size = 1024, 256
    agent = ppo.Agent(4, hadamard=hadamard).to(device)
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5, fused=True)  # as the script
    loss_fn = torch.compile(ppo.ppo_loss) if compile else ppo.ppo_loss
    batch = (
        torch.randint(0, 256, (1024, 4, 84, 84), dtype=torch.uint8),
        -torch.rand(1024),
        torch.randint(0, 4, (1024,)),
        torch.randn(1024),
        torch.randn(1024),
        torch.randn(1024),
        torch.ones(1024),
    )
    batch = tuple(x.to(device) for x in batch)
    update_times, forward_times = [], []
    for _ in range(repeats + 2):  # two warm-up rounds (compilation)
        sync(device)
        start = time.perf_counter()
        for _epoch in range(args.update_epochs):
            b_inds = torch.randperm(1024, device=device)
            for begin in range(0, 1024, 256):
                mb = b_inds[begin : begin + 256]
                ppo.update(agent, optimizer, args, *(x[mb] for x in batch), loss_fn=loss_fn)
        sync(device)
        update_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        with torch.no_grad():
            for step in range(128):
                agent.get_action_and_value(batch[0][8 * step : 8 * step + 8])[0].cpu()
        forward_times.append(time.perf_counter() - start)
    update, forward = statistics.median(update_times[2:]), statistics.median(forward_times[2:])
    return 1024 / update, 1024 / (update + forward)


def probe_seconds(hadamard: bool, device: torch.device, repeats: int = 10) -> float:
    agent = ppo.Agent(4, hadamard=hadamard).to(device)
    obs = torch.randint(0, 256, (ppo.Args().metrics_batch_size, 4, 84, 84), dtype=torch.uint8, device=device)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        common_metrics.probe(agent, obs, agent.hidden_layers(), "fc", forward=agent.get_value)
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=6, help="iterations of 1024 steps per loop run")
    parser.add_argument("--repeats", type=int, default=1, help="loop runs per configuration (median)")
    parser.add_argument("--reference", type=Path, help="CleanRL's ppo_atari.py, timed as the baseline")
    parser.add_argument(
        "--compile", action="store_true", help="time the loop and the ceiling with --compile (torch.compile of the update)"
    )
    parser.add_argument("--no-cuda", action="store_true", help="stay on the CPU even where a GPU is present")
    opts = parser.parse_args()
    interval = ppo.Args().metrics_interval
    device = torch.device("cuda" if torch.cuda.is_available() and not opts.no_cuda else "cpu")
    where = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, {where}, {torch.get_num_threads()} torch threads, {os.cpu_count()} cores")

    reference = None
    if opts.reference:
        reference = statistics.median(
            loop_sps(opts.reference, opts.iterations, ["--no-cuda"] if device.type == "cpu" else [])
            for _ in range(opts.repeats)
        )
        print(f"CleanRL ppo_atari.py: {reference:7.1f} SPS")
    for variant, flags in (("tanh", []), ("tanh_hr", ["--hadamard"])):
        loop_flags = (
            [*flags, "--metrics-interval", "0"]
            + (["--compile"] if opts.compile else [])
            + (["--no-cuda"] if device.type == "cpu" else [])
        )
        sps = statistics.median(
            loop_sps(ROOT / "ppo_atari_hadamard.py", opts.iterations, loop_flags) for _ in range(opts.repeats)
        )
        update, learner = ceiling_sps(bool(flags), opts.compile, device)
        probe = probe_seconds(bool(flags), device)
        line = (
            f"{variant:8s}{' compiled' if opts.compile else ''} loop {sps:6.1f} SPS | update alone {update:6.1f} SPS "
            f"({sps / update:4.0%}) | learner alone {learner:6.1f} SPS ({sps / learner:4.0%}) | "
            f"probe {probe * 1000:5.1f} ms = {probe * sps / interval:6.3%} of {interval:,} steps"
        )
        if reference:
            line += f" | {sps / reference:4.2f}x CleanRL"
        print(line, flush=True)


if __name__ == "__main__":
    main()

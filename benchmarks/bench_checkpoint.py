"""Cost of a checkpoint in each training script, and the memory it takes to write one.

Usage: python benchmarks/bench_checkpoint.py [--scripts ppo dqn pqn] [--buffer-size 1000000] [--repeats 3] [--dir DIR]

For each script's default network on Breakout (4 actions), plain tanh and tanh + HR, after one optimizer step (so the
optimizer holds its state), and for DQN a replay buffer of --buffer-size transitions with every frame written (its
pages in memory), it writes a checkpoint with the script's own `save_checkpoint` (temporary file, fsync, rename) into
--dir and reads it back with torch.load(weights_only=True). It prints the median over --repeats of the file size,
the write and the read times, the growth of the peak resident memory while writing (0 when the buffer is written from
its own memory, without a second copy), and the share of a run's time that one checkpoint every --interval steps (the
script's default --checkpoint-interval) costs at the steps per second measured in benchmarks/README.md (2-core CPU and
H200); with --json the same as JSON.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, where the training scripts are

# steps per second of each loop, tanh (benchmarks/README.md): at its defaults on the 2-core CPU; on one H200 (PQN: purejaxql's
# preset, the fastest loop measured)
LOOP_SPS = {"ppo": {"cpu": 510, "h200": 1893}, "dqn": {"cpu": 210, "h200": 430}, "pqn": {"cpu": 455, "h200": 7907}}


def peak_rss() -> int:
    """VmHWM, the peak resident memory of this process, in bytes."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def reset_peak_rss():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident memory (Linux 4.0+)


def training_state(name: str, module, hadamard: bool, buffer_size: int) -> tuple[dict, int]:
    """A checkpoint of `name`'s defaults after one optimizer step, as its training loop writes it (for DQN with a
    buffer of `buffer_size` written transitions); and the bytes of that buffer."""
    torch.manual_seed(0)
    network = module.Agent(4, hadamard=hadamard) if name == "ppo" else module.QNetwork(4, hadamard=hadamard)
    optimizer = (
        torch.optim.RAdam(network.parameters(), lr=2.5e-4)
        if name == "pqn"
        else torch.optim.Adam(network.parameters(), lr=2.5e-4, eps=1e-5)
    )
    obs = torch.randint(0, 256, (32, 4, 84, 84), dtype=torch.uint8)
    (network.get_value(obs) if name == "ppo" else network(obs)).sum().backward()
    optimizer.step()
    state = {
        **module.model_state(module.Args(), network, 4),
        "optimizer": optimizer.state_dict(),
        "global_step": 500_000,
        "rng": module.rng_states(),
        "recent_returns": [0.0] * 100,
    }
    if name != "dqn":
        return {**state, "iteration": 1, "probe_generator": torch.Generator().get_state()}, 0
    rb = module.FrameReplayBuffer(buffer_size, 1)
    rb.frames[:] = np.arange(rb.frames.shape[1], dtype=np.uint8)[None, :, None, None]  # every page written
    rb.writes, rb.pos = rb.slots + 1, 1
    return {
        **state,
        "target_state_dict": network.state_dict(),
        "replay_buffer": rb.state_dict(),
        "replay_rng": rb.rng.bit_generator.state,
    }, rb.nbytes()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scripts", nargs="+", default=["ppo", "dqn", "pqn"], choices=["ppo", "dqn", "pqn"])
    parser.add_argument("--buffer-size", type=int, default=1_000_000, help="DQN's replay buffer (its default: 1M, 7.07 GB)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--interval", type=int, default=None, help="steps between checkpoints (default: each script's own)")
    parser.add_argument("--dir", default=None, help="where the checkpoints are written (default: a temporary folder here)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    if args.repeats < 1 or args.buffer_size < 1:
        sys.exit("error: --repeats and --buffer-size must be at least 1")

    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir or ".") as folder:
        writer = SummaryWriter(folder)
        path = os.path.join(folder, "checkpoint.pt")
        for name in args.scripts:
            module = importlib.import_module(f"{name}_atari_hadamard")
            for hadamard in (False, True):
                state, buffer_bytes = training_state(name, module, hadamard, args.buffer_size)
                writes, reads, growth = [], [], []
                for _ in range(args.repeats):
                    reset_peak_rss()
                    before, start = peak_rss(), time.perf_counter()
                    module.save_checkpoint(path, state, writer, on_signal=True)  # a failed write stops the bench
                    writes.append(time.perf_counter() - start)
                    growth.append(peak_rss() - before)
                    start = time.perf_counter()
                    loaded = torch.load(path, map_location="cpu", weights_only=True)
                    reads.append(time.perf_counter() - start)
                    del loaded
                write, interval = statistics.median(writes), args.interval or module.Args.checkpoint_interval
                rows.append(
                    {
                        "script": name,
                        "variant": "tanh_hr" if hadamard else "tanh",
                        "bytes": os.path.getsize(path),
                        "buffer_bytes": buffer_bytes,
                        "write_s": write,
                        "read_s": statistics.median(reads),
                        "write_peak_growth_bytes": statistics.median(growth),
                        "interval": interval,
                        **{f"share_{where}": write / (interval / sps) for where, sps in LOOP_SPS[name].items()},
                    }
                )
                del state
        writer.close()
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(
        "| script | variant | checkpoint | write | read | peak memory growth while writing | one every | share of the run: "
        "2-core CPU | H200 |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(
            f"| {row['script']} | {row['variant']} | {row['bytes'] / 1e6:,.1f} MB | {row['write_s']:.2f} s | "
            f"{row['read_s']:.2f} s | {row['write_peak_growth_bytes'] / 1e6:,.0f} MB | {row['interval']:,} steps | "
            f"{row['share_cpu']:.3%} | {row['share_h200']:.3%} |"
        )


if __name__ == "__main__":
    main()

"""Memory and speed of dqn_atari_hadamard.py at CleanRL's settings (1 env, buffer 1M, batch 32, train frequency 4).

Usage: python benchmarks/bench_dqn.py [--steps 4000] [--learning-starts 2000] [--skip-memory] [--no-cleanrl]
       [--reference path/to/cleanrl/dqn_atari.py]

Prints:
- memory: bytes per stored transition of the frame-deduplicated replay buffer, and the resident memory of
  a full `--buffer-size` (1M) buffer filled through `add` (CleanRL's SB3 buffer with
  `optimize_memory_usage=True` needs 4 x 84 x 84 = 28,224 bytes a transition: 26.3 GiB for 1M);
- loop SPS: steady-state steps per second of the real training loop (a subprocess on Breakout, buffer
  1M, batch 32, train frequency 4, epsilon at its end value 0.01 as for 90% of a CleanRL run), measured
  between the first and the last `charts/SPS` log after learning starts; with metrics off, and with a
  probe every 1,000 steps (50x the default rate);
- learner alone SPS: the compute of the loop with free environment steps: per 4 steps, 4 acting forward
  passes (one state each) and one TD update (sampling included, eager);
- `+compile` variants: the loop with `--compile` (torch.compile of the TD loss);
- metrics cost: one `common_metrics.probe` of the default 1024 recent replay states as a share of the loop's time for the
  default `--metrics-interval` steps (goal: under 1%);
- CleanRL baseline: CleanRL's dqn_atari.py loop reproduced here (gymnasium env with its per-step Python
  wrappers, SyncVectorEnv, SB3's ReplayBuffer storing stacked observations, the same network and update),
  timed the same way. With `--reference`, the real script runs instead.
Medians over `--repeats` runs; the machine may be shared, so read the ratios.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]  # the repo root, where the training scripts are
sys.path.insert(0, str(ROOT))
import common_metrics  # noqa: E402
import dqn_atari_hadamard as dqn  # noqa: E402


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def memory(buffer_size: int):
    """Bytes per transition, and the resident memory of a buffer filled through `add` with game-like episodes."""
    before = rss_bytes()
    rb = dqn.FrameReplayBuffer(buffer_size, 1, seed=0)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (64, 1, 4, 84, 84), dtype=np.uint8)
    start_obs = frames[0].copy()
    start_obs[:, :3] = 0
    actions, rewards, terminated = np.zeros(1, np.int64), np.ones(1, np.float32), np.zeros(1, bool)
    start = time.perf_counter()
    rb.add(start_obs)
    for i in range(1, rb.slots):
        episode_start = i % 2000 == 0
        rb.add(start_obs if episode_start else frames[i % 64], actions, rewards, terminated, np.array([episode_start]))
    fill_s = time.perf_counter() - start
    resident = rss_bytes() - before
    start = time.perf_counter()
    for _ in range(200):
        rb.sample(32)
    sample_ms = (time.perf_counter() - start) / 200 * 1000
    valid = rb.valid_transitions()[0].size
    print(
        f"replay buffer of {buffer_size:,} transitions: {rb.nbytes() / buffer_size:,.1f} bytes per transition "
        f"(frame {84 * 84:,} B), allocated {rb.nbytes() / 1e9:.3f} GB, resident when full {resident / 1e9:.3f} GB "
        f"({resident / 2**30:.2f} GiB); {valid:,} sampleable transitions; add {fill_s / rb.slots * 1e6:.1f} us, "
        f"sample(32) {sample_ms:.2f} ms",
        flush=True,
    )
    print(
        f"CleanRL (SB3 ReplayBuffer, optimize_memory_usage=True): {4 * 84 * 84:,} bytes per transition, "
        f"{buffer_size * 4 * 84 * 84 / 2**30:.1f} GiB",
        flush=True,
    )
    del rb


def steady_sps(run_root: Path) -> float:
    """Steps per second between the first and the last `charts/SPS` log of the run under `run_root`."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((run_root / "runs").iterdir())), size_guidance={"scalars": 0})
    events.Reload()
    sps = events.Scalars("charts/SPS")
    if len(sps) < 2:
        sys.exit("error: fewer than two SPS logs after learning starts; raise --steps")
    return (sps[-1].step - sps[0].step) / (sps[-1].wall_time - sps[0].wall_time)


def loop_sps(script: Path, flags: list[str]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, str(script.resolve()), *flags], cwd=tmp, check=True, capture_output=True)
        return steady_sps(Path(tmp))


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def learner_sps(hadamard: bool, device: torch.device, repeats: int = 30) -> float:
    """The learner alone: per 4 env steps, 4 acting forward passes of one state and one TD update (sampling included)."""
    q_network, target_network = dqn.QNetwork(4, hadamard=hadamard).to(device), dqn.QNetwork(4, hadamard=hadamard).to(device)
    optimizer = dqn.make_optimizer(q_network.parameters(), 1e-4)
    rb = dqn.FrameReplayBuffer(5000, 1, seed=0)
    obs = np.zeros((1, 4, 84, 84), np.uint8)
    rb.add(obs)
    rng = np.random.default_rng(0)
    for _ in range(5000):
        obs = np.concatenate([obs[:, 1:], rng.integers(0, 256, (1, 1, 84, 84), dtype=np.uint8)], axis=1)
        rb.add(obs, np.zeros(1, np.int64), np.zeros(1, np.float32), np.zeros(1, bool), np.zeros(1, bool))
    state = torch.from_numpy(obs).to(device)
    times = []
    for _ in range(repeats + 3):
        start = time.perf_counter()
        for _step in range(4):
            with torch.no_grad():
                q_network(state).argmax(dim=1).cpu()
        dqn.td_update(q_network, target_network, optimizer, *rb.get(*rb.sample_index(32)), 0.99, device)
        sync(device)
        times.append(time.perf_counter() - start)
    return 4 / statistics.median(times[3:])


def probe_seconds(hadamard: bool, device: torch.device, repeats: int = 5) -> float:
    net = dqn.QNetwork(4, hadamard=hadamard).to(device)
    obs = torch.randint(0, 256, (dqn.Args().metrics_batch_size, 4, 84, 84), dtype=torch.uint8, device=device)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        common_metrics.probe(net, obs, net.hidden_layers(), "fc")
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def cleanrl_sps(
    total_steps: int, learning_starts: int, buffer_size: int, device: torch.device, epsilon: float = 0.01
) -> float:
    """CleanRL's dqn_atari.py training loop, reproduced with gymnasium 1.x names; steady SPS after learning starts."""
    import ale_py
    import gymnasium as gym
    import torch.nn as nn
    import torch.nn.functional as F
    from stable_baselines3.common.atari_wrappers import (
        ClipRewardEnv,
        EpisodicLifeEnv,
        FireResetEnv,
        MaxAndSkipEnv,
        NoopResetEnv,
    )
    from stable_baselines3.common.buffers import ReplayBuffer

    gym.register_envs(ale_py)

    def thunk():
        env = gym.make("BreakoutNoFrameskip-v4")
        env = gym.wrappers.RecordEpisodeStatistics(env)
        env = NoopResetEnv(env, noop_max=30)
        env = MaxAndSkipEnv(env, skip=4)
        env = EpisodicLifeEnv(env)
        if "FIRE" in env.unwrapped.get_action_meanings():
            env = FireResetEnv(env)
        env = ClipRewardEnv(env)
        env = gym.wrappers.ResizeObservation(env, (84, 84))
        env = gym.wrappers.GrayscaleObservation(env)
        env = gym.wrappers.FrameStackObservation(env, 4)
        env.action_space.seed(1)
        return env

    class QNetwork(nn.Module):
        def __init__(self, env):
            super().__init__()
            self.network = nn.Sequential(
                nn.Conv2d(4, 32, 8, stride=4),
                nn.ReLU(),
                nn.Conv2d(32, 64, 4, stride=2),
                nn.ReLU(),
                nn.Conv2d(64, 64, 3, stride=1),
                nn.ReLU(),
                nn.Flatten(),
                nn.Linear(3136, 512),
                nn.ReLU(),
                nn.Linear(512, env.single_action_space.n),
            )

        def forward(self, x):
            return self.network(x / 255.0)

    envs = gym.vector.SyncVectorEnv([thunk])
    q_network = QNetwork(envs).to(device)
    optimizer = torch.optim.Adam(q_network.parameters(), lr=1e-4)
    target_network = QNetwork(envs).to(device)
    target_network.load_state_dict(q_network.state_dict())
    rb = ReplayBuffer(
        buffer_size,
        envs.single_observation_space,
        envs.single_action_space,
        device,
        optimize_memory_usage=True,
        handle_timeout_termination=False,
    )
    obs, _ = envs.reset(seed=1)
    import random

    marks = []
    for global_step in range(total_steps):
        if random.random() < epsilon:
            actions = np.array([envs.single_action_space.sample() for _ in range(envs.num_envs)])
        else:
            q_values = q_network(torch.Tensor(obs).to(device))
            actions = torch.argmax(q_values, dim=1).cpu().numpy()
        next_obs, rewards, terminations, truncations, infos = envs.step(actions)
        if "episode" in infos:
            for idx in np.flatnonzero(infos.get("_episode", [])):
                _ = infos["episode"]["r"][idx]
        real_next_obs = next_obs.copy()
        rb.add(obs, real_next_obs, actions, rewards, terminations, infos)
        obs = next_obs
        if global_step > learning_starts:
            if global_step % 4 == 0:
                data = rb.sample(32)
                with torch.no_grad():
                    target_max, _ = target_network(data.next_observations).max(dim=1)
                    td_target = data.rewards.flatten() + 0.99 * target_max * (1 - data.dones.flatten())
                old_val = q_network(data.observations).gather(1, data.actions).squeeze()
                loss = F.mse_loss(td_target, old_val)
                if global_step % 100 == 0:
                    marks.append((global_step, time.time()))
                    _ = loss.item(), old_val.mean().item()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            if global_step % 1000 == 0:
                for target_network_param, q_network_param in zip(target_network.parameters(), q_network.parameters()):
                    target_network_param.data.copy_(q_network_param.data)
    envs.close()
    return (marks[-1][0] - marks[0][0]) / (marks[-1][1] - marks[0][1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000, help="timed steps after learning starts, per loop run")
    parser.add_argument("--learning-starts", type=int, default=2000, help="steps of pure acting before the timed part")
    parser.add_argument(
        "--buffer-size", type=int, default=1_000_000, help="the replay buffer of the memory figure and the loop runs"
    )
    parser.add_argument("--repeats", type=int, default=1, help="loop runs per configuration (median)")
    parser.add_argument("--skip-memory", action="store_true", help="skip the full-buffer memory figure")
    parser.add_argument("--no-cleanrl", action="store_true", help="skip the reproduced CleanRL baseline")
    parser.add_argument(
        "--cleanrl-buffer-size",
        type=int,
        default=100_000,
        help="the baseline's SB3 buffer (1M stacked observations do not fit in this machine's memory; its speed does not "
        "depend on the size)",
    )
    parser.add_argument("--reference", type=Path, help="CleanRL's dqn_atari.py, timed as the baseline instead")
    parser.add_argument(
        "--variants",
        default="tanh,tanh_hr,tanh+compile",
        help="comma-separated: tanh, tanh_hr, each optionally with +compile (--compile)",
    )
    parser.add_argument("--no-cuda", action="store_true", help="stay on the CPU even where a GPU is present")
    opts = parser.parse_args()
    interval = dqn.Args().metrics_interval
    total = opts.learning_starts + opts.steps
    device = torch.device("cuda" if torch.cuda.is_available() and not opts.no_cuda else "cpu")
    where = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, {where}, {torch.get_num_threads()} torch threads, {os.cpu_count()} cores", flush=True)
    if not opts.skip_memory:
        memory(opts.buffer_size)

    common = [
        "--total-timesteps",
        str(total),
        "--learning-starts",
        str(opts.learning_starts),
        "--exploration-fraction",
        "0",
        "--buffer-size",
        str(opts.buffer_size),
    ] + (["--no-cuda"] if device.type == "cpu" else [])
    print(f"loop runs: python dqn_atari_hadamard.py {' '.join(common)} [--hadamard] --metrics-interval <0 | 1000>", flush=True)
    reference = None
    if opts.reference:
        reference = statistics.median(
            loop_sps(
                opts.reference,
                ["--total-timesteps", str(total), "--learning-starts", str(opts.learning_starts)]
                + (["--no-cuda"] if device.type == "cpu" else []),
            )
            for _ in range(opts.repeats)
        )
        print(f"CleanRL dqn_atari.py: {reference:7.1f} SPS", flush=True)
    elif not opts.no_cleanrl:
        reference = statistics.median(
            cleanrl_sps(total, opts.learning_starts, opts.cleanrl_buffer_size, device) for _ in range(opts.repeats)
        )
        print(
            f"CleanRL dqn_atari.py loop (reproduced, SB3 buffer of {opts.cleanrl_buffer_size:,}): {reference:7.1f} SPS",
            flush=True,
        )
    for variant in opts.variants.split(","):
        flags = common + (["--hadamard"] if "_hr" in variant else []) + (["--compile"] if variant.endswith("+compile") else [])
        off = statistics.median(
            loop_sps(ROOT / "dqn_atari_hadamard.py", [*flags, "--metrics-interval", "0"]) for _ in range(opts.repeats)
        )
        on = statistics.median(
            loop_sps(ROOT / "dqn_atari_hadamard.py", [*flags, "--metrics-interval", "1000"]) for _ in range(opts.repeats)
        )
        learner = learner_sps("_hr" in variant, device)  # eager
        probe = probe_seconds("_hr" in variant, device)
        line = (
            f"{variant:8s} loop {off:7.1f} SPS (metrics off) | {on:7.1f} SPS (probe every 1,000 steps, cost "
            f"{1 - on / off:+.1%}) | learner alone {learner:7.1f} SPS ({off / learner:4.0%}) | probe "
            f"{probe * 1000:6.1f} ms = {probe * off / interval:6.3%} of {interval:,} steps"
        )
        if reference:
            line += f" | {off / reference:4.2f}x CleanRL"
        print(line, flush=True)


if __name__ == "__main__":
    main()

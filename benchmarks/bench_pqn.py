"""Speed benchmark of pqn_atari_hadamard.py: training SPS against the update-only ceiling.

For each preset (CleanRL's 8 envs x 128 steps, 4 epochs x 4 minibatches; purejaxql's 128 envs x 32 steps,
2 epochs x 32 minibatches) it measures
- `train SPS`: the real script (a subprocess) for a few iterations, with representation probes off
  (`--metrics-interval 0`) and on at every iteration (the worst case; the default interval is 50k steps).
  The first iteration (start-up, warm-up) is left out: SPS = steps / wall time between the first and the
  last iteration's `charts/SPS` event.
- `update-only SPS`: the ceiling, batch_size / time of one update phase (Q(lambda) targets, then
  update-epochs x num-minibatches gradient steps) on a stored batch, in process, without envs or acting.
- `compute-only SPS`: the update plus the acting forward passes, still without envs.
- `env-only SPS`: the preset's vector env stepped with random actions alone, no network (the other bound);
  `serial SPS` = 1 / (1/compute + 1/env) is a loop that acts, steps the envs and updates one after the other;
  `serial / update-only` is the most such a loop can reach against the ceiling, `train / serial` how close it is.
With `--compile` the script runs with `--compile` and the ceilings use the compiled `q_loss`. Every figure is the
median of `--repeats` measurements (the machine is shared); the ratios are taken between medians.
Usage: python benchmarks/bench_pqn.py [--iterations 4] [--repeats 3] [--presets cleanrl purejaxql] [--variants tanh tanh_hr]
       [--compile]
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Literal
from pathlib import Path

import numpy as np
import torch
import tyro

ROOT = Path(__file__).resolve().parents[1]  # the repo root, where the training scripts are
sys.path.insert(0, str(ROOT))
import pqn_atari_hadamard as pqn  # noqa: E402

PRESETS = {
    "cleanrl": dict(num_envs=8, num_steps=128, update_epochs=4, num_minibatches=4, end_e=0.01),
    "purejaxql": dict(num_envs=128, num_steps=32, update_epochs=2, num_minibatches=32, end_e=0.001),
}
VARIANTS = {"tanh": [], "tanh_hr": ["--hadamard"], "tanh_hr_all": ["--hadamard", "--hadamard-scope", "all"]}


@dataclass
class BenchArgs:
    iterations: int = 4
    """training iterations per measured run (the first is left out of the SPS)"""
    repeats: int = 1
    """measurements of each figure; the table shows their medians"""
    presets: list[Literal["cleanrl", "purejaxql"]] = field(default_factory=lambda: ["cleanrl", "purejaxql"])
    """presets to measure (cleanrl, purejaxql)"""
    variants: list[Literal["tanh", "tanh_hr", "tanh_hr_all"]] = field(default_factory=lambda: ["tanh_hr"])
    """network variants (tanh, tanh_hr, tanh_hr_all)"""
    metrics: list[Literal["off", "on"]] = field(default_factory=lambda: ["off", "on"])
    """representation probes off, or on at every iteration"""
    env_id: str = "BreakoutNoFrameskip-v4"
    """the game"""
    cuda: bool = True
    """use the GPU when there is one"""
    compile: bool = False
    """run the script with --compile, and the ceilings with the compiled loss"""
    output: str = ""
    """write the results as JSON to this file too"""


def flags(preset: dict) -> list[str]:
    return [f"--{k.replace('_', '-')}={v}" for k, v in preset.items()]


def train_sps(bench: BenchArgs, preset: dict, variant: list[str], metrics: str) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    batch = preset["num_envs"] * preset["num_steps"]
    interval = batch if metrics == "on" else 0
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            str(ROOT / "pqn_atari_hadamard.py"),
            *flags(preset),
            *variant,
            f"--env-id={bench.env_id}",
            f"--total-timesteps={batch * bench.iterations}",
            f"--metrics-interval={interval}",
            "--run-name=bench",
        ]
        if not bench.cuda:
            cmd.append("--no-cuda")
        if bench.compile:
            cmd.append("--compile")
        subprocess.run(cmd, cwd=tmp, check=True, capture_output=True, text=True)
        events = EventAccumulator(str(Path(tmp) / "runs" / "bench"), size_guidance={"scalars": 0})
        events.Reload()
        sps = events.Scalars("charts/SPS")
        done = json.loads((Path(tmp) / "runs" / "bench" / "done.json").read_text())
    steady = (sps[-1].step - sps[0].step) / (sps[-1].wall_time - sps[0].wall_time) if len(sps) > 1 else float("nan")
    return {"sps": steady, "sps_overall": done["SPS"], "command": " ".join(["python pqn_atari_hadamard.py", *cmd[2:]])}


def compute_sps(bench: BenchArgs, preset: dict, variant: list[str], device: torch.device) -> dict:
    """Update-only and compute-only (acting + update) SPS on random observations, no envs."""
    hadamard = "--hadamard" in variant
    scope = "all" if "all" in variant else "representation"
    torch.manual_seed(0)
    net = pqn.QNetwork(4, "tanh", hadamard, scope).to(device)
    optimizer = torch.optim.RAdam(net.parameters(), lr=2.5e-4)
    loss_fn = torch.compile(pqn.q_loss) if bench.compile else pqn.q_loss
    T, N = preset["num_steps"], preset["num_envs"]
    batch = T * N
    minibatch = batch // preset["num_minibatches"]
    obs = torch.randint(0, 256, (T, N, 4, 84, 84), dtype=torch.uint8, device=device)
    actions = torch.randint(0, 4, (T, N), device=device)
    rewards = torch.randn(T, N, device=device)
    flags_ = torch.zeros(T, N, dtype=torch.bool, device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def act():
        with torch.no_grad():
            for t in range(T):
                q = net(obs[t])
                pqn.epsilon_greedy(q, 0.1).cpu()

    def update():
        with torch.no_grad():
            next_max_q = torch.randn(T, N, device=device)
            returns = pqn.q_lambda_returns(rewards, flags_, flags_, ~flags_, next_max_q, 0.99, 0.65).reshape(-1)
        b_obs, b_actions, valid = obs.reshape(batch, 4, 84, 84), actions.reshape(-1), (~flags_).reshape(-1).float()
        for _ in range(preset["update_epochs"]):
            inds = torch.randperm(batch, device=device)
            for start in range(0, batch, minibatch):
                mb = inds[start : start + minibatch]
                loss, _ = loss_fn(net, b_obs[mb], b_actions[mb], returns[mb], valid[mb])
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
                optimizer.step()
        loss.item()

    def timed(fn, repeats):
        fn()  # warm-up
        sync()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        sync()
        return (time.perf_counter() - start) / repeats

    repeats = max(1, bench.iterations - 1)
    t_update = timed(update, repeats)
    t_act = timed(act, repeats)
    probe_obs = obs.reshape(batch, 4, 84, 84)[-pqn.Args().metrics_batch_size :]
    t_probe = timed(lambda: pqn.common_metrics.probe(net, probe_obs, net.hidden_layers(), representation="fc"), repeats)
    return {"update_only_sps": batch / t_update, "compute_only_sps": batch / (t_update + t_act), "probe_seconds": t_probe}


def env_sps(bench: BenchArgs, preset: dict, agent_steps: int = 8192) -> float:
    """Agent steps per second of the vector env alone, random actions, after 8 warm-up steps."""
    steps = agent_steps // preset["num_envs"]
    rom, sticky = pqn.parse_env_id(bench.env_id, None)
    envs = pqn.make_env(rom, preset["num_envs"], sticky)
    envs.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = rng.integers(0, envs.single_action_space.n, (8 + steps, preset["num_envs"]))
    for t in range(8):
        envs.step(actions[t])
    start = time.perf_counter()
    for t in range(8, 8 + steps):
        envs.step(actions[t])
    elapsed = time.perf_counter() - start
    envs.close()
    return steps * preset["num_envs"] / elapsed


def median_of(measure, repeats: int) -> dict:
    """Run `measure()` (a dict of figures) `repeats` times: the median of each numeric figure."""
    runs = [measure() for _ in range(repeats)]
    return {
        key: statistics.median(run[key] for run in runs) if isinstance(value, (int, float)) else value
        for key, value in runs[0].items()
    }


def main():
    bench = tyro.cli(BenchArgs)
    if bench.repeats < 1 or bench.iterations < 2:
        sys.exit("error: --repeats must be at least 1 and --iterations at least 2 (the first iteration is left out)")
    device = torch.device("cuda" if torch.cuda.is_available() and bench.cuda else "cpu")
    info = {
        "device": torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)",
        "torch": torch.__version__,
    }
    print(
        f"# PQN benchmark on {info['device']}, torch {info['torch']}, {bench.env_id}, {bench.iterations} iterations per run"
        + (", --compile" if bench.compile else "")
    )
    results = []
    header = (
        "| preset | variant | metrics | train SPS | update-only SPS | train / update-only | compute-only SPS | env-only SPS | "
        "serial / update-only | train / serial | probe s |"
    )
    print(header + "\n|" + "---|" * 11, flush=True)
    for preset_name in bench.presets:
        preset = PRESETS[preset_name]
        env_only = statistics.median(env_sps(bench, preset) for _ in range(bench.repeats))
        for variant_name in bench.variants:
            variant = VARIANTS[variant_name]
            ceiling = median_of(lambda: compute_sps(bench, preset, variant, device), bench.repeats)
            for metrics in bench.metrics:
                row = dict(
                    preset=preset_name,
                    variant=variant_name,
                    metrics=metrics,
                    env_only_sps=env_only,
                    **ceiling,
                    **median_of(lambda: train_sps(bench, preset, variant, metrics), bench.repeats),
                )
                row["serial_sps"] = 1 / (1 / row["compute_only_sps"] + 1 / env_only)
                results.append(row)
                print(
                    f"| {preset_name} | {variant_name} | {metrics} | {row['sps']:.0f} | {row['update_only_sps']:.0f} | "
                    f"{row['sps'] / row['update_only_sps']:.0%} | {row['compute_only_sps']:.0f} | {env_only:.0f} | "
                    f"{row['serial_sps'] / row['update_only_sps']:.0%} | {row['sps'] / row['serial_sps']:.0%} | "
                    f"{row['probe_seconds']:.2f} |",
                    flush=True,
                )
    for row in results:
        print(f"# {row['preset']}/{row['variant']}/metrics {row['metrics']}: {row['command']}")
    if bench.output:
        Path(bench.output).write_text(json.dumps({"info": info, "results": results}, indent=2))


if __name__ == "__main__":
    main()

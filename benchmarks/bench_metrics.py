"""Cost of the representation metrics (common_metrics.probe) on a Nature-CNN-sized network, CPU.

Usage: python benchmarks/bench_metrics.py

For the plain network (conv 32x8x8/4, 64x4x4/2, 64x3x3/1 with ReLU, then Linear(3136, 512) + tanh), its
Hadamard variant (two Linear(3136, 512) + tanh branches multiplied) and the param-matched plain network (1023 tanh
units, the widest representation a probe measures), on the scripts' default probe batch of 1024 random uint8
84x84x4 frames scaled by 1/255, with 2 and then 1 torch threads, it prints the median (and min) over
20 interleaved calls (after warm-up) of: the forward pass alone, one `probe` call (forward + every
metric of every layer), and their difference, the metric overhead; then the median time of each metric of each
layer on the tensors the probe's hooks capture, to show where the overhead goes.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, where common_metrics.py is
import common_metrics as cm  # noqa: E402

BATCH, REPEATS, WARMUP = 1024, 20, 3  # BATCH: the scripts' default --metrics-batch-size


class HR(nn.Module):
    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.branch_a = nn.Sequential(nn.Linear(n_in, n_out), nn.Tanh())
        self.branch_b = nn.Sequential(nn.Linear(n_in, n_out), nn.Tanh())

    def forward(self, x):
        return self.branch_a(x) * self.branch_b(x)


class NatureCNN(nn.Module):
    def __init__(self, hadamard: bool, width: int = 512):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(4, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
            nn.Flatten(),
        )  # fmt: skip
        self.representation = HR(3136, width) if hadamard else nn.Sequential(nn.Linear(3136, width), nn.Tanh())

    def forward(self, x):
        return self.representation(self.encoder(x / 255.0))

    def layers(self) -> dict[str, nn.Module]:
        rep = self.representation if isinstance(self.representation, HR) else self.representation[1]
        return {"conv1": self.encoder[1], "conv2": self.encoder[3], "conv3": self.encoder[5], "representation": rep}


def times_ms(*fns, repeats: int = REPEATS) -> list[list[float]]:
    """Milliseconds of each call of each of `fns`, interleaved so that other load hits them alike."""
    for _ in range(WARMUP):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ms in zip(fns, times):
            start = time.perf_counter()
            fn()
            ms.append(1000 * (time.perf_counter() - start))
    return times


def captured_tensors(model: NatureCNN, obs: torch.Tensor) -> dict[str, tuple[torch.Tensor, ...]]:
    """(pre-activation, output) of each plain layer, (za, a, zb, b, output) of the HR layer, as the probe hooks see them."""
    seen = {}
    hooks = [
        m.register_forward_hook(lambda m, i, o, key=key: seen.__setitem__(key, (i[0], o))) for key, m in model.layers().items()
    ]
    if isinstance(model.representation, HR):
        for b in "ab":
            branch = getattr(model.representation, f"branch_{b}")
            hooks.append(branch[-1].register_forward_hook(lambda m, i, o, key=b: seen.__setitem__(key, (i[0], o))))
    with torch.no_grad():
        model(obs)
    for h in hooks:
        h.remove()
    if "a" in seen:
        seen["representation"] = (*seen.pop("a"), *seen.pop("b"), seen["representation"][1])
    return seen


def metric_calls(name: str, tensors: tuple[torch.Tensor, ...]) -> dict[str, object]:
    """Each metric of one layer as a zero-argument call, as `layer_metrics` computes it."""
    output = tensors[-1]
    features = output if output.dim() == 2 else output.mean(dim=(2, 3))
    calls = {
        "float64 copy + check": lambda: cm._checked(output, "output", (2, 4)),
        "svd (shared by ranks)": lambda: cm.singular_values(features),
        "feature_norm": lambda: cm.feature_norm(features),
        "dormant_fraction": lambda: cm.dormant_fraction(output),
    }
    if len(tensors) == 2:
        calls["dead_fraction"] = lambda: cm.dead_fraction(tensors[0], "relu" if name.startswith("conv") else "tanh")
        if not name.startswith("conv"):
            calls["saturation_fraction"] = lambda: cm.saturation_fraction(output, "tanh")
    else:
        za, a, zb, b, _ = tensors
        calls["dead_fraction (HR)"] = lambda: cm.dead_fraction(za, "tanh", pre_activation_b=zb)
        calls["dead_fraction_a + _b"] = lambda: (cm.dead_fraction(za, "tanh"), cm.dead_fraction(zb, "tanh"))
        calls["saturation_fraction_a + _b"] = lambda: (cm.saturation_fraction(a, "tanh"), cm.saturation_fraction(b, "tanh"))
    return calls


def main() -> None:
    torch.manual_seed(0)
    obs = torch.randint(0, 256, (BATCH, 4, 84, 84), dtype=torch.uint8)
    print(f"torch {torch.__version__}, probe batch {BATCH} x 4 x 84 x 84 uint8, {REPEATS} calls after {WARMUP} warm-up, ms")
    # other processes on the machine inflate the timings, the 2-thread ones most: report the load
    print(f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for threads in (2, 1):
        torch.set_num_threads(threads)
        for label, hadamard, width in (
            ("plain tanh", False, 512),
            ("HR tanh", True, 512),
            ("param-matched tanh (1023)", False, 1023),
        ):
            model = NatureCNN(hadamard, width).eval()
            label = f"{label}, {threads} thread{'s' if threads > 1 else ''}"

            def forward():
                with torch.no_grad():
                    model(obs)

            forward_ms, probe_ms = times_ms(forward, lambda: cm.probe(model, obs, model.layers(), "representation"))
            overhead_ms = [p - f for f, p in zip(forward_ms, probe_ms)]
            print(f"\n{label}: median (min) ms")
            for what, ms in (("forward alone", forward_ms), ("probe call", probe_ms), ("metric overhead", overhead_ms)):
                print(f"  {what:16s} {statistics.median(ms):7.1f} ({min(ms):.1f})")
            print("  median ms of each metric on the hooked tensors:")
            for name, tensors in captured_tensors(model, obs).items():
                calls = metric_calls(name, tensors)
                costs = dict(zip(calls, map(statistics.median, times_ms(*calls.values(), repeats=7))))
                shape = "x".join(map(str, tensors[-1].shape))
                print(f"  {name:15s} {shape:14s} " + ", ".join(f"{metric} {ms:.1f}" for metric, ms in costs.items()))


if __name__ == "__main__":
    main()

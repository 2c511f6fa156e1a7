"""Learning curves side by side: runs of this project's scripts and of CleanRL's own scripts, from their TensorBoard events.

Usage: python benchmarks/bench_parity.py --out parity [--max-step N] LABEL=RUN_DIR [LABEL=RUN_DIR ...]

Runs given the same LABEL are seeds of one configuration. For each configuration it prints a Markdown table row:
the mean over seeds of each run's mean raw score over its last 100 games (each seed's value in brackets), the
games played, the last step logged and, where the run logs them, the representation metrics at its last probe
(`representation/dead_fraction`, `representation/srank`). It writes `<out>/parity_return.png`: each
configuration's 100-game running mean of `charts/episodic_return` against environment steps (mean over seeds
where every seed has one, each seed as a thin line). CleanRL's runs need nothing but their `runs/<run_name>/`
folder. `--max-step` compares runs at one budget: everything logged after that step is left out (runs stopped
early, or of different lengths).
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

WINDOW = 100  # games in the final score and in the running mean, as CleanRL's and the paper's "last 100 episodes"
METRICS = ("representation/dead_fraction", "representation/srank")


def read_run(run_dir: str, max_step: float) -> dict[str, np.ndarray]:
    """{tag: array of (step, value)} for the episodic returns and the representation metrics of one run, up to `max_step`."""
    events = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    if "charts/episodic_return" not in tags:
        raise SystemExit(f"error: {run_dir} logs no charts/episodic_return: not a finished training run's folder")
    return {
        tag: np.array([(e.step, e.value) for e in events.Scalars(tag) if e.step <= max_step]).reshape(-1, 2)
        for tag in ("charts/episodic_return", *METRICS)
        if tag in tags
    }


def running_mean(returns: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """The mean of the last WINDOW games finished by each step of `grid` (NaN before the first game and after the last)."""
    steps, values = returns[:, 0], returns[:, 1]
    cumulative = np.concatenate([[0.0], np.cumsum(values)])
    count = np.searchsorted(steps, grid, side="right")
    first = np.maximum(count - WINDOW, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((count > 0) & (grid <= steps[-1]), (cumulative[count] - cumulative[first]) / (count - first), np.nan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="LABEL=RUN_DIR", help="a run folder and the configuration it belongs to")
    parser.add_argument("--out", default="parity", help="the folder for parity_return.png")
    parser.add_argument("--max-step", type=float, default=float("inf"), help="leave out everything logged after this step")
    opts = parser.parse_args()
    groups: dict[str, list[tuple[str, dict]]] = defaultdict(list)
    for item in opts.runs:
        label, sep, run_dir = item.partition("=")
        if not sep or not label or not os.path.isdir(run_dir):
            parser.error(f"{item!r} is not LABEL=RUN_DIR with an existing folder")
        run = read_run(run_dir, opts.max_step)
        if len(run["charts/episodic_return"]) == 0:
            parser.error(f"{run_dir} finished no game by step {opts.max_step:,.0f}")
        groups[label].append((run_dir, {tag: values for tag, values in run.items() if len(values)}))

    print(
        f"| configuration | seeds | mean of the last {WINDOW} games (per seed) | games | last step | dead_fraction | srank |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    last_step = max(run["charts/episodic_return"][-1, 0] for runs in groups.values() for _, run in runs)
    grid = np.linspace(0, last_step, 200)
    os.makedirs(opts.out, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (label, runs), color in zip(groups.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        finals = [run["charts/episodic_return"][-WINDOW:, 1].mean() for _, run in runs]
        games = [len(run["charts/episodic_return"]) for _, run in runs]
        steps = [int(run["charts/episodic_return"][-1, 0]) for _, run in runs]
        metrics = []
        for tag in METRICS:
            last = [run[tag][-1, 1] for _, run in runs if tag in run]
            metrics.append(f"{np.mean(last):.3g} ({', '.join(f'{v:.3g}' for v in last)})" if last else "-")
        print(
            f"| {label} | {len(runs)} | {np.mean(finals):.2f} ({', '.join(f'{v:.2f}' for v in finals)}) | "
            f"{', '.join(map(str, games))} | {', '.join(f'{s:,}' for s in steps)} | {' | '.join(metrics)} |"
        )
        curves = np.array([running_mean(run["charts/episodic_return"], grid) for _, run in runs])
        for curve in curves:
            ax.plot(grid, curve, color=color, linewidth=0.6, alpha=0.4)
        mean = curves.mean(axis=0)  # only where every seed has a value: no jump where one seed's curve ends
        ax.plot(grid, mean, color=color, linewidth=2, label=f"{label} ({len(runs)} seeds)")
    ax.xaxis.set_major_formatter(
        matplotlib.ticker.FuncFormatter(lambda x, _: f"{x / 1e3:.0f}k" if x < 1e6 else f"{x / 1e6:g}M")
    )
    ax.set_xlabel("environment steps")
    ax.set_ylabel(f"return (mean of the last {WINDOW} games)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = os.path.join(opts.out, "parity_return.png")
    fig.savefig(path, dpi=120)
    print(f"\ncurves: {path}")


if __name__ == "__main__":
    main()

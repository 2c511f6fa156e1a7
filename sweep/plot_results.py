# Report of a benchmark.sh sweep: reads every run's TensorBoard events and config.json under runs/ (no W&B
# account needed) and writes results.md (per game and variant: final return, human-normalised score, dead
# fraction and srank; aggregate IQM and median human-normalised score with 95% stratified bootstrap
# confidence intervals, after rliable), results.csv (one line per run) and PNG plots.
# Usage: python sweep/plot_results.py [--runs-dir runs] [--out results]
import argparse
import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

RETURN_TAG = "charts/episodic_return"
CURVES = {  # file suffix: (tag, axis label)
    "return": (RETURN_TAG, "episodic return"),
    "dead_fraction": ("representation/dead_fraction", "dead fraction (representation)"),
    "srank": ("representation/srank", "srank (representation)"),
}
VARIANT_ORDER = ["relu", "tanh", "tanh_hr", "tanh_pm"]  # the paper's comparison first, any other after

# Published random and human scores of the Atari-57 benchmark (Mnih et al. 2015; Badia et al. 2020), as in
# rliable's and DQN Zoo's atari_data: game -> (random, human). A game not listed gets no normalised score.
ATARI_SCORES = {
    "Alien": (227.8, 7127.7),
    "Amidar": (5.8, 1719.5),
    "Assault": (222.4, 742.0),
    "Asterix": (210.0, 8503.3),
    "BankHeist": (14.2, 753.1),
    "BattleZone": (2360.0, 37187.5),
    "BeamRider": (363.9, 16926.5),
    "Boxing": (0.1, 12.1),
    "Breakout": (1.7, 30.5),
    "ChopperCommand": (811.0, 7387.8),
    "CrazyClimber": (10780.5, 35829.4),
    "DemonAttack": (152.1, 1971.0),
    "Enduro": (0.0, 860.5),
    "Freeway": (0.0, 29.6),
    "Frostbite": (65.2, 4334.7),
    "Gopher": (257.6, 2412.5),
    "Hero": (1027.0, 30826.4),
    "Jamesbond": (29.0, 302.8),
    "Kangaroo": (52.0, 3035.0),
    "Krull": (1598.0, 2665.5),
    "KungFuMaster": (258.5, 22736.3),
    "MsPacman": (307.3, 6951.6),
    "Pong": (-20.7, 14.6),
    "PrivateEye": (24.9, 69571.3),
    "Qbert": (163.9, 13455.0),
    "RoadRunner": (11.5, 7845.0),
    "Seaquest": (68.4, 42054.7),
    "SpaceInvaders": (148.0, 1668.7),
}


def fail(message: str):
    """Bad input: one clear line on stderr and a non-zero exit."""
    sys.exit(f"error: {message}")


def warn(message: str):
    print(f"warning: {message}", file=sys.stderr)


def game_name(env_id: str) -> str:
    """`BreakoutNoFrameskip-v4`, `ALE/Breakout-v5` or `Breakout-v5` -> `Breakout`."""
    match = re.fullmatch(r"(?:ALE/)?([A-Za-z0-9]+?)(?:NoFrameskip)?(?:-v\d+)?", env_id)
    return match.group(1) if match else env_id


def human_normalized(score: float, game: str) -> float:
    """(score - random) / (human - random); NaN for a game without published scores."""
    if game not in ATARI_SCORES:
        return math.nan
    random_score, human_score = ATARI_SCORES[game]
    return (score - random_score) / (human_score - random_score)


@dataclass
class Run:
    name: str
    algorithm: str
    variant: str
    env_id: str
    seed: int
    finished: bool
    curves: dict = field(default_factory=dict)  # tag -> (steps, values), in logging order

    @property
    def game(self) -> str:
        return game_name(self.env_id)

    @property
    def returns(self) -> np.ndarray:
        return self.curves.get(RETURN_TAG, (np.zeros(0), np.zeros(0)))[1]

    def final_return(self, window: int = 100) -> float:
        """Mean raw score of the last `window` finished games; NaN when no game has finished."""
        returns = self.returns
        return float(np.mean(returns[-window:])) if len(returns) else math.nan

    def last(self, tag: str) -> float:
        steps, values = self.curves.get(tag, (None, np.zeros(0)))
        return float(values[-1]) if len(values) else math.nan

    @property
    def last_step(self) -> int:
        return max((int(steps[-1]) for steps, _ in self.curves.values() if len(steps)), default=0)


def read_scalars(run_dir: Path) -> dict:
    """Every scalar in a run's TensorBoard events: {tag: (steps, values)}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    curves = {}
    for tag in events.Tags()["scalars"]:
        scalars = events.Scalars(tag)
        curves[tag] = (np.array([s.step for s in scalars], dtype=np.int64), np.array([s.value for s in scalars], dtype=np.float64))
    return curves


def load_runs(runs_dir: Path) -> tuple[list[Run], list[Run]]:
    """The finished training runs under `runs_dir` (one folder each, as the training scripts write them), and the
    unfinished ones (no `done.json`), which the report lists apart. An evaluation-only run (`--eval-model`) is
    no seed and is left out; a folder that is no usable run is one warning line and left out. No finished run,
    or two finished runs of one algorithm, variant, game and seed, is an error."""
    if not runs_dir.is_dir():
        fail(f"runs folder {runs_dir}/ not found: run benchmark.sh (or a training script) first")
    folders = sorted(p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    if not folders:
        fail(f"runs folder {runs_dir}/ holds no runs: run benchmark.sh (or a training script) first")
    runs = []
    for folder in folders:
        config_path = folder / "config.json"
        if not config_path.is_file():
            log = " (see its train.log)" if (folder / "train.log").is_file() else ""
            warn(f"{folder}: no config.json, the run failed or never started{log}: left out")
            continue
        try:
            config = json.loads(config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            warn(f"{folder}: config.json is not valid JSON ({exc}): left out")
            continue
        if config.get("eval_only"):
            warn(f"{folder}: an evaluation-only run (--eval-model), not a training run: left out")
            continue
        if not any(folder.glob("events.out.tfevents.*")):
            warn(f"{folder}: no TensorBoard events, the run failed or never started: left out")
            continue
        curves = read_scalars(folder)
        if not curves:
            warn(f"{folder}: its TensorBoard events hold no scalars yet: left out")
            continue
        variant = config.get("variant") or (config.get("activation", "tanh") + ("_hr" if config.get("hadamard") else "")
                                            + ("_pm" if config.get("param_matched") else ""))
        runs.append(Run(folder.name, str(config.get("algorithm") or config.get("exp_name", "?")), variant,
                        str(config.get("env_id", "?")), int(config.get("seed", 0)), (folder / "done.json").is_file(), curves))
    if not runs:
        fail(f"no run in {runs_dir}/ has TensorBoard events to report (see the warnings above)")
    finished = [r for r in runs if r.finished]
    if not finished:
        fail(f"no run in {runs_dir}/ has finished (done.json): {len(runs)} unfinished; report again when one has")
    seen = {}
    for run in finished:
        key = (run.algorithm, run.variant, run.game, run.seed)
        if key in seen:
            fail(f"{runs_dir / seen[key]} and {runs_dir / run.name} are both {run.algorithm} {run.variant} on {run.game} with seed "
                 f"{run.seed}: move one out of {runs_dir}/ so that each seed counts once")
        seen[key] = run.name
    return finished, [r for r in runs if not r.finished]


def ordered(values, order=()) -> list:
    values = set(values)
    return [v for v in order if v in values] + sorted(values - set(order))


def mean_std(values) -> tuple[float, float, int]:
    """Mean and sample standard deviation of the finite values, and their count."""
    values = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    if len(values) == 0:
        return math.nan, math.nan, 0
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan, len(values)


def fmt(mean: float, std: float = math.nan, digits: int = 2) -> str:
    if not np.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if np.isfinite(std) else f"{mean:.{digits}f}"


# ----------------------------------------------------------------------------------------------------------
# Aggregates: IQM and median of human-normalised scores, 95% stratified bootstrap confidence intervals.
def _iqm_median(scores: np.ndarray) -> np.ndarray:
    from rliable import metrics

    return np.array([metrics.aggregate_iqm(scores), metrics.aggregate_median(scores)])


def _bootstrap_here(scores: np.ndarray, reps: int, rng: np.random.Generator) -> np.ndarray:
    """rliable's stratified bootstrap (runs resampled with replacement within each game), percentile intervals:
    returns (2, 2) = [[iqm_lo, median_lo], [iqm_hi, median_hi]]."""
    import scipy.stats

    num_runs, num_games = scores.shape
    samples = scores[rng.integers(0, num_runs, size=(reps, num_runs, num_games)), np.arange(num_games)]
    iqm = scipy.stats.trim_mean(samples.reshape(reps, -1), proportiontocut=0.25, axis=1)
    median = np.median(samples.mean(axis=1), axis=1)
    return np.percentile(np.stack([iqm, median], axis=1), [2.5, 97.5], axis=0)


def bootstrap_method() -> tuple[Optional[object], str]:
    """rliable's get_interval_estimates where rliable.library imports (it needs `arch`, which some pandas
    versions break); else the same stratified bootstrap done here."""
    try:
        from rliable import library
    except Exception as exc:  # arch 7 with pandas 3 fails at import with a TypeError, not an ImportError
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return None, f"rliable's stratified bootstrap, computed here because rliable.library does not import ({reason})"
    return library, "rliable.library.get_interval_estimates"


def interval_estimates(scores: np.ndarray, reps: int, seed: int, library) -> tuple[np.ndarray, np.ndarray]:
    """Point estimates [iqm, median] and 95% intervals (2 x 2) of a (runs x games) score matrix."""
    if library is not None:
        try:
            np.random.seed(seed)  # rliable's StratifiedBootstrap draws its indices from numpy's global generator
            points, intervals = library.get_interval_estimates({"x": scores}, _iqm_median, reps=reps)
            return np.asarray(points["x"]), np.asarray(intervals["x"])
        except TypeError:  # arch >= 8 rejects rliable's random_state keyword
            pass
    return _iqm_median(scores), _bootstrap_here(scores, reps, np.random.default_rng(seed))


@dataclass
class Aggregate:
    games: list
    runs_per_game: int
    points: Optional[np.ndarray] = None  # [iqm, median]
    intervals: Optional[np.ndarray] = None  # [[iqm_lo, median_lo], [iqm_hi, median_hi]]
    note: str = ""


def aggregate(runs: list[Run], games: list[str], window: int, reps: int, seed: int, library) -> Aggregate:
    """IQM and median over the games with published scores, each with the same number of runs (the first
    ones by seed where a game has more), of one algorithm and variant."""
    normalised = [g for g in games if g in ATARI_SCORES]
    if not normalised:
        return Aggregate([], 0, note="no game with published human and random scores")
    columns = {}
    for game in normalised:
        scores = [human_normalized(r.final_return(window), game) for r in sorted(runs, key=lambda r: r.seed) if r.game == game]
        columns[game] = [s for s in scores if np.isfinite(s)]
    absent = [g for g in normalised if not any(r.game == g for r in runs)]
    if absent:
        return Aggregate(normalised, 0, note=f"no run on {', '.join(absent)}")
    missing = [g for g, c in columns.items() if not c]
    if missing:
        return Aggregate(normalised, 0, note=f"no finished game yet on {', '.join(missing)}")
    num_runs = min(len(c) for c in columns.values())
    scores = np.array([columns[g][:num_runs] for g in normalised]).T  # runs x games
    points, intervals = interval_estimates(scores, reps, seed, library)
    dropped = sum(len(c) for c in columns.values()) - scores.size
    note = f"{dropped} run(s) left out so that every game has {num_runs}" if dropped else ""
    return Aggregate(normalised, num_runs, points, intervals, note)


# ----------------------------------------------------------------------------------------------------------
# Plots
def variant_colors(variants: list[str]) -> dict:
    import matplotlib.pyplot as plt

    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    known = {v: cycle[i] for i, v in enumerate(VARIANT_ORDER)}
    others = [v for v in variants if v not in known]
    return {**known, **{v: cycle[(len(VARIANT_ORDER) + i) % len(cycle)] for i, v in enumerate(others)}}


def run_curve(run: Run, tag: str, window: int) -> tuple[np.ndarray, np.ndarray]:
    steps, values = run.curves.get(tag, (np.zeros(0, dtype=np.int64), np.zeros(0)))
    if tag == RETURN_TAG and len(values):  # the mean of the last `window` games at each finished game
        cumsum = np.concatenate([[0.0], np.cumsum(values)])
        idx = np.arange(1, len(values) + 1)
        start = np.maximum(idx - window, 0)
        values = (cumsum[idx] - cumsum[start]) / (idx - start)
    return steps, values


def band(curves: list, max_points: int = 400, reps: int = 1000) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean over runs on the union of their steps (each run interpolated within its own range only) and a 95%
    percentile-bootstrap confidence interval of that mean over the runs (as rliable; none where only one run is).
    A bootstrap mean lies within the runs' own range, so a band of scores never goes below the lowest run."""
    grid = np.unique(np.concatenate([steps for steps, _ in curves]))
    if len(grid) > max_points:
        grid = np.unique(np.concatenate([grid[np.linspace(0, len(grid) - 1, max_points).astype(int)]]))
    stacked = np.full((len(curves), len(grid)), np.nan)
    for i, (steps, values) in enumerate(curves):
        inside = (grid >= steps[0]) & (grid <= steps[-1])
        stacked[i, inside] = np.interp(grid[inside], steps, values)
    count = np.isfinite(stacked).sum(axis=0)
    keep = count > 0
    grid, stacked, count = grid[keep], stacked[:, keep], count[keep]
    mean = np.nanmean(stacked, axis=0)
    low, high = np.full(len(grid), np.nan), np.full(len(grid), np.nan)
    several = count > 1
    if several.any():
        # resample the runs with replacement; where some runs have ended, among the present ones only
        rng = np.random.default_rng(0)
        present = stacked[:, several]
        order = np.argsort(~np.isfinite(present), axis=0, kind="stable")  # the present runs first in each column
        present = np.take_along_axis(present, order, axis=0)
        picks = (rng.random((reps, len(curves), 1)) * count[several]).astype(int)  # reps x draws x columns, each below its count
        samples = np.take_along_axis(np.broadcast_to(present, (reps, *present.shape)), picks, axis=1)
        weights = np.arange(len(curves))[None, :, None] < count[several][None, None, :]  # draw count[column] of them
        means = (np.where(weights, samples, 0.0).sum(axis=1)) / count[several]
        low[several], high[several] = np.percentile(means, [2.5, 97.5], axis=0)
    return grid, mean, low, high


MARKERS = "osD^v<>p"  # one per variant, so that points of several variants on one step stay visible


def steps_label(x: float, _=None) -> str:
    """An environment-step tick: 0, 500, 250k, 1.5M (an empty panel's 0.2 stays 0.2, not 200m)."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:g}{suffix}"
    return f"{x:g}"


def plot_curves(runs: list[Run], tag: str, label: str, title: str, path: Path, window: int, colors: dict):
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    games = ordered(r.game for r in runs)
    variants = ordered((r.variant for r in runs), VARIANT_ORDER)
    ncols = min(len(games), 3)
    nrows = math.ceil(len(games) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.6 * nrows), squeeze=False)
    handles = {}
    for ax, game in zip(axes.flat, games):
        drawn = False
        for variant in variants:
            curves = [run_curve(r, tag, window) for r in runs if r.game == game and r.variant == variant]
            curves = [c for c in curves if len(c[0])]
            if not curves:
                continue
            grid, mean, low, high = band(curves)
            if "fraction" in tag:
                low, high = np.clip(low, 0.0, 1.0), np.clip(high, 0.0, 1.0)
            few = len(grid) < 20
            marker = MARKERS[variants.index(variant) % len(MARKERS)] if few else None
            (line,) = ax.plot(grid, mean, color=colors[variant], marker=marker, markersize=6, markerfacecolor="none",
                              label=f"{variant} ({len(curves)})")
            ax.fill_between(grid, low, high, color=colors[variant], alpha=0.2, linewidth=0)
            handles[variant] = line
            drawn = True
        if not drawn:
            ax.text(0.5, 0.5, "no finished game yet" if tag == RETURN_TAG else f"no {tag} logged",
                    ha="center", va="center", transform=ax.transAxes, color="gray")
        ax.set_title(game)
        ax.set_xlabel("environment steps")
        ax.xaxis.set_major_formatter(FuncFormatter(steps_label))  # 250k, 10M: full numbers run into each other
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(games):]:
        ax.axis("off")
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="upper center", ncol=len(handles), frameon=False,
                   bbox_to_anchor=(0.5, 1.0))
    fig.suptitle(title, y=1.06 if handles else 1.0)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_aggregates(aggregates: dict, path: Path, colors: dict):
    """IQM and median human-normalised score with 95% CIs, one row per (algorithm, variant); n/a rows labelled."""
    import matplotlib.pyplot as plt

    keys = list(aggregates)
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.5 * len(keys) + 1.5), squeeze=False)
    for col, (ax, name) in enumerate(zip(axes[0], ["IQM", "Median"])):
        for row, key in enumerate(keys):
            agg = aggregates[key]
            if agg.points is None:
                ax.text(0.0, row, " n/a", va="center", color="gray", transform=ax.get_yaxis_transform())
                continue
            point, low, high = agg.points[col], agg.intervals[0, col], agg.intervals[1, col]
            ax.barh(row, high - low, left=low, height=0.6, color=colors[key[1]], alpha=0.5)
            ax.plot([point, point], [row - 0.3, row + 0.3], color="black", linewidth=1.5)
        ax.set_yticks(range(len(keys)))
        ax.set_yticklabels([f"{a} {v}" for a, v in keys] if col == 0 else [])
        ax.set_ylim(-1.0, len(keys))  # a row's margin on both sides: no bar sits on the frame
        ends = [agg.intervals[:, col] for agg in aggregates.values() if agg.points is not None]
        if ends:  # and a margin left and right of the widest interval
            low, high = min(e[0] for e in ends), max(e[1] for e in ends)
            pad = 0.08 * (high - low) if high > low else 0.1
            ax.set_xlim(low - pad, high + pad)
        for row in range(1, len(keys)):
            if keys[row][0] != keys[row - 1][0]:  # a line between algorithms
                ax.axhline(row - 0.5, color="gray", linewidth=0.8)
        ax.invert_yaxis()
        ax.set_xlabel("human-normalised score")
        ax.set_title(f"{name} (95% CI)")
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------
def write_report(runs: list[Run], runs_dir: Path, out: Path, window: int, reps: int, seed: int, unfinished: list[Run] = ()) -> str:
    import matplotlib

    matplotlib.use("Agg")
    out.mkdir(parents=True, exist_ok=True)
    library, method = bootstrap_method()
    colors = variant_colors(ordered(r.variant for r in runs))
    algorithms = ordered((r.algorithm for r in runs), ["dqn", "ppo", "pqn"])
    no_games = [r.name for r in runs if not len(r.returns)]

    lines = [
        "# Results",
        "",
        f"{len(runs)} finished runs from `{runs_dir}/`, written {time.strftime('%Y-%m-%d %H:%M')} by `plot_results.py`."
        + (f" {len(unfinished)} unfinished runs (no `done.json`) are listed at the end, in no table or plot." if unfinished else ""),
        "",
        f"- **return**: each run's mean raw game score over its last {window} finished games (`{RETURN_TAG}`), "
        "then mean ± standard deviation over seeds.",
        "- **HNS**: human-normalised score `(return - random) / (human - random)` with the published Atari-57 random "
        "and human scores (Mnih et al. 2015), per run, then mean ± standard deviation over seeds.",
        "- **dead fraction**, **srank**: the representation's last logged `representation/dead_fraction` and "
        "`representation/srank`, mean ± standard deviation over seeds.",
        f"- **aggregates**: IQM and median of the runs' HNS over games, with 95% stratified bootstrap confidence "
        f"intervals ({reps} resamples; {method}).",
        "",
    ]
    aggregates = {}
    csv_rows = []
    for algorithm in algorithms:
        alg_runs = [r for r in runs if r.algorithm == algorithm]
        games = ordered(r.game for r in alg_runs)
        variants = ordered((r.variant for r in alg_runs), VARIANT_ORDER)
        lines += [f"## {algorithm}", "", "| game | variant | runs | steps | return | HNS | dead fraction | srank |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for game in games:
            for variant in variants:
                group = sorted((r for r in alg_runs if r.game == game and r.variant == variant), key=lambda r: r.seed)
                if not group:
                    continue
                returns = [r.final_return(window) for r in group]
                ret_mean, ret_std, played = mean_std(returns)
                hns = fmt(*mean_std([human_normalized(x, game) for x in returns])[:2], digits=3) if game in ATARI_SCORES else "n/a (no published scores)"
                ret = fmt(ret_mean, ret_std, 1)
                if played < len(group):
                    ret += f" ({len(group) - played} of {len(group)} runs finished no game)" if played else " (no finished game yet)"
                dead = fmt(*mean_std([r.last(CURVES["dead_fraction"][0]) for r in group])[:2], digits=3)
                srank = fmt(*mean_std([r.last(CURVES["srank"][0]) for r in group])[:2], digits=1)
                steps = f"{int(np.mean([r.last_step for r in group])):,}"
                lines.append(f"| {game} | {variant} | {len(group)} | {steps} | {ret} | {hns} | {dead} | {srank} |")
                for r in group:
                    csv_rows.append([r.name, algorithm, variant, game, r.seed, int(r.finished), r.last_step, len(r.returns),
                                     r.final_return(window), human_normalized(r.final_return(window), game),
                                     r.last(CURVES["dead_fraction"][0]), r.last(CURVES["srank"][0])])
        unknown = [g for g in games if g not in ATARI_SCORES]
        lines += ["", f"Aggregate human-normalised score over {', '.join(g for g in games if g in ATARI_SCORES) or 'no game'}"
                  + (f" ({', '.join(unknown)} left out: no published human and random scores)" if unknown else "") + ":", "",
                  "| variant | runs per game | IQM [95% CI] | median [95% CI] | note |", "| --- | --- | --- | --- | --- |"]
        for i, variant in enumerate(variants):
            agg = aggregate([r for r in alg_runs if r.variant == variant], games, window, reps, seed + i, library)
            aggregates[(algorithm, variant)] = agg
            if agg.points is None:
                lines.append(f"| {variant} | {agg.runs_per_game or '-'} | n/a | n/a | {agg.note} |")
            else:
                (iqm, median), (low, high) = agg.points, agg.intervals
                lines.append(f"| {variant} | {agg.runs_per_game} | {iqm:.3f} [{low[0]:.3f}, {high[0]:.3f}] | "
                             f"{median:.3f} [{low[1]:.3f}, {high[1]:.3f}] | {agg.note} |")
        lines.append("")
        for suffix, (tag, label) in CURVES.items():
            name = f"{algorithm}_{suffix}.png"
            smoothing = f", mean of the last {window} games" if tag == RETURN_TAG else ""
            plot_curves(alg_runs, tag, label, f"{algorithm}: {label}{smoothing} (mean and 95% CI over seeds)", out / name, window, colors)
            lines.append(f"![{algorithm} {suffix}]({name})")
        lines.append("")

    plot_aggregates(aggregates, out / "aggregate_iqm.png", colors)
    lines += ["## Aggregates", "", "![aggregate IQM and median](aggregate_iqm.png)", ""]
    if no_games:
        lines += ["## Notes", "", f"{len(no_games)} of {len(runs)} runs finished no game (budget too small for a whole game): "
                  "their return is n/a, left out of the means and aggregates; their metric curves are still plotted.", ""]
    if unfinished:
        lines += ["## Unfinished runs", "", "Not in any table or plot above (no `done.json`: running, interrupted or failed):", "",
                  "| run | algorithm | variant | game | seed | last step logged |", "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {r.name} | {r.algorithm} | {r.variant} | {r.game} | {r.seed} | {r.last_step:,} |" for r in unfinished]
        lines.append("")
    (out / "results.md").write_text("\n".join(lines))

    header = "run,algorithm,variant,game,seed,finished,steps,games,final_return,hns,dead_fraction,srank"
    body = [",".join("" if isinstance(v, float) and not np.isfinite(v) else f"{v:.6g}" if isinstance(v, float) else str(v) for v in row)
            for row in csv_rows]
    (out / "results.csv").write_text("\n".join([header, *body]) + "\n")
    summary = f"report: {len(runs)} finished runs -> {out}/results.md, results.csv and {3 * len(algorithms) + 1} plots"
    if unfinished:
        summary += f" ({len(unfinished)} unfinished runs listed apart)"
    if no_games:
        summary += f" ({len(no_games)} runs finished no game yet: their return is n/a)"
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description="Tables and plots of the runs under runs/ (TensorBoard events and config.json).")
    parser.add_argument("--runs-dir", default="runs", help="the folder holding one folder per run (default: runs)")
    parser.add_argument("--out", default="results", help="where results.md, results.csv and the PNGs go (default: results)")
    parser.add_argument("--window", type=int, default=100, help="the number of last games a run's final return averages (default: 100)")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap resamples of the confidence intervals (default: 2000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default: 0)")
    args = parser.parse_args(argv)
    if args.window <= 0 or args.reps <= 0:
        fail("--window and --reps must be positive")
    runs, unfinished = load_runs(Path(args.runs_dir))
    print(write_report(runs, Path(args.runs_dir), Path(args.out), args.window, args.reps, args.seed, unfinished))


if __name__ == "__main__":
    main()

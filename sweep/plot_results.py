# Report of a benchmark.sh sweep: reads every run's TensorBoard events and config.json under runs/ (no W&B
# account needed) and writes results.md (per game and group: final return, human-normalised score, representation
# metrics at the end and at fixed steps, learning speed; aggregate IQM and median human-normalised score with 95%
# stratified bootstrap confidence intervals, after rliable), results.csv (one line per run), representation.csv
# (the metrics at fixed steps) and figures (PNG, and PDF beside each). Runs are seeds of one group only when
# everything that changes what is learned is the same (see IGNORED_CONFIG_KEYS); the same runs give byte-identical
# results.md, results.csv and representation.csv.
# Usage: python sweep/plot_results.py [--runs-dir runs] [--out results] [--steps 250k,500k,1M]
import argparse
import ast
import functools
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]  # the training scripts, whose Args defaults fill keys older configs lack
RETURN_TAG = "charts/episodic_return"
CURVES = {  # file suffix: (tag, axis label)
    "return": (RETURN_TAG, "episodic return"),
    "dead_fraction": ("representation/dead_fraction", "dead fraction (representation)"),
    "srank": ("representation/srank", "srank (representation)"),
    "effective_rank": ("representation/effective_rank", "effective rank (representation)"),
    "dormant_fraction": ("representation/dormant_fraction", "dormant fraction (representation)"),
}
STEP_METRICS = {"dead_fraction": 3, "effective_rank": 1, "srank": 1}  # the table at fixed steps: metric -> digits
RUN_METRICS = ["dead_fraction", "srank", "effective_rank", "dormant_fraction"]  # results.csv: each run's last value
VARIANT_ORDER = ["relu", "tanh", "tanh_hr", "tanh_pm", "glu", "swiglu", "bilinear"]  # the paper's comparison, the gates
# then the same with the LayerNorm switched (PPO and DQN `_ln`: on; PQN `_noln`: off); any other variant after all these
VARIANT_ORDER += [variant + switch for switch in ("_ln", "_noln") for variant in VARIANT_ORDER]
VARIANT_ORDER += [variant + "_redo" for variant in VARIANT_ORDER]  # then all of these with ReDo
ALGORITHM_ORDER = ["dqn", "ppo", "pqn"]

# config.json keys that do not change what is learned: runs that differ only in these are seeds of one group.
# Every other key (hyperparameters, budget, env id and sticky actions) splits groups. `repeat_action_probability`
# (the flag, None when not given) is replaced by the sticky-action probability it resolves to; `algorithm`,
# `variant` and `env_id` name the group anyway.
IGNORED_CONFIG_KEYS = frozenset(
    {
        "seed",
        "run_name",
        "exp_name",
        "cuda",
        "track",
        "wandb_project_name",
        "wandb_entity",
        "wandb_id",
        "capture_video",
        "save_model",
        "eval_episodes",
        "eval_epsilon",
        "eval_model",
        "eval_only",
        "env_threads",
        "checkpoint_interval",
        "checkpoint_buffer",
        "keep_checkpoint",
        "compile",
        "torch_deterministic",
        "metrics_interval",
        "metrics_batch_size",
        "device",
        "num_parameters",
        "algorithm",
        "variant",
        "env_id",
        "repeat_action_probability",
        "sticky_action_probability",
    }
)
# spelled by the variant name
VARIANT_KEYS = frozenset({"activation", "hadamard", "gate", "param_matched", "layer_norm", "representation_width"})
# computed at start from num_envs, num_steps, num_minibatches and total_timesteps (DQN's batch_size is a hyperparameter)
DERIVED_KEYS = {algorithm: {"batch_size", "minibatch_size", "num_iterations"} for algorithm in ("ppo", "pqn")}
LABEL_ORDER = ["env_id", "sticky_action_probability", "total_timesteps", "learning_rate", "num_envs"]  # then by name

# Readable names, and one colour and marker per variant in every figure; LINESTYLES tell settings of one variant apart.
ACTIVATION_NAMES = {"relu": "ReLU", "tanh": "tanh", "gelu": "GELU", "sigmoid": "sigmoid"}
GATE_NAMES = {"glu": "GLU", "swiglu": "SwiGLU", "bilinear": "bilinear"}
SUFFIX_NAMES = {"_all": "all layers", "_pm": "param-matched", "_ln": "LayerNorm", "_noln": "no LayerNorm", "_redo": "ReDo"}
VARIANT_STYLES = {"relu": ("#7f7f7f", "s"), "tanh": ("#d62728", "o"), "tanh_hr": ("#1f77b4", "D"), "tanh_pm": ("#ff7f0e", "^")}
OTHER_STYLES = [("#2ca02c", "v"), ("#9467bd", "P"), ("#8c564b", "X"), ("#e377c2", "*"), ("#17becf", "p"), ("#bcbd22", "h")]
LINESTYLES = ["-", "--", ":", "-."]
BAND_LEVEL = "95% bootstrap CI"

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


def sticky_action_probability(config: dict) -> float:
    """The probability a run used: recorded by newer scripts; else the flag's value, else the scripts' default (0.25
    for `ALE/<Game>-v5` ids, 0 otherwise)."""
    for key in ("sticky_action_probability", "repeat_action_probability"):
        if config.get(key) is not None:
            return float(config[key])
    return 0.25 if str(config.get("env_id", "")).startswith("ALE/") else 0.0


@functools.lru_cache(maxsize=None)
def script_defaults(script: str) -> dict:
    """The literal defaults of a training script's Args: the value of a key that an older run's config.json lacks."""
    path = ROOT / f"{script}.py"
    if not re.fullmatch(r"\w+", script) or not path.is_file():
        return {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ClassDef) and node.name == "Args":
            defaults = {}
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and item.value is not None:
                    try:
                        defaults[item.target.id] = ast.literal_eval(item.value)
                    except (ValueError, TypeError, SyntaxError):  # computed defaults (exp_name): not a setting
                        pass
            return defaults
    return {}


@dataclass
class Run:
    name: str
    algorithm: str
    variant: str
    env_id: str
    seed: int
    finished: bool
    curves: dict = field(default_factory=dict)  # tag -> (steps, values), by step
    config: dict = field(default_factory=dict)
    settings: tuple = ()  # ((key, JSON value), ...): everything that changes what is learned, see assign_settings

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

    def at(self, tag: str, step: int) -> float:
        """The last value of `tag` logged at or before `step`; NaN when none was logged within one metrics interval
        before it (the run stopped logging, or the step is past its budget). One interval before counts: DQN runs made
        before the DQN script probed its final network end at 950k of 1M."""
        steps, values = self.curves.get(tag, (np.zeros(0, dtype=np.int64), np.zeros(0)))
        interval = self.config.get("metrics_interval") or 50_000  # the scripts' default
        i = np.searchsorted(steps, step, side="right") - 1
        return float(values[i]) if i >= 0 and step - steps[i] <= interval and step <= self.budget else math.nan

    @property
    def last_step(self) -> int:
        return max((int(steps[-1]) for steps, _ in self.curves.values() if len(steps)), default=0)

    @property
    def budget(self) -> int:
        """total_timesteps from config.json; the last logged step for a config without it."""
        budget = self.config.get("total_timesteps")
        return int(budget) if isinstance(budget, (int, float)) and budget > 0 else self.last_step

    def return_auc(self, bins: int = 100) -> float:
        """Learning speed: the mean over `bins` equal step bins covering [0, budget] of the mean raw return of the
        games that ended in each bin; a bin where no game ended takes the previous bin's value (leading ones the first
        game's). A run that learns earlier scores higher. NaN when no game has finished."""
        steps, returns = self.curves.get(RETURN_TAG, (np.zeros(0, dtype=np.int64), np.zeros(0)))
        if not len(returns):
            return math.nan
        which = np.clip((steps * bins) // max(self.budget, 1), 0, bins - 1)
        counts = np.bincount(which, minlength=bins)
        sums = np.bincount(which, weights=returns, minlength=bins)
        curve = np.full(bins, np.nan)
        curve[counts > 0] = sums[counts > 0] / counts[counts > 0]
        filled = np.maximum.accumulate(np.where(counts > 0, np.arange(bins), 0))  # index of the last bin with games
        curve = curve[filled]
        curve[np.isnan(curve)] = curve[np.argmax(counts > 0)]  # before the first game: the first game's value
        return float(curve.mean())


def read_scalars(run_dir: Path) -> dict:
    """Every scalar in a run's TensorBoard events: {tag: (steps, values)}, by step (in logging order within one)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    curves = {}
    for tag in events.Tags()["scalars"]:
        scalars = events.Scalars(tag)
        steps = np.array([s.step for s in scalars], dtype=np.int64)
        order = np.argsort(steps, kind="stable")
        curves[tag] = (steps[order], np.array([s.value for s in scalars], dtype=np.float64)[order])
    return curves


def env_form(env_id: str) -> str:
    """`ALE/Breakout-v5` -> `ALE/<game>-v5`: what an env id says besides its game (the same across a sweep's games)."""
    game = game_name(env_id)
    return env_id.replace(game, "<game>", 1) if game != env_id else "<game>"


def assign_settings(runs: list[Run]):
    """Each run's settings: its config's keys that change what is learned, its env id's form and its sticky-action
    probability. A key that some runs of an algorithm lack (configs written before it existed) reads as the script's
    default, so that old and new runs of one setting stay one group."""
    for algorithm in sorted({r.algorithm for r in runs}):
        mine = [r for r in runs if r.algorithm == algorithm]
        keys = sorted({k for r in mine for k in r.config} - IGNORED_CONFIG_KEYS)
        for run in mine:
            defaults = script_defaults(str(run.config.get("exp_name") or f"{algorithm}_atari_hadamard"))
            values = {k: run.config[k] if k in run.config else defaults.get(k) for k in keys}
            values["env_id"] = env_form(run.env_id)
            values["sticky_action_probability"] = sticky_action_probability(run.config)
            run.settings = tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in values.items()))


def load_runs(runs_dir: Path) -> tuple[list[Run], list[Run]]:
    """The finished training runs under `runs_dir` (one folder each, as the training scripts write them), and the
    unfinished ones (no `done.json`), which the report lists apart. An evaluation-only run (`--eval-model`) is
    no seed and is left out; a folder that is no usable run is one warning line and left out. No finished run,
    or two finished runs of one group (algorithm, variant, game, settings) and seed, is an error."""
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
        if not isinstance(config, dict):
            warn(f"{folder}: config.json holds no settings: left out")
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
        variant = config.get("variant") or (
            config.get("activation", "tanh")
            + ("_hr" if config.get("hadamard") else "")
            + ("_pm" if config.get("param_matched") else "")
        )
        runs.append(
            Run(
                folder.name,
                str(config.get("algorithm") or config.get("exp_name", "?")),
                variant,
                str(config.get("env_id", "?")),
                int(config.get("seed", 0)),
                (folder / "done.json").is_file(),
                curves,
                config,
            )
        )
    if not runs:
        fail(f"no run in {runs_dir}/ has TensorBoard events to report (see the warnings above)")
    finished = [r for r in runs if r.finished]
    if not finished:
        fail(f"no run in {runs_dir}/ has finished (done.json): {len(runs)} unfinished; report again when one has")
    assign_settings(finished)
    seen = {}
    for run in finished:
        key = (run.algorithm, run.variant, run.game, run.settings, run.seed)
        if key in seen:
            fail(
                f"{runs_dir / seen[key]} and {runs_dir / run.name} are both {run.algorithm} {run.variant} on {run.game} "
                f"with seed {run.seed} and the same settings: move one out of {runs_dir}/ so that each seed counts once"
            )
        seen[key] = run.name
    return finished, [r for r in runs if not r.finished]


# ----------------------------------------------------------------------------------------------------------
# Groups: the runs of one algorithm, game, variant and settings, the seeds of one curve or table row.
def steps_label(x: float, _=None) -> str:
    """An environment-step count or tick: 0, 500, 250k, 1.5M (an empty panel's 0.2 stays 0.2, not 200m)."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:g}{suffix}"
    return f"{x:g}"


def variant_label(variant: str, details=()) -> str:
    """`tanh_hr` -> `tanh + HR`, `tanh_pm` with details ["lr 0.001"] -> `tanh (param-matched, lr 0.001)`, `glu_ln` ->
    `GLU (LayerNorm)`, PQN's `tanh_hr_all_noln` -> `tanh + HR (all layers, no LayerNorm)`."""
    match = re.fullmatch(r"([a-z]+)(_hr)?(_all)?(_pm)?(_ln|_noln)?(_redo)?", variant)
    if not match:
        name, qualifiers = variant, []
    else:
        name = {**ACTIVATION_NAMES, **GATE_NAMES}.get(match[1], match[1]) + (" + HR" if match[2] else "")
        qualifiers = [SUFFIX_NAMES[suffix] for suffix in match.groups()[2:] if suffix]
    qualifiers += list(details)
    return f"{name} ({', '.join(qualifiers)})" if qualifiers else name


def describe_setting(key: str, value_json: str) -> str:
    value = json.loads(value_json)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if key == "env_id":
        return value
    if key == "sticky_action_probability" and number:
        return f"sticky {value:g}"
    if key == "total_timesteps" and number:
        return f"{steps_label(value)} steps"
    if key == "learning_rate" and number:
        return f"lr {value:g}"
    if key == "num_envs" and number:
        return f"{value} envs"
    return f"{key} {value:g}" if number else f"{key} {value}"


@dataclass
class Group:
    algorithm: str
    game: str
    variant: str
    settings: tuple
    runs: list
    label: str = ""  # variant and how its settings differ from the algorithm's other groups, with this game's env id
    series: str = ""  # the same across games: the env id as its form (`ALE/<game>-v5`)
    details: list = field(default_factory=list)  # how its settings differ from the algorithm's reference
    linestyle: str = "-"
    speed: dict = field(default_factory=dict)  # learning_speed: return AUC and final return over its seeds

    @property
    def budget(self) -> int:
        return max(r.budget for r in self.runs)


def rank(value: str, order: list) -> int:
    """The place of `value` in `order`; after all of them when it is not there."""
    return order.index(value) if value in order else len(order)


def label_groups(groups: list[Group]) -> list[str]:
    """Name one algorithm's groups: the variant, and the settings where a group differs from the algorithm's reference
    (each key's value in most runs), e.g. `tanh (lr 0.001)`; a derived key (PPO's batch_size) only where nothing else
    tells two groups apart. Returns the reference values of the keys that differ, which the groups without a qualifier
    have."""
    settings = [dict(g.settings) for g in groups]
    keys = sorted({k for s in settings for k in s}, key=lambda k: (rank(k, LABEL_ORDER), k))
    varying = [k for k in keys if k not in VARIANT_KEYS and len({s.get(k) for s in settings}) > 1]
    reference = {}
    for key in varying:  # the value in most runs; ties to the first in JSON order, so that the same runs read the same
        counts = {}
        for group, setting in zip(groups, settings):
            counts[setting.get(key)] = counts.get(setting.get(key), 0) + len(group.runs)
        reference[key] = min(counts, key=lambda v: (-counts[v], str(v)))

    def details(setting: dict, shown: list) -> list:
        return [
            describe_setting(k, setting[k]) if k in setting else f"{k} n/a" for k in shown if setting.get(k) != reference[k]
        ]

    def distinct(shown: list) -> bool:
        return len({(g.game, g.variant, tuple(details(s, shown))) for g, s in zip(groups, settings)}) == len(groups)

    shown = varying
    for key in [k for k in varying if k in DERIVED_KEYS.get(groups[0].algorithm, ())]:
        if distinct([k for k in shown if k != key]):
            shown = [k for k in shown if k != key]
    for group, setting in zip(groups, settings):
        group.details = details(setting, shown)
        group.series = variant_label(group.variant, group.details)
        group.label = variant_label(group.variant, [d.replace("<game>", group.game) for d in group.details])
    return [describe_setting(k, reference[k]) for k in shown if reference[k] is not None]


def make_groups(runs: list[Run]) -> tuple[list[Group], dict]:
    """The runs' groups, by algorithm, game, variant and settings, each group's runs by seed; and per algorithm the
    reference settings (label_groups). Runs of one variant and game with different settings are separate groups, one
    warning line each."""
    by_key = {}
    for run in sorted(runs, key=lambda r: (r.seed, r.name)):
        by_key.setdefault((run.algorithm, run.game, run.variant, run.settings), []).append(run)
    groups = sorted((Group(*key, members) for key, members in by_key.items()), key=lambda g: json.dumps(g.settings))
    references = {a: label_groups([g for g in groups if g.algorithm == a]) for a in ordered(g.algorithm for g in groups)}
    # the paper's order; within a variant the reference settings first, then by how the others differ
    groups.sort(
        key=lambda g: (
            rank(g.algorithm, ALGORITHM_ORDER),
            g.algorithm,
            g.game,
            rank(g.variant, VARIANT_ORDER),
            g.variant,
            len(g.details),
            g.label,
        )
    )
    series_of_variant = {}  # settings of one variant get their own line style, the same in every game
    for group in groups:
        seen = series_of_variant.setdefault((group.algorithm, group.variant), [])
        if group.series not in seen:
            seen.append(group.series)
        group.linestyle = LINESTYLES[seen.index(group.series) % len(LINESTYLES)]
    for algorithm, game, variant in dict.fromkeys((g.algorithm, g.game, g.variant) for g in groups):
        split = [g.label for g in groups if (g.algorithm, g.game, g.variant) == (algorithm, game, variant)]
        if len(split) > 1:
            warn(
                f"{algorithm} {variant} on {game}: runs with different settings, reported as {len(split)} groups: "
                + "; ".join(split)
            )
    return groups, references


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


def interval_over_seeds(values, reps: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Mean over seeds (the rows of `values`) and the interval drawn around it, with its name: for 3 seeds or more a
    95% percentile-bootstrap confidence interval of the mean (seeds resampled with replacement, as rliable); for 2 seeds
    their range (a bootstrap of two values is no confidence interval); for one seed none (NaN)."""
    values = np.asarray(values, dtype=np.float64)
    mean = values.mean(axis=0)
    if len(values) == 1:
        return mean, np.full_like(mean, np.nan), np.full_like(mean, np.nan), ""
    if len(values) == 2:
        return mean, values.min(axis=0), values.max(axis=0), "range"
    picks = np.random.default_rng(seed).integers(0, len(values), size=(reps, len(values)))
    low, high = np.percentile(values[picks].mean(axis=1), [2.5, 97.5], axis=0)
    return mean, low, high, BAND_LEVEL


def seeds_legend(count: int, kind: str) -> str:
    """`n=3, 95% bootstrap CI`, `n=2, range`, `n=1`."""
    return f"n={count}, {kind}" if kind else f"n={count}"


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
    ones by seed where a game has more), of one series: an algorithm, variant and settings across games."""
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
    notes = [f"{dropped} run(s) left out so that every game has {num_runs}"] if dropped else []
    if num_runs == 1:  # resampling one run per game redraws that run: a zero-width interval, not a confidence interval
        intervals = np.full_like(intervals, np.nan)
        notes.append("one run per game: no CI")
    return Aggregate(normalised, num_runs, points, intervals, "; ".join(notes))


# ----------------------------------------------------------------------------------------------------------
# Figures: each as PNG and PDF, without creation dates (the same runs give the same files).
def variant_styles(variants) -> dict:
    """variant -> (colour, marker): fixed for the paper's variants, in name order for any other."""
    others = sorted(set(variants) - set(VARIANT_STYLES))
    return {**VARIANT_STYLES, **{v: OTHER_STYLES[i % len(OTHER_STYLES)] for i, v in enumerate(others)}}


def save_figure(fig, path: Path):
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110, bbox_inches="tight")
    fig.savefig(path.with_suffix(".pdf"), bbox_inches="tight", metadata={"CreationDate": None})
    plt.close(fig)


def run_curve(run: Run, tag: str, window: int) -> tuple[np.ndarray, np.ndarray]:
    steps, values = run.curves.get(tag, (np.zeros(0, dtype=np.int64), np.zeros(0)))
    if tag == RETURN_TAG and len(values):  # the mean of the last `window` games at each finished game
        cumsum = np.concatenate([[0.0], np.cumsum(values)])
        idx = np.arange(1, len(values) + 1)
        start = np.maximum(idx - window, 0)
        values = (cumsum[idx] - cumsum[start]) / (idx - start)
    return steps, values


def band(curves: list, reps: int = 1000, seed: int = 0, max_points: int = 400):
    """The mean over runs and its interval (interval_over_seeds) on the steps where every run has logged: from the
    latest first step to where the shortest run ends (a mean that one run leaves would jump). Returns grid, mean,
    low, high and the interval's name; an empty grid where the runs do not overlap."""
    start, end = max(steps[0] for steps, _ in curves), min(steps[-1] for steps, _ in curves)
    grid = np.unique(np.concatenate([steps[(steps >= start) & (steps <= end)] for steps, _ in curves]))
    if len(grid) > max_points:
        grid = np.unique(grid[np.linspace(0, len(grid) - 1, max_points).astype(int)])
    if not len(grid):
        return grid, grid.astype(float), grid.astype(float), grid.astype(float), ""
    stacked = np.array([np.interp(grid, steps, values) for steps, values in curves])
    return (grid, *interval_over_seeds(stacked, reps, seed))


def panel_grid(count: int, width: float, height: float, ncols: int = 3):
    import matplotlib.pyplot as plt

    ncols = max(1, min(count, ncols))
    nrows = max(1, math.ceil(count / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    for ax in list(axes.flat)[count:]:
        ax.axis("off")
    return fig, list(axes.flat)


def plot_curves(
    groups: list[Group], tag: str, label: str, title: str, path: Path, window: int, styles: dict, reps: int, seed: int
):
    """One panel per game: each group's mean over seeds against environment steps, cut where its shortest seed ends,
    with its band (bootstrap CI for 3+ seeds, range for 2, none for 1), named in the legend with n."""
    from matplotlib.ticker import FuncFormatter

    games = ordered(g.game for g in groups)
    fig, axes = panel_grid(len(games), 6.0, 4.2)
    fraction = "fraction" in tag
    for ax, game in zip(axes, games):
        drawn = False
        for group in (g for g in groups if g.game == game):
            curves = [c for c in (run_curve(r, tag, window) for r in group.runs) if len(c[0])]
            if not curves:
                continue
            grid, mean, low, high, kind = band(curves, reps, seed)
            if not len(grid):
                continue
            color, marker = styles[group.variant]
            every = max(1, len(grid) // 8)  # markers tell variants apart in grey print; staggered so they do not overlap
            offset = (rank(group.variant, VARIANT_ORDER) * every // 5) % every
            ax.plot(
                grid,
                mean,
                color=color,
                linestyle=group.linestyle,
                marker=marker,
                markevery=(offset, every),
                markersize=5,
                markerfacecolor="white",
                linewidth=1.6,
                clip_on=not fraction,
                zorder=3,
                label=f"{group.label} ({seeds_legend(len(curves), kind)})",
            )
            if kind:
                if fraction:
                    low, high = np.clip(low, 0.0, 1.0), np.clip(high, 0.0, 1.0)
                ax.fill_between(grid, low, high, color=color, alpha=0.18, linewidth=0)
            drawn = True
        if drawn:  # under the panel: inside, it hides the curves
            ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.26), frameon=False)
        else:
            ax.text(
                0.5,
                0.5,
                "no finished game yet" if tag == RETURN_TAG else f"no {tag} logged",
                ha="center",
                va="center",
                transform=ax.transAxes,
                color="gray",
            )
        if fraction:
            ax.set_ylim(0.0, 1.0)
        ax.set_title(game)
        ax.set_xlabel("environment steps")
        ax.xaxis.set_major_formatter(FuncFormatter(steps_label))  # 250k, 10M: full numbers run into each other
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def plot_intervals(rows: list, panels: list, legend: tuple, path: Path, title: str, separators=()):
    """Points with interval bars, one row per entry and one panel per measure. `rows`: (label, colour, marker);
    `panels`: (panel title, x label, [(point, low, high) per row]); `legend`: what the point and the bar are;
    `separators`: the rows above which a line is drawn."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 0.42 * len(rows) + 1.6), squeeze=False)
    for col, (ax, (name, xlabel, values)) in enumerate(zip(axes[0], panels)):
        for i, ((_, color, marker), (point, low, high)) in enumerate(zip(rows, values)):
            if not np.isfinite(point):
                ax.text(0.02, i, "n/a", va="center", color="gray", transform=ax.get_yaxis_transform())
                continue
            if np.isfinite(low):
                ax.plot([low, high], [i, i], color=color, linewidth=6, alpha=0.35, solid_capstyle="butt")
            ax.plot([point], [i], color=color, marker=marker, markersize=7, markeredgecolor="black", linestyle="none")
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([label for label, _, _ in rows] if col == 0 else [])
        ax.set_ylim(len(rows) - 0.4, -0.6)  # the first row on top, a margin on both sides
        for row in separators:
            ax.axhline(row - 0.5, color="gray", linewidth=0.8)
        ax.set_xlabel(xlabel)
        ax.set_title(name)
        ax.grid(axis="x", alpha=0.3)
    handles = [
        Line2D([], [], color="gray", marker="o", markeredgecolor="black", linestyle="none", label=legend[0]),
        Line2D([], [], color="gray", linewidth=6, alpha=0.35, label=legend[1]),
    ]
    fig.suptitle(title)
    fig.tight_layout()
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, frameon=False, fontsize=8)
    save_figure(fig, path)


def plot_learning_speed(groups: list[Group], path: Path, styles: dict, window: int):
    """Two panels: return AUC (learning speed) and final return per group, mean over seeds with its interval."""
    several_games = len({g.game for g in groups}) > 1
    rows = [(f"{g.game}: " * several_games + f"{g.label} (n={g.speed['n']})", *styles[g.variant]) for g in groups]
    panels = [
        ("learning speed", "return AUC: mean return over [0, budget]", [g.speed["auc"] for g in groups]),
        ("final return", f"mean return of the last {window} games", [g.speed["final"] for g in groups]),
    ]
    legend = ("mean over seeds", f"{BAND_LEVEL} over seeds (n≥3), their range (n=2), none (n=1)")
    separators = [i for i in range(1, len(groups)) if groups[i].game != groups[i - 1].game]  # between games
    plot_intervals(rows, panels, legend, path, f"{groups[0].algorithm}: learning speed and final return", separators)


def plot_aggregates(aggregates: dict, path: Path, styles: dict, budget: int):
    """IQM and median human-normalised score with 95% stratified bootstrap CIs, one row per (algorithm, series)."""
    rows, values = [], ([], [])
    for (algorithm, series, variant), agg in aggregates.items():
        rows.append(
            (
                f"{algorithm} {series} (n={agg.runs_per_game} per game)"
                if agg.points is not None
                else f"{algorithm} {series}",
                *styles[variant],
            )
        )
        for col in range(2):
            values[col].append(
                (agg.points[col], agg.intervals[0, col], agg.intervals[1, col])
                if agg.points is not None
                else (math.nan, math.nan, math.nan)
            )
    panels = [(name, "human-normalised score", values[col]) for col, name in enumerate(["IQM", "Median"])]
    legend = ("point estimate", "95% stratified bootstrap CI (rliable)")
    keys = list(aggregates)
    separators = [i for i in range(1, len(keys)) if keys[i][0] != keys[i - 1][0]]  # between algorithms
    title = f"aggregate human-normalised score, runs at {steps_label(budget)} steps"
    plot_intervals(rows, panels, legend, path, title, separators)


# ----------------------------------------------------------------------------------------------------------
# The report
DEFAULT_STEPS = "250k,500k,1M"


def parse_steps(text: str) -> list[int]:
    """`250k,500k,1M` -> [250000, 500000, 1000000]."""
    steps = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*", part)
        if not match or float(match[1]) <= 0:
            fail(f"--steps: {part.strip()!r} is no positive step count (expected e.g. {DEFAULT_STEPS})")
        steps.append(int(round(float(match[1]) * {"": 1, "k": 1e3, "m": 1e6}[match[2].lower()])))
    return sorted(set(steps))


def csv_text(header: list, rows: list) -> str:
    import csv
    import io

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(
            ["" if isinstance(v, float) and not np.isfinite(v) else f"{v:.6g}" if isinstance(v, float) else v for v in row]
        )
    return text.getvalue()


def fmt_interval(values: tuple, digits: int = 1) -> str:
    """`12.3 [10.1, 14.0]` (an interval), `12.3` (one seed), `n/a`."""
    point, low, high = values
    if not np.isfinite(point):
        return "n/a"
    return f"{point:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]" if np.isfinite(low) else f"{point:.{digits}f}"


def learning_speed(group: Group, window: int, reps: int, seed: int) -> dict:
    """Return AUC and final return of a group: mean over the seeds that finished a game, with their interval."""
    result = {"n": 0, "kind": ""}
    for key, measure in (("auc", lambda r: r.return_auc()), ("final", lambda r: r.final_return(window))):
        values = [v for v in (measure(r) for r in group.runs) if np.isfinite(v)]
        if values:
            mean, low, high, kind = interval_over_seeds(np.array(values)[:, None], reps, seed)
            result.update({key: (float(mean[0]), float(low[0]), float(high[0])), "n": len(values), "kind": kind})
        else:
            result[key] = (math.nan, math.nan, math.nan)
    return result


def write_report(
    runs: list[Run],
    runs_dir: Path,
    out: Path,
    window: int,
    reps: int,
    seed: int,
    unfinished: list[Run] = (),
    steps: Optional[list[int]] = None,
) -> str:
    import matplotlib

    matplotlib.use("Agg")
    steps = parse_steps(DEFAULT_STEPS) if steps is None else steps
    out.mkdir(parents=True, exist_ok=True)
    library, method = bootstrap_method()
    groups, references = make_groups(runs)
    styles = variant_styles(r.variant for r in runs)
    algorithms = ordered(g.algorithm for g in groups)
    no_games = [r.name for r in runs if not len(r.returns)]
    for group in groups:
        group.speed = learning_speed(group, window, reps, seed)

    lines = [
        "# Results",
        "",
        f"{len(runs)} finished runs from `{runs_dir.resolve().name}/`, by `plot_results.py`."
        + (
            f" {len(unfinished)} unfinished runs (no `done.json`) are listed at the end, in no table or plot."
            if unfinished
            else ""
        ),
        "",
        "- **groups**: runs are seeds of one group when they share algorithm, variant, env id and sticky-action probability, "
        "budget (total_timesteps) and every hyperparameter in config.json (all keys but bookkeeping such as seed, run name, "
        "logging, checkpointing and evaluation); groups of one variant that differ are named by how they differ, e.g. "
        "`tanh (lr 0.001)`.",
        f"- **return**: each run's mean raw game score over its last {window} finished games (`{RETURN_TAG}`), "
        "then mean ± standard deviation over seeds.",
        "- **HNS**: human-normalised score `(return - random) / (human - random)` with the published Atari-57 random "
        "and human scores (Mnih et al. 2015), per run, then mean ± standard deviation over seeds.",
        "- **dead fraction**, **srank**: the representation's last logged `representation/dead_fraction` and "
        "`representation/srank`, mean ± standard deviation over seeds.",
        "- **representation at fixed steps**: each run's last value logged at or before the step (n/a when it logged none "
        "within one metrics interval before it, that interval included), then mean ± standard deviation (sample, n-1) "
        "over seeds; min and max over seeds in `representation.csv`. Steps past a group's budget are left out.",
        "- **return AUC** (learning speed): the area under a run's return curve divided by its budget: [0, total_timesteps] "
        "is cut into 100 equal step bins, each bin holds the mean raw return of the games that ended in it (a bin where no "
        "game ended takes the previous bin's value, bins before the first game the first game's), and the AUC is the mean "
        "of the 100 bins. A run that learns earlier scores higher.",
        f"- **intervals over seeds** (learning speed, curve bands): for 3 seeds or more a {BAND_LEVEL} of the mean (seeds "
        f"resampled with replacement, {reps} resamples, percentile interval); for 2 seeds their range; for 1 seed none. "
        "Curves are the mean over seeds, cut where the shortest seed ends; the return curve is each run's mean of the last "
        f"{window} games at each finished game.",
        f"- **aggregates**: IQM and median of the runs' HNS over games, with 95% stratified bootstrap confidence "
        f"intervals ({reps} resamples; {method}).",
        "",
    ]
    aggregates = {}  # (algorithm, series, variant) -> Aggregate
    aggregate_budgets = {}  # the same key -> budget
    run_rows, step_rows = [], []
    figure_count = 0
    for algorithm in algorithms:
        mine = [g for g in groups if g.algorithm == algorithm]
        games = ordered(g.game for g in mine)
        lines += [f"## {algorithm}", ""]
        if references[algorithm]:
            reference = ", ".join(references[algorithm])
            reference = reference.replace("<game>", games[0]) if len(games) == 1 else reference
            lines += [
                f"Runs differ in settings: a group named without them has {reference}; "
                "the others name where they differ from that.",
                "",
            ]
        lines += [
            "| game | variant | runs | steps | return | HNS | dead fraction | srank |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for group in mine:
            game, members = group.game, group.runs
            returns = [r.final_return(window) for r in members]
            ret_mean, ret_std, played = mean_std(returns)
            hns = (
                fmt(*mean_std([human_normalized(x, game) for x in returns])[:2], digits=3)
                if game in ATARI_SCORES
                else "n/a (no published scores)"
            )
            ret = fmt(ret_mean, ret_std, 1)
            if played < len(members):
                ret += (
                    f" ({len(members) - played} of {len(members)} runs finished no game)"
                    if played
                    else " (no finished game yet)"
                )
            dead = fmt(*mean_std([r.last(CURVES["dead_fraction"][0]) for r in members])[:2], digits=3)
            srank = fmt(*mean_std([r.last(CURVES["srank"][0]) for r in members])[:2], digits=1)
            last_steps = f"{int(np.mean([r.last_step for r in members])):,}"
            lines.append(f"| {game} | {group.label} | {len(members)} | {last_steps} | {ret} | {hns} | {dead} | {srank} |")
            sticky = json.loads(dict(group.settings)["sticky_action_probability"])
            for r in members:
                run_rows.append(
                    [
                        r.name,
                        algorithm,
                        r.variant,
                        group.label,
                        game,
                        r.env_id,
                        sticky,
                        r.budget,
                        r.seed,
                        int(r.finished),
                        r.last_step,
                        len(r.returns),
                        r.final_return(window),
                        human_normalized(r.final_return(window), game),
                        r.return_auc(),
                        *(r.last(CURVES[name][0]) for name in RUN_METRICS),
                    ]
                )

        names = [name.replace("_", " ") for name in STEP_METRICS]
        lines += [
            "",
            "Representation at fixed steps (mean ± std over seeds):",
            "",
            f"| game | variant | step | runs | {' | '.join(names)} |",
            "| --- " * (4 + len(names)) + "|",
        ]
        for group in mine:
            for step in (s for s in steps if s <= group.budget):
                cells = []
                for name, digits in STEP_METRICS.items():
                    values = [r.at(CURVES[name][0], step) for r in group.runs]
                    mean, std, count = mean_std(values)
                    finite = [v for v in values if np.isfinite(v)]
                    step_rows.append(
                        [
                            algorithm,
                            group.game,
                            group.variant,
                            group.label,
                            step,
                            name,
                            count,
                            mean,
                            std,
                            min(finite, default=math.nan),
                            max(finite, default=math.nan),
                        ]
                    )
                    # a run that logged no value near the step is left out of its mean: say so
                    fewer = f" ({count} of {len(values)} runs)" if 0 < count < len(values) else ""
                    cells.append(fmt(mean, std, digits) + fewer)
                lines.append(
                    f"| {group.game} | {group.label} | {steps_label(step)} | {len(group.runs)} | " + " | ".join(cells) + " |"
                )
        if not any(s <= g.budget for g in mine for s in steps):
            lines.append(f"| (no group reached {steps_label(steps[0])} steps) |" + " |" * (3 + len(names)))

        lines += [
            "",
            "Learning speed: return AUC and final return, mean over seeds [interval: "
            f"{BAND_LEVEL} for 3+ seeds, range for 2]:",
            "",
            "| game | variant | runs | return AUC | final return | interval |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for group in mine:
            stats = group.speed
            lines.append(
                f"| {group.game} | {group.label} | {stats['n']} | {fmt_interval(stats['auc'])} | "
                f"{fmt_interval(stats['final'])} | {stats['kind'] or 'none (1 seed)' if stats['n'] else 'n/a'} |"
            )

        unknown = [g for g in games if g not in ATARI_SCORES]
        lines += [
            "",
            f"Aggregate human-normalised score over {', '.join(g for g in games if g in ATARI_SCORES) or 'no game'}"
            + (f" ({', '.join(unknown)} left out: no published human and random scores)" if unknown else "")
            + ":",
            "",
            "| variant | runs per game | IQM [95% CI] | median [95% CI] | note |",
            "| --- | --- | --- | --- | --- |",
        ]
        series = {}  # (variant, settings) -> its groups across games
        for group in mine:
            series.setdefault((group.variant, group.settings), []).append(group)
        for i, members in enumerate(series.values()):
            agg = aggregate([r for g in members for r in g.runs], games, window, reps, seed + i, library)
            key = (algorithm, members[0].series, members[0].variant)
            aggregates[key], aggregate_budgets[key] = agg, max(g.budget for g in members)
            if agg.points is None:
                lines.append(f"| {key[1]} | {agg.runs_per_game or '-'} | n/a | n/a | {agg.note} |")
            else:
                iqm, median = (fmt_interval((agg.points[i], *agg.intervals[:, i]), digits=3) for i in range(2))
                lines.append(f"| {key[1]} | {agg.runs_per_game} | {iqm} | {median} | {agg.note} |")
        lines.append("")
        for suffix, (tag, label) in CURVES.items():
            name = f"{algorithm}_{suffix}.png"
            smoothing = f", mean of the last {window} games" if tag == RETURN_TAG else ""
            title = f"{algorithm}: {label}{smoothing}, mean over seeds"
            plot_curves(mine, tag, label, title, out / name, window, styles, reps, seed)
            lines.append(f"![{algorithm} {suffix}]({name})")
        plot_learning_speed(mine, out / f"{algorithm}_learning_speed.png", styles, window)
        lines += [f"![{algorithm} learning speed]({algorithm}_learning_speed.png)", ""]
        figure_count += len(CURVES) + 1

    # one aggregate figure per budget (IQMs at different budgets are not comparable): the most common one first
    budgets = sorted(set(aggregate_budgets.values()), key=lambda b: (-list(aggregate_budgets.values()).count(b), -b))
    lines += ["## Aggregates", ""]
    for i, budget in enumerate(budgets):
        name = "aggregate_iqm.png" if i == 0 else f"aggregate_iqm_{steps_label(budget)}.png"
        plot_aggregates({k: a for k, a in aggregates.items() if aggregate_budgets[k] == budget}, out / name, styles, budget)
        lines += [
            f"Runs at {steps_label(budget)} steps:",
            "",
            f"![aggregate IQM and median, {steps_label(budget)} steps]({name})",
            "",
        ]
        figure_count += 1
    if no_games:
        lines += [
            "## Notes",
            "",
            f"{len(no_games)} of {len(runs)} runs finished no game (budget too small for a whole game): "
            "their return is n/a, left out of the means and aggregates; their metric curves are still plotted.",
            "",
        ]
    if unfinished:
        lines += [
            "## Unfinished runs",
            "",
            "Not in any table or plot above (no `done.json`: running, interrupted or failed):",
            "",
            "| run | algorithm | variant | game | seed | last step logged |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {r.name} | {r.algorithm} | {variant_label(r.variant)} | {r.game} | {r.seed} | {r.last_step:,} |"
            for r in unfinished
        ]
        lines.append("")
    (out / "results.md").write_text("\n".join(lines))
    (out / "results.csv").write_text(
        csv_text(
            [
                "run",
                "algorithm",
                "variant",
                "group",
                "game",
                "env_id",
                "sticky_action_probability",
                "budget",
                "seed",
                "finished",
                "steps",
                "games",
                "final_return",
                "hns",
                "return_auc",
                *RUN_METRICS,
            ],
            run_rows,
        )
    )
    (out / "representation.csv").write_text(
        csv_text(["algorithm", "game", "variant", "group", "step", "metric", "runs", "mean", "std", "min", "max"], step_rows)
    )
    summary = (
        f"report: {len(runs)} finished runs in {len(groups)} groups -> {out}/results.md, results.csv, "
        f"representation.csv and {figure_count} figures (PNG and PDF)"
    )
    if unfinished:
        summary += f" ({len(unfinished)} unfinished runs listed apart)"
    if no_games:
        summary += f" ({len(no_games)} runs finished no game yet: their return is n/a)"
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Tables and plots of the runs under runs/ (TensorBoard events and config.json)."
    )
    parser.add_argument("--runs-dir", default="runs", help="the folder holding one folder per run (default: runs)")
    parser.add_argument(
        "--out", default="results", help="where results.md, the csv files and the figures go (default: results)"
    )
    parser.add_argument(
        "--window", type=int, default=100, help="the number of last games a run's final return averages (default: 100)"
    )
    parser.add_argument(
        "--reps", type=int, default=2000, help="bootstrap resamples of the confidence intervals (default: 2000)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstraps (default: 0)")
    parser.add_argument(
        "--steps",
        default=DEFAULT_STEPS,
        help=f"the environment steps of the representation table, comma-separated (default: {DEFAULT_STEPS})",
    )
    args = parser.parse_args(argv)
    if args.window <= 0 or args.reps <= 0:
        fail("--window and --reps must be positive")
    steps = parse_steps(args.steps)
    runs, unfinished = load_runs(Path(args.runs_dir))
    print(write_report(runs, Path(args.runs_dir), Path(args.out), args.window, args.reps, args.seed, unfinished, steps))


if __name__ == "__main__":
    main()

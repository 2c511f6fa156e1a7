"""PQN (Gallici et al., "Simplifying Deep Temporal Difference Learning", ICLR 2025) on Atari with a layer-normalised
Hadamard representation (Kooi et al., arXiv 2406.09079), after CleanRL's pqn_atari_envpool.py: online Q(lambda) from
vectorised envs, no replay buffer, no target network, LayerNorm.

Trains on one Atari game (ale-py's vector env) and writes runs/<run_name>/: TensorBoard logs of the returns, losses and
representation metrics, config.json, a checkpoint (Ctrl-C stops with one; the same command resumes) and done.json.
A short run to try, with the Hadamard representation (then: tensorboard --logdir runs):

    python pqn_atari_hadamard.py --hadamard --total-timesteps 10240 --run-name smoke
"""

import contextlib
import difflib
import fcntl
import io
import json
import math
import os
import random
import re
import shlex
import shutil
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Literal, Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim
import tyro
from ale_py import Action
from ale_py.env import AtariEnv
from ale_py.roms import get_all_rom_ids
from ale_py.vector_env import AtariVectorEnv
from torch.utils.tensorboard import SummaryWriter

import common_metrics


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the experiment's name: part of the default run name, and the model file's name (`<exp_name>.pt`)"""
    seed: int = 1
    """the seed of python's, numpy's and torch's random generators and of the envs"""
    torch_deterministic: bool = True
    """make cuDNN choose deterministic algorithms (`torch.backends.cudnn.deterministic`)"""
    cuda: bool = True
    """run on the GPU when there is one"""
    track: bool = False
    """log to Weights & Biases too (WANDB_MODE=offline works without a network); a resumed run goes on in its W&B run"""
    wandb_project_name: str = "hadamard-atari"
    """the W&B project that --track logs to"""
    wandb_entity: Optional[str] = None
    """the W&B user or team that --track logs as (None: W&B's default entity)"""
    capture_video: bool = False
    """evaluate after training and record the evaluation's games to `videos/<run_name>/`"""
    save_model: bool = False
    """after training, save the network to `runs/<run_name>/<exp_name>.pt`, then evaluate it (--eval-model saves nothing)"""
    eval_episodes: int = 10
    """the number of whole games an evaluation plays (after training with --save-model or --capture-video, or --eval-model)"""
    eval_epsilon: float = 0.05
    """the evaluation's epsilon: a random action with this probability, otherwise the greedy one"""
    eval_model: Optional[str] = None
    """evaluate this model file (`<exp_name>.pt` from --save-model, or a run's `checkpoint.pt`) instead of training"""
    run_name: Optional[str] = None
    """the run's folder under runs/ (None: `<env_id>__<exp_name>__<seed>__<unix time>`); the same name resumes the run"""
    checkpoint_interval: int = 500_000
    """write `runs/<run_name>/checkpoint.pt` every this many env steps (0: only on SIGTERM, SIGUSR1 or Ctrl-C)"""
    keep_checkpoint: bool = False
    """keep the checkpoint of the finished training (otherwise removed once done.json is written): a model file too"""

    # Environment
    env_id: str = "BreakoutNoFrameskip-v4"
    """the game: `<Game>NoFrameskip-v4`, `ALE/<Game>-v5` (sticky actions 0.25) or `<Game>-v5`, e.g. `PongNoFrameskip-v4`"""
    repeat_action_probability: Optional[float] = None
    """sticky actions: the chance that the emulator repeats the previous action (None: 0.25 for `ALE/` ids, else 0)"""
    env_threads: int = 0
    """the C++ threads that step the envs (0: one per env, up to the number of cores)"""
    fire_on_life_loss: bool = True
    """press FIRE on the step after a life loss in games that have it, as CleanRL's wrappers do (that step enters no loss)"""

    # Representation
    activation: Literal["tanh", "relu", "sigmoid", "gelu"] = "tanh"
    """the representation's activation (the conv layers' too with --hadamard-scope all); glu, swiglu, bilinear: their own"""
    hadamard: bool = False
    """the Hadamard representation: act(LN(W_a z)) * act(LN(W_b z)), the product of two independent layers (LN: layer norm)"""
    gate: Literal["hadamard", "glu", "swiglu", "bilinear"] = "hadamard"
    """--hadamard's product of layers a, b: act(a) * act(b), glu sigmoid(a) * b, swiglu swish(a) * b, bilinear a * b"""
    hadamard_scope: Literal["representation", "all"] = "representation"
    """`representation`: --activation and --hadamard apply to the 3136 -> 512 layer; `all`: to the conv layers too"""
    param_matched: bool = False
    """widen the plain representation to the Hadamard network's parameter count (HR's baseline of equal size)"""
    layer_norm: bool = True
    """LayerNorm on each hidden layer's pre-activation, as CleanRL's PQN (layer -> LayerNorm -> activation; HR: per branch)"""
    metrics_interval: int = 50_000
    """log the representation metrics (ranks, dead, dormant and saturated units) every this many env steps (0: never)"""
    metrics_batch_size: int = 1024
    """the number of the current rollout's states the metrics are computed on (all its valid ones when fewer)"""
    redo_interval: int = 0
    """ReDo (Sokar et al. 2023): recycle the dormant units every this many env steps, on the metrics' states (0: never)"""
    redo_tau: float = 0.025
    """ReDo's threshold: a unit whose dormant score is at most this is recycled (with --redo-rule dormant)"""
    redo_rule: Literal["dormant", "dead"] = "dormant"
    """the units ReDo recycles: `dormant` (score at most --redo-tau) or `dead` (no gradient through it on any state)"""
    redo_conv: bool = False
    """ReDo recycles the conv layers' channels too"""

    # Algorithm specific arguments
    total_timesteps: int = 10_000_000
    """the training budget in env steps (of 4 frames) over all envs, in whole iterations (PPO, PQN: rounded down; DQN: up)"""
    learning_rate: float = 2.5e-4
    """the optimizer's learning rate"""
    num_envs: int = 8
    """the number of games played in parallel (one vector env)"""
    num_steps: int = 128
    """the steps each env plays per rollout; a rollout's batch is num-envs x num-steps"""
    anneal_lr: bool = True
    """decay the learning rate linearly to 0 over the run"""
    gamma: float = 0.99
    """the discount factor"""
    num_minibatches: int = 4
    """the minibatches that each epoch splits the batch into (they must divide it)"""
    update_epochs: int = 4
    """the passes over each rollout's batch"""
    max_grad_norm: float = 10.0
    """clip the gradient to this global norm"""
    start_e: float = 1
    """exploration's epsilon at the start"""
    end_e: float = 0.01
    """exploration's epsilon at the end of its decay, and from then on"""
    exploration_fraction: float = 0.10
    """the fraction of --total-timesteps over which epsilon decays linearly from --start-e to --end-e"""
    q_lambda: float = 0.65
    """the lambda of the Q(lambda) returns"""
    compile: bool = False
    """compile the minibatch loss with torch.compile (the optimizer stays eager); the start takes longer"""

    # computed at start from the flags above: not flags (a value given would be overwritten); config.json records them
    batch_size: tyro.conf.Suppress[int] = 0
    """num-envs x num-steps (computed)"""
    minibatch_size: tyro.conf.Suppress[int] = 0
    """the batch over num-minibatches (computed)"""
    num_iterations: tyro.conf.Suppress[int] = 0
    """the run's rollouts: total-timesteps over the batch (computed)"""


# the Args fields the script computes: config.json holds them, but they are not flags
COMPUTED = {"batch_size", "minibatch_size", "num_iterations"}
ALGORITHM = "pqn"  # config.json's, model files' and checkpoints' name of the algorithm
SCRIPT = os.path.basename(__file__)
# the flags a model file fixes: --eval-model takes them from the file
MODEL_FLAGS = ("env_id", "activation", "hadamard", "hadamard_scope", "param_matched", "gate", "layer_norm")
# the model flags that came after the first model files: a file without one was trained with the flag's default
ADDED_MODEL_FLAGS = ("gate", "layer_norm")
# the env settings a model file holds: --eval-model evaluates with the training's unless these flags are given
MODEL_ENV_FLAGS = ("repeat_action_probability", "fire_on_life_loss")
# the flags an --eval-model run uses besides those: any other is training's, and refused there (it would do nothing)
EVAL_FLAGS = ("eval_model", "eval_episodes", "eval_epsilon", "capture_video", "save_model", "seed", "torch_deterministic")
EVAL_FLAGS += ("cuda", "track", "wandb_project_name", "wandb_entity", "run_name", "exp_name")
REPRESENTATION_WIDTH = 512  # the representation's units (--param-matched widens it)


# ----------------------------------------------------------------------------- run setup
def duration(seconds: float) -> str:
    """`h:mm:ss` for the progress line."""
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def fail(message: str):
    """Bad input: one clear line on stderr and a non-zero exit, before any output is written."""
    sys.exit(f"error: {message}")


def as_flag(name: str, value) -> str:
    """A setting as the command line gives it (`--learning-rate 0.001`; a bool: `--hadamard` or `--no-hadamard`), for the
    hints that tell which flags to give."""
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return flag if value else f"--no-{flag[2:]}"
    text = str(value)  # (a value with a leading '-' goes after '=': `--exp-name -x` would read -x as a flag)
    return f"{flag}={shlex.quote(text)}" if text.startswith("-") else f"{flag} {shlex.quote(text)}"


def parse_args() -> Args:
    """The flags. A flag that tyro rejects (unknown, a bad choice or type, a missing value) is one line on stderr with tyro's
    message and exit 2, not tyro's box of several lines; --help prints to stdout as tyro does."""
    if {"-h", "--help"} & set(sys.argv[1:]):
        return tyro.cli(Args, description=__doc__)
    box, columns = io.StringIO(), os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100000"  # tyro's box as wide as its text: no line of its message is wrapped
    try:
        with contextlib.redirect_stderr(box):
            args = tyro.cli(Args, description=__doc__)
        sys.stderr.write(box.getvalue())  # tyro's warnings, if any
        return args
    except SystemExit as exc:
        if not exc.code:
            raise
    finally:
        del os.environ["COLUMNS"]
        if columns is not None:
            os.environ["COLUMNS"] = columns
    # the box's sections are split by rules: tyro's message first; after an unknown flag, "Perhaps you meant:" and flags
    text = re.sub(r"\x1b\[[0-9;]*m", "", box.getvalue())  # (without colours)
    sections = [[]]
    for line in (line.strip().strip("│").strip() for line in text.splitlines() if line.strip().startswith("│")):
        if re.fullmatch("─+", line):
            sections.append([])
        else:
            sections[-1].append(line)
    message = " ".join(sections[0]) or " ".join(text.split()) or "the flags cannot be parsed"
    message = re.sub(r"^error:? ", "", message, flags=re.I)  # tyro's "Error parsing --seed: ..." after our "error: "
    meant = [
        line.split()[0].rstrip(",")
        for section in sections
        if section[:1] == ["Perhaps you meant:"]
        for line in section[1:]
        if line.startswith("-")
    ]
    if meant:
        message += f" (did you mean {', '.join(dict.fromkeys(meant[:3]))}?)"
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def check_args(args: Args):
    """Settings that cannot work together stop here, before anything is written."""
    for name in ("run_name", "exp_name"):  # a folder under runs/ (the default run name and the model file hold exp_name)
        value = getattr(args, name)
        if value is not None and (value in ("", ".", "..") or "/" in value or len(value.encode()) > 255):
            fail(f"--{name.replace('_', '-')} {value!r} is not one folder name (no '/', not '.' or '..', 255 bytes at most)")
    if not 0 <= args.seed < 2**31:
        fail(f"--seed must be in [0, 2**31 - 1] (the emulator's seeds), got {args.seed}")
    for name, value in asdict(args).items():
        if isinstance(value, float) and not math.isfinite(value):
            fail(f"--{name.replace('_', '-')} must be a finite number, got {value}")
    for name in ("num_envs", "total_timesteps", "metrics_batch_size"):
        if getattr(args, name) <= 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name in ("metrics_interval", "env_threads", "eval_episodes", "checkpoint_interval", "redo_interval"):
        if getattr(args, name) < 0:
            fail(f"--{name.replace('_', '-')} must be zero or positive, got {getattr(args, name)}")
    if args.eval_model is not None and args.eval_episodes == 0:
        fail("--eval-model needs --eval-episodes of at least 1")
    if args.capture_video and args.eval_episodes == 0:
        fail("--capture-video records the evaluation's games: it needs --eval-episodes of at least 1")
    evaluates = args.save_model or args.capture_video or args.eval_model is not None
    if not evaluates and args.eval_episodes != Args.eval_episodes:
        fail("--eval-episodes sets the evaluation that --save-model, --capture-video or --eval-model makes: give one of them")
    if args.repeat_action_probability is not None and not 0.0 <= args.repeat_action_probability <= 1.0:
        fail(f"--repeat-action-probability must be in [0, 1], got {args.repeat_action_probability}")
    if args.hadamard and args.param_matched:
        fail("--param-matched widens the plain representation to match --hadamard; use one or the other")
    if args.gate != "hadamard" and not args.hadamard:
        fail(f"--gate {args.gate} is a form of the two-branch representation: give it with --hadamard")
    if args.gate != "hadamard" and args.activation != Args.activation:
        activations = " and ".join(common_metrics.gate_activations(args.gate))
        fail(f"--gate {args.gate} has its own activations ({activations}): leave --activation out")
    if not 0.0 <= args.redo_tau <= 1.0:
        fail(f"--redo-tau must be in [0, 1], got {args.redo_tau}")
    if args.redo_interval == 0 and (args.redo_conv or args.redo_rule != Args.redo_rule or args.redo_tau != Args.redo_tau):
        fail("--redo-conv, --redo-rule and --redo-tau set ReDo, which --redo-interval turns on (0: off)")
    if args.metrics_interval == 0 and args.redo_interval == 0 and args.metrics_batch_size != Args.metrics_batch_size:
        fail("--metrics-batch-size sets the states of the metrics and ReDo: turn one on (--metrics-interval, --redo-interval)")
    if args.redo_rule == "dead" and args.redo_tau != Args.redo_tau:
        fail("--redo-tau is the dormant rule's threshold: --redo-rule dead takes none")
    if not args.track and (args.wandb_project_name, args.wandb_entity) != (Args.wandb_project_name, Args.wandb_entity):
        fail("--wandb-project-name and --wandb-entity name the W&B run of --track: give them with --track")
    # ALGO LOGIC: the algorithm's own flags
    for name in ("num_steps", "num_minibatches", "update_epochs"):
        if getattr(args, name) <= 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    batch_size = args.num_envs * args.num_steps
    if batch_size % args.num_minibatches:
        fail(f"--num-minibatches {args.num_minibatches} does not divide the batch of {batch_size} (num-envs x num-steps)")
    if args.total_timesteps < batch_size and args.eval_model is None:
        fail(f"--total-timesteps {args.total_timesteps} is less than one batch of {batch_size} (num-envs x num-steps)")
    if not 0.0 <= args.gamma <= 1.0 or not 0.0 <= args.q_lambda <= 1.0:
        fail(f"--gamma and --q-lambda must be in [0, 1], got {args.gamma} and {args.q_lambda}")
    if args.learning_rate <= 0 or args.max_grad_norm <= 0:
        fail(f"--learning-rate and --max-grad-norm must be positive, got {args.learning_rate} and {args.max_grad_norm}")
    for name in ("start_e", "end_e", "exploration_fraction", "eval_epsilon"):  # (a fraction past 1 never reaches --end-e)
        if not 0.0 <= getattr(args, name) <= 1.0:
            fail(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(args, name)}")
    if not evaluates and args.eval_epsilon != Args.eval_epsilon:
        fail("--eval-epsilon sets the evaluation that --save-model, --capture-video or --eval-model makes: give one of them")
    if args.start_e < args.end_e:  # linear_schedule would hold epsilon at --end-e from the first step
        fail(f"--start-e {args.start_e} is below --end-e {args.end_e}: epsilon decays from --start-e to --end-e")
    if args.exploration_fraction == 0 and args.start_e != Args.start_e:  # linear_schedule returns --end-e throughout
        fail("--start-e starts the decay that --exploration-fraction 0 leaves out (epsilon is --end-e from the first step)")


def inert_settings(args: Args) -> set:
    """The settings that do nothing in this command (given, check_args refuses them): a resume does not compare them, so
    that a run saved with one (before it was refused) resumes."""
    inert = {"metrics_batch_size"} if args.metrics_interval == args.redo_interval == 0 else set()
    return inert | ({"start_e"} if args.exploration_fraction == 0 else set())


# ----------------------------------------------------------------------------- environment
def parse_env_id(env_id: str, repeat_action_probability: Optional[float]) -> tuple[str, float]:
    """`BreakoutNoFrameskip-v4`, `ALE/Breakout-v5` or `Breakout-v5` -> (ALE ROM id, sticky-action probability). Other ids of
    a game (gymnasium's `Breakout-v4` skips 2-4 frames at random) are errors: the envs here would not be what they name."""
    match = re.fullmatch(r"(ALE/)?([A-Za-z0-9]+?)(NoFrameskip)?-v([0-9]+)", env_id)
    roms = {rom.replace("_", ""): rom for rom in get_all_rom_ids()}
    if match is None or match.group(2).lower() not in roms:
        names = ["".join(part.capitalize() for part in rom.split("_")) for rom in roms.values()]
        name = match.group(2) if match else env_id
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(f'{n}NoFrameskip-v4' for n in close)}?" if close else ""
        fail(
            f"unknown Atari game in env id {env_id!r} (expected e.g. BreakoutNoFrameskip-v4, ALE/Breakout-v5 "
            f"or Breakout-v5){hint}"
        )
    ale, game, no_frameskip, version = match.groups()
    if (ale, no_frameskip, version) not in ((None, "NoFrameskip", "4"), ("ALE/", None, "5"), (None, None, "5")):
        name = "".join(part.capitalize() for part in roms[game.lower()].split("_"))
        fail(f"unsupported env id {env_id!r}: use {name}NoFrameskip-v4, ALE/{name}-v5 (sticky actions 0.25) or {name}-v5")
    if repeat_action_probability is None:
        repeat_action_probability = 0.25 if ale else 0.0
    return roms[game.lower()], repeat_action_probability


def make_env(
    rom: str, num_envs: int, repeat_action_probability: float, num_threads: int = 0, noop_max: int = 30, **kwargs
) -> AtariVectorEnv:
    """Nature-DQN preprocessing in ale-py's C++ vector env: 30 noop starts, fire reset, frame skip 4 with
    max-pool, 84x84 grayscale, 4-frame stack. A life loss is `terminated` while the game goes on
    (`life_loss_info`); rewards stay raw so that episodic returns are game scores. `kwargs` go to the env (tests shorten
    games with `max_num_frames_per_episode`)."""
    return AtariVectorEnv(
        rom,
        num_envs,
        num_threads=num_threads,
        noop_max=noop_max,
        repeat_action_probability=repeat_action_probability,
        episodic_life=False,
        life_loss_info=True,
        reward_clipping=False,
        **kwargs,
    )


class FireReset(gym.Wrapper):
    """Press FIRE for one native frame after reset, as the vector env's `use_fire_reset` does."""

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        if "FIRE" in self.env.unwrapped.get_action_meanings():
            obs, _, _, _, info = self.env.step(self.env.unwrapped.get_action_meanings().index("FIRE"))
        return obs, info


def make_eval_env(
    rom: str, repeat_action_probability: float, noop_max: int = 30, video_folder: Optional[str] = None
) -> gym.Env:
    """One gymnasium env whose observations equal the vector env's (tests/test_ppo.py checks it), and that can
    render frames for `--capture-video`; an episode is a whole game."""
    env = AtariEnv(
        rom,
        frameskip=1,
        repeat_action_probability=repeat_action_probability,
        max_num_frames_per_episode=108_000,
        render_mode="rgb_array" if video_folder else None,
    )
    if video_folder:
        env = gym.wrappers.RecordVideo(env, video_folder, episode_trigger=lambda episode: True, fps=60)
    env = FireReset(env)
    env = gym.wrappers.AtariPreprocessing(env, noop_max=noop_max, frame_skip=4, screen_size=84, terminal_on_life_loss=False)
    return gym.wrappers.FrameStackObservation(env, 4, padding_type="zero")


class EpisodeStats:
    """Raw score and length in frames of each env's current game. With next-step autoreset, the env spends one
    step resetting after a game over or a truncation: the action is ignored and the episode frame counter
    restarts. That reset step ends the game's bookkeeping and enters no loss. A life loss is `terminated`
    for learning while the game goes on (and some games end with lives left), so lives cannot tell.
    The length counts emulator frames, noop starts included, as CleanRL's RecordEpisodeStatistics, which wraps
    the frame-level env."""

    def __init__(self, num_envs: int, info: dict):
        self.episode_frame = info["episode_frame_number"].copy()
        self.episode_return = np.zeros(num_envs)

    def step(self, reward: np.ndarray, info: dict):
        """Account one env step; returns the reset-step mask and (env, return, length in frames) of each finished game."""
        reset_step = info["episode_frame_number"] < self.episode_frame
        finished = [(i, self.episode_return[i], int(self.episode_frame[i])) for i in np.flatnonzero(reset_step)]
        self.episode_frame = info["episode_frame_number"].copy()
        self.episode_return[reset_step] = 0.0
        self.episode_return += reward
        return reset_step, finished


class FireOnLifeLoss:
    """CleanRL's semantics after a life loss: Baselines' EpisodicLifeEnv then FireResetEnv press FIRE at every reset,
    and a life loss is a reset there, so the ball is relaunched for the agent. ale-py presses FIRE only when a whole
    game starts. With `fire` (the FIRE action's index; None: off, or a game without FIRE) the step after a life loss
    that leaves the game going gets FIRE whatever the policy chose; that forced step is not the policy's choice and
    the caller keeps it out of every loss, like the reset step."""

    def __init__(self, fire: Optional[int], lives: np.ndarray):
        self.fire, self.lives = fire, np.array(lives)
        self.pending = np.zeros(len(self.lives), dtype=bool)

    def actions(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The actions to send and the mask of forced steps."""
        forced = self.pending
        return (np.where(forced, self.fire, actions) if forced.any() else actions), forced

    def step(self, lives: np.ndarray):
        """After a step: a life lost with lives left forces FIRE next (at a game over the next step is the reset step)."""
        lives = np.array(lives)
        self.pending = (lives < self.lives) & (lives > 0) & (self.fire is not None)
        self.lives = lives


def fire_action(envs: AtariVectorEnv, enabled: bool) -> Optional[int]:
    """The index of FIRE in the game's (minimal) action set, or None when off or the game has no FIRE."""
    action_set = list(envs.ale.get_action_set())
    return action_set.index(Action.FIRE) if enabled and Action.FIRE in action_set else None


# ----------------------------------------------------------------------------- network
def layer_init(layer, std=np.sqrt(2), bias_const=0.0, generator=None):
    torch.nn.init.orthogonal_(layer.weight, std, generator=generator)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


# the representation's activations (--activation), and those of the gates' branches: swish, and identity (a linear factor)
ACTIVATIONS = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "swish": nn.SiLU,
    "identity": nn.Identity,
}


class Hadamard(nn.Module):
    """A two-branch layer, branch_a(x) * branch_b(x): the element-wise product of two independently initialised branches,
    each a layer through its activation. The Hadamard representation has --activation in both; the other gates (--gate) a
    pair of their own: glu sigmoid and identity, swiglu swish and identity, bilinear identity and identity."""

    def __init__(self, branch_a: nn.Module, branch_b: nn.Module):
        super().__init__()
        self.branch_a, self.branch_b = branch_a, branch_b

    def forward(self, x):
        return self.branch_a(x) * self.branch_b(x)


def hidden_layer(make_linear, norm_shape, activation: str, hadamard: bool, gate: str, layer_norm: bool) -> nn.Module:
    """Linear/conv -> LayerNorm (with `layer_norm`) -> activation; with `hadamard` two such branches multiplied, through
    the gate's activations (each branch normalised on its own)."""

    def branch(branch_activation: str):
        norm = [nn.LayerNorm(norm_shape)] if layer_norm else []
        return nn.Sequential(layer_init(make_linear()), *norm, ACTIVATIONS[branch_activation]())

    if not hadamard:
        return branch(activation)
    activation_a, activation_b = common_metrics.gate_activations(gate, activation)
    return Hadamard(branch(activation_a), branch(activation_b))  # branch a draws its initial weights first


class QNetwork(nn.Module):
    """CleanRL's PQN network (LayerNorm after every hidden layer, unless --no-layer-norm); the representation `fc` is
    3136 -> width."""

    def __init__(
        self,
        num_actions: int,
        activation: str = "tanh",
        hadamard: bool = False,
        hadamard_scope: str = "representation",
        width: int = REPRESENTATION_WIDTH,
        gate: str = "hadamard",
        layer_norm: bool = True,
    ):
        super().__init__()
        conv_act = activation if hadamard_scope == "all" else "relu"
        conv_hr = hadamard and hadamard_scope == "all"
        self.conv1 = hidden_layer(lambda: nn.Conv2d(4, 32, 8, stride=4), [32, 20, 20], conv_act, conv_hr, gate, layer_norm)
        self.conv2 = hidden_layer(lambda: nn.Conv2d(32, 64, 4, stride=2), [64, 9, 9], conv_act, conv_hr, gate, layer_norm)
        self.conv3 = hidden_layer(lambda: nn.Conv2d(64, 64, 3, stride=1), [64, 7, 7], conv_act, conv_hr, gate, layer_norm)
        self.fc = hidden_layer(lambda: nn.Linear(3136, width), width, activation, hadamard, gate, layer_norm)
        self.q = layer_init(nn.Linear(width, num_actions))

    def forward(self, x):
        x = x.float() / 255.0
        x = self.conv3(self.conv2(self.conv1(x)))
        return self.q(self.fc(x.flatten(1)))

    def hidden_layers(self) -> dict:
        """The hidden layers for `common_metrics.probe`: a two-branch module (HR or a gate) or a plain layer's activation."""
        return {
            name: (m if isinstance(m, Hadamard) else m[-1])
            for name in ("conv1", "conv2", "conv3", "fc")
            for m in [getattr(self, name)]
        }


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def redo_layers(q_network: QNetwork, conv: bool) -> dict[str, tuple[list, list]]:
    """The layers ReDo recycles, by the metrics' names (`conv`: the conv layers too), each as `common_metrics.redo` takes
    it: (the branches making its units, the layers its units feed: the next layer's first layer, in each branch). An HR
    unit is the product of both branches' unit."""

    def branches(layer):
        return [layer.branch_a, layer.branch_b] if isinstance(layer, Hadamard) else [layer]

    names = ("conv1", "conv2", "conv3", "fc")
    feeds = {name: [branch[0] for branch in branches(getattr(q_network, after))] for name, after in zip(names, names[1:])}
    feeds["fc"] = [q_network.q]
    return {name: (branches(getattr(q_network, name)), feeds[name]) for name in (names if conv else ("fc",))}


def representation_width(
    param_matched: bool,
    num_actions: int,
    activation: str = "tanh",
    hadamard_scope: str = "representation",
    layer_norm: bool = True,
) -> int:
    """512 units, or for `--param-matched` the plain width whose network has the parameter count closest to the HR
    network's."""
    if not param_matched:
        return REPRESENTATION_WIDTH

    def count(hadamard: bool, width: int) -> int:
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            return num_parameters(QNetwork(num_actions, activation, hadamard, hadamard_scope, width, layer_norm=layer_norm))

    base = count(False, REPRESENTATION_WIDTH)
    per_unit = count(False, REPRESENTATION_WIDTH + 1) - base
    return REPRESENTATION_WIDTH + round((count(True, REPRESENTATION_WIDTH) - base) / per_unit)


def variant_name(args) -> str:
    """The variant's name in config.json and in the sweep's run names: the activation, then `_hr` (--hadamard), or a
    gate's name alone (`glu`: its activations are its own); then `_all` (--hadamard-scope all), `_pm` (--param-matched)
    `_noln` (--no-layer-norm) and `_redo` (--redo-interval above 0)."""
    representation = (args.activation + ("_hr" if args.hadamard else "")) if args.gate == "hadamard" else args.gate
    return (
        representation
        + ("_all" if args.hadamard_scope == "all" else "")
        + ("_pm" if args.param_matched else "")
        + ("" if args.layer_norm else "_noln")
        + ("_redo" if args.redo_interval > 0 else "")
    )


# ----------------------------------------------------------------------------- algorithm
def linear_schedule(start_e: float, end_e: float, duration: float, t: int) -> float:
    if duration <= 0:
        return end_e
    slope = (end_e - start_e) / duration
    return max(slope * t + start_e, end_e)


def epsilon_greedy(q_values: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Per-env epsilon-greedy actions, on the device of `q_values` (no Python loop)."""
    n, num_actions = q_values.shape
    random_actions = torch.randint(0, num_actions, (n,), device=q_values.device)
    explore = torch.rand(n, device=q_values.device) < epsilon
    return torch.where(explore, random_actions, q_values.argmax(dim=1))


def q_lambda_returns(
    rewards: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    valid: torch.Tensor,
    next_max_q: torch.Tensor,
    gamma: float,
    q_lambda: float,
) -> torch.Tensor:
    """Q(lambda) targets of a rollout, computed backwards; `T x N` tensors.

    Transition t goes from obs[t] by action[t] to obs[t+1] with reward rewards[t] (clipped);
    next_max_q[t] = max_a Q(obs[t+1]) (for the last step, of the observation after the rollout).
    valid[t] is False on a reset step (the step after game over or truncation: its action is ignored and
    it must never enter a target); such steps get a target of 0 and the caller masks them out of the loss.
        G[t] = r[t]                                                                  if terminated[t]
        G[t] = r[t] + gamma * max_a Q(obs[t+1])                                      if truncated[t], or t = T-1
        G[t] = r[t] + gamma * (lambda * G[t+1] + (1 - lambda) * max_a Q(obs[t+1]))  otherwise
    A life loss is terminated (the game goes on, the next step is valid); truncation bootstraps.
    """
    num_steps = rewards.shape[0]
    returns = torch.zeros_like(rewards)
    nonterminal = 1.0 - terminated.float()
    valid_f = valid.float()
    next_return = torch.zeros_like(rewards[0])
    for t in reversed(range(num_steps)):
        if t == num_steps - 1:
            cont = torch.zeros_like(rewards[t])
        else:
            # continue the lambda-return only into a valid next transition of the same game
            cont = (1.0 - truncated[t].float()) * valid_f[t + 1]
        bootstrap = cont * (q_lambda * next_return + (1.0 - q_lambda) * next_max_q[t]) + (1.0 - cont) * next_max_q[t]
        returns[t] = valid_f[t] * (rewards[t] + gamma * nonterminal[t] * bootstrap)
        next_return = returns[t]
    return returns


def q_loss(q_network: nn.Module, obs: torch.Tensor, actions: torch.Tensor, returns: torch.Tensor, valid: torch.Tensor):
    """Squared TD error of Q(obs, action) against the Q(lambda) returns, averaged over valid transitions (autoreset
    steps carry none: masked out). Returns (loss, Q(obs, action)). With `--compile` this is what torch.compile compiles."""
    old_val = q_network(obs).gather(1, actions.unsqueeze(-1)).squeeze(-1)
    loss = (valid * (returns - old_val) ** 2).sum() / valid.sum().clamp(min=1.0)
    return loss, old_val


# ----------------------------------------------------------------------------- models and evaluation
def model_state(args: Args, q_network: QNetwork, num_actions: int) -> dict:
    """What a model file holds (`--save-model`, read by `--eval-model`); every checkpoint holds it too."""
    return {
        "algorithm": ALGORITHM,
        "args": asdict(args),
        "num_actions": num_actions,
        "representation_width": q_network.q.in_features,
        "state_dict": q_network.state_dict(),
    }


def load_model(path: str) -> dict:
    """A model file written by `--save-model` of this script (or a checkpoint of it), read with weights_only=True; anything
    else is a clear error."""
    if os.path.isdir(path):
        fail(f"{path} is a folder, not a model file: give the one in it (<exp_name>.pt from --save-model, or checkpoint.pt)")
    if not os.path.isfile(path):
        fail(f"model file not found: {path}")
    try:
        # mmap: what the network does not need is never read into memory (DQN's checkpoints hold a replay buffer of 7 GB)
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        fail(f"cannot read model file {path}: not a PyTorch state file ({type(exc).__name__})")
    if not isinstance(checkpoint, dict) or checkpoint.get("algorithm") != ALGORITHM:
        found = checkpoint.get("algorithm") if isinstance(checkpoint, dict) else type(checkpoint).__name__
        fail(f"model file {path} is not a {ALGORITHM.upper()} model of {SCRIPT} (found {found!r})")
    saved = checkpoint.get("args")
    missing = [key for key in ("num_actions", "representation_width", "state_dict") if key not in checkpoint]
    missing += [
        f"args.{key}"
        for key in MODEL_FLAGS
        if not isinstance(saved, dict) or (key not in saved and key not in ADDED_MODEL_FLAGS)
    ]
    if missing:
        fail(f"model file {path} lacks {', '.join(missing)}: not written by {SCRIPT} --save-model")
    for key in ADDED_MODEL_FLAGS:  # a file written before the flag existed: its network is the flag's default
        saved.setdefault(key, getattr(Args, key))
    return checkpoint


def build_network(checkpoint: dict, device) -> nn.Module:
    """The network a model file describes, with its weights; a shape mismatch is a clear error."""
    saved, width = checkpoint["args"], checkpoint["representation_width"]
    network = QNetwork(
        checkpoint["num_actions"],
        saved["activation"],
        saved["hadamard"],
        saved["hadamard_scope"],
        width,
        saved["gate"],
        saved["layer_norm"],
    )
    try:
        network.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as exc:
        fail(f"model file does not fit the network it describes: {str(exc).splitlines()[0]}")
    return network.to(device)


def evaluate(
    q_network: QNetwork, args: Args, rom: str, repeat_action_probability: float, device, fire: Optional[int], video_folder=None
):
    """Play --eval-episodes whole games with the epsilon-greedy policy at --eval-epsilon (FIRE forced after a life loss as
    in training, `fire`); return their raw scores."""
    env = make_eval_env(rom, repeat_action_probability, video_folder=video_folder)
    torch.manual_seed(args.seed)  # the same model and seed play the same games, in training's run and in --eval-model's
    returns, episode_return = [], 0.0
    obs, info = env.reset(seed=args.seed)
    fire_on_life_loss = FireOnLifeLoss(fire, [info["lives"]])
    while len(returns) < args.eval_episodes:
        with torch.no_grad():
            action = epsilon_greedy(q_network(torch.as_tensor(np.asarray(obs), device=device)[None]), args.eval_epsilon)
        obs, reward, terminated, truncated, info = env.step(int(fire_on_life_loss.actions(action.cpu().numpy())[0][0]))
        fire_on_life_loss.step([info["lives"]])
        episode_return += reward
        if terminated or truncated:
            returns.append(float(episode_return))
            episode_return = 0.0
            if len(returns) < args.eval_episodes:  # no trailing reset: it would start an empty video
                obs, info = env.reset()
                fire_on_life_loss.step([info["lives"]])
    env.close()
    return returns


# ----------------------------------------------------------------------------- what a checkpoint holds
# what restore() and the resumed loop read from a checkpoint (checked before anything is written)
RESUME_KEYS = {"args", "state_dict", "optimizer", "rng", "probe_generator"}  # the network, the optimizer, the generators
RESUME_KEYS |= {"global_step", "iteration", "next_probe_step", "recent_returns", "elapsed", "resumes", "event_files"}
# ReDo's generator and next step are saved too; a checkpoint written before ReDo existed has neither (it ran without)


def restore(
    resume: dict,
    q_network: QNetwork,
    optimizer: optim.Optimizer,
    probe_generator: torch.Generator,
    redo_generator: torch.Generator,
):
    """The network, the optimizer and every random generator as the checkpoint holds them."""
    q_network.load_state_dict(resume["state_dict"])
    optimizer.load_state_dict(resume["optimizer"])
    probe_generator.set_state(resume["probe_generator"])
    if "redo_generator" in resume:
        redo_generator.set_state(resume["redo_generator"])
    set_rng_states(resume["rng"])


# ----------------------------------------------------------------------------- checkpoints and interrupts
CHECKPOINT = "checkpoint.pt"
STARTS = "starts.log"  # one line per start of the run; its lock keeps a second process out of the run folder
# flags that may change when a run resumes: they change where and how it runs, not what it learns (--run-name is the folder
# itself: a checkpoint of a run started without it holds None); a flag the script lacks is ignored
RESUME_MAY_CHANGE = {"cuda", "env_threads", "compile", "track", "wandb_project_name", "wandb_entity", "run_name"}
RESUME_MAY_CHANGE |= {"capture_video", "save_model", "eval_episodes", "eval_epsilon"}  # the evaluation after training
RESUME_MAY_CHANGE |= {"checkpoint_interval", "keep_checkpoint", "checkpoint_buffer"}  # the checkpoints (DQN's buffer in them)


class Interrupts:
    """SIGTERM and SIGUSR1 (what Slurm sends before a time limit or a preemption) and Ctrl-C ask the training loop to
    stop at the end of the current iteration (PPO and PQN: a rollout and its update; DQN: one env step), write a
    checkpoint and exit. A second Ctrl-C exits at once (the last
    checkpoint stays). Once `exit_line` is set (the evaluation after training, which has its checkpoint) any of them
    prints it and exits at once."""

    def __init__(self):
        self.signum, self.ctrl_c, self.exit_line = None, 0, None
        for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            signal.signal(signum, self.handle)

    def handle(self, signum, frame):
        self.ctrl_c += signum == signal.SIGINT
        if self.exit_line is not None or self.ctrl_c > 1:
            print(self.exit_line or "interrupted again: exiting at once, without a checkpoint", flush=True)
            os._exit(128 + signum)
        self.signum = self.signum or signum


def checkpoint_due(global_step: int, steps: int, interval: int) -> bool:
    """Whether the last `steps` environment steps crossed a multiple of `interval` (0: never)."""
    return interval > 0 and global_step // interval > (global_step - steps) // interval


def rng_states() -> dict:
    """Every global random generator (python, numpy, torch CPU and CUDA) as values torch.load(weights_only=True) reads."""
    name, keys, *rest = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), *rest),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def cuda_rng_states_that_fit(saved: list, visible: int, current: int) -> dict:
    """{device index: saved CUDA generator state} to restore where `visible` GPUs are: each visible device that has a saved
    state (a checkpoint written where more GPUs were visible gives its first ones), and always the current device, the
    run's (the first saved state if the checkpoint has none of its index). Nothing when the checkpoint was written on a CPU."""
    fit = dict(enumerate(saved[:visible]))
    if saved and visible and current not in fit:
        fit[current] = saved[0]
    return fit


def set_rng_states(states: dict):
    random.setstate(states["python"])
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(states["torch"])
    if torch.cuda.is_available():  # a run moved from CPU to CUDA keeps CUDA's seeded start
        fit = cuda_rng_states_that_fit(states["cuda"], torch.cuda.device_count(), torch.cuda.current_device())
        for index, state in fit.items():
            torch.cuda.set_rng_state(state, index)


def process_start_time() -> float:
    """When this process started (Linux: from /proc, so that Python's start-up and imports count; elsewhere: now)."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime, counted after the command name
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - uptime + start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.time()


def free_space(path: str) -> str:
    return f"{shutil.disk_usage(path).free / 2**20:,.1f} MiB free on its disk"


def open_writer(run_dir: str) -> SummaryWriter:
    """The run's TensorBoard writer; a file that cannot be written (a full disk, say) is one line. The writer's thread
    raises its error here too: its own traceback is kept quiet."""
    thread_hook, threading.excepthook = threading.excepthook, lambda hook_args: None
    try:
        writer = SummaryWriter(run_dir)
    except OSError as exc:
        fail(f"cannot write the TensorBoard events in {run_dir} ({exc}): {free_space(run_dir)}")
    threading.excepthook = thread_hook
    return writer


def folder_state(run_dir: str) -> dict:
    """The size and time of the files that decide how a command starts in `run_dir`."""
    paths = [os.path.join(run_dir, name) for name in ("config.json", CHECKPOINT, "done.json")]
    return {path: (os.stat(path).st_size, os.stat(path).st_mtime_ns) for path in paths if os.path.isfile(path)}


def own_run_folder(run_dir: str, checked: dict, note: str):
    """Make this process the only writer of `run_dir` for its life: an exclusive lock on the folder's starts.log, to which
    this start's line (`note`) is appended. A folder another process holds, or one changed since it was `checked` (by a
    process that ended meanwhile), is one line and an exit, with nothing written. Returns the open log (the lock lasts
    while it is open) and the number of starts it records, this one included."""
    try:
        os.makedirs(run_dir, exist_ok=True)
        log = open(os.path.join(run_dir, STARTS), "a+")
    except OSError as exc:
        fail(f"cannot write to {run_dir} ({exc})")
    try:
        fcntl.flock(log, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.seek(0)
        holder = (log.read().splitlines() or ["not logged yet"])[-1]
        fail(f"{run_dir} is in use by another process (its start: {holder}): wait for it to end, or give another --run-name")
    except OSError as exc:  # a file system without locks
        print(
            f"warning: cannot lock {log.name} ({exc}): make sure that no other process writes {run_dir}",
            file=sys.stderr,
            flush=True,
        )
    if folder_state(run_dir) != checked:
        fail(f"{run_dir} changed while this command started (another process wrote it meanwhile): run the command again")
    try:
        log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S %z')} pid {os.getpid()} on {os.uname().nodename}: {note}\n")
        log.flush()
    except OSError as exc:
        fail(f"cannot write to {run_dir} ({exc}): {free_space(run_dir)}")
    log.seek(0)
    return log, len(log.read().splitlines())


def save_checkpoint(path: str, state: dict, writer: SummaryWriter, on_signal: bool) -> bool:
    """Write `state` atomically: to a temporary file, flushed to disk, then renamed over the previous checkpoint, so that
    a crash mid-write leaves that one intact. The TensorBoard events logged so far are flushed first and the sizes of
    their files recorded: a resumed run cuts the files back to them, dropping what was logged after the checkpoint.
    A write that fails (a full disk, say) leaves the previous checkpoint too: on a signal that is one line and an exit;
    otherwise a warning, and the run goes on (the next interval tries again). Returns whether the checkpoint was written."""
    writer.flush()
    run_dir = os.path.dirname(path)
    state["event_files"] = {
        name: os.path.getsize(os.path.join(run_dir, name))
        for name in os.listdir(run_dir)
        if name.startswith("events.out.tfevents.")
    }
    try:
        torch.save(state, path + ".tmp")
        with open(path + ".tmp", "rb+") as f:
            os.fsync(f.fileno())
        os.replace(path + ".tmp", path)
    except (OSError, RuntimeError) as exc:  # torch says "unexpected pos" where the disk is full
        written = os.path.getsize(path + ".tmp") if os.path.isfile(path + ".tmp") else 0
        if os.path.isfile(path + ".tmp"):
            os.remove(path + ".tmp")
        if os.path.isfile(path):
            needed = f"about {os.path.getsize(path) / 2**20:,.1f} MiB (the previous one's size) next to the previous one"
        else:
            needed = f"more than the {written / 2**20:,.1f} MiB written before it failed"
        message = (
            f"cannot write checkpoint {path} ({type(exc).__name__}: {str(exc).strip().splitlines()[0]}): "
            f"it needs {needed}, {free_space(run_dir)}; the previous one, if any, stays"
        )
        if on_signal:  # exit at once, as a second Ctrl-C does (a SystemExit from here adds ale-py's leak report to the line)
            sys.stdout.flush()
            print(f"error: {message}", file=sys.stderr, flush=True)
            os._exit(1)
        print(f"warning: {message}; training goes on and tries again at the next checkpoint", file=sys.stderr, flush=True)
        return False
    try:
        dir_fd = os.open(run_dir, os.O_RDONLY)
        os.fsync(dir_fd)  # the rename itself survives a crash
        os.close(dir_fd)
    except OSError:  # some network file systems cannot sync a folder
        pass
    return True


def cut_events(run_dir: str, sizes: dict):
    """Cut the run's TensorBoard event files back to `sizes` (a checkpoint's); files begun after it are removed."""
    for name in os.listdir(run_dir):
        path = os.path.join(run_dir, name)
        if name.startswith("events.out.tfevents.") and name not in sizes:
            os.remove(path)
        elif name in sizes and os.path.getsize(path) > sizes[name]:
            os.truncate(path, sizes[name])


def check_resume(run_dir: str, args: Args) -> tuple[Optional[dict], dict]:
    """Before anything is written: the checkpoint to resume `run_dir` from (None: start it from step 0) and the run's
    saved config.json ({} if none). One clear line when the run there is finished, is not a training run of this script, was
    started with other settings, or has a checkpoint that cannot be read (then nothing there is touched)."""
    if not os.path.isdir(run_dir):
        return None, {}
    if os.path.exists(os.path.join(run_dir, "done.json")):
        fail(f"{run_dir} holds a finished run (done.json): give another --run-name, or remove the folder to train it again")
    saved, resume = {}, None
    if os.path.isfile(os.path.join(run_dir, "config.json")):
        try:
            with open(os.path.join(run_dir, "config.json")) as f:
                saved = json.load(f)
        except (OSError, ValueError) as exc:
            fail(f"cannot read {os.path.join(run_dir, 'config.json')} ({type(exc).__name__}); the run there is left as it is")
    path = os.path.join(run_dir, CHECKPOINT)
    if os.path.isfile(path):
        try:
            resume = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            fail(
                f"cannot read checkpoint {path} ({type(exc).__name__}: truncated or not a checkpoint); the run is left "
                "as it is: remove the file to train the run again from step 0"
            )
        if not isinstance(resume, dict) or not isinstance(resume.get("args"), dict):
            fail(f"{path} is not a checkpoint of {SCRIPT}; the run is left as it is")
        saved = {**saved, **resume["args"], "algorithm": resume.get("algorithm")}
    if saved and (saved.get("algorithm") != ALGORITHM or saved.get("eval_only")):
        what = "an --eval-model run" if saved.get("eval_only") else f"a {saved.get('algorithm')} run"
        fail(f"{run_dir} holds {what}, not a training run of {SCRIPT}: give another --run-name")
    missing = sorted(RESUME_KEYS - resume.keys()) if resume is not None else []
    if missing:
        fail(f"{path} is not a checkpoint of {SCRIPT} (it lacks {', '.join(missing)}); the run is left as it is")
    differ = [  # (a setting that does nothing in this command is not compared: a run saved with it resumes)
        key
        for key, value in asdict(args).items()
        if key in saved and key not in RESUME_MAY_CHANGE | COMPUTED | inert_settings(args) and saved[key] != value
    ]
    if differ:
        found = ", ".join(f"{as_flag(key, saved[key])} (this command: {as_flag(key, getattr(args, key))})" for key in differ)
        own = " ".join(as_flag(key, saved[key]) for key in differ)
        fail(
            f"{run_dir} holds a run with other settings: {found}; resume it with its own (the same command with {own} "
            "added) or give another --run-name"
        )
    moved = [  # a W&B run resumed elsewhere would hold only the steps from here on
        as_flag(key, saved[key])
        for key in ("wandb_project_name", "wandb_entity")
        if args.track and saved.get("wandb_id") and key in saved and saved[key] != getattr(args, key)
    ]
    if moved:
        fail(f"{run_dir}'s W&B run is in {', '.join(moved)}: resume it with the same W&B names")
    return resume, saved


def check_checkpoint(resume: dict, path: str, optimizer: optim.Optimizer, **networks: nn.Module):
    """Before anything is written: the checkpoint's state dicts load into the networks (by their key in it) and the optimizer
    built from this command's flags, and its generator states (the global ones, ReDo's) are valid (set, then put back). A
    misfit (a checkpoint of another version of the network, say) is one line, the run left as it is."""
    generators = rng_states()
    try:
        for key, network in networks.items():
            network.load_state_dict(resume[key])
        optimizer.load_state_dict(resume["optimizer"])
        for param in (param for group in optimizer.param_groups for param in group["params"]):
            for name, value in optimizer.state.get(param, {}).items():  # load_state_dict leaves their shapes unchecked
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape:
                    raise ValueError(
                        f"optimizer state {name} of shape {tuple(value.shape)} for a parameter of shape {tuple(param.shape)}"
                    )
        set_rng_states(resume["rng"])
        torch.Generator().set_state(resume.get("redo_generator", torch.Generator().get_state()))
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as exc:
        # load_state_dict's first line is a heading, its second the first misfit
        detail = " ".join(line.strip() for line in str(exc).strip().splitlines()[:2])
        fail(
            f"checkpoint {path} does not fit the network and optimizer of this command ({type(exc).__name__}: {detail}); "
            "the run is left as it is"
        )
    finally:
        set_rng_states(generators)


def env_seed(seed: int, global_step: int) -> int:
    """The envs' seed: --seed at the start; a resumed run starts new games from a seed derived from --seed and the step."""
    return seed if global_step == 0 else int(np.random.SeedSequence([seed, global_step]).generate_state(1)[0] >> 1)


if __name__ == "__main__":
    # ----------------------------------------------------------------------------- the run: flags, folder, seeding, envs
    args = parse_args()
    interrupts = Interrupts()  # from here on a signal stops the run at the end of an iteration, with a checkpoint
    check_args(args)
    model_file = load_model(args.eval_model) if args.eval_model else None
    if model_file is not None:  # evaluate the saved model on the game and network it was trained with
        # the flags given on the command line (`--no-hadamard` gives --hadamard): one left out takes the model's value
        given = {re.sub("^no-", "", a[2:].split("=")[0].replace("_", "-")) for a in sys.argv[1:] if a.startswith("--")}
        training = given - {key.replace("_", "-") for key in (*EVAL_FLAGS, *MODEL_FLAGS, *MODEL_ENV_FLAGS)}
        if training:
            flags = ", ".join(f"--{flag}" for flag in sorted(training))
            fail(f"--eval-model trains nothing: {flags} would do nothing; leave them out")
        for key in MODEL_FLAGS:
            saved, flag = model_file["args"][key], "--" + key.replace("_", "-")
            if flag[2:] in given and getattr(args, key) != saved:  # (a flag left out is at its default)
                was, now = (saved, args.env_id) if key == "env_id" else (as_flag(key, saved), as_flag(key, getattr(args, key)))
                fail(
                    f"model file {args.eval_model} was trained {'on' if key == 'env_id' else 'with'} {was}, not {now}; leave "
                    f"{flag} out to evaluate it as it was trained"
                )
            setattr(args, key, saved)
        for key in MODEL_ENV_FLAGS:  # (a file written before the flag existed was trained at the flag's default)
            if key.replace("_", "-") not in given:
                setattr(args, key, model_file["args"].get(key, getattr(Args, key)))
    rom, repeat_action_probability = parse_env_id(args.env_id, args.repeat_action_probability)
    if args.track:
        try:
            import wandb
        except ImportError:
            fail("--track needs wandb: pip install wandb")
    variant = variant_name(args)
    # one folder under runs/: ALE/Breakout-v5 runs are ALE-Breakout-v5__..., as benchmark.sh names them
    run_name = args.run_name or f"{args.env_id.replace('/', '-')}__{args.exp_name}__{args.seed}__{int(time.time())}"
    run_dir = os.path.join("runs", run_name)
    checkpoint_path = os.path.join(run_dir, CHECKPOINT)
    # the same --run-name again resumes the run from its checkpoint
    resume_hint = (
        "run the same command to resume" if args.run_name else f"run the same command with --run-name {run_name} to resume"
    )
    if model_file is not None and os.path.exists(os.path.join(run_dir, "config.json")):
        fail(f"{run_dir} holds another run: give the evaluation another --run-name")
    checked = folder_state(run_dir)  # the folder is taken (own_run_folder) only once every check has passed
    resume, saved_config = check_resume(run_dir, args) if model_file is None else (None, {})

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    envs = make_env(rom, args.num_envs, repeat_action_probability, args.env_threads)
    num_actions = int(envs.single_action_space.n)
    fire = fire_action(envs, args.fire_on_life_loss)
    if model_file is not None and model_file["num_actions"] != num_actions:
        fail(f"model file has {model_file['num_actions']} actions but {args.env_id} has {num_actions}")

    # ----------------------------------------------------------------------------- network and optimizer
    args.batch_size = int(args.num_envs * args.num_steps)
    args.minibatch_size = int(args.batch_size // args.num_minibatches)
    args.num_iterations = args.total_timesteps // args.batch_size
    if model_file is not None:
        q_network, width = build_network(model_file, device), model_file["representation_width"]
    else:
        width = representation_width(args.param_matched, num_actions, args.activation, args.hadamard_scope, args.layer_norm)
        q_network = QNetwork(
            num_actions, args.activation, args.hadamard, args.hadamard_scope, width, args.gate, args.layer_norm
        ).to(device)
        optimizer = optim.RAdam(q_network.parameters(), lr=args.learning_rate)
        if resume is not None:
            check_checkpoint(resume, checkpoint_path, optimizer, state_dict=q_network)
    n_params = num_parameters(q_network)

    # ----------------------------------------------------------------------------- outputs (nothing is written before)
    print(f"{run_name}: {variant} representation, {n_params:,} parameters, device {device}")
    start_note = (
        f"evaluate {args.eval_model}"
        if model_file is not None
        else f"resume from step {resume['global_step']}"
        if resume is not None
        else "start"
    )
    starts_log, starts = own_run_folder(run_dir, checked, start_note)
    if os.path.exists(checkpoint_path + ".tmp"):  # left by a process killed while it wrote a checkpoint
        os.remove(checkpoint_path + ".tmp")
    if resume is not None:
        cut_events(run_dir, resume["event_files"])  # what the interrupted run logged after its checkpoint goes
    elif saved_config:
        cut_events(run_dir, {})
        print(f"{run_dir} holds no checkpoint: training it again from step 0")
    wandb_id = saved_config.get("wandb_id") or (os.urandom(4).hex() if args.track else None)  # a resumed run: its W&B run
    if resume is not None and args.track and not saved_config.get("wandb_id"):
        print(f"--track from step {resume['global_step']} on: a new W&B run (the run was not tracked before)")
    config = {
        **asdict(args),
        "algorithm": ALGORITHM,
        "variant": variant,
        "num_parameters": n_params,
        "representation_width": width,
        "run_name": run_name,
        "device": str(device),
        "eval_only": model_file is not None,
        "wandb_id": wandb_id,
        "sticky_action_probability": repeat_action_probability,  # the one used (--repeat-action-probability may be None)
    }
    try:
        with open(os.path.join(run_dir, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
    except OSError as exc:  # a full disk, say
        fail(f"cannot write {os.path.join(run_dir, 'config.json')} ({exc}): {free_space(run_dir)}")
    if args.track:
        wandb.init(
            project=args.wandb_project_name,
            entity=args.wandb_entity,
            sync_tensorboard=True,
            config=config,
            name=run_name,
            save_code=True,
            dir=run_dir,
            id=wandb_id,
            resume="allow",
        )
    writer = open_writer(run_dir)
    if resume is None:
        writer.add_text(
            "hyperparameters",
            "|param|value|\n|-|-|\n%s" % ("\n".join([f"|{key}|{value}|" for key, value in config.items()])),
        )
    global_step, start_time, elapsed_before, resumes = 0, time.time(), 0.0, starts - 1
    process_start = process_start_time()  # the run's wall time counts each process from its start, start-up included

    # ----------------------------------------------------------------------------- training
    if model_file is not None:
        interrupts.exit_line = "interrupted: evaluation stopped"
    else:
        loss_fn = torch.compile(q_loss) if args.compile else q_loss  # the optimizer stays eager (annealed lr)

        # ALGO Logic: Storage setup. Observations stay uint8 on the device; the per-step flags are gathered on the
        # host and cross to the device once per rollout.
        obs_shape = envs.single_observation_space.shape
        obs = torch.zeros((args.num_steps, args.num_envs) + obs_shape, dtype=torch.uint8, device=device)
        actions = torch.zeros((args.num_steps, args.num_envs), dtype=torch.long, device=device)
        max_q = torch.zeros((args.num_steps, args.num_envs), device=device)  # max_a Q(obs[t]) at acting time
        rewards = np.zeros((args.num_steps, args.num_envs), dtype=np.float32)
        terminations = np.zeros((args.num_steps, args.num_envs), dtype=np.float32)
        truncations = np.zeros((args.num_steps, args.num_envs), dtype=np.float32)
        valid = np.zeros((args.num_steps, args.num_envs), dtype=np.float32)  # 0 on autoreset steps
        exploration_duration = args.exploration_fraction * args.total_timesteps
        recent_returns = deque(maxlen=100)
        next_probe_step, last_print, start_iteration = (0 if args.metrics_interval > 0 else None), 0.0, 1
        # the probe's own generator: a run with metrics on takes the same actions and losses as one with them off
        probe_generator = torch.Generator().manual_seed(args.seed)
        # ReDo's own generator (its states and re-initialisations), for the same reason
        redo_generator = torch.Generator().manual_seed(args.seed)
        next_redo_step = args.redo_interval if args.redo_interval > 0 else None
        if resume is not None:
            restore(resume, q_network, optimizer, probe_generator, redo_generator)
            global_step, start_iteration, next_probe_step = (
                resume["global_step"],
                resume["iteration"] + 1,
                resume["next_probe_step"],
            )
            next_redo_step = resume.get("next_redo_step", next_redo_step)
            # a run begun before starts.log counted its resumes in the checkpoint only
            elapsed_before, resumes = resume["elapsed"], max(resumes, resume["resumes"] + 1)
            recent_returns.extend(resume["recent_returns"])
            print(
                f"resuming from step {global_step} ({checkpoint_path}): new games start; the games in progress at the "
                "interruption are dropped",
                flush=True,
            )
        start_step = global_step

        def training_state(iteration: int) -> dict:
            """Everything the run needs to go on as if uninterrupted, but the emulators' state."""
            return {
                **model_state(args, q_network, num_actions),
                "optimizer": optimizer.state_dict(),
                "global_step": global_step,
                "iteration": iteration,
                "next_probe_step": next_probe_step,
                "next_redo_step": next_redo_step,
                "recent_returns": [float(r) for r in recent_returns],
                "elapsed": elapsed_before + time.time() - process_start,
                "resumes": resumes,
                "rng": rng_states(),
                "probe_generator": probe_generator.get_state(),
                "redo_generator": redo_generator.get_state(),
            }

        # TRY NOT TO MODIFY: start the game
        next_obs_np, info = envs.reset(seed=env_seed(args.seed, global_step))
        next_obs = torch.from_numpy(next_obs_np).to(device)
        episode_stats = EpisodeStats(args.num_envs, info)
        fire_on_life_loss = FireOnLifeLoss(fire, info["lives"])

        for iteration in range(start_iteration, args.num_iterations + 1):
            # Annealing the rate if instructed to do so.
            if args.anneal_lr:
                frac = 1.0 - (iteration - 1.0) / args.num_iterations
                optimizer.param_groups[0]["lr"] = frac * args.learning_rate

            for step in range(0, args.num_steps):
                global_step += args.num_envs
                obs[step] = next_obs
                epsilon = linear_schedule(args.start_e, args.end_e, exploration_duration, global_step)

                # ALGO LOGIC: epsilon-greedy action selection on the device
                with torch.no_grad():
                    q_values = q_network(next_obs)
                    max_q[step] = q_values.max(dim=1).values
                    action = epsilon_greedy(q_values, epsilon)
                actions[step] = action
                action_np, forced = fire_on_life_loss.actions(action.cpu().numpy())
                if forced.any():
                    actions[step] = torch.from_numpy(action_np).to(device)

                # TRY NOT TO MODIFY: execute the game and log data.
                next_obs_np, reward, terminated, truncated, info = envs.step(action_np)
                next_obs = torch.from_numpy(next_obs_np).to(device)
                reset_step, finished = episode_stats.step(reward, info)
                fire_on_life_loss.step(info["lives"])
                rewards[step] = np.sign(reward)  # clipped for learning; the logged returns are raw scores
                terminations[step] = terminated
                truncations[step] = truncated
                # an autoreset step (its action ignored) or a forced FIRE (not the policy's action) enters no target
                valid[step] = ~reset_step & ~forced

                for _, episodic_return, episodic_length in finished:
                    writer.add_scalar("charts/episodic_return", episodic_return, global_step)
                    writer.add_scalar("charts/episodic_length", episodic_length, global_step)
                    recent_returns.append(episodic_return)

            # Compute Q(lambda) targets
            with torch.no_grad():
                next_max_q = torch.cat([max_q[1:], q_network(next_obs).max(dim=1).values[None]])
                b_valid = torch.from_numpy(valid).to(device)
                returns = q_lambda_returns(
                    torch.from_numpy(rewards).to(device),
                    torch.from_numpy(terminations).to(device),
                    torch.from_numpy(truncations).to(device),
                    b_valid,
                    next_max_q,
                    args.gamma,
                    args.q_lambda,
                )

            # flatten the batch
            b_obs = obs.reshape((-1,) + obs_shape)
            b_actions = actions.reshape(-1)
            b_returns = returns.reshape(-1)
            b_valid = b_valid.reshape(-1)

            # Representation metrics on valid states of this rollout, before the update changes the network
            if next_probe_step is not None and global_step >= next_probe_step:
                probe_idx = common_metrics.sample_states(b_valid, args.metrics_batch_size, probe_generator)
                for tag, value in common_metrics.probe(q_network, b_obs[probe_idx], q_network.hidden_layers(), "fc").items():
                    writer.add_scalar(tag, value, global_step)
                next_probe_step = global_step + args.metrics_interval

            # Optimizing the Q-network
            for epoch in range(args.update_epochs):
                b_inds = torch.randperm(args.batch_size, device=device)
                for start in range(0, args.batch_size, args.minibatch_size):
                    mb_inds = b_inds[start : start + args.minibatch_size]
                    mb_valid = b_valid[mb_inds]
                    loss, old_val = loss_fn(q_network, b_obs[mb_inds], b_actions[mb_inds], b_returns[mb_inds], mb_valid)

                    # optimize the model
                    optimizer.zero_grad()
                    loss.backward()
                    nn.utils.clip_grad_norm_(q_network.parameters(), args.max_grad_norm)
                    optimizer.step()
            td_loss, q_mean = torch.stack(
                [loss.detach(), (old_val.detach() * mb_valid).sum() / mb_valid.sum().clamp(min=1.0)]
            ).tolist()

            # ReDo after the update, on states of this rollout drawn with its own generator: the next rollout acts with
            # the recycled network
            if next_redo_step is not None and global_step >= next_redo_step:
                redo_idx = common_metrics.sample_states(b_valid, args.metrics_batch_size, redo_generator)
                recycled = common_metrics.redo(
                    q_network,
                    b_obs[redo_idx],
                    q_network.hidden_layers(),
                    redo_layers(q_network, args.redo_conv),
                    optimizer,
                    redo_generator,
                    layer_init,
                    args.redo_tau,
                    args.redo_rule,
                )
                for name, fraction in recycled.items():
                    writer.add_scalar(f"redo/{name}_recycled_fraction", fraction, global_step)
                next_redo_step = (global_step // args.redo_interval + 1) * args.redo_interval

            # TRY NOT TO MODIFY: record rewards for plotting purposes
            sps = int((global_step - start_step) / (time.time() - start_time))
            writer.add_scalar("losses/td_loss", td_loss, global_step)
            writer.add_scalar("losses/q_values", q_mean, global_step)
            writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"], global_step)
            writer.add_scalar("charts/epsilon", epsilon, global_step)
            writer.add_scalar("charts/SPS", sps, global_step)
            if time.time() - last_print > 10 or iteration in (1, args.num_iterations):
                last_print = time.time()
                recent = (
                    f"{np.mean(recent_returns):.1f} over {len(recent_returns)} games"
                    if recent_returns
                    else "no game finished yet"
                )
                elapsed = time.time() - start_time
                print(
                    f"step {global_step:>10,}/{args.total_timesteps:,} ({global_step / args.total_timesteps:4.0%})  "
                    f"elapsed {duration(elapsed_before + elapsed)}  "
                    f"ETA {duration(elapsed * (args.total_timesteps - global_step) / max(global_step - start_step, 1))}  "
                    f"SPS {sps:>5}  epsilon {epsilon:.3f}  return {recent}",
                    flush=True,
                )

            # a checkpoint every --checkpoint-interval steps, and on SIGTERM, SIGUSR1 or Ctrl-C, which then ends the run
            if interrupts.signum or checkpoint_due(global_step, args.batch_size, args.checkpoint_interval):
                written = save_checkpoint(
                    checkpoint_path, training_state(iteration), writer, on_signal=bool(interrupts.signum)
                )
                if not written and interrupts.signum:  # the signal came during a periodic one that failed: it must be written
                    save_checkpoint(checkpoint_path, training_state(iteration), writer, on_signal=True)
            if interrupts.signum:  # (a signal during the write finds the checkpoint current)
                print(f"interrupted at step {global_step}: checkpoint written to {checkpoint_path}; {resume_hint}", flush=True)
                envs.close()
                writer.close()
                if args.track:
                    wandb.finish(exit_code=128 + interrupts.signum)
                sys.exit(128 + interrupts.signum)

        # the evaluation follows: it starts from a checkpoint of the finished training (as a kept checkpoint is)
        if args.save_model or args.capture_video or args.keep_checkpoint:
            written = save_checkpoint(checkpoint_path, training_state(args.num_iterations), writer, on_signal=False)
            checkpointed = f"checkpointed to {checkpoint_path}" if written else "but its checkpoint failed (above)"
            interrupts.exit_line = f"interrupted during the evaluation: training is finished, {checkpointed}; {resume_hint}"

    # ----------------------------------------------------------------------------- evaluation and the end of the run
    envs.close()
    eval_returns = []
    if model_file is not None or args.save_model or args.capture_video:
        if interrupts.signum:  # a signal after the training loop's last look at it
            print(interrupts.exit_line, flush=True)
            sys.exit(128 + interrupts.signum)
        if args.save_model and model_file is None:  # a model given to --eval-model is evaluated, not saved again
            model_path = os.path.join(run_dir, f"{args.exp_name}.pt")
            torch.save(model_state(args, q_network, num_actions), model_path)
            print(f"model saved to {model_path}")
        video_folder = os.path.join("videos", run_name) if args.capture_video else None
        eval_returns = evaluate(q_network, args, rom, repeat_action_probability, device, fire, video_folder)
        for idx, episodic_return in enumerate(eval_returns):
            writer.add_scalar("eval/episodic_return", episodic_return, idx)
        if eval_returns:
            print(f"evaluation: mean return {np.mean(eval_returns):.1f} over {len(eval_returns)} games")

    writer.close()
    with open(os.path.join(run_dir, "done.json"), "w") as f:  # marks a finished run (benchmark.sh resumes past it)
        # the processes the result comes from, each from its start (start-up included) to the checkpoint the next one
        # resumed from; resumes: every start after the first (starts.log), those that ended before a checkpoint included
        wall_time = elapsed_before + time.time() - process_start
        done = {"global_step": global_step, "wall_time_s": wall_time, "SPS": int(global_step / max(wall_time, 1e-9))}
        json.dump({**done, "resumes": resumes, "eval_returns": eval_returns}, f)
    if not args.keep_checkpoint and os.path.exists(checkpoint_path):  # a finished run's checkpoint (DQN's: its buffer) goes
        os.remove(checkpoint_path)
    videos = f", videos in {os.path.join('videos', run_name)}/" if args.capture_video else ""
    print(f"done: outputs in {run_dir}/ (TensorBoard: tensorboard --logdir {os.path.dirname(run_dir)}){videos}", flush=True)
    if args.track:
        wandb.finish()

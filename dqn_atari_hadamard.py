"""DQN on Atari with a Hadamard representation (Kooi et al., arXiv 2406.09079), after CleanRL's dqn_atari.py, with a
replay buffer that stores each 84x84 frame once (7.07 GB for 1M transitions instead of 26.3 GiB).

Trains on one Atari game (ale-py's vector env) and writes runs/<run_name>/: TensorBoard logs of the returns, losses and
representation metrics, config.json, a checkpoint (Ctrl-C stops with one; the same command resumes) and done.json.
A short run to try, with the Hadamard representation (then: tensorboard --logdir runs):

    python dqn_atari_hadamard.py --hadamard --total-timesteps 10000 --learning-starts 1000 --run-name smoke
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
import torch.nn.functional as F
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
    # 2M, not 500k as PPO's and PQN's: a checkpoint with the full replay buffer (7 GB) is slow to write
    # (benchmarks/README.md has what it costs)
    checkpoint_interval: int = 2_000_000
    """write `runs/<run_name>/checkpoint.pt` every this many env steps (0: only on SIGTERM, SIGUSR1 or Ctrl-C)"""
    keep_checkpoint: bool = False
    """keep the checkpoint of the finished training (otherwise removed once done.json is written): a model file too"""
    checkpoint_buffer: bool = True
    """put the replay buffer in checkpoints (7 GB at 1M transitions); else a resumed run refills it for --learning-starts"""

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
    """the representation's activation, the last hidden layer (conv layers: ReLU; --gate glu, swiglu, bilinear: their own)"""
    hadamard: bool = False
    """the Hadamard representation: act(W_a z + b_a) * act(W_b z + b_b), the product of two independent layers"""
    gate: Literal["hadamard", "glu", "swiglu", "bilinear"] = "hadamard"
    """--hadamard's product of layers a, b: act(a) * act(b), glu sigmoid(a) * b, swiglu swish(a) * b, bilinear a * b"""
    param_matched: bool = False
    """widen the plain representation to the Hadamard network's parameter count (HR's baseline of equal size)"""
    layer_norm: bool = False
    """LayerNorm on each hidden layer's pre-activation, as CleanRL's PQN (layer -> LayerNorm -> activation; HR: per branch)"""
    metrics_interval: int = 50_000
    """log the representation metrics (ranks, dead, dormant and saturated units) every this many env steps (0: never)"""
    metrics_batch_size: int = 1024
    """the number of the replay buffer's most recent states the metrics are computed on (at most --buffer-size)"""
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
    learning_rate: float = 1e-4
    """the optimizer's learning rate"""
    num_envs: int = 1
    """the number of games played in parallel (one vector env)"""
    buffer_size: int = 1_000_000
    """the transitions the replay buffer holds (7,070 bytes each)"""
    gamma: float = 0.99
    """the discount factor"""
    tau: float = 1.0
    """the target network's update rate (1: a copy of the Q-network)"""
    target_network_frequency: int = 1000
    """update the target network every this many env steps"""
    batch_size: int = 32
    """the transitions in each replay batch"""
    start_e: float = 1
    """exploration's epsilon at the start"""
    end_e: float = 0.01
    """exploration's epsilon at the end of its decay, and from then on"""
    exploration_fraction: float = 0.10
    """the fraction of --total-timesteps over which epsilon decays linearly from --start-e to --end-e"""
    learning_starts: int = 80000
    """the env steps played before training starts (they fill the replay buffer)"""
    train_frequency: int = 4
    """train on one replay batch every this many env steps"""
    compile: bool = False
    """compile the TD loss with torch.compile; the start takes longer"""


# the Args fields the script computes: config.json holds them, but they are not flags (DQN computes none)
COMPUTED = set()
ALGORITHM = "dqn"  # config.json's, model files' and checkpoints' name of the algorithm
SCRIPT = os.path.basename(__file__)
# the flags a model file fixes: --eval-model takes them from the file
MODEL_FLAGS = ("env_id", "activation", "hadamard", "param_matched", "gate", "layer_norm")
# the model flags that came after the first model files: a file without one was trained with the flag's default
ADDED_MODEL_FLAGS = ("gate", "layer_norm")
# the env settings a model file holds: --eval-model evaluates with the training's unless these flags are given
MODEL_ENV_FLAGS = ("repeat_action_probability", "fire_on_life_loss")
# the flags an --eval-model run uses besides those: any other is training's, and refused there (it would do nothing)
EVAL_FLAGS = ("eval_model", "eval_episodes", "eval_epsilon", "capture_video", "save_model", "seed", "torch_deterministic")
EVAL_FLAGS += ("cuda", "track", "wandb_project_name", "wandb_entity", "run_name", "exp_name")


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
    for name in ("buffer_size", "batch_size", "train_frequency", "target_network_frequency"):
        if getattr(args, name) <= 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.learning_starts < 0:
        fail(f"--learning-starts must be zero or positive, got {args.learning_starts}")
    if args.learning_rate <= 0:
        fail(f"--learning-rate must be positive, got {args.learning_rate}")
    if not 0.0 < args.tau <= 1.0:
        fail(f"--tau must be in (0, 1], got {args.tau}")
    for name in ("gamma", "start_e", "end_e", "exploration_fraction", "eval_epsilon"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            fail(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(args, name)}")
    if not evaluates and args.eval_epsilon != Args.eval_epsilon:
        fail("--eval-epsilon sets the evaluation that --save-model, --capture-video or --eval-model makes: give one of them")
    if args.start_e < args.end_e:  # linear_schedule would hold epsilon at --end-e from the first step
        fail(f"--start-e {args.start_e} is below --end-e {args.end_e}: epsilon decays from --start-e to --end-e")
    if args.exploration_fraction == 0 and args.start_e != Args.start_e:  # linear_schedule returns --end-e throughout
        fail("--start-e starts the decay that --exploration-fraction 0 leaves out (epsilon is --end-e from the first step)")
    if args.buffer_size < args.batch_size:
        fail(f"--buffer-size {args.buffer_size} is less than one --batch-size of {args.batch_size}")
    if args.learning_starts >= args.total_timesteps and args.eval_model is None:
        fail(
            f"--learning-starts {args.learning_starts} is not below --total-timesteps {args.total_timesteps}: "
            "the run would never learn"
        )


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


# ----------------------------------------------------------------------------- replay buffer
class FrameReplayBuffer:
    """Replay memory that stores each 84x84 frame once and rebuilds the 4-frame stacks when sampling.

    Every env has its own ring of slots; each vector-env step writes one slot per env: the newest frame of
    the observation it returned, plus the transition *from* the previous slot (action, raw reward,
    `terminated`), unless that step was an autoreset step (the env's previous step ended the game), whose
    observation then starts an episode and whose transition is never stored. A stack is rebuilt from the
    slot's frame and the `stack - 1` frames written before it, with zero frames before the episode start
    (the vector env pads a new episode's stack with zeros), so a sampled observation equals exactly what the
    env returned. A life loss is `terminated` but the game (and the stack) goes on; a truncation keeps
    `terminated=False` so that its target bootstraps from the final observation.

    Each slot records the write count at which it was written, so a transition whose history or next
    observation has been overwritten (wrap-around) is never sampled. Each ring holds `ceil(buffer_size /
    num_envs) + stack` slots, so that the newest `buffer_size` transitions always keep their history.
    """

    HAS_NEXT = 1  # the slot's transition (action, reward, terminated, next observation) is stored
    TERMINATED = 2  # the transition's target does not bootstrap
    EPISODE_START = 4  # the slot's observation starts an episode: frames before it are zeros
    NEVER = -(2**62)  # the stamp of a slot never written: no write count is near it

    def __init__(self, buffer_size: int, num_envs: int, frame_shape=(84, 84), stack: int = 4, seed: Optional[int] = None):
        if buffer_size < 1 or num_envs < 1 or stack < 1:
            raise ValueError(f"buffer_size, num_envs and stack must be >= 1, got {buffer_size}, {num_envs}, {stack}")
        self.num_envs, self.stack, self.frame_shape = num_envs, stack, tuple(frame_shape)
        self.slots = -(-buffer_size // num_envs) + stack
        shape = (num_envs, self.slots)
        self.frames = np.zeros(shape + self.frame_shape, dtype=np.uint8)
        self.actions = np.zeros(shape, dtype=np.uint8)
        self.rewards = np.zeros(shape, dtype=np.float32)
        self.flags = np.zeros(shape, dtype=np.uint8)
        self.stamps = np.full(shape, self.NEVER, dtype=np.int64)  # the write count of each slot
        self.pos = 0  # the next slot to write (the same in every ring)
        self.writes = 0  # slots written per ring so far
        self.rng = np.random.default_rng(seed)
        self._offsets = np.arange(-(stack - 1), 2)  # the history, the slot itself, the next slot
        self._envs = np.arange(num_envs)

    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.frames, self.actions, self.rewards, self.flags, self.stamps))

    def state_dict(self) -> dict:
        """The buffer's contents as tensors that share its memory: torch.save writes them without a second copy."""
        arrays = {name: torch.from_numpy(getattr(self, name)) for name in ("frames", "actions", "rewards", "flags", "stamps")}
        return {**arrays, "pos": self.pos, "writes": self.writes}

    def load_state_dict(self, state: dict):
        """Take the contents of `state_dict()` (the arrays are used as they are, not copied); the sampler's generator is
        restored apart, as a checkpoint without the buffer keeps it too."""
        for name in ("frames", "actions", "rewards", "flags", "stamps"):
            if tuple(state[name].shape) != getattr(self, name).shape:
                raise ValueError(
                    f"the replay buffer's {name} have shape {tuple(state[name].shape)}, expected {getattr(self, name).shape}"
                )
            setattr(self, name, state[name].numpy())
        self.pos, self.writes = state["pos"], state["writes"]

    def add(self, obs: np.ndarray, actions=None, rewards=None, terminated=None, episode_start=None, forced=None):
        """Record one vector-env step: `obs` (num_envs x stack x H x W) is the observation it returned,
        `actions`, `rewards`, `terminated` describe the transition from the previous observation.
        `episode_start[e]`: env e's step was an autoreset step, its `obs` starts a new episode and the step's
        transition is dropped. The first call (after `reset`) must mark every env as an episode start.
        `forced[e]`: env e's action was not the policy's (FIRE after a life loss): its `obs` continues the episode,
        the step's transition is dropped."""
        n = self.num_envs
        episode_start = np.ones(n, dtype=bool) if episode_start is None else np.asarray(episode_start, dtype=bool)
        if self.writes == 0 and not episode_start.all():
            raise ValueError("the first observation of each env must start an episode (pass the reset observation)")
        if obs.shape != (n, self.stack) + self.frame_shape:
            raise ValueError(f"expected observations of shape {(n, self.stack) + self.frame_shape}, got {obs.shape}")
        starts = np.flatnonzero(episode_start)
        if starts.size and obs[starts, :-1].any():
            raise ValueError("an episode's first observation must be zero-padded (only its newest frame non-zero)")
        slot, prev = self.pos, (self.pos - 1) % self.slots
        cont = np.flatnonzero(~episode_start if forced is None else ~episode_start & ~np.asarray(forced, dtype=bool))
        if cont.size:
            self.actions[cont, prev] = np.asarray(actions)[cont]
            self.rewards[cont, prev] = np.asarray(rewards)[cont]
            self.flags[cont, prev] |= self.HAS_NEXT | np.where(np.asarray(terminated)[cont], self.TERMINATED, 0).astype(
                np.uint8
            )
        self.frames[:, slot] = obs[:, -1]
        self.flags[:, slot] = np.where(episode_start, self.EPISODE_START, 0)
        self.stamps[:, slot] = self.writes
        self.pos = (slot + 1) % self.slots
        self.writes += 1

    def _check(self, env: np.ndarray, slot: np.ndarray):
        """For candidate transitions (env, slot): which are complete, the slot indices of their stacks
        (history, slot, next) and which history frames lie before the episode start (zero frames)."""
        k = self.stack - 1
        idx = (slot[:, None] + self._offsets) % self.slots
        stamps = self.stamps[env[:, None], idx]
        flags = self.flags[env[:, None], idx]
        genuine = stamps == stamps[:, k : k + 1] + self._offsets  # the slot holds the write it should
        start = (flags[:, 1 : k + 1] & self.EPISODE_START) != 0
        # before_start[:, j]: an episode starts after history column j, so its frame is a zero frame
        before_start = np.logical_or.accumulate(start[:, ::-1], axis=1)[:, ::-1]
        valid = ((flags[:, k] & self.HAS_NEXT) != 0) & genuine[:, k + 1] & (stamps[:, k] >= 0)
        valid &= (genuine[:, :k] | before_start).all(axis=1)
        return valid, idx, before_start

    def recent_observations(self, count: int) -> Optional[np.ndarray]:
        """The `count` most recently written observations (`count x stack x H x W`, stacks rebuilt, newest first,
        envs interleaved), or None while the buffer holds fewer. The representation probe's states: no random draw."""
        per_env = -(-count // self.num_envs)
        if self.writes < per_env or per_env > self.slots - self.stack:
            return None
        slot = np.repeat((self.pos - 1 - np.arange(per_env)) % self.slots, self.num_envs)[:count]
        env = np.tile(self._envs, per_env)[:count]
        idx = (slot[:, None] + self._offsets[:-1]) % self.slots  # the history and the slot itself
        frames = self.frames[env[:, None], idx]
        start = (self.flags[env[:, None], idx[:, 1:]] & self.EPISODE_START) != 0
        frames[:, :-1][np.logical_or.accumulate(start[:, ::-1], axis=1)[:, ::-1]] = 0  # frames before the episode start
        return frames

    def valid_transitions(self) -> tuple[np.ndarray, np.ndarray]:
        """Every (env, slot) pair holding a complete transition (a full scan; for tests and probes)."""
        filled = min(self.writes, self.slots)
        env, slot = np.repeat(self._envs, filled), np.tile(np.arange(filled), self.num_envs)
        valid = self._check(env, slot)[0]
        return env[valid], slot[valid]

    def sample_index(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """`batch_size` transitions drawn uniformly, with replacement, among the complete ones (rejection sampling)."""
        filled = min(self.writes, self.slots)
        envs, slots, got = [], [], 0
        for _ in range(16):
            n = 2 * (batch_size - got) + 16
            env, slot = self.rng.integers(0, self.num_envs, n), self.rng.integers(0, max(filled, 1), n)
            valid = self._check(env, slot)[0]
            envs.append(env[valid]), slots.append(slot[valid])
            got += int(valid.sum())
            if got >= batch_size:
                return np.concatenate(envs)[:batch_size], np.concatenate(slots)[:batch_size]
        env, slot = self.valid_transitions()  # few complete transitions (a tiny buffer): draw among all of them
        if env.size == 0:
            raise ValueError("the replay buffer holds no complete transition yet")
        pick = self.rng.integers(0, env.size, batch_size)
        return env[pick], slot[pick]

    def get(self, env: np.ndarray, slot: np.ndarray):
        """The transitions at (env, slot): (frames, actions, rewards, terminated) where `frames` is
        `n x (stack + 1) x H x W`: `frames[:, :-1]` is the observation and `frames[:, 1:]` the next one."""
        _, idx, before_start = self._check(env, slot)
        frames = self.frames[env[:, None], idx]
        frames[:, : self.stack - 1][before_start] = 0
        terminated = (self.flags[env, slot] & self.TERMINATED) != 0
        return frames, self.actions[env, slot].astype(np.int64), self.rewards[env, slot], terminated

    def try_sample(self, batch_size: int):
        """`get` of `batch_size` uniformly drawn transitions, or None while the buffer holds no complete one."""
        try:
            return self.get(*self.sample_index(batch_size))
        except ValueError:
            return None

    def sample(self, batch_size: int):
        """(obs, actions, rewards, next_obs, terminated) of `batch_size` transitions drawn uniformly;
        `obs` and `next_obs` are views of one `n x (stack + 1) x H x W` array."""
        frames, actions, rewards, terminated = self.get(*self.sample_index(batch_size))
        return frames[:, :-1], actions, rewards, frames[:, 1:], terminated


# ----------------------------------------------------------------------------- network
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


class QNetwork(nn.Module):
    """CleanRL's Nature-DQN Q-network (PyTorch's default initialisation) with the representation layer swappable."""

    def __init__(
        self,
        num_actions: int,
        activation: str = "tanh",
        hadamard: bool = False,
        width: int = 512,
        gate: str = "hadamard",
        layer_norm: bool = False,
    ):
        super().__init__()

        def norm(shape) -> list:
            """[LayerNorm] with --layer-norm; [] without, which leaves the network (its state dict keys too) as it was."""
            return [nn.LayerNorm(shape)] if layer_norm else []

        self.network = nn.Sequential(
            nn.Conv2d(4, 32, 8, stride=4),
            *norm([32, 20, 20]),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            *norm([64, 9, 9]),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1),
            *norm([64, 7, 7]),
            nn.ReLU(),
            nn.Flatten(),
        )
        # channels-last: oneDNN's faster conv layout on CPU, the same math (benchmarks/README.md has the gain)
        self.network.to(memory_format=torch.channels_last)

        def branch(branch_activation: str):
            return nn.Sequential(nn.Linear(64 * 7 * 7, width), *norm(width), ACTIVATIONS[branch_activation]())

        if hadamard:  # branch a, then branch b: the order they draw their initial weights in
            activation_a, activation_b = common_metrics.gate_activations(gate, activation)
            self.representation = Hadamard(branch(activation_a), branch(activation_b))
        else:
            self.representation = branch(activation)
        self.q = nn.Linear(width, num_actions)

    def hidden_layers(self) -> dict[str, nn.Module]:
        """The modules common_metrics.probe hooks: each conv activation, and the representation."""
        conv1, conv2, conv3 = (module for module in self.network if isinstance(module, nn.ReLU))
        fc = self.representation if isinstance(self.representation, Hadamard) else self.representation[-1]
        return {"conv1": conv1, "conv2": conv2, "conv3": conv3, "fc": fc}

    def forward(self, x):
        return self.q(self.representation(self.network(x.float() / 255.0)))


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def redo_layers(q_network: QNetwork, conv: bool) -> dict[str, tuple[list, list]]:
    """The layers ReDo recycles, by the metrics' names (`conv`: the conv layers too), each as `common_metrics.redo` takes
    it: (the branches making its units, the layers its units feed). An HR unit is the product of both branches' unit."""
    representation = q_network.representation
    fc = [representation.branch_a, representation.branch_b] if isinstance(representation, Hadamard) else [representation]
    layers = {"fc": (fc, [q_network.q])}
    if conv:  # conv3 feeds the representation's first layer, in each branch (64 x 7 x 7 flattened: 49 columns a channel)
        convs, layer = [], []  # the conv stack cut at its ReLUs: [Conv2d] or, with --layer-norm, [Conv2d, LayerNorm]
        for module in q_network.network:
            if isinstance(module, nn.ReLU):
                convs, layer = convs + [layer], []
            else:
                layer.append(module)
        conv_layers = {"conv1": ([convs[0]], [convs[1][0]]), "conv2": ([convs[1]], [convs[2][0]])}
        layers = {**conv_layers, "conv3": ([convs[2]], [branch[0] for branch in fc]), **layers}
    return layers


def default_init(layer: nn.Module, generator: Optional[torch.Generator] = None) -> nn.Module:
    """PyTorch's initialisation of a Linear or Conv2d layer (its `reset_parameters`), the network's, drawn from `generator`:
    ReDo re-initialises recycled units with it."""
    nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
    bound = 1 / math.sqrt(layer.weight[0].numel())  # 1 / sqrt(fan_in)
    nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
    return layer


def representation_width(
    hadamard: bool, param_matched: bool, num_actions: int, layer_norm: bool = False, width: int = 512
) -> int:
    """512 units, or for `--param-matched` the plain width whose network has the HR network's parameter count.
    Each representation unit carries 3136 + 1 input parameters per branch (+ 2 of its LayerNorm with --layer-norm) and
    num_actions Q-head weights."""
    if not param_matched:
        return width
    branch = 3137 + 2 * layer_norm
    return round(width * (2 * branch + num_actions) / (branch + num_actions))


def variant_name(args) -> str:
    """The variant's name in config.json and in the sweep's run names: the activation, then `_hr` (--hadamard) or `_pm`
    (--param-matched), or a gate's name alone (`glu`: its activations are its own); then `_ln` (--layer-norm) and
    `_redo` (--redo-interval above 0)."""
    representation = (args.activation + ("_hr" if args.hadamard else "")) if args.gate == "hadamard" else args.gate
    return (
        representation
        + ("_pm" if args.param_matched else "")
        + ("_ln" if args.layer_norm else "")
        + ("_redo" if args.redo_interval > 0 else "")
    )


# ----------------------------------------------------------------------------- algorithm
def linear_schedule(start_e: float, end_e: float, duration: float, t: int) -> float:
    if duration <= 0:
        return end_e
    slope = (end_e - start_e) / duration
    return max(slope * t + start_e, end_e)


def steps_due(start: int, count: int, every: int, after: int = -1) -> int:
    """How many of the env steps start, ..., start + count - 1 are multiples of `every` and greater than `after`
    (CleanRL's `global_step > learning_starts and global_step % every == 0`, for `count` envs at a time)."""
    first = max(start, after + 1)
    end = start + count
    if every <= 0 or first >= end:
        return 0
    return (end - 1) // every - (first - 1) // every


def td_loss(q_network, target_network, frames, actions, rewards, dones, gamma: float):
    """CleanRL's DQN loss: MSE between Q(s, a) and sign(r) + gamma * max_a' Q_target(s', a') * (1 - terminated)."""
    with torch.no_grad():
        target_max, _ = target_network(frames[:, 1:]).max(dim=1)
        td_target = rewards.sign() + gamma * target_max * (1 - dones)
    old_val = q_network(frames[:, :-1]).gather(1, actions[:, None]).squeeze(1)
    return F.mse_loss(td_target, old_val), old_val.detach().mean()


def td_update(
    q_network, target_network, optimizer, frames, actions, rewards, terminated, gamma: float, device, loss_fn=td_loss
):
    """One DQN step on a replay batch (frames: n x 5 x 84 x 84 uint8, obs = frames[:, :-1], next obs = frames[:, 1:];
    raw rewards, clipped with sign in the loss). `loss_fn` is `td_loss` or its `torch.compile`d version."""
    frames = torch.from_numpy(frames).to(device)
    actions = torch.from_numpy(actions).to(device)
    rewards = torch.from_numpy(rewards).to(device)
    dones = torch.from_numpy(terminated).to(device).float()
    loss, q_mean = loss_fn(q_network, target_network, frames, actions, rewards, dones, gamma)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach(), q_mean


def update_target(target_network, q_network, tau: float):
    for target_param, param in zip(target_network.parameters(), q_network.parameters()):
        target_param.data.copy_(tau * param.data + (1.0 - tau) * target_param.data)


def log_probe(writer, q_network, rb, probe_size: int, global_step: int, device) -> bool:
    """The representation metrics of `q_network` on the replay memory's `probe_size` most recent states (no random draw:
    metrics never change the run), logged at `global_step`; False, with nothing logged, while it holds fewer."""
    probe_obs = rb.recent_observations(probe_size)
    if probe_obs is None:
        return False
    probe_obs = torch.from_numpy(probe_obs).to(device)
    for tag, value in common_metrics.probe(q_network, probe_obs, q_network.hidden_layers(), "fc").items():
        writer.add_scalar(tag, value, global_step)
    return True


def make_optimizer(params, learning_rate: float):
    """Adam as CleanRL; the fused kernel where this torch has it (same algorithm, fewer kernel launches)."""
    try:
        return optim.Adam(params, lr=learning_rate, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return optim.Adam(params, lr=learning_rate)


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
        checkpoint["num_actions"], saved["activation"], saved["hadamard"], width, saved["gate"], saved["layer_norm"]
    )
    try:
        network.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as exc:
        fail(f"model file does not fit the network it describes: {str(exc).splitlines()[0]}")
    return network.to(device)


def evaluate(
    q_network: QNetwork, args: Args, rom: str, repeat_action_probability: float, device, fire: Optional[int], video_folder=None
):
    """Play --eval-episodes whole games epsilon-greedily at --eval-epsilon (CleanRL's DQN evaluation; FIRE forced after a
    life loss as in training, `fire`); return their raw scores."""
    env = make_eval_env(rom, repeat_action_probability, video_folder=video_folder)
    rng = np.random.default_rng(args.seed)  # the same model and seed play the same games, in training and in --eval-model
    returns, episode_return = [], 0.0
    obs, info = env.reset(seed=args.seed)
    fire_on_life_loss = FireOnLifeLoss(fire, [info["lives"]])
    was_training = q_network.training
    q_network.eval()
    while len(returns) < args.eval_episodes:
        if rng.random() < args.eval_epsilon:
            action = int(rng.integers(env.action_space.n))
        else:
            with torch.no_grad():
                action = q_network(torch.as_tensor(np.asarray(obs), device=device)[None]).argmax(dim=1).item()
        obs, reward, terminated, truncated, info = env.step(int(fire_on_life_loss.actions(np.array([action]))[0][0]))
        fire_on_life_loss.step([info["lives"]])
        episode_return += reward
        if terminated or truncated:
            returns.append(float(episode_return))
            episode_return = 0.0
            if len(returns) < args.eval_episodes:  # no trailing reset: it would start an empty video
                obs, info = env.reset()
                fire_on_life_loss.step([info["lives"]])
    env.close()
    q_network.train(was_training)
    return returns


# ----------------------------------------------------------------------------- what a checkpoint holds
# what restore() and the resumed loop read from a checkpoint (checked before anything is written)
RESUME_KEYS = {"args", "state_dict", "target_state_dict", "optimizer", "rng", "replay_rng", "exploration_rng"}
RESUME_KEYS |= {"global_step", "learning_starts", "next_probe_step", "recent_returns", "elapsed", "resumes", "event_files"}
# ReDo's generator and next step are saved too; a checkpoint written before ReDo existed has neither (it ran without)


def restore(
    resume: dict,
    q_network: QNetwork,
    target_network: QNetwork,
    optimizer: optim.Optimizer,
    rb: FrameReplayBuffer,
    rng: np.random.Generator,
    redo_generator: torch.Generator,
) -> bool:
    """The networks, the optimizer, the replay buffer (when the checkpoint holds it) and every random generator as the
    checkpoint holds them; returns whether the buffer was restored."""
    q_network.load_state_dict(resume["state_dict"])
    target_network.load_state_dict(resume["target_state_dict"])
    optimizer.load_state_dict(resume["optimizer"])
    if "replay_buffer" in resume:
        rb.load_state_dict(resume["replay_buffer"])
    rb.rng.bit_generator.state = resume["replay_rng"]
    rng.bit_generator.state = resume["exploration_rng"]
    if "redo_generator" in resume:
        redo_generator.set_state(resume["redo_generator"])
    set_rng_states(resume["rng"])
    return "replay_buffer" in resume


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
    if model_file is not None:
        q_network, width = build_network(model_file, device), model_file["representation_width"]
    else:
        width = representation_width(args.hadamard, args.param_matched, num_actions, args.layer_norm)
        q_network = QNetwork(num_actions, args.activation, args.hadamard, width, args.gate, args.layer_norm).to(device)
        optimizer = make_optimizer(q_network.parameters(), args.learning_rate)
        target_network = QNetwork(num_actions, args.activation, args.hadamard, width, args.gate, args.layer_norm).to(device)
        target_network.load_state_dict(q_network.state_dict())
        if resume is not None:
            check_checkpoint(resume, checkpoint_path, optimizer, state_dict=q_network, target_state_dict=target_network)
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
        loss_fn = torch.compile(td_loss) if args.compile else td_loss
        rb = FrameReplayBuffer(
            args.buffer_size,
            args.num_envs,
            envs.single_observation_space.shape[1:],
            envs.single_observation_space.shape[0],
            seed=args.seed,
        )
        rng = np.random.default_rng(args.seed)  # exploration
        n = args.num_envs
        recent_returns = deque(maxlen=100)
        last_print, loss, q_mean, learning_starts = 0.0, None, None, args.learning_starts
        # the first probe as soon as the buffer holds a probe's worth of states (the network at initialisation)
        next_probe_step = 0 if args.metrics_interval > 0 else None
        probe_size = min(args.metrics_batch_size, args.buffer_size)
        # ReDo's own generator (its re-initialisations): a run with metrics on takes the same steps as one with them off
        redo_generator = torch.Generator().manual_seed(args.seed)
        next_redo_step = args.redo_interval if args.redo_interval > 0 else None
        if resume is not None:
            global_step, next_probe_step = resume["global_step"], resume["next_probe_step"]
            next_redo_step = resume.get("next_redo_step", next_redo_step)
            # a run begun before starts.log counted its resumes in the checkpoint only
            elapsed_before, resumes = resume["elapsed"], max(resumes, resume["resumes"] + 1)
            recent_returns.extend(resume["recent_returns"])
            buffer_restored = restore(resume, q_network, target_network, optimizer, rb, rng, redo_generator)
            # without its replay buffer the run refills it for --learning-starts steps before it trains again
            learning_starts = resume["learning_starts"] if buffer_restored else global_step + args.learning_starts
            refill = "" if buffer_restored else f"; the replay buffer refills until step {learning_starts}"
            print(
                f"resuming from step {global_step} ({checkpoint_path}): new games start; the games in progress at the "
                f"interruption are dropped{refill}",
                flush=True,
            )
            del resume  # the replay buffer's arrays stay, the rest of the checkpoint goes
        start_step = global_step

        def training_state(with_buffer: bool) -> dict:
            """Everything the run needs to go on as if uninterrupted, but the emulators' state."""
            state = {
                **model_state(args, q_network, num_actions),
                "target_state_dict": target_network.state_dict(),
                "optimizer": optimizer.state_dict(),
                "global_step": global_step,
                "learning_starts": learning_starts,
                "next_probe_step": next_probe_step,
                "next_redo_step": next_redo_step,
                "recent_returns": [float(r) for r in recent_returns],
                "elapsed": elapsed_before + time.time() - process_start,
                "resumes": resumes,
                "rng": rng_states(),
                "replay_rng": rb.rng.bit_generator.state,
                "exploration_rng": rng.bit_generator.state,
                "redo_generator": redo_generator.get_state(),
            }
            return {**state, "replay_buffer": rb.state_dict()} if with_buffer else state

        # TRY NOT TO MODIFY: start the game
        obs, info = envs.reset(seed=env_seed(args.seed, global_step))
        rb.add(obs)
        episode_stats = EpisodeStats(n, info)
        fire_on_life_loss = FireOnLifeLoss(fire, info["lives"])
        start_time = time.time()
        while global_step < args.total_timesteps:
            # ALGO LOGIC: put action logic here
            epsilon = linear_schedule(args.start_e, args.end_e, args.exploration_fraction * args.total_timesteps, global_step)
            actions = rng.integers(0, num_actions, n)
            greedy = rng.random(n) >= epsilon
            if greedy.any():
                with torch.inference_mode():
                    q_values = q_network(torch.from_numpy(obs).to(device))
                actions = np.where(greedy, q_values.argmax(dim=1).cpu().numpy(), actions)
            actions, forced = fire_on_life_loss.actions(actions)
            # the envs step in their C++ threads while the network trains on the replay memory
            envs.send(actions)

            # ALGO LOGIC: training, for each of this step's env steps that CleanRL's loop would train at
            for _ in range(steps_due(global_step, n, args.train_frequency, learning_starts)):
                batch = rb.try_sample(args.batch_size)
                if batch is not None:
                    loss, q_mean = td_update(q_network, target_network, optimizer, *batch, args.gamma, device, loss_fn)
            if steps_due(global_step, n, args.target_network_frequency, learning_starts):
                update_target(target_network, q_network, args.tau)
            if loss is not None and steps_due(global_step, n, 100):
                sps = int((global_step - start_step) / max(time.time() - start_time, 1e-9))
                writer.add_scalar("losses/td_loss", loss.item(), global_step)
                writer.add_scalar("losses/q_values", q_mean.item(), global_step)
                writer.add_scalar("charts/SPS", sps, global_step)
                writer.add_scalar("charts/epsilon", epsilon, global_step)
                writer.add_scalar("charts/learning_rate", optimizer.param_groups[0]["lr"], global_step)
            # Representation metrics every --metrics-interval steps, of the network as this step's training left it
            if next_probe_step is not None and global_step >= next_probe_step:
                if log_probe(writer, q_network, rb, probe_size, global_step, device):
                    next_probe_step = (global_step // args.metrics_interval + 1) * args.metrics_interval

            # ReDo once training has begun, on the probe's states (the replay memory's most recent)
            if next_redo_step is not None and global_step >= max(next_redo_step, learning_starts):
                redo_obs = rb.recent_observations(probe_size)
                if redo_obs is not None:
                    recycled = common_metrics.redo(
                        q_network,
                        torch.from_numpy(redo_obs).to(device),
                        q_network.hidden_layers(),
                        redo_layers(q_network, args.redo_conv),
                        optimizer,
                        redo_generator,
                        default_init,
                        args.redo_tau,
                        args.redo_rule,
                    )
                    for name, fraction in recycled.items():
                        writer.add_scalar(f"redo/{name}_recycled_fraction", fraction, global_step)
                    next_redo_step = (global_step // args.redo_interval + 1) * args.redo_interval

            # TRY NOT TO MODIFY: execute the game and log data.
            next_obs, rewards, terminated, truncated, info = envs.recv()
            if n > 1 and (info["env_id"] != np.arange(n)).any():  # results in completion order: back to env order
                order = np.argsort(info["env_id"])
                next_obs, rewards, terminated, truncated = next_obs[order], rewards[order], terminated[order], truncated[order]
                info = {key: value[order] for key, value in info.items()}
            reset_step, finished = episode_stats.step(rewards, info)
            fire_on_life_loss.step(info["lives"])
            # the reset step's transition spans a game boundary, the forced FIRE's is not the policy's: neither enters
            # the replay memory
            rb.add(next_obs, actions, rewards, terminated, episode_start=reset_step, forced=forced)
            for _, episodic_return, episodic_length in finished:
                writer.add_scalar("charts/episodic_return", episodic_return, global_step)
                writer.add_scalar("charts/episodic_length", episodic_length, global_step)
                recent_returns.append(episodic_return)
            obs = next_obs
            global_step += n
            if time.time() - last_print > 10 or global_step >= args.total_timesteps:
                last_print = time.time()
                sps = int((global_step - start_step) / (time.time() - start_time))
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
            if interrupts.signum or checkpoint_due(global_step, n, args.checkpoint_interval):
                written = save_checkpoint(
                    checkpoint_path, training_state(args.checkpoint_buffer), writer, on_signal=bool(interrupts.signum)
                )
                if not written and interrupts.signum:  # the signal came during a periodic one that failed: it must be written
                    save_checkpoint(checkpoint_path, training_state(args.checkpoint_buffer), writer, on_signal=True)
            if interrupts.signum:  # (a signal during the write finds the checkpoint current)
                print(f"interrupted at step {global_step}: checkpoint written to {checkpoint_path}; {resume_hint}", flush=True)
                envs.close()
                writer.close()
                if args.track:
                    wandb.finish(exit_code=128 + interrupts.signum)
                sys.exit(128 + interrupts.signum)

        # and the final network's, at the run's last step (the loop logs a probe at a step's start, so never there)
        if next_probe_step is not None:
            log_probe(writer, q_network, rb, probe_size, global_step, device)

        # the evaluation follows: it starts from a checkpoint of the finished training (as a kept checkpoint is)
        if args.save_model or args.capture_video or args.keep_checkpoint:
            written = save_checkpoint(checkpoint_path, training_state(with_buffer=False), writer, on_signal=False)
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

"""ppo_atari_hadamard.py: end-to-end tiny runs read back from TensorBoard, plus the parts that can be wrong in small."""

import json
import math
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch

import common_metrics
import ppo_atari_hadamard as ppo
from conftest import (
    ROLLOUT_RESUME_ARGS,
    ROOT,
    SMALL_ROLLOUT,
    assert_bad_model_files_rejected,
    assert_fire_on_life_loss,
    assert_interrupted_run_resumes,
    assert_metrics_do_not_change_the_run,
    assert_progress_and_outputs,
    assert_restores,
    assert_rollout_run_resumed_as_one,
    help_example,
    probe_off,
    read_config,
    read_scalars,
    run_fails,
    run_fails_leaving,
    run_ok,
    run_here,
    run_ok_output,
)

SCRIPT = "ppo_atari_hadamard.py"
TINY = [*SMALL_ROLLOUT, *"--total-timesteps 128 --metrics-interval 64 --metrics-batch-size 32".split()]


def expected_representation_tags(config: dict) -> set[str]:
    """The tags the probe gives for this run's network, computed on a network built here."""
    agent = ppo.Agent(4, config["activation"], config["hadamard"], gate=config["gate"], layer_norm=config["layer_norm"])
    obs = torch.randint(0, 256, (8, 4, 84, 84), dtype=torch.uint8)
    return set(common_metrics.probe(agent, obs, agent.hidden_layers(), "fc", forward=agent.get_value))


@pytest.mark.parametrize(
    "flags, variant",
    [
        ([], "tanh"),  # tanh + HR: the --help example's run below
        (["--activation", "relu"], "relu"),
        (["--param-matched"], "tanh_pm"),
        (["--layer-norm", "--hadamard", "--gate", "glu"], "glu_ln"),
    ],
)
def test_tiny_run_logs_every_metric(workdir, flags, variant):
    run_dir = run_ok(SCRIPT, *TINY, *flags, cwd=workdir)
    scalars = assert_logs_every_metric(run_dir, variant)
    # metrics every 64 steps of a 128-step run: at steps 64 and 128
    assert [step for step, _ in scalars["representation/srank"]] == [64, 128]


def assert_logs_every_metric(run_dir, variant: str) -> dict:
    """The finished run of `variant` logged every representation metric of its network and the losses, all finite."""
    scalars = read_scalars(run_dir)
    config = read_config(run_dir)
    assert config["variant"] == variant and config["algorithm"] == "ppo"
    assert (run_dir / "done.json").exists()

    representation_tags = expected_representation_tags(config)
    some = {"representation/srank", "representation/dead_fraction", "representation/conv1/dormant_fraction"}
    assert some <= representation_tags
    logged = {"charts/SPS", "losses/value_loss", "losses/policy_loss", "losses/entropy", "charts/learning_rate"}
    for tag in representation_tags | logged:
        assert tag in scalars, f"{tag} not logged"
        assert all(math.isfinite(value) for _, value in scalars[tag]), tag
    assert scalars["charts/SPS"][-1][1] > 0
    return scalars


@pytest.mark.parametrize("layer_norm", [False, True])
def test_param_matched_network_has_the_hadamard_parameter_count(layer_norm):
    count = lambda agent: sum(p.numel() for p in agent.parameters())  # noqa: E731
    for num_actions in (4, 18):
        hadamard = count(ppo.Agent(num_actions, hadamard=True, layer_norm=layer_norm))
        width = ppo.representation_width(False, True, num_actions, layer_norm)
        matched = count(ppo.Agent(num_actions, width=width, layer_norm=layer_norm))
        per_unit = 3137 + 2 * layer_norm + num_actions + 1
        assert abs(matched - hadamard) <= per_unit / 2, (matched, hadamard)
        assert width > 512


def test_hadamard_layer_multiplies_two_independent_branches():
    torch.manual_seed(0)

    def branch():
        return torch.nn.Sequential(ppo.layer_init(torch.nn.Linear(6, 5)), torch.nn.Tanh())

    layer = ppo.Hadamard(branch(), branch())
    wa, wb = layer.branch_a[0].weight, layer.branch_b[0].weight
    assert wa.data_ptr() != wb.data_ptr() and not torch.equal(wa, wb)
    x = torch.randn(3, 6)
    out = layer(x)
    assert out.shape == (3, 5)
    torch.testing.assert_close(
        out, torch.tanh(x @ wa.T + layer.branch_a[0].bias) * torch.tanh(x @ wb.T + layer.branch_b[0].bias)
    )
    out.sum().backward()
    assert wa.grad is not None and wa.grad.abs().sum() > 0
    assert wb.grad is not None and wb.grad.abs().sum() > 0


def test_gae_stops_at_termination_and_bootstraps_truncation():
    gamma, lam = 0.9, 0.5
    # one env, 5 steps: a termination at t=1, a truncation at t=3 (step 4 is the autoreset step)
    rewards = torch.tensor([[1.0], [2.0], [0.0], [3.0], [0.0]])
    values = torch.tensor([[0.5], [1.0], [2.0], [4.0], [8.0]])  # values[4] = V(final obs of the truncated game)
    terminated = torch.tensor([[0.0], [1.0], [0.0], [0.0], [0.0]])
    truncated = torch.tensor([[0.0], [0.0], [0.0], [1.0], [0.0]])
    next_value = torch.tensor([[16.0]])
    adv = ppo.compute_gae(rewards, values, next_value, terminated, truncated, gamma, lam)
    d4 = 0.0 + gamma * 16.0 - 8.0
    d3 = 3.0 + gamma * 8.0 - 4.0  # bootstraps from the final observation, recursion cut
    d2 = 0.0 + gamma * 4.0 - 2.0
    d1 = 2.0 - 1.0  # terminal: no bootstrap
    d0 = 1.0 + gamma * 1.0 - 0.5
    expected = [d0 + gamma * lam * d1, d1, d2 + gamma * lam * d3, d3, d4]
    torch.testing.assert_close(adv.flatten(), torch.tensor(expected))


@pytest.mark.parametrize(
    "env_id, rom, sticky",
    [
        ("BreakoutNoFrameskip-v4", "breakout", 0.0),
        ("ALE/MsPacman-v5", "ms_pacman", 0.25),
        ("SpaceInvaders-v5", "space_invaders", 0.0),
        ("BeamRiderNoFrameskip-v4", "beam_rider", 0.0),
    ],
)
def test_env_id_styles(env_id, rom, sticky):
    assert ppo.parse_env_id(env_id, None) == (rom, sticky)
    assert ppo.parse_env_id(env_id, 0.5) == (rom, 0.5)


def test_vector_env_matches_eval_env_and_episode_bookkeeping():
    """For a fixed action sequence without noop starts or sticky actions, the vector env and the eval env
    give the same observations and rewards through life losses to game over, and the game's logged return
    and length are the eval env's sum of raw rewards and its frame count (CleanRL's lengths are in frames)."""
    envs = ppo.make_env("breakout", 1, 0.0, noop_max=0)
    eval_env = ppo.make_eval_env("breakout", 0.0, noop_max=0)
    obs, info = envs.reset(seed=3)
    eval_obs, _ = eval_env.reset(seed=3)
    stats = ppo.EpisodeStats(1, info)
    rng = np.random.default_rng(0)
    total, length, life_losses = 0.0, 0, 0
    while True:
        action = int(rng.integers(4))
        obs, reward, terminated, truncated, info = envs.step(np.array([action]))
        eval_obs, eval_reward, eval_terminated, eval_truncated, eval_info = eval_env.step(action)
        reset_step, finished = stats.step(reward, info)
        assert not reset_step[0] and finished == []
        np.testing.assert_array_equal(obs[0], np.asarray(eval_obs))
        assert reward[0] == eval_reward
        total, length = total + eval_reward, eval_info["episode_frame_number"]
        life_losses += bool(terminated[0]) and not eval_terminated
        if eval_terminated or eval_truncated:
            assert terminated[0] or truncated[0]
            break
    assert life_losses == 4 and total > 0 and length > 4 * 100
    obs, reward, terminated, truncated, info = envs.step(np.array([1]))  # the autoreset step
    reset_step, finished = stats.step(reward, info)
    assert reset_step[0] and finished == [(0, total, length)]
    assert obs[0, :3].max() == 0, "a new game's stack is padded with zero frames"
    envs.close()
    eval_env.close()


def rollout_on_breakout(fire_on_life_loss: bool, never_fire: bool = False):
    """A 400-step rollout of 2 Breakout envs; returns it with its next observation, the finished games and, per step,
    whether the step's observation is a new game's (its stack padded with zero frames: the step was a reset step)."""
    torch.manual_seed(0)
    agent = ppo.Agent(4)
    if never_fire:
        with torch.no_grad():
            agent.actor.bias[1] = -1e9  # the policy never picks FIRE: every FIRE sent is forced
    envs = ppo.make_env("breakout", 2, 0.0)
    obs, info = envs.reset(seed=0)
    rollout = ppo.Rollout(400, 2, obs.shape[1:], "cpu")
    forcing = ppo.FireOnLifeLoss(ppo.fire_action(envs, fire_on_life_loss), info["lives"])
    next_obs, finished = ppo.collect_rollout(agent, envs, ppo.EpisodeStats(2, info), forcing, rollout, torch.from_numpy(obs))
    envs.close()
    following = torch.cat([rollout.obs[1:], next_obs[None]])
    return rollout, next_obs, finished, (following[:, :, :3] == 0).flatten(2).all(dim=2)


def test_rollout_masks_exactly_the_autoreset_steps():
    """On the real env, valid = 0 marks exactly the steps whose action was ignored: the step after which the
    observation is a new game's (its stack padded with zero frames). Those steps carry no reward."""
    rollout, _, finished, new_game = rollout_on_breakout(fire_on_life_loss=False)
    assert len(finished) >= 2 and new_game.sum() == len(finished)
    assert torch.equal(rollout.valid == 0, new_game)
    assert (rollout.rewards[new_game] == 0).all()
    for step, _, _ in finished:
        assert new_game[step].any()


def test_rollout_forces_and_masks_fire_after_a_life_loss():
    """With a policy that never picks FIRE: the step after each life loss that leaves the game going sends FIRE and
    enters no loss (valid = 0), as do the reset steps; no other step is masked and no other FIRE is sent."""
    rollout, _, finished, new_game = rollout_on_breakout(fire_on_life_loss=True, never_fire=True)
    life_lost = rollout.terminations.bool() & ~torch.cat([new_game[1:], torch.zeros_like(new_game[:1])])
    forced = torch.cat([torch.zeros_like(life_lost[:1]), life_lost[:-1]])  # the step after a life loss
    assert forced.sum() >= 4 and len(finished) >= 1
    assert torch.equal(rollout.actions == 1, forced), "FIRE is sent exactly on the forced steps"
    assert torch.equal(rollout.valid == 0, new_game | forced)


def test_fire_on_life_loss_on_the_real_env():
    assert_fire_on_life_loss(ppo)


def test_advantage_normalisation_uses_the_unbiased_std_over_valid_steps():
    """CleanRL normalises a minibatch's advantages with torch's std (n - 1); masked steps take no part."""
    torch.manual_seed(0)
    agent, args = ppo.Agent(4), ppo.Args()
    obs, actions = torch.randint(0, 256, (6, 4, 84, 84), dtype=torch.uint8), torch.randint(0, 4, (6,))
    with torch.no_grad():
        _, logprobs, _, values = agent.get_action_and_value(obs, actions)
    old_logprobs = logprobs - torch.tensor([0.05, -0.03, 0.02, -0.08, 0.01, 0.04])  # ratios inside the clip range
    advantages, valid = torch.tensor([1.0, -2.0, 0.5, 3.0, 100.0, -50.0]), torch.tensor([1.0, 1, 1, 1, 0, 0])
    _, stats = ppo.ppo_loss(agent, args, obs, old_logprobs, actions, advantages, values.flatten(), values.flatten(), valid)
    kept = advantages[:4]
    normalised = (kept - kept.mean()) / (kept.std() + 1e-8)
    expected = -(normalised * (logprobs - old_logprobs)[:4].exp()).mean()
    torch.testing.assert_close(stats[0], expected)


def test_save_load_evaluate_round_trip(workdir):
    run_dir, stdout = run_ok_output(SCRIPT, *TINY, "--save-model", "--eval-episodes", "1", "--capture-video", cwd=workdir)
    assert_progress_and_outputs(stdout, run_dir, videos=True)
    assert len(list((workdir / "videos" / run_dir.name).glob("*.mp4"))) == 1, "one video per evaluation game"
    model = run_dir / "ppo_atari_hadamard.pt"
    trained = json.loads((run_dir / "done.json").read_text())["eval_returns"]
    assert len(trained) == 1 and "eval/episodic_return" in read_scalars(run_dir)

    eval_dir = workdir / "eval"
    eval_dir.mkdir()
    message = run_fails(SCRIPT, "--eval-model", str(model), "--env-id", "PongNoFrameskip-v4", cwd=eval_dir)
    assert "trained on BreakoutNoFrameskip-v4, not PongNoFrameskip-v4" in message
    message = run_fails_leaving(SCRIPT, "--eval-model", str(model), "--run-name", run_dir.name, cwd=workdir, run_dir=run_dir)
    assert message.endswith(f"runs/{run_dir.name} holds another run: give the evaluation another --run-name"), message
    evaluated = run_ok(SCRIPT, "--eval-model", str(model), "--eval-episodes", "1", "--run-name", "evaluation", cwd=eval_dir)
    assert evaluated.name == "evaluation"
    assert json.loads((evaluated / "done.json").read_text())["eval_returns"] == trained
    assert read_scalars(evaluated)["eval/episodic_return"][0][1] == trained[0]


def test_bad_model_files_are_one_line_errors(workdir):
    assert_bad_model_files_rejected(SCRIPT, "ppo", ppo.Agent(4, width=64), workdir)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--env-id", "BreakotNoFrameskip-v4"], "BreakoutNoFrameskip-v4"),
        (["--num-envs", "0"], "--num-envs must be positive"),
        (["--total-timesteps", "-5"], "--total-timesteps must be positive"),
        (["--checkpoint-interval", "-1"], "--checkpoint-interval must be zero or positive"),
        (["--num-envs", "3", "--num-steps", "5", "--num-minibatches", "4"], "does not divide"),
        (["--hadamard", "--param-matched"], "one or the other"),
        (["--metrics-interval", "-1"], "--metrics-interval must be zero or positive"),
        (["--num-envs", "8", "--num-steps", "128", "--total-timesteps", "100"], "less than one batch"),
        (["--learning-rate", "nan"], "--learning-rate must be a finite number"),
        (["--ent-coef", "inf"], "--ent-coef must be a finite number"),
        (["--gamma", "1.5"], "--gamma must be in [0, 1]"),
        (["--clip-coef", "0"], "--clip-coef must be positive"),
        (["--vf-coef", "-1"], "--vf-coef must be zero or positive"),
    ],
)
def test_bad_flags_are_one_line_errors(workdir, flags, message):
    assert message in run_fails(SCRIPT, *flags, cwd=workdir)


def test_metrics_do_not_change_the_run(workdir):
    """Metrics every iteration on 64 of the rollout's valid states (a random draw) vs none: the same losses and games."""
    args = ["--num-envs", "2", "--num-steps", "128", "--total-timesteps", "768", "--num-minibatches", "2", "--seed", "7"]
    scalars = assert_metrics_do_not_change_the_run(
        SCRIPT, args, ["--metrics-interval", "1", "--metrics-batch-size", "64"], workdir
    )
    assert [step for step, _ in scalars["on"]["representation/srank"]] == [256, 512, 768]

    # bench_parity.py reads both runs back: the same score and games, the probe's metrics only where they were logged
    runs = [f"{name}={next((workdir / name / 'runs').iterdir())}" for name in ("on", "off")]
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_parity.py"), "--out", str(workdir / "parity"), *runs],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    rows = {
        line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]]
        for line in result.stdout.splitlines()
        if line.startswith("| on ") or line.startswith("| off ")
    }
    returns = [value for _, value in scalars["on"]["charts/episodic_return"]][-100:]
    assert rows["on"][:4] == rows["off"][:4] and rows["on"][1] == f"{np.mean(returns):.2f} ({np.mean(returns):.2f})"
    assert rows["off"][4:] == ["-", "-"] and rows["on"][4:] != ["-", "-"]
    assert (workdir / "parity" / "parity_return.png").stat().st_size > 0


def test_the_example_that_help_and_the_readme_give_runs_as_printed(workdir):
    """--help's example run, as printed (the README's one-minute check is the same command with its --env-id), trains to
    its end, logs every metric of tanh + HR and says where its outputs are. (--track: tests/test_interrupts.py.)"""
    example = help_example(run_here(SCRIPT, "--help", cwd=workdir).stdout, SCRIPT)
    readme = (ROOT / "README.md").read_text()
    assert f"python {SCRIPT} --env-id BreakoutNoFrameskip-v4 {shlex.join(example)}\n" in readme
    run_dir, stdout = run_ok_output(SCRIPT, *example, cwd=workdir)
    assert_progress_and_outputs(stdout, run_dir, videos=False)
    assert run_dir.name == "smoke" and stdout.strip().splitlines()[-1].startswith("done: outputs in runs/smoke/")
    done = json.loads((run_dir / "done.json").read_text())
    assert done["global_step"] == int(example[example.index("--total-timesteps") + 1]), done
    scalars = assert_logs_every_metric(run_dir, "tanh_hr")  # probed once, at its first iteration
    assert [step for step, _ in scalars["representation/srank"]] == [1024]


def test_compiled_update_runs_and_logs_losses(workdir):
    scalars = read_scalars(run_ok(SCRIPT, *probe_off(TINY), "--compile", cwd=workdir))
    assert all(math.isfinite(value) for _, value in scalars["losses/value_loss"])
    assert not any(tag.startswith("representation/") for tag in scalars), "--metrics-interval 0 turns the probe off"


def test_sigterm_then_the_same_command_resumes_the_run(workdir):
    """SIGTERM mid-run, then the same command (conftest.assert_interrupted_run_resumes): every iteration logged once, the
    learning rate scheduled as in one run, the optimizer's step count that of one run, the checkpoint restored exactly."""
    checkpoint, scalars, run_dir = assert_interrupted_run_resumes(SCRIPT, ROLLOUT_RESUME_ARGS, workdir)
    assert_rollout_run_resumed_as_one(scalars, run_dir, learning_rate=2.5e-4)
    agent = ppo.Agent(checkpoint["num_actions"], width=checkpoint["representation_width"])
    assert_restores(ppo, checkpoint, agent, torch.optim.Adam(agent.parameters(), lr=2.5e-4, eps=1e-5, fused=True))

"""pqn_atari_hadamard.py: Q(lambda) targets, network variants, epsilon-greedy, tiny end-to-end runs."""

import math

import numpy as np
import pytest
import torch

import common_metrics
import pqn_atari_hadamard as pqn
from conftest import (
    ROLLOUT_RESUME_ARGS,
    assert_bad_model_files_rejected,
    assert_fire_on_life_loss,
    assert_interrupted_run_resumes,
    assert_metrics_do_not_change_the_run,
    assert_progress_and_outputs,
    assert_restores,
    assert_rollout_run_resumed_as_one,
    probe_off,
    read_config,
    read_scalars,
    run_fails,
    run_ok,
    run_ok_output,
)

SCRIPT = "pqn_atari_hadamard.py"
TINY = (
    "--num-envs 2 --num-steps 16 --total-timesteps 128 --num-minibatches 2 --update-epochs 1 --metrics-interval 64 "
    "--metrics-batch-size 32"
).split()
LAYERS = ("conv1", "conv2", "conv3", "fc")
RANKS = ("srank", "effective_rank", "feature_rank", "stable_rank", "feature_norm", "dormant_fraction", "dead_fraction")


# ----------------------------------------------------------------------------- Q(lambda)
def test_q_lambda_matches_hand_computation_with_termination_and_truncation():
    gamma, lam = 0.9, 0.5
    # env 0: t1 a life loss (terminated, game goes on), t3 truncated, t4 the autoreset step, t5 the last step.
    # env 1: t0 an autoreset step left over from the last rollout, t2 game over, t3 its autoreset step.
    rewards = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    terminated = torch.tensor([[0, 0], [1, 0], [0, 1], [0, 0], [0, 0], [0, 0]], dtype=torch.bool)
    truncated = torch.tensor([[0, 0], [0, 0], [0, 0], [1, 0], [0, 0], [0, 0]], dtype=torch.bool)
    valid = torch.tensor([[1, 0], [1, 1], [1, 1], [1, 0], [0, 1], [1, 1]], dtype=torch.bool)
    q = torch.tensor([[2.0, 20.0], [3.0, 30.0], [4.0, 40.0], [5.0, 50.0], [6.0, 60.0], [7.0, 70.0]])  # max_a Q(obs[t+1])
    g = pqn.q_lambda_returns(rewards, terminated, truncated, valid, q, gamma, lam)

    e0 = [0.0] * 6
    e0[5] = 1 + gamma * 7  # last step: bootstrap from the observation after the rollout
    e0[4] = 0.0  # autoreset step: no transition
    e0[3] = 0 + gamma * 5  # truncation bootstraps from the final observation, no lambda continuation
    e0[2] = 1 + gamma * (lam * e0[3] + (1 - lam) * 4)
    e0[1] = 1.0  # life loss: terminal target
    e0[0] = 1 + gamma * (lam * e0[1] + (1 - lam) * 2)
    e1 = [0.0] * 6
    e1[5] = 0 + gamma * 70
    e1[4] = 1 + gamma * (lam * e1[5] + (1 - lam) * 60)
    e1[3] = 0.0  # autoreset step after game over
    e1[2] = 1.0  # game over: terminal, the reset transition never enters
    e1[1] = 0 + gamma * (lam * e1[2] + (1 - lam) * 30)
    e1[0] = 0.0  # autoreset step
    expected = torch.tensor([e0, e1]).T
    torch.testing.assert_close(g, expected)


def test_q_lambda_without_dones_is_the_recursive_lambda_return():
    torch.manual_seed(0)
    T, N, gamma, lam = 7, 3, 0.99, 0.65
    r, q = torch.randn(T, N), torch.randn(T, N)
    zeros = torch.zeros(T, N, dtype=torch.bool)
    g = pqn.q_lambda_returns(r, zeros, zeros, ~zeros, q, gamma, lam)
    # forward view: G_t = sum_n (1-lam) lam^(n-1) G_t^(n) + lam^(T-t-1) G_t^(T-t), n-step returns bootstrapped by max Q
    for t in range(T):
        horizon = T - t
        nstep = [sum(gamma**k * r[t + k] for k in range(n)) + gamma**n * q[t + n - 1] for n in range(1, horizon + 1)]
        expected = sum((1 - lam) * lam ** (n - 1) * nstep[n - 1] for n in range(1, horizon)) + lam ** (horizon - 1) * nstep[-1]
        torch.testing.assert_close(g[t], expected)
    # lambda = 0: one-step Q-learning targets
    torch.testing.assert_close(pqn.q_lambda_returns(r, zeros, zeros, ~zeros, q, gamma, 0.0), r + gamma * q)


# ----------------------------------------------------------------------------- env ids, network, exploration
def test_q_loss_averages_over_valid_transitions_only():
    q_table = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])  # nn.Identity: the "observations" are the Q values
    actions, returns, valid = torch.tensor([1, 0, 1]), torch.tensor([0.0, 1.0, 100.0]), torch.tensor([1.0, 1.0, 0.0])
    loss, old_val = pqn.q_loss(torch.nn.Identity(), q_table, actions, returns, valid)
    assert old_val.tolist() == [2.0, 3.0, 6.0]
    assert loss.item() == pytest.approx(((0.0 - 2.0) ** 2 + (1.0 - 3.0) ** 2) / 2)  # the autoreset step's 100 is ignored
    assert pqn.q_loss(torch.nn.Identity(), q_table, actions, returns, torch.zeros(3))[0].item() == 0.0


def test_env_ids_and_sticky_actions():
    assert pqn.parse_env_id("BreakoutNoFrameskip-v4", None) == ("breakout", 0.0)
    assert pqn.parse_env_id("ALE/MsPacman-v5", None) == ("ms_pacman", 0.25)
    assert pqn.parse_env_id("SpaceInvaders-v5", None) == ("space_invaders", 0.0)
    assert pqn.parse_env_id("ALE/BeamRider-v5", 0.1) == ("beam_rider", 0.1)
    with pytest.raises(SystemExit, match="Breakout"):
        pqn.parse_env_id("Breakot-v5", None)


@pytest.mark.parametrize(
    "hadamard,scope", [(False, "representation"), (True, "representation"), (False, "all"), (True, "all")]
)
def test_network_variants(hadamard, scope):
    net = pqn.QNetwork(4, "tanh", hadamard, scope)
    obs = torch.randint(0, 256, (5, 4, 84, 84), dtype=torch.uint8)
    assert net(obs).shape == (5, 4)
    layers = net.hidden_layers()
    assert list(layers) == list(LAYERS)
    assert common_metrics.is_hadamard(layers["fc"]) == hadamard
    for conv in ("conv1", "conv2", "conv3"):
        assert common_metrics.is_hadamard(layers[conv]) == (hadamard and scope == "all")
        module = layers[conv].branch_a if hadamard and scope == "all" else getattr(net, conv)
        assert any(isinstance(m, torch.nn.LayerNorm) for m in module.modules())
        expected = torch.nn.Tanh if scope == "all" else torch.nn.ReLU
        assert isinstance(module[-1] if hadamard and scope == "all" else layers[conv], expected)
    if hadamard:  # LayerNorm on each branch before its activation
        assert [type(m) for m in layers["fc"].branch_a] == [torch.nn.Linear, torch.nn.LayerNorm, torch.nn.Tanh]
        assert layers["fc"].branch_a[0].weight.data_ptr() != layers["fc"].branch_b[0].weight.data_ptr()
        assert not torch.equal(layers["fc"].branch_a[0].weight, layers["fc"].branch_b[0].weight)
    tags = common_metrics.probe(net, obs, layers, representation="fc")
    for layer in LAYERS:
        for metric in RANKS:
            assert math.isfinite(tags[f"representation/{layer}/{metric}"])


@pytest.mark.parametrize("layer_norm", [True, False])
@pytest.mark.parametrize("scope", ["representation", "all"])
def test_param_matched_width_matches_the_hr_count(scope, layer_norm):
    width = pqn.representation_width(True, 4, "tanh", scope, layer_norm)
    with torch.device("meta"):
        hr = pqn.num_parameters(pqn.QNetwork(4, "tanh", True, scope, layer_norm=layer_norm))
        plain = pqn.num_parameters(pqn.QNetwork(4, "tanh", False, scope, width, layer_norm=layer_norm))
        per_unit = pqn.num_parameters(pqn.QNetwork(4, "tanh", False, scope, width + 1, layer_norm=layer_norm)) - plain
    assert width > 512 and abs(plain - hr) <= per_unit / 2


def test_epsilon_greedy_and_schedule():
    torch.manual_seed(0)
    q = torch.tensor([[0.0, 1.0, 0.0]]).repeat(4000, 1)
    assert (pqn.epsilon_greedy(q, 0.0) == 1).all()
    frac_greedy = (pqn.epsilon_greedy(q, 0.5) == 1).float().mean().item()
    assert abs(frac_greedy - (0.5 + 0.5 / 3)) < 0.03
    assert pqn.linear_schedule(1.0, 0.01, 100, 0) == 1.0
    assert pqn.linear_schedule(1.0, 0.01, 100, 50) == pytest.approx(0.505)
    assert pqn.linear_schedule(1.0, 0.01, 100, 1000) == 0.01
    assert pqn.linear_schedule(1.0, 0.01, 0, 5) == 0.01


def test_life_loss_is_terminal_and_the_game_goes_on():
    envs = pqn.make_env("breakout", 1, 0.0)
    envs.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(3000):
        _, _, terminated, truncated, info = envs.step(rng.integers(0, 4, 1))
        if terminated[0]:
            break
    assert terminated[0] and info["lives"][0] == 4  # a life loss ends the learning episode only
    _, _, terminated, _, info = envs.step(np.array([1]))
    assert info["lives"][0] == 4 and info["episode_frame_number"][0] > 0  # no reset: the game goes on
    envs.close()


def test_reset_steps_are_the_steps_after_game_over_or_truncation():
    from ale_py.vector_env import AtariVectorEnv

    envs = AtariVectorEnv(
        "breakout", 2, episodic_life=False, life_loss_info=True, reward_clipping=False, max_num_frames_per_episode=240
    )
    _, info = envs.reset(seed=0)
    stats = pqn.EpisodeStats(2, info)
    rng = np.random.default_rng(0)
    previous_end, previous_frames = np.zeros(2, dtype=bool), info["episode_frame_number"]
    resets = 0
    for _ in range(150):
        _, reward, terminated, truncated, info = envs.step(rng.integers(0, 4, 2))
        reset_step, finished = stats.step(reward, info)
        assert (reset_step == previous_end).all()  # valid = ~reset_step marks exactly the ignored-action steps
        assert not (reset_step & (terminated | truncated)).any() and (reward[reset_step] == 0).all()
        # a game's length is its frame count at its last step, as CleanRL's RecordEpisodeStatistics counts frames
        assert [length for _, _, length in finished] == list(previous_frames[reset_step])
        previous_end, previous_frames = (terminated & (info["lives"] == 0)) | truncated, info["episode_frame_number"]
        resets += reset_step.sum()
    assert resets >= 2
    envs.close()


# ----------------------------------------------------------------------------- end to end
def subdir(workdir, name):
    path = workdir / name
    path.mkdir()
    return path


def check_run(run_dir, hr_layers=()):
    scalars = read_scalars(run_dir)
    for tag in ("charts/SPS", "losses/td_loss", "losses/q_values", "charts/learning_rate", "charts/epsilon"):
        assert tag in scalars and all(math.isfinite(v) for _, v in scalars[tag]), tag
    for layer in LAYERS:
        for metric in RANKS:
            assert f"representation/{layer}/{metric}" in scalars, (layer, metric)
    for metric in RANKS:
        assert f"representation/{metric}" in scalars
    for layer in hr_layers:
        assert f"representation/{layer}/dead_fraction_a" in scalars
    rep = [tag for tag in scalars if tag.startswith("representation/")]
    assert all(math.isfinite(v) for tag in rep for _, v in scalars[tag])
    assert (run_dir / "done.json").exists()
    return scalars


def test_tanh_end_to_end(workdir):
    run_dir = run_ok(SCRIPT, *TINY, cwd=workdir)
    scalars = check_run(run_dir)
    assert "representation/saturation_fraction" in scalars
    assert [step for step, _ in scalars["representation/srank"]] == [32, 96]  # first iteration, then 64 steps on
    assert [s for s, _ in scalars["charts/SPS"]] == [32, 64, 96, 128]
    config = read_config(run_dir)
    assert config["algorithm"] == "pqn" and config["variant"] == "tanh" and config["representation_width"] == 512
    assert config["num_parameters"] == pqn.num_parameters(pqn.QNetwork(4, "tanh"))


def test_metrics_do_not_change_the_run(workdir):
    """A probe of 32 of the rollout's valid states (a random draw) every iteration vs none: the same losses and games."""
    args = "--num-envs 2 --num-steps 64 --total-timesteps 512 --num-minibatches 2 --update-epochs 1".split()
    args += ["--activation", "relu", "--seed", "7"]
    scalars = assert_metrics_do_not_change_the_run(
        SCRIPT, args, ["--metrics-interval", "1", "--metrics-batch-size", "32"], workdir
    )
    assert [step for step, _ in scalars["on"]["representation/srank"]] == [128, 256, 384, 512]
    assert read_config(next((workdir / "off" / "runs").iterdir()))["variant"] == "relu"


def test_fire_on_life_loss_on_the_real_env():
    assert_fire_on_life_loss(pqn)


def test_compiled_loss_gives_the_eager_losses(workdir):
    losses = {}
    for flags in ((), ("--compile",)):
        run_dir = run_ok(SCRIPT, *probe_off(TINY), *flags, "--run-name", "run", cwd=subdir(workdir, str(len(flags))))
        losses[flags] = [value for _, value in read_scalars(run_dir)["losses/td_loss"]]
    assert read_config(run_dir)["compile"]
    assert losses[("--compile",)] == pytest.approx(losses[()], rel=1e-3)


def test_hadamard_scope_all_and_param_matched(workdir):
    run_dir = run_ok(SCRIPT, *TINY, "--hadamard", "--hadamard-scope", "all", cwd=subdir(workdir, "all"))
    check_run(run_dir, hr_layers=LAYERS)
    hr_count = read_config(run_dir)["num_parameters"]
    run_dir = run_ok(SCRIPT, *TINY, "--param-matched", "--hadamard-scope", "all", cwd=subdir(workdir, "pm"))
    check_run(run_dir)
    config = read_config(run_dir)
    assert config["variant"].endswith("_pm") and config["representation_width"] > 512
    assert abs(config["num_parameters"] - hr_count) < 4000


def test_gate_without_layer_norm_end_to_end(workdir):
    run_dir = run_ok(SCRIPT, *TINY, "--no-layer-norm", "--hadamard", "--gate", "bilinear", cwd=workdir)
    scalars = check_run(run_dir, hr_layers=("fc",))
    assert "representation/saturation_fraction" not in scalars  # neither factor of a bilinear layer saturates
    config = read_config(run_dir)
    assert config["variant"] == "bilinear_noln" and (config["gate"], config["layer_norm"]) == ("bilinear", False)
    assert config["num_parameters"] == pqn.num_parameters(pqn.QNetwork(4, hadamard=True, layer_norm=False))


def test_tanh_hr_save_video_and_eval_model(workdir):
    flags = "--hadamard --save-model --capture-video --eval-episodes 1 --eval-epsilon 1 --run-name hr".split()
    flags += ["--no-fire-on-life-loss", "--repeat-action-probability", "0.1"]  # the evaluation takes them from the model
    run_dir, stdout = run_ok_output(SCRIPT, *TINY, *flags, cwd=subdir(workdir, "train"))
    assert_progress_and_outputs(stdout, run_dir, videos=True)
    scalars = check_run(run_dir, hr_layers=("fc",))
    assert "eval/episodic_return" in scalars
    assert read_config(run_dir)["variant"] == "tanh_hr"
    assert list((workdir / "train" / "videos" / "hr").glob("*.mp4"))
    model = run_dir / "pqn_atari_hadamard.pt"
    saved = torch.load(model, weights_only=True)
    assert saved["algorithm"] == "pqn" and saved["args"]["hadamard"]
    message = run_fails(SCRIPT, "--eval-model", str(model), "--env-id", "PongNoFrameskip-v4", cwd=subdir(workdir, "eval"))
    assert "trained on BreakoutNoFrameskip-v4, not PongNoFrameskip-v4" in message
    eval_dir = run_ok(SCRIPT, "--eval-model", str(model), "--eval-episodes", "1", "--eval-epsilon", "1", cwd=workdir / "eval")
    assert len(read_scalars(eval_dir)["eval/episodic_return"]) == 1
    config = read_config(eval_dir)
    assert config["variant"] == "tanh_hr"
    assert (config["fire_on_life_loss"], config["repeat_action_probability"]) == (False, 0.1)


def test_sigterm_then_the_same_command_resumes_the_run(workdir):
    """SIGTERM mid-run, then the same command (conftest.assert_interrupted_run_resumes): every iteration logged once, the
    learning rate and epsilon scheduled as in one run, the optimizer's step count that of one run, the checkpoint restored
    exactly. Epsilon decays over the whole run, so that its schedule goes on across the resume."""
    args = [*ROLLOUT_RESUME_ARGS, "--exploration-fraction", "1"]
    checkpoint, scalars, run_dir = assert_interrupted_run_resumes(SCRIPT, args, workdir)
    assert_rollout_run_resumed_as_one(scalars, run_dir, learning_rate=2.5e-4)
    epsilons = [e for _, e in scalars["charts/epsilon"]]
    assert all(a > b for a, b in zip(epsilons, epsilons[1:])), epsilons
    np.testing.assert_allclose(
        epsilons, [pqn.linear_schedule(1, 0.01, 512, step) for step, _ in scalars["charts/epsilon"]], rtol=1e-6
    )
    q_network = pqn.QNetwork(checkpoint["num_actions"], width=checkpoint["representation_width"])
    assert_restores(pqn, checkpoint, q_network, torch.optim.RAdam(q_network.parameters(), lr=2.5e-4))


@pytest.mark.parametrize(
    "args,message",
    [
        (("--env-id", "Breakot-v5"), "Breakout"),
        (("--num-envs", "0"), "num-envs"),
        (("--total-timesteps", "-5"), "total-timesteps"),
        (("--checkpoint-interval", "-1"), "--checkpoint-interval must be zero or positive"),
        (("--num-envs", "3", "--num-steps", "5", "--num-minibatches", "4"), "does not divide"),
        (("--hadamard", "--param-matched"), "param-matched"),
        (("--metrics-interval", "-1"), "metrics-interval"),
        (("--learning-rate", "nan"), "--learning-rate must be a finite number"),
        (("--max-grad-norm", "inf"), "--max-grad-norm must be a finite number"),
        (("--q-lambda", "2"), "--q-lambda must be in [0, 1]"),
    ],
)
def test_bad_input_stops_with_one_line(workdir, args, message):
    line = run_fails(SCRIPT, *args, cwd=workdir)
    assert line.startswith("error:") and message in line


def test_bad_model_files_are_one_line_errors(workdir):
    assert_bad_model_files_rejected(SCRIPT, "pqn", pqn.QNetwork(4, width=64), workdir, hadamard_scope="representation")

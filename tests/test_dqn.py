"""dqn_atari_hadamard.py: the frame-deduplicated replay buffer on a real env run, the DQN pieces that can be
wrong in small, and end-to-end tiny runs read back from TensorBoard."""

import json
import math
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import common_metrics
import dqn_atari_hadamard as dqn
from conftest import (
    RESUMED,
    ROOT,
    assert_bad_model_files_rejected,
    assert_fire_on_life_loss,
    assert_interrupted_run_resumes,
    assert_metrics_do_not_change_the_run,
    assert_progress_and_outputs,
    assert_same_state,
    interrupt,
    interrupted_line,
    read_config,
    read_scalars,
    run_fails,
    run_ok,
    run_ok_output,
    run_script,
)

SCRIPT = "dqn_atari_hadamard.py"
TINY = (
    "--total-timesteps 300 --learning-starts 100 --buffer-size 500 --train-frequency 4 --target-network-frequency 50 "
    "--metrics-interval 100 --metrics-batch-size 32"
).split()


# ----------------------------------------------------------------------------- replay buffer on a real env run
def collect(num_envs: int, steps: int, seed: int, buffers: list, max_frames: int = 700):
    """Random play on the real vector env, FIRE forced after a life loss, fed to every buffer in `buffers` as the
    training loop does; returns, per env, every observation written (by write index) and the transition from it (or
    None: a reset step or a forced FIRE), and the counts of life losses, forced steps, game overs and truncations
    seen. Checks the env's stacking on the way."""
    envs = dqn.make_env("breakout", num_envs, 0.0, max_num_frames_per_episode=max_frames)
    obs, info = envs.reset(seed=seed)
    stats = dqn.EpisodeStats(num_envs, info)
    fire_on_life_loss = dqn.FireOnLifeLoss(dqn.fire_action(envs, True), info["lives"])
    for rb in buffers:
        rb.add(obs)
    written = [[obs[e].copy()] for e in range(num_envs)]
    episode_start = [[0] for _ in range(num_envs)]  # the write index at which each write's episode starts
    transition = [[] for _ in range(num_envs)]
    events = {"life_loss": 0, "forced": 0, "game_over": 0, "truncation": 0}
    rng = np.random.default_rng(seed)
    done = np.zeros(num_envs, dtype=bool)
    for _ in range(steps):
        actions, forced = fire_on_life_loss.actions(rng.integers(0, 4, num_envs))
        frames = info["episode_frame_number"]
        next_obs, rewards, terminated, truncated, info = envs.step(actions)
        reset_step, finished = stats.step(rewards, info)
        assert [length for _, _, length in finished] == list(frames[reset_step]), "a game's length is its frame count"
        fire_on_life_loss.step(info["lives"])
        # only a terminated or truncated step ends a game (a truncation can come as a life loss's `terminated`)
        assert not (reset_step & ~done).any()
        for rb in buffers:
            rb.add(next_obs, actions, rewards, terminated, episode_start=reset_step, forced=forced)
        for e in range(num_envs):
            w = len(written[e])
            if reset_step[e]:
                assert next_obs[e, :3].max() == 0 and next_obs[e, 3].max() > 0, "a new game starts with zero frames"
                transition[e].append(None)
                episode_start[e].append(w)
            else:
                # a life loss keeps the stack going: the env's stack shifts by one frame every step
                np.testing.assert_array_equal(next_obs[e, :3], written[e][-1][1:])
                transition[e].append(None if forced[e] else (int(actions[e]), float(rewards[e]), bool(terminated[e])))
                episode_start[e].append(episode_start[e][-1])
                events["forced"] += bool(forced[e])
                events["life_loss"] += bool(terminated[e] and info["lives"][e] > 0)
                events["game_over"] += bool(terminated[e] and info["lives"][e] == 0)
                events["truncation"] += bool(truncated[e])
            written[e].append(next_obs[e].copy())
        done = terminated | truncated
    envs.close()
    return written, transition, episode_start, events


def expected_valid(rb, transition, episode_start):
    """The write indices (env, w) a buffer must be able to sample: a stored transition whose needed frames
    (back to its episode start, at most stack - 1 before it) and next observation are all still in the ring."""
    expected = set()
    for e in range(rb.num_envs):
        for w, t in enumerate(transition[e]):
            if t is None or w + 1 >= rb.writes:
                continue
            oldest_needed = max(w - (rb.stack - 1), episode_start[e][w])
            if oldest_needed >= rb.writes - rb.slots:
                expected.add((e, w))
    return expected


def check_buffer(rb, written, transition, episode_start):
    env, slot = rb.valid_transitions()
    got = {(int(e), int(rb.stamps[e, s])) for e, s in zip(env, slot)}
    expected = expected_valid(rb, transition, episode_start)
    assert got == expected
    # the newest ceil(buffer_size / num_envs) transitions of each env are always there
    per_env = rb.slots - rb.stack
    for e in range(rb.num_envs):
        newest = [w for w in range(max(rb.writes - 1 - per_env, 0), rb.writes - 1) if transition[e][w] is not None]
        assert {(e, w) for w in newest} <= got
    if not got:
        return 0
    frames, actions, rewards, terminated = rb.get(env, slot)
    for i, (e, s) in enumerate(zip(env, slot)):
        w = int(rb.stamps[e, s])
        np.testing.assert_array_equal(frames[i, :-1], written[e][w], err_msg=f"obs of env {e} write {w}")
        np.testing.assert_array_equal(frames[i, 1:], written[e][w + 1], err_msg=f"next obs of env {e} write {w}")
        assert (actions[i], rewards[i], terminated[i]) == transition[e][w]
    # sampling draws among exactly these transitions
    sampled_env, sampled_slot = rb.sample_index(256)
    assert {(int(e), int(rb.stamps[e, s])) for e, s in zip(sampled_env, sampled_slot)} <= got
    obs, actions, rewards, next_obs, terminated = rb.sample(8)
    assert obs.shape == next_obs.shape == (8, 4, 84, 84) and obs.dtype == np.uint8
    check_recent_observations(rb, written)
    return len(got)


def check_recent_observations(rb, written):
    """The probe's states: the newest observations exactly as the env returned them, newest first, envs interleaved;
    None while the buffer holds fewer (or its ring can never hold that many with their history)."""
    per_env_max = min(rb.writes, rb.slots - rb.stack)
    for count in {1, rb.num_envs + 1, per_env_max * rb.num_envs, per_env_max * rb.num_envs + 1}:
        recent = rb.recent_observations(count)
        if -(-count // rb.num_envs) > per_env_max:
            assert recent is None, count
            continue
        expected = [written[e][rb.writes - 1 - k] for k in range(-(-count // rb.num_envs)) for e in range(rb.num_envs)][:count]
        np.testing.assert_array_equal(recent, np.stack(expected))


@pytest.mark.parametrize("num_envs", [1, 2])
def test_replay_buffer_returns_exactly_the_collected_transitions(num_envs):
    """Real Breakout play with life losses, forced FIREs, game overs and truncations (700 frames), through buffers that never
    wrap, wrap many times, are smaller than an episode, or smaller than a stack."""
    sizes = [5000, 301, 40, 7, 3, 1]
    buffers = [dqn.FrameReplayBuffer(size, num_envs, seed=size) for size in sizes]
    written, transition, episode_start, events = collect(num_envs, 700 // num_envs, 11 + num_envs, buffers)
    assert events["life_loss"] > 0 and events["forced"] > 0 and events["game_over"] > 0 and events["truncation"] > 0, events
    counts = [check_buffer(rb, written, transition, episode_start) for rb in buffers]
    assert counts[0] == sum(t is not None for e in range(num_envs) for t in transition[e]), (
        "a buffer that never wrapped holds them all"
    )
    assert all(count > 0 for count in counts)


def test_replay_buffer_at_every_write_of_a_small_ring():
    """A 9-transition ring checked after every single step of a real run: every position of the write head."""
    rb = dqn.FrameReplayBuffer(9, 1, seed=0)
    envs = dqn.make_env("breakout", 1, 0.0, max_num_frames_per_episode=300)
    obs, info = envs.reset(seed=5)
    stats = dqn.EpisodeStats(1, info)
    rb.add(obs)
    written, transition, episode_start = [[obs[0].copy()]], [[]], [[0]]
    rng = np.random.default_rng(0)
    starts = 0
    for step in range(260):
        actions = rng.integers(0, 4, 1)
        next_obs, rewards, terminated, truncated, info = envs.step(actions)
        reset_step, _ = stats.step(rewards, info)
        rb.add(next_obs, actions, rewards, terminated, episode_start=reset_step)
        transition[0].append(None if reset_step[0] else (int(actions[0]), float(rewards[0]), bool(terminated[0])))
        episode_start[0].append(len(written[0]) if reset_step[0] else episode_start[0][-1])
        written[0].append(next_obs[0].copy())
        starts += int(reset_step[0])
        check_buffer(rb, written, transition, episode_start)
    assert starts >= 2
    envs.close()


def test_replay_buffer_samples_the_same_after_a_save_load_round_trip(tmp_path):
    """A buffer that has wrapped, saved with torch.save and read back with weights_only=True (as a checkpoint holds it):
    the same contents and, its sampler's generator restored too, the same batches, now and after more writes."""
    rb = dqn.FrameReplayBuffer(150, 2, seed=3)
    collect(2, 200, 5, [rb])
    path = tmp_path / "buffer.pt"
    torch.save({"replay_buffer": rb.state_dict(), "replay_rng": rb.rng.bit_generator.state}, path)
    saved = torch.load(path, weights_only=True)
    loaded = dqn.FrameReplayBuffer(150, 2, seed=0)
    loaded.load_state_dict(saved["replay_buffer"])
    loaded.rng.bit_generator.state = saved["replay_rng"]
    assert (loaded.pos, loaded.writes) == (rb.pos, rb.writes) and rb.writes > rb.slots
    for _ in range(2):
        for a, b in zip(rb.sample(32), loaded.sample(32)):
            np.testing.assert_array_equal(a, b)
        obs = np.zeros((2, 4, 84, 84), dtype=np.uint8)
        obs[:, -1] = 7
        for buffer in (rb, loaded):
            buffer.add(obs, [1, 2], [0.0, 1.0], [False, True], episode_start=[True, False])
    with pytest.raises(ValueError, match="frames have shape"):
        dqn.FrameReplayBuffer(100, 2).load_state_dict(saved["replay_buffer"])


def test_a_checkpoint_writes_the_replay_buffer_without_a_second_copy(tmp_path):
    """benchmarks/bench_checkpoint.py on DQN with a 40k-transition buffer (283 MB, every frame written): while the checkpoint
    is written the peak resident memory grows by under a tenth of the buffer, and the figures are those of a real write."""
    flags = ["--scripts", "dqn", "--buffer-size", "40000", "--repeats", "1", "--json", "--dir", str(tmp_path)]
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_checkpoint.py"), *flags],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(result.stdout)
    assert [row["variant"] for row in rows] == ["tanh", "tanh_hr"]
    for row in rows:
        assert row["bytes"] > row["buffer_bytes"] > 2.8e8 and row["write_s"] > 0 and row["read_s"] > 0
        assert row["write_peak_growth_bytes"] < 0.1 * row["buffer_bytes"], row
    assert list(tmp_path.iterdir()) == [], "the benchmark leaves nothing behind"


def test_fire_on_life_loss_on_the_real_env():
    assert_fire_on_life_loss(dqn)


def test_replay_buffer_memory_per_transition():
    rb = dqn.FrameReplayBuffer(10_000, 1)
    per_transition = rb.nbytes() / 10_000
    assert 84 * 84 <= per_transition < 84 * 84 + 20
    # 1M transitions: under 7.5 GB (CleanRL's buffer stores obs and next_obs stacks: 56 kB each)
    assert per_transition * 1_000_000 + 4 * 7070 < 7.5e9


def test_replay_buffer_refuses_bad_input():
    rb = dqn.FrameReplayBuffer(10, 2)
    with pytest.raises(ValueError, match="start an episode"):
        rb.add(np.zeros((2, 4, 84, 84), np.uint8), episode_start=np.array([True, False]))
    obs = np.zeros((2, 4, 84, 84), np.uint8)
    obs[:, 0] = 1
    with pytest.raises(ValueError, match="zero-padded"):
        rb.add(obs)
    assert rb.try_sample(4) is None
    rb.add(np.zeros((2, 4, 84, 84), np.uint8))
    with pytest.raises(ValueError, match="no complete transition"):
        rb.sample_index(4)


# ----------------------------------------------------------------------------- DQN pieces
def test_epsilon_schedule_is_cleanrl_linear():
    total = 10_000_000
    duration = 0.10 * total
    assert dqn.linear_schedule(1.0, 0.01, duration, 0) == 1.0
    assert dqn.linear_schedule(1.0, 0.01, duration, 500_000) == pytest.approx(0.505)
    assert dqn.linear_schedule(1.0, 0.01, duration, 1_000_000) == pytest.approx(0.01)
    assert dqn.linear_schedule(1.0, 0.01, duration, 5_000_000) == 0.01
    assert dqn.linear_schedule(1.0, 0.01, 0, 0) == 0.01  # exploration-fraction 0


@pytest.mark.parametrize("num_envs", [1, 3, 8])
def test_train_and_target_steps_match_cleanrl_loop(num_envs):
    """Counting env steps `num_envs` at a time gives the same updates as CleanRL's one-step loop."""
    total, learning_starts = 5000 // num_envs * num_envs, 1000
    for every, after in ((4, learning_starts), (1000, learning_starts), (100, -1), (7, 0)):
        cleanrl = sum(1 for step in range(total) if step > after and step % every == 0)
        ours = sum(dqn.steps_due(start, num_envs, every, after) for start in range(0, total, num_envs))
        assert ours == cleanrl
    if num_envs == 1:
        for step in range(3000):
            assert dqn.steps_due(step, 1, 4, learning_starts) == int(step > learning_starts and step % 4 == 0)


def test_target_update_copies_or_mixes_the_weights():
    torch.manual_seed(0)
    online, target = dqn.QNetwork(4), dqn.QNetwork(4)
    before = [p.clone() for p in target.parameters()]
    dqn.update_target(target, online, 0.25)
    for b, t, o in zip(before, target.parameters(), online.parameters()):
        torch.testing.assert_close(t, 0.25 * o + 0.75 * b)
    dqn.update_target(target, online, 1.0)
    assert all(torch.equal(t, o) for t, o in zip(target.parameters(), online.parameters()))


def test_td_update_target_bootstraps_unless_terminated():
    """The TD target is sign(r) + gamma * max_a Q_target(s', a) * (1 - terminated)."""
    torch.manual_seed(0)
    online, target = dqn.QNetwork(4), dqn.QNetwork(4)
    frames = torch.randint(0, 256, (4, 5, 84, 84), dtype=torch.uint8).numpy()
    actions = np.array([0, 1, 2, 3])
    rewards = np.array([5.0, -2.0, 0.0, 1.0], dtype=np.float32)
    terminated = np.array([False, True, False, True])
    with torch.no_grad():
        next_max = target(torch.from_numpy(frames[:, 1:])).max(1).values
        q = online(torch.from_numpy(frames[:, :-1]))[torch.arange(4), torch.from_numpy(actions)]
    expected_target = torch.tensor([1.0, -1.0, 0.0, 1.0]) + 0.9 * next_max * torch.tensor([1.0, 0.0, 1.0, 0.0])
    optimizer = torch.optim.SGD(online.parameters(), lr=0.0)
    loss, q_mean = dqn.td_update(online, target, optimizer, frames, actions, rewards, terminated, 0.9, "cpu")
    torch.testing.assert_close(loss, torch.nn.functional.mse_loss(q, expected_target))
    torch.testing.assert_close(q_mean, q.mean())


@pytest.mark.parametrize("layer_norm", [False, True])
def test_param_matched_network_has_the_hadamard_parameter_count(layer_norm):
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    for num_actions in (4, 18):
        hadamard = count(dqn.QNetwork(num_actions, hadamard=True, layer_norm=layer_norm))
        width = dqn.representation_width(False, True, num_actions, layer_norm)
        matched = count(dqn.QNetwork(num_actions, width=width, layer_norm=layer_norm))
        assert abs(matched - hadamard) <= (3137 + 2 * layer_norm + num_actions) / 2, (matched, hadamard)
        assert width > 512


def test_hadamard_representation_has_two_branches_ending_in_the_activation():
    net = dqn.QNetwork(6, "sigmoid", hadamard=True)
    layers = net.hidden_layers()
    assert common_metrics.is_hadamard(layers["fc"])
    assert isinstance(net.representation.branch_a[-1], torch.nn.Sigmoid) and isinstance(
        net.representation.branch_b[-1], torch.nn.Sigmoid
    )
    x = torch.randint(0, 256, (3, 4, 84, 84), dtype=torch.uint8)
    assert net(x).shape == (3, 6)


def test_env_id_styles():
    assert dqn.parse_env_id("BreakoutNoFrameskip-v4", None) == ("breakout", 0.0)
    assert dqn.parse_env_id("ALE/MsPacman-v5", None) == ("ms_pacman", 0.25)
    assert dqn.parse_env_id("SpaceInvaders-v5", 0.5) == ("space_invaders", 0.5)


# ----------------------------------------------------------------------------- end to end
def expected_representation_tags(config: dict) -> set[str]:
    net = dqn.QNetwork(4, config["activation"], config["hadamard"], gate=config["gate"], layer_norm=config["layer_norm"])
    obs = torch.randint(0, 256, (8, 4, 84, 84), dtype=torch.uint8)
    return set(common_metrics.probe(net, obs, net.hidden_layers(), "fc"))


@pytest.mark.parametrize(
    "flags, variant",
    [
        ([], "tanh"),
        (["--hadamard", "--num-envs", "2"], "tanh_hr"),
        (["--activation", "relu", "--param-matched"], "relu_pm"),
        (["--layer-norm", "--hadamard", "--gate", "swiglu"], "swiglu_ln"),
    ],
)
def test_tiny_run_logs_every_metric(workdir, flags, variant):
    run_dir = run_ok(SCRIPT, *TINY, *flags, cwd=workdir)
    scalars = read_scalars(run_dir)
    config = read_config(run_dir)
    assert config["variant"] == variant and config["algorithm"] == "dqn"
    assert config["num_parameters"] > 0 and config["representation_width"] == (
        512 if "_pm" not in variant else dqn.representation_width(False, True, 4)
    )
    assert (run_dir / "done.json").exists()
    representation_tags = expected_representation_tags(config)
    some = {"representation/srank", "representation/dead_fraction", "representation/conv1/dormant_fraction"}
    assert some <= representation_tags
    for tag in representation_tags | {"charts/SPS", "losses/td_loss", "losses/q_values", "charts/epsilon"}:
        assert tag in scalars, f"{tag} not logged"
        assert all(math.isfinite(value) for _, value in scalars[tag]), tag
    # the first probe as soon as the buffer holds 32 states (at initialisation), then every 100 steps, the final network's too
    num_envs = config["num_envs"]
    assert [step for step, _ in scalars["representation/srank"]] == [(-(-32 // num_envs) - 1) * num_envs, 100, 200, 300]
    # training starts after step 100; losses every 100 steps, from the first logging step after training starts
    assert [step for step, _ in scalars["losses/td_loss"]] == [200]
    assert scalars["charts/SPS"][-1][1] > 0


def test_save_load_evaluate_round_trip(workdir):
    (workdir / "a").mkdir()
    run_dir, stdout = run_ok_output(SCRIPT, *TINY, "--seed", "7", "--save-model", "--eval-episodes", "1", cwd=workdir / "a")
    assert_progress_and_outputs(stdout, run_dir, videos=False)
    model = run_dir / "dqn_atari_hadamard.pt"
    checkpoint = torch.load(model, weights_only=True)
    assert checkpoint["algorithm"] == "dqn" and checkpoint["num_actions"] == 4
    trained = json.loads((run_dir / "done.json").read_text())["eval_returns"]
    assert len(trained) == 1 and "eval/episodic_return" in read_scalars(run_dir)

    eval_dir = workdir / "eval"
    eval_dir.mkdir()
    message = run_fails(SCRIPT, "--eval-model", str(model), "--env-id", "PongNoFrameskip-v4", cwd=eval_dir)
    assert "trained on BreakoutNoFrameskip-v4, not PongNoFrameskip-v4" in message
    evaluated = run_ok(SCRIPT, "--eval-model", str(model), "--eval-episodes", "1", "--seed", "7", cwd=eval_dir)
    assert json.loads((evaluated / "done.json").read_text())["eval_returns"] == trained
    assert read_scalars(evaluated)["eval/episodic_return"][0][1] == trained[0]


def test_metrics_do_not_change_the_run(workdir):
    """A probe of 32 recent states every 50 steps vs none: the same losses and games (the probe draws nothing)."""
    args = "--total-timesteps 600 --learning-starts 100 --buffer-size 1000 --target-network-frequency 50 --seed 7".split()
    assert_metrics_do_not_change_the_run(SCRIPT, args, ["--metrics-interval", "50", "--metrics-batch-size", "32"], workdir)


def test_bad_model_files_are_one_line_errors(workdir):
    assert_bad_model_files_rejected(SCRIPT, "dqn", dqn.QNetwork(4, width=64), workdir)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--env-id", "BreakotNoFrameskip-v4"], "BreakoutNoFrameskip-v4"),
        (["--num-envs", "0"], "--num-envs must be positive"),
        (["--total-timesteps", "-5"], "--total-timesteps must be positive"),
        (["--checkpoint-interval", "-1"], "--checkpoint-interval must be zero or positive"),
        (["--hadamard", "--param-matched"], "one or the other"),
        (["--learning-rate", "nan"], "--learning-rate must be a finite number"),
        (["--gamma", "-0.1"], "--gamma must be in [0, 1]"),
    ],
)
def test_bad_flags_are_one_line_errors(workdir, flags, message):
    assert message in run_fails(SCRIPT, *flags, cwd=workdir)


# training from step 200, a checkpoint at step 400, epsilon decaying over the whole run (so across an interruption)
RESUME_ARGS = (
    "--total-timesteps 1000 --learning-starts 200 --buffer-size 1000 --metrics-interval 500 --metrics-batch-size 32 "
    "--checkpoint-interval 400 --exploration-fraction 1"
).split()


def test_sigterm_then_the_same_command_resumes_the_run(workdir):
    """SIGTERM once training has begun (after the checkpoint at step 400), then the same command
    (conftest.assert_interrupted_run_resumes); here: losses logged every 100 steps as in one run, epsilon scheduled as in
    one run, the optimizer's step count that of an uninterrupted run, the checkpoint (networks, optimizer, replay buffer,
    generators) restored exactly."""
    args = [*RESUME_ARGS, "--save-model", "--eval-episodes", "1"]
    checkpoint, scalars, run_dir = assert_interrupted_run_resumes(
        SCRIPT, args, workdir, ready=lambda run: (run / "checkpoint.pt").exists()
    )
    assert checkpoint["global_step"] > 400 and "replay_buffer" in checkpoint
    steps = [step for step, _ in scalars["losses/td_loss"]]
    assert steps == list(range(300, 1000, 100)), steps
    epsilons = [e for _, e in scalars["charts/epsilon"]]
    assert all(a > b for a, b in zip(epsilons, epsilons[1:])), epsilons
    np.testing.assert_allclose(epsilons, [dqn.linear_schedule(1, 0.01, 1000, s) for s in steps], rtol=1e-6)
    final = torch.load(
        run_dir / "checkpoint.pt", weights_only=True
    )  # the finished training's (no buffer), before its evaluation
    assert final["global_step"] == 1000 and "replay_buffer" not in final
    assert {int(state["step"]) for state in final["optimizer"]["state"].values()} == {dqn.steps_due(0, 1000, 4, 200)}

    # what the resumed run restores is what the checkpoint holds
    q_network, target_network = (
        dqn.QNetwork(checkpoint["num_actions"], width=checkpoint["representation_width"]) for _ in range(2)
    )
    optimizer = dqn.make_optimizer(q_network.parameters(), 1e-4)
    rb, rng = dqn.FrameReplayBuffer(1000, 1, seed=99), np.random.default_rng(99)
    redo_generator = torch.Generator().manual_seed(98)
    assert dqn.restore(checkpoint, q_network, target_network, optimizer, rb, rng, redo_generator)
    assert_same_state(q_network.state_dict(), checkpoint["state_dict"])
    assert_same_state(target_network.state_dict(), checkpoint["target_state_dict"])
    assert_same_state(optimizer.state_dict(), checkpoint["optimizer"])
    assert_same_state(rb.state_dict(), checkpoint["replay_buffer"])
    assert_same_state(
        (rb.rng.bit_generator.state, rng.bit_generator.state), (checkpoint["replay_rng"], checkpoint["exploration_rng"])
    )
    assert_same_state(dqn.rng_states(), checkpoint["rng"])
    assert_same_state(redo_generator.get_state(), checkpoint["redo_generator"])


def test_a_checkpoint_without_the_buffer_refills_it_before_training(workdir):
    """--no-checkpoint-buffer: the checkpoint holds no replay buffer; the resumed run refills it for --learning-starts steps
    before it trains (and logs losses) again."""
    args = [*RESUME_ARGS, "--no-checkpoint-buffer", "--run-name", RESUMED]
    step = interrupted_line(
        interrupt(SCRIPT, *args, cwd=workdir, ready=lambda: (workdir / "runs" / RESUMED / "checkpoint.pt").exists()),
        signal.SIGTERM,
    )
    assert "replay_buffer" not in torch.load(workdir / "runs" / RESUMED / "checkpoint.pt", weights_only=True)
    resumed = run_script(SCRIPT, *args, cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"the replay buffer refills until step {step + 200}" in resumed.stdout
    steps = [s for s, _ in read_scalars(workdir / "runs" / RESUMED)["losses/td_loss"]]
    assert steps == [s for s in range(300, 1000, 100) if s < step or s > step + 200], (step, steps)
    assert steps[-1] == 900, (step, steps)  # it trained again after the refill

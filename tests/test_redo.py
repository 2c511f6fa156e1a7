"""ReDo in the three training scripts (the recycling itself is tested in tests/test_common_metrics.py): a tiny run
recycles and logs each layer's fraction, the probe on or off gives the same run with ReDo on, a run interrupted and
resumed recycles on the schedule of one run with ReDo's generator restored, and ReDo re-initialises as the network's
constructor. The bad flags are in tests/test_bad_input.py."""

import copy
import json

import pytest
import torch
import torch.nn as nn

import dqn_atari_hadamard as dqn
import ppo_atari_hadamard as ppo
import pqn_atari_hadamard as pqn
from conftest import (
    ROLLOUT_RESUME_ARGS,
    assert_interrupted_run_resumes,
    assert_metrics_do_not_change_the_run,
    assert_restores,
    assert_rollout_run_resumed_as_one,
    assert_same_state,
)

PPO, DQN, PQN = "ppo_atari_hadamard.py", "dqn_atari_hadamard.py", "pqn_atari_hadamard.py"
LAYERS = ("conv1", "conv2", "conv3", "fc")
# ReDo every 128 steps, the conv layers too, with tau 1: the units below their layer's mean score (about half) are
# recycled, so that ReDo changes the run
REDO = "--redo-interval 128 --redo-tau 1 --redo-conv".split()
# runs that finish a game (as each script's metrics test), HR in PPO and in all of PQN's layers; --metrics-batch-size is
# ReDo's too, so both runs have it
RUNS = {
    PPO: "--num-envs 2 --num-steps 128 --total-timesteps 768 --num-minibatches 2 --seed 7 --hadamard".split(),
    PQN: "--num-envs 2 --num-steps 64 --total-timesteps 512 --num-minibatches 2 --update-epochs 1 --seed 7".split()
    + "--hadamard --hadamard-scope all".split(),
    DQN: "--total-timesteps 600 --learning-starts 100 --buffer-size 1000 --target-network-frequency 50 --seed 7".split(),
}
# the probe every iteration (PPO, PQN) or every 50 env steps (DQN)
PROBE_INTERVAL = {PPO: "1", PQN: "1", DQN: "50"}
# the steps ReDo runs at: the end of the first iteration (PPO's batch of 256, PQN's of 128) or env step at or after each
# multiple of 128
REDO_STEPS = {PPO: [256, 512, 768], PQN: [128, 256, 384, 512], DQN: [128, 256, 384, 512]}


def assert_redo_logged(scalars: dict, steps: list):
    """Each layer's recycled fraction at each of `steps`, in [0, 1], and some units recycled."""
    for layer in LAYERS:
        events = scalars[f"redo/{layer}_recycled_fraction"]
        assert [step for step, _ in events] == steps, (layer, events)
        assert all(0.0 <= value <= 1.0 for _, value in events), (layer, events)
        assert any(value > 0.0 for _, value in events), (layer, events)


@pytest.mark.parametrize("script", RUNS)
def test_redo_recycles_and_the_probe_does_not_change_the_run(workdir, script):
    """A run with ReDo logs every layer's recycled fraction at each interval; with the probe on or off, its
    losses, games and recycled fractions are the same: ReDo draws from its own generator, the probe from its own. The
    variant's name ends in `_redo`."""
    args = [*RUNS[script], *REDO, "--metrics-batch-size", "32"]
    scalars = assert_metrics_do_not_change_the_run(script, args, ["--metrics-interval", PROBE_INTERVAL[script]], workdir)
    assert_redo_logged(scalars["on"], REDO_STEPS[script])
    (config,) = workdir.glob("on/**/config.json")
    assert json.loads(config.read_text())["variant"] == (
        "tanh_hr_all_redo" if script == PQN else "tanh_hr_redo" if script == PPO else "tanh_redo"
    )
    for layer in LAYERS:
        tag = f"redo/{layer}_recycled_fraction"
        assert scalars["on"][tag] == scalars["off"][tag], tag


@pytest.mark.parametrize("script", [PQN])  # PPO: the same schedule lines; its restore of ReDo in its SIGTERM test
def test_a_run_with_redo_resumes_as_one_run(workdir, script):
    """SIGTERM after the first checkpoint (step 128, after the first ReDo), then the same command: ReDo runs at every
    multiple of 128 once, as in one run, its next step and its generator are in the checkpoint and restored."""
    args = [*ROLLOUT_RESUME_ARGS, *REDO, "--checkpoint-interval", "128"]
    checkpoint, scalars, run_dir = assert_interrupted_run_resumes(
        script, args, workdir, ready=lambda run: (run / "checkpoint.pt").exists()
    )
    assert_rollout_run_resumed_as_one(scalars, run_dir, learning_rate=2.5e-4)
    assert_redo_logged(scalars, [128, 256, 384, 512])
    assert checkpoint["global_step"] >= 128 and checkpoint["next_redo_step"] == (checkpoint["global_step"] // 128 + 1) * 128
    # the generator drew ReDo's states and re-initialisations: it is not the seed's any more
    assert not torch.equal(checkpoint["redo_generator"], torch.Generator().manual_seed(1).get_state())
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["next_redo_step"] == 640
    if script == PPO:
        network = ppo.Agent(checkpoint["num_actions"], width=checkpoint["representation_width"])
        optimizer = torch.optim.Adam(network.parameters(), lr=2.5e-4, eps=1e-5, fused=True)
    else:
        network = pqn.QNetwork(checkpoint["num_actions"], width=checkpoint["representation_width"])
        optimizer = torch.optim.RAdam(network.parameters(), lr=2.5e-4)
    assert_restores(ppo if script == PPO else pqn, checkpoint, network, optimizer)


@pytest.mark.parametrize("layer", [nn.Linear(8, 5), nn.Conv2d(3, 4, 3)], ids=["linear", "conv"])
def test_redo_reinitialises_as_the_networks_constructor(layer):
    """ReDo's draw of a layer from a generator seeded as torch's is the network's own initialisation: DQN's
    `default_init` is PyTorch's (`reset_parameters`), PPO's and PQN's `layer_init` the same orthogonal weights."""
    with torch.random.fork_rng():
        torch.manual_seed(3)
        built = copy.deepcopy(layer)
        built.reset_parameters()
        assert_same_state(
            dqn.default_init(copy.deepcopy(layer), torch.Generator().manual_seed(3)).state_dict(), built.state_dict()
        )
        for module in (ppo, pqn):
            torch.manual_seed(3)
            built = module.layer_init(copy.deepcopy(layer))
            drawn = module.layer_init(copy.deepcopy(layer), generator=torch.Generator().manual_seed(3))
            assert_same_state(drawn.state_dict(), built.state_dict())


NETWORKS_WITH_LAYER_NORM = {  # PPO's and DQN's --layer-norm, PQN's default; HR, so that conv3 feeds two branches
    PPO: lambda: ppo.Agent(4, hadamard=True, layer_norm=True),
    DQN: lambda: dqn.QNetwork(4, hadamard=True, layer_norm=True),
    PQN: lambda: pqn.QNetwork(4, hadamard=True),
}


@pytest.mark.parametrize("script", NETWORKS_WITH_LAYER_NORM)
def test_redo_recycles_each_layers_layer_norm_and_zeroes_the_next_layers_inputs(script):
    """With LayerNorm, each layer ReDo recycles is its weight layer and its LayerNorm (in each HR branch), and it feeds
    the next weight layer, whose inputs are that layer's units (for conv3, 49 flattened columns a channel)."""
    module = {PPO: ppo, DQN: dqn, PQN: pqn}[script]
    layers = module.redo_layers(NETWORKS_WITH_LAYER_NORM[script](), conv=True)
    assert list(layers) == list(LAYERS)
    for name, (branches, feeds) in layers.items():
        for branch in branches:
            weight, norm = (m for m in branch if isinstance(m, (nn.Linear, nn.Conv2d, nn.LayerNorm)))
            assert isinstance(weight, (nn.Linear, nn.Conv2d)) and isinstance(norm, nn.LayerNorm), name
            units = weight.weight.shape[0]
            assert norm.weight.shape[0] == units, name
        for feed in feeds:
            assert isinstance(feed, (nn.Linear, nn.Conv2d)) and feed.weight.shape[1] in (units, units * 49), name

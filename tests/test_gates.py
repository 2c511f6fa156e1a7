"""The two-branch gate family: hadamard, glu, swiglu, bilinear. In common_metrics.py and in the three scripts' networks.

Worked values of the dead rule per gate (`dead_units`), the dormant score of the product (`dormant_units`), the
probe's tags for a gate layer, and the unchanged numbers of plain and HR layers against a frozen copy of the
metrics as they were before the gates (the `old_` functions below). Then the scripts' `--gate` (each gate's formula,
HR's shape), `--layer-norm` (its placement), their model files, and the networks of the earlier flags, unchanged."""

import math
import typing

import pytest
import torch
import torch.nn as nn

import common_metrics as cm
import dqn_atari_hadamard as dqn
import ppo_atari_hadamard as ppo
import pqn_atari_hadamard as pqn
from conftest import assert_same_state


def cols(*units) -> torch.Tensor:
    """An `N x units` float64 matrix whose column i is `units[i]` (one value per state)."""
    return torch.tensor(units, dtype=torch.float64).T.contiguous()


def mask(*values: int) -> torch.Tensor:
    return torch.tensor([bool(v) for v in values])


# ----------------------------------------------------------------------------- the activations
@pytest.mark.parametrize("activation", ["swish", "identity"])
def test_activation_derivative_matches_autograd(activation):
    z = torch.linspace(-20, 6, 105, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(cm._activation(z, activation).sum(), z)
    assert torch.allclose(cm.activation_derivative(z.detach(), activation), grad, atol=1e-12)


def test_activation_names_of_the_gate_modules():
    names = [cm.activation_name(m) for m in (nn.Sigmoid(), nn.SiLU(), nn.Identity(), nn.Tanh(), nn.ReLU(), nn.GELU())]
    assert names == ["sigmoid", "swish", "identity", "tanh", "relu", "gelu"]
    # the functions the dead rule evaluates are the modules' own
    z = torch.linspace(-20, 6, 53, dtype=torch.float64)
    for module in (nn.SiLU(), nn.Identity(), nn.Sigmoid()):
        assert torch.equal(cm._activation(z, cm.activation_name(module)), module(z))


@pytest.mark.parametrize(
    "gate, activation, expected",
    [
        ("hadamard", "tanh", ("tanh", "tanh")),
        ("hadamard", "relu", ("relu", "relu")),
        ("glu", "tanh", ("sigmoid", "identity")),
        ("swiglu", "relu", ("swish", "identity")),
        ("bilinear", "tanh", ("identity", "identity")),
    ],
)
def test_gate_activations(gate, activation, expected):
    assert cm.gate_activations(gate, activation) == expected
    assert gate in cm.GATES


# the documented thresholds of the dead rule at eps_grad = 0.02 (dead_units' docstring): (z alive, z dead) pairs
@pytest.mark.parametrize(
    "activation, alive, dead",
    [
        ("tanh", [2.64, -2.64], [2.65, -2.65]),
        ("sigmoid", [3.87, -3.87], [3.88, -3.88]),
        ("relu", [1e-9], [0.0, -1.0]),
        ("gelu", [-2.78, -0.81, -0.70], [-2.80, -0.80, -0.71, -0.75]),
        ("swish", [-5.37, -1.38, -1.19], [-5.39, -1.37, -1.20, -1.2785, -20.0]),
        ("identity", [0.0, -100.0, 100.0], []),
    ],
)
def test_documented_derivative_thresholds(activation, alive, dead):
    # one unit per value, the same value on both states
    z = cols(*([v, v] for v in alive + dead))
    assert torch.equal(cm.dead_units(z, activation), mask(*[0] * len(alive), *[1] * len(dead)))


@pytest.mark.parametrize("activation, z, derivative", [("swish", 0.0, 0.5), ("identity", -3.0, 1.0)])
def test_dead_threshold_is_strict_for_swish_and_identity(activation, z, derivative):
    x = torch.full((3, 2), z, dtype=torch.float64)
    assert cm.dead_fraction(x, activation, eps_grad=derivative) == 0.0
    assert cm.dead_fraction(x, activation, eps_grad=math.nextafter(derivative, math.inf)) == 1.0


# ----------------------------------------------------------------------------- the dead rule per gate
# dh/dz_a = f_a'(z_a) f_b(z_b) is closed when |f_a'(z_a)| < 0.02 or |f_b(z_b)| < 1e-6, dh/dz_b likewise; a unit is dead
# when both are closed on every state (2 states per unit below)
@pytest.mark.parametrize(
    "activations, za, zb, expected",
    [
        (
            # glu, h = sigmoid(z_a) * z_b
            ("sigmoid", "identity"),
            # 0: the gate saturates low, s(-10) = 4.5e-5 (s' = 4.5e-5 < .02 closes a), the linear factor nonzero: b's
            #    path passes s(-10) * dL/dh, alive | 1: the gate shut, s(-15) = 3.1e-7 and s(-20) = 2.1e-9 < 1e-6,
            #    dead | 2: gate saturated open, z_b = 0: a closed, b open (s = 1), alive | 3: shut on state 1 only |
            # 4: s(0) * 0: a closed (z_b = 0), b open (s(0) = .5), alive
            ([-10, -10], [-15, -20], [10, 10], [-15, 0], [0, 0]),
            ([2, -3], [2, -3], [0, 0], [1, 1], [0, 0]),
            mask(0, 1, 0, 0, 0),
        ),
        (
            # swiglu, h = swish(z_a) * z_b
            ("swish", "identity"),
            # 0: swish(-20) = -4.1e-8, swish(-18) = -2.7e-7: zero, and swish' tiny: dead | 1: swish(-8) = -2.7e-3,
            #    swish'(-8) = -2.3e-3 closes a, b's path is open: alive | 2: the saddle 0 * 0 (swish'(0) = .5 but z_b = 0;
            #    swish(0) = 0): dead | 3: swish'(0) = .5 with z_b nonzero: alive | 4: swish'(-1.2785) = -7.7e-6 (the
            #    zero of swish') closes a, swish(-1.2785) = -.28 leaves b open: alive
            ([-20, -18], [-8, -8], [0, 0], [0, 0], [-1.2785, -1.2785]),
            ([3, -1], [3, 3], [0, 0], [1, -1], [2, 2]),
            mask(1, 0, 1, 0, 0),
        ),
        (
            # bilinear, h = z_a * z_b
            ("identity", "identity"),
            # 0: the other factor exactly zero on all states: a closed, but dh/dz_b = z_a = 3, -2: alive | 1: both 0:
            #    dead | 2: both below 1e-6: dead | 3: b's path open on state 2 (z_a = 1) | 4: small, nonzero: alive
            ([3, -2], [0, 0], [0, 5e-7], [0, 1], [1e-3, -1e-3]),
            ([0, 0], [0, 0], [-5e-7, 0], [0, 0], [1e-3, 2e-3]),
            mask(0, 1, 1, 0, 0),
        ),
        (
            # hadamard, sigmoid: both saturated low (s' < .02, s > 1e-6): no path is closed by a zero factor: dead
            # only by the derivatives | one branch unsaturated: alive | shut gate s(-20) < 1e-6 with b saturated: dead
            ("sigmoid", "sigmoid"),
            ([-10, 10], [-10, -10], [-20, -20]),
            ([-10, 10], [0, 0], [10, 10]),
            mask(1, 0, 1),
        ),
        (
            # hadamard, swish: swish(-20) ~ 0 with swish'(-20) ~ 0, b's path closed by it | both in swish''s zero band
            ("swish", "swish"),
            ([-20, -20], [-1.2785, -1.2785], [-20, 1]),
            ([5, 5], [-1.2785, -1.2785], [5, 5]),
            mask(1, 1, 0),
        ),
        (
            # mixed tanh and a linear factor: tanh saturated, z_b nonzero: b's path open | tanh(0) = 0 and z_b = 0: dead |
            # tanh saturated and z_b = 0: a's path closed twice, b's open (dh/dz_b = tanh(10)): alive
            ("tanh", "identity"),
            ([10, -10], [0, 0], [10, -10]),
            ([2, 3], [0, 0], [0, 0]),
            mask(0, 1, 0),
        ),
    ],
    ids=["glu", "swiglu", "bilinear", "hadamard-sigmoid", "hadamard-swish", "tanh-identity"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dead_units_per_gate(activations, za, zb, expected, dtype):
    act_a, act_b = activations
    za, zb = cols(*za).to(dtype), cols(*zb).to(dtype)
    got = cm.dead_units(za, act_a, pre_activation_b=zb, activation_b=act_b)
    assert got.dtype == torch.bool and torch.equal(got, expected)
    assert cm.dead_fraction(za, act_a, pre_activation_b=zb, activation_b=act_b) == expected.double().mean().item()
    # the rule is symmetric in the two branches
    assert torch.equal(cm.dead_units(zb, act_b, pre_activation_b=za, activation_b=act_a), expected)


def test_dead_units_conv_gate_is_per_channel():
    # glu on N=2 x C=2 x 2x2: channel 0 shut everywhere but at one position of one state; channel 1 shut everywhere
    za = torch.full((2, 2, 2, 2), -20.0, dtype=torch.float64)
    za[1, 0, 0, 1] = 0.0
    zb = torch.ones(2, 2, 2, 2, dtype=torch.float64)
    assert torch.equal(cm.dead_units(za, "sigmoid", pre_activation_b=zb, activation_b="identity"), mask(0, 1))


def test_linear_factor_and_zero_factor_thresholds_are_strict():
    """identity' = 1: a linear factor's own path closes only when eps_grad > 1; a factor of exactly 1e-6 is not zero,
    one just below is."""
    z = torch.full((2, 1), 0.5, dtype=torch.float64)
    assert cm.dead_fraction(z, "identity", eps_grad=1.0, pre_activation_b=z, activation_b="identity") == 0.0
    assert cm.dead_fraction(z, "identity", eps_grad=math.nextafter(1.0, 2), pre_activation_b=z, activation_b="identity") == 1
    for small, expected in ((cm.ZERO_FACTOR, 0.0), (math.nextafter(cm.ZERO_FACTOR, 0), 1.0)):
        z = torch.full((2, 1), small, dtype=torch.float64)
        assert cm.dead_fraction(z, "identity", pre_activation_b=z, activation_b="identity") == expected


# ----------------------------------------------------------------------------- the unit masks (for ReDo)
def test_dormant_units_values():
    # per unit mean |a| = 0, 1, 2, 1 -> mean 1 -> scores 0, 1, 2, 1
    x = cols([0, 0], [-1, 1], [2, 2], [1, 1])
    assert torch.equal(cm.dormant_units(x), mask(1, 0, 0, 0))
    assert torch.equal(cm.dormant_units(x, tau=1.0), mask(1, 1, 0, 1))
    assert cm.dormant_fraction(x, tau=1.0) == 0.75
    # a conv map: per channel, means .5, 1, 1.5 -> scores .5, 1, 1.5
    conv = torch.tensor([0.0, 1.0, 1.5], dtype=torch.float64).view(1, 3, 1, 1).repeat(2, 1, 2, 2)
    conv[0, 0, 0, 0] = 4
    assert torch.equal(cm.dormant_units(conv, tau=0.5), mask(1, 0, 0))


def test_masks_are_per_unit_and_average_to_the_fractions():
    g = torch.Generator().manual_seed(0)
    z = 4 * torch.randn(16, 8, generator=g, dtype=torch.float64)
    z[:, 2] = -20.0
    cases = [
        (cm.dormant_units(torch.tanh(z)), cm.dormant_fraction(torch.tanh(z))),
        (cm.dead_units(z, "tanh"), cm.dead_fraction(z, "tanh")),
        (cm.dead_units(z, "relu"), cm.dead_fraction(z, "relu")),
        (cm.dead_units(z, "sigmoid", pre_activation_b=z.flip(0), activation_b="identity"), None),
        (cm.saturated_units(torch.tanh(z)), cm.saturation_fraction(torch.tanh(z))),
    ]
    for m, fraction in cases:
        assert m.shape == (8,) and m.dtype == torch.bool
        if fraction is not None:
            assert m.double().mean().item() == fraction
    # the relu shortcut's degenerate thresholds give whole masks
    assert torch.equal(cm.dead_units(z, "relu", eps_grad=0.0), torch.zeros(8, dtype=torch.bool))
    assert torch.equal(cm.dead_units(z, "relu", eps_grad=1.5), torch.ones(8, dtype=torch.bool))


@pytest.mark.parametrize(
    "call",
    [
        lambda: cm.dead_units(torch.zeros(2, 3), "tanh", activation_b="identity"),
        lambda: cm.dead_units(torch.zeros(2, 3), "sigmoid", pre_activation_b=torch.zeros(2, 4), activation_b="identity"),
        lambda: cm.dead_units(torch.zeros(2, 3), "sigmoid", pre_activation_b=torch.zeros(2, 3), activation_b="softplus"),
        lambda: cm.dead_units(torch.ones(3), "identity"),
        lambda: cm.dormant_units(torch.ones(0, 3)),
        lambda: cm.saturated_units(torch.zeros(2, 3), "swish"),
        lambda: cm.saturated_units(torch.zeros(2, 3), "identity"),
        lambda: cm.gate_activations("geglu"),
        lambda: cm.gate_activations("hadamard", "softplus"),
        lambda: cm.layer_metrics(torch.zeros(2, 3), torch.zeros(2, 3), "tanh", activation_b="identity"),
    ],
)
def test_bad_arguments_raise(call):
    with pytest.raises(ValueError):
        call()


# ----------------------------------------------------------------------------- the probe on a gate layer
class Gate(nn.Module):
    """A two-branch layer act_a(W_a x + b_a) * act_b(W_b x + b_b), as the scripts build HR (Linear or Conv2d)."""

    def __init__(self, gate: str, n_in: int, n_out: int, activation: str = "tanh", conv: bool = False):
        super().__init__()
        modules = {"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "swish": nn.SiLU, "identity": nn.Identity}
        act_a, act_b = cm.gate_activations(gate, activation)

        def layer():
            return nn.Conv2d(n_in, n_out, 3) if conv else nn.Linear(n_in, n_out)

        self.branch_a = nn.Sequential(layer(), modules[act_a]())
        self.branch_b = nn.Sequential(layer(), modules[act_b]())

    def forward(self, x):
        return self.branch_a(x) * self.branch_b(x)


def set_linear(linear: nn.Linear, weight, bias):
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(weight, dtype=torch.float32))
        linear.bias.copy_(torch.tensor(bias, dtype=torch.float32))


RANK_TAGS = {"srank", "effective_rank", "feature_rank", "stable_rank", "feature_norm"}
HR_TAGS = RANK_TAGS | {"dormant_fraction", "dead_fraction", "dead_fraction_a", "dead_fraction_b"}


def layer_tags(tags: dict, layer: str) -> dict:
    prefix = f"representation/{layer}/"
    return {k[len(prefix) :]: v for k, v in tags.items() if k.startswith(prefix)}


def rank_values(features: torch.Tensor) -> dict:
    return {
        "srank": cm.srank(features),
        "effective_rank": cm.effective_rank(features),
        "feature_rank": cm.feature_rank(features),
        "stable_rank": cm.stable_rank(features),
        "feature_norm": cm.feature_norm(features),
    }


# x = the 2 x 2 identity (2 states): each branch's z is a unit's weight row plus its bias, per state
@pytest.mark.parametrize(
    "gate, weights_a, bias_a, weights_b, bias_b, expected",
    [
        (
            # glu, 4 units: h = s(0) * (2, -2) = (1, -1) | s(0) * 3 = 1.5 | s(-20) * 4 = 8.2e-9 (the gate shut: dead,
            # dormant) | s(0) * .02 = .01 (dormant, alive: s'(0) = .25 and z_b = .02). mean |h| per unit 1, 1.5, 8.2e-9,
            # .01 -> mean .6275 -> scores 1.59, 2.39, 1.3e-8, .016. The sigmoid branch: s(-20) < .01 saturated, and
            # s'(-20) < .02 dead, as a plain unit; the linear branch is never dead; saturation is the gate's only
            "glu",
            [[0, 0]] * 4,
            [0, 0, -20, 0],
            [[2, -2], [0, 0], [0, 0], [0, 0]],
            [0, 3, 4, 0.02],
            {
                "dormant_fraction": 0.5,
                "dead_fraction": 0.25,
                "dead_fraction_a": 0.25,
                "dead_fraction_b": 0.0,
                "saturation_fraction_a": 0.25,
                "saturation_fraction": 0.25,
            },
        ),
        (
            # swiglu: swish(-20) * 1 = -4.1e-8 (dead, dormant) | swish(0) * 0: the saddle (dead, dormant) |
            # swish(+-1) * 2 = 1.46, -.54 (alive) | swish(2) * 0 = 0 (dormant, alive: dh/dz_b = swish(2) = 1.76).
            # mean |h| ~ 0, 0, 1, 0 -> dormant 3 of 4; the swish branch alone: only swish'(-20) < .02
            "swiglu",
            [[0, 0], [0, 0], [1, -1], [0, 0]],
            [-20, 0, 0, 2],
            [[0, 0]] * 4,
            [1, 0, 2, 0],
            {"dormant_fraction": 0.75, "dead_fraction": 0.5, "dead_fraction_a": 0.25, "dead_fraction_b": 0.0},
        ),
        (
            # bilinear: (3, -2) * 0 (dormant, alive) | 0 * 0 (dead, dormant) | 1 * 2 (alive) | (1, 0) * (0, 1) = 0
            # (dormant, alive: on state 1 dh/dz_b = z_a = 1). Linear branches are never dead.
            "bilinear",
            [[3, -2], [0, 0], [0, 0], [1, 0]],
            [0, 0, 1, 0],
            [[0, 0], [0, 0], [0, 0], [0, 1]],
            [0, 0, 2, 0],
            {"dormant_fraction": 0.75, "dead_fraction": 0.25, "dead_fraction_a": 0.0, "dead_fraction_b": 0.0},
        ),
    ],
)
def test_probe_gate_worked_values(gate, weights_a, bias_a, weights_b, bias_b, expected):
    layer = Gate(gate, 2, 4)
    set_linear(layer.branch_a[0], weights_a, bias_a)
    set_linear(layer.branch_b[0], weights_b, bias_b)
    model = nn.Sequential(layer)
    obs = torch.eye(2)
    tags = cm.probe(model, obs, {"fc": layer}, "fc")
    got = layer_tags(tags, "fc")
    assert got.keys() == HR_TAGS | expected.keys()
    assert {k: got[k] for k in expected} == pytest.approx(expected, abs=1e-12)
    with torch.no_grad():
        h = model(obs)
    assert {k: got[k] for k in RANK_TAGS} == pytest.approx(rank_values(h), rel=1e-12, abs=1e-12)
    assert all(tags[f"representation/{k}"] == v for k, v in got.items())
    assert all(not m._forward_hooks for m in model.modules())


def expected_gate_metrics(h, za, zb, act_a, act_b) -> dict:
    """A two-branch layer's metrics by direct calls of the public functions."""
    features = h if h.dim() == 2 else h.mean(dim=(2, 3))
    m = rank_values(features)
    m["srank"] = float(m["srank"])
    m["feature_rank"] = float(m["feature_rank"])
    m["dormant_fraction"] = cm.dormant_fraction(h)
    m["dead_fraction"] = cm.dead_fraction(za, act_a, pre_activation_b=zb, activation_b=act_b)
    saturations = []
    for suffix, z, act in (("a", za, act_a), ("b", zb, act_b)):
        m[f"dead_fraction_{suffix}"] = cm.dead_fraction(z, act)
        if act in cm.SATURATING:
            m[f"saturation_fraction_{suffix}"] = cm.saturation_fraction(cm._activation(z, act), act)
            saturations.append(m[f"saturation_fraction_{suffix}"])
    if saturations:
        m["saturation_fraction"] = sum(saturations) / len(saturations)
    return m


@pytest.mark.parametrize("gate", cm.GATES)
@pytest.mark.parametrize("conv", [False, True])
def test_probe_gate_layer_like_hr(gate, conv):
    """Every gate's layer gets an HR layer's tags (saturation only for its saturating branches), equal to the public
    functions on its branches' tensors; a conv gate is scored per channel."""
    torch.manual_seed(0)
    layer = Gate(gate, 3, 4, conv=conv)
    model = nn.Sequential(layer)
    obs = torch.randn(10, 3, 5, 5) if conv else 3 * torch.randn(10, 3)
    tags = cm.probe(model, obs, {"fc": layer}, "fc", chunk_size=4)
    with torch.no_grad():  # in the probe's chunks: a float32 matmul's rounding depends on the batch size
        za, zb, h = (torch.cat([f(chunk) for chunk in obs.split(4)]) for f in (layer.branch_a[0], layer.branch_b[0], model))
    act_a, act_b = cm.gate_activations(gate)
    expected = expected_gate_metrics(h, za, zb, act_a, act_b)
    got = layer_tags(tags, "fc")
    assert got.keys() == expected.keys()
    assert got.keys() >= HR_TAGS
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert ("saturation_fraction" in got) == (gate in ("hadamard", "glu"))


def test_probe_rejects_a_branch_without_an_activation_module_before_the_forward():
    layer = Gate("bilinear", 2, 3)
    layer.branch_b = nn.Sequential(nn.Linear(2, 3))  # no nn.Identity: its hooked module would be the Linear
    calls = []
    with pytest.raises(ValueError, match="Linear"):
        cm.probe(layer, torch.zeros(2, 2), {"fc": layer}, "fc", forward=calls.append)
    assert calls == [] and all(not m._forward_hooks for m in layer.modules())


# ----------------------------------------------------------------------------- unchanged numbers for plain and HR layers
# A frozen copy of the unit-level metrics, layer_metrics and probe before the gates (commit e7f80b4); the rank
# functions, _checked and _unit_dims are unchanged and shared.
def old_activation_derivative(z, activation):
    if activation == "tanh":
        return 1.0 - torch.tanh(z) ** 2
    if activation == "sigmoid":
        s = torch.sigmoid(z)
        return s * (1.0 - s)
    if activation == "relu":
        return (z > 0).to(z.dtype)
    if activation == "gelu":
        return 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0))) + z * torch.exp(-0.5 * z**2) / math.sqrt(2.0 * math.pi)
    raise ValueError(activation)


def old_activation(z, activation):
    return {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu, "gelu": nn.functional.gelu}[activation](z)


def old_dormant(a, tau):
    per_unit = (a.abs().mean(dim=(2, 3)) if a.dim() == 4 else a.abs()).double().mean(dim=0)
    score = per_unit / (per_unit.mean() + 1e-9)
    return (score <= tau).double().mean().item()


def old_dormant_fraction(activations, tau=0.025):
    return old_dormant(cm._checked(activations, "activations", (2, 4)), tau)


def old_dead_fraction(pre_activation, activation="tanh", eps_grad=0.02, pre_activation_b=None):
    if pre_activation_b is None and activation == "relu":
        z = cm._checked(pre_activation, "pre_activation", (2, 4), float64=False)
        if not 0.0 < eps_grad:
            return 0.0
        if 1.0 < eps_grad:
            return 1.0
        return (z.amax(dim=cm._unit_dims(z)) <= 0).double().mean().item()
    za = cm._checked(pre_activation, "pre_activation", (2, 4))
    if pre_activation_b is None:
        blocked = old_activation_derivative(za, activation).abs() < eps_grad
    else:
        zb = cm._checked(pre_activation_b, "pre_activation_b", (2, 4))
        closed_a = (old_activation_derivative(za, activation).abs() < eps_grad) | (
            old_activation(zb, activation).abs() < cm.ZERO_FACTOR
        )
        closed_b = (old_activation_derivative(zb, activation).abs() < eps_grad) | (
            old_activation(za, activation).abs() < cm.ZERO_FACTOR
        )
        blocked = closed_a & closed_b
    return blocked.all(dim=cm._unit_dims(blocked)).double().mean().item()


def old_saturation_fraction(activations, activation="tanh"):
    a = cm._checked(activations, "activations", (2, 4))
    if activation == "tanh":
        saturated = a.abs() > cm.SATURATION_THRESHOLD
    else:
        saturated = (a < cm.SATURATION_LOW) | (a > cm.SATURATION_THRESHOLD)
    return saturated.all(dim=cm._unit_dims(saturated)).double().mean().item()


def old_layer_metrics(output, pre_activation, activation, branch_a=None, branch_b=None, eps_grad=0.02, tau=0.025, delta=0.01):
    output = cm._checked(output, "output", (2, 4), float64=False)
    features = (output if output.dim() == 2 else output.mean(dim=(2, 3))).double()
    s = cm.singular_values(features)
    metrics = {
        "srank": float(cm._srank(s, delta)),
        "effective_rank": cm._effective_rank(s),
        "feature_rank": float(cm._feature_rank(s, features.shape[0], 0.01)),
        "stable_rank": cm._stable_rank(s),
        "feature_norm": features.norm(dim=1).mean().item(),
        "dormant_fraction": old_dormant(output, tau),
    }
    saturating = activation in ("tanh", "sigmoid")
    if branch_a is None:
        metrics["dead_fraction"] = old_dead_fraction(pre_activation, activation, eps_grad)
        if saturating:
            metrics["saturation_fraction"] = old_saturation_fraction(output, activation)
        return metrics
    metrics["dead_fraction"] = old_dead_fraction(branch_a[0], activation, eps_grad, pre_activation_b=branch_b[0])
    for suffix, (pre, out) in (("a", branch_a), ("b", branch_b)):
        metrics[f"dead_fraction_{suffix}"] = old_dead_fraction(pre, activation, eps_grad)
        if saturating:
            metrics[f"saturation_fraction_{suffix}"] = old_saturation_fraction(out, activation)
    if saturating:
        metrics["saturation_fraction"] = (metrics["saturation_fraction_a"] + metrics["saturation_fraction_b"]) / 2
    return metrics


def old_probe(model, obs, layers, representation, forward=None, eps_grad=0.02, tau=0.025, delta=0.01, chunk_size=256):
    chunks = {}

    def capture(key):
        def hook(module, inputs, output):
            chunks.setdefault(key, []).append((inputs[0].detach(), output.detach()))

        return hook

    hooks = []
    for name, module in layers.items():
        if cm.is_hadamard(module):
            hooks.append(module.branch_a[-1].register_forward_hook(capture((name, "a"))))
            hooks.append(module.branch_b[-1].register_forward_hook(capture((name, "b"))))
        hooks.append(module.register_forward_hook(capture((name, "out"))))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for chunk in obs.split(chunk_size):
                (forward or model)(chunk)
    finally:
        for handle in hooks:
            handle.remove()
        model.train(was_training)
    captured = {key: tuple(torch.cat(parts) for parts in zip(*pairs)) for key, pairs in chunks.items()}
    tags = {}
    for name, module in layers.items():
        pre_activation, output = captured[(name, "out")]
        if cm.is_hadamard(module):
            activation = cm.activation_name(module.branch_a[-1])
            metrics = old_layer_metrics(
                output, None, activation, captured[(name, "a")], captured[(name, "b")], eps_grad, tau, delta
            )
        else:
            metrics = old_layer_metrics(
                output, pre_activation, cm.activation_name(module), eps_grad=eps_grad, tau=tau, delta=delta
            )
        for metric, value in metrics.items():
            tags[f"representation/{name}/{metric}"] = value
            if name == representation:
                tags[f"representation/{metric}"] = value
    return tags


def varied(shape, seed, dtype):
    """Pre-activations with saturated, zero, negative and ordinary units (per unit or channel, along dim 1)."""
    z = 4 * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z[:, 0] = 10.0
    z[:, 1] = -10.0
    z[:, 2] = 0.0
    z[:, 3] = -z[:, 3].abs()
    z[:, 4] = 1e-7
    return z.to(dtype)


@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid", "gelu"])
@pytest.mark.parametrize("shape", [(12, 9), (6, 9, 3, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("eps_grad", [0.02, 0.3, 0.0, 1.5])
def test_plain_and_hr_unit_metrics_unchanged(activation, shape, dtype, eps_grad):
    za, zb = varied(shape, 0, dtype), varied(shape, 1, dtype).flip(1)
    a, b = old_activation(za, activation), old_activation(zb, activation)
    assert cm.dead_fraction(za, activation, eps_grad) == old_dead_fraction(za, activation, eps_grad)
    assert cm.dead_fraction(za, activation, eps_grad, pre_activation_b=zb) == old_dead_fraction(za, activation, eps_grad, zb)
    for tau in (0.025, 0.3):
        assert cm.dormant_fraction(a * b, tau) == old_dormant_fraction(a * b, tau)
    if activation in cm.SATURATING:
        assert cm.saturation_fraction(a, activation) == old_saturation_fraction(a, activation)
    for kwargs in ({}, {"eps_grad": eps_grad, "tau": 0.3, "delta": 0.25}):
        assert cm.layer_metrics(a, za, activation, **kwargs) == old_layer_metrics(a, za, activation, **kwargs)
        new = cm.layer_metrics(a * b, None, activation, (za, a), (zb, b), **kwargs)
        old = old_layer_metrics(a * b, None, activation, (za, a), (zb, b), **kwargs)
        assert list(new.items()) == list(old.items())  # the same numbers, bit for bit, in the same order


class HR(nn.Module):
    def __init__(self, conv: bool, activation: type):
        super().__init__()
        self.branch_a = nn.Sequential(nn.Conv2d(2, 3, 3) if conv else nn.Linear(6, 5), activation())
        self.branch_b = nn.Sequential(nn.Conv2d(2, 3, 3) if conv else nn.Linear(6, 5), activation())

    def forward(self, x):
        return self.branch_a(x) * self.branch_b(x)


@pytest.mark.parametrize("activation", [nn.Tanh, nn.ReLU])
@pytest.mark.parametrize("kwargs", [{}, {"eps_grad": 1.5, "tau": 0.9, "delta": 0.25}, {"eps_grad": 0.0}])
def test_probe_hr_tanh_and_relu_unchanged(activation, kwargs):
    """The probe of a network with a conv HR layer, a plain conv layer and an HR representation gives the same tags,
    bit for bit and in the same order, as before the gates."""
    torch.manual_seed(0)
    conv_hr = HR(True, activation)
    model = nn.Sequential(conv_hr, nn.Conv2d(3, 3, 3), activation(), nn.Flatten(), nn.Linear(12, 6), HR(False, activation))
    with torch.no_grad():  # a saturated / dead branch in the representation
        model[5].branch_a[0].bias[:2] = -20.0
        model[5].branch_b[0].bias[1:3] = 20.0
    layers = {"conv1": conv_hr, "conv2": model[2], "fc": model[5]}
    obs = torch.randn(20, 2, 6, 6)
    new = cm.probe(model, obs, layers, "fc", chunk_size=8, **kwargs)
    old = old_probe(model, obs, layers, "fc", chunk_size=8, **kwargs)
    assert list(new.items()) == list(old.items())


# ----------------------------------------------------------------------------- the gates and LayerNorm in the scripts
SCRIPTS = {"ppo": ppo, "dqn": dqn, "pqn": pqn}
# each gate's output from its branches' pre-activations z_a, z_b, as its formula reads
GATE_FORMULAS = {
    "hadamard": lambda za, zb: torch.tanh(za) * torch.tanh(zb),
    "glu": lambda za, zb: torch.sigmoid(za) * zb,
    "swiglu": lambda za, zb: za * torch.sigmoid(za) * zb,
    "bilinear": lambda za, zb: za * zb,
}


def network(script: str, **flags) -> nn.Module:
    """The script's network (PPO's Agent, DQN's and PQN's QNetwork) for 4 actions."""
    return (ppo.Agent if script == "ppo" else SCRIPTS[script].QNetwork)(4, **flags)


def pre_activation(branch: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """W x + b of the branch's layer, normalised by its LayerNorm when it has one."""
    z = x @ branch[0].weight.T + branch[0].bias
    norm = branch[1] if isinstance(branch[1], nn.LayerNorm) else None
    return z if norm is None else nn.functional.layer_norm(z, (z.shape[-1],), norm.weight, norm.bias, norm.eps)


@pytest.mark.parametrize("gate", cm.GATES)
@pytest.mark.parametrize("script", SCRIPTS)
def test_each_gate_is_its_formula_with_hrs_shape(script, gate):
    """The representation of `--hadamard --gate <gate>` is the gate's formula of its two layers, the module the probe
    hooks (its branches ending in the gate's activations), with HR's parameters and state dict shapes."""
    assert gate in typing.get_args(SCRIPTS[script].Args.__annotations__["gate"])  # a --gate choice
    torch.manual_seed(0)
    net = network(script, hadamard=True, gate=gate, layer_norm=False)
    layer = net.hidden_layers()["fc"]
    assert cm.is_hadamard(layer) and cm.branch_activations(layer) == cm.gate_activations(gate)
    x = torch.randn(5, 3136)
    with torch.no_grad():
        torch.testing.assert_close(
            layer(x), GATE_FORMULAS[gate](pre_activation(layer.branch_a, x), pre_activation(layer.branch_b, x))
        )
    hr = network(script, hadamard=True, layer_norm=False)
    assert [(k, v.shape) for k, v in net.state_dict().items()] == [(k, v.shape) for k, v in hr.state_dict().items()]
    assert SCRIPTS[script].num_parameters(net) == SCRIPTS[script].num_parameters(hr)


@pytest.mark.parametrize("script", SCRIPTS)
def test_layer_norm_normalises_each_hidden_layer_and_each_branch_on_its_own(script):
    """With LayerNorm (PPO's and DQN's --layer-norm, PQN's default) every activation follows a LayerNorm of its layer's
    output (conv or linear -> LayerNorm -> activation), each branch with its own; without (PQN's --no-layer-norm, PPO's
    and DQN's default) the network has no LayerNorm."""
    torch.manual_seed(0)
    net = network(script, hadamard=True, layer_norm=True)
    leaves = [module for module in net.modules() if not list(module.children())]  # in the order they are applied
    activations = [i for i, module in enumerate(leaves) if isinstance(module, (nn.ReLU, nn.Tanh))]
    assert len(activations) == 5  # three conv layers and the two branches
    for i in activations:
        assert isinstance(leaves[i - 1], nn.LayerNorm) and isinstance(leaves[i - 2], (nn.Conv2d, nn.Linear)), leaves[i - 2 : i]
    layer = net.hidden_layers()["fc"]
    assert layer.branch_a[1] is not layer.branch_b[1]
    with torch.no_grad():  # LayerNorms of their own: a shared one, or one normalising the product, would differ here
        layer.branch_a[1].weight.uniform_(0.5, 2.0)
        layer.branch_b[1].bias.uniform_(-1.0, 1.0)
        x = torch.randn(5, 3136)
        expected = torch.tanh(pre_activation(layer.branch_a, x)) * torch.tanh(pre_activation(layer.branch_b, x))
        torch.testing.assert_close(layer(x), expected)
        obs = torch.randint(0, 256, (2, 4, 84, 84), dtype=torch.uint8)
        assert (net.get_value(obs) if script == "ppo" else net(obs)).shape[0] == 2
    assert not any(isinstance(module, nn.LayerNorm) for module in network(script, hadamard=True, layer_norm=False).modules())


def weights(name: str, *shape: int) -> dict:
    """A conv or linear layer's {key: shape}: its weight, and its bias of one value per output."""
    return {f"{name}.weight": shape, f"{name}.bias": shape[:1]}


def norm(name: str, *shape: int) -> dict:
    """A LayerNorm's {key: shape}."""
    return {f"{name}.weight": shape, f"{name}.bias": shape}


def state_dict_before(script: str, hadamard: bool) -> dict:
    """The state dict's {key: shape}, keys in order, of the plain or HR network of the script's defaults as it was before
    --gate and --layer-norm."""
    if script == "pqn":
        convs = {
            **weights("conv1.0", 32, 4, 8, 8),
            **norm("conv1.1", 32, 20, 20),
            **weights("conv2.0", 64, 32, 4, 4),
            **norm("conv2.1", 64, 9, 9),
            **weights("conv3.0", 64, 64, 3, 3),
            **norm("conv3.1", 64, 7, 7),
        }
    else:
        convs = {
            **weights("network.0", 32, 4, 8, 8),
            **weights("network.2", 64, 32, 4, 4),
            **weights("network.4", 64, 64, 3, 3),
        }
    name = "fc" if script == "pqn" else "representation"

    def layer(prefix: str) -> dict:  # the 3136 -> 512 layer (PQN's with its LayerNorm)
        return {**weights(f"{prefix}.0", 512, 3136), **(norm(f"{prefix}.1", 512) if script == "pqn" else {})}

    representation = {**layer(f"{name}.branch_a"), **layer(f"{name}.branch_b")} if hadamard else layer(name)
    heads = {**weights("actor", 4, 512), **weights("critic", 1, 512)} if script == "ppo" else weights("q", 4, 512)
    return {**convs, **representation, **heads}


@pytest.mark.parametrize("hadamard", [False, True])
@pytest.mark.parametrize("script", SCRIPTS)
def test_the_networks_of_the_earlier_flags_are_unchanged(script, hadamard):
    """The plain and HR networks of each script's defaults have the state dict they had (the same keys in the same order,
    so the layers draw their initial weights in the same order, and the same shapes) and the probe hooks the same
    modules."""
    net = network(script, hadamard=hadamard)
    assert [(key, tuple(value.shape)) for key, value in net.state_dict().items()] == list(
        state_dict_before(script, hadamard).items()
    )
    layers = net.hidden_layers()
    assert [type(layers[name]) for name in ("conv1", "conv2", "conv3")] == [nn.ReLU] * 3
    assert type(layers["fc"]) is (SCRIPTS[script].Hadamard if hadamard else nn.Tanh)


@pytest.mark.parametrize("script", SCRIPTS)
def test_model_files_rebuild_the_gate_and_layer_norm_and_older_files_load(script, tmp_path):
    """A model file records --gate and --layer-norm and build_network rebuilds that network; a file written before these
    flags (its args lack them) loads as the network of their defaults."""
    module = SCRIPTS[script]
    switched = not module.Args.layer_norm  # PPO's and DQN's --layer-norm, PQN's --no-layer-norm
    net = network(script, hadamard=True, gate="swiglu", layer_norm=switched)
    torch.save(module.model_state(module.Args(hadamard=True, gate="swiglu", layer_norm=switched), net, 4), tmp_path / "a.pt")
    rebuilt = module.build_network(module.load_model(str(tmp_path / "a.pt")), "cpu")
    assert_same_state(rebuilt.state_dict(), net.state_dict())
    assert cm.branch_activations(rebuilt.hidden_layers()["fc"]) == ("swish", "identity")

    older = module.model_state(module.Args(hadamard=True), network(script, hadamard=True), 4)
    older["args"] = {key: value for key, value in older["args"].items() if key not in ("gate", "layer_norm")}
    torch.save(older, tmp_path / "older.pt")
    model_file = module.load_model(str(tmp_path / "older.pt"))
    assert (model_file["args"]["gate"], model_file["args"]["layer_norm"]) == ("hadamard", module.Args.layer_norm)
    assert_same_state(module.build_network(model_file, "cpu").state_dict(), older["state_dict"])

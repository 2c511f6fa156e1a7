"""Tests of common_metrics.py against their definitions (README, "Representation metrics"): worked values, hand-computed
cases, exact threshold boundaries, properties (hypothesis), bad input, and the forward-hook probe."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import common_metrics as cm


def t(rows) -> torch.Tensor:
    """A float64 tensor from nested lists."""
    return torch.tensor(rows, dtype=torch.float64)


def diag(*values: float, rows: int | None = None) -> torch.Tensor:
    """A `rows x len(values)` matrix with `values` on the diagonal (square by default)."""
    x = torch.zeros(rows or len(values), len(values), dtype=torch.float64)
    x[range(len(values)), range(len(values))] = t(values)
    return x


def cols(*units) -> torch.Tensor:
    """An `N x units` matrix whose column i is `units[i]` (one value per state)."""
    return t(units).T.contiguous()


def channels(*values: float, n: int = 2, size: int = 2) -> torch.Tensor:
    """An `n x C x size x size` map whose channel c is constant `values[c]`; set single positions with indexing."""
    return t(values).view(1, -1, 1, 1).repeat(n, 1, size, size)


# N=2, C=3, 2x2 per channel: channel 0 is 4 at one position (mean .5), channels 1 and 2 are 1 and 1.5
DORMANT_MAP = channels(0, 1, 1.5)
DORMANT_MAP[0, 0, 0, 0] = 4
# channel 0 saturated everywhere, channel 1 has one unsaturated position
SATURATED_MAP = channels(0.999, -0.999, size=3)
SATURATED_MAP[1, 1, 2, 2] = 0.2

RANKS = (cm.srank, cm.effective_rank, cm.feature_rank, cm.stable_rank)
FEATURE_FNS = (*RANKS, cm.feature_norm, cm.singular_values)
UNIT_FNS = (cm.dormant_fraction, cm.dead_fraction, cm.saturation_fraction)


# ----------------------------------------------------------------------------- worked and hand-computed values
@pytest.mark.parametrize(
    "fn, x, kwargs, expected",
    [
        # the worked values of the definitions
        (cm.srank, torch.eye(4), {}, 4),
        (cm.srank, torch.ones(8, 4), {}, 1),
        (cm.effective_rank, diag(4, 3, 2, 1), {}, 3.596115),
        (cm.stable_rank, diag(4, 3, 2, 1), {}, 1.875),
        (cm.effective_rank, torch.eye(4), {}, 4.0),
        # srank of diag(4,3,2,1): cumulative ratios .4 .7 .9 1
        (cm.srank, diag(4, 3, 2, 1), {}, 4),
        (cm.srank, diag(4, 3, 2, 1), {"delta": 0.25}, 3),
        (cm.srank, diag(4, 3, 2, 1), {"delta": 0.5}, 2),
        (cm.srank, diag(4, 3, 2, 1), {"delta": 0.75}, 1),
        (cm.srank, diag(1, 1, 0, rows=5), {}, 2),
        # the default delta = .01: ratios .96, .99, 1 -> 2 (.99 >= .99)
        (cm.srank, diag(96, 3, 1), {}, 2),
        (cm.srank, diag(96, 3, 1), {"delta": 0.001}, 3),
        # erank: p = (1/2, 1/4, 1/4) -> exp(1.5 log 2) = 2^1.5; zero singular values drop out (0 log 0 = 0)
        (cm.effective_rank, diag(2, 1, 1), {}, 2**1.5),
        (cm.effective_rank, diag(5, 5, 0, 0), {}, 2.0),
        (cm.effective_rank, torch.ones(8, 4), {}, 1.0),
        # feature rank of diag(4,3,2,1), N = 4: s / sqrt(N) = 2, 1.5, 1, .5
        (cm.feature_rank, diag(4, 3, 2, 1), {}, 4),
        (cm.feature_rank, diag(4, 3, 2, 1), {"eps": 0.75}, 3),
        (cm.feature_rank, diag(4, 3, 2, 1), {"eps": 1.75}, 1),
        # the default eps = .01: s / 2 = .02, .01 -> 1
        (cm.feature_rank, diag(0.04, 0.02, rows=4), {}, 1),
        # 16 x 1 of 0.5: s = 2, s / sqrt(16) = 0.5
        (cm.feature_rank, torch.full((16, 1), 0.5), {"eps": 0.25}, 1),
        (cm.feature_rank, torch.full((16, 1), 0.5), {"eps": 0.75}, 0),
        # stable rank: (4 + 1 + 1) / 4; rank one -> 1
        (cm.stable_rank, diag(2, 1, 1), {}, 1.5),
        (cm.stable_rank, torch.ones(8, 4), {}, 1.0),
        (cm.stable_rank, torch.eye(3), {}, 3.0),
        # feature norm: rows (3,4,0) and (1,2,2): (5 + 3) / 2
        (cm.feature_norm, t([[3, 4, 0], [1, 2, 2]]), {}, 4.0),
        (cm.feature_norm, t([[-3, -4], [0, 0]]), {}, 2.5),
    ],
)
def test_feature_metric_values(fn, x, kwargs, expected):
    assert fn(x, **kwargs) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("fn", (*RANKS, cm.feature_norm))
def test_all_zero_features_give_zero(fn):
    value = fn(torch.zeros(6, 3))
    assert value == 0 and not math.isnan(value)


@pytest.mark.parametrize(
    "x, kwargs, expected",
    [
        # per unit mean |a| = 0, 1 (signs cancel without the abs), 2, 1 -> mean 1 -> scores 0, 1, 2, 1
        (cols([0, 0], [-1, 1], [2, 2], [1, 1]), {}, 0.25),
        (cols([0, 0], [-1, 1], [2, 2], [1, 1]), {"tau": 1.0}, 0.75),  # score exactly 1 (up to 1e-9) counts
        # the default tau = .025: score .02 is dormant, .03 is not
        (cols([0.02, 0.02], [1.98, 1.98], [1, 1], [1, 1]), {}, 0.25),
        (cols([0.03, 0.03], [1.97, 1.97], [1, 1], [1, 1]), {}, 0.0),
        # tau = 0: only exactly-zero units; 1e-12 is not dormant
        (cols([0, 0], [1e-12, 1e-12], [1, 1]), {"tau": 0.0}, 1 / 3),
        # all zero: 0 / (0 + 1e-9) = 0 for every unit -> all dormant, no NaN
        (torch.zeros(3, 4), {}, 1.0),
        (torch.zeros(3, 4), {"tau": 0.0}, 1.0),
        # 4-D, per channel: channel means .5, 1, 1.5 -> scores .5, 1, 1.5 (per position, 7 of 12 would be zero)
        (DORMANT_MAP, {"tau": 0.5}, 1 / 3),
        (DORMANT_MAP, {"tau": 0.4}, 0.0),
    ],
)
def test_dormant_fraction_values(x, kwargs, expected):
    assert cm.dormant_fraction(x, **kwargs) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "activation, units, expected",
    [
        # relu: dead when z <= 0 on every state (z = 0 passes no gradient)
        ("relu", ([-1, 0, -2], [-1, 0.5, -1], [0, 0, 0]), 2 / 3),
        # tanh: 1 - tanh(3)^2 = .0099 (dead), 1 - tanh(2.5)^2 = .0266 (alive)
        ("tanh", ([3, -3], [3, 0], [2.5, 3]), 1 / 3),
        # sigmoid: s'(±5) = .0066 (dead), s'(3) = .0452 (alive)
        ("sigmoid", ([5, -5], [3, 5], [-5, 0]), 1 / 3),
        # gelu: |g'(-3)| = .0119, |g'(-4)| = .0005 (dead); g'(-2) = -.0852 (alive: the derivative's absolute value)
        ("gelu", ([-3, -4], [-2, -3], [0.5, -4]), 1 / 3),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # every value here is exact in float32
def test_dead_fraction_plain(activation, units, expected, dtype):
    assert cm.dead_fraction(cols(*units).to(dtype), activation) == pytest.approx(expected)


def test_dead_fraction_conv_is_per_channel():
    # channel 0 gets gradient at one position of one state only; channel 1 never
    z = -torch.ones(3, 2, 4, 4, dtype=torch.float64)
    z[1, 0, 2, 3] = 0.5
    assert cm.dead_fraction(z, "relu") == 0.5


@pytest.mark.parametrize(
    "activation, za, zb, expected",
    [
        # tanh, h = tanh(za) * tanh(zb); dh/dza = tanh'(za) tanh(zb), dh/dzb = tanh(za) tanh'(zb)
        (
            "tanh",
            # both saturated | a saturated, b passes gradient | saddle 0*0 | alive on state 2 | saturated opposite |
            # b saturated, a passes
            ([10, 10], [10, 10], [0, 0], [10, 1], [10, 10], [0, 0]),
            ([10, 10], [0, 0], [0, 0], [10, 1], [-10, -10], [10, 10]),
            3 / 6,
        ),
        # relu: relu(1) * relu(0): dh/dza = 1 * 0, dh/dzb = 1 * relu'(0) = 0 -> dead; relu(1) * relu(2) alive
        ("relu", ([1, 1], [1, -1]), ([0, -1], [2, 2]), 1 / 2),
        # the dead rule's worked values (2 states, 3 units): both branches saturated (dead) | a saturated, b passes
        # gradient while a = tanh(5) != 0 | both small and unsaturated: alive, although |act'(za) b| < 0.02
        ("tanh", ([5, 6], [5, 6], [0.01, 0.02]), ([7, -8], [0.1, 0.2], [0.02, -0.01]), 1 / 3),
        # a always 0 | never both positive | alive
        ("relu", ([-1, -2], [1, 3], [2, -1]), ([1, 2], [-1, -1], [1, 1]), 2 / 3),
        # a small-scale init, |a|, |b| ~ 0.01 (DQN's default init): every product act'(z_a) b is below eps_grad (the
        # rule of thresholding it read them all dead), yet every unit passes gradient
        ("tanh", ([0.01, -0.015], [0.005, 0.012]), ([0.012, 0.01], [-0.015, 0.008]), 0.0),
    ],
)
def test_dead_fraction_hadamard(activation, za, zb, expected):
    assert cm.dead_fraction(cols(*za), activation, pre_activation_b=cols(*zb)) == pytest.approx(expected)


@pytest.mark.parametrize(
    "activation, z, derivative",
    [("relu", 1.0, 1.0), ("relu", -1.0, 0.0), ("tanh", 0.0, 1.0), ("sigmoid", 0.0, 0.25), ("gelu", 0.0, 0.5)],
)
def test_dead_fraction_threshold_is_strict(activation, z, derivative):
    """A derivative exactly eps_grad still passes gradient; one just above eps_grad does not."""
    x = torch.full((3, 2), z, dtype=torch.float64)
    assert cm.dead_fraction(x, activation, eps_grad=derivative) == 0.0
    assert cm.dead_fraction(x, activation, eps_grad=math.nextafter(derivative, math.inf)) == 1.0


def test_dead_fraction_hadamard_thresholds_are_strict():
    """HR tanh: a path closes when act' < eps_grad (act' equal to eps_grad passes gradient); relu HR: a factor
    below 1e-6 is zero and closes the other branch's path, one equal to 1e-6 does not."""
    z = torch.full((2, 1), 0.5, dtype=torch.float64)
    derivative = cm.activation_derivative(z, "tanh")[0, 0].item()
    assert cm.dead_fraction(z, "tanh", eps_grad=derivative, pre_activation_b=z) == 0.0
    assert cm.dead_fraction(z, "tanh", eps_grad=math.nextafter(derivative, math.inf), pre_activation_b=z) == 1.0
    for small, expected in ((cm.ZERO_FACTOR, 0.0), (math.nextafter(cm.ZERO_FACTOR, 0), 1.0)):
        za = torch.full((2, 1), small, dtype=torch.float64)
        assert cm.dead_fraction(za, "relu", pre_activation_b=za) == expected


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "gelu"])
def test_activation_derivative_matches_autograd(activation):
    z = torch.linspace(-6, 6, 97, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(cm._activation(z, activation).sum(), z)
    assert torch.allclose(cm.activation_derivative(z.detach(), activation), grad, atol=1e-12)


@pytest.mark.parametrize(
    "activation, x, expected",
    [
        # tanh: |a| > .99 on every state; .99 itself is not saturated
        ("tanh", cols([0.995, -0.995], [0.995, 0.5], [0.99, 0.999], [-0.99, -1.0]), 1 / 4),
        # sigmoid: a < .01 or a > .99 on every state; .01 and .99 themselves are not saturated
        ("sigmoid", cols([0.995, 0.005], [0.995, 0.5], [0.01, 0.001], [0.99, 0.999]), 1 / 4),
        # 4-D, per channel
        ("tanh", SATURATED_MAP, 0.5),
    ],
)
def test_saturation_fraction(activation, x, expected):
    assert cm.saturation_fraction(x, activation) == pytest.approx(expected)


# ----------------------------------------------------------------------------- exact threshold boundaries
def test_srank_boundary_counts_equality():
    # diag(3, 1), delta = .25: 3/4 >= 1 - .25 exactly -> k = 1
    assert cm.srank(diag(3, 1), delta=0.25) == 1


def test_feature_rank_boundary_is_strict():
    # N = 4: s = (1, .5) -> s / 2 = (.5, .25); eps = .25 exactly is not counted
    x = t([[0.5, 0], [0, 1], [0, 0], [0, 0]])
    assert cm.feature_rank(x, eps=0.25) == 1
    assert cm.feature_rank(x, eps=math.nextafter(0.25, 0)) == 2


def test_dormant_boundary_counts_equality():
    # unit means .25, 1, 1, 1.75 (mean exactly 1): score of unit 0 is .25 / (1 + 1e-9), which is dormant at tau equal to it
    x = cols([0.25, -0.25], [1, 1], [1, -1], [1.75, 1.75])
    score = 0.25 / (1.0 + 1e-9)
    assert cm.dormant_fraction(x, tau=score) == 0.25
    assert cm.dormant_fraction(x, tau=math.nextafter(score, 0)) == 0.0


# ----------------------------------------------------------------------------- properties
matrices = st.tuples(st.integers(1, 7), st.integers(1, 6)).flatmap(
    lambda shape: arrays(np.float64, shape, elements=st.floats(-10, 10, allow_subnormal=False))
)
PROPERTY_SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)


def rank_values(x: torch.Tensor) -> tuple:
    return cm.srank(x), cm.feature_rank(x), cm.effective_rank(x), cm.stable_rank(x)


@PROPERTY_SETTINGS
@given(matrices, st.randoms(use_true_random=False))
def test_ranks_unchanged_by_row_permutation(m, rnd):
    x = torch.from_numpy(m)
    perm = list(range(x.shape[0]))
    rnd.shuffle(perm)
    (s, f, e, r), (sp, fp, ep, rp) = rank_values(x), rank_values(x[perm])
    assert (s, f) == (sp, fp)
    assert (ep, rp) == pytest.approx((e, r), rel=1e-9, abs=1e-12)


@PROPERTY_SETTINGS
@given(matrices, st.integers(-6, 6), st.floats(0.1, 10))
def test_ranks_unchanged_by_positive_scaling(m, power, c):
    x = torch.from_numpy(m)
    # a power of two scales the SVD exactly, so the integer srank cannot flip on a rounding boundary
    assert cm.srank(x * 2.0**power) == cm.srank(x)
    assert (cm.effective_rank(x * c), cm.stable_rank(x * c)) == pytest.approx(
        (cm.effective_rank(x), cm.stable_rank(x)), rel=1e-9, abs=1e-12
    )


@PROPERTY_SETTINGS
@given(matrices, st.floats(0.001, 0.5))
def test_srank_at_most_matrix_rank(m, delta):
    x = torch.from_numpy(m)
    rank = int(torch.linalg.matrix_rank(x))
    assert cm.srank(x, delta) <= rank <= min(x.shape)


def test_srank_delta_zero_at_most_width():
    # delta = 0: the last cumulative ratio often rounds just below 1 (about 1 in 5 of these matrices)
    x = torch.randn(30, 20, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert max(cm.srank(m, 0.0) for m in x) <= 7


# ----------------------------------------------------------------------------- bad input and dtypes
BAD = {
    "1-D": torch.ones(4),
    "3-D": torch.ones(2, 3, 4),
    "zero rows": torch.ones(0, 3),
    "NaN": t([[1.0, math.nan], [0, 1]]),
    "inf": t([[1.0, 0], [math.inf, 1]]),
    "-inf": t([[1.0, 0], [-math.inf, 1]]),
}


@pytest.mark.parametrize("bad", BAD.values(), ids=BAD.keys())
@pytest.mark.parametrize("fn", FEATURE_FNS + UNIT_FNS, ids=lambda f: f.__name__)
def test_bad_input_raises(fn, bad):
    with pytest.raises(ValueError):
        fn(bad)


@pytest.mark.parametrize("fn", FEATURE_FNS, ids=lambda f: f.__name__)
def test_feature_metrics_need_2d(fn):
    with pytest.raises(ValueError, match="2-D"):
        fn(torch.ones(2, 3, 2, 2))


@pytest.mark.parametrize(
    "call",
    [
        lambda: cm.dead_fraction(torch.zeros(2, 3), "tanh", pre_activation_b=torch.zeros(2, 4)),
        lambda: cm.dead_fraction(torch.zeros(2, 3), "tanh", pre_activation_b=t([[0, 0, math.nan], [0, 0, 0]])),
        lambda: cm.dead_fraction(torch.zeros(2, 3), "softplus"),
        lambda: cm.saturation_fraction(torch.zeros(2, 3), "relu"),
        lambda: cm.activation_name(nn.Softplus()),
    ],
)
def test_other_bad_arguments_raise(call):
    with pytest.raises(ValueError):
        call()


@pytest.mark.parametrize("fn", FEATURE_FNS + UNIT_FNS, ids=lambda f: f.__name__)
def test_float32_and_float64_agree(fn):
    x32 = torch.randn(9, 5, generator=torch.Generator().manual_seed(0)).tanh()
    a, b = fn(x32), fn(x32.double())
    assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


# ----------------------------------------------------------------------------- the probe
class HR(nn.Module):
    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.branch_a = nn.Sequential(nn.Linear(n_in, n_out), nn.Tanh())
        self.branch_b = nn.Sequential(nn.Linear(n_in, n_out), nn.Tanh())

    def forward(self, x):
        return self.branch_a(x) * self.branch_b(x)


def expected_metrics(output, activation, pre=None, branches=None, eps_grad=0.02, tau=0.025, delta=0.01) -> dict[str, float]:
    """Every metric of one layer by direct calls of the public functions on its tensors."""
    features = output if output.dim() == 2 else output.mean(dim=(2, 3))  # the probe averages a conv map in its own dtype
    m = {f.__name__: f(features) for f in (cm.effective_rank, cm.feature_rank, cm.stable_rank, cm.feature_norm)}
    m |= {"srank": cm.srank(features, delta), "dormant_fraction": cm.dormant_fraction(output, tau)}
    if branches is None:
        m["dead_fraction"] = cm.dead_fraction(pre, activation, eps_grad)
        if activation in cm.SATURATING:
            m["saturation_fraction"] = cm.saturation_fraction(output, activation)
        return m
    (za, a), (zb, b) = branches
    m |= {
        "dead_fraction": cm.dead_fraction(za, activation, pre_activation_b=zb),
        "dead_fraction_a": cm.dead_fraction(za, activation),
        "dead_fraction_b": cm.dead_fraction(zb, activation),
        "saturation_fraction_a": cm.saturation_fraction(a, activation),
        "saturation_fraction_b": cm.saturation_fraction(b, activation),
    }
    m["saturation_fraction"] = (m["saturation_fraction_a"] + m["saturation_fraction_b"]) / 2
    return m


def assert_tags(tags, layer, expected, representation: bool):
    prefixes = ["representation/" + layer + "/"] + (["representation/"] if representation else [])
    for prefix in prefixes:
        got = {k[len(prefix) :]: v for k, v in tags.items() if k.startswith(prefix) and "/" not in k[len(prefix) :]}
        assert got.keys() == expected.keys()
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_layer_metrics_uses_rows_for_feature_rank():
    # N = 4 states, d = 2 units: s / sqrt(4) = .02, .01 -> feature rank 1 (s / sqrt(2) would give 2)
    out = diag(0.04, 0.02, rows=4)
    metrics = cm.layer_metrics(out, out.atanh(), "tanh")
    assert metrics["feature_rank"] == 1
    assert metrics == pytest.approx(expected_metrics(out, "tanh", out.atanh()), rel=1e-12, abs=1e-12)


def assert_no_hooks(model):
    assert all(not m._forward_hooks for m in model.modules())


# non-default settings that change srank, dormant and dead fractions of this network (eps_grad 1.5: every unit dead)
@pytest.mark.parametrize("kwargs", [{}, {"eps_grad": 1.5, "tau": 0.9, "delta": 0.25}])
def test_probe_conv_and_tanh_layers(kwargs):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 5), nn.Tanh())
    obs = torch.randn(12, 2, 6, 6)
    model.train()
    tags = cm.probe(model, obs, {"conv": model[1], "fc": model[4]}, representation="fc", **kwargs)
    assert_no_hooks(model)
    assert model.training
    with torch.no_grad():
        z_conv = model[0](obs)
        conv = model[1](z_conv)
        z_fc = model[3](model[2](conv))
    assert_tags(tags, "conv", expected_metrics(conv, "relu", z_conv, **kwargs), representation=False)
    assert_tags(tags, "fc", expected_metrics(torch.tanh(z_fc), "tanh", z_fc, **kwargs), representation=True)
    assert len(tags) == 7 + 8 + 8


def test_probe_hadamard_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), HR(6, 5))
    hr = model[2]
    with torch.no_grad():  # branch a saturated on every state (tanh(10)); branch b near 0, gradient ~1
        hr.branch_a[0].weight.zero_()
        hr.branch_a[0].bias.fill_(10.0)
        hr.branch_b[0].weight.mul_(0.1)
        hr.branch_b[0].bias.zero_()
    obs = torch.randn(16, 4)
    tags = cm.probe(model, obs / 255, {"hr": hr}, "hr", forward=lambda o: model(o * 255))
    assert_no_hooks(model)
    with torch.no_grad():
        x = model[:2](obs)
        za, zb = hr.branch_a[0](x), hr.branch_b[0](x)
    expected = expected_metrics(torch.tanh(za) * torch.tanh(zb), "tanh", branches=((za, torch.tanh(za)), (zb, torch.tanh(zb))))
    assert_tags(tags, "hr", expected, representation=True)
    assert tags["representation/hr/dead_fraction_a"] == 1.0 and tags["representation/hr/saturation_fraction_a"] == 1.0
    assert tags["representation/hr/dead_fraction"] == 0.0 and tags["representation/hr/dead_fraction_b"] == 0.0
    assert tags["representation/saturation_fraction"] == 0.5


def test_probe_rejects_unknown_representation_and_removes_hooks_on_error():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh())
    with pytest.raises(ValueError, match="representation"):
        cm.probe(model, torch.zeros(2, 3), {"fc": model[1]}, representation="encoder")

    def failing_forward(obs):
        model(obs)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        cm.probe(model, torch.zeros(2, 3), {"fc": model[1]}, "fc", forward=failing_forward)
    assert_no_hooks(model)


# ----------------------------------------------------------------------------- ReDo
def orthogonal_init(layer, generator=None):
    """The tiny networks' initialisation (the scripts' layer_init: orthogonal weights, zero bias)."""
    nn.init.orthogonal_(layer.weight, generator=generator)
    nn.init.zeros_(layer.bias)
    return layer


def trained(model: nn.Module, obs: torch.Tensor, forward=None) -> torch.optim.Adam:
    """Three Adam steps on `model`, so that every moment is non-zero; returns the optimizer."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        (forward or model)(obs).square().sum().backward()
        optimizer.step()
    return optimizer


def snapshot(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Every parameter and every Adam moment of `model`, by name, cloned."""
    tensors = {}
    for name, param in model.named_parameters():
        tensors[name] = param.detach().clone()
        for moment in ("exp_avg", "exp_avg_sq"):
            tensors[f"{name}.{moment}"] = optimizer.state[param][moment].clone()
    return tensors


def assert_recycled(before: dict, after: dict, changed: dict):
    """Each tensor is as it was but where `changed` says (`{name: bool mask}`); there its moments are zero."""
    for name, tensor in before.items():
        mask = changed.get(name.removesuffix(".exp_avg").removesuffix(".exp_avg_sq"))
        if mask is None:
            assert torch.equal(after[name], tensor), name
            continue
        assert torch.equal(after[name][~mask], tensor[~mask]), name
        if name.endswith(("exp_avg", "exp_avg_sq")):
            assert (after[name][mask] == 0).all() and (tensor[mask] != 0).all(), name


def rows(mask: torch.Tensor, shape) -> torch.Tensor:
    """The bool mask of the entries of a tensor of `shape` in the rows (dim 0) `mask` marks."""
    return mask.view(-1, *[1] * (len(shape) - 1)).expand(shape)


def columns(mask: torch.Tensor, shape) -> torch.Tensor:
    """The bool mask of the entries of a weight of `shape` whose input (dim 1, each unit's block of columns) `mask` marks."""
    return mask.repeat_interleave(shape[1] // mask.numel()).view(1, -1, *[1] * (len(shape) - 2)).expand(shape)


@pytest.mark.parametrize("norm", [False, True], ids=["plain", "layernorm"])
def test_redo_recycles_exactly_the_dormant_units(norm):
    """Linear -> (LayerNorm) -> tanh -> head, units 1 and 4 made dormant (output 0 on every state) after three Adam steps:
    exactly those are recycled. Their incoming rows are the init's rows drawn from the generator's state, their
    LayerNorm weight 1 and bias 0, their head columns 0, the moments of all those entries 0; everything else is as it was."""
    torch.manual_seed(0)
    fc = orthogonal_init(nn.Linear(4, 6))
    model = nn.Sequential(fc, *([nn.LayerNorm(6)] if norm else []), nn.Tanh(), orthogonal_init(nn.Linear(6, 3)))
    head = model[-1]
    obs = torch.randn(32, 4)
    optimizer = trained(model, obs)
    dormant = torch.tensor([False, True, False, False, True, False])
    with torch.no_grad():  # a = 0 on every state: the LayerNorm's unit scaled to 0, or a zero row without it
        if norm:
            model[1].weight[dormant], model[1].bias[dormant] = 0.0, 0.0
        else:
            fc.weight[dormant], fc.bias[dormant] = 0.0, 0.0
    before, generator = snapshot(model, optimizer), torch.Generator().manual_seed(5)
    fresh = orthogonal_init(copy.deepcopy(fc), torch.Generator().set_state(generator.get_state()))
    layers = {"fc": model[-2]}
    fractions = cm.redo(model, obs, layers, {"fc": ([model[:-1]], [head])}, optimizer, generator, orthogonal_init)

    assert fractions == {"fc": 2 / 6}
    after = snapshot(model, optimizer)
    changed = {
        "0.weight": rows(dormant, fc.weight.shape),
        "0.bias": dormant,
        f"{len(model) - 1}.weight": columns(dormant, head.weight.shape),
    }
    if norm:
        changed |= {"1.weight": dormant, "1.bias": dormant}
        assert (model[1].weight[dormant] == 1).all() and (model[1].bias[dormant] == 0).all()
    assert_recycled(before, after, changed)
    assert torch.equal(fc.weight[dormant], fresh.weight[dormant]) and not torch.equal(fc.weight, fresh.weight)
    assert (fc.bias[dormant] == 0).all() and (head.weight[:, dormant] == 0).all()


def test_redo_recycles_both_branches_of_a_hadamard_unit():
    """HR unit 2 made dormant by branch a alone (a zero row: tanh(0) = 0, so the product is 0): both branches' rows 2 are
    drawn afresh (branch a's init, then branch b's, from the generator), the head's column 2 zeroed, nothing else changes."""
    torch.manual_seed(0)
    model = nn.Sequential(HR(4, 5), orthogonal_init(nn.Linear(5, 3)))
    hr, head = model
    for branch in (hr.branch_a, hr.branch_b):
        orthogonal_init(branch[0])
    obs = torch.randn(32, 4)
    optimizer = trained(model, obs)
    dormant = torch.tensor([False, False, True, False, False])
    with torch.no_grad():
        hr.branch_a[0].weight[dormant], hr.branch_a[0].bias[dormant] = 0.0, 0.0
    before, generator = snapshot(model, optimizer), torch.Generator().manual_seed(5)
    replay = torch.Generator().set_state(generator.get_state())
    fresh = [orthogonal_init(copy.deepcopy(branch[0]), replay) for branch in (hr.branch_a, hr.branch_b)]
    recycled = {"hr": ([hr.branch_a, hr.branch_b], [head])}
    assert cm.redo(model, obs, {"hr": hr}, recycled, optimizer, generator, orthogonal_init) == {"hr": 1 / 5}

    changed = {"1.weight": columns(dormant, head.weight.shape)}
    for branch in ("branch_a", "branch_b"):
        changed |= {f"0.{branch}.0.weight": rows(dormant, (5, 4)), f"0.{branch}.0.bias": dormant}
    assert_recycled(before, snapshot(model, optimizer), changed)
    for branch, new in zip((hr.branch_a, hr.branch_b), fresh):
        assert torch.equal(branch[0].weight[dormant], new.weight[dormant])
    assert not torch.equal(hr.branch_a[0].weight[dormant], hr.branch_b[0].weight[dormant])


def test_redo_recycles_conv_channels():
    """conv1's channel 1 and conv2's channel 2 dead (ReLU of a negative constant): their kernels drawn afresh; conv1's
    channel 1 zeroed in conv2's input (conv2's recycled kernel too: outgoing after incoming, as the reference) and conv2's
    channel 2 in the head's 4 columns of its flattened 2 x 2 map. The convs are channels-last, as the scripts'."""
    torch.manual_seed(0)
    conv1, conv2, head = orthogonal_init(nn.Conv2d(2, 3, 3)), orthogonal_init(nn.Conv2d(3, 4, 3)), nn.Linear(16, 5)
    model = nn.Sequential(conv1, nn.ReLU(), conv2, nn.ReLU(), nn.Flatten(), orthogonal_init(head)).to(
        memory_format=torch.channels_last
    )
    obs = torch.randn(8, 2, 6, 6)
    optimizer = trained(model, obs)
    dead1, dead2 = torch.tensor([False, True, False]), torch.tensor([False, False, True, False])
    with torch.no_grad():
        conv1.weight[dead1], conv1.bias[dead1] = 0.0, -1.0
        conv2.weight[dead2], conv2.bias[dead2] = 0.0, -1.0
    before, generator = snapshot(model, optimizer), torch.Generator().manual_seed(5)
    recycled = {"conv1": ([[conv1]], [conv2]), "conv2": ([[conv2]], [head])}
    replay = torch.Generator().set_state(generator.get_state())  # recycled from the last layer back: conv2 draws first
    fresh2, fresh1 = (
        orthogonal_init(copy.deepcopy(conv).to(memory_format=torch.contiguous_format), replay) for conv in (conv2, conv1)
    )
    layers = {"conv1": model[1], "conv2": model[3]}
    assert cm.redo(model, obs, layers, recycled, optimizer, generator, orthogonal_init) == {"conv1": 1 / 3, "conv2": 1 / 4}

    incoming2 = rows(dead2, conv2.weight.shape)
    changed = {
        "0.weight": rows(dead1, conv1.weight.shape),
        "0.bias": dead1,
        "2.weight": incoming2 | columns(dead1, conv2.weight.shape),
        "2.bias": dead2,
        "5.weight": columns(dead2, head.weight.shape),
    }
    assert_recycled(before, snapshot(model, optimizer), changed)
    assert torch.equal(conv1.weight[dead1], fresh1.weight[dead1])
    assert torch.equal(
        conv2.weight[incoming2 & ~columns(dead1, conv2.weight.shape)],
        fresh2.weight[incoming2 & ~columns(dead1, conv2.weight.shape)],
    )
    assert (conv2.weight[:, dead1] == 0).all() and (head.weight[:, 8:12] == 0).all() and (head.weight[:, :8] != 0).all()


def test_redo_dead_rule_recycles_a_saturated_tanh_unit():
    """A tanh unit saturated on every state (tanh(10)) is not dormant (|a| = 1) but dead: the dormant rule leaves the
    network, the optimizer and the generator as they were; the dead rule recycles that unit alone."""
    torch.manual_seed(0)
    model = nn.Sequential(orthogonal_init(nn.Linear(4, 6)), nn.Tanh(), orthogonal_init(nn.Linear(6, 3)))
    obs = torch.randn(32, 4)
    optimizer = trained(model, obs)
    saturated = torch.tensor([False, False, False, True, False, False])
    with torch.no_grad():
        model[0].weight[saturated], model[0].bias[saturated] = 0.0, 10.0
    before, generator = snapshot(model, optimizer), torch.Generator().manual_seed(5)
    state = generator.get_state()
    recycled = {"fc": ([model[:2]], [model[2]])}
    assert cm.redo(model, obs, {"fc": model[1]}, recycled, optimizer, generator, orthogonal_init) == {"fc": 0.0}
    assert_recycled(before, snapshot(model, optimizer), {})
    assert torch.equal(generator.get_state(), state)

    assert cm.redo(model, obs, {"fc": model[1]}, recycled, optimizer, generator, orthogonal_init, rule="dead") == {"fc": 1 / 6}
    changed = {"0.weight": rows(saturated, (6, 4)), "0.bias": saturated, "2.weight": columns(saturated, (3, 6))}
    assert_recycled(before, snapshot(model, optimizer), changed)
    assert model[0].bias[3] == 0 and (model[2].weight[:, 3] == 0).all()
    with pytest.raises(ValueError, match="unknown ReDo rule"):
        cm.redo(model, obs, {"fc": model[1]}, recycled, optimizer, generator, orthogonal_init, rule="saturated")


def test_sample_states_draws_only_valid_states():
    """At most n of the marked states, each once; all of them, in order, when there are no more; the same draw from the
    same generator state."""
    valid = torch.tensor([1, 0, 1, 1, 0, 1, 1, 0, 1, 1], dtype=torch.float32)
    marked = torch.nonzero(valid).squeeze(1)
    assert torch.equal(cm.sample_states(valid, 7, torch.Generator().manual_seed(0)), marked)
    assert torch.equal(cm.sample_states(valid, 100, torch.Generator().manual_seed(0)), marked)
    drawn = cm.sample_states(valid, 4, torch.Generator().manual_seed(0))
    assert len(drawn) == len(set(drawn.tolist())) == 4 and bool(valid[drawn].all())
    assert torch.equal(drawn, cm.sample_states(valid, 4, torch.Generator().manual_seed(0)))
    assert len(cm.sample_states(torch.zeros(5), 4, torch.Generator())) == 0

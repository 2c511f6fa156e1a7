"""Representation metrics for deep RL networks: ranks, dormant, dead and saturated units.

Pure functions on torch tensors (CPU or CUDA input; singular values in float64), plus
`probe`, which collects every hidden layer of a network with forward hooks and returns a flat
`{tag: float}` dict ready for `SummaryWriter.add_scalar`. Each function's docstring gives its definition and
reference (the README's "Representation metrics" has them in one table).

Conventions:
- `features` is the uncentered `N x d` matrix of a layer's outputs (N states, d units).
- `activations` is `N x units` or `N x C x H x W`; conv layers are scored per channel.
- A Hadamard (HR) layer is any module with `branch_a` and `branch_b` submodules whose last child is
  an activation module; its output is `act(z_a) * act(z_b)`.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn

ACTIVATIONS = {nn.Tanh: "tanh", nn.ReLU: "relu", nn.Sigmoid: "sigmoid", nn.GELU: "gelu"}
SATURATING = ("tanh", "sigmoid")
SATURATION_THRESHOLD = 0.99
SATURATION_LOW = 0.01  # sigmoid's lower bound, written out: 1.0 - 0.99 is 0.010000000000000009 in float64
ZERO_FACTOR = 1e-6  # an HR factor below this is exactly zero (a dead ReLU): the other branch's gradient path is closed


# ----------------------------------------------------------------------------- input checks
def _checked(x: torch.Tensor, name: str, dims: tuple[int, ...], float64: bool = True) -> torch.Tensor:
    """`x` as a float64 tensor (`float64=False`: its own dtype), after checking its dimensions, row count and finiteness."""
    x = torch.as_tensor(x)
    if x.dim() not in dims:
        raise ValueError(f"{name} must be {' or '.join(f'{d}-D' for d in dims)}, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} has zero rows (shape {tuple(x.shape)}); need at least one state")
    x = x.detach()
    # a sum propagates NaN and inf, so it is finite when every value is (only an overflowing sum of finite values
    # needs the exact check); on a channels-last conv map it is over 10x cheaper than aminmax or isfinite(x).all()
    if x.numel() and not (torch.isfinite(x.sum()) or torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return x.to(torch.float64) if float64 else x


def singular_values(features: torch.Tensor) -> torch.Tensor:
    """Singular values of the `N x d` feature matrix, descending, in float64."""
    return torch.linalg.svdvals(_checked(features, "features", (2,)))


# ----------------------------------------------------------------------------- ranks from singular values
# Each rank is computed from singular values `s` (descending, float64) so that the probe takes one
# SVD per layer; the public functions below wrap these for a feature matrix.
def _srank(s: torch.Tensor, delta: float) -> int:
    total = s.sum()
    if total <= 0:
        return 0
    # `>=` with plain singular values, as Kumar et al. 2021. At most len(s): with delta near 0 the last
    # cumulative ratio can round to just below 1.
    return min(int((torch.cumsum(s, 0) / total < 1.0 - delta).sum().item()) + 1, s.numel())


def _effective_rank(s: torch.Tensor) -> float:
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]  # 0 log 0 = 0
    return math.exp(-(p * p.log()).sum().item())


def _feature_rank(s: torch.Tensor, num_rows: int, eps: float) -> int:
    return int((s / math.sqrt(num_rows) > eps).sum().item())


def _stable_rank(s: torch.Tensor) -> float:
    if s.numel() == 0 or s[0] <= 0:
        return 0.0
    return ((s / s[0]) ** 2).sum().item()  # ratios first: s**2 under- or overflows for tiny or huge s


def srank(features: torch.Tensor, delta: float = 0.01) -> int:
    """Effective rank of Kumar et al. 2021 ("Implicit Under-Parameterization", ICLR 2021).

    srank_delta(F) = min { k : sum_{i<=k} s_i / sum_i s_i >= 1 - delta }, with `s` the singular
    values of `F` (plain, not squared). All-zero features give 0.
    """
    return _srank(singular_values(features), delta)


def effective_rank(features: torch.Tensor) -> float:
    """Effective rank of Roy & Vetterli 2007 ("The effective rank", EUSIPCO 2007).

    erank(F) = exp(-sum_i p_i log p_i), p_i = s_i / sum_j s_j, with 0 log 0 = 0. All-zero gives 0.
    """
    return _effective_rank(singular_values(features))


def feature_rank(features: torch.Tensor, eps: float = 0.01) -> int:
    """Approximate feature rank of Lyle et al. 2022 ("Understanding and Preventing Capacity Loss", ICLR 2022).

    feature_rank(F) = |{ i : s_i / sqrt(N) > eps }| for an `N x d` matrix `F`.
    """
    x = _checked(features, "features", (2,))
    return _feature_rank(torch.linalg.svdvals(x), x.shape[0], eps)


def stable_rank(features: torch.Tensor) -> float:
    """Stable rank (Rudelson & Vershynin 2007): sum_i s_i^2 / s_1^2 = ||F||_F^2 / ||F||_2^2. All-zero gives 0."""
    return _stable_rank(singular_values(features))


def feature_norm(features: torch.Tensor) -> float:
    """Mean L2 norm of the rows of `F`: (1/N) sum_n ||F_n||_2 (Lyle et al. 2024, "Disentangling the causes of plasticity
    loss")."""
    return _checked(features, "features", (2,)).norm(dim=1).mean().item()


# ----------------------------------------------------------------------------- unit-level metrics
def _unit_dims(x: torch.Tensor) -> tuple[int, ...]:
    """The dimensions a unit's statistics reduce over: a unit is a column of `N x d` (all states), or a
    channel of `N x C x H x W` (all states and positions)."""
    return (0,) if x.dim() == 2 else (0, 2, 3)


def dormant_fraction(activations: torch.Tensor, tau: float = 0.025) -> float:
    """Fraction of tau-dormant units of Sokar et al. 2023 ("The Dormant Neuron Phenomenon in Deep RL", ICML 2023).

    score_i = E_x|a_i(x)| / (mean_j E_x|a_j(x)| + 1e-9); unit i is dormant when score_i <= tau
    (tau = 0: exactly zero). For `N x C x H x W` maps a unit is a channel (mean over x and space).
    """
    return _dormant_fraction(_checked(activations, "activations", (2, 4)), tau)


def _dormant_fraction(a: torch.Tensor, tau: float) -> float:
    # a conv map's mean |a| per state and channel in its own dtype, then float64 (equal counts: the mean of those
    # means is the mean over states and positions); a float64 reduction of 1024 x 32 x 20 x 20 costs 25x more
    per_unit = (a.abs().mean(dim=(2, 3)) if a.dim() == 4 else a.abs()).double().mean(dim=0)
    score = per_unit / (per_unit.mean() + 1e-9)
    return (score <= tau).double().mean().item()


def activation_derivative(pre_activation: torch.Tensor, activation: str) -> torch.Tensor:
    """act'(z) for tanh (1 - tanh^2), sigmoid (s(1 - s)), relu (1 where z > 0) and exact gelu (Phi(z) + z phi(z))."""
    z = pre_activation
    if activation == "tanh":
        return 1.0 - torch.tanh(z) ** 2
    if activation == "sigmoid":
        s = torch.sigmoid(z)
        return s * (1.0 - s)
    if activation == "relu":
        return (z > 0).to(z.dtype)
    if activation == "gelu":
        return 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0))) + z * torch.exp(-0.5 * z**2) / math.sqrt(2.0 * math.pi)
    raise ValueError(f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS.values())}")


def _activation(z: torch.Tensor, activation: str) -> torch.Tensor:
    return {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu, "gelu": nn.functional.gelu}[activation](z)


def dead_fraction(
    pre_activation: torch.Tensor,
    activation: str = "tanh",
    eps_grad: float = 0.02,
    pre_activation_b: torch.Tensor | None = None,
) -> float:
    """Fraction of units through which no gradient flows on any probe state.

    Plain unit a = act(z): dead when |act'(z)| < eps_grad on every state (tanh: 1 - a^2 < eps, i.e.
    |a| > sqrt(1 - eps) = 0.98995 at eps = 0.02, not 0.99; relu: output 0 on every state).
    HR unit h = a * b, a = act(z_a), b = act(z_b) (give `pre_activation_b`) has two gradient paths.
    The path through branch a is closed on a state when |act'(z_a)| < eps_grad or |b| < 1e-6 (a factor
    that is exactly zero, e.g. a dead ReLU); likewise the path through b. The unit is dead when both paths
    are closed on every state: tanh HR only when both branches saturate, ReLU HR when either factor is
    always 0. Two small, unsaturated factors are alive: their gradient is small, not zero (thresholding
    the product act'(z_a) * b would read a small-scale initialisation as dead).
    Conv maps (`N x C x H x W`) are scored per channel: every state and every position.
    Saturated tanh units turn their outgoing weights into a fixed bias (Kooi et al., arXiv 2406.09079).
    """
    if pre_activation_b is None and activation == "relu":
        # relu' is 1 where z > 0, else 0 (exactly): no float64 copy of a large conv map is needed
        z = _checked(pre_activation, "pre_activation", (2, 4), float64=False)
        if not 0.0 < eps_grad:
            return 0.0
        if 1.0 < eps_grad:
            return 1.0
        return (z.amax(dim=_unit_dims(z)) <= 0).double().mean().item()
    za = _checked(pre_activation, "pre_activation", (2, 4))
    if pre_activation_b is None:
        blocked = activation_derivative(za, activation).abs() < eps_grad
    else:
        zb = _checked(pre_activation_b, "pre_activation_b", (2, 4))
        if zb.shape != za.shape:
            raise ValueError(f"HR branches differ in shape: {tuple(za.shape)} vs {tuple(zb.shape)}")
        closed_a = (activation_derivative(za, activation).abs() < eps_grad) | (_activation(zb, activation).abs() < ZERO_FACTOR)
        closed_b = (activation_derivative(zb, activation).abs() < eps_grad) | (_activation(za, activation).abs() < ZERO_FACTOR)
        blocked = closed_a & closed_b
    return blocked.all(dim=_unit_dims(blocked)).double().mean().item()


def saturation_fraction(activations: torch.Tensor, activation: str = "tanh") -> float:
    """Fraction of units saturated on every probe state: tanh |a| > 0.99; sigmoid a < 0.01 or a > 0.99.

    For an HR layer, call it on each branch's activations. Defined for saturating activations only.
    """
    if activation not in SATURATING:
        raise ValueError(f"saturation_fraction is defined for {SATURATING}, not {activation!r}")
    a = _checked(activations, "activations", (2, 4))
    if activation == "tanh":
        saturated = a.abs() > SATURATION_THRESHOLD
    else:
        saturated = (a < SATURATION_LOW) | (a > SATURATION_THRESHOLD)
    return saturated.all(dim=_unit_dims(saturated)).double().mean().item()


# ----------------------------------------------------------------------------- the probe
def activation_name(module: nn.Module) -> str:
    """The name of an activation module (`nn.Tanh` -> "tanh", ...)."""
    for cls, name in ACTIVATIONS.items():
        if isinstance(module, cls):
            return name
    raise ValueError(
        f"{type(module).__name__} is not a supported activation module ({', '.join(c.__name__ for c in ACTIVATIONS)})"
    )


def is_hadamard(module: nn.Module) -> bool:
    """An HR layer: a module with `branch_a` and `branch_b`, each ending in an activation module."""
    return hasattr(module, "branch_a") and hasattr(module, "branch_b")


def layer_metrics(
    output: torch.Tensor,
    pre_activation: torch.Tensor,
    activation: str,
    branch_a: tuple[torch.Tensor, torch.Tensor] | None = None,
    branch_b: tuple[torch.Tensor, torch.Tensor] | None = None,
    eps_grad: float = 0.02,
    tau: float = 0.025,
    delta: float = 0.01,
) -> dict[str, float]:
    """Every metric of one hidden layer. `output` is `N x d` or `N x C x H x W`.

    For an HR layer give `branch_a` and `branch_b` as (pre_activation, activation) pairs; then
    `pre_activation` is ignored. Rank metrics of a conv map use its per-channel spatial mean (`N x C`,
    averaged in the map's dtype, then float64), the unit that dormant and dead fractions score.
    """
    # a conv map stays in its own dtype (a float64 copy of 1024 x 32 x 20 x 20 costs more than all the metrics):
    # its per-state channel means are taken in that dtype, then everything is float64
    output = _checked(output, "output", (2, 4), float64=False)
    features = (output if output.dim() == 2 else output.mean(dim=(2, 3))).double()
    s = singular_values(features)
    metrics = {
        "srank": float(_srank(s, delta)),
        "effective_rank": _effective_rank(s),
        "feature_rank": float(_feature_rank(s, features.shape[0], 0.01)),
        "stable_rank": _stable_rank(s),
        "feature_norm": features.norm(dim=1).mean().item(),
        "dormant_fraction": _dormant_fraction(output, tau),
    }
    if branch_a is None:
        metrics["dead_fraction"] = dead_fraction(pre_activation, activation, eps_grad)
        if activation in SATURATING:
            metrics["saturation_fraction"] = saturation_fraction(output, activation)
        return metrics
    metrics["dead_fraction"] = dead_fraction(branch_a[0], activation, eps_grad, pre_activation_b=branch_b[0])
    for suffix, (pre, out) in (("a", branch_a), ("b", branch_b)):
        # A branch's units die like plain units; the product survives while the other branch passes gradient.
        metrics[f"dead_fraction_{suffix}"] = dead_fraction(pre, activation, eps_grad)
        if activation in SATURATING:
            metrics[f"saturation_fraction_{suffix}"] = saturation_fraction(out, activation)
    if activation in SATURATING:
        metrics["saturation_fraction"] = (metrics["saturation_fraction_a"] + metrics["saturation_fraction_b"]) / 2
    return metrics


def probe(
    model: nn.Module,
    obs: torch.Tensor,
    layers: dict[str, nn.Module],
    representation: str,
    forward: Callable[[torch.Tensor], object] | None = None,
    eps_grad: float = 0.02,
    tau: float = 0.025,
    delta: float = 0.01,
    chunk_size: int = 256,
) -> dict[str, float]:
    """Representation metrics of every hidden layer of `model` on the probe batch `obs`.

    `layers` maps a layer name to its activation module (a plain layer) or to its HR module
    (`branch_a`, `branch_b`); `forward(obs)` (default `model(obs)`) runs under `torch.no_grad()`
    with forward hooks on those modules, over `chunk_size` states at a time (on 2 CPU cores one
    forward of 1024 states took 1.6x as long as four of 256: the conv maps outgrow the cache); every
    metric sees the whole batch. Returns `{"representation/<layer>/<metric>": value}` for every
    layer and `{"representation/<metric>": value}` for the layer named `representation`,
    ready for `SummaryWriter.add_scalar`.
    """
    if representation not in layers:
        raise ValueError(f"representation layer {representation!r} is not among the probed layers {list(layers)}")
    chunks: dict[tuple[str, str], list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def capture(key):
        def hook(module, inputs, output):
            chunks.setdefault(key, []).append((inputs[0].detach(), output.detach()))

        return hook

    hooks = []
    for name, module in layers.items():
        if is_hadamard(module):
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
    # (pre-activation, output) of each hooked module over the whole batch
    captured = {key: tuple(torch.cat(parts) for parts in zip(*pairs)) for key, pairs in chunks.items()}

    tags = {}
    for name, module in layers.items():
        pre_activation, output = captured[(name, "out")]
        if is_hadamard(module):
            activation = activation_name(module.branch_a[-1])
            if activation_name(module.branch_b[-1]) != activation:
                raise ValueError(f"HR layer {name!r} mixes activations; both branches must use the same one")
            metrics = layer_metrics(
                output, None, activation, captured[(name, "a")], captured[(name, "b")], eps_grad, tau, delta
            )
        else:
            metrics = layer_metrics(output, pre_activation, activation_name(module), eps_grad=eps_grad, tau=tau, delta=delta)
        for metric, value in metrics.items():
            tags[f"representation/{name}/{metric}"] = value
            if name == representation:
                tags[f"representation/{metric}"] = value
    return tags

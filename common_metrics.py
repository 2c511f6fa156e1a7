"""Representation metrics for deep RL networks: ranks, dormant, dead and saturated units; and ReDo, which recycles units.

Pure functions on torch tensors (CPU or CUDA input; singular values in float64), plus
`probe`, which collects every hidden layer of a network with forward hooks and returns a flat
`{tag: float}` dict ready for `SummaryWriter.add_scalar`. Each function's docstring gives its definition and
reference (the README's "Representation metrics" has them in one table). `dormant_units` and `dead_units` give
the per-unit masks that the fractions average (each rule is written once), and `redo` recycles the units they mark
(ReDo, Sokar et al. 2023): the one change to a network here, its weights and its optimizer state.

Conventions:
- `features` is the uncentered `N x d` matrix of a layer's outputs (N states, d units).
- `activations` is `N x units` or `N x C x H x W`; conv layers are scored per channel.
- An activation is named as in `ACTIVATIONS`: tanh, relu, sigmoid, gelu, swish (`nn.SiLU`, z * sigmoid(z)) and
  identity (`nn.Identity`, a linear factor).
- A two-branch layer (an HR layer or a gate) is any module with `branch_a` and `branch_b` submodules whose last
  child is an activation module; its output is the product of the branches, `act_a(z_a) * act_b(z_b)`, z_a and
  z_b the inputs of those last children. The gate family (`GATES`), all of one shape and parameter count:
  hadamard `act(z_a) * act(z_b)` (Kooi et al., arXiv 2406.09079), glu `sigmoid(z_a) * z_b` (Dauphin et al. 2017),
  swiglu `swish(z_a) * z_b` (Shazeer 2020) and bilinear `z_a * z_b` (Shazeer 2020). A linear factor's branch ends
  in `nn.Identity`.
"""

from __future__ import annotations

import copy
import math
from typing import Callable

import torch
import torch.nn as nn

ACTIVATIONS = {
    nn.Tanh: "tanh",
    nn.ReLU: "relu",
    nn.Sigmoid: "sigmoid",
    nn.GELU: "gelu",
    nn.SiLU: "swish",
    nn.Identity: "identity",
}
SATURATING = ("tanh", "sigmoid")
SATURATION_THRESHOLD = 0.99
SATURATION_LOW = 0.01  # sigmoid's lower bound, written out: 1.0 - 0.99 is 0.010000000000000009 in float64
# a factor below this is exactly zero (a dead ReLU, a shut gate): the other branch's gradient path is closed
ZERO_FACTOR = 1e-6
# the two-branch gates; `gate_activations` gives their branches' activations
GATES = ("hadamard", "glu", "swiglu", "bilinear")


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
    # needs the exact check); on a channels-last conv map it is far cheaper than aminmax or isfinite(x).all()
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


def dormant_units(activations: torch.Tensor, tau: float = 0.025) -> torch.Tensor:
    """Boolean mask of the tau-dormant units of Sokar et al. 2023 ("The Dormant Neuron Phenomenon in Deep RL",
    ICML 2023), the units ReDo recycles.

    score_i = E_x|a_i(x)| / (mean_j E_x|a_j(x)| + 1e-9); unit i is dormant when score_i <= tau
    (tau = 0: exactly zero). `activations` is a layer's output: for a two-branch layer (HR or gate), the product.
    For `N x C x H x W` maps a unit is a channel (mean over x and space). Returns a `(units,)` bool tensor on the
    input's device.
    """
    return _dormant_units(_checked(activations, "activations", (2, 4)), tau)


def _dormant_units(a: torch.Tensor, tau: float) -> torch.Tensor:
    # a conv map's mean |a| per state and channel in its own dtype, then float64 (equal counts: the mean of those
    # means is the mean over states and positions); a float64 reduction of the whole map costs many times more
    per_unit = (a.abs().mean(dim=(2, 3)) if a.dim() == 4 else a.abs()).double().mean(dim=0)
    score = per_unit / (per_unit.mean() + 1e-9)
    return score <= tau


def dormant_fraction(activations: torch.Tensor, tau: float = 0.025) -> float:
    """Fraction of tau-dormant units of Sokar et al. 2023: the mean of `dormant_units(activations, tau)`."""
    return _fraction(dormant_units(activations, tau))


def _fraction(mask: torch.Tensor) -> float:
    return mask.double().mean().item()


def activation_derivative(pre_activation: torch.Tensor, activation: str) -> torch.Tensor:
    """act'(z) of each activation of `ACTIVATIONS`:

    tanh 1 - tanh(z)^2; sigmoid s(z)(1 - s(z)); relu 1 where z > 0, else 0; exact gelu Phi(z) + z phi(z)
    (Hendrycks & Gimpel 2016); swish = SiLU, z s(z): s(z)(1 + z(1 - s(z))) (Ramachandran et al. 2017, "Searching
    for Activation Functions"; Elfwing et al. 2018); identity 1.
    """
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
    if activation == "swish":
        s = torch.sigmoid(z)
        return s * (1.0 + z * (1.0 - s))
    if activation == "identity":
        return torch.ones_like(z)
    raise ValueError(f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS.values())}")


def _activation(z: torch.Tensor, activation: str) -> torch.Tensor:
    functions = {
        "tanh": torch.tanh,
        "sigmoid": torch.sigmoid,
        "relu": torch.relu,
        "gelu": nn.functional.gelu,
        "swish": nn.functional.silu,
        "identity": lambda x: x,
    }
    if activation not in functions:
        raise ValueError(f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS.values())}")
    return functions[activation](z)


def gate_activations(gate: str, activation: str = "tanh") -> tuple[str, str]:
    """The activations of branch a and branch b of a two-branch gate, the layer's output being
    act_a(W_a z + b_a) * act_b(W_b z + b_b):

    hadamard (Kooi et al., arXiv 2406.09079): (activation, activation);
    glu (Dauphin et al. 2017, "Language Modeling with Gated Convolutional Networks"): ("sigmoid", "identity");
    swiglu (Shazeer 2020, "GLU Variants Improve Transformer"): ("swish", "identity");
    bilinear (Shazeer 2020): ("identity", "identity").
    """
    if gate == "hadamard":
        if activation not in ACTIVATIONS.values():
            raise ValueError(f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS.values())}")
        return activation, activation
    pairs = {"glu": ("sigmoid", "identity"), "swiglu": ("swish", "identity"), "bilinear": ("identity", "identity")}
    if gate not in pairs:
        raise ValueError(f"unknown gate {gate!r}; expected one of {GATES}")
    return pairs[gate]


def _derivative_below(z: torch.Tensor, activation: str, eps_grad: float) -> torch.Tensor:
    """Where |act'(z)| < eps_grad: a factor's own gradient path is closed. identity' = 1 needs no tensor."""
    if activation == "identity":
        return torch.tensor(1.0 < eps_grad, device=z.device).expand(z.shape)
    return activation_derivative(z, activation).abs() < eps_grad


def dead_units(
    pre_activation: torch.Tensor,
    activation: str = "tanh",
    eps_grad: float = 0.02,
    pre_activation_b: torch.Tensor | None = None,
    activation_b: str | None = None,
) -> torch.Tensor:
    """Boolean mask of the units through which no gradient flows on any probe state (`(units,)`, on the input's
    device; a conv map's unit is a channel: every state and every position).

    Plain unit a = act(z): dead when |act'(z)| < eps_grad on every state. Per activation, at eps_grad = 0.02:
      tanh     1 - tanh(z)^2 < eps, i.e. |a| > sqrt(1 - eps) = 0.98995 (not 0.99), |z| > 2.644;
      sigmoid  s(1 - s) < eps, i.e. a < (1 - sqrt(1 - 4 eps)) / 2 = 0.0204 or a > 0.9796, |z| > 3.871;
      relu     output 0 (z <= 0), for any 0 < eps_grad <= 1;
      gelu     |Phi(z) + z phi(z)| < eps: z < -2.79, and the band -0.80 < z < -0.71 around gelu's minimum;
      swish    |s(z)(1 + z(1 - s(z)))| < eps: z < -5.38, and the band -1.377 < z < -1.192 around swish's minimum;
      identity 1 < eps: never for eps_grad <= 1 (a linear factor is never dead by itself).
    Saturated tanh units turn their outgoing weights into a fixed bias (Kooi et al., arXiv 2406.09079).

    Two-branch unit h = f_a(z_a) * f_b(z_b) (give `pre_activation_b`; `activation_b` defaults to `activation`):
    HR (f_a = f_b = act), glu (sigmoid, identity; Dauphin et al. 2017), swiglu (swish, identity; Shazeer 2020) and
    bilinear (identity, identity; Shazeer 2020). It has two gradient paths, dh/dz_a = f_a'(z_a) f_b(z_b) and
    dh/dz_b = f_a(z_a) f_b'(z_b). The path through a is closed on a state when |f_a'(z_a)| < eps_grad (the rule above)
    or |f_b(z_b)| < 1e-6 (an exactly-zero factor: a dead ReLU, a shut sigmoid gate, a zero linear factor); likewise
    the path through b. The unit is dead when both paths are closed on every state. A linear factor's own path closes
    only through the other factor (for eps_grad <= 1). So, on every state: tanh HR is dead only when both branches
    saturate or both are 0 (the 0 * 0 saddle), ReLU HR when either factor is 0; glu only when its gate is shut,
    sigmoid(z_a) < 1e-6 (z_a < -13.8; a gate saturated low at 1e-6 <= s < 0.0204 still passes s * dL/dh to its
    linear branch, whatever z_b); swiglu only when swish(z_a) is zero, |swish(z_a)| < 1e-6: z_a < -16.6, or z_a = 0
    together with z_b = 0 (swish'(0) = 1/2: the saddle); bilinear only when both factors are 0 (one zero factor
    leaves the path through it open: dh/dz_b = z_a). Two small, nonzero factors are alive: their gradient is small,
    not zero (thresholding the product act'(z_a) * b would read a small-scale initialisation as dead).
    """
    if pre_activation_b is None:
        if activation_b is not None:
            raise ValueError("activation_b needs pre_activation_b (a two-branch layer)")
        if activation == "relu":
            # relu' is 1 where z > 0, else 0 (exactly): no float64 copy of a large conv map is needed
            z = _checked(pre_activation, "pre_activation", (2, 4), float64=False)
            if not 0.0 < eps_grad or 1.0 < eps_grad:
                return torch.full((z.shape[1],), 1.0 < eps_grad, dtype=torch.bool, device=z.device)
            return z.amax(dim=_unit_dims(z)) <= 0
        za = _checked(pre_activation, "pre_activation", (2, 4))
        blocked = _derivative_below(za, activation, eps_grad)
    else:
        activation_b = activation if activation_b is None else activation_b
        za = _checked(pre_activation, "pre_activation", (2, 4))
        zb = _checked(pre_activation_b, "pre_activation_b", (2, 4))
        if zb.shape != za.shape:
            raise ValueError(f"the two branches differ in shape: {tuple(za.shape)} vs {tuple(zb.shape)}")
        closed_a = _derivative_below(za, activation, eps_grad) | (_activation(zb, activation_b).abs() < ZERO_FACTOR)
        closed_b = _derivative_below(zb, activation_b, eps_grad) | (_activation(za, activation).abs() < ZERO_FACTOR)
        blocked = closed_a & closed_b
    return blocked.all(dim=_unit_dims(blocked))


def dead_fraction(
    pre_activation: torch.Tensor,
    activation: str = "tanh",
    eps_grad: float = 0.02,
    pre_activation_b: torch.Tensor | None = None,
    activation_b: str | None = None,
) -> float:
    """Fraction of units through which no gradient flows on any probe state: the mean of `dead_units` (its
    docstring has the rule for plain units, HR and the gates)."""
    return _fraction(dead_units(pre_activation, activation, eps_grad, pre_activation_b, activation_b))


def saturated_units(activations: torch.Tensor, activation: str = "tanh") -> torch.Tensor:
    """Boolean mask of the units saturated on every probe state: tanh |a| > 0.99; sigmoid a < 0.01 or a > 0.99
    (`(units,)`, on the input's device; a conv map's unit is a channel).

    Defined for saturating activations only (`SATURATING`): relu, gelu, swish and identity raise. For a two-branch
    layer, call it on each saturating branch's activations (HR tanh: both; glu: the sigmoid gate; swiglu and
    bilinear: none).
    """
    if activation not in SATURATING:
        raise ValueError(f"saturation is defined for {SATURATING}, not {activation!r}")
    a = _checked(activations, "activations", (2, 4))
    if activation == "tanh":
        saturated = a.abs() > SATURATION_THRESHOLD
    else:
        saturated = (a < SATURATION_LOW) | (a > SATURATION_THRESHOLD)
    return saturated.all(dim=_unit_dims(saturated))


def saturation_fraction(activations: torch.Tensor, activation: str = "tanh") -> float:
    """Fraction of units saturated on every probe state: the mean of `saturated_units` (tanh |a| > 0.99; sigmoid
    a < 0.01 or a > 0.99).

    For a two-branch layer, call it on each saturating branch's activations. Defined for saturating activations only.
    """
    return _fraction(saturated_units(activations, activation))


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
    """A two-branch layer (HR or a gate): a module with `branch_a` and `branch_b`, each ending in an activation module
    (`nn.Identity` for a linear factor)."""
    return hasattr(module, "branch_a") and hasattr(module, "branch_b")


def branch_activations(module: nn.Module) -> tuple[str, str]:
    """The activations ending branch a and branch b of a two-branch layer, e.g. ("sigmoid", "identity") for a GLU."""
    return activation_name(module.branch_a[-1]), activation_name(module.branch_b[-1])


def layer_metrics(
    output: torch.Tensor,
    pre_activation: torch.Tensor,
    activation: str,
    branch_a: tuple[torch.Tensor, torch.Tensor] | None = None,
    branch_b: tuple[torch.Tensor, torch.Tensor] | None = None,
    eps_grad: float = 0.02,
    tau: float = 0.025,
    delta: float = 0.01,
    *,
    activation_b: str | None = None,
) -> dict[str, float]:
    """Every metric of one hidden layer. `output` is `N x d` or `N x C x H x W`.

    For a two-branch layer (HR or a gate) give `branch_a` and `branch_b` as (pre_activation, activation) pairs, and
    `activation_b` when branch b's activation differs from `activation` (branch a's); then `pre_activation` is
    ignored. Its ranks and `dormant_fraction` score the product `output`, `dead_fraction` the product's units by
    `dead_units`' two-path rule, `dead_fraction_a` and `_b` each branch's units as plain units (a linear branch: 0).
    Saturation is scored on the saturating branches only (tanh, sigmoid): `saturation_fraction_a` and/or `_b`, and
    `saturation_fraction` their mean (HR tanh: both branches; glu: its sigmoid gate; swiglu, bilinear and ReLU HR:
    none). Rank metrics of a conv map use its per-channel spatial mean (`N x C`, averaged in the map's dtype, then
    float64), the unit that dormant and dead fractions score.
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
        "dormant_fraction": _fraction(_dormant_units(output, tau)),
    }
    if branch_a is None:
        if activation_b is not None:
            raise ValueError("activation_b needs branch_a and branch_b (a two-branch layer)")
        metrics["dead_fraction"] = dead_fraction(pre_activation, activation, eps_grad)
        if activation in SATURATING:
            metrics["saturation_fraction"] = saturation_fraction(output, activation)
        return metrics
    activation_b = activation if activation_b is None else activation_b
    metrics["dead_fraction"] = dead_fraction(branch_a[0], activation, eps_grad, branch_b[0], activation_b)
    saturations = []
    for suffix, (pre, out), act in (("a", branch_a, activation), ("b", branch_b, activation_b)):
        # A branch's units die like plain units; the product survives while the other branch passes gradient.
        metrics[f"dead_fraction_{suffix}"] = dead_fraction(pre, act, eps_grad)
        if act in SATURATING:
            metrics[f"saturation_fraction_{suffix}"] = saturation_fraction(out, act)
            saturations.append(metrics[f"saturation_fraction_{suffix}"])
    if saturations:
        metrics["saturation_fraction"] = sum(saturations) / len(saturations)
    return metrics


def capture(
    model: nn.Module,
    obs: torch.Tensor,
    layers: dict[str, nn.Module],
    forward: Callable[[torch.Tensor], object] | None = None,
    chunk_size: int = 256,
) -> dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]]:
    """The (pre-activation, output) of every layer of `layers` (as `probe` takes them) on the batch `obs`:
    `{(name, "out"): ...}`, and for a two-branch layer each branch's too, `(name, "a")` and `(name, "b")`.

    `forward(obs)` (default `model(obs)`) runs in eval mode under `torch.no_grad()` with forward hooks on those modules,
    over `chunk_size` states at a time (smaller forwards are faster on CPU: the conv maps of 1024 states outgrow the
    cache); an identity's output is its input (one copy)."""
    chunks: dict[tuple[str, str], list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def hook_for(key):
        def hook(module, inputs, output):
            pre = inputs[0].detach()
            chunks.setdefault(key, []).append((pre, pre if output is inputs[0] else output.detach()))

        return hook

    hooks = []
    for name, module in layers.items():
        if is_hadamard(module):
            hooks.append(module.branch_a[-1].register_forward_hook(hook_for((name, "a"))))
            hooks.append(module.branch_b[-1].register_forward_hook(hook_for((name, "b"))))
        hooks.append(module.register_forward_hook(hook_for((name, "out"))))
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
    captured = {}
    for key, pairs in chunks.items():
        pre = torch.cat([p for p, _ in pairs])
        captured[key] = (pre, pre if all(p is o for p, o in pairs) else torch.cat([o for _, o in pairs]))
    return captured


def sample_states(valid: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of at most `n` of the states that the flat mask `valid` marks (nonzero), for `probe` and `redo`.

    All of them, in order, when there are no more than `n`; else `n` drawn without replacement by a permutation from
    `generator` (a CPU generator: the draw is the same on CPU and CUDA). The probe and ReDo each pass their own
    generator, so that turning one on leaves the other's draws, and the training, as they were.
    """
    idx = torch.nonzero(valid).squeeze(1)
    if len(idx) > n:
        idx = idx[torch.randperm(len(idx), generator=generator)[:n].to(idx.device)]
    return idx


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

    `layers` maps a layer name to its activation module (a plain layer) or to its two-branch module (HR or a gate:
    `branch_a`, `branch_b`, each ending in an activation module, `nn.Identity` for a linear factor); `forward(obs)`
    (default `model(obs)`) runs under `torch.no_grad()` with forward hooks on those modules, over `chunk_size` states
    at a time (smaller forwards are faster on CPU: the conv maps of 1024 states outgrow the cache); every metric sees
    the whole batch. Returns `{"representation/<layer>/<metric>": value}` for every layer (the metrics of
    `layer_metrics`) and `{"representation/<metric>": value}` for the layer named `representation`, ready for
    `SummaryWriter.add_scalar`.
    """
    if representation not in layers:
        raise ValueError(f"representation layer {representation!r} is not among the probed layers {list(layers)}")
    # each layer's activation(s), before any forward: an unsupported module fails at once
    activations = {
        name: branch_activations(module) if is_hadamard(module) else (activation_name(module),)
        for name, module in layers.items()
    }
    captured = capture(model, obs, layers, forward, chunk_size)

    tags = {}
    for name, module in layers.items():
        pre_activation, output = captured[(name, "out")]
        if is_hadamard(module):
            activation, activation_b = activations[name]
            metrics = layer_metrics(
                output,
                None,
                activation,
                captured[(name, "a")],
                captured[(name, "b")],
                eps_grad,
                tau,
                delta,
                activation_b=activation_b,
            )
        else:
            metrics = layer_metrics(output, pre_activation, activations[name][0], eps_grad=eps_grad, tau=tau, delta=delta)
        for metric, value in metrics.items():
            tags[f"representation/{name}/{metric}"] = value
            if name == representation:
                tags[f"representation/{metric}"] = value
    return tags


# ----------------------------------------------------------------------------- recycling units (ReDo)
REDO_RULES = ("dormant", "dead")


def recycle_units(
    branches: list[list[nn.Module]],
    next_layers: list[nn.Module],
    mask: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    init: Callable[..., object],
):
    """Recycle the units of one layer that `mask` (`(units,)` bool) marks, as ReDo does (Sokar et al. 2023, "The Dormant
    Neuron Phenomenon in Deep RL", ICML 2023; dopamine's `labs/redo`): their incoming weights are drawn afresh from the
    layer's initialisation, their outgoing weights are zeroed, and the optimizer's state of every weight changed
    (Adam's exp_avg and exp_avg_sq: every state tensor of the parameter's shape) is zeroed there.

    `branches` are the module lists that make the units, one for a plain layer and two for a two-branch layer (HR or a
    gate: unit k is the product of both branches' unit k, so both are recycled). In a branch, a Linear or Conv2d gets
    the rows (output channels) of `init(layer, generator=generator)` applied to a CPU copy of it (the constructor's
    initialisation, drawn from `generator`, the same on any device); a LayerNorm gets weight 1 and bias 0 for the unit
    (its channel's slice for a conv map); an activation has no parameters. `next_layers` are the layers the units feed:
    a Linear or a Conv2d whose input is the layer's output (the unit's input column or input channel), or a Linear on a
    flattened `C x H x W` map (the channel's H * W columns).
    """
    if not mask.any():
        return
    with torch.no_grad():
        for branch in branches:
            for layer in branch:
                if isinstance(layer, (nn.Linear, nn.Conv2d)):
                    # a contiguous CPU copy: channels-last conv weights cannot be filled by orthogonal_
                    fresh = copy.deepcopy(layer).to("cpu", memory_format=torch.contiguous_format)
                    init(fresh, generator=generator)
                    _set_units(layer.weight, mask, fresh.weight.to(layer.weight.device)[mask], optimizer)
                    if layer.bias is not None:
                        _set_units(layer.bias, mask, fresh.bias.to(layer.bias.device)[mask], optimizer)
                elif isinstance(layer, nn.LayerNorm) and layer.weight is not None:
                    _set_units(layer.weight, mask, 1.0, optimizer)
                    _set_units(layer.bias, mask, 0.0, optimizer)
        for layer in next_layers:
            # the input dimension split into (unit, the positions of a flattened map): one position for a column or a channel
            for tensor in _with_optimizer_state(layer.weight, optimizer):
                tensor.unflatten(1, (mask.numel(), -1))[:, mask] = 0.0


def _with_optimizer_state(param: torch.Tensor, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """`param` and the optimizer's state tensors of its shape (Adam's moments; not its step count)."""
    state = optimizer.state.get(param, {})
    return [param] + [v for v in state.values() if isinstance(v, torch.Tensor) and v.shape == param.shape]


def _set_units(param: torch.Tensor, mask: torch.Tensor, value, optimizer: torch.optim.Optimizer):
    """The units' entries (along dim 0) of `param` set to `value`, and of its optimizer state to 0."""
    param[mask] = value
    for moment in _with_optimizer_state(param, optimizer)[1:]:
        moment[mask] = 0.0


def redo(
    model: nn.Module,
    obs: torch.Tensor,
    layers: dict[str, nn.Module],
    recycled: dict[str, tuple[list[list[nn.Module]], list[nn.Module]]],
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    init: Callable[..., object],
    tau: float = 0.025,
    rule: str = "dormant",
    forward: Callable[[torch.Tensor], object] | None = None,
    eps_grad: float = 0.02,
    chunk_size: int = 256,
) -> dict[str, float]:
    """ReDo, Recycling Dormant neurons (Sokar et al. 2023, "The Dormant Neuron Phenomenon in Deep RL", ICML 2023;
    dopamine's `labs/redo` is the reference): score the units of the layers `recycled` names on the batch `obs`, then
    recycle (`recycle_units`) those that the rule marks. Returns `{layer: fraction of its units recycled}`.

    Rules: `dormant`, the paper's: score_i = E_x|a_i(x)| / (mean_j E_x|a_j(x)| + 1e-9) <= tau (`dormant_units`; a
    two-branch unit is scored on the product, a conv unit is a channel); `dead`, the gradient-path rule of
    `dead_units` at `eps_grad` (no gradient through the unit on any state: a saturated tanh unit, which the dormant
    score misses since |a| is near 1; tau is not used). `layers` maps a layer name to the module `probe` hooks (an
    activation module or a two-branch module) and `forward` runs the model as in `probe`; `recycled` maps the names
    of the layers to recycle, in the network's order, to (their branches, the layers they feed) as `recycle_units` takes
    them. Every layer is scored before any changes; then they are recycled from the last back, so that a weight from a
    recycled unit into a recycled unit of the next layer ends zero, as in the reference (incoming weights first, then
    outgoing).
    """
    if rule not in REDO_RULES:
        raise ValueError(f"unknown ReDo rule {rule!r}; expected one of {REDO_RULES}")
    scored = {name: layers[name] for name in recycled}
    captured = capture(model, obs, scored, forward, chunk_size)
    masks = {}
    for name, module in scored.items():
        pre_activation, output = captured[(name, "out")]
        if rule == "dormant":
            masks[name] = dormant_units(output, tau)
        elif is_hadamard(module):
            activation_a, activation_b = branch_activations(module)
            masks[name] = dead_units(captured[(name, "a")][0], activation_a, eps_grad, captured[(name, "b")][0], activation_b)
        else:
            masks[name] = dead_units(pre_activation, activation_name(module), eps_grad)
    for name in reversed(list(recycled)):
        branches, next_layers = recycled[name]
        recycle_units(branches, next_layers, masks[name], optimizer, generator, init)
    return {name: _fraction(mask) for name, mask in masks.items()}

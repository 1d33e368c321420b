"""Network pieces shared by the agents: Continual World's MLP body and per-task heads."""

from __future__ import annotations

from statistics import NormalDist
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


# after the first (LayerNorm + tanh) layer; "elephant" and "hard_ash" are the sparse activations of the
# continual-learning literature (see ``Elephant`` and ``HardASH``)
HIDDEN_ACTIVATIONS = ("leaky_relu", "relu", "elephant", "hard_ash")
LEAKY_SLOPE = 0.2  # TF's LeakyReLU default, which Continual World uses (torch's is 0.01)
ELEPHANT_WIDTH = 1.0  # a: elephant(±a) = 1/2 (Lan & Mahmood 2023)
ELEPHANT_DEGREE = 4.0  # d: the sharpness of the bell; larger d, flatter top and steeper sides
HARD_ASH_Z = 1.2816  # z_k: keeps x ≥ μ + z·σ, the top 10% of a Gaussian layer (Φ(1.2816) = 0.90)
# cw: Continual World's body (Linear→LayerNorm→tanh, then Linear→activation); mlp: Linear→activation for
# every layer, the plain MLP of Haarnoja et al.'s SAC, Spinning Up and Stable-Baselines3
BODIES = ("cw", "mlp")
# Keras' LayerNormalization default epsilon, which Continual World's first layer uses (``sac/models.py:44``);
# torch's default is 1e-5. The LayerNorms that Normalize-and-Project adds (``norm_all``) keep torch's.
CW_LAYER_NORM_EPS = 1e-3
TORCH_LAYER_NORM_EPS = 1e-5


def cw_activations(hidden_sizes: tuple[int, ...], activation: str = "leaky_relu", body: str = "cw") -> dict[str, str]:
    """The nonlinearity after each hidden layer of a body, by layer index (for plasticity probes)."""
    return {str(i): "tanh" if i == 0 and body == "cw" else activation for i in range(len(hidden_sizes))}


def _check_activation(activation: str) -> None:
    if activation not in HIDDEN_ACTIVATIONS:
        raise ValueError(f"unknown activation '{activation}'; allowed: {', '.join(HIDDEN_ACTIVATIONS)}")


def _hidden_activation(activation: str) -> nn.Module:
    # in place: the activation overwrites the Linear's output, which no backward needs (one tensor less
    # to allocate per layer); LeakyReLU/ReLU backward only need the result. Elephant and Hard ASH are
    # not in place (their backward needs the input).
    _check_activation(activation)
    if activation == "leaky_relu":
        return nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
    if activation == "relu":
        return nn.ReLU(inplace=True)
    return Elephant() if activation == "elephant" else HardASH()


def elephant(x: torch.Tensor, a: float = ELEPHANT_WIDTH, d: float = ELEPHANT_DEGREE) -> torch.Tensor:
    """Elephant activation 1 / (1 + |x/a|^d) (Lan & Mahmood, "Elephant Neural Networks: Born to Be a
    Continual Learner", arXiv:2310.01365, 2023).

    A bell: 1 at x = 0, 1/2 at |x| = a, → 0 as |x|/a → ∞ (like |x/a|^-d). Its gradient
    −(d/a)·sign(x)·|x/a|^(d−1)/(1 + |x/a|^d)² is non-negligible only for |x| ≲ a, so both the
    representation and its gradient are sparse: an update on one input barely moves the function on
    inputs whose pre-activations lie elsewhere (the paper's argument against forgetting). ``d`` sets the
    sharpness: the larger, the flatter the top and the steeper (and more local) the sides."""
    return torch.reciprocal(1 + (x / a).abs().pow(d))


class Elephant(nn.Module):
    """``elephant(x, a, d)`` as a module (a hidden nonlinearity that probes and type checks can find)."""

    def __init__(self, a: float = ELEPHANT_WIDTH, d: float = ELEPHANT_DEGREE):
        super().__init__()
        if a <= 0 or d <= 0:
            raise ValueError(f"elephant needs a > 0 and d > 0, got a={a}, d={d}")
        self.a, self.d = float(a), float(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return elephant(x, self.a, self.d)

    def extra_repr(self) -> str:
        return f"a={self.a}, d={self.d}"


def hard_ash(x: torch.Tensor, z: float = HARD_ASH_Z) -> torch.Tensor:
    """Hard Adaptive SwisH: x · 1[x ≥ μ + z·σ], μ and σ the mean and (population) standard deviation of
    each sample's pre-activations over the last (feature) dimension.

    This is the step form that defines ASH (Lee et al., "Stochastic Adaptive Activation Function",
    NeurIPS 2022: keep the entries above the per-sample threshold μ_X + z_k·σ_X, i.e. the top
    percentile of a Gaussian row, which ASH then smooths into x·sigmoid(α·(x − μ_X − z_k·σ_X))), kept
    hard as in the sparse continual learner of Keskinen ("Hard ASH: Sparsity and the right optimizer
    make a continual learner", arXiv:2404.17651, 2024; that paper's exact Hard ASH formula was not
    checked here). For Gaussian pre-activations about a share 1 − Φ(z) of each row stays
    (z = 1.2816: 10%). Kept entries
    pass unchanged (gradient 1); dropped ones are 0 with gradient 0; no gradient flows through μ and σ
    (the step is flat almost everywhere). Rows are (…, width): (n, width) batches and an ensemble's
    (members, n, width) alike."""
    stats = x.detach()
    threshold = stats.mean(-1, keepdim=True) + z * stats.std(-1, correction=0, keepdim=True)
    return x * (x >= threshold)


class HardASH(nn.Module):
    """``hard_ash(x, z)`` as a module; ``keep`` instead of ``z`` sets z = Φ⁻¹(1 − keep), the z-score
    that keeps a share ``keep`` of a row of Gaussian pre-activations."""

    def __init__(self, z: float | None = None, *, keep: float | None = None):
        super().__init__()
        if z is not None and keep is not None:
            raise ValueError("give z or keep, not both")
        if keep is not None:
            if not 0 < keep < 1:
                raise ValueError(f"keep must be in (0, 1), got {keep}")
            z = NormalDist().inv_cdf(1 - keep)
        self.z = HARD_ASH_Z if z is None else float(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return hard_ash(x, self.z)

    def extra_repr(self) -> str:
        return f"z={self.z}"


class _SigmoidTanh(torch.autograd.Function):
    """tanh(x) = 2·σ(2x) − 1, with the backward 1 − tanh² from the saved output.

    torch's CPU tanh is ~6× slower than its sigmoid (Sleef's 1-ulp tanh; 170 µs vs 28 µs for a
    2×128×256 tensor on one AVX-512 core) and the first layer of every Continual World network is a
    tanh, five of them per SAC update. The identity is exact; in fp32 it differs from ``torch.tanh`` by
    at most 2e-7 in absolute terms (tests/test_sac.py). ``generate_vmap_rule`` keeps it usable under
    ``torch.func`` (EWC/MAS importances)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return x.mul(2).sigmoid_().mul_(2).sub_(1)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return torch.addcmul(grad, grad * y, y, value=-1)


def fast_tanh(x: torch.Tensor) -> torch.Tensor:
    """``torch.tanh`` computed as 2·σ(2x) − 1 (see ``_SigmoidTanh``); same values to 2e-7, faster on CPU.

    Inside a ``torch.compile`` graph (SAC's ``compile``) it is a plain ``torch.tanh``: inductor fuses that
    into its neighbours anyway, and torch 2.11's AOTAutograd (CPU and CUDA; 2.13 is fine) returned zero
    gradients through ``_SigmoidTanh``'s in-place forward, so for every parameter before it (found by
    tests/test_sac.py's CUDA-graph test on an H100)."""
    if torch.compiler.is_compiling():
        return torch.tanh(x)
    return _SigmoidTanh.apply(x)


class Tanh(nn.Tanh):
    """``nn.Tanh`` through ``fast_tanh`` (an ``nn.Tanh`` subclass, so hooks and type checks still find it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_tanh(x)


def cw_mlp(in_dim: int, hidden_sizes: tuple[int, ...], *, norm_all: bool = False,
           activation: str = "leaky_relu", body: str = "cw", linear: LinearFactory | None = None,
           norm_eps: float = CW_LAYER_NORM_EPS) -> nn.Sequential:
    """Continual World's body: Linear→LayerNorm→tanh, then Linear→LeakyReLU for each further layer.

    Matches ``continualworld/sac/models.py`` (``mlp`` with ``use_layer_norm=True``); LeakyReLU keeps
    TF's default slope 0.2 (``tf.keras.layers.LeakyReLU`` alpha), not torch's 0.01. ``norm_all``
    puts a LayerNorm before every nonlinearity (what Normalize-and-Project needs); ``activation="relu"``
    uses ReLU after the first layer (as the critics of Ma et al.'s Adaptive Replay Ratio), ``"elephant"``
    and ``"hard_ash"`` the sparse ``Elephant`` and ``HardASH`` (their defaults). ``body="mlp"``
    drops the first layer's LayerNorm and tanh: Linear→activation throughout (see ``BODIES``).
    ``linear(in, out, fp32)`` builds each linear layer (default ``FP32Linear`` for the input layer,
    ``nn.Linear`` after it; VCL passes Bayesian layers). The first layer's LayerNorm has Keras' ε
    ``norm_eps`` (CW: 1e-3); the further ones of ``norm_all`` torch's 1e-5.
    """
    _check_activation(activation)
    cw_input = body == "cw"
    linear = linear or _standard_linear
    layers: list[nn.Module] = []
    prev = in_dim
    for i, width in enumerate(hidden_sizes):
        layers.append(linear(prev, width, i == 0))
        if (i == 0 and cw_input) or norm_all:
            layers.append(nn.LayerNorm(width, eps=norm_eps if i == 0 and cw_input else TORCH_LAYER_NORM_EPS))
        layers.append(Tanh() if i == 0 and cw_input else _hidden_activation(activation))
        prev = width
    return nn.Sequential(*layers)


def in_fp32(layer: Callable[..., torch.Tensor], h: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
    """``layer(h, *params)`` in fp32 even inside a bf16 autocast region (SAC's ``precision=bf16``).

    Used for a network's input and output layers, a small share of its FLOPs. In bf16 an observation
    keeps 3 significant digits (a gripper 1 cm from its target at 0.8 m is rounded to ±3 mm), a
    Q-value of 300 is rounded to a step of 2 and log σ to 3 digits, coarser than the differences
    that SAC fits. So only the hidden-to-hidden matmuls run in bf16."""
    if not torch.is_autocast_enabled(h.device.type):
        return layer(h, *params)
    with torch.autocast(h.device.type, enabled=False):
        return layer(h.float(), *params)


class FP32Linear(nn.Linear):
    """``nn.Linear`` that stays fp32 under autocast (see ``in_fp32``): the input layer of a CW body."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return in_fp32(F.linear, x, self.weight, self.bias)


# builds a linear layer: (in_features, out_features, fp32) -> module; fp32: stays fp32 under autocast
LinearFactory = Callable[[int, int, bool], nn.Module]


def _standard_linear(in_features: int, out_features: int, fp32: bool) -> nn.Module:
    return FP32Linear(in_features, out_features) if fp32 else nn.Linear(in_features, out_features)


class MultiHead(nn.Module):
    """``num_heads`` linear heads of ``out_dim`` outputs in one matmul; each row picks its head.

    With ``num_heads == 1`` it is a plain linear layer (single-head ablation). ``linear`` replaces the
    ``nn.Linear`` by a layer whose ``sample()`` draws (weight, bias) for each forward pass (VCL).
    """

    def __init__(self, in_dim: int, out_dim: int, num_heads: int, linear: LinearFactory | None = None):
        super().__init__()
        self.out_dim, self.num_heads = out_dim, num_heads
        self.linear = (linear or _standard_linear)(in_dim, out_dim * num_heads, False)

    def forward(self, features: torch.Tensor, head: int | torch.Tensor) -> torch.Tensor:
        """``head`` is one head for the whole batch (an int: only its slice of the weights is used)
        or one per row (an (n,) long tensor)."""
        if isinstance(self.linear, nn.Linear):
            weight, bias = self.linear.weight, self.linear.bias
        else:
            weight, bias = self.linear.sample()
        if self.num_heads == 1:
            return in_fp32(F.linear, features, weight, bias)
        if isinstance(head, int):
            rows = slice(head * self.out_dim, (head + 1) * self.out_dim)
            return in_fp32(F.linear, features, weight[rows], bias[rows])
        out = in_fp32(F.linear, features, weight, bias).view(features.shape[0], self.num_heads, self.out_dim)
        return out[torch.arange(features.shape[0], device=features.device), head]


def _batched_linear(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """One linear layer per ensemble member: (members, n, in) @ (members, in, out) + (members, 1, out)."""
    if weight.shape[-1] == 1:
        # A critic's Q output (one head's column). MKL's batched matmul takes ~70 µs for one output
        # column on CPU (a 2-D mm: 5 µs); multiply-and-sum does the layer's forward and backward in
        # under half the time of baddbmm's (scripts/bench_sac.py, 2×128×256 on one core).
        return torch.sum(h * weight.transpose(-1, -2), -1, keepdim=True) + bias
    return torch.baddbmm(bias, h, weight)


class EnsembleCWMLP(nn.Module):
    """``members`` independent Continual World (or plain, ``body="mlp"``) bodies (see ``cw_mlp``), each with its own
    ``MultiHead`` output, evaluated together with batched matmuls.

    SAC's twin critics (and their targets) are two such members: one ``baddbmm`` per layer instead
    of two ``Linear`` calls halves the kernel and autograd-node count of the critic, the largest
    share of an update on CPU (scripts/bench_sac.py). Initialisation matches ``nn.Linear``
    (U(±1/√fan_in) for weights and biases), so a member is distributed like a ``cw_mlp``.
    """

    def __init__(self, members: int, in_dim: int, hidden_sizes: tuple[int, ...], out_dim: int, num_heads: int,
                 *, norm_all: bool = False, activation: str = "leaky_relu", body: str = "cw",
                 norm_eps: float = CW_LAYER_NORM_EPS):
        super().__init__()
        _check_activation(activation)
        self.members, self.out_dim, self.num_heads = members, out_dim, num_heads
        # the first layer's LayerNorm ε: Keras' for CW's body (as ``cw_mlp``), torch's for NaP's on a plain body
        self.norm_eps = norm_eps if body == "cw" else TORCH_LAYER_NORM_EPS
        self.activation, self.cw_input = activation, body == "cw"
        sizes = [in_dim, *hidden_sizes, out_dim * num_heads]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = 1 / fan_in ** 0.5
            self.weights.append(nn.Parameter(torch.empty(members, fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(members, 1, fan_out).uniform_(-bound, bound)))
        width = hidden_sizes[0]
        if self.cw_input or norm_all:  # the first layer's LayerNorm
            self.norm_weight = nn.Parameter(torch.ones(members, 1, width))
            self.norm_bias = nn.Parameter(torch.zeros(members, 1, width))
        else:
            self.norm_weight = self.norm_bias = None
        # norm_all: a LayerNorm before every further nonlinearity too (cw_mlp's norm_all)
        self.extra_norm_weights = nn.ParameterList(
            [nn.Parameter(torch.ones(members, 1, w)) for w in hidden_sizes[1:]] if norm_all else [])
        self.extra_norm_biases = nn.ParameterList(
            [nn.Parameter(torch.zeros(members, 1, w)) for w in hidden_sizes[1:]] if norm_all else [])

    def forward(self, x: torch.Tensor, head: int | torch.Tensor, *, detach_params: bool = False,
                record: Callable[[str, torch.Tensor], None] | None = None) -> torch.Tensor:
        """(members, n, out_dim) outputs for inputs ``x`` of shape (n, in_dim), shared by all members, or of shape
        (members, n, in_dim), each member's own (an ensemble trained on independent batches: agents/dqn.py).

        ``head`` selects each row's head as in ``MultiHead``. ``detach_params=True`` evaluates with
        the parameters cut from autograd: gradients then reach only the inputs (SAC's actor loss
        flows through the critics without moving them). ``record(layer, h)`` receives each hidden
        layer's activations (members, n, width), e.g. for a plasticity probe."""
        use = (lambda t: t.detach()) if detach_params else (lambda t: t)
        weights, biases = [use(w) for w in self.weights], [use(b) for b in self.biases]
        norm_w, norm_b = (use(self.norm_weight), use(self.norm_bias)) if self.norm_weight is not None else (None, None)
        extra_w, extra_b = [use(w) for w in self.extra_norm_weights], [use(b) for b in self.extra_norm_biases]
        last = len(weights) - 1
        w_out, b_out = weights[last], biases[last]
        if isinstance(head, int) and self.num_heads > 1:
            cols = slice(head * self.out_dim, (head + 1) * self.out_dim)
            w_out, b_out = w_out[..., cols], b_out[..., cols]
        if x.dim() == 2:  # one batch shared by every member; (members, n, in_dim): each member its own rows
            x = x.expand(self.members, *x.shape)
        h = in_fp32(_batched_linear, x, weights[0], biases[0])
        if norm_w is not None:
            h = torch.addcmul(norm_b, F.layer_norm(h, h.shape[-1:], eps=self.norm_eps), norm_w)
        h = fast_tanh(h) if self.cw_input else self._activation_(h)
        if record is not None:
            record("0", h)
        for layer, (w, b) in enumerate(zip(weights[1:last], biases[1:last]), start=1):
            h = torch.baddbmm(b, h, w)
            if extra_w:
                h = torch.addcmul(extra_b[layer - 1], F.layer_norm(h, h.shape[-1:]), extra_w[layer - 1])
            h = self._activation_(h)
            if record is not None:
                record(str(layer), h)
        out = in_fp32(_batched_linear, h, w_out, b_out)
        if isinstance(head, int) or self.num_heads == 1:
            return out
        out = out.view(self.members, x.shape[1], self.num_heads, self.out_dim)
        return out[:, torch.arange(x.shape[1], device=x.device), head]

    def output_parameter_names(self) -> tuple[str, str]:
        """Names of the output layer's (every head's) weight and bias, as ``named_parameters`` gives them."""
        last = len(self.weights) - 1
        return f"weights.{last}", f"biases.{last}"

    def _activation_(self, h: torch.Tensor) -> torch.Tensor:
        # in place on a matmul's (or LayerNorm's) output, which its backward does not need; elephant and
        # hard_ash (defaults as in ``cw_mlp``) are out of place, their backward needs h
        if self.activation == "leaky_relu":
            return F.leaky_relu_(h, LEAKY_SLOPE)
        if self.activation == "relu":
            return F.relu_(h)
        return elephant(h) if self.activation == "elephant" else hard_ash(h)


# the nn.Module classes used as hidden nonlinearities (``Tanh`` is an ``nn.Tanh``): find a body's
# activation layers with ``isinstance(m, ACTIVATION_MODULES)``
ACTIVATION_MODULES = (nn.Tanh, nn.LeakyReLU, nn.ReLU, Elephant, HardASH)

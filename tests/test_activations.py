"""Sparse hidden activations from the continual-learning literature (crl.nets): Elephant (Lan & Mahmood
2023) and Hard ASH (the hard-threshold Adaptive SwisH; Lee et al. 2022, Keskinen 2024)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import jacrev, vmap

from crl.nets import (ACTIVATION_MODULES, HARD_ASH_Z, HIDDEN_ACTIVATIONS, Elephant, EnsembleCWMLP, HardASH,
                      MultiHead, cw_activations, cw_mlp, elephant, hard_ash)

NEW = ("elephant", "hard_ash")


def _grad(f, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(x).sum(), x)
    return g


# -- Elephant ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("a,d", [(1.0, 4.0), (2.0, 4.0), (0.5, 2.0), (1.0, 8.0)])
def test_elephant_is_a_bell_one_at_zero_half_at_a(a, d):
    x = torch.linspace(0, 50 * a, 5001, dtype=torch.float64)
    f = elephant(x, a, d)
    assert f[0] == 1.0
    assert elephant(torch.tensor([a, -a], dtype=torch.float64), a, d).tolist() == pytest.approx([0.5, 0.5])
    assert torch.equal(elephant(-x, a, d), f)  # symmetric
    assert torch.all(f[1:] <= f[:-1])  # decreasing in |x|
    away = x[1:] >= 0.1 * a  # strictly, where f is not 1 to float64 precision (|x/a|^d ≥ 1e-8)
    assert torch.all(f[1:][away] < f[:-1][away]) and torch.all(_grad(lambda t: elephant(t, a, d), x[1:]) < 0)
    assert f[-1] < 1e-3 and float(f[-1]) == pytest.approx(50.0 ** -d, rel=1e-3)  # → 0 like |x/a|^-d
    assert torch.all(f > 0)
    assert torch.allclose(Elephant(a, d)(x), f)


def test_elephant_defaults_and_formula():
    x = torch.randn(1000, dtype=torch.float64) * 3
    assert torch.allclose(elephant(x), 1 / (1 + x.abs() ** 4))
    assert torch.allclose(Elephant()(x), 1 / (1 + x.abs() ** 4))
    # the gradient −(d/a)·sign(x)·|x/a|^(d−1)·f² (a=1.5, d=4)
    f = elephant(x, 1.5, 4.0)
    assert torch.allclose(_grad(lambda t: elephant(t, 1.5, 4.0), x),
                          -(4 / 1.5) * x.sign() * (x / 1.5).abs() ** 3 * f ** 2)


def _fraction_above(values: torch.Tensor, eps: float) -> float:
    return float((values.abs() > eps).double().mean())


def test_elephant_has_sparse_representation_and_sparse_gradient():
    """The paper's property: elephant is sparse in value *and* in gradient over a wide input range; ReLU
    and LeakyReLU have dense gradients (slope 1 on a half-line or everywhere), tanh a dense value."""
    torch.manual_seed(0)
    x = torch.rand(20000, dtype=torch.float64) * 20 - 10  # U[-10, 10]
    eps = 0.01
    fractions = {}
    for name, f in [("elephant", elephant), ("relu", torch.relu), ("leaky_relu", nn.LeakyReLU(0.2)),
                    ("tanh", torch.tanh)]:
        fractions[name] = (_fraction_above(f(x), eps), _fraction_above(_grad(f, x), eps))
    value, grad = fractions["elephant"]
    assert value < 0.35 and grad < 0.35
    assert grad < 0.7 * fractions["relu"][1] and grad < 0.4 * fractions["leaky_relu"][1]
    for name in ("relu", "leaky_relu", "tanh"):  # each of these is dense in value or in gradient
        assert max(fractions[name]) >= 0.49, name


def test_elephant_degree_sets_sharpness():
    """Larger d: flatter top, steeper and narrower sides, a smaller region of non-negligible gradient."""
    x = torch.linspace(-10, 10, 200001, dtype=torch.float64)
    widths, supports, peaks = [], [], []
    for d in (2.0, 4.0, 8.0):
        f, g = elephant(x, 1.0, d), _grad(lambda t: elephant(t, 1.0, d), x)
        transition = (f > 0.1) & (f < 0.9)  # where the bell falls from 0.9 to 0.1
        widths.append(float(transition.double().mean()))
        supports.append(_fraction_above(g, 0.01))
        peaks.append(float(g.abs().max()))
        assert float(elephant(torch.tensor(0.5, dtype=torch.float64), 1.0, d)) == pytest.approx(1 / (1 + 0.5 ** d))
    assert widths[0] > widths[1] > widths[2]
    assert supports[0] > supports[1] > supports[2]
    assert peaks[0] < peaks[1] < peaks[2]


def test_elephant_update_on_one_input_barely_moves_the_function_elsewhere():
    """Sparse, local gradients: one SGD step on the output at x0 changes a wide 1-hidden-layer net far
    from x0 much less (relative to the change at x0) with elephant units than with ReLU or tanh units."""

    def relative_interference(act: nn.Module, seed: int) -> float:
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(1, 512), act, nn.Linear(512, 1, bias=False))
        with torch.no_grad():  # pre-activations spread over the inputs' range, as after training
            net[0].weight.normal_(0, 4)
            net[0].bias.uniform_(-8, 8)
        x0 = torch.zeros(1, 1)
        far = torch.linspace(-2, 2, 401)[:, None]
        far = far[far[:, 0].abs() > 1]
        with torch.no_grad():
            before0, before_far = net(x0), net(far)
        net(x0).sum().backward()
        with torch.no_grad():
            for p in net.parameters():
                p -= 1e-3 * p.grad
            return float((net(far) - before_far).abs().mean() / (net(x0) - before0).abs().squeeze())

    def mean_over_seeds(make) -> float:
        return sum(relative_interference(make(), s) for s in range(5)) / 5

    elephant_i, relu_i, tanh_i = mean_over_seeds(Elephant), mean_over_seeds(nn.ReLU), mean_over_seeds(nn.Tanh)
    assert elephant_i < 0.5 * relu_i and elephant_i < 0.7 * tanh_i


# -- Hard ASH ------------------------------------------------------------------------------------------

def _reference_mask(x: torch.Tensor, z: float) -> torch.Tensor:
    """x ≥ μ + z·σ with each row's (population) mean and std, in float64, one row at a time."""
    rows = x.double().reshape(-1, x.shape[-1])
    masks = [row >= row.mean() + z * row.std(unbiased=False) for row in rows]
    return torch.stack(masks).reshape(x.shape)


def test_hard_ash_keeps_about_the_top_ten_percent_of_each_row():
    torch.manual_seed(0)
    x = torch.randn(512, 256)
    kept = (hard_ash(x) != 0).double().mean(-1)  # share of each row that stays
    assert float(kept.mean()) == pytest.approx(0.10, abs=0.01)
    assert float(kept.min()) > 0.03 and float(kept.max()) < 0.2
    assert HARD_ASH_Z == pytest.approx(1.2816, abs=1e-4)


@pytest.mark.parametrize("keep", [0.05, 0.25, 0.5])
def test_hard_ash_keep_sets_the_share(keep):
    torch.manual_seed(1)
    x = torch.randn(512, 256)
    kept = (HardASH(keep=keep)(x) != 0).double().mean()
    assert float(kept) == pytest.approx(keep, abs=0.02)
    with pytest.raises(ValueError):
        HardASH(1.0, keep=keep)


def test_hard_ash_passes_kept_values_unchanged_and_zeroes_the_rest():
    torch.manual_seed(2)
    x = torch.randn(64, 256) * 3 + 1
    for z in (HARD_ASH_Z, 0.0, 2.0):
        out = HardASH(z)(x)
        mask = _reference_mask(x, z)
        assert torch.equal(out[mask], x[mask])
        assert torch.all(out[~mask] == 0)
        assert mask.any(-1).all()  # something survives in every row


def test_hard_ash_normalises_each_row_of_a_members_batch_alone():
    """(members, n, width) inputs: μ and σ over the last dimension only. Rows with very different
    offsets and scales each keep ~10%; statistics over any other dimension would keep all or none."""
    torch.manual_seed(3)
    x = torch.randn(2, 64, 256)
    offsets = torch.tensor([-50.0, 50.0])[:, None, None] + torch.linspace(-20, 20, 64)[None, :, None]
    scales = torch.tensor([0.1, 10.0])[:, None, None] * torch.linspace(0.5, 2, 64)[None, :, None]
    x = x * scales + offsets
    out = hard_ash(x)
    assert out.shape == x.shape
    mask = _reference_mask(x, HARD_ASH_Z)
    assert torch.equal(out != 0, mask)
    kept = mask.double().mean(-1)
    assert float(kept.min()) > 0.03 and float(kept.max()) < 0.2
    for m in range(2):  # the same as each member's (n, width) batch on its own
        assert torch.equal(hard_ash(x[m]), out[m])


def test_hard_ash_gradient_flows_only_through_kept_units():
    torch.manual_seed(4)
    x = torch.randn(3, 16, 128, requires_grad=True)
    upstream = torch.randn(3, 16, 128)
    out = hard_ash(x)
    (g,) = torch.autograd.grad((out * upstream).sum(), x)
    mask = _reference_mask(x.detach(), HARD_ASH_Z)
    assert torch.equal(g, upstream * mask)  # 1 through kept entries, nothing through μ, σ or dropped ones


# -- both, in the networks -----------------------------------------------------------------------------

def test_new_activations_are_registered():
    assert set(NEW) <= set(HIDDEN_ACTIVATIONS)
    assert {"leaky_relu", "relu"} <= set(HIDDEN_ACTIVATIONS)
    assert {Elephant, HardASH, nn.Tanh, nn.LeakyReLU, nn.ReLU} <= set(ACTIVATION_MODULES)
    with pytest.raises(ValueError):
        cw_mlp(3, (8,), activation="gelu")
    with pytest.raises(ValueError):
        EnsembleCWMLP(2, 3, (8,), 1, 1, activation="gelu")


@pytest.mark.parametrize("body", ["cw", "mlp"])
@pytest.mark.parametrize("activation", NEW)
def test_body_uses_the_activation_and_probes_find_it(activation, body):
    sizes = (16, 16, 16)
    net = cw_mlp(7, sizes, activation=activation, body=body)
    kind = Elephant if activation == "elephant" else HardASH
    found = [m for m in net if isinstance(m, ACTIVATION_MODULES)]
    assert len(found) == len(sizes)
    assert isinstance(found[0], nn.Tanh if body == "cw" else kind)  # crl.nets.Tanh is an nn.Tanh
    assert all(type(m) is kind for m in found[1:])
    names = cw_activations(sizes, activation, body)
    assert list(names.values()) == (["tanh"] if body == "cw" else [activation]) + [activation] * (len(sizes) - 1)


@pytest.mark.parametrize("norm_all", [False, True])
@pytest.mark.parametrize("body", ["cw", "mlp"])
@pytest.mark.parametrize("activation", NEW)
def test_sac_shaped_actor_and_critics_train(activation, body, norm_all):
    """An SAC-shaped actor (body + (μ, log σ) heads) and twin critics built with the activation run
    forward and backward with finite outputs and gradients, and an Adam step changes the outputs."""
    torch.manual_seed(0)
    obs_dim, act_dim, heads, sizes = 11, 3, 2, (64, 64, 64)
    body_net = cw_mlp(obs_dim, sizes, activation=activation, body=body, norm_all=norm_all)
    head = MultiHead(sizes[-1], 2 * act_dim, heads)
    critics = EnsembleCWMLP(2, obs_dim + act_dim, sizes, 1, heads, activation=activation, body=body,
                            norm_all=norm_all)
    params = [*body_net.parameters(), *head.parameters(), *critics.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    obs, task = torch.randn(32, obs_dim), torch.randint(0, heads, (32,))
    recorded = {}
    for _ in range(2):
        mu, log_std = head(body_net(obs), task).chunk(2, -1)
        action = torch.tanh(mu + log_std.clamp(-20, 2).exp() * torch.randn_like(mu))
        q = critics(torch.cat([obs, action], -1), task, record=lambda layer, h: recorded.__setitem__(layer, h))
        assert q.shape == (2, 32, 1) and torch.isfinite(q).all() and torch.isfinite(mu).all()
        loss = (q - 1).pow(2).mean() - q.detach().mean() + mu.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
        assert any(float(p.grad.abs().sum()) > 0 for p in body_net.parameters())
        opt.step()
    assert set(recorded) == {"0", "1", "2"} and all(h.shape == (2, 32, 64) for h in recorded.values())
    if activation == "hard_ash":  # the critics' hidden layers after the first are sparse
        assert float((recorded["2"] != 0).double().mean()) < 0.2


@pytest.mark.parametrize("activation", NEW)
def test_per_sample_jacobians_under_torch_func(activation):
    """EWC/MAS importances take per-sample Jacobians with vmap(jacrev): the activations must work there."""
    torch.manual_seed(0)
    net = cw_mlp(5, (32, 32), activation=activation)
    params = {k: v.detach() for k, v in net.named_parameters()}

    def single(p, x):
        return torch.func.functional_call(net, p, (x.unsqueeze(0),)).sum()

    x = torch.randn(4, 5)
    jac = vmap(jacrev(single), in_dims=(None, 0))(params, x)
    for i in range(4):
        net.zero_grad()
        net(x[i:i + 1]).sum().backward()
        for k, p in net.named_parameters():
            assert torch.allclose(jac[k][i], p.grad, atol=1e-6), k

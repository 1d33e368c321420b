"""Plasticity metrics against hand-computed values on small fixed tensors and networks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from crl.plasticity import (ProbeConfig, PlasticityProbe, dormant_ratio, effective_rank, feature_rank_eps,
                            fraction_active, grad_norm, srank_delta, stable_rank_classic, weight_change,
                            weight_magnitude)


def diag_features(singular: list[float], n: int = 8) -> torch.Tensor:
    """An n × d matrix whose singular values are exactly ``singular``."""
    d = len(singular)
    phi = torch.zeros(n, d)
    phi[range(d), range(d)] = torch.tensor(singular)
    return phi


def test_fau_on_a_network_with_known_dead_units():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.copy_(torch.tensor([1.0, -1.0, 2.0, -3.0]))  # units 1 and 3 dead for every input
    h = net(torch.randn(10, 3))
    assert fraction_active([h]) == 0.5
    # pooled over layers by entries (Ma et al.'s code), not a mean of per-layer fractions
    other = torch.tensor([[1.0, 1.0], [1.0, 1.0]])  # 4 entries, all active
    assert fraction_active([h, other]) == pytest.approx((20 + 4) / (40 + 4))
    assert fraction_active([torch.tensor([0.995, -0.2, 0.5, -0.999])], "tanh") == 0.5


def test_dormant_ratio_global_and_per_layer():
    a = torch.tensor([[1.0, 0.0, 1.0, 0.01]])  # mean|h| = 0.5025; scores 1.99, 0, 1.99, 0.0199
    b = torch.tensor([[1.0, 1.0]])
    assert dormant_ratio([a], tau=0.025) == 0.5
    assert dormant_ratio([a], tau=0.0) == 0.25  # τ = 0: only exactly-zero scores
    assert dormant_ratio([a, b], tau=0.025, averaging="global") == pytest.approx(2 / 6)
    assert dormant_ratio([a, b], tau=0.025, averaging="per_layer") == pytest.approx((0.5 + 0.0) / 2)


def test_ranks_on_matrices_of_known_spectrum():
    phi = diag_features([4.0, 3.0, 2.0, 1.0])  # Σσ = 10
    assert srank_delta(phi, 0.01) == 4  # cumulative 0.4, 0.7, 0.9, 1.0: needs all four to reach 0.99
    assert srank_delta(phi, 0.15) == 3  # 0.9 ≥ 0.85
    p = torch.tensor([0.4, 0.3, 0.2, 0.1])
    assert effective_rank(phi) == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-5)
    assert stable_rank_classic(phi) == pytest.approx((16 + 9 + 4 + 1) / 16)
    # feature rank: σ/√n with n = 8 rows → 1.414, 1.06, 0.707, 0.354; ε = 0.5 keeps three
    assert feature_rank_eps(phi, eps=0.5) == 3
    assert srank_delta(diag_features([1.0, 0.0, 0.0])) == 1 and effective_rank(diag_features([2.0, 2.0])) == \
        pytest.approx(2.0)


def test_weight_and_gradient_metrics():
    w = torch.tensor([[1.0, -3.0], [0.0, 2.0]])
    assert weight_magnitude(w) == 1.5
    assert weight_change(w, torch.zeros(2, 2)) == pytest.approx(math.sqrt(14 / 4))
    p1, p2 = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(1))
    p1.grad, p2.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])
    assert grad_norm([p1, p2]) == pytest.approx(5.0)


def test_probe_records_only_when_armed_and_names_metrics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1))
    probe = PlasticityProbe("critic", net, ProbeConfig(), {"0": "relu", "1": "relu"}, hooks={"0": net[1], "1": net[3]})
    net(torch.randn(4, 3))
    assert probe.captured == {}  # not armed: no capture, no cost
    probe.arm()
    x = torch.randn(32, 3)
    net(x).sum().backward()
    net(torch.randn(5, 3))  # a later pass does not overwrite the training batch
    stats = probe.collect()
    assert stats["plasticity/critic/0/fau"] == fraction_active([net[1](net[0](x))])
    for key in ("plasticity/critic/all/fau", "plasticity/critic/all/dormant_ratio", "plasticity/critic/last/srank_delta",
                "plasticity/critic/0.weight/weight_change", "plasticity/critic/all/grad_norm"):
        assert key in stats, key
    assert stats["plasticity/critic/0.weight/weight_change"] == 0.0 and stats["plasticity/critic/all/grad_norm"] > 0
    assert not probe.armed and set(probe.captured) == {"0", "1"}  # kept until the next arm(): ReDo reads it


def test_recycle_units_keeps_the_output_and_revives_dead_units():
    from crl.plasticity import dormant_mask, recycle_units

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():
        net[0].weight[[1, 4]] = 0.0
        net[0].bias[[1, 4]] = -1.0  # units 1 and 4: dead
    opt = torch.optim.Adam(net.parameters())
    x = torch.randn(64, 3)
    net(x).sum().backward()
    opt.step()
    before = net(x).detach()
    h = net[1](net[0](x))
    dead = dormant_mask(h, 0.0)
    assert dead.tolist() == [False, True, False, False, True, False]
    assert recycle_units([(net[0].weight, net[0].bias, 0, net[2].weight, 1)], [dead], opt) == 2
    assert torch.allclose(net(x), before)  # zero outgoing weights: the function is unchanged
    assert torch.count_nonzero(net[0].weight[[1, 4]]) == 6 and torch.count_nonzero(net[2].weight[:, [1, 4]]) == 0
    assert net[0].bias[[1, 4]].tolist() == [0.0, 0.0]  # Dopamine's ReDo: a recycled unit's bias is zeroed
    assert torch.count_nonzero(opt.state[net[2].weight]["exp_avg"][:, [1, 4]]) == 0  # fresh moments
    assert torch.count_nonzero(opt.state[net[2].weight]["exp_avg"][:, [0, 2]]) > 0  # others kept


def test_recycle_units_on_an_ensemble_scores_each_member_alone():
    from crl.nets import EnsembleCWMLP
    from crl.plasticity import dormant_mask, recycle_units

    torch.manual_seed(0)
    ens = EnsembleCWMLP(2, 5, (8, 8), 1, 1)
    with torch.no_grad():  # kill unit 3 of the second member's second hidden layer (no normalisation follows)
        ens.weights[1][1, :, 3] = 0.0
        ens.biases[1][1, 0, 3] = 0.0
    x = torch.randn(32, 5)
    before = ens(x, 0).detach()
    h = []
    ens(x, 0, record=lambda layer, a: h.append(a))
    mask = torch.stack([dormant_mask(member, 0.0) for member in h[1]])
    assert mask.tolist() == [[False] * 8, [False] * 3 + [True] + [False] * 4]
    w_in_before = ens.weights[1].detach().clone()
    recycle_units([(ens.weights[1], ens.biases[1], -1, ens.weights[2], -2)], [mask])
    assert torch.allclose(ens(x, 0), before, atol=1e-6)
    assert torch.equal(ens.weights[1][0], w_in_before[0])  # the first member untouched
    assert not torch.equal(ens.weights[1][1, :, 3], w_in_before[1, :, 3]) and torch.all(ens.weights[2][1, 3] == 0)


def test_probe_of_an_ensemble_measures_each_member_and_logs_their_mean():
    """The twin critics' capture is (2, n, width): each member is scored on its own (critic0, critic1), and
    critic carries their mean. Scoring the flattened pair as one network hid 6 dead units of one critic."""
    from crl.nets import EnsembleCWMLP

    torch.manual_seed(0)
    ens = EnsembleCWMLP(2, 5, (32, 32), 1, 1, activation="relu", body="mlp")
    with torch.no_grad():  # 6 dead units in the first member's second hidden layer, none elsewhere in it
        ens.biases[1].fill_(1.0)
        ens.weights[1][0, :, :6] = 0.0
        ens.biases[1][0, 0, :6] = -1.0
    probe = PlasticityProbe("critic", ens, ProbeConfig(dormant_tau=0.0), {"0": "relu", "1": "relu"}, members=2)
    probe.arm()
    ens(torch.randn(64, 5), 0, record=probe.record).sum().backward()
    stats = probe.collect()
    h = probe.captured["1"]
    assert stats["plasticity/critic0/1/dormant_ratio"] == dormant_ratio([h[0]], tau=0.0) == 6 / 32
    assert stats["plasticity/critic1/1/dormant_ratio"] == dormant_ratio([h[1]], tau=0.0) == 0.0
    assert stats["plasticity/critic/1/dormant_ratio"] == 3 / 32  # the mean of the two
    assert dormant_ratio([h.reshape(-1, 32)], tau=0.0) == 0.0  # what pooling the members logged
    for metric in ("last/srank_delta", "last/effective_rank", "all/fau", "all/grad_norm", "weights.1/weight_change"):
        member = [stats[f"plasticity/critic{i}/{metric}"] for i in (0, 1)]
        assert stats[f"plasticity/critic/{metric}"] == pytest.approx(sum(member) / 2), metric
    assert stats["plasticity/critic0/last/srank_delta"] == srank_delta(h[0])
    assert stats["plasticity/critic0/all/fau"] == fraction_active([probe.captured["0"][0], h[0]])
    assert stats["plasticity/critic/all/fau"] == pytest.approx(probe.fau().item())  # pooled = mean: equal sizes
    assert "plasticity/critic0/biases.1/weight_magnitude" not in stats  # a member's biases are vectors

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
    assert not probe.armed and probe.captured == {}

"""Plasticity probes, Adaptive Replay Ratio and ReDo against the reference code, on identical weights,
inputs and activations (issue 24). The reference formulas are written here in torch from:
- Ma et al.'s ARR (Guozheng-Ma/Adaptive-Replay-Ratio @a1539c6): drqv2_adapt_rr.py (Critic.forward_with_FAU,
  the critic FAU accumulator) and train_adapt_rr.py (Workspace.train: when the accumulator is reset and read);
- Plasticine (RLE-Foundation/Plasticine @007ddf2): plasticine_metrics/units.py (compute_dormant_units,
  compute_active_units) and plasticine_metrics/rank.py (compute_stable_rank, compute_effective_rank);
- Dopamine's ReDo (google/dopamine, dopamine/labs/redo/weight_recyclers.py): estimate_neuron_score,
  log_dead_neurons_count and NeuronRecycler.recycle_dead_neurons / create_masks.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from crl.registry import agent_class, make_agent_config
from crl.core import Transitions
from crl.envs import make_sequence
from crl.nets import EnsembleCWMLP
from crl.plasticity import PlasticityProbe, ProbeConfig, recycle_units

OBS, ACT = 39, 4


# -- reference formulas ------------------------------------------------------------------------------

def plasticine_dormant_ratio(model: nn.Module, data: torch.Tensor, tau: float) -> float:
    """Plasticine's compute_dormant_units: per ReLU module, score = mean|h| / (mean score + 1e-9), dormant
    when ≤ τ (isclose to 0 for τ = 0); the unweighted mean of the layers' ratios."""
    activations = {}
    hooks = [m.register_forward_hook(lambda mod, i, o: activations.__setitem__(mod, o.detach()))
             for m in model.modules() if isinstance(m, nn.ReLU)]
    with torch.no_grad():
        model(data)
    for h in hooks:
        h.remove()
    ratios = []
    for module in (m for m in model.modules() if isinstance(m, nn.ReLU)):
        score = activations[module].abs().mean(dim=0)
        normalized = score / (score.mean() + 1e-9)
        mask = normalized <= tau if tau > 0 else torch.isclose(normalized, torch.zeros_like(normalized))
        ratios.append(mask.float().mean())
    return float(torch.stack(ratios).mean())


def dopamine_dead_fraction(layers: list[torch.Tensor], threshold: float) -> float:
    """Dopamine's log_dead_neurons_count: estimate_neuron_score per layer, total dead / total neurons."""
    dead = total = 0
    for h in layers:
        score = h.abs().mean(dim=tuple(range(h.dim() - 1)))
        score = score / (score.mean() + 1e-9)
        dead += int((score <= threshold).sum())
        total += score.numel()
    return dead / total


def plasticine_stable_rank(features: torch.Tensor) -> int:
    assert features.size(0) >= features.size(1)
    s = torch.linalg.svdvals(features)
    return int(((torch.cumsum(s, dim=-1) / s.sum()) < 0.99).sum() + 1)


def plasticine_effective_rank(features: torch.Tensor) -> float:
    s = torch.linalg.svdvals(features)
    p = s / s.abs().sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def ma_q_fau(h_action: torch.Tensor, q1: nn.Sequential, q2: nn.Sequential) -> float:
    """Critic.forward_with_FAU without its trunk: #(h > 0) over the two ReLU layers of Q1 and of Q2,
    over all their entries (the LayerNorm + tanh trunk before them is not counted)."""
    act = total = 0
    for q in (q1, q2):
        h = q[:2](h_action)
        act, total = act + int((h > 0).sum()), total + h.numel()
        h = q[2:4](h)
        act, total = act + int((h > 0).sum()), total + h.numel()
    return act / total


def ma_switch_step(faus: list[float], episode_len: int, check_freq: int, steps: int, phi_gap: float) -> int | None:
    """Workspace.train's loop (train_adapt_rr.py) with DrQ-v2's update_every_steps = 2 at the start: the
    agent step at which the replay ratio goes to 2, or None. ``faus``: the critic FAU of each update."""
    values = iter(faus)
    sum_phi, count, last_average, have_init = 0.0, 0, 0.0, False
    update_every, replay_ratio = 2, 1
    episode, metrics = 0, None
    for step in range(steps):
        if step > 0 and step % episode_len == 0:  # time_step.last()
            episode += 1
            if metrics is not None:
                if episode % check_freq == check_freq - 1:
                    sum_phi, count = 0.0, 0
                if episode % check_freq == 0:
                    average = sum_phi / count
                    if abs(average - last_average) <= phi_gap and update_every == 2:
                        return step
                    last_average, sum_phi, count = average, 0.0, 0
        if step >= 1:  # the seed steps: one, so that updates fall on the same steps as crl's (2, 4, ...)
            for _ in range(replay_ratio):
                metrics = {}
                if step % update_every == 0:  # DrQV2_adapt_rr_Agent.update
                    phi = next(values)
                    sum_phi, count = sum_phi + phi, count + 1
                    if not have_init:
                        last_average, have_init = phi, True
    return None


# -- per-critic dormant ratio, ranks and FAU ---------------------------------------------------------

def member_network(ens: EnsembleCWMLP, i: int) -> nn.Sequential:
    """Member ``i`` of a body="mlp" ReLU ensemble as a standalone nn.Sequential with the same weights."""
    layers = []
    for layer, (w, b) in enumerate(zip(ens.weights, ens.biases)):
        linear = nn.Linear(w.shape[1], w.shape[2])
        with torch.no_grad():
            linear.weight.copy_(w[i].T)
            linear.bias.copy_(b[i, 0])
        layers += [linear] if layer == len(ens.weights) - 1 else [linear, nn.ReLU()]
    return nn.Sequential(*layers)


@pytest.mark.parametrize("tau", [0.0, 0.1])
def test_each_critics_dormant_ratio_and_ranks_equal_the_references_on_that_critic_alone(tau):
    torch.manual_seed(0)
    ens = EnsembleCWMLP(2, 6, (32, 32), 1, 1, activation="relu", body="mlp")
    with torch.no_grad():  # 6 units dead in the first critic's second layer only (the case)
        ens.biases[1].fill_(0.5)
        ens.weights[1][0, :, :6] = 0.0
        ens.biases[1][0, 0, :6] = -1.0
    x = torch.randn(96, 6)
    probe = PlasticityProbe("critic", ens, ProbeConfig(dormant_tau=tau, dormant_averaging="per_layer"),
                            {"0": "relu", "1": "relu"}, members=2)
    probe.arm()
    ens(x, 0, record=probe.record)
    stats = probe.collect()
    per_member = []
    for i in (0, 1):
        net = member_network(ens, i)
        with torch.no_grad():
            assert torch.allclose(net(x).squeeze(-1), ens(x, 0)[i].squeeze(-1), atol=1e-5)
            h0 = net[1](net[0](x))
            h1 = net[3](net[2](h0))
        # per_layer averaging is Plasticine's; each layer's own ratio is Dopamine's global count on one layer
        assert stats[f"plasticity/critic{i}/all/dormant_ratio"] == pytest.approx(plasticine_dormant_ratio(net, x, tau))
        assert stats[f"plasticity/critic{i}/1/dormant_ratio"] == pytest.approx(dopamine_dead_fraction([h1], tau))
        assert stats[f"plasticity/critic{i}/last/srank_delta"] == plasticine_stable_rank(h1)
        assert stats[f"plasticity/critic{i}/last/effective_rank"] == pytest.approx(plasticine_effective_rank(h1), rel=1e-5)
        assert stats[f"plasticity/critic{i}/all/fau"] == pytest.approx(
            1 - float(torch.cat([(h0 == 0).flatten(), (h1 == 0).flatten()]).float().mean()))  # compute_active_units
        per_member.append(dopamine_dead_fraction([h1], tau))
    assert per_member[0] >= 6 / 32 and per_member[1] < per_member[0]
    assert stats["plasticity/critic/1/dormant_ratio"] == pytest.approx(sum(per_member) / 2)


def test_global_dormant_averaging_is_dopamines_count_over_a_critics_layers():
    torch.manual_seed(1)
    ens = EnsembleCWMLP(2, 6, (16, 24), 1, 1, activation="relu", body="mlp")
    with torch.no_grad():
        ens.weights[0][1, :, :5] = 0.0
        ens.biases[0][1, 0, :5] = -1.0
    probe = PlasticityProbe("critic", ens, ProbeConfig(dormant_tau=0.025), {"0": "relu", "1": "relu"}, members=2)
    probe.arm()
    ens(torch.randn(64, 6), 0, record=probe.record)
    stats = probe.collect()
    for i in (0, 1):
        layers = [probe.captured["0"][i], probe.captured["1"][i]]
        assert stats[f"plasticity/critic{i}/all/dormant_ratio"] == pytest.approx(dopamine_dead_fraction(layers, 0.025))
    assert stats["plasticity/critic1/0/dormant_ratio"] >= 5 / 16


# -- ARR: the signal and the window ------------------------------------------------------------------

def make_arr(**overrides):
    torch.manual_seed(0)
    cfg = make_agent_config("arr")
    for key, value in {"hidden_sizes": (32, 32, 32), "batch_size": 64, "start_steps": 0, "update_after": 0,
                       "plasticity_every": 0, **overrides}.items():
        setattr(cfg, key, value)
    agent = agent_class("arr")(OBS, ACT, 1, cfg, torch.device("cpu"))
    agent.begin_task(make_sequence("cw2").tasks[0])
    (rule,) = agent.extensions
    return agent, rule


def transitions(n: int) -> Transitions:
    return Transitions(obs=torch.randn(n, OBS), action=torch.rand(n, ACT) * 2 - 1, reward=torch.randn(n),
                       next_obs=torch.randn(n, OBS), terminated=torch.zeros(n), truncated=torch.zeros(n),
                       task_index=torch.zeros(n, dtype=torch.long))


def test_arr_signal_after_the_trunk_is_mas_critic_fau_on_the_same_activations():
    """CW body with ReLU: Ma's formula counts the ReLU layers of both critics and not the LayerNorm + tanh
    layer; ``fau_layers=after_trunk`` gives exactly that, ``all`` (crl's default) does not."""
    agent, rule = make_arr(activation="relu", fau_layers="after_trunk")
    assert rule.signal_layers == ["1", "2"]
    agent.observe(transitions(64))
    stats = agent.gradient_step()  # one update (update() would run the 32 that 64 steps at RR 0.5 earn)
    captured = agent.probes["critic"].captured  # the update's own activations, (2, 64, 32) per layer
    relu_layers = [captured["1"], captured["2"]]  # Q1's and Q2's two ReLU layers each, as in forward_with_FAU
    ma = sum(int((h > 0).sum()) for h in relu_layers) / sum(h.numel() for h in relu_layers)
    assert stats["arr/critic_fau"].item() == pytest.approx(ma, abs=1e-7)
    with_trunk = agent.probes["critic"].fau().item()  # fau_layers=all: the tanh layer counted too
    assert abs(with_trunk - ma) > 0.01


def test_arr_signal_of_a_relu_mlp_critic_equals_mas_on_the_same_weights():
    """body=mlp: no trunk; Ma's Q1 and Q2 (Linear→ReLU→Linear→ReLU→Linear on the trunk's output and the
    action) copied into crl's twin critics give the same critic FAU with either fau_layers."""
    agent, rule = make_arr(activation="relu", body="mlp", hidden_sizes=(32, 32))
    assert rule.signal_layers is None
    net = agent.critics.net
    q = [member_network(net, i) for i in (0, 1)]
    x = torch.randn(64, OBS + ACT)  # stands for torch.cat([trunk(obs), action]) of Ma's critic
    probe = agent.probes["critic"]
    probe.arm()
    net(x, 0, record=probe.record)
    assert probe.fau().item() == pytest.approx(ma_q_fau(x, *q), abs=1e-7)
    agent, _ = make_arr(activation="relu", body="mlp", hidden_sizes=(32, 32), fau_layers="after_trunk")
    assert agent.extensions[0].signal_layers == ["0", "1"]  # the same layers


def crl_switch_step(faus: list[float], episode_len: int, check_interval: int, steps: int, phi_gap: float) -> int | None:
    """crl's ARR in paper_faithful mode driven one env step at a time with the critic FAU scripted."""
    agent, rule = make_arr(hidden_sizes=(8, 8), batch_size=4, check_interval=check_interval, fau_threshold=phi_gap)
    rule.episode_len = episode_len
    values = iter(faus)
    agent.probes["critic"].fau = lambda layers=None: torch.tensor(next(values), dtype=torch.float64)
    for _ in range(steps):
        agent.observe(transitions(1))
        if rule.switched:
            return rule.switched_at[0][1]
        agent.update()
    return None


def test_arr_paper_faithful_window_counts_the_updates_mas_loop_counts():
    """Episodes of 4 steps, a check every 3 episodes (12 steps), updates at even steps: Ma's accumulator,
    reset at the top of the iteration that starts the last episode, holds the updates at steps 8 and 10
    before the check at 12. A spike at step 8 (the boundary update) must stop the switch there."""
    gap = 0.001
    # update k happens at step 2(k+1): 0.5 at steps 2-6, a spike at 8, 0.5 at 10 → Ma: mean 0.6, no switch at 12
    spike = [0.5, 0.5, 0.5, 0.7, 0.5] + [0.6] * 3 + [0.6, 0.6] + [0.6] * 20
    assert ma_switch_step(spike, 4, 3, 60, gap) == 24
    assert crl_switch_step(spike, 4, 12, 60, gap) == 24
    flat = [0.5] * 40
    assert ma_switch_step(flat, 4, 3, 60, gap) == crl_switch_step(flat, 4, 12, 60, gap) == 12
    generator = torch.Generator().manual_seed(0)
    for _ in range(6):  # random traces on a coarse grid, so that some checks fall within τ
        trace = (torch.randint(0, 3, (80,), generator=generator) * 0.0005 + 0.5).tolist()
        assert crl_switch_step(trace, 4, 12, 100, gap) == ma_switch_step(trace, 4, 3, 100, gap)


# -- ReDo: Dopamine's recycling ------------------------------------------------------------------------

def dopamine_recycle(weights: list[torch.Tensor], biases: list[torch.Tensor], masks: list[torch.Tensor],
                     moments: dict[int, list[torch.Tensor]]) -> None:
    """NeuronRecycler.recycle_dead_neurons on torch (out, in) weights: incoming masks of every layer first
    (re-drawn: marked NaN here, the values are the RNG's), bias of a dead neuron zeroed, then every outgoing
    mask zeroed; the Adam moments of masked kernel entries zeroed (the biases' masks are None: kept)."""
    incoming = [m[:, None].expand_as(w).clone() for m, w in zip(masks, weights)] + [None]
    outgoing = [None] + [m[None, :].expand_as(w).clone() for m, w in zip(masks, weights[1:])]
    for w, b, m, inc in zip(weights, biases, masks, incoming):
        w[inc] = float("nan")
        b[m] = 0.0
    for w, out in zip(weights, outgoing):
        if out is not None:
            w[out] = 0.0
    for k, w in enumerate(weights):
        for mask in (incoming[k], outgoing[k]):
            if mask is not None:
                for moment in moments[k]:
                    moment[mask] = 0.0


def test_redo_recycles_as_dopamines_neuron_recycler():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():  # dead: units 1, 4 of the first layer and unit 2 of the second (1→2 and 4→2 link dead units)
        net[0].weight[[1, 4]] = 0.0
        net[0].bias[[1, 4]] = -1.0
        net[2].weight[2] = 0.0
        net[2].bias[2] = -1.0
    opt = torch.optim.Adam(net.parameters())
    x = torch.randn(64, 5)
    net(x).pow(2).sum().backward()
    opt.step()
    h0 = net[1](net[0](x))
    h1 = net[3](net[2](h0))
    masks = []
    for h in (h0, h1):  # estimate_neuron_score, dead when ≤ 0 (its default threshold)
        score = h.abs().mean(0)
        masks.append(score / (score.mean() + 1e-9) <= 0.0)
    assert masks[0].nonzero().flatten().tolist() == [1, 4] and masks[1].nonzero().flatten().tolist() == [2]

    linears = [net[0], net[2], net[4]]
    expected_w = [m.weight.detach().clone() for m in linears]
    expected_b = [m.bias.detach().clone() for m in linears]
    expected_moments = {k: [opt.state[m.weight][s].clone() for s in ("exp_avg", "exp_avg_sq")]
                        for k, m in enumerate(linears)}
    bias_moments = [opt.state[m.bias]["exp_avg"].clone() for m in linears]
    dopamine_recycle(expected_w, expected_b[:2], masks, expected_moments)

    layers = [(linears[i].weight, linears[i].bias, 0, linears[i + 1].weight, 1) for i in range(2)]
    assert recycle_units(layers, masks, opt) == 3
    for k, m in enumerate(linears):
        redrawn = expected_w[k].isnan()
        assert torch.equal(m.weight[~redrawn], expected_w[k][~redrawn])  # kept and zeroed entries, exactly
        bound = 1 / m.weight.shape[1] ** 0.5
        assert (m.weight[redrawn].abs() <= bound).all() and (m.weight[redrawn] != 0).all()
        assert torch.equal(opt.state[m.weight]["exp_avg"], expected_moments[k][0])
        assert torch.equal(opt.state[m.weight]["exp_avg_sq"], expected_moments[k][1])
        assert torch.equal(opt.state[m.bias]["exp_avg"], bias_moments[k])
    assert torch.equal(net[0].bias, expected_b[0]) and torch.equal(net[2].bias, expected_b[1])
    assert net[2].weight[2, 1] == 0 and net[2].weight[2, 4] == 0  # dead → dead: zeroed after the re-draw

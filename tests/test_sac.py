"""SAC with Continual World's architecture and task-switch protocol."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from crl.registry import agent_class, make_agent_config
from crl.agents.sac import SAC, SACConfig
from crl.core import Transitions
from crl.nets import HIDDEN_ACTIVATIONS, FP32Linear, MultiHead, Tanh, fast_tanh
from crl.envs import make_sequence

OBS, ACT, TASKS = 39, 4, 3


def make_agent(name: str = "sac", **overrides) -> SAC:
    """A small SAC (or a composition onto it: ``sac+redo``) built through the registry."""
    torch.manual_seed(0)
    cfg = make_agent_config(name)
    for key, value in {"hidden_sizes": (32, 32, 32, 32), "batch_size": 16, "start_steps": 20, "update_after": 10,
                       "update_every": 5, **overrides}.items():
        setattr(cfg, key, value)
    return agent_class(name)(OBS, ACT, TASKS, cfg, torch.device("cpu"))


def batch(n: int, task: int) -> Transitions:
    return Transitions(obs=torch.randn(n, OBS), action=torch.rand(n, ACT) * 2 - 1, reward=torch.randn(n),
                       next_obs=torch.randn(n, OBS), terminated=torch.zeros(n), truncated=torch.zeros(n),
                       task_index=torch.full((n,), task))


def test_continual_world_architecture():
    agent = SAC(OBS, ACT, 10, SACConfig(), torch.device("cpu"))
    body = list(agent.actor.body)
    assert [type(m) for m in body[:3]] == [FP32Linear, nn.LayerNorm, Tanh]
    assert [type(m) for m in body[3:]] == [nn.Linear, nn.LeakyReLU] * 3
    assert all(m.out_features == 256 for m in body if isinstance(m, nn.Linear))
    assert body[0].in_features == OBS  # hide_task_id: the body never sees the one-hot
    assert agent.actor.head.linear.out_features == 2 * ACT * 10  # one (μ, log σ) head per position
    critic = agent.critics.net  # twin critics: a two-member ensemble of CW bodies
    assert [tuple(w.shape) for w in critic.weights] == [(2, OBS + ACT, 256)] + [(2, 256, 256)] * 3 + [(2, 256, 10)]
    assert agent.log_alpha.shape == (10,)
    assert torch.allclose(agent.log_alpha, torch.ones(10))
    assert agent.target_entropy == pytest.approx(-4.0007, abs=1e-4)
    assert len(agent.optimizer.param_groups) == 1  # one Adam for actor, critics and α


def test_heads_select_by_task():
    agent = make_agent(start_steps=0)
    obs = torch.randn(5, OBS)
    a0 = agent.act(obs, 0, explore=False, deterministic=True)
    a1 = agent.act(obs, 1, explore=False, deterministic=True)
    assert a0.shape == (5, ACT) and not torch.allclose(a0, a1)
    assert torch.all(a0.abs() <= 1)


def test_warmup_random_then_policy_and_update_schedule():
    agent = make_agent()
    task = make_sequence("cw2").tasks[0]
    agent.begin_task(task)
    obs = torch.zeros(4, OBS)
    random_actions = agent.act(obs, 0, explore=True)
    assert not torch.allclose(random_actions[0], random_actions[1])  # uniform warm-up, not the policy mean
    agent.observe(batch(8, 0))
    assert agent.update() == {}  # before update_after
    agent.observe(batch(4, 0))  # 12 transitions: 2 past update_after, fewer than update_every
    assert agent.update() == {}
    agent.observe(batch(3, 0))  # 5 owed gradient steps
    stats = agent.update()
    assert agent.gradient_steps == 5 and set(stats) >= {"critic_loss", "actor_loss", "alpha", "entropy"}
    assert all(math.isfinite(v) for v in stats.values())


def test_gradient_step_moves_each_loss_only_its_own_parameters():
    agent = make_agent(reset_buffer_on_task=False)  # a buffer that may mix tasks: heads chosen per row
    agent.observe(batch(64, 1))
    target_before = [p.clone() for p in agent.target_critics.parameters()]
    other_alpha = agent.log_alpha[0].item()
    agent.gradient_step()
    # α of a task with no samples in the batch stays; targets move by Polyak averaging only
    assert agent.log_alpha[0].item() == other_alpha and agent.log_alpha[1].item() != other_alpha
    moved = [not torch.equal(a, b) for a, b in zip(target_before, agent.target_critics.parameters())]
    assert any(moved)


def test_one_head_slice_equals_per_row_gather():
    head = MultiHead(8, 3, 5)
    x = torch.randn(6, 8)
    assert torch.allclose(head(x, 2), head(x, torch.full((6,), 2)), atol=1e-6)
    mixed = torch.tensor([0, 4, 1, 1, 3, 2])
    assert torch.allclose(head(x, mixed)[1], head(x[1:2], 4)[0], atol=1e-6)


def test_task_switch_resets_buffer_and_adam_moments_but_not_step():
    agent = make_agent()
    tasks = make_sequence("cw2").tasks
    agent.begin_task(tasks[0])
    agent.observe(batch(40, 0))
    agent.update()
    steps_before = {id(p): s["step"].clone() for p, s in agent.optimizer.state.items()}
    assert agent.buffer.size == 40
    agent.begin_task(tasks[1])
    assert agent.buffer.size == 0 and agent.task_steps == 0
    for p, s in agent.optimizer.state.items():
        assert torch.count_nonzero(s["exp_avg"]) == 0 and torch.count_nonzero(s["exp_avg_sq"]) == 0
        assert torch.equal(s["step"], steps_before[id(p)])  # CW keeps Adam's iteration counter


def test_state_dict_round_trip():
    agent = make_agent()
    agent.observe(batch(40, 2))
    agent.update()
    clone = make_agent(log_alpha_init=0.0)
    clone.load_state_dict(agent.state_dict())
    obs = torch.randn(3, OBS)
    for t in range(TASKS):
        assert torch.equal(agent.act(obs, t, explore=False, deterministic=True),
                           clone.act(obs, t, explore=False, deterministic=True))
    assert clone.buffer.size == 40 and torch.equal(clone.buffer.data["obs"][:40], agent.buffer.data["obs"][:40])
    assert clone.gradient_steps == agent.gradient_steps and torch.equal(clone.log_alpha, agent.log_alpha)


def test_critic_learns_a_constant_reward():
    """With terminal transitions of reward 1, both Q heads converge towards 1."""
    agent = make_agent(lr=3e-3)
    n = 128
    agent.observe(Transitions(obs=torch.randn(n, OBS), action=torch.rand(n, ACT) * 2 - 1, reward=torch.ones(n),
                              next_obs=torch.randn(n, OBS), terminated=torch.ones(n), truncated=torch.zeros(n),
                              task_index=torch.zeros(n, dtype=torch.long)))
    for _ in range(300):
        agent.gradient_step()
    obs, act = torch.randn(32, OBS), torch.rand(32, ACT) * 2 - 1
    heads = torch.zeros(32, dtype=torch.long)
    with torch.no_grad():
        q = agent.critics(obs, act, heads)
    assert q.shape == (2, 32) and (q - 1).abs().mean() < 0.15


@pytest.mark.parametrize("activation", HIDDEN_ACTIVATIONS)
@pytest.mark.parametrize("body", ["cw", "mlp"])
def test_ensemble_member_equals_a_cw_mlp_with_its_weights(body, activation):
    """Each critic of the twin ensemble computes exactly a body + MultiHead with the same weights
    (CW's body, and the plain Linear→activation MLP that has no LayerNorm or tanh), for every activation."""
    from crl.nets import EnsembleCWMLP, cw_mlp

    torch.manual_seed(0)
    ens = EnsembleCWMLP(2, 7, (16, 16, 16), 3, 4, activation=activation, body=body)
    x, rows = torch.randn(5, 7), torch.tensor([0, 3, 1, 1, 2])
    for m in range(2):
        single, head = cw_mlp(7, (16, 16, 16), activation=activation, body=body), MultiHead(16, 3, 4)
        assert any(isinstance(layer, nn.LayerNorm) for layer in single) == (body == "cw")
        assert any(isinstance(layer, nn.Tanh) for layer in single) == (body == "cw")
        linears = [layer for layer in single if isinstance(layer, nn.Linear)] + [head.linear]
        with torch.no_grad():
            for lin, w, b in zip(linears, ens.weights, ens.biases):
                lin.weight.copy_(w[m].T)
                lin.bias.copy_(b[m, 0])
            if body == "cw":
                single[1].weight.copy_(ens.norm_weight[m, 0])
                single[1].bias.copy_(ens.norm_bias[m, 0])
        assert torch.allclose(ens(x, 2)[m], head(single(x), 2), atol=1e-5)
        assert torch.allclose(ens(x, rows)[m], head(single(x), rows), atol=1e-5)


def test_single_backward_gives_each_loss_gradient_to_its_own_parameters():
    """One backward of SAC's combined loss equals CW's per-loss gradients: critics from the critic
    loss alone, actor from the actor loss alone (critics fixed), α from the temperature loss."""
    agent = make_agent()
    agent.observe(batch(64, 0))
    b = agent.sample_batch()
    torch.manual_seed(5)
    loss, _ = agent.sac_losses(b)
    critic_params, actor_params = list(agent.critics.parameters()), list(agent.actor.parameters())
    combined = torch.autograd.grad(loss, critic_params + actor_params + [agent.log_alpha])

    torch.manual_seed(5)  # same noise draws, in the same order: a' for the backup, then a ~ π
    alpha = agent.log_alpha[0].exp()
    with torch.no_grad():
        a_next, logp_next = agent.actor(b["next_obs"], 0)
        q_next = agent.target_critics(b["next_obs"], a_next, 0).min(0).values
        backup = b["reward"] + 0.99 * (1 - b["terminated"]) * (q_next - alpha * logp_next)
    q = agent.critics(b["obs"], b["action"], 0)
    critic_loss = 0.5 * ((q[0] - backup) ** 2).mean() + 0.5 * ((q[1] - backup) ** 2).mean()
    a_pi, logp_pi = agent.actor(b["obs"], 0)
    actor_loss = (alpha.detach() * logp_pi - agent.critics(b["obs"], a_pi, 0).min(0).values).mean()
    alpha_loss = -(agent.log_alpha[0] * (logp_pi + agent.target_entropy).detach()).mean()
    expected = (torch.autograd.grad(critic_loss, critic_params) + torch.autograd.grad(actor_loss, actor_params)
                + torch.autograd.grad(alpha_loss, [agent.log_alpha]))
    for got, want in zip(combined, expected):
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)


@pytest.fixture
def bf16_allowed(monkeypatch):
    """The numerics of a bf16 path, tested on any CPU: torch emulates bf16 where the CPU lacks it (slowly, which is
    why a run refuses it there)."""
    monkeypatch.setattr("crl.devices.native_bf16", lambda device: True)


def test_bf16_update_follows_the_fp32_gradient(bf16_allowed):
    """precision=bf16 autocasts the update's matmuls: same direction as fp32, weights stay fp32."""
    agent = make_agent(precision="bf16")
    agent.observe(batch(64, 0))
    b = agent.sample_batch()
    grads = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(7)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss, _ = agent.sac_losses(b)
        grads[precision] = torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(agent.actor.parameters()))])
    cosine = torch.nn.functional.cosine_similarity(grads["fp32"], grads["bf16"], dim=0)
    assert cosine > 0.98
    stats = agent.gradient_step()
    assert math.isfinite(stats["critic_loss"].item()) and all(p.dtype == torch.float32 for p in agent.actor.parameters())


def test_bf16_keeps_the_input_and_output_layers_in_fp32(bf16_allowed):
    """Observations enter, and Q-values and (μ, log σ) leave, through fp32 layers even in a bf16 update:
    a Q of ~300 keeps fp32-level resolution of its head (bf16 would round it to steps of 2)."""
    agent = make_agent(precision="bf16")
    with torch.no_grad():
        agent.critics.net.biases[-1].fill_(300.0)
    x, action = torch.randn(32, OBS), torch.rand(32, ACT) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = agent.critics(x, action, 1)
        mu, log_std = agent.actor.distribution(x, 1)
        first_layer = agent.actor.body[0](x)
    assert q.dtype == mu.dtype == log_std.dtype == first_layer.dtype == torch.float32
    assert q.std() < 1 and len(torch.unique(q)) > 50  # spread < 1 yet distinct: no bf16 grid of step 2
    q_fp32 = agent.critics(x, action, 1)
    assert (q - q_fp32).abs().max() < 0.05


def test_bf16_on_a_cpu_without_bf16_hardware_is_a_usage_error(monkeypatch):
    from crl.core import UsageError

    monkeypatch.setattr("crl.devices.native_bf16", lambda device: False)
    with pytest.raises(UsageError, match=r"agent.precision=bf16 needs bf16 hardware .*use fp32"):
        make_agent(precision="bf16")
    make_agent(precision="fp32")


def test_unknown_precision_is_a_usage_error():
    from crl.core import UsageError

    with pytest.raises(UsageError, match="unknown precision 'fp8'; allowed: fp32, bf16"):
        make_agent(precision="fp8")


def test_plasticity_probes_measure_actor_and_critics_at_their_cadence():
    agent = make_agent(plasticity_every=3)
    agent.observe(batch(64, 0))
    measured = [agent.gradient_step() for _ in range(7)]
    has = ["plasticity/critic/all/fau" in s for s in measured]
    assert has == [True, False, False, True, False, False, True]
    stats = measured[0]
    for network in ("actor", "critic"):
        for layer in ("0", "1", "2", "3"):
            assert 0 <= stats[f"plasticity/{network}/{layer}/fau"] <= 1
        assert stats[f"plasticity/{network}/all/grad_norm"] > 0
        assert 1 <= stats[f"plasticity/{network}/last/srank_delta"] <= 32
    assert stats["plasticity/actor/body.0.weight/weight_change"] == 0.0  # first step: still at the initial weights
    later = measured[3]["plasticity/actor/body.0.weight/weight_change"]
    assert later > 0
    # after a checkpoint round trip the change is still measured from the original initial weights
    clone = make_agent(plasticity_every=3, log_alpha_init=0.0)
    torch.manual_seed(123)
    clone.load_state_dict(agent.state_dict())
    assert torch.equal(clone.probes["actor"].initial["body.0.weight"], agent.probes["actor"].initial["body.0.weight"])


def test_redo_recycles_dormant_units_during_training():
    agent = make_agent("sac+redo", redo_every=2, redo_tau=0.5)  # a generous τ so some units count as dormant
    agent.observe(batch(64, 0))
    stats = [agent.gradient_step() for _ in range(5)]
    recycled = [s.get("redo/recycled_units") for s in stats]
    assert recycled[0] is None and recycled[1] is None and recycled[2] > 0  # steps 2 and 4 (not 0)


def test_shrink_perturb_and_head_reset_at_a_task_switch():
    tasks = make_sequence("cw2").tasks
    agent = make_agent("sac+shrink-perturb+reset", sp_shrink=0.5, sp_perturb=0.0, reset_layers=("critic_head",),
                       reset_on_task=True)
    agent.begin_task(tasks[0])
    agent.observe(batch(64, 0))
    agent.gradient_step()
    actor_before = [p.detach().clone() for p in agent.actor.parameters()]
    critic_hidden_before = agent.critics.net.weights[0].detach().clone()
    agent.begin_task(tasks[1])
    assert all(torch.allclose(p, 0.5 * b) for p, b in zip(agent.actor.parameters(), actor_before))
    assert torch.allclose(agent.critics.net.weights[0], 0.5 * critic_hidden_before)
    head = agent.critics.net.weights[-1]
    assert torch.count_nonzero(agent.optimizer.state[head]["exp_avg"]) == 0
    assert torch.equal(agent.target_critics.net.weights[-1], head)
    with pytest.raises(Exception, match="unknown layer group"):
        make_agent("sac+reset", reset_layers=("encoder",))


def test_actor_log_probability_is_the_tanh_squashed_gaussian_density():
    from torch.distributions import Normal, TanhTransform, TransformedDistribution

    agent = make_agent()
    x = torch.randn(64, OBS)
    torch.manual_seed(3)
    action, logp = agent.actor(x, 2)
    torch.manual_seed(3)
    assert torch.equal(agent.actor.act(x, 2), action)  # act(): the same draw without the density
    mu, log_std = agent.actor.distribution(x, 2)
    squashed = TransformedDistribution(Normal(mu, log_std.exp()), [TanhTransform()])
    clipped = action.clamp(-1 + 1e-6, 1 - 1e-6)  # atanh of exactly ±1 is infinite
    inside = (action.abs() < 1 - 1e-4).all(-1)
    assert inside.sum() > 10
    assert torch.allclose(logp[inside], squashed.log_prob(clipped).sum(-1)[inside], atol=1e-3)
    deterministic, _ = agent.actor(x, 2, deterministic=True)
    assert torch.equal(deterministic, torch.tanh(mu))


def test_fast_tanh_matches_torch_tanh_in_value_and_gradient():
    x = torch.cat([torch.randn(4096) * 3, torch.tensor([0.0, 1e-6, -1e-6, 20.0, -20.0, 100.0, -100.0])])
    x.requires_grad_(True)
    grad_out = torch.randn_like(x)
    (fast_grad,) = torch.autograd.grad(fast_tanh(x), x, grad_out)
    (ref_grad,) = torch.autograd.grad(torch.tanh(x), x, grad_out)
    assert (fast_tanh(x) - torch.tanh(x)).abs().max() < 3e-7
    assert torch.allclose(fast_grad, ref_grad, atol=2e-6)
    assert fast_tanh(torch.tensor([100.0, -100.0])).tolist() == [1.0, -1.0]  # saturates, no inf/inf
    # per-sample Jacobians (EWC/MAS importances use torch.func over the actor)
    from torch.func import jacrev, vmap
    xs = torch.randn(5, 3)
    assert torch.allclose(vmap(jacrev(fast_tanh))(xs), vmap(jacrev(torch.tanh))(xs), atol=2e-6)


def test_nap_normalises_before_every_nonlinearity_and_keeps_hidden_norms():
    from crl.interventions import hidden_weights

    agent = make_agent("sac+nap", lr=1e-2)
    body = list(agent.actor.body)
    assert [type(m) for m in body] == [FP32Linear, nn.LayerNorm, Tanh] + [nn.Linear, nn.LayerNorm, nn.LeakyReLU] * 3
    assert len(agent.critics.net.extra_norm_weights) == 3
    initial = [n.clone() for n in agent.extensions[0].norms]
    head_before = agent.actor.head.linear.weight.norm().item()
    agent.observe(batch(64, 0))
    for _ in range(20):
        agent.gradient_step()
    for w, n in zip(hidden_weights(agent), initial):
        now = w.norm() if w.dim() == 2 else w.norm(dim=(1, 2), keepdim=True)
        assert torch.allclose(now, n, rtol=1e-5)
    assert agent.actor.head.linear.weight.norm().item() != pytest.approx(head_before)  # heads are not projected


def test_relu_option_gives_probes_exactly_dead_units():
    agent = make_agent(activation="relu", plasticity_every=1)
    assert [type(m) for m in agent.actor.body][3:5] == [nn.Linear, nn.ReLU]
    agent.observe(batch(64, 0))
    stats = agent.gradient_step()
    assert 0 < stats["plasticity/critic/1/fau"] < 1  # ReLU: some units exactly 0 on the batch
    h = []
    agent.critics.net(torch.randn(5, OBS + ACT), 0, record=lambda layer, a: h.append(a))
    assert (h[1] >= 0).all()
    with pytest.raises(Exception, match="unknown activation 'gelu'"):
        make_agent(activation="gelu")


def test_plain_mlp_body_has_no_layernorm_or_tanh():
    """``body="mlp"`` (SB3/Spinning Up's Linear→ReLU networks, what scripts/bench_sac.py compares
    with SB3 as identical networks): no LayerNorm or tanh anywhere, and the probes treat every layer
    as ReLU."""
    from crl.core import UsageError

    agent = make_agent(body="mlp", activation="relu", plasticity_every=1)
    assert not any(isinstance(m, (nn.LayerNorm, nn.Tanh)) for m in agent.actor.body)
    assert agent.critics.net.norm_weight is None
    assert set(agent.probes["critic"].activations.values()) == {"relu"}
    agent.observe(batch(64, 0))
    stats = agent.gradient_step()
    assert 0 < stats["plasticity/critic/0/fau"] < 1  # ReLU after the first layer too: some units exactly 0
    h = []
    agent.critics.net(torch.randn(5, OBS + ACT), 0, record=lambda layer, a: h.append(a))
    assert (h[0] >= 0).all()
    with pytest.raises(UsageError, match="unknown body 'resnet'; allowed: cw, mlp"):
        make_agent(body="resnet")


def _gradients_and_updates_across_a_task_switch(agent: SAC, device: str = "cpu") -> list[torch.Tensor]:
    """For each task of cw2: the gradient of the update's loss on one fixed batch (flattened), then one round of
    updates (another task is another head: a recompile when compiled)."""
    params = [*agent.actor.parameters(), *agent.critics.parameters(), agent.log_alpha]
    grads = []
    for task in make_sequence("cw2").tasks:
        agent.begin_task(task)
        torch.manual_seed(task.index)
        agent.observe(Transitions(**{k: v if v is None else v.to(device) for k, v in vars(batch(40, task.index)).items()}))
        fixed = agent.sample_batch()
        torch.manual_seed(100 + task.index)  # the same actor noise for both agents
        with torch.autocast(device, dtype=torch.bfloat16, enabled=agent.cfg.precision == "bf16"):
            loss, _ = agent.losses(fixed)
        grads.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]))
        stats = agent.update()
        assert stats and all(torch.isfinite(v).all() for v in stats.values())
    return grads


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compiled_update_equals_the_eager_one(precision, request):
    """compile=true runs SAC's losses through torch.compile (inductor on CPU): the same gradients as eager,
    before and after a task switch (another head: a recompile), and the same weights after the updates.
    Inductor draws its own random numbers unless ``fallback_random``: then both draw the same noise."""
    import torch._inductor.config as inductor_config

    if precision == "bf16":
        request.getfixturevalue("bf16_allowed")
    eager, compiled = make_agent(precision=precision), make_agent(precision=precision, compile=True)
    initial = [p.detach().clone() for p in eager.critics.parameters()]
    with inductor_config.patch(fallback_random=True):
        want, got = (_gradients_and_updates_across_a_task_switch(a) for a in (eager, compiled))
    assert compiled._compiled_losses is not None and compiled.gradient_steps == eager.gradient_steps > 0
    for g_compiled, g_eager in zip(got, want):
        if precision == "fp32":
            assert torch.allclose(g_compiled, g_eager, rtol=1e-3, atol=1e-5), (g_compiled - g_eager).abs().max()
        else:  # inductor rounds fused intermediates to bf16 at other places than eager autocast does
            assert (g_compiled - g_eager).norm() < 0.01 * g_eager.norm()
    # Adam turns rounding differences of near-zero gradients into steps of up to lr, so the weights are compared
    # by how far each agent moved them: the two moves agree to a few percent
    moved_eager = torch.cat([(p - p0).flatten() for p, p0 in zip(eager.critics.parameters(), initial)])
    moved_compiled = torch.cat([(p - p0).flatten() for p, p0 in zip(compiled.critics.parameters(), initial)])
    assert (moved_compiled - moved_eager).norm() < 0.05 * moved_eager.norm()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA path: runs where a GPU is present")
def test_compiled_update_with_cuda_graphs_equals_the_eager_one():
    """On CUDA compile=true replays the losses' forward and backward as CUDA graphs: same gradients as eager."""
    import torch._inductor.config as inductor_config

    agents = []
    for compile_ in (False, True):
        torch.manual_seed(0)
        cfg = SACConfig(hidden_sizes=(32,) * 4, batch_size=16, start_steps=20, update_after=10, update_every=5,
                        compile=compile_)
        agents.append(SAC(OBS, ACT, TASKS, cfg, torch.device("cuda")))
    with inductor_config.patch(fallback_random=True):
        want, got = (_gradients_and_updates_across_a_task_switch(a, "cuda") for a in agents)
    for g_compiled, g_eager in zip(got, want):
        assert torch.allclose(g_compiled, g_eager, rtol=1e-3, atol=1e-5)


def test_compile_is_read_from_the_config_and_a_bad_value_is_a_usage_error():
    from crl.core import UsageError
    from crl.config import build_config

    assert build_config("cw2", "sac", preset="smoke", sets=["agent.compile=true"]).agent_config.compile is True
    with pytest.raises(UsageError, match="compile"):
        build_config("cw2", "sac", preset="smoke", sets=["agent.compile=sometimes"])

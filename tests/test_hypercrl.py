"""HyperCRL (issue 16): dynamics families and their torch rewards, the hypernetwork's output regulariser
and look-ahead, the batched CEM planner, the agent's error matrices, and a smoke run through the CLI."""

from __future__ import annotations

import copy
import json

import gymnasium
import numpy as np
import pytest
import torch

from crl.envs import make_sequence
from crl.envs.dynamics import FAMILIES
from crl.hypernet import HyperNetwork, adam_lookahead, output_regularizer, target_shapes
from crl.planning import CEMConfig, plan


# -- families -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", list(FAMILIES))
def test_torch_reward_equals_env_reward_on_recorded_transitions(family):
    for task in make_sequence(family).tasks:
        env = task.make_env(3)
        obs, _ = env.reset()
        rows = []
        for _ in range(40):
            action = env.action_space.sample()
            next_obs, reward, terminated, truncated, _ = env.step(action)
            rows.append((obs, action, reward, next_obs))
            obs = next_obs
        o, a, r, o2 = (torch.as_tensor(np.array([row[k] for row in rows]), dtype=torch.float64) for k in range(4))
        torch.testing.assert_close(task.reward_fn(o, a, o2), r, atol=1e-5, rtol=1e-5)
        env.close()


def test_tasks_of_a_family_have_different_dynamics_and_are_gymnasium_envs():
    from crl.envs import register_envs

    register_envs()
    masses = {}
    for env_id in ("crl/HalfCheetahBigTorso-v0", "crl/HalfCheetahBigFoot-v0"):
        env = gymnasium.make(env_id)
        assert env.reset(seed=0)[0].shape == (18,)
        masses[env_id] = env.unwrapped.model.body_mass.copy()
    assert not np.allclose(*masses.values())
    pushers = [make_sequence("pusher-object").tasks[i].make_env(0) for i in (0, 1)]
    object_mass = [p.unwrapped.model.body("object").mass[0] for p in pushers]
    assert object_mass[0] == pytest.approx(5 * object_mass[1], rel=1e-3)  # density 500 vs 100
    poles = [make_sequence("cartpole-physics").tasks[i].make_env(0) for i in (0, 1)]
    for env in poles:
        env.reset()
    states = [env.step(np.ones(1))[0] for env in poles]  # same start, same push: a longer pole moves differently
    assert not np.allclose(states[0], states[1])


# -- hypernetwork ------------------------------------------------------------------------------------------------

def _hnet(chunk_size=0, seed=0):
    torch.manual_seed(seed)
    return HyperNetwork(target_shapes(4, (8,), 3), num_tasks=3, emb_dim=4, hidden=(16,), chunk_size=chunk_size,
                        chunk_emb_dim=3)


@pytest.mark.parametrize("chunk_size", [0, 17])
def test_hypernetwork_generates_each_target_tensor(chunk_size):
    hnet = _hnet(chunk_size)
    weights = hnet.weights(1)
    assert [tuple(w.shape) for w in weights] == [(8, 4), (8,), (3, 8), (3,)]
    if chunk_size:
        assert hnet.num_chunks == -(-hnet.total // chunk_size)


def test_output_regularizer_is_zero_when_the_hypernetwork_has_not_moved():
    hnet = _hnet()
    with torch.no_grad():
        targets = hnet.flat(torch.stack([hnet.embeddings[0], hnet.embeddings[1]]))
    reg = output_regularizer(hnet, [0, 1], targets)
    assert reg.item() == 0.0
    zero = {n: torch.zeros_like(p) for n, p in hnet.theta().items()}
    assert output_regularizer(hnet, [0, 1], targets, zero).item() == 0.0


def _drift_after_new_task(beta: float, steps: int = 30) -> float:
    """Train task 1's embedding and Θ on a new regression target; return ‖f_h(e_0) − f_h*(e_0)‖²."""
    hnet = _hnet(seed=1)
    with torch.no_grad():
        target0 = hnet.flat(hnet.embeddings[0].unsqueeze(0))
    opt = torch.optim.Adam(list(hnet.theta().values()), lr=1e-2)
    emb_opt = torch.optim.Adam([hnet.embeddings[1]], lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 4, generator=gen)
    y = torch.randn(32, 3, generator=gen) * 3
    from crl.hypernet import target_forward

    for _ in range(steps):
        opt.zero_grad()
        emb_opt.zero_grad()
        loss = (target_forward(x, hnet.weights(1)) - y).pow(2).mean()
        loss.backward()
        emb_opt.step()
        if beta:
            delta = adam_lookahead(opt, hnet.theta())
            (beta * output_regularizer(hnet, [0], target0, delta)).backward()
        opt.step()
    with torch.no_grad():
        return output_regularizer(hnet, [0], target0).item()


def test_output_regularizer_pulls_a_previous_embeddings_weights_back():
    free, kept = _drift_after_new_task(0.0), _drift_after_new_task(1.0)
    assert free > 0.05
    assert kept < 0.2 * free
    # and its gradient alone moves Θ back towards the stored outputs
    hnet = _hnet(seed=2)
    with torch.no_grad():
        target0 = hnet.flat(hnet.embeddings[0].unsqueeze(0))
        for p in hnet.theta().values():
            p.add_(0.05 * torch.randn_like(p))
    before = output_regularizer(hnet, [0], target0)
    before.backward()
    with torch.no_grad():
        for p in hnet.theta().values():
            p.sub_(1e-3 * p.grad)
    assert output_regularizer(hnet, [0], target0).item() < before.item()


@pytest.mark.parametrize("steps_before", [0, 3])
def test_lookahead_is_the_step_adam_would_take(steps_before):
    hnet = _hnet(seed=3)
    params = hnet.theta()
    opt = torch.optim.Adam(list(params.values()), lr=3e-3, betas=(0.8, 0.95), eps=1e-6)
    x = torch.randn(8, hnet.embeddings[0].shape[0])

    def set_grads():
        opt.zero_grad()
        hnet(x)[0].pow(2).sum().backward()

    for _ in range(steps_before):
        set_grads()
        opt.step()
    set_grads()
    delta = adam_lookahead(opt, params)
    before = {n: p.detach().clone() for n, p in params.items()}
    opt.step()
    for n, p in params.items():
        torch.testing.assert_close(delta[n], p.detach() - before[n], rtol=1e-5, atol=1e-7)


# -- planner ---------------------------------------------------------------------------------------------------

def _integrator(states, actions):
    return states + actions


def test_cem_finds_the_optimum_of_a_quadratic_cost():
    goal = torch.tensor([0.3, -0.6])
    # the state is the action of the last step: cost ‖a − goal‖² at every step, optimum a = goal
    reward = lambda s, a, s2: -(a - goal).pow(2).sum(-1)  # noqa: E731
    cfg = CEMConfig(horizon=3, samples=400, elites=40, iterations=8, init_std=0.5)
    torch.manual_seed(0)
    action = plan(torch.zeros(2, 2), _integrator, reward, cfg, -1.0, 1.0, 2)
    torch.testing.assert_close(action, goal.expand(2, 2), atol=0.03, rtol=0)
    diag = CEMConfig(horizon=3, samples=400, elites=40, iterations=8, full_cov=False, choose_best=False)
    action = plan(torch.zeros(1, 2), _integrator, reward, diag, -1.0, 1.0, 2)
    torch.testing.assert_close(action, goal.expand(1, 2), atol=0.03, rtol=0)


def test_batched_planning_equals_planning_each_environment_alone():
    torch.manual_seed(0)
    W = torch.randn(3, 3) * 0.3
    B = torch.randn(2, 3) * 0.3
    dynamics = lambda s, a: torch.tanh(s @ W + a @ B)  # noqa: E731
    reward = lambda s, a, s2: -(s2 - 0.5).pow(2).sum(-1) - 0.1 * a.pow(2).sum(-1)  # noqa: E731
    cfg = CEMConfig(horizon=4, samples=64, elites=8, iterations=3)
    n = 5
    obs = torch.randn(n, 3)
    noise = torch.randn(cfg.iterations, n, cfg.samples, cfg.horizon * 2)
    together = plan(obs, dynamics, reward, cfg, -2.0, 2.0, 2, noise=noise)
    alone = torch.cat([plan(obs[k:k + 1], dynamics, reward, cfg, -2.0, 2.0, 2, noise=noise[:, k:k + 1])
                       for k in range(n)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


# -- the agent ---------------------------------------------------------------------------------------------------

def _agent(name="hypercrl", **overrides):
    from crl.config import build_config
    from crl.loop import make_agent

    sets = [f"agent.{k}={v}" for k, v in overrides.items()]
    cfg = build_config("cartpole-physics", name, preset="smoke", device="cpu", sets=sets)
    seq = make_sequence("cartpole-physics")
    agent = make_agent(cfg, seq, torch.device("cpu"))
    agent.prepare(list(seq.tasks))
    return agent, seq


def test_agent_plans_per_row_task_with_the_weights_of_each_row():
    agent, seq = _agent()
    for task in seq.tasks[:2]:
        agent.begin_task(task)
        agent.end_task(task)
    obs = torch.randn(4, 5)
    rows = torch.tensor([0, 1, 1, 0])
    nxt = agent.dynamics(rows)(obs.unsqueeze(1), torch.zeros(4, 1, 1))
    for k in range(4):
        alone = agent.dynamics(int(rows[k]))(obs[k:k + 1].unsqueeze(1), torch.zeros(1, 1, 1))
        torch.testing.assert_close(nxt[k], alone[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(agent.dynamics(0)(obs.unsqueeze(1), torch.zeros(4, 1, 1)),
                              agent.dynamics(1)(obs.unsqueeze(1), torch.zeros(4, 1, 1)))


def test_planner_of_a_probabilistic_model_moves_states_by_the_trained_mean():
    """A probabilistic model (cheetah-body) plans with its output layer cut to the mean half: next states are the
    state plus the de-normalised mean that training's forward pass (``_predict``) gives, for every task's weights."""
    from crl.config import build_config
    from crl.loop import make_agent

    cfg = build_config("cheetah-body", "hypercrl", preset="smoke", device="cpu", sets=[])
    seq = make_sequence("cheetah-body")
    agent = make_agent(cfg, seq, torch.device("cpu"))
    agent.prepare(list(seq.tasks))
    agent.begin_task(seq.tasks[0])
    assert agent.cfg.probabilistic and agent._cached(0)[-2].shape[0] == agent.obs_dim
    torch.manual_seed(0)
    states, actions = torch.randn(2, 7, agent.obs_dim), torch.rand(2, 7, agent.act_dim) * 2 - 1
    x = (torch.cat([states, actions], -1) - agent.in_mean[0]) / agent.in_std[0]
    with torch.no_grad():
        mean, logvar = agent._predict(x, agent._weights(0))
        assert logvar is not None and mean.shape == states.shape
        torch.testing.assert_close(agent.dynamics(0)(states, actions), states + mean * agent.out_std[0] + agent.out_mean[0])


def test_bf16_planning_model_predicts_and_ranks_like_fp32():
    """``plan_dtype=bfloat16`` runs the planner's model matmuls in bf16: its next states are the fp32 model's to
    bf16 precision, and the candidates it ranks best over a horizon are the fp32 model's best."""
    from crl.envs.dynamics import reward_for_domain
    from crl.planning import rollout_returns

    agent, seq = _agent()
    agent.begin_task(seq.tasks[0])
    torch.manual_seed(0)
    obs, actions = torch.randn(2, 5), torch.rand(2, 200, 15, 1) * 2 - 1
    fp32 = agent.dynamics(0)(obs.unsqueeze(1).expand(2, 200, 5), actions[:, :, 0])
    agent.cfg.plan_dtype = "bfloat16"
    bf16 = agent.dynamics(0)(obs.unsqueeze(1).expand(2, 200, 5), actions[:, :, 0])
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32)
    torch.testing.assert_close(bf16, fp32, atol=0.03 * float(fp32.abs().max()), rtol=0.0)
    reward = reward_for_domain(agent.domain)
    returns = {}
    for dtype in ("float32", "bfloat16"):
        agent.cfg.plan_dtype = dtype
        returns[dtype] = rollout_returns(obs, actions, agent.dynamics(0), reward)
    for row in range(2):
        best = [set(returns[d][row].topk(20).indices.tolist()) for d in returns]
        assert len(best[0] & best[1]) >= 16


def test_bf16_planning_on_a_cpu_without_bf16_hardware_is_a_usage_error(monkeypatch):
    from crl.core import UsageError

    monkeypatch.setattr("crl.devices.native_bf16", lambda device: False)
    with pytest.raises(UsageError, match=r"agent.plan_dtype=bfloat16 needs bf16 hardware .*use fp32"):
        _agent(plan_dtype="bfloat16")
    monkeypatch.setattr("crl.devices.native_bf16", lambda device: True)
    assert _agent(plan_dtype="bfloat16")[0].cfg.plan_dtype == "bfloat16"


def test_fused_bf16_planning_forward_equals_the_layer_by_layer_one():
    from crl.hypernet import _fuses_linear_relu, target_forward, target_shapes

    torch.manual_seed(0)
    weights = [torch.randn(s).bfloat16() for s in target_shapes(7, (32, 32), 10)]
    x = torch.randn(3, 50, 7).bfloat16()
    with torch.no_grad():
        planned = target_forward(x, weights)
        if not _fuses_linear_relu(x, "relu", batched=False):
            pytest.skip("no oneDNN fused bf16 linear on this build or CPU")
    trained = target_forward(x, weights)  # with autograd: linear, then ReLU, layer by layer
    assert planned.shape == (3, 50, 10) and torch.equal(planned, trained)


def test_agent_refuses_tasks_without_a_torch_reward():
    from crl.core import UsageError

    agent, _ = _agent()
    with pytest.raises(UsageError, match="known reward"):
        agent.begin_task(make_sequence("dmc2").tasks[0])


def test_smoke_run_writes_error_matrices_and_resumes_state(tmp_path):
    from crl.checkpoint import load
    from crl.cli import main

    run = tmp_path / "run"
    assert main(["train", "--seq", "cartpole-physics", "--agent", "hypercrl", "--preset", "smoke", "--device", "cpu",
                 "--run-dir", str(run), "--quiet"]) == 0
    results = json.loads((run / "results.json").read_text())
    E = results["error_matrices"]["model_nmse_1step"]
    assert len(E) == 3 and all(v is not None for i, row in enumerate(E) for v in row[: i + 1])
    assert all(v is None for i, row in enumerate(E) for v in row[i + 1:])
    assert "model_nmse_3step" in results["error_matrices"]
    assert results["error_metrics"]["model_nmse_1step"]["first_task_ratio"] is not None
    assert len(results["retention_matrix"]) == 3
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) in (0, None)
    page = (tmp_path / "report" / "report.html").read_text()
    assert "model_nmse_1step" in page and page.count("<tr><th>after ") == 3 * len(results["error_matrices"])
    ratio = results["error_metrics"]["model_nmse_1step"]["first_task_ratio"]
    assert "id='errors'" in page and f"{ratio:.3f} [{ratio:.3f}, {ratio:.3f}]" in page  # one seed: CI collapsed
    state = load(run)["agent"]
    fresh, _ = _agent()
    fresh.load_state_dict(state)
    assert sorted(fresh.holdout) == [0, 1, 2]


@pytest.mark.parametrize("name", ["hypercrl-coreset", "hypercrl-ewc", "hypercrl-si", "hypercrl-single"])
def test_baselines_train_two_tasks(name):
    agent, seq = _agent(name, random_steps=20, train_every=20, train_iters=3)
    for task in seq.tasks[:2]:
        agent.begin_task(task)
        env = task.make_vec(2, 0, "gymnasium")
        obs = torch.as_tensor(env.reset())
        from crl.core import Transitions

        losses = []
        for _ in range(30):
            action = agent.act(obs, task.index, explore=True)
            step = env.step(action.numpy())
            agent.observe(Transitions(obs, action, torch.as_tensor(step.reward), torch.as_tensor(step.final_obs),
                                      torch.as_tensor(step.terminated, dtype=torch.float32),
                                      torch.as_tensor(step.truncated, dtype=torch.float32),
                                      torch.full((2,), task.index)))
            stats = agent.update()
            losses += [float(stats["model_loss"])] if stats else []
            obs = torch.as_tensor(step.obs)
        assert losses and np.isfinite(losses).all()
        agent.end_task(task)
    if name == "hypercrl-coreset":
        assert len(agent.memory) == 2 * agent.cfg.coreset_size
    if name in ("hypercrl-ewc", "hypercrl-si"):
        assert agent.regularizer.consolidations == 2 and agent.regularizer.penalty() is not None
    if name == "hypercrl-single":
        w0, w1 = agent._weights(0), agent._weights(1)
        assert all(a is not b for a, b in zip(w0, w1))

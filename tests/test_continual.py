"""Continual World's baselines on SAC: each method's defining mechanism, and every method through the loop."""

from __future__ import annotations

import json

import pytest
import torch

from crl.registry import agent_class, make_agent_config
from crl.continual import BayesianLinear, agem_project, ewc_importance, mas_importance
from crl.core import Transitions
from crl.envs import make_sequence
from crl.replay import ReplayBuffer

OBS, ACT, TASKS = 39, 4, 3
SMALL = {"hidden_sizes": (32, 32, 32), "batch_size": 32, "start_steps": 0, "update_after": 0, "update_every": 1}
SAC_FAMILY = ["sac", "l2", "ewc", "mas", "vcl", "packnet", "agem", "perfect-memory", "episodic-memory", "clonex",
              "kickstart", "arr"]


def build(name: str, **overrides):
    """A small agent by its registered name (``ewc``, ``sac+ewc+episodic-memory``), settings overridden."""
    torch.manual_seed(0)
    cfg = make_agent_config(name)
    for key, value in {**SMALL, **overrides}.items():
        setattr(cfg, key, value)
    return agent_class(name)(OBS, ACT, TASKS, cfg, torch.device("cpu"))


def piece(agent, name: str | None = None):
    """The agent's extension called ``name`` (default: its only one)."""
    if name is None:
        (ext,) = agent.extensions
        return ext
    return next(e for e in agent.extensions if e.name == name)


def transitions(n: int, task: int, shift: float = 0.0) -> Transitions:
    return Transitions(obs=torch.randn(n, OBS) + shift, action=torch.rand(n, ACT) * 2 - 1, reward=torch.randn(n),
                       next_obs=torch.randn(n, OBS) + shift, terminated=torch.zeros(n), truncated=torch.zeros(n),
                       task_index=torch.full((n,), task))


def train_task(agent, task_index: int, steps: int, shift: float = 0.0) -> None:
    task = make_sequence("cw10").tasks[task_index]
    agent.begin_task(task)
    agent.observe(transitions(256, task_index, shift))
    for _ in range(steps):
        agent.gradient_step()
    for phase in agent.phases(task):  # what the loop does between a task's budget and its end_task
        agent.begin_phase(phase, task)
        for _ in range(phase.steps):
            agent.phase_step(phase)
        agent.end_phase(phase, task)
    agent.end_task(task)


# -- regularisers -----------------------------------------------------------------------------------

def test_ewc_penalty_zero_at_anchor_and_grows_along_high_fisher_directions():
    agent = build("ewc", reg_coef=1.0, importance_batches=1, importance_batch_size=64)
    train_task(agent, 0, 5)
    reg = piece(agent).regularizer
    assert reg.penalty().item() == 0.0  # at the anchor
    name = "body.0.weight"
    fisher = reg.weights[name].flatten()
    hi, lo = int(fisher.argmax()), int(fisher.argmin())
    assert fisher[hi] > 10 * fisher[lo]
    param = agent.actor.body[0].weight
    penalties = []
    for index in (hi, lo):
        for step in (0.1, 0.2):
            with torch.no_grad():
                param.view(-1)[index] += step
            penalties.append(reg.penalty().item())
            with torch.no_grad():
                param.view(-1)[index] -= step
    (hi1, hi2, lo1, lo2) = penalties
    assert hi1 > lo1 > 0 and hi2 == pytest.approx(4 * hi1, rel=1e-3)  # quadratic in the distance


def test_ewc_fisher_and_mas_importance_match_a_per_sample_loop():
    """The vmapped Jacobians equal per-sample autograd, formula by formula (CW's ewc.py / mas.py)."""
    agent = build("ewc")
    obs = torch.randn(5, OBS)
    names = ["body.0.weight", "body.3.bias"]
    params = dict(agent.actor.named_parameters())
    fisher = {n: torch.zeros_like(params[n]) for n in names}
    mas = {n: torch.zeros_like(params[n]) for n in names}
    for x in obs:
        mu, log_std = agent.actor.distribution(x[None], 1)
        std = log_std.exp()
        per_dim = {n: torch.zeros_like(params[n]) for n in names}
        for d in range(ACT):
            g_mu = torch.autograd.grad(mu[0, d], [params[n] for n in names], retain_graph=True)
            g_std = torch.autograd.grad(std[0, d], [params[n] for n in names], retain_graph=True)
            for n, gm, gs in zip(names, g_mu, g_std):
                per_dim[n] += (gm ** 2 + 2 * gs ** 2) / (std[0, d].detach() ** 2 + 1e-6)
        for n in names:
            fisher[n] += per_dim[n].clamp_min(1e-5) / len(obs)
        g = torch.autograd.grad((mu ** 2).sum() + (log_std ** 2).sum(), [params[n] for n in names])
        for n, gn in zip(names, g):
            mas[n] += gn.abs() / len(obs)
    got_fisher = ewc_importance(agent.actor, names, obs, 1, chunk=2)
    got_mas = mas_importance(agent.actor, names, obs, 1, chunk=2)
    for n in names:
        assert torch.allclose(got_fisher[n], fisher[n], rtol=1e-4, atol=1e-7)
        assert torch.allclose(got_mas[n], mas[n], rtol=1e-4, atol=1e-7)


def test_l2_penalty_is_the_squared_distance_summed_over_tasks():
    agent = build("l2", reg_coef=2.0)
    l2 = piece(agent)
    train_task(agent, 0, 2)
    train_task(agent, 1, 2)  # two consolidations: weight 1 + 1
    anchors = {n: p.detach().clone() for n, p in l2.regularized.items()}
    with torch.no_grad():
        for p in l2.regularized.values():
            p.add_(0.01)
    expected = 2.0 * 2 * sum(((p - anchors[n]) ** 2).sum() for n, p in l2.regularized.items())
    assert l2.regularizer.penalty().item() == pytest.approx(expected.item(), rel=1e-4)
    assert all(not n.startswith("head") for n in l2.regularized)  # heads are not regularised (CW)


# -- PackNet ----------------------------------------------------------------------------------------

def test_packnet_first_task_weights_bit_identical_after_training_the_second():
    agent = build("packnet", retrain_steps=5, clip_grad_norm=None)
    masks = piece(agent).masks
    train_task(agent, 0, 10)
    owner = masks.owner
    kept = {n: (owner[n] == 0) for n in owner}
    assert all(0.3 < float(m.float().mean()) < 0.37 for m in kept.values())  # 3 tasks: task 0 keeps 1/3
    before = {n: p.detach().clone() for n, p in masks.matrices.items()}
    others_before = {n: p.detach().clone() for n, p in masks.others.items()}
    train_task(agent, 1, 20, shift=1.0)
    for n, p in masks.matrices.items():
        assert torch.equal(p[kept[n]], before[n][kept[n]])  # task 0's entries: untouched
        assert not torch.equal(p[owner[n] == 1], before[n][owner[n] == 1])  # task 1's entries: trained
    for n, p in masks.others.items():
        assert torch.equal(p, others_before[n])  # biases and LayerNorm frozen after task 0


def test_packnet_evaluates_each_task_with_its_own_weights():
    agent = build("packnet", retrain_steps=0)
    masks = piece(agent).masks
    train_task(agent, 0, 5)
    train_task(agent, 1, 5, shift=1.0)
    agent.begin_task(make_sequence("cw10").tasks[2])
    obs = torch.randn(6, OBS)
    rows = torch.tensor([0, 1, 2, 0, 1, 2])
    batched = agent.act(obs, rows, explore=False, deterministic=True)
    for t in range(3):
        alone = agent.act(obs[rows == t], t, explore=False, deterministic=True)
        assert torch.allclose(batched[rows == t], alone, atol=1e-6)
    view0 = masks.view(0)
    assert all(torch.count_nonzero(w[masks.owner[n] > 0]) == 0 for n, w in view0.items())


# -- A-GEM --------------------------------------------------------------------------------------------

def test_agem_projection_has_non_negative_inner_product_with_the_memory_gradient():
    torch.manual_seed(0)
    g, ref = [torch.randn(5, 3), torch.randn(4)], [torch.randn(5, 3), torch.randn(4)]
    g[0] = -ref[0] * 2  # make them conflict
    dot_before = sum((a * b).sum() for a, b in zip(g, ref))
    assert dot_before < 0 and bool(agem_project(g, ref))
    assert sum((a * b).sum() for a, b in zip(g, ref)).item() == pytest.approx(0.0, abs=1e-4)
    agreeing = [r.clone() for r in ref]
    assert not bool(agem_project(agreeing, ref)) and all(torch.equal(a, r) for a, r in zip(agreeing, ref))


def test_agem_step_never_points_against_the_memory():
    agent = build("agem", memory_per_task=100, memory_batch_size=64, multihead=False)
    agem = piece(agent)
    tasks = make_sequence("cw10").tasks
    # One head and opposite terminal rewards on the same states: the two tasks' gradients conflict.
    opposite = {0: transitions(128, 0), 1: transitions(128, 1)}
    opposite[1].obs, opposite[1].action = opposite[0].obs, opposite[0].action
    opposite[0].reward, opposite[1].reward = torch.full((128,), 10.0), torch.full((128,), -10.0)
    opposite[0].terminated = opposite[1].terminated = torch.ones(128)
    agent.begin_task(tasks[0])
    agent.observe(opposite[0])
    for _ in range(20):
        agent.gradient_step()
    agent.end_task(tasks[0])
    assert len(agem.memory) == 100 and set(agem.memory.data["task_index"].tolist()) == {0}
    agent.begin_task(tasks[1])
    agent.observe(opposite[1])
    violations = 0
    for _ in range(10):
        torch.manual_seed(3)
        memory_batch = agem.memory.sample(64)
        torch.manual_seed(3)
        loss, _ = agent.sac_losses(agent.sample_batch())
        agent.optimizer.zero_grad()
        loss.backward()
        torch.manual_seed(3)
        stats = agem.adjust_gradients({})
        torch.manual_seed(3)
        assert torch.equal(agem.memory.sample(64)["obs"], memory_batch["obs"])
        ref_loss, _ = agent.sac_losses(memory_batch)
        ref = torch.autograd.grad(ref_loss, agem.projected)
        dot = sum((p.grad * r).sum() for p, r in zip(agem.projected, ref))
        assert dot.item() >= -1e-3 * sum((r * r).sum() for r in ref).item()
        violations += int(stats["agem_violation"])
        agent.optimizer.step()
    assert violations > 0  # the test exercised the projection


def test_vcl_posterior_of_a_finished_task_becomes_the_prior_and_the_kl_pulls_towards_it():
    agent = build("vcl")
    vcl = piece(agent)
    assert vcl.loss({}) is None  # no KL during the first task (CW's reference runs)
    train_task(agent, 0, 5)
    posterior = {n: p.detach().clone() for n, p in agent.actor.body.named_parameters()}
    agent.begin_task(make_sequence("cw10").tasks[1])
    assert vcl.kl().item() == 0.0  # prior = posterior at the switch
    for layer in vcl.regularized_layers:
        name = next(n.rsplit(".", 1)[0] for n, m in agent.actor.body.named_modules() if m is layer)
        assert torch.equal(layer.prior_weight_mean, posterior[f"{name}.weight_mean"])
        assert torch.equal(layer.prior_weight_logvar, posterior[f"{name}.weight_logvar"])
    # moving one weight mean by δ costs δ² / (2 σ²_prior): the KL is the distance in the prior's metric
    layer, delta = vcl.regularized_layers[1], 0.01
    with torch.no_grad():
        layer.weight_mean[0, 0] += delta
    expected = delta ** 2 / (2 * layer.prior_weight_logvar[0, 0].exp())
    assert torch.allclose(vcl.kl(), expected, rtol=1e-3)
    assert_auxiliary_loss_falls_on_the_next_task(agent, begin=False)
    # the body's LayerNorm is frozen from the second task on
    norms = [p.detach().clone() for m in vcl.body_norms for p in m.parameters()]
    agent.gradient_step()
    assert all(not p.requires_grad for m in vcl.body_norms for p in m.parameters())
    assert all(torch.equal(p, q) for p, q in zip((p for m in vcl.body_norms for p in m.parameters()), norms))
    resumed = build("vcl")  # a checkpoint keeps the priors, and the freeze
    resumed.load_state_dict(agent.state_dict())
    assert torch.equal(piece(resumed).kl(), vcl.kl())
    assert all(not p.requires_grad for m in piece(resumed).body_norms for p in m.parameters())


def test_vcl_samples_weights_at_every_forward_pass_around_the_posterior_means():
    layer = BayesianLinear(8, 4)
    x = torch.randn(5, 8)
    assert not torch.equal(layer(x), layer(x))
    with torch.no_grad():
        layer.weight_logvar.fill_(-60.0)
        layer.bias_logvar.fill_(-60.0)
    assert torch.allclose(layer(x), torch.nn.functional.linear(x, layer.weight_mean, layer.bias_mean), atol=1e-6)
    # the initial prior is N(0, 1); with first_task_kl the first task and the current head are regularised
    agent = build("vcl", first_task_kl=True)
    vcl = piece(agent)
    agent.begin_task(make_sequence("cw10").tasks[0])
    head = agent.actor.head.linear
    rows = slice(0, agent.actor.head.out_dim)
    assert torch.allclose(vcl.kl(), sum(m.kl() for m in vcl.regularized_layers) + head.kl(rows))
    assert vcl.loss({}) > 0


def test_vcl_regularises_a_single_head_like_a_body_layer():
    agent = build("vcl", multihead=False)
    vcl = piece(agent)
    head = agent.actor.head.linear
    assert head in vcl.regularized_layers
    train_task(agent, 0, 2)
    agent.begin_task(make_sequence("cw10").tasks[1])
    assert torch.equal(head.prior_weight_mean, head.weight_mean) and vcl.kl().item() == 0.0


def test_vcl_does_not_compose_with_interventions_on_plain_linear_weights():
    from crl.core import UsageError

    with pytest.raises(UsageError, match="'vcl' and 'redo' do not compose"):
        build("vcl+redo")


# -- memories and cloning ------------------------------------------------------------------------------

def assert_auxiliary_loss_falls_on_the_next_task(agent, begin: bool = True) -> None:
    """Train task 1 after moving the shared body off task 0's solution: the loss that keeps task 0
    (cloning, distillation, VCL's KL) must pull it back while task 1 trains."""
    if begin:
        agent.begin_task(make_sequence("cw10").tasks[1])
    agent.observe(transitions(256, 1, shift=1.0))
    with torch.no_grad():
        for p in agent.actor.body.parameters():
            p.add_(0.05 * torch.randn_like(p))
    losses = [agent.gradient_step()["auxiliary_loss"].item() for _ in range(60)]
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])


def test_clonex_cloning_loss_on_a_past_task_falls_while_training_a_new_task():
    agent = build("clonex", memory_per_task=128, memory_batch_size=128, bc_coef=1.0)
    train_task(agent, 0, 30)
    assert_auxiliary_loss_falls_on_the_next_task(agent)


def test_clonex_explores_with_the_earlier_head_that_returns_most():
    agent = build("clonex", start_steps=1000)
    clonex = piece(agent)
    agent.task_index = 3
    obs = torch.randn(2, OBS)
    agent.act(obs, 3, explore=True)
    assert clonex.row_heads.tolist() == [0, 1]  # each earlier head is tried
    ended = Transitions(obs=obs, action=torch.zeros(2, ACT), reward=torch.tensor([1.0, 5.0]), next_obs=obs,
                        terminated=torch.zeros(2), truncated=torch.ones(2), task_index=torch.full((2,), 3))
    agent.observe(ended)
    assert clonex.row_heads.tolist() == [2, 1]  # head 2 still untried; then the best so far (1)
    agent.observe(Transitions(**{**ended.__dict__, "reward": torch.tensor([0.0, 2.0])}))
    assert clonex.head_returns == {0: [1.0], 1: [5.0, 2.0], 2: [0.0]}
    assert clonex.row_heads.tolist() == [1, 1]


def test_kickstart_distils_the_previous_policy_on_current_states():
    agent = build("kickstart", ks_coef=1.0)
    train_task(agent, 0, 20)
    assert piece(agent).teacher_tasks == 1
    assert_auxiliary_loss_falls_on_the_next_task(agent)


def test_episodic_memory_mixes_earlier_tasks_into_every_batch():
    agent = build("episodic-memory", memory_per_task=50, memory_batch_size=16)
    train_task(agent, 0, 2)
    agent.begin_task(make_sequence("cw10").tasks[1])
    agent.observe(transitions(64, 1))
    batch = piece(agent).extend_batch(agent.sample_batch())
    assert batch["task_index"].tolist() == [1] * 32 + [0] * 16 and not batch["single_task"]
    assert agent.gradient_step()["critic_loss"] > 0


def test_reservoir_buffer_keeps_a_uniform_sample_of_everything():
    torch.manual_seed(0)
    buffer = ReplayBuffer(1, 1, 500, torch.device("cpu"), reservoir=True)
    for task in range(4):
        for _ in range(10):
            n = 100
            buffer.add(Transitions(obs=torch.zeros(n, 1), action=torch.zeros(n, 1), reward=torch.zeros(n),
                                   next_obs=torch.zeros(n, 1), terminated=torch.zeros(n), truncated=torch.zeros(n),
                                   task_index=torch.full((n,), task)))
    assert buffer.size == 500 and buffer.seen == 4000
    counts = torch.bincount(buffer.data["task_index"][:500], minlength=4)
    assert all(80 <= int(c) <= 170 for c in counts)  # ≈125 each; FIFO would hold task 3 only


def test_perfect_memory_keeps_the_buffer_across_tasks():
    cfg = make_agent_config("perfect-memory")
    assert not cfg.reset_buffer_on_task and cfg.reservoir_buffer and cfg.batch_size == 512


# -- composition and checkpoints of every method ------------------------------------------------------

def test_sac_ewc_episodic_memory_applies_the_penalty_and_the_memory_rows_in_one_update():
    agent = build("sac+ewc+episodic-memory", memory_per_task=64, memory_batch_size=16, importance_batches=1,
                  importance_batch_size=32)
    ewc, memory = piece(agent, "ewc"), piece(agent, "episodic-memory")
    train_task(agent, 0, 3)
    assert ewc.regularizer.consolidations == 1 and len(memory.memory) == 64
    agent.begin_task(make_sequence("cw10").tasks[1])
    agent.observe(transitions(64, 1, shift=1.0))
    with torch.no_grad():  # off the anchor: the penalty is positive
        for p in ewc.regularized.values():
            p.add_(0.01)
    expected_penalty = ewc.regularizer.penalty().item()
    seen = []
    real_losses = agent.losses
    agent.losses = lambda batch, capture=frozenset(): (seen.append(batch["task_index"].clone()), real_losses(batch, capture))[1]
    stats = agent.gradient_step()
    assert expected_penalty > 0 and stats["auxiliary_loss"].item() == pytest.approx(expected_penalty, rel=1e-5)
    (rows,) = seen
    assert rows.tolist() == [1] * SMALL["batch_size"] + [0] * 16  # the current task's rows, then the memory's


COMPOSABLE = ["l2", "ewc", "mas", "packnet", "agem", "episodic-memory", "vcl", "clonex", "kickstart", "arr", "redo",
              "shrink-perturb", "reset", "nap"]
EVERY_METHOD = SAC_FAMILY + ["td3"] + [f"td3+{e}" for e in COMPOSABLE] + [
    "sac+redo", "sac+shrink-perturb", "sac+reset", "sac+nap", "sac+ewc+episodic-memory", "ewc+redo+nap"]
SMALL_PIECES = {"memory_per_task": 64, "memory_batch_size": 16, "importance_batches": 1, "importance_batch_size": 32,
                "retrain_steps": 3, "redo_every": 2, "redo_tau": 0.5, "check_interval": 50, "reset_every": 5}


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a.cpu(), b.cpu())
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("name", EVERY_METHOD)
def test_every_method_restored_from_a_mid_task_checkpoint_acts_and_learns_like_the_saved_agent(name, tmp_path):
    """The checkpoint file (loaded with weights_only=True) carries everything: the restored agent holds the
    same extension state, acts the same for the same observations and RNG, and its next updates are the same."""
    from crl import checkpoint
    from crl.extension import save_state

    pieces = {k: v for k, v in SMALL_PIECES.items() if hasattr(make_agent_config(name), k)}
    agent = build(name, start_steps=40, **pieces)
    tasks = make_sequence("cw10").tasks
    train_task(agent, 0, 6)
    agent.begin_task(tasks[1])
    for _ in range(3):  # mid-task: warm-up actions, observations, scheduled updates
        obs = torch.randn(8, OBS)
        agent.act(obs, 1, explore=True)
        agent.observe(transitions(8, 1, shift=1.0))
        agent.update()
    for _ in range(4):
        agent.gradient_step()
    checkpoint.save(tmp_path, {"agent": agent.state_dict()})
    restored = build(name, start_steps=40, **{**pieces})
    torch.manual_seed(99)  # a different init: everything must come from the file
    restored.load_state_dict(checkpoint.load(tmp_path)["agent"])
    for ext, twin in zip(agent.extensions, restored.extensions):
        assert _equal(save_state(ext, ext.state), save_state(twin, twin.state)), ext.name
    obs, rows = torch.randn(8, OBS), torch.tensor([0, 1, 1, 0, 1, 0, 1, 1])
    for kwargs in ({"explore": True}, {"explore": False}, {"explore": False, "deterministic": True}):
        torch.manual_seed(5)
        expected = agent.act(obs, 1, **kwargs)
        torch.manual_seed(5)
        assert torch.equal(restored.act(obs, 1, **kwargs), expected), kwargs
    torch.manual_seed(6)
    expected = agent.act(obs, rows, explore=False)
    torch.manual_seed(6)
    assert torch.equal(restored.act(obs, rows, explore=False), expected)
    for twin in (agent, restored):
        torch.manual_seed(7)
        twin.observe(transitions(8, 1, shift=1.0))
        for _ in range(3):
            twin.gradient_step()
    for (n, p), q in zip(agent.actor.state_dict().items(), restored.actor.state_dict().values()):
        assert torch.equal(p, q), n
    for ext, twin in zip(agent.extensions, restored.extensions):
        assert _equal(save_state(ext, ext.state), save_state(twin, twin.state)), ext.name


# -- every method through the loop: train, crash, resume ---------------------------------------------

@pytest.mark.parametrize("agent_name", SAC_FAMILY)
def test_method_trains_checkpoints_and_resumes(agent_name, tmp_path, monkeypatch):
    from crl import loop as loop_module
    from crl.config import build_config

    cfg = build_config("cw2", agent_name, preset="smoke", backend="gymnasium")
    cfg.train.eval_episodes, cfg.train.eval_every = 1, 400
    run_dir = tmp_path / agent_name
    real_advance = loop_module.ContinualLoop._advance

    def crashing_advance(self, task, n):
        if self.state.global_step >= 500:
            raise RuntimeError("simulated crash")
        return real_advance(self, task, n)

    monkeypatch.setattr(loop_module.ContinualLoop, "_advance", crashing_advance)
    with pytest.raises(RuntimeError, match="simulated crash"):
        loop_module.train(cfg, run_dir, quiet=True)
    monkeypatch.setattr(loop_module.ContinualLoop, "_advance", real_advance)
    _, results = loop_module.resume(run_dir, quiet=True)
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["finished"] and saved["agent"] == agent_name and saved["steps"] == 800
    assert len(saved["retention_matrix"]) == 2


def test_every_sac_method_measures_forward_transfer_against_single_task_sac(tmp_path):
    from crl.results import find_references

    def reference(name: str, agent: str, curve: list[float]) -> None:
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({
            "kind": "reference", "agent": agent, "steps_per_task": 100, "reference_curves": {"reach-v3": curve}}))

    reference("ref_sac", "sac", [0.0, 1.0])
    refs, used = find_references(tmp_path / "ewc_run", "ewc", 100)
    assert used == ["ref_sac"] and refs["reach-v3"] > 0
    reference("ref_ewc", "ewc", [0.0, 0.0])  # the method's own references win when they exist
    refs, used = find_references(tmp_path / "ewc_run", "ewc", 100)
    assert used == ["ref_ewc"] and refs["reach-v3"] == 0
    assert find_references(tmp_path / "l2m_run", "l2m", 100) == ({}, [])

"""Parity of ClonEx-SAC and kickstarting with the authors' code, on identical weights and batches.

The reference formulas below are written in torch from the authors' code (read, not installed: TF is
not needed):
- ClonEx-SAC (Wołczyk et al., NeurIPS 2022): ``arczi21/continualworld-ppo`` @7032449 (the authors'
  Continual World branch): ``continualworld/methods/episodic_replay.py`` (``kl_divergence``,
  ``behavioral_cloning_gradients``, ``merge_gradients``, ``on_task_start``), ``continualworld/sac/sac.py``
  (``learn_on_batch``: clip_by_global_norm per network after ``adjust_gradients``; new Adams at each task
  change), ``continualworld/sac/models.py`` (``MlpActor.call``: the mean it returns is tanh(μ)·scale,
  log σ clipped to [−20, 2]), ``continualworld/sac/exploration.py`` (``ExplorationHelper``, "best_return").
- Kickstarting (Wołczyk et al., ICML 2024): ``BartekCupial/finetuning-RL-as-CL`` @390d204,
  ``sf_examples/nethack/algo/learning/learner.py`` (``_kickstarting_loss``; the coefficient multiplied by
  ``kickstarting_loss_decay`` after every optimiser step). Its KL is between categorical policies; the
  same direction and reductions are checked here on crl's Gaussian actor.
The paper's Meta-World code for episodic memory (and for KS on SAC) is not public; the episodic-memory
test pins crl's own (documented) batch composition.
"""

from __future__ import annotations

import copy
import random

import pytest
import torch

from crl.core import Transitions
from crl.envs import make_sequence

from test_continual import ACT, OBS, transitions
from test_continual import build as build_small


def build(name: str, **overrides):
    """test_continual's small agent (its OBS, ACT, 3 tasks), plasticity probes off (no captures mid-check)."""
    return build_small(name, plasticity_every=0, **overrides)


def log_std_bias(agent) -> torch.Tensor:
    """A view of the log σ biases of every actor head (crl.nets.MultiHead: heads × [μ | log σ])."""
    return agent.actor.head.linear.bias.view(agent.num_heads, 2 * ACT)[:, ACT:]


def finish_task_0(agent, steps: int = 5) -> torch.nn.Module:
    """Train task 0 briefly, give the actor CW-like small σ (log σ ≈ −3, where the reference's ε on σ shows),
    end the task (the methods take their memory / teacher), and start task 1 on moved weights.
    Returns a copy of the actor as task 0 ended."""
    seq = make_sequence("cw10")
    agent.begin_task(seq.tasks[0])
    agent.observe(transitions(256, 0))
    for _ in range(steps):
        agent.gradient_step()
    with torch.no_grad():
        log_std_bias(agent).fill_(-3.0)
    agent.end_task(seq.tasks[0])
    finished = copy.deepcopy(agent.actor)
    agent.begin_task(seq.tasks[1])
    agent.observe(transitions(256, 1, shift=1.0))
    with torch.no_grad():  # the body moves off task 0's solution: the cloning term has something to pull back
        for p in agent.actor.body.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return finished


def reference_actor(agent, actor, obs: torch.Tensor, task_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CW's ``MlpActor.call`` on ``actor``'s weights: (tanh(μ)·action_scale, log σ clipped to [−20, 2]); scale 1."""
    out = actor.head(actor.body(agent.policy_input(obs, task_index)), agent.heads(task_index))
    mu, log_std = out.split(ACT, -1)
    return torch.tanh(mu) * 1.0, log_std.clamp(-20.0, 2.0)


def reference_kl(first_mu, first_logstd, second_mu, second_logstd):
    """``Episodic_SAC.kl_divergence``: KL(first ‖ second), ε = 1e-6 added to σ before squaring."""
    eps = 1e-6
    first_var = (torch.exp(first_logstd) + eps) ** 2
    second_var = (torch.exp(second_logstd) + eps) ** 2
    logstd_term = second_logstd - first_logstd
    mu_term = (first_var + (first_mu - second_mu) ** 2) / (2 * second_var)
    return torch.sum(logstd_term + mu_term - 0.5, -1)


def clip_by_global_norm(grads: list[torch.Tensor], clip: float) -> list[torch.Tensor]:
    """``tf.clip_by_global_norm``: g · clip / max(‖g‖, clip)."""
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
    return [g * clip / torch.maximum(norm, torch.tensor(clip)) for g in grads]


def assert_float32_close(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    """Equal to float32 rounding: per tensor, within 2e-6 of its largest element (sums over a batch)."""
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=2e-6 * w.abs().max().item())


def grads_of(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [g if g is not None else torch.zeros_like(p)
            for g, p in zip(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True), params)]


# -- ClonEx-SAC ---------------------------------------------------------------------------------------

def test_clonex_cloning_loss_and_its_gradient_equal_the_reference_on_the_squashed_mean():
    agent = build("clonex", memory_per_task=256, memory_batch_size=128)
    finished = finish_task_0(agent)
    clonex = agent.extensions[0]
    # the reference stores actor(obs) of the finished task, its squashed mean and log σ (on_task_start)
    with torch.no_grad():
        stored = clonex.memory.data
        target_mu, target_logstd = reference_actor(agent, finished, stored["obs"], stored["task_index"])
    torch.manual_seed(7)
    loss = clonex.loss(agent.sample_batch())
    torch.manual_seed(7)
    agent.sample_batch()  # the same draws: the replay batch, then the memory batch
    rows = torch.randint(0, len(clonex.memory), (128,))
    mu, logstd = reference_actor(agent, agent.actor, stored["obs"][rows], stored["task_index"][rows])
    reference = 100.0 * torch.mean(reference_kl(target_mu[rows], target_logstd[rows], mu, logstd))

    params = list(agent.actor.parameters())
    assert loss.item() > 1.0  # the moved body gives the KL's mean term weight
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=0)
    assert_float32_close(grads_of(loss, params), grads_of(reference, params))


def test_clonex_step_clips_the_mean_of_the_sac_and_cloning_actor_gradients_and_leaves_the_critics_alone():
    agent = build("clonex", memory_per_task=256, memory_batch_size=128, clip_grad_norm=None)
    finish_task_0(agent)
    clonex = agent.extensions[0]
    actor, critics = list(agent.actor.parameters()), list(agent.critics.parameters())
    cpu_rng = torch.get_rng_state()
    batch = agent.sample_batch()
    sac_loss, _ = agent.losses(batch)
    cloning = clonex.loss(batch)
    sac_actor, bc_actor = grads_of(sac_loss, actor), grads_of(cloning, actor)
    sac_critic = grads_of(sac_loss, critics)
    merged = [(g + r) / 2 for g, r in zip(sac_actor, bc_actor)]  # merge_gradients
    norm = torch.sqrt(sum((g ** 2).sum() for g in merged)).item()
    clip = 1.5 * norm  # between ‖merged‖ and ‖g_SAC + g_BC‖ = 2‖merged‖: clipping only if not averaged first
    agent.cfg.clip_grad_norm = clip

    torch.set_rng_state(cpu_rng)
    agent.gradient_step()
    assert_float32_close([p.grad for p in actor], clip_by_global_norm(merged, clip))
    assert_float32_close([p.grad for p in critics], clip_by_global_norm(sac_critic, clip))


def test_clonex_memory_keeps_buffer_states_with_the_finished_tasks_own_head_outputs():
    agent = build("clonex", memory_per_task=300)
    seq = make_sequence("cw10")
    agent.begin_task(seq.tasks[0])
    stored = transitions(256, 0)
    agent.observe(stored)
    agent.end_task(seq.tasks[0])
    kept = agent.extensions[0].memory.data
    assert kept["obs"].shape[0] == 300  # 300 draws from 256 transitions: with replacement, as sample_batch
    assert (kept["obs"][:, None] == stored.obs[None]).all(-1).any(1).all()  # every row one of the task's states
    # the reference stores actor(obs) with the finished task's one-hot: its own head (here: pre-tanh μ, log σ)
    mu, log_std = agent.actor.distribution(agent.policy_input(kept["obs"], 0), agent.heads(0))
    torch.testing.assert_close(kept["mu"], mu, rtol=0, atol=0)
    torch.testing.assert_close(kept["log_std"], log_std, rtol=0, atol=0)
    assert kept["task_index"].eq(0).all()


def test_clonex_adam_restarts_its_step_counter_at_a_task_switch():
    agent = build("clonex", memory_per_task=64)
    finish_task_0(agent, steps=20)  # 20 steps on task 0; begin_task(1) must give a fresh Adam
    for state in agent.optimizer.state.values():
        assert float(state["step"]) == 0.0
        assert not state["exp_avg"].any() and not state["exp_avg_sq"].any()


def reference_best_return_heads(returns_by_head: dict[int, list[float]], num_previous: int, episodes: int) -> list[int]:
    """``ExplorationHelper`` with kind "best_return": an unused previous head first (index order), then
    argmax over heads of the mean return of all their exploration episodes (np.argmax: first maximum)."""
    episode_returns: list[list[float]] = [[] for _ in range(num_previous)]
    draws = {h: iter(r) for h, r in returns_by_head.items()}
    chosen = []
    for _ in range(episodes):
        unused = [i for i in range(num_previous) if not episode_returns[i]]
        if unused:
            head = unused[0]
        else:
            means = [sum(r) / len(r) for r in episode_returns]
            head = means.index(max(means))
        chosen.append(head)
        episode_returns[head].append(next(draws[head]))
    return chosen


def test_clonex_best_return_exploration_picks_the_heads_the_reference_picks_with_one_env():
    agent = build("clonex", start_steps=10_000)
    clonex = agent.extensions[0]
    agent.task_index, agent.task_steps = 3, 0
    rng = random.Random(0)
    returns = {h: [rng.uniform(0, 10) for _ in range(40)] for h in range(3)}
    returns[1][:3] = [9.0, 1.0, 0.5]  # head 1 leads after its first episode, then falls behind
    draws = {h: iter(r) for h, r in returns.items()}
    obs, chosen = torch.randn(1, OBS), []
    for _ in range(30):
        agent.act(obs, 3, explore=True)
        head = int(clonex.row_heads[0])
        chosen.append(head)
        agent.task_steps += 1
        clonex.observe(Transitions(obs=obs, action=torch.zeros(1, ACT), reward=torch.tensor([next(draws[head])]),
                                   next_obs=obs, terminated=torch.zeros(1), truncated=torch.ones(1),
                                   task_index=torch.full((1,), 3)))
    assert chosen == reference_best_return_heads(returns, 3, 30)
    assert len(set(chosen[3:])) > 1  # the best head changed along the way: the mean decides, not the first return


# -- kickstarting -------------------------------------------------------------------------------------

@pytest.mark.parametrize("ks_mean", ["pre_tanh", "squashed"])
def test_kickstart_loss_is_the_decayed_coefficient_times_the_batch_mean_of_kl_teacher_to_student(ks_mean):
    agent = build("kickstart", ks_coef=0.75, ks_decay=0.99, ks_mean=ks_mean)
    finish_task_0(agent)
    kickstart = agent.extensions[0]
    with torch.no_grad():  # the student's σ moves away from the teacher's: the KL's direction shows
        log_std_bias(agent).add_(0.7)
    for _ in range(3):
        agent.gradient_step()
    torch.manual_seed(3)
    batch = agent.sample_batch()
    loss = kickstart.loss(batch)
    torch.manual_seed(3)
    batch = agent.sample_batch()
    heads = torch.randint(0, 1, (batch["obs"].shape[0],))
    x = agent.policy_input(batch["obs"], heads)
    with torch.no_grad():
        mu_t, log_std_t = kickstart.teacher.distribution(x, agent.heads(heads))
    mu, log_std = agent.actor.distribution(x, agent.heads(heads))
    if ks_mean == "squashed":
        mu_t, mu = torch.tanh(mu_t), torch.tanh(mu)
    teacher = torch.distributions.Normal(mu_t, log_std_t.exp())
    student = torch.distributions.Normal(mu, log_std.exp())
    # _kickstarting_loss: kl_div(log π_student, log π_teacher, log_target=True) = KL(teacher ‖ student),
    # summed over the action's dimensions, × the coefficient, mean over the batch; coefficient × decay per step
    reference = (torch.distributions.kl_divergence(teacher, student).sum(1) * (0.75 * 0.99 ** 3)).mean()
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=0)
    params = list(agent.actor.parameters())
    assert_float32_close(grads_of(loss, params), grads_of(reference, params))


# -- episodic memory (no reference code: pins crl's documented batch composition) ---------------------

def test_episodic_memory_adds_a_fixed_number_of_memory_rows_whatever_the_buffer_sizes():
    agent = build("episodic-memory", memory_per_task=500, memory_batch_size=16)
    finish_task_0(agent)  # 256 transitions of task 1 in the buffer, 500 of task 0 in the memory
    batch = agent.extensions[0].extend_batch(agent.sample_batch())
    assert batch["task_index"].tolist() == [1] * 32 + [0] * 16  # not a share proportional to 500 : 256

"""Continual World's baselines compute what Continual World's code computes (issue 24).

Each test copies a crl agent's weights into the layout of CW's TF2 classes (awarelab/continual_world
@73f63bb: ``sac/models.py`` kernels (in, out), separate ``head_mu``/``head_log_std`` whose columns are
``a·num_heads + h``; one Keras model per critic) and evaluates CW's formulas, transcribed from its TF
code into torch (no TF needed), on the same batches: EWC's and MAS's importances, the L2/EWC/MAS
penalty and its gradient, PackNet's pruning, masks, views and clipped gradients, A-GEM's projection,
VCL's KL, the forward passes (Keras' LayerNorm ε) and Adam's step (Keras' ε). Where crl departs on
purpose, a test pins the departure.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import jacrev

from crl.registry import agent_class, make_agent_config
from crl.continual import agem_project
from crl.core import Transitions
from crl.envs import make_sequence

OBS, ACT, TASKS = 12, 4, 3  # CW's v1 observation (MW_OBS_LEN), 4-d actions
HIDDEN = (16, 16, 16)
SMALL = {"hidden_sizes": HIDDEN, "batch_size": 16, "start_steps": 0, "update_after": 10 ** 9,
         "importance_batches": 2, "importance_batch_size": 16}
TOL = {"rtol": 1e-5, "atol": 1e-7}  # float32 rounding of the same sums in another order
KERAS_LN_EPS = 1e-3  # tf.keras.layers.LayerNormalization() default (sac/models.py:44)
KERAS_ADAM_EPS = 1e-7  # tf.keras.optimizers.Adam default (sac/sac.py:184)


def build(name: str, **overrides):
    torch.manual_seed(0)
    cfg = make_agent_config(name)
    for key, value in {**SMALL, **overrides}.items():
        if hasattr(cfg, key):
            setattr(cfg, key, value)
    return agent_class(name)(OBS, ACT, TASKS, cfg, torch.device("cpu"))


def transitions(n: int, task: int, scale: float = 1.0) -> Transitions:
    return Transitions(obs=torch.randn(n, OBS) * scale, action=torch.rand(n, ACT) * 2 - 1, reward=torch.randn(n),
                       next_obs=torch.randn(n, OBS) * scale, terminated=torch.zeros(n), truncated=torch.zeros(n),
                       task_index=torch.full((n,), task))


def saturate(agent, gain: float = 4.0) -> None:
    """Scale the actor's μ rows so tanh(μ) saturates in part, as a trained policy's does (CW's squashing
    then differs from the pre-tanh form; at initialisation they nearly agree)."""
    with torch.no_grad():
        head = agent.actor.head.linear
        rows = head.weight.view(agent.num_heads, 2, ACT, -1)
        rows[:, 0].mul_(gain)


def start_task(agent, index: int, n: int = 64) -> None:
    agent.begin_task(make_sequence("cw10").tasks[index])
    agent.observe(transitions(n, index))


# -- CW's networks in torch, in CW's layout ---------------------------------------------------------

def keras_layer_norm(x, gamma, beta, eps=KERAS_LN_EPS):
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) * torch.rsqrt(var + eps) * gamma + beta


def cw_mlp(p: dict, x: torch.Tensor, prefix: str, depth: int) -> torch.Tensor:
    """``sac/models.py:mlp`` with ``use_layer_norm=True``: Dense → LayerNorm → tanh, then Dense + LeakyReLU(0.2)."""
    h = x @ p[f"{prefix}core.0.kernel"] + p[f"{prefix}core.0.bias"]
    h = torch.tanh(keras_layer_norm(h, p[f"{prefix}core.ln.gamma"], p[f"{prefix}core.ln.beta"]))
    for i in range(1, depth):
        h = F.leaky_relu(h @ p[f"{prefix}core.{i}.kernel"] + p[f"{prefix}core.{i}.bias"], 0.2)
    return h


def choose_head(out: torch.Tensor, task: int, num_heads: int) -> torch.Tensor:
    """``_choose_head``: (batch, out·num_heads) → (batch, out) with the task's one-hot."""
    one_hot = F.one_hot(torch.full((out.shape[0],), task), num_heads).float()
    return (out.reshape(out.shape[0], -1, num_heads) @ one_hot[:, :, None]).squeeze(2)


def cw_actor(p: dict, x: torch.Tensor, task: int, num_heads: int, squash=torch.tanh):
    """``MlpActor.call``: (squashed μ·action_scale, clipped log σ); action_scale = 1 (actions in [−1, 1]).
    ``squash`` replaced by the identity gives the pre-tanh form (crl's ``fisher=gaussian``), not CW's."""
    h = cw_mlp(p, x, "actor.", len(HIDDEN))
    mu = h @ p["actor.head_mu.kernel"] + p["actor.head_mu.bias"]
    log_std = h @ p["actor.head_log_std.kernel"] + p["actor.head_log_std.bias"]
    if num_heads > 1:
        mu, log_std = choose_head(mu, task, num_heads), choose_head(log_std, task, num_heads)
    log_std = log_std.clamp(-20, 2)
    return squash(mu) * 1.0, log_std


def cw_critic(p: dict, k: int, x: torch.Tensor, a: torch.Tensor, task: int, num_heads: int) -> torch.Tensor:
    """``MlpCritic.call`` of critic ``k`` (1 or 2)."""
    h = cw_mlp(p, torch.cat([x, a], -1), f"critic{k}.", len(HIDDEN))
    q = h @ p[f"critic{k}.head.kernel"] + p[f"critic{k}.head.bias"]
    if num_heads > 1:
        q = choose_head(q, task, num_heads)
    return q.squeeze(1)


def to_cw(agent) -> tuple[dict, dict]:
    """CW-layout copies of the agent's actor and critics: ({cw name: leaf tensor}, {cw name: crl name, index
    function from a crl tensor to the CW tensor})."""
    H = agent.num_heads
    actor, critics = dict(agent.actor.named_parameters()), dict(agent.critics.named_parameters())
    linears = [i for i, m in enumerate(agent.actor.body) if isinstance(m, torch.nn.Linear)]
    norm = next(i for i, m in enumerate(agent.actor.body) if isinstance(m, torch.nn.LayerNorm))
    maps = {}
    for j, i in enumerate(linears):
        maps[f"actor.core.{j}.kernel"] = (f"body.{i}.weight", lambda t: t.T)
        maps[f"actor.core.{j}.bias"] = (f"body.{i}.bias", lambda t: t)
    maps["actor.core.ln.gamma"] = (f"body.{norm}.weight", lambda t: t)
    maps["actor.core.ln.beta"] = (f"body.{norm}.bias", lambda t: t)
    for part, name in ((0, "head_mu"), (1, "head_log_std")):
        # crl: rows h·2A + part·A + a; CW: columns a·H + h
        maps[f"actor.{name}.kernel"] = (
            "head.linear.weight",
            lambda t, part=part: t.view(H, 2, ACT, -1)[:, part].permute(1, 0, 2).reshape(ACT * H, -1).T)
        maps[f"actor.{name}.bias"] = (
            "head.linear.bias", lambda t, part=part: t.view(H, 2, ACT)[:, part].T.reshape(-1))
    last = len(HIDDEN)
    for k in (1, 2):
        for j in range(last):
            maps[f"critic{k}.core.{j}.kernel"] = (f"net.weights.{j}", lambda t, k=k: t[k - 1])
            maps[f"critic{k}.core.{j}.bias"] = (f"net.biases.{j}", lambda t, k=k: t[k - 1, 0])
        maps[f"critic{k}.core.ln.gamma"] = ("net.norm_weight", lambda t, k=k: t[k - 1, 0])
        maps[f"critic{k}.core.ln.beta"] = ("net.norm_bias", lambda t, k=k: t[k - 1, 0])
        maps[f"critic{k}.head.kernel"] = (f"net.weights.{last}", lambda t, k=k: t[k - 1])
        maps[f"critic{k}.head.bias"] = (f"net.biases.{last}", lambda t, k=k: t[k - 1, 0])
    params = {}
    for cw_name, (crl_name, f) in maps.items():
        source = actor if cw_name.startswith("actor.") else critics
        params[cw_name] = f(source[crl_name].detach()).clone()
    return params, maps


def crl_as_cw(maps: dict, tensors: dict[str, torch.Tensor], prefix_of: dict[str, str]) -> dict[str, torch.Tensor]:
    """CW-layout views of crl tensors keyed like the agent's parameters (``prefix_of``: CW network → crl key
    prefix, e.g. {"actor.": "", "critic": "critics."})."""
    out = {}
    for cw_name, (crl_name, f) in maps.items():
        prefix = next(v for k, v in prefix_of.items() if cw_name.startswith(k))
        if prefix + crl_name in tensors:
            out[cw_name] = f(tensors[prefix + crl_name])
    return out


def common_variables(params: dict, num_heads: int, critic: bool = False) -> list[str]:
    """``MlpActor/MlpCritic.common_variables``: the core, and with one head the head too."""
    nets = ("actor.", "critic1.", "critic2.") if critic else ("actor.",)
    return [n for n in params if n.startswith(nets) and (num_heads == 1 or ".core." in n)]


# -- CW's importances (methods/ewc.py, methods/mas.py) ----------------------------------------------

def cw_ewc_weights(p: dict, names: list[str], x, a, task, num_heads, regularize_critic=False,
                   squash=torch.tanh) -> dict:
    """``EWC_SAC._get_importance_weights`` on one batch."""
    actor_names = [n for n in names if n.startswith("actor.")]

    def mu(chosen):
        return cw_actor({**p, **chosen}, x, task, num_heads, squash)[0]

    def std(chosen):
        return cw_actor({**p, **chosen}, x, task, num_heads)[1].exp()

    chosen = {n: p[n] for n in actor_names}
    mu_gs, std_gs = jacrev(mu)(chosen), jacrev(std)(chosen)
    s = std(chosen)
    out = {}
    for n in actor_names:
        broad_std = s.reshape(*s.shape, *([1] * (mu_gs[n].dim() - s.dim())))
        fisher = 1 / (broad_std ** 2 + 1e-6) * (mu_gs[n] ** 2 + 2 * std_gs[n] ** 2)
        out[n] = fisher.sum(1).clamp_min(1e-5).mean(0)
    for k in (1, 2):
        critic_names = [n for n in names if n.startswith(f"critic{k}.")]
        q_gs = jacrev(lambda c, k=k: cw_critic({**p, **c}, k, x, a, task, num_heads))({n: p[n] for n in critic_names})
        for n in critic_names:
            out[n] = (1.0 if regularize_critic else 0.0) * (q_gs[n] ** 2).mean(0)
    return out


def cw_mas_weights(p: dict, names: list[str], x, a, task, num_heads, regularize_critic=False,
                   squash=torch.tanh) -> dict:
    """``MAS_SAC._get_importance_weights`` on one batch."""
    actor_names = [n for n in names if n.startswith("actor.")]

    def norm(chosen):
        mu, log_std = cw_actor({**p, **chosen}, x, task, num_heads, squash)
        return (mu ** 2).sum(-1) + (log_std ** 2).sum(-1)

    gs = jacrev(norm)({n: p[n] for n in actor_names})
    out = {n: gs[n].abs().mean(0) for n in actor_names}
    for k in (1, 2):
        critic_names = [n for n in names if n.startswith(f"critic{k}.")]
        q_gs = jacrev(lambda c, k=k: cw_critic({**p, **c}, k, x, a, task, num_heads) ** 2)(
            {n: p[n] for n in critic_names})
        for n in critic_names:
            out[n] = (1.0 if regularize_critic else 0.0) * q_gs[n].abs().mean(0)
    return out


def measured(agent, method: str, cw_weights, seed: int = 7, **kw):
    """crl's importance after task 0 (the extension's own path: its buffer batches) and CW's on the same
    batches (the same draws of the replay buffer), both in CW's layout."""
    ext = agent.extensions[0]
    torch.manual_seed(seed)
    got = ext.importance(0)
    torch.manual_seed(seed)
    batches = [agent.buffer.sample(ext.cfg.importance_batch_size) for _ in range(ext.cfg.importance_batches)]
    p, maps = to_cw(agent)
    names = common_variables(p, agent.num_heads, critic=True)
    per_batch = [cw_weights(p, names, b["obs"], b["action"], 0, agent.num_heads, **kw) for b in batches]
    want = {n: torch.stack([w[n] for w in per_batch]).mean(0) for n in names}
    return crl_as_cw(maps, got, {"actor.": "", "critic": "critics."}), want


@pytest.mark.parametrize("multihead", [True, False])
@pytest.mark.parametrize("method", ["ewc", "mas"])
def test_importances_equal_cws_on_the_squashed_mean(method, multihead):
    """EWC's Fisher and MAS's sensitivity as CW computes them: on tanh(μ) with the unsquashed log σ, over
    the common variables (the head too with one head); a partly saturated policy, where the pre-tanh form
    would give larger numbers."""
    agent = build(method, multihead=multihead)
    saturate(agent)
    start_task(agent, 0)
    got, want = measured(agent, method, cw_ewc_weights if method == "ewc" else cw_mas_weights)
    actor_want = {n: w for n, w in want.items() if n.startswith("actor.")}
    assert set(got) == set(actor_want)  # the head exactly when there is one head; no critic
    for n, w in actor_want.items():
        assert torch.allclose(got[n], w, **TOL), (n, (got[n] - w).abs().max())


@pytest.mark.parametrize("method", ["ewc", "mas"])
def test_gaussian_fisher_option_is_the_pre_tanh_form_and_larger_on_a_saturated_policy(method):
    """``fisher=gaussian`` (crl's former default) differentiates the pre-tanh μ: CW's formula with the
    squashing removed, not CW's numbers (the departure this option names)."""
    agent = build(method, fisher="gaussian")
    saturate(agent)
    start_task(agent, 0)
    weigh = cw_ewc_weights if method == "ewc" else cw_mas_weights
    got, pre_tanh = measured(agent, method, weigh, squash=lambda mu: mu)  # CW's formula with tanh(μ) → μ
    _, squashed = measured(agent, method, weigh)
    for n in got:
        assert torch.allclose(got[n], pre_tanh[n], **TOL), n
    ratio = sum(float(got[n].sum()) for n in got) / sum(float(squashed[n].sum()) for n in got)
    assert ratio > 1.1  # the pre-tanh importances are larger where tanh saturates


@pytest.mark.parametrize("method", ["ewc", "mas"])
def test_regularize_critic_measures_cws_critic_importances(method):
    """With ``regularize_critic`` the critics' common variables get CW's importances: mean (∂Q/∂θ)² (EWC),
    mean |∂Q²/∂θ| (MAS), on the batch's own actions, each critic on its own."""
    agent = build(method, regularize_critic=True)
    start_task(agent, 0)
    got, want = measured(agent, method, cw_ewc_weights if method == "ewc" else cw_mas_weights,
                         regularize_critic=True)
    critic_names = [n for n in want if n.startswith("critic")]
    assert set(critic_names) <= set(got) and len(critic_names) == 2 * (2 * len(HIDDEN) + 2)  # heads excluded
    for n in critic_names:
        assert torch.allclose(got[n], want[n], **TOL), (n, (got[n] - want[n]).abs().max())


# -- the penalty and its gradient (methods/regularization.py) -----------------------------------------

def cw_penalty_gradients(p: dict, names: list[str], anchors: dict, weights: dict, coef: float) -> tuple:
    """``Regularization_SAC._regularize`` × cl_reg_coef, and its gradient w.r.t. the variables."""
    leaves = {n: p[n].clone().requires_grad_() for n in names}
    loss = coef * sum((weights[n] * (leaves[n] - anchors[n]) ** 2).sum() for n in names)
    grads = torch.autograd.grad(loss, [leaves[n] for n in names])
    return loss.detach(), dict(zip(names, grads))


@pytest.mark.parametrize("regularize_critic", [False, True])
@pytest.mark.parametrize("multihead", [True, False])
@pytest.mark.parametrize("method", ["l2", "ewc", "mas"])
def test_penalty_and_its_gradient_equal_cws(method, multihead, regularize_critic):
    """λ·Σ w (θ − θ*)² over CW's common variables (the head too with one head; the critics only with
    ``regularize_critic``), w CW's importance of task 0, θ* the weights at the switch; the gradient that
    reaches every actor and critic parameter equals CW's."""
    agent = build(method, multihead=multihead, regularize_critic=regularize_critic, reg_coef=3.0)
    saturate(agent)
    start_task(agent, 0)
    ext = agent.extensions[0]
    torch.manual_seed(7)
    agent.end_task(make_sequence("cw10").tasks[0])  # consolidates task 0's importance
    torch.manual_seed(7)
    batches = [agent.buffer.sample(ext.cfg.importance_batch_size) for _ in range(ext.cfg.importance_batches)]
    anchors, maps = to_cw(agent)
    names = common_variables(anchors, agent.num_heads, critic=True)
    if method == "l2":  # L2_SAC._update_reg_weights: ones, the critics' zeros unless regularize_critic
        cw_weights = {n: torch.ones_like(anchors[n]) * (1.0 if regularize_critic or n.startswith("actor.") else 0.0)
                      for n in names}
    else:
        weigh = cw_ewc_weights if method == "ewc" else cw_mas_weights
        per_batch = [weigh(anchors, names, b["obs"], b["action"], 0, agent.num_heads, regularize_critic)
                     for b in batches]
        cw_weights = {n: torch.stack([w[n] for w in per_batch]).mean(0) for n in names}
    with torch.no_grad():  # move every parameter off the anchor
        for param in [*agent.actor.parameters(), *agent.critics.parameters()]:
            param.add_(torch.randn_like(param) * 0.05)
    moved, _ = to_cw(agent)
    want_loss, want_grads = cw_penalty_gradients(moved, names, anchors, cw_weights, 3.0)

    penalty = ext.loss({})
    agent.optimizer.zero_grad(set_to_none=True)
    penalty.backward()
    assert penalty.item() == pytest.approx(want_loss.item(), rel=1e-5)
    grads = {n: p.grad if p.grad is not None else torch.zeros_like(p) for n, p in agent.actor.named_parameters()}
    grads.update({"critics." + n: p.grad if p.grad is not None else torch.zeros_like(p)
                  for n, p in agent.critics.named_parameters()})
    got = crl_as_cw(maps, grads, {"actor.": "", "critic": "critics."})
    for n, g in got.items():
        w = want_grads.get(n, torch.zeros_like(g))  # not a common variable: CW's penalty has no gradient there
        assert torch.allclose(g, w, **TOL), (n, (g - w).abs().max())


def test_unknown_fisher_convention_is_a_usage_error():
    from crl.core import UsageError

    with pytest.raises(UsageError, match="unknown fisher 'exact'; allowed: squashed, gaussian"):
        build("ewc", fisher="exact")


# -- PackNet (methods/packnet.py) ---------------------------------------------------------------------

def cw_prune(kernels: dict, owners: dict, prune_perc: float, seq_idx: int) -> None:
    """``PackNet_SAC._prune``, in place, over CW's kernels."""
    for n, v in kernels.items():
        owner = owners[n]
        vals = v[owner == seq_idx].abs().sort().values
        threshold = vals[int(vals.numel() * prune_perc)]
        keep = (v.abs() > threshold) | (owner != seq_idx)
        v.mul_(keep.float())
        owners[n] = owner * keep.long() + (seq_idx + 1) * (~keep).long()


def cw_packnet_managed(p: dict, num_heads: int, regularize_critic: bool) -> list[str]:
    """The variables CW's PackNet manages: the actor (only its core with several heads), the critics too with
    ``regularize_critic``."""
    nets = ("actor.", "critic1.", "critic2.") if regularize_critic else ("actor.",)
    return [n for n in p if n.startswith(nets) and (num_heads == 1 or ".core." in n)]


@pytest.mark.parametrize("regularize_critic", [False, True])
@pytest.mark.parametrize("multihead", [True, False])
def test_packnet_prunes_masks_and_clips_as_cw(multihead, regularize_critic):
    """Two prunes (tasks 0 and 1 of 3), then a gradient step of task 2: the kept weights, owners and each task's
    evaluation view equal CW's; the masked and clipped gradients equal CW's ``_adjust_gradients_list`` then
    ``clip_by_global_norm`` per network, up to torch's 1e-6 in ``clip_grad_norm_``'s divisor."""
    agent = build("packnet", multihead=multihead, regularize_critic=regularize_critic, retrain_steps=0)
    masks = agent.extensions[0].masks
    p, maps = to_cw(agent)
    managed = cw_packnet_managed(p, agent.num_heads, regularize_critic)
    kernels = {n: p[n] for n in managed if n.endswith("kernel")}
    owners = {n: torch.zeros_like(v, dtype=torch.long) for n, v in kernels.items()}
    prefixes = {"actor.": "", "critic": "critics."}
    for task, fraction in ((0, 2 / 3), (1, 1 / 2)):
        with torch.no_grad():  # the task's training moved its weights: new values on both sides
            for param in masks.matrices.values():
                param.add_(torch.randn_like(param) * 0.1)
        p_now, _ = to_cw(agent)
        for n in kernels:
            kernels[n] = p_now[n]
        masks.prune(task, fraction)
        cw_prune(kernels, owners, fraction, task)
        got_w = crl_as_cw(maps, dict(masks.matrices), prefixes)
        got_owner = crl_as_cw(maps, masks.owner, prefixes)
        assert set(got_w) == set(kernels)  # exactly CW's managed kernels
        for n in kernels:
            assert torch.equal(got_owner[n], owners[n]), n
            assert torch.equal(got_w[n], kernels[n]), n
    for view_task in (0, 1, 2):
        got_view = crl_as_cw(maps, masks.view(view_task), prefixes)
        for n in kernels:  # _set_view: v · (owner <= seq_idx)
            assert torch.equal(got_view[n], kernels[n] * (owners[n] <= view_task).float()), n

    start_task(agent, 2)  # the extension's begin_phase froze biases and LayerNorm after task 0; here by hand
    masks.freeze_others = True
    batch = agent.sample_batch()
    loss, _ = agent.losses(batch)
    agent.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    raw = {n: q.grad.clone() for n, q in agent.actor.named_parameters()}
    raw.update({"critics." + n: q.grad.clone() for n, q in agent.critics.named_parameters()})
    raw_alpha = agent.log_alpha.grad.clone()
    agent.extensions[0].adjust_gradients(batch)
    agent.clip_gradients()
    got = {n: q.grad for n, q in agent.actor.named_parameters()}
    got.update({"critics." + n: q.grad for n, q in agent.critics.named_parameters()})

    cw_raw = crl_as_cw(maps, raw, prefixes)
    adjusted = {}
    for n, g in cw_raw.items():  # _adjust_gradients_list
        if n in managed and n.endswith("kernel"):
            adjusted[n] = g * (owners[n] == 2).float()
        elif n in managed:
            adjusted[n] = g * 0.0  # freeze_biases_and_normalization
        else:
            adjusted[n] = g
    clip = agent.cfg.clip_grad_norm
    assert clip == 2e-5
    for net in (("actor.",), ("critic1.", "critic2.")):  # clip_by_global_norm(actor), (critics)
        names = [n for n in adjusted if n.startswith(net)]
        norm = torch.sqrt(sum((adjusted[n] ** 2).sum() for n in names))
        assert norm > clip  # clipping is active
        for n in names:  # torch divides by (norm + 1e-6), TF by norm: 1e-6/norm relative, below float32 rounding here
            adjusted[n] = adjusted[n] * clip / torch.maximum(norm, torch.tensor(clip)) * norm / (norm + 1e-6)
    got_cw = crl_as_cw(maps, got, prefixes)
    for n in adjusted:
        assert torch.allclose(got_cw[n], adjusted[n], rtol=1e-5, atol=1e-12), (n, (got_cw[n] - adjusted[n]).abs().max())
    alpha_norm = float(raw_alpha.norm())  # clip_by_norm(alpha_gradient), torch's 1e-6 as above
    want_alpha = raw_alpha * clip / max(alpha_norm, clip) * alpha_norm / (alpha_norm + 1e-6)
    assert torch.allclose(agent.log_alpha.grad, want_alpha, rtol=1e-5, atol=1e-12)


# -- A-GEM (methods/agem.py) ---------------------------------------------------------------------------

def cw_agem(actor_g, critic_g, actor_ref, critic_ref):
    """``AGEM_SAC.adjust_gradients`` + ``_project_gradients``: one dot product and norm over actor and critics."""
    dot = sum((g * r).sum() for g, r in zip(actor_g + critic_g, actor_ref + critic_ref))
    ref_sq = sum((r * r).sum() for r in actor_ref + critic_ref)
    if dot >= 0:
        return actor_g, critic_g
    return ([g - dot / ref_sq * r for g, r in zip(actor_g, actor_ref)],
            [g - dot / ref_sq * r for g, r in zip(critic_g, critic_ref)])


@pytest.mark.parametrize("ref_scale", [1.0, 1e-8])
def test_agem_projection_equals_cws_without_a_clamp_on_the_reference_norm(ref_scale):
    """The projection over actor and critic gradients jointly, as CW's; with a reference gradient of squared
    norm ~1e-15 too (CW divides by it as it is: no clamp)."""
    torch.manual_seed(3)
    actor_g, critic_g = [torch.randn(5, 3), torch.randn(3)], [torch.randn(4, 2)]
    actor_ref = [(-g + 0.3 * torch.randn_like(g)) * ref_scale for g in actor_g]
    critic_ref = [torch.randn(4, 2) * ref_scale]
    want_actor, want_critic = cw_agem(actor_g, critic_g, actor_ref, critic_ref)
    got = [g.clone() for g in actor_g + critic_g]
    assert bool(agem_project(got, actor_ref + critic_ref))
    for g, w in zip(got, want_actor + want_critic):
        assert torch.allclose(g, w, rtol=1e-5, atol=1e-6)
    agreeing = [r.clone() for r in actor_ref + critic_ref]
    assert not bool(agem_project(agreeing, actor_ref + critic_ref))  # ⟨g, g_ref⟩ ≥ 0: untouched
    zero_ref = [torch.zeros_like(g) for g in got]
    unchanged = [g.clone() for g in got]
    assert not bool(agem_project(unchanged, zero_ref)) and all(torch.isfinite(g).all() for g in unchanged)


# -- VCL (methods/vcl.py) --------------------------------------------------------------------------------

def cw_kl(post_mean, post_logvar, prior_mean, prior_logvar):
    """``kl_divergence`` of methods/vcl.py."""
    return (-0.5 * post_mean.numel() + 0.5 * (prior_logvar - post_logvar).sum()
            + 0.5 * ((post_logvar.exp() + (post_mean - prior_mean) ** 2) / prior_logvar.exp()).sum())


@pytest.mark.parametrize("multihead,first_task_kl", [(True, False), (True, True), (False, False)])
def test_vcl_kl_equals_cws(multihead, first_task_kl):
    """VCL_SAC._regularize on task 1: every body layer (and a single head) against its prior; with several
    heads the current task's columns of head_mu and head_log_std only with ``first_task_kl``."""
    agent = build("vcl", multihead=multihead, first_task_kl=first_task_kl)
    ext = agent.extensions[0]
    start_task(agent, 0)
    start_task(agent, 1)  # posterior → prior of the regularised layers
    layers = [m for m in agent.actor.body if hasattr(m, "kl")] + [agent.actor.head.linear]
    with torch.no_grad():
        for layer in layers:
            for name in ("weight_mean", "bias_mean", "weight_logvar", "bias_logvar"):
                getattr(layer, name).add_(torch.randn_like(getattr(layer, name)) * 0.1)
    want = torch.zeros(())
    for layer in layers[:-1]:
        for kind in ("weight", "bias"):
            want += cw_kl(*(getattr(layer, f"{pre}{kind}_{what}") for pre in ("", "prior_")
                            for what in ("mean", "logvar")))
    head = agent.actor.head.linear
    H = agent.num_heads
    if H == 1:  # a single head is a body layer (BayesianDense with num_heads == 1)
        for kind in ("weight", "bias"):
            want += cw_kl(*(getattr(head, f"{pre}{kind}_{what}") for pre in ("", "prior_") for what in ("mean", "logvar")))
    elif first_task_kl:  # CW's [:, :, seq_idx] of head_mu and head_log_std: crl's rows of head 1
        rows = slice(1 * 2 * ACT, 2 * 2 * ACT)
        for kind in ("weight", "bias"):
            want += cw_kl(*(getattr(head, f"{pre}{kind}_{what}")[rows] for pre in ("", "prior_")
                            for what in ("mean", "logvar")))
    assert ext.kl().detach().item() == pytest.approx(want.detach().item(), rel=1e-5)


# -- the forward pass and the optimiser (Keras defaults) --------------------------------------------------

@pytest.mark.parametrize("multihead", [True, False])
def test_actor_and_critics_compute_cws_forward_pass(multihead):
    """Keras' LayerNorm ε 1e-3 (torch's default 1e-5 moves every output by ~1e-3 relative)."""
    agent = build("sac", multihead=multihead)
    p, _ = to_cw(agent)
    x, a = torch.randn(32, OBS), torch.rand(32, ACT) * 2 - 1
    for task in range(agent.num_heads):
        head = agent.heads(task)
        mu, log_std = agent.actor.distribution(x, head)
        cw_mu, cw_log_std = cw_actor(p, x, task, agent.num_heads)
        assert torch.allclose(torch.tanh(mu), cw_mu, **TOL) and torch.allclose(log_std, cw_log_std, **TOL)
        q = agent.critics(x, a, head)
        for k in (1, 2):
            assert torch.allclose(q[k - 1], cw_critic(p, k, x, a, task, agent.num_heads), **TOL)


def keras_adam_step(theta, g, m, v, t, lr, eps, beta1=0.9, beta2=0.999):
    """Keras' Adam (``_resource_apply_dense``): ε added to √v before bias correction of the step size."""
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    alpha = lr * math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
    return theta - alpha * m / (v.sqrt() + eps)


def test_adam_step_equals_keras_on_packnet_sized_gradients():
    """After PackNet's 2e-5 clip gradients are ~3e-8, where ε sets the step: crl's Adam (ε 1e-7) takes Keras'
    step once the bias correction has converged (CW keeps the step counter across tasks; here step 10⁶, moments
    zeroed as at a switch). Departure pinned: Keras adds ε before the bias correction, torch after, so at
    step t Keras' ε is ε/√(1 − β₂ᵗ) in torch's terms (≈31.6ε at t = 1): equal to float32 only after a few
    thousand gradient steps."""
    agent = build("sac")
    params = [q for group in agent.optimized_groups() for q in group]
    torch.manual_seed(5)
    grads = [torch.randn_like(q) * 3e-8 for q in params]
    for q in params:
        q.grad = torch.zeros_like(q)
    agent.optimizer.step()  # creates the state; zero gradients leave the weights
    for t, expect_equal in ((1_000_000, True), (1, False)):
        for q, g in zip(params, grads):
            state = agent.optimizer.state[q]
            state["step"].fill_(t - 1)
            state["exp_avg"].zero_()
            state["exp_avg_sq"].zero_()
            q.grad = g.clone()
        before = [q.detach().clone() for q in params]
        agent.optimizer.step()
        for q, b, g in zip(params, before, grads):
            want = keras_adam_step(b, g, torch.zeros_like(g), torch.zeros_like(g), t, agent.cfg.lr, KERAS_ADAM_EPS)
            assert torch.allclose(q.detach(), want, rtol=1e-6, atol=1e-9) == expect_equal
            with torch.no_grad():
                q.copy_(b)

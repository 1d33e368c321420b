"""Decision Transformer backbone (crl.dt) and modulation pools (crl.lora)."""

from __future__ import annotations

import dataclasses

import torch

from crl.dt import DT_SIZES, DecisionTransformer, DTConfig
from crl.lora import LoRAPool, PromptPool

CFG = DTConfig(n_layers=2, n_heads=2, d_model=32, context=5, n_bins=16, dropout=0.0)
S, A = 39, 4  # Meta-World widths, padded inside to 204 / 6


def batch(B=3, K=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(B, K, S, generator=g)
    actions = torch.rand(B, K, A, generator=g) * 2 - 1
    rtg = torch.rand(B, K, generator=g) * 400
    t = torch.randint(0, 190, (B, 1), generator=g) + torch.arange(K)
    return states, actions, rtg, t


def model(cfg=CFG, seed=0):
    torch.manual_seed(seed)
    return DecisionTransformer(cfg).eval()


def pool_for(cfg, P=3, seed=1, nonzero_b=True):
    torch.manual_seed(seed)
    pool = LoRAPool(P, cfg.n_layers, cfg.d_model, cfg.d_ff, rank=4)
    if nonzero_b:
        with torch.no_grad():
            for site in pool.sites:
                getattr(pool, f"B_{site}").normal_(std=0.1)
    return pool


def test_shapes_and_sizes():
    m = model()
    s, a, r, t = batch()
    logits = m(s, a, r, t)
    assert logits.shape == (3, 5, CFG.act_dim, CFG.n_bins)
    assert m.embed(s, a, r, t).shape == (3, 14, CFG.d_model)  # the last action token is never read
    assert m.state_embeddings(s, t).shape == (3, 5, CFG.d_model)
    torch.testing.assert_close(m.state_embeddings(s, t), m.embed(s, a, r, t)[:, 1::3])
    assert m.act(s, a, r, t).shape == (3, CFG.act_dim)
    assert m.act(s, a, r, t, act_dim_used=A).shape == (3, A)
    assert m.loss(logits, a).dim() == 0
    # explicit zero padding equals the narrow input
    s_pad = torch.nn.functional.pad(s, (0, CFG.state_dim - S))
    a_pad = torch.nn.functional.pad(a, (0, CFG.act_dim - A))
    torch.testing.assert_close(m(s_pad, a_pad, r, t), logits, atol=1e-5, rtol=0)
    assert DT_SIZES["small"].d_model == 128 and DT_SIZES["paper"].n_layers == 6


def test_paper_size_parameter_count():
    # L2M's README says "40M" for 6×768 (with 9 tokens/step and its own embeddings); ours is ≈43M.
    n = sum(p.numel() for p in DecisionTransformer(DT_SIZES["paper"]).parameters())
    assert 40e6 < n < 46e6
    pool = LoRAPool(30, 6, 768, 3072, rank=8)
    assert pool.num_parameters_per_module == 442_368  # L2M's per-module count


def test_discretize_round_trip():
    m = model()
    x = torch.linspace(-1, 1, 1001)
    half_bin = 1 / CFG.n_bins
    assert (m.undiscretize(m.discretize(x)) - x).abs().max() <= half_bin + 1e-6
    bins = torch.arange(CFG.n_bins)
    assert torch.equal(m.discretize(m.undiscretize(bins)), bins)
    assert m.discretize(torch.tensor([-5.0, 5.0])).tolist() == [0, CFG.n_bins - 1]


def test_left_padding_does_not_change_real_steps():
    m = model()
    s, a, r, t = batch(B=2, K=3)
    ref = m(s, a, r, t)
    pad = 2
    g = torch.Generator().manual_seed(9)
    s_p = torch.cat((torch.randn(2, pad, S, generator=g) * 10, s), 1)
    a_p = torch.cat((torch.randn(2, pad, A, generator=g), a), 1)
    r_p = torch.cat((torch.randn(2, pad, generator=g) * 1e3, r), 1)
    t_p = torch.cat((torch.randint(0, 2000, (2, pad), generator=g), t), 1)
    mask = torch.tensor([[False] * pad + [True] * 3] * 2)
    out = m(s_p, a_p, r_p, t_p, mask)
    torch.testing.assert_close(out[:, pad:], ref, atol=1e-5, rtol=0)
    assert torch.isfinite(out).all()
    # all-True mask equals the fused causal path
    torch.testing.assert_close(m(s, a, r, t, torch.ones(2, 3, dtype=torch.bool)), ref, atol=1e-5, rtol=0)
    # act on the padded window = act on the unpadded one
    assert torch.equal(m.act(s_p, a_p, r_p, t_p, mask), m.act(s, a, r, t))


def test_causality():
    m = model()
    s, a, r, t = batch()
    ref = m(s, a, r, t)
    s2, a2, r2 = s.clone(), a.clone(), r.clone()
    s2[:, 3:] += 5
    r2[:, 3:] += 100
    a2[:, 2:] = -a2[:, 2:]  # the action of step 2 comes after step 2's state token
    out = m(s2, a2, r2, t)
    torch.testing.assert_close(out[:, :3], ref[:, :3], atol=1e-6, rtol=0)
    assert not torch.allclose(out[:, 3:], ref[:, 3:])
    # with a prefix, still causal over the trajectory
    prefix = torch.randn(3, 4, CFG.d_model)
    torch.testing.assert_close(m(s2, a2, r2, t, prefix=prefix)[:, :3], m(s, a, r, t, prefix=prefix)[:, :3],
                               atol=1e-6, rtol=0)


def test_zero_b_lora_is_identity():
    m = model()
    s, a, r, t = batch()
    pool = pool_for(CFG, nonzero_b=False)
    ref = m(s, a, r, t)
    assert torch.equal(m(s, a, r, t, modulation=pool.bind(1)), ref)
    assert torch.equal(m(s, a, r, t, modulation=pool.bind(torch.tensor([0, 2, 1]))), ref)


def test_modules_differ_and_gather_matches_per_row():
    m = model()
    s, a, r, t = batch()
    pool = pool_for(CFG)
    outs = [m(s, a, r, t, modulation=pool.bind(i)) for i in range(3)]
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[1], outs[2])
    assert not torch.allclose(outs[0], m(s, a, r, t))
    idx = torch.tensor([2, 0, 2])
    gathered = m(s, a, r, t, modulation=pool.bind(idx))
    for b, i in enumerate(idx.tolist()):
        torch.testing.assert_close(gathered[b], outs[i][b], atol=1e-5, rtol=0)
    # with padding too
    mask = torch.tensor([[False, True, True, True, True]] * 3)
    gathered = m(s, a, r, t, mask, modulation=pool.bind(idx))
    for b, i in enumerate(idx.tolist()):
        torch.testing.assert_close(gathered[b], m(s, a, r, t, mask, modulation=pool.bind(i))[b],
                                   atol=1e-5, rtol=0)


def test_lora_gradients_reach_only_selected_modules():
    m = model()
    for p in m.parameters():
        p.requires_grad_(False)
    s, a, r, t = batch()
    pool = pool_for(CFG)
    loss = m.loss(m(s, a, r, t, modulation=pool.bind(torch.tensor([0, 0, 2]))), a)
    loss.backward()
    for site in pool.sites:
        g = getattr(pool, f"B_{site}").grad
        assert g[0].abs().sum() > 0 and g[2].abs().sum() > 0 and g[1].abs().sum() == 0
    assert set(pool.module_parameters(0)) == {"A_q", "B_q", "A_v", "B_v", "A_mlp", "B_mlp"}


def test_prompt_pool_prefix():
    m = model()
    s, a, r, t = batch()
    pp = PromptPool(10, length=5, d_model=CFG.d_model)
    sim = pp.similarity(m.state_embeddings(s, t).mean(1))
    assert sim.shape == (3, 10) and sim.abs().max() <= 1 + 1e-5
    idx = sim.topk(2, dim=1).indices
    prefix = pp.prefix(idx)
    assert prefix.shape == (3, 10, CFG.d_model)
    out = m(s, a, r, t, prefix=prefix)
    assert out.shape == (3, 5, CFG.act_dim, CFG.n_bins)
    assert not torch.allclose(out, m(s, a, r, t))
    m.loss(out, a).backward()
    assert pp.prompts.grad[idx.flatten()].abs().sum() > 0


def test_loss_masks_padding_steps_and_dims():
    m = model()
    s, a, r, t = batch()
    logits = m(s, a, r, t)
    a6 = torch.nn.functional.pad(a, (0, 2), value=0.7)
    assert torch.allclose(m.loss(logits, a6, act_dim_used=A), m.loss(logits, a))
    assert torch.allclose(m.loss(logits, a6, act_dim_used=torch.tensor([A] * 3)), m.loss(logits, a))
    mask = torch.tensor([[False, False, True, True, True]] * 3)
    garbage = a.clone()
    garbage[:, :2] = 0.99
    assert torch.allclose(m.loss(logits, garbage, mask), m.loss(logits, a, mask))


def test_overfits_tiny_batch():
    cfg = dataclasses.replace(CFG, dropout=0.1)
    torch.manual_seed(0)
    m = DecisionTransformer(cfg).train()
    s, a, r, t = batch(B=8, K=5)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    first = None
    for _ in range(100):
        loss = m.loss(m(s, a, r, t), a)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first, (first, loss.item())


def test_lora_grouped_rows_equal_the_per_row_gather_in_value_and_gradient():
    pool = pool_for(CFG, P=5)
    x = torch.randn(7, 4, CFG.d_ff)
    idx = torch.tensor([3, 0, 3, 3, 1, 0, 3])
    outputs, grads = [], []
    for groups in (None, LoRAPool.module_groups(idx)):
        pool.zero_grad()
        out = pool.delta("mlp", 1, x, idx, groups)
        out.square().sum().backward()
        outputs.append(out.detach())
        grads.append((pool.A_mlp.grad.clone(), pool.B_mlp.grad.clone()))
    torch.testing.assert_close(outputs[1], outputs[0], atol=1e-5, rtol=1e-5)
    for g_grouped, g_gather in zip(grads[1], grads[0]):
        # the two sum a module's gradient over its rows in different orders: on an AVX2 EPYC one element in 5,120
        # differed by 1.02e-5 (fp32 rounding); a row sent to the wrong module differs by the gradient's own size
        torch.testing.assert_close(g_grouped, g_gather, atol=1e-4, rtol=1e-4)
    # every row equals its own module applied alone
    for row, module in enumerate(idx.tolist()):
        torch.testing.assert_close(outputs[1][row], pool.delta("mlp", 1, x[row:row + 1], module)[0].detach(),
                                   atol=1e-5, rtol=1e-5)
    assert LoRAPool.module_groups(torch.arange(LoRAPool.MAX_GROUPS + 1)) is None  # too many: gather per row

"""L2M on a tiny pre-trained backbone: frozen weights stay frozen, retrieval finds each task's modules,
checkpoints keep the pool and its usage counts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from crl import checkpoint
from crl.config import build_config
from crl.envs import make_sequence
from crl.loop import make_agent, train
from crl.pretrain import load_backbone, backbone_path


def l2m_config(agent: str, data_dir, *sets: str):
    return build_config("cw2", agent, preset="smoke", backend="gymnasium",
                        sets=[f"agent.data_dir={data_dir}", *sets])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("crl_data")


@pytest.fixture(scope="module")
def l2m_run(data_dir, tmp_path_factory):
    # Large enough steps for the key loss to pull each task's keys to its queries.
    cfg = l2m_config("l2m", data_dir, "agent.lr=3e-3", "train.steps_per_task=150", "train.eval_every=75")
    run_dir = tmp_path_factory.mktemp("runs") / "l2m"
    _, results = train(cfg, run_dir, quiet=True)
    return cfg, run_dir, results


def test_run_writes_results_and_pretraining_retention(l2m_run):
    _, _, results = l2m_run
    assert results["finished"] and np.array(results["retention_matrix"], dtype=float).shape == (2, 2)
    retention = results["retention_tasks"]
    assert set(retention) == {"before", "after"} and list(retention["before"]) == ["reach-v3"]


def test_frozen_backbone_stays_bit_identical(l2m_run):
    cfg, run_dir, _ = l2m_run
    from crl.agents.l2m import L2M

    agent_cfg = cfg.agent_config
    pretrained, _ = load_backbone(backbone_path(L2M(39, 4, 2, agent_cfg, torch.device("cpu")).pretrain_cfg,
                                                agent_cfg.data_dir), torch.device("cpu"))
    trained = checkpoint.load(run_dir)["agent"]["backbone"]
    for name, tensor in pretrained.state_dict().items():
        assert torch.equal(tensor, trained[name]), name
    pool = checkpoint.load(run_dir)["agent"]["pool"]
    assert any(t.abs().sum() > 0 for k, t in pool.items() if k.startswith("B_"))  # the modules did learn


def test_retrieval_picks_the_modules_trained_for_each_task(l2m_run, data_dir):
    cfg, run_dir, _ = l2m_run
    sequence = make_sequence("cw2")
    agent = make_agent(cfg, sequence, torch.device("cpu"))
    agent.load_state_dict(checkpoint.load(run_dir)["agent"])
    from crl.dt import WindowSampler
    from crl.envs.data import load_task

    assert torch.all(agent.usage.sum(1) > 0)
    assert not ((agent.usage[0] > 0) & (agent.usage[1] > 0)).any()  # each task trained its own modules
    for task in sequence.tasks:
        batch = WindowSampler([load_task(task.name, data_dir)], agent.dt_cfg.context, torch.device("cpu"), seed=5).sample(64)
        chosen = agent.selected_module(batch["obs"], batch["timestep"], batch["mask"])
        own = (chosen >= 0) & (agent.usage[task.index, chosen.clamp_min(0)] > 0)  # trained on this task
        # 0.8, not 1: states alone do not always tell tasks apart (tiny backbone, 150 steps: hammer 1.00,
        # push-wall 0.84; a nearest-centroid query on the quick backbone tells push-wall from push 0.36)
        assert own.float().mean() > 0.8, (task.name, chosen.tolist(), agent.usage.tolist())


def test_pretraining_states_run_the_backbone_unmodulated(l2m_run, data_dir):
    """States of the pre-training tasks match their own fixed keys, and those rows get exactly the
    frozen backbone's output: the modules cannot change what the backbone does on its own tasks."""
    cfg, run_dir, _ = l2m_run
    agent = make_agent(cfg, make_sequence("cw2"), torch.device("cpu"))
    agent.load_state_dict(checkpoint.load(run_dir)["agent"])
    assert agent.null_keys.shape == (2 * agent.cfg.pretrain_keys, agent.dt_cfg.d_model)
    from crl.dt import WindowSampler
    from crl.envs.data import load_task

    for name in ("reach-v3", "button-press-v3"):
        b = WindowSampler([load_task(name, data_dir)], agent.dt_cfg.context, torch.device("cpu"), seed=3).sample(64)
        routed = agent.selected_module(b["obs"], b["timestep"], b["mask"]) < 0
        assert routed.float().mean() > 0.5, name
        agent.backbone.eval()
        with torch.no_grad():
            modulated, _, _ = agent._forward(b["obs"], b["action"], b["returns_to_go"], b["timestep"], b["mask"], 0,
                                             train=False)
            plain = agent.backbone(b["obs"], b["action"], b["returns_to_go"], b["timestep"], b["mask"])
        assert torch.allclose(modulated[routed], plain[routed], atol=1e-5)
        if (~routed).any():  # the other rows are modulated by a trained module
            assert not torch.allclose(modulated[~routed], plain[~routed], atol=1e-5)


def test_null_key_tolerance_drops_only_keys_that_take_more_of_a_tasks_states(l2m_run, data_dir):
    """At a sequence task's start a pre-training key is dropped iff it takes more than ``null_key_tolerance`` of
    the task's data windows from the task's own keys. Four keys placed on hammer's own states: tolerance 0 drops
    them all (and then no hammer state runs unmodulated), a tolerance near 1 keeps them all, one in between keeps
    a superset of what tolerance 0 keeps."""
    cfg, run_dir, _ = l2m_run
    sequence = make_sequence("cw2")
    agent = make_agent(cfg, sequence, torch.device("cpu"))
    agent.load_state_dict(checkpoint.load(run_dir)["agent"])
    from crl.dt import WindowSampler
    from crl.envs.data import load_task

    hammer = WindowSampler([load_task("hammer-v3", data_dir)], agent.dt_cfg.context, torch.device("cpu"),
                           seed=11).sample(512)
    with torch.no_grad():
        queries = agent._query(agent.backbone.state_embeddings(hammer["obs"], hammer["timestep"]), hammer["mask"])
    queries = torch.nn.functional.normalize(queries.float(), dim=-1)
    agent._key_task(sequence.tasks[0])  # hammer's own keys; plant on states that are not one of them
    far = (queries @ agent.task_keys[0].T).max(-1).values.argsort()[:4]  # the states farthest from them
    planted = queries[far]
    agent.null_keys[-4:] = planted  # four of the last pre-training task's keys

    def prune(tolerance: float) -> torch.Tensor:
        agent.cfg.null_key_tolerance = tolerance
        agent._set_null_alive(torch.ones(agent.null_keys.shape[0], dtype=torch.bool))
        for task in sequence.tasks:
            agent._key_task(task)
        return agent.null_alive.clone()

    strict, tolerant, lenient = prune(0.0), prune(0.05), prune(0.999)
    assert not strict[-4:].any() and lenient[-4:].all()
    assert bool((tolerant | ~strict).all()), "a tolerance keeps every key the strict rule keeps"
    prune(0.0)
    unmodulated = agent.selected_module(hammer["obs"], hammer["timestep"], hammer["mask"]) < 0
    assert unmodulated.float().mean() < 0.02
    prune(0.999)
    assert (agent.selected_module(hammer["obs"][far], hammer["timestep"][far], hammer["mask"][far]) < 0).all()


def test_evidence_decay_names_the_task_from_the_whole_episode(l2m_run, data_dir):
    """With ``evidence_decay`` 1 the task is named by the similarities summed over the episode: after ten hammer
    states a push-wall state still runs hammer's modules, where the current step alone names push-wall; a row's
    new episode starts its sum afresh."""
    cfg, run_dir, _ = l2m_run
    sequence = make_sequence("cw2")
    agent = make_agent(cfg, sequence, torch.device("cpu"))
    agent.load_state_dict(checkpoint.load(run_dir)["agent"])
    from crl.dt import WindowSampler
    from crl.envs.data import load_task

    def windows(name: str) -> dict:
        return WindowSampler([load_task(name, data_dir)], agent.dt_cfg.context, torch.device("cpu"), seed=7).sample(64)

    def queries(b: dict) -> torch.Tensor:
        with torch.no_grad():
            return agent._query(agent.backbone.state_embeddings(b["obs"], b["timestep"]), b["mask"])

    owner = torch.arange(agent.keys.shape[0]) // agent.per_task
    hammer, push_wall = queries(windows("hammer-v3")), queries(windows("push-wall-v3"))
    alone = owner[agent._select(push_wall, 0, train=False)[0]]
    k = int((alone == 1).nonzero()[0])  # a push-wall state whose own step names push-wall
    agent.cfg.evidence_decay = 1.0
    groups = agent.tasks_keyed + agent.null_keys.shape[0] // agent.cfg.pretrain_keys
    evidence = torch.zeros(1, groups)
    for i in range(10):
        agent._select(hammer[i:i + 1], 0, train=False, evidence=evidence)
    idx, _, active = agent._select(push_wall[k:k + 1], 0, train=False, evidence=evidence)
    assert int(owner[idx]) == 0 and (active is None or bool(active.all()))

    agent.prepare_evaluation([sequence.tasks[0], sequence.tasks[1]])
    obs = torch.tensor(load_task("hammer-v3", data_dir).obs[:2])
    agent.act(obs, torch.tensor([0, 1]), explore=False)
    first_step = agent._evidence.clone()
    agent.act(obs, torch.tensor([0, 1]), explore=False, first=torch.tensor([False, False]))
    agent.act(obs, torch.tensor([0, 1]), explore=False, first=torch.tensor([True, False]))
    assert torch.allclose(agent._evidence[0], first_step[0])  # row 0 began again: one step of evidence
    assert first_step[1].max() > 0.5 and agent._evidence[1].max() > 2.5 * first_step[1].max()  # row 1: three steps


def test_checkpoint_restores_pool_and_usage_counts(l2m_run):
    cfg, run_dir, _ = l2m_run
    saved = checkpoint.load(run_dir)["agent"]
    agent = make_agent(cfg, make_sequence("cw2"), torch.device("cpu"))
    assert agent.counts.sum() == 0
    agent.load_state_dict(saved)
    assert agent.counts.sum() > 0 and torch.equal(agent.counts, saved["counts"])
    assert torch.equal(agent.inv_counts, saved["inv_counts"]) and torch.equal(agent.usage, saved["usage"])
    assert torch.equal(agent.keys.detach(), saved["keys"])
    for name, tensor in agent.pool.state_dict().items():
        assert torch.equal(tensor, saved["pool"][name])


@pytest.mark.parametrize("agent_name", ["l2m-oracle", "l2m-lora", "l2m-l2p", "l2m-ft", "l2m-ewc", "l2m-l2"])
def test_baselines_run(agent_name, data_dir, tmp_path):
    cfg = l2m_config(agent_name, data_dir, "train.eval_episodes=1", "agent.retention_tasks=0",
                     "train.steps_per_task=4", "train.eval_every=4")
    _, results = train(cfg, tmp_path / agent_name, quiet=True)
    assert results["finished"] and "average_performance" in results["metrics"]


def test_oracle_runs_pretraining_tasks_unmodulated_and_sequence_tasks_by_name(data_dir, tmp_path):
    """l2m-oracle picks modules by task identity; a pre-training task evaluated for retention is no sequence task
    (its row index is its place in the retention list), so its rows run the backbone unmodulated."""
    cfg = l2m_config("l2m-oracle", data_dir, "train.eval_episodes=1", "agent.retention_tasks=1",
                     "train.steps_per_task=4", "train.eval_every=4")
    run_dir, _ = train(cfg, tmp_path / "oracle", quiet=True)
    sequence = make_sequence("cw2")
    agent = make_agent(cfg, sequence, torch.device("cpu"))
    agent.load_state_dict(checkpoint.load(run_dir)["agent"])
    assert agent.task_names == [t.name for t in sequence.tasks]
    selections = []
    select = agent._select
    agent._select = lambda *args, **kwargs: selections.append(select(*args, **kwargs)) or selections[-1]
    pretraining = agent.retention_tasks()[0]
    assert pretraining.index == 0 and pretraining.name not in agent.task_names
    agent.prepare_evaluation([pretraining, sequence.tasks[0], sequence.tasks[1]])
    agent.act(torch.zeros(3, agent.obs_dim), torch.tensor([0, 0, 1]), explore=False)
    idx, _, active = selections[-1]
    assert active.tolist() == [False, True, True]
    assert (idx[1:] // agent.per_task).tolist() == [0, 1]


def test_full_finetuning_moves_the_backbone(data_dir, tmp_path):
    cfg = l2m_config("l2m-ft", data_dir, "train.eval_episodes=1", "agent.retention_tasks=0", "agent.lr=1e-3",
                     "train.steps_per_task=4", "train.eval_every=4")
    run_dir, _ = train(cfg, tmp_path / "ft", quiet=True)
    sequence = make_sequence("cw2")
    agent = make_agent(cfg, sequence, torch.device("cpu"))
    agent.prepare(list(sequence.tasks))  # the pre-trained backbone
    trained = checkpoint.load(run_dir)["agent"]["backbone"]
    assert any(not torch.equal(t, trained[k]) for k, t in agent.backbone.state_dict().items())


def test_eval_of_a_finished_run_loads_its_weights_and_never_pretrains(l2m_run, data_dir, capsys):
    """``crl eval`` on a machine without the data dir: no data collection, no pre-training."""
    from crl.cli import main

    _, run_dir, _ = l2m_run
    hidden = data_dir.with_name(data_dir.name + "_hidden")
    data_dir.rename(hidden)
    try:
        assert main(["eval", str(run_dir), "--episodes", "1", "--device", "cpu"]) in (0, None)
        assert not data_dir.exists()  # nothing was collected or pre-trained into it
    finally:
        if data_dir.exists():
            import shutil

            shutil.rmtree(data_dir)
        hidden.rename(data_dir)
    assert "average" in capsys.readouterr().out


def test_crash_mid_task_then_resume_equals_the_uninterrupted_run(data_dir, tmp_path, monkeypatch):
    """Pool, keys, usage counts, optimiser and the data sampler all survive a crash mid-task: the
    resumed run ends with exactly the weights of a run that never stopped."""
    from crl import loop as loop_module

    cfg = l2m_config("l2m", data_dir, "train.eval_episodes=1", "agent.retention_tasks=0",
                     "train.steps_per_task=20", "train.eval_every=10", "train.checkpoint_every=10")
    whole, _ = train(cfg, tmp_path / "whole", quiet=True)
    real_advance = loop_module.ContinualLoop._advance

    def crashing_advance(self, task, n):
        if self.state.global_step >= 35:  # mid-task 1, after its checkpoint at step 30
            raise RuntimeError("simulated crash")
        return real_advance(self, task, n)

    monkeypatch.setattr(loop_module.ContinualLoop, "_advance", crashing_advance)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, tmp_path / "crashed", quiet=True)
    monkeypatch.setattr(loop_module.ContinualLoop, "_advance", real_advance)
    loop_module.resume(tmp_path / "crashed", quiet=True)
    a, b = checkpoint.load(whole)["agent"], checkpoint.load(tmp_path / "crashed")["agent"]
    for name, tensor in a["pool"].items():
        assert torch.equal(tensor, b["pool"][name]), name
    for key in ("keys", "counts", "usage", "inv_counts", "null_alive"):
        assert torch.equal(a[key], b[key]), key
    assert a["gradient_steps"] == b["gradient_steps"] == 40


def test_a_run_stopped_while_preparing_resumes_from_the_start(data_dir, tmp_path, monkeypatch):
    """Killed while building data or the backbone (before any checkpoint): ``--resume`` starts it over."""
    from crl import loop as loop_module
    from crl.agents.l2m import L2M

    cfg = l2m_config("l2m", data_dir, "train.eval_episodes=1", "agent.retention_tasks=0",
                     "train.steps_per_task=4", "train.eval_every=4")
    real_prepare = L2M.prepare

    def interrupted(self, tasks, report=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(L2M, "prepare", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run" / checkpoint.FILENAME).exists()
    monkeypatch.setattr(L2M, "prepare", real_prepare)
    _, results = loop_module.resume(tmp_path / "run", quiet=True)
    assert results["finished"] and results["steps"] == 8


def test_a_killed_pretraining_continues_from_its_checkpoint_to_the_same_backbone(data_dir, monkeypatch):
    """Pre-training is checkpointed every PARTIAL_EVERY updates (issue 14: preparation is checkpointed): a kill
    mid-way loses at most that many, and the finished backbone equals an uninterrupted one bit for bit."""
    from crl import pretrain as pretrain_module
    from crl.dt import DecisionTransformer

    cfg = pretrain_module.PretrainConfig(tasks="reach-v3,button-press-v3", size="tiny", episodes=2, updates=60,
                                         batch_size=16, warmup=5, seed=3)
    monkeypatch.setattr(pretrain_module, "PARTIAL_EVERY", 20)
    path = backbone_path(cfg, data_dir)
    pretrain_module.pretrain(cfg, data_dir, torch.device("cpu"), progress=False, log=lambda m: None, eval_episodes=0)
    uninterrupted = load_backbone(path, torch.device("cpu"))[0].state_dict()
    path.unlink()
    real_loss, calls = DecisionTransformer.loss, {"n": 0}

    def dying_loss(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 45:
            raise KeyboardInterrupt
        return real_loss(self, *args, **kwargs)

    monkeypatch.setattr(DecisionTransformer, "loss", dying_loss)
    with pytest.raises(KeyboardInterrupt):
        pretrain_module.pretrain(cfg, data_dir, torch.device("cpu"), progress=False, log=lambda m: None,
                                 eval_episodes=0)
    partial = path.with_name(path.stem + ".partial.pt")
    assert not path.exists() and len(torch.load(partial, weights_only=True)["losses"]) == 40
    monkeypatch.setattr(DecisionTransformer, "loss", real_loss)
    reports = []
    pretrain_module.pretrain(cfg, data_dir, torch.device("cpu"), progress=False, log=lambda m: None, eval_episodes=0,
                             report=lambda *a: reports.append(a))
    resumed = load_backbone(path, torch.device("cpu"))[0].state_dict()
    assert not partial.exists()
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)
    assert [(name, done, total) for name, done, total, _ in reports] == [("pretrain", 50, 60)]  # every 50 updates


def test_smoke_preset_runs_l2m_on_cw10_from_the_cli(data_dir, tmp_path):
    # issue 25: the smoke preset's 4-module pool stopped CW10 with "l2m reserves 1 module(s) for each of 10 tasks";
    # it now grows to one module per task (agent.min_modules_per_task). The settings after --preset only shorten
    # the run (one step and one evaluation episode per task; the evaluations at task ends remain).
    from crl.cli import main

    run_dir = tmp_path / "cw10"
    code = main(["train", "--seq", "cw10", "--agent", "l2m", "--preset", "smoke", "--backend", "gymnasium",
                 "--run-dir", str(run_dir), "--quiet", "--set", f"agent.data_dir={data_dir}",
                 "--set", "agent.task_episodes=1", "--set", "agent.retention_tasks=0",
                 "--set", "train.steps_per_task=1", "--set", "train.eval_episodes=1",
                 "--set", "train.eval_at_start=false"])
    assert code == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["finished"] and len(results["tasks"]) == 10 and results["config"]["agent"]["pool_size"] == 4


def test_smoke_preset_sizes_the_l2m_pool_for_cw20_and_keeps_cw2s():
    for seq, pool, per_task in (("cw2", 4, 2), ("cw10", 10, 1), ("cw20", 20, 1)):
        agent = make_agent(build_config(seq, "l2m", preset="smoke"), make_sequence(seq), torch.device("cpu"))
        assert (agent.pool.num_modules, len(agent.keys), agent.per_task) == (pool, pool, per_task)

"""Bad input stops with one line naming the problem and what is allowed, exit code 2, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from crl.cli import main
from crl.config import build_config


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_usage_error(capsys, argv: list[str], *fragments: str) -> str:
    code, _, err = run_cli(capsys, *argv)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("crl: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


TRAIN = ["train", "--seq", "cw2", "--agent", "sac", "--preset", "smoke", "--quiet"]


@pytest.mark.parametrize("argv, fragments", [
    (["train", "--seq", "cw99", "--agent", "sac"], ["unknown sequence 'cw99'", "cw10", "cw20"]),
    (["train", "--seq", "cw10", "--agent", "ppo"], ["unknown agent 'ppo'", "sac"]),
    (["train", "--seq", "cw10", "--agent", "sac", "--preset", "huge"], ["unknown preset 'huge'", "smoke", "paper"]),
    ([*TRAIN, "--set", "agent.lrr=1e-4"], ["unknown config key 'agent.lrr'", "lr"]),
    ([*TRAIN, "--set", "train.evalevery=5"], ["unknown config key 'train.evalevery'", "eval_every"]),
    ([*TRAIN, "--set", "optim.lr=1"], ["unknown section 'optim'", "train, agent"]),
    ([*TRAIN, "--set", "agent.lr=fast"], ["agent.lr", "expected a number", "fast"]),
    ([*TRAIN, "--set", "train.eval_every=1.5"], ["train.eval_every", "expected an integer"]),
    ([*TRAIN, "--set", "agent.multihead=maybe"], ["agent.multihead", "true or false"]),
    ([*TRAIN, "--set", "nonsense"], ["section.key=value"]),
    ([*TRAIN, "--backend", "ray"], ["unknown backend 'ray'", "envpool", "gymnasium"]),
    ([*TRAIN, "--device", "tpu"], ["unknown device 'tpu'", "cpu", "cuda"]),
    ([*TRAIN, "--steps-per-task", "0"], ["train.steps_per_task must be positive"]),
    (["train", "--seq", "cw10"], ["--agent"]),
    (["train", "--seq", "cw10", "--agent", "sac", "--seed", "x"], ["--seed", "invalid int value"]),
    (["frobnicate"], ["invalid choice"]),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, fragments):
    assert_usage_error(capsys, argv, *fragments)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error when CUDA is absent")
def test_cuda_without_cuda(capsys, tmp_path):
    assert_usage_error(capsys, [*TRAIN, "--device", "cuda", "--run-dir", str(tmp_path / "r")], "CUDA is not available", "cpu")
    assert not (tmp_path / "r").exists()  # nothing written


def test_a_bad_agent_setting_writes_no_run_dir(capsys, tmp_path):
    """Settings the agent rejects when it is built (here the precision) stop before the run dir is written, so
    the corrected command can use the same --run-dir."""
    run_dir = tmp_path / "r"
    assert_usage_error(capsys, [*TRAIN, "--set", "agent.precision=fp8", "--run-dir", str(run_dir)],
                       "unknown precision 'fp8'", "fp32, bf16")
    assert not run_dir.exists()


def test_config_file_missing_and_invalid(capsys, tmp_path):
    assert_usage_error(capsys, [*TRAIN, "--config", str(tmp_path / "nope.yaml")], "cannot read config file", "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    assert_usage_error(capsys, [*TRAIN, "--config", str(bad)], "not valid YAML")
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    assert_usage_error(capsys, [*TRAIN, "--config", str(scalar)], "mapping")
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("train:\n  eval_episodes: many\n")
    assert_usage_error(capsys, [*TRAIN, "--config", str(wrong)], "train.eval_episodes", "expected an integer")


def test_not_a_run_dir(capsys, tmp_path):
    for argv in (["train", "--resume", str(tmp_path)], ["eval", str(tmp_path)], ["report", str(tmp_path / "missing")]):
        assert_usage_error(capsys, argv, "not a crl run dir")


def test_layering_and_types():
    cfg = build_config("cw2", "sac", preset="smoke", sets=["agent.lr=3e-4", "train.eval_every=1e2",
                                                           "agent.hidden_sizes=[32,32]"],
                       train_flags={"eval_episodes": 3})
    assert cfg.agent_config.lr == pytest.approx(3e-4)  # "3e-4" is a string in YAML; coerced
    assert cfg.train.eval_every == 100
    assert cfg.train.eval_episodes == 3  # CLI flag beats the preset
    assert cfg.agent_config.hidden_sizes == (32, 32)
    assert cfg.agent_config.start_steps == 200  # from the smoke preset's per-agent section
    paper = build_config("cw10", "sac")
    assert (paper.train.steps_per_task, paper.train.eval_every, paper.train.eval_episodes) == (1_000_000, 20_000, 10)
    assert paper.agent_config.start_steps == 10_000


def test_domain_layer_gives_sac_agents_dmc_settings():
    dmc = build_config("dmc:cheetah-run", "arr", sets=["agent.lr=1e-3"])
    assert dmc.agent_config.hidden_sizes == (256, 256) and dmc.agent_config.log_alpha_init == 0.0
    assert dmc.agent_config.replay_ratio == 0.5  # ARR's own start ratio: the domain leaves it alone
    assert dmc.agent_config.lr == pytest.approx(1e-3)  # --set beats the domain layer
    cw = build_config("cw2", "ewc")
    assert cw.agent_config.hidden_sizes == (256,) * 4 and cw.agent_config.lr == pytest.approx(1e-3)


def test_no_traceback_in_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "crl.cli", "train", "--seq", "nope", "--agent", "sac"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    message = proc.stderr.strip()
    assert message.startswith("crl: error: unknown sequence 'nope'; allowed: cartpole-physics, cheetah-body, cw10, "
                              "cw2, cw20, distshift, dmc")
    assert "\n" not in message and "or dmc:<task>,... with DMC tasks" in message
    assert message.endswith("or grid:<family|map file>,... with layout families gap, river, scatter (crl list)")


L2M_TRAIN = ["train", "--seq", "cw2", "--agent", "l2m", "--preset", "smoke", "--quiet"]


@pytest.mark.parametrize("argv, fragments", [
    (["pretrain", "--data", "mt41"], ["unknown task(s) 'mt41'", "mt40"]),
    (["pretrain", "--episodes", "-1"], ["episodes must be a positive integer, got -1"]),
    (["pretrain", "--updates", "0"], ["updates must be a positive integer, got 0"]),
    (["pretrain", "--context", "0"], ["context must be a positive integer"]),
    (["pretrain", "--size", "huge"], ["unknown backbone size 'huge'", "small", "paper"]),
    ([*L2M_TRAIN, "--set", "agent.pretrain_tasks=nope"], ["unknown task(s) 'nope'"]),
    ([*L2M_TRAIN, "--set", "agent.task_episodes=-2"], ["agent.task_episodes must be a positive integer"]),
    ([*L2M_TRAIN, "--set", "agent.pretrain_updates=-5"], ["updates must be a positive integer, got -5"]),
    ([*L2M_TRAIN, "--set", "agent.action_target=noisy"], ["unknown action target 'noisy'", "expert"]),
    ([*L2M_TRAIN, "--set", "agent.null_key_tolerance=1.5"], ["agent.null_key_tolerance must be a number in [0, 1)"]),
    ([*L2M_TRAIN, "--set", "agent.evidence_decay=-0.1"], ["agent.evidence_decay must be a number in [0, 1]"]),
])
def test_l2m_bad_input_is_one_line_and_exit_2(capsys, argv, fragments):
    assert_usage_error(capsys, argv, *fragments)


def test_data_dir_that_is_a_file_is_refused(capsys, tmp_path):
    a_file = tmp_path / "data"
    a_file.write_text("not a directory")
    assert_usage_error(capsys, ["pretrain", "--data-dir", str(a_file)], "is a file")
    assert_usage_error(capsys, [*L2M_TRAIN, "--run-dir", str(tmp_path / "run"), "--set", f"agent.data_dir={a_file}"],
                       "is a file")


def test_truncated_backbone_is_refused_with_one_line(tmp_path):
    from crl.core import UsageError
    from crl.pretrain import load_backbone

    path = tmp_path / "backbone.pt"
    torch.save({"format": "crl-backbone", "version": 2, "state_dict": {"w": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(UsageError, match="corrupt or not a crl backbone"):
        load_backbone(path, torch.device("cpu"))


def test_list_flags_extend_and_one_value_flags_refuse_a_repeat(capsys):
    """`--agent sac --agent ewc` ran only ewc (argparse keeps the last); a list flag now takes both forms."""
    from crl.cli import build_parser

    args = build_parser().parse_args(["sweep", "--seq", "cw2", "--agent", "sac", "--agent", "ewc", "td3",
                                      "--seeds", "0-1", "--seeds", "5"])
    assert args.seq == ["cw2"] and args.agent == ["sac", "ewc", "td3"] and args.seeds == ["0-1", "5"]
    assert build_parser().parse_args(["sweep", "--agent", "sac", "ewc"]).agent == ["sac", "ewc"]
    assert build_parser().parse_args(["sweep"]).seeds is None  # the default (seed 0) is not mixed into given seeds
    assert_usage_error(capsys, ["train", "--seq", "cw2", "--agent", "sac", "--agent", "ewc"], "--agent given twice")
    assert_usage_error(capsys, [*TRAIN, "--seed", "1", "--seed", "2"], "--seed given twice")
    assert_usage_error(capsys, ["report", "runs/a", "--out", "a", "--out", "b"], "--out given twice")
    assert_usage_error(capsys, ["data", "collect", "--tasks", "cw10", "--tasks", "mt40"], "--tasks given twice")

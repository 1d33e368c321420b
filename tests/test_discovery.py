"""Discovery, not lists (issue 25, item 2): a module that registers an agent, a continual method or an env
family's sequences is found
with nothing else to edit — crl's own agents/ files by crl.registry's package scan, the user's through
``CRL_PLUGINS`` or an installed package's ``crl.plugins`` entry point; ``crl list`` shows them and
``crl train`` builds them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

AGENT = '''
from crl.register import register_agent, register_variant
from crl.agents.sac import SAC


@register_agent("tmp-sac", "a SAC written in a plugin package")
class TmpSAC(SAC):
    pass


register_variant("tmp-sac-small", "tmp-sac", "the plugin SAC with a smaller batch", batch_size=16)
'''

METHOD = '''
from dataclasses import dataclass

from crl.extension import Extension
from crl.register import register_extension


@dataclass
class NudgeConfig:
    nudge_coef: float = 0.25


@register_extension("tmp-nudge", "a continual method written in a plugin package")
class Nudge(Extension):
    config_class = NudgeConfig
'''

FAMILY = '''
from dataclasses import replace

from crl.envs.sequences import make_sequence, sequence


@sequence("tmp-cw1", "the first CW10 task, from a plugin env family")
def tmp_cw1():
    cw2 = make_sequence("cw2")
    return replace(cw2, name="tmp-cw1", tasks=cw2.tasks[:1], description="the first CW10 task, from a plugin")
'''


def _crl(args, env_extra, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env_extra}
    return subprocess.run([sys.executable, "-m", "crl.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


@pytest.fixture
def plugin_package(tmp_path):
    package = tmp_path / "tmp_plugins"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "agent.py").write_text(textwrap.dedent(AGENT))
    (package / "method.py").write_text(textwrap.dedent(METHOD))
    (package / "family.py").write_text(textwrap.dedent(FAMILY))
    return tmp_path


def test_crl_agents_package_is_scanned_not_listed():
    from crl import registry

    assert not hasattr(registry, "BUILTIN_MODULES")
    registry.discover()
    modules = {cls.__module__ for cls in [*registry.AGENTS.values(), *registry.EXTENSIONS.values()]}
    on_disk = {f"crl.agents.{p.stem}" for p in (ROOT / "agents").glob("*.py") if not p.stem.startswith("_")}
    assert on_disk <= set(sys.modules)  # the scan imported every file in agents/, each registering what it defines
    assert {m for m in modules if m.startswith("crl.agents.")} <= on_disk
    assert {"crl.agents.sac", "crl.agents.td3", "crl.agents.packnet", "crl.interventions"} <= modules


@pytest.mark.slow
def test_plugin_agent_method_and_family_train_with_no_other_edit(plugin_package):
    env = {"CRL_PLUGINS": "tmp_plugins.agent,tmp_plugins.method,tmp_plugins.family", "PYTHONPATH": str(plugin_package)}
    run = _crl(["train", "--seq", "tmp-cw1", "--agent", "tmp-sac-small+tmp-nudge", "--preset", "smoke",
                "--run-dir", str(plugin_package / "run"), "--set", "train.steps_per_task=200",
                "--set", "train.eval_every=200", "--set", "train.eval_episodes=1", "--quiet"], env, plugin_package)
    assert run.returncode == 0, run.stderr[-2000:]
    config = (plugin_package / "run" / "config.yaml").read_text()
    assert "seq: tmp-cw1" in config and "agent: tmp-sac-small+tmp-nudge" in config
    assert "nudge_coef: 0.25" in config and "batch_size: 16" in config
    assert (plugin_package / "run" / "evals.jsonl").read_text().strip()


def test_an_installed_package_registers_through_its_entry_points_and_crl_list_shows_it(plugin_package):
    dist = plugin_package / "tmp_plugins-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tmp-plugins\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[crl.plugins]\nagent = tmp_plugins.agent\nmethod = tmp_plugins.method\n"
                                           "family = tmp_plugins.family\n")
    listed = _crl(["list"], {"PYTHONPATH": str(plugin_package)}, plugin_package)
    assert listed.returncode == 0, listed.stderr
    for name in ("tmp-sac", "tmp-sac-small", "tmp-nudge", "tmp-cw1"):
        assert name in listed.stdout
    assert "a continual method written in a plugin package — composes with: " in listed.stdout
    assert "tmp-cw1        1 tasks, 2,000 steps/task — the first CW10 task, from a plugin env family" in listed.stdout


def test_a_plugin_that_cannot_be_imported_is_one_usage_line(tmp_path):
    listed = _crl(["list"], {"CRL_PLUGINS": "no_such_plugin_module"}, tmp_path)
    assert listed.returncode == 2
    assert listed.stderr.startswith("crl: error: plugin module 'no_such_plugin_module'")
    assert "Traceback" not in listed.stderr

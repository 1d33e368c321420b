"""crl's environments: task sequences, Meta-World with Continual World's conventions, DMC,
safety gridworlds (batched torch), vector envs
and reusable gymnasium wrappers.

metaworld, dm_control and envpool load lazily (on the first env built), so importing this package is cheap.
"""

import importlib
import pkgutil

from .metaworld import CW10, EPISODE_LEN, make_vec
from .registration import register_envs
from .sequences import SEQUENCES, make_sequence

# Discovery, not a list: each module here registers its sequences in envs/sequences.py on import, so a new family
# is one new file. `crl list` shows them in import order: Meta-World (imported above), then by file name.
for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["CW10", "EPISODE_LEN", "SEQUENCES", "make_sequence", "make_vec", "register_envs"]

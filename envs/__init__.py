"""crl's environments: task sequences, Meta-World with Continual World's conventions, DMC,
safety gridworlds (batched torch), vector envs
and reusable gymnasium wrappers.

metaworld, dm_control and envpool load lazily (on the first env built), so importing this package is cheap.
"""

# Each family registers its sequences in envs/sequences.py on import, in this order (as `crl list` shows them).
from . import metaworld, dmc, gridworld, dynamics  # noqa: F401, I001
from .metaworld import CW10, EPISODE_LEN, make_vec
from .registration import register_envs
from .sequences import SEQUENCES, make_sequence

__all__ = ["CW10", "EPISODE_LEN", "SEQUENCES", "make_sequence", "make_vec", "register_envs"]

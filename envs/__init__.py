"""crl's environments: task sequences, Meta-World with Continual World's conventions, vector envs
and reusable gymnasium wrappers.

metaworld and envpool load lazily (on the first env built), so importing this package is cheap.
"""

from . import dmc  # noqa: F401  registers the DMC sequences
from .metaworld import CW10, EPISODE_LEN, make_vec
from .registration import register_envs
from .sequences import SEQUENCES, make_sequence

__all__ = ["CW10", "EPISODE_LEN", "SEQUENCES", "make_sequence", "make_vec", "register_envs"]

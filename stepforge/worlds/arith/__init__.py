"""The built-in arithmetic world; importing it registers the ``arith`` task and world."""

from stepforge.worlds.arith.task import ARITH, ARITH_WORLD

__all__ = ["ARITH", "ARITH_WORLD"]

"""The built-in agent world (multi-turn, exact per-turn labels); importing it registers ``agent``."""

from stepforge.worlds.agent.task import AGENT, AGENT_WORLD

__all__ = ["AGENT", "AGENT_WORLD"]

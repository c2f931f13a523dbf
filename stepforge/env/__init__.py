"""Multi-turn rollouts: any Policy against any Environment (DESIGN.md: env/)."""

"""stepforge: step-level supervision of LLM reasoning."""

__version__ = "0.1.0"

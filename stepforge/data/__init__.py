"""Training data made by models and checked by checkers: step expansion (MathFimer FIM, `expand.py`, `fim.py`)."""

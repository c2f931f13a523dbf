"""Step expansion: new intermediate steps inserted into solutions (MathFimer), checked where a checker exists."""

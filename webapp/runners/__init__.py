"""Step runners: one module per step type, one interface (see base.py)."""

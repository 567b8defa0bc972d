"""Real trained models for benches, loaded offline from installed packages (``--model FILE.py:factory``)."""

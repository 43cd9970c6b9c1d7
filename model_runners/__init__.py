"""One folder per model: `model.py` (the implementation, with its validator) and `config.yaml` (variants)."""

"""Tokenizer lab: train a small transformer per (Fg, Fe, Fc) tokenizer and seed, and compare test
accuracy and MCC on held-out groups (e.g. a tissue never seen in training).

Modules: `fg`, `fe`, `fc` (the three parts), `sentences` (batches), `mup` and `model` (the classifier;
torch only), `train` (one run), `lab` (data preparation and the whole comparison), `presets` and `cli`; one
tokenizer and seed as a job of the job layer is `czb_core.service.jobs.lab`.
Nothing is imported here, so `model` stays importable where pandas and anndata are not installed, and
the job layer can tell a lab job by `LAB_MODEL` without importing torch.
"""

LAB_MODEL = "tokenizer_lab"  # the `model` of a lab job's spec: not a model of the registry

"""The model layer: the runner protocol, parameters, registry, weights and the run pipeline."""

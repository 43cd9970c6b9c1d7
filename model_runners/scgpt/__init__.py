"""scGPT (Cui et al. 2024): binned expression values of each cell's detected genes through a transformer encoder."""

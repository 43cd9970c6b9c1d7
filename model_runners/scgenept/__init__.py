"""scGenePT: perturbation prediction on scGPT with text-derived gene embeddings."""

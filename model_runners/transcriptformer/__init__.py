"""TranscriptFormer (Pearce et al. 2025): an autoregressive transformer over a cell's genes and counts."""

"""Out-of-core work on datasets larger than memory: row blocks read from disk, one-pass statistics,
incremental PCA, and the streamed PCA baseline. Every pass reads blocks, never the whole matrix."""

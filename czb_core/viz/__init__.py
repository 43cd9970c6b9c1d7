"""Pictures of data and results: UMAP, plots, QC histograms."""

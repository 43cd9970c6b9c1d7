"""The shared server: workspace, job store and workers, dataset fixes."""

"""czb_core: the model layer of CZI's cz-benchmarks, re-created to run in-process.

Datasets, validators, model implementations, weights, runs and benchmark tasks. Nothing here imports
streamlit: the app's pages are thin callers of this package, and so is the `czb` command line.
"""

__version__ = "0.1.0"

"""Generated data in the shapes users bring."""

from __future__ import annotations

import anndata as ad
import numpy as np
import scipy.sparse as sp


def log_normalised(adata: ad.AnnData) -> ad.AnnData:
    """A copy whose X is log1p of CP10k: what many public files hold instead of counts."""
    out = adata.copy()
    x = out.X.astype(np.float32)
    x = sp.diags(1e4 / np.asarray(x.sum(axis=1)).ravel()) @ x
    x.data = np.log1p(x.data)
    out.X = sp.csr_matrix(x)
    return out

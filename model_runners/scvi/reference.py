"""The Census variants: a dataset mapped onto a pretrained scVI reference (scArches query mapping).

The reference `model.pt` needs a full unpickle, so it is read once through `czb_core.models.safe_load`
(sha256 checked on the very bytes unpickled) and handed to scvi-tools as an in-memory reference.
`SCVI.prepare_query_anndata` and `SCVI.load_query_data` accept either a directory, which they would
`torch.load` themselves (twice, after our check), or a loaded model, from which scvi-tools 1.4's
`_get_loaded_data` reads exactly three things: `_get_user_attributes()`, `get_var_names()` and
`module.state_dict()`. `SavedReference` provides those three from the verified file, so scvi-tools never
opens the file. tests/test_scvi.py checks that the result equals scvi-tools' own directory loading.
"""

from __future__ import annotations

import copy
import warnings
from typing import Optional

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from czb_core.errors import WeightsError
from czb_core.models.safe_load import VerifiedFile, torch_load_verified
from czb_core.progress import CancelToken, ProgressCallback
from model_runners.scvi.latent import latent_mean, lightning_device

MODEL_FILE = "model.pt"
SUPPORTED_SETUP = {"layer", "batch_key"}  # setup_anndata arguments this runner can supply for a query


class _StateDict:
    """Stands for `model.module`: scvi-tools only calls `state_dict()` on it (and deep-copies the result)."""

    def __init__(self, state: dict):
        self._state = state

    def state_dict(self) -> dict:
        return self._state


class SavedReference:
    """A saved `scvi.model.SCVI` reference, in the shape scvi-tools' query API reads from a loaded model."""

    def __init__(self, saved: object, source: str):
        if not isinstance(saved, dict) or not {"model_state_dict", "var_names", "attr_dict"} <= saved.keys():
            raise WeightsError(f"{source} is not a scvi-tools model save (model_state_dict, var_names, attr_dict)")
        attrs = saved["attr_dict"]
        registry = attrs.get("registry_", {})
        if registry.get("model_name", "SCVI") != "SCVI":  # older saves do not name their class
            raise WeightsError(f"{source} holds a {registry.get('model_name')} model, not SCVI")
        if registry.get("setup_method_name", "setup_anndata") != "setup_anndata":
            raise WeightsError(f"{source} was set up with {registry.get('setup_method_name')}; "
                               "only models set up with SCVI.setup_anndata can take a query")
        setup = registry.get("setup_args", {})
        unsupported = sorted(k for k, v in setup.items() if v is not None and k not in SUPPORTED_SETUP)
        if unsupported:
            raise WeightsError(f"{source} needs query covariates this runner does not supply: {unsupported}")
        state = dict(saved["model_state_dict"])
        pyro_store = state.pop("pyro_param_store", None)  # saved by recent scvi-tools; empty for SCVI
        if pyro_store and pyro_store.get("params"):
            raise WeightsError(f"{source} holds Pyro parameters; it is not a plain SCVI model")
        self.module = _StateDict(state)
        self.var_names = pd.Index(np.asarray(saved["var_names"]).astype(str))
        self.batch_key: Optional[str] = setup.get("batch_key")
        self.layer: Optional[str] = setup.get("layer")
        self._attrs = attrs

    def _get_user_attributes(self) -> list[tuple[str, object]]:
        """A fresh copy each call: scvi-tools pops entries from what it receives."""
        return list(copy.deepcopy(self._attrs).items())

    def get_var_names(self, legacy_mudata_format: bool = False) -> np.ndarray:
        return self.var_names.to_numpy()


def load_reference(verified: VerifiedFile) -> SavedReference:
    """Unpickle the verified bytes of a reference's `model.pt` (on the CPU; scvi-tools moves it later)."""
    return SavedReference(torch_load_verified(verified, map_location="cpu"), str(verified.path))


def overlap(genes_g: np.ndarray, reference: SavedReference) -> tuple[int, int]:
    """(reference genes found in the dataset, reference genes): the share scvi-tools warns about."""
    return int(reference.var_names.isin(pd.Index(genes_g)).sum()), len(reference.var_names)


def map_query(
    x_ng: sp.csr_matrix,
    genes_g: np.ndarray,
    batch_n: pd.Series,
    reference: SavedReference,
    device: str,
    batch_size: int,
    seed: int,
    progress: ProgressCallback,
    cancel: CancelToken,
) -> np.ndarray:
    """`emb_nd`: latent means of the query cells under the reference model (no fine-tuning).

    Only the query's columns that the reference knows are kept before scvi-tools pads the missing
    reference genes with zeros and orders them as the reference (a 30,000-gene query is never
    concatenated whole). Batch labels go to the reference's batch column; the Census models ignore
    batch in the encoder, so they do not change the latent mean but must be present for the setup.
    """
    import scvi

    keep_g = pd.Index(genes_g).isin(reference.var_names)
    x_nk = x_ng[:, np.flatnonzero(keep_g)]
    obs = pd.DataFrame(index=pd.RangeIndex(x_nk.shape[0]).astype(str))
    if reference.batch_key is not None:
        obs[reference.batch_key] = pd.Categorical(np.asarray(batch_n, dtype=str))
    layers = {reference.layer: x_nk} if reference.layer else None
    query = ad.AnnData(X=x_nk, obs=obs, var=pd.DataFrame(index=pd.Index(genes_g[keep_g])), layers=layers)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Query data contains less than")  # reported by the validator
        scvi.model.SCVI.prepare_query_anndata(query, reference)
    accelerator, index = lightning_device(device)
    scvi.settings.seed = seed  # new batch categories get freshly initialised weights
    model = scvi.model.SCVI.load_query_data(query, reference, accelerator=accelerator, device=index)
    model.is_trained = True
    return latent_mean(model, batch_size, progress, cancel)

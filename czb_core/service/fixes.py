"""Fixes the app can apply for a user; each makes a new dataset version.

The original file is never touched: the workspace stores the result as a version whose parent is
the original, so a scientist can always see and undo what was changed. `FixRunner` applies fixes on a
background thread, never in a page script.
"""

from __future__ import annotations

import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from czb_core.errors import InputError
from czb_core.io.reading import as_csr, read_anndata
from czb_core.schema.gene_mapping import MappingReport, map_through_orthologs
from czb_core.schema.gene_mapping import map_symbols_to_ids as map_symbols_to_ids_of_species
from czb_core.service.workspace import DatasetRecord, Workspace
from czb_core.types import Organism


def sum_duplicate_genes(adata: ad.AnnData, names: Sequence[str]) -> ad.AnnData:
    """Columns that share a name become one column holding their sum (counts add up)."""
    codes_g, unique = pd.factorize(pd.Index(names))
    if len(unique) == len(names):
        out = adata.copy()
        out.var_names = pd.Index(unique, dtype=str)
        return out
    # merge_gk: genes x kept-genes indicator; x_ng @ merge_gk sums the columns of each group.
    merge_gk = sp.csr_matrix((np.ones(len(codes_g), np.float32), (np.arange(len(codes_g)), codes_g)),
                             shape=(len(codes_g), len(unique)))
    first_g = pd.Series(np.arange(len(codes_g))).groupby(codes_g).first().to_numpy()
    var = adata.var.iloc[first_g].copy()
    var.index = pd.Index(unique, dtype=str)
    layers = {k: as_csr(v) @ merge_gk for k, v in adata.layers.items()}
    x = as_csr(adata.X) @ merge_gk
    return ad.AnnData(X=x.astype(adata.X.dtype), obs=adata.obs.copy(), var=var, layers=layers,
                      obsm=dict(adata.obsm), uns=dict(adata.uns))


def use_var_column_as_gene_ids(adata: ad.AnnData, column: str) -> ad.AnnData:
    """Make `var[column]` the var_names (keeping the old names in `var["original_var_names"]`)."""
    if column not in adata.var:
        raise InputError(f"var has no column {column!r}; available: {', '.join(adata.var.columns)}")
    names = adata.var[column].astype(str).to_numpy()
    if (names == "").any() or pd.isna(adata.var[column]).any():
        raise InputError(f"var[{column!r}] has empty values; it cannot name every gene")
    out = adata.copy()
    out.var["original_var_names"] = adata.var_names.to_numpy()
    return sum_duplicate_genes(out, names)


def map_symbols_to_ids(adata: ad.AnnData, organism: Organism, column: str | None = None
                       ) -> tuple[ad.AnnData, MappingReport]:
    """Symbols (var_names or `var[column]`) of the dataset's own species to its Ensembl ids; duplicates
    summed, unresolved genes dropped.

    Unresolved genes are dropped because a model keyed by ids cannot use them anyway; the report lists
    them, so nothing is lost silently.
    """
    symbols = adata.var[column].astype(str).to_numpy() if column else adata.var_names.to_numpy()
    mapping = map_symbols_to_ids_of_species(symbols, organism)
    return _keep_mapped(adata, symbols, mapping, f"no gene symbol could be mapped to a {organism.latin_name} "
                                                 "Ensembl id; is the organism right?")


def map_to_orthologs(adata: ad.AnnData, source: Organism, target: Organism, column: str | None = None
                     ) -> tuple[ad.AnnData, MappingReport]:
    """A cross-species experiment, never a default: genes of `source` to the Ensembl ids of their
    one-to-one `target` orthologs (the report gives the share kept)."""
    names = adata.var[column].astype(str).to_numpy() if column else adata.var_names.to_numpy()
    mapping = map_through_orthologs(names, source, target, to="id")
    return _keep_mapped(adata, names, mapping, f"no {source.latin_name} gene has a one-to-one "
                                               f"{target.latin_name} ortholog")


def _keep_mapped(adata: ad.AnnData, names: np.ndarray, mapping, nothing: str) -> tuple[ad.AnnData, MappingReport]:
    keep = mapping.resolved
    if not keep.any():
        raise InputError(nothing)
    out = adata[:, keep].copy()
    out.var["feature_name"] = names[keep]
    return sum_duplicate_genes(out, mapping.mapped[keep].astype(str)), mapping.report


def make_batch_key(adata: ad.AnnData, columns: Sequence[str], key: str = "batch") -> ad.AnnData:
    """`obs[key]` = the listed obs columns joined with '_' (as the Census scVI models build batch)."""
    missing = [c for c in columns if c not in adata.obs]
    if missing or not columns:
        raise InputError(f"obs has no column(s) {missing}; available: {', '.join(adata.obs.columns)}")
    out = adata.copy()
    joined = out.obs[list(columns)].astype(str).agg("_".join, axis=1)
    out.obs[key] = pd.Categorical(joined)
    return out


@dataclass
class FixResult:
    """A new dataset version, and the mapping report when the fix mapped gene names."""

    record: DatasetRecord
    mapping_csv: Optional[str] = None
    mapping_summary: Optional[str] = None


FIXES = {
    "var_column_as_genes": "genes from a var column",
    "symbols_to_ids": "symbols mapped",
    "orthologs": "orthologs (cross-species)",
    "batch_key": "batch key built",
}


def version_name(parent_name: str, fix: str) -> str:
    """"<name> · <what changed>": the parent's name without its file suffix, so versions of versions read
    "cells · symbols mapped · batch key built" rather than repeating ".h5ad"."""
    stem = parent_name
    for suffix in (".h5ad", ".h5"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return f"{stem} · {FIXES[fix]}"


def apply_fix(workspace: Workspace, dataset_id: str, fix: str, owner: Optional[str] = None,
              check_space: Callable[[str, int], None] = lambda owner, n_bytes: None, **args) -> FixResult:
    """Read the dataset record `dataset_id` of `owner`, apply one fix, store the result as a version named
    "<name> · <what changed>". `check_space(owner, n_bytes)` refuses a version that would pass the owner's
    disk quota (a version is about the size of its parent), before anything is read."""
    if fix not in FIXES:
        raise InputError(f"unknown fix {fix!r}; one of {', '.join(FIXES)}")
    record = workspace.get(dataset_id, owner)  # a fix applies to the user's own dataset
    check_space(record.owner, record.size_bytes)
    adata = read_anndata(workspace.dataset_path(record.id, owner))
    mapping = None
    if fix == "var_column_as_genes":
        adata, note = use_var_column_as_gene_ids(adata, args["column"]), f"genes from var['{args['column']}']"
    elif fix == "symbols_to_ids":
        organism = Organism.parse(args["organism"])
        adata, mapping = map_symbols_to_ids(adata, organism, args.get("column"))
        note = f"symbols mapped to {organism.latin_name} Ensembl ids ({mapping.reference.label})"
    elif fix == "orthologs":
        source, target = Organism.parse(args["source"]), Organism.parse(args["target"])
        adata, mapping = map_to_orthologs(adata, source, target, args.get("column"))
        note = (f"cross-species: {source.latin_name} genes as {target.latin_name} orthologs "
                f"({mapping.share_kept:.0%} of genes kept)")
    else:
        adata = make_batch_key(adata, args["columns"], args.get("key", "batch"))
        note = f"obs['{args.get('key', 'batch')}'] from {', '.join(args['columns'])}"
    version = workspace.add_anndata(adata, name=version_name(record.name, fix), owner=record.owner,
                                    parent_sha256=record.sha256, note=note)
    return FixResult(version, mapping.to_csv() if mapping else None, mapping.summary() if mapping else None)


class FixRunner:
    """Runs fixes on a background thread: reading and rewriting a large file takes a while, and a page
    script is interrupted by every click. A fix is identified by an id the page keeps and polls."""

    def __init__(self, workspace: Workspace, check_space: Callable[[str, int], None] = lambda owner, n_bytes: None):
        self.workspace, self.check_space = workspace, check_space
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="czb-fix")
        self._futures: dict[str, Future] = {}

    def submit(self, dataset_id: str, fix: str, owner: Optional[str] = None, **args) -> str:
        fix_id = uuid.uuid4().hex[:12]
        self._futures[fix_id] = self._pool.submit(apply_fix, self.workspace, dataset_id, fix, owner,
                                                  self.check_space, **args)
        return fix_id

    def result(self, fix_id: str) -> Optional[FixResult]:
        """None while running; the result when done; the fix's own error (a `CzbError`) when it failed."""
        future = self._futures.get(fix_id)
        if future is None:
            raise KeyError(f"no fix {fix_id}")
        return future.result() if future.done() else None

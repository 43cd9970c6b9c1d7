"""The data manager: what a dataset holds, decided once, for one model.

Built from a `DatasetHeader` and the model's declared `DataNeeds`, it resolves where the raw counts live,
which genes those counts have and their names in the model's naming (Ensembl ids, symbols or anything),
the organism (given or detected), each cell's batch label, and the cells kept. Validators judge these
facts and runners read them; nothing else decides them. Bound to the loaded AnnData (`bind`), it hands
out row blocks of counts, so runners can prepare data block by block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, cast

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from czb_core.errors import ConfigError
from czb_core.io.header import DatasetHeader
from czb_core.io.reading import as_csr
from czb_core.schema.gene_references import strip_version
from czb_core.schema.species import (
    GeneIdSystem,
    SpeciesDetection,
    compare_declared_organism,
    detect_species,
    gene_id_system,
)
from czb_core.types import Organism

ENSEMBL_COLUMNS = ("ensembl_id", "feature_id", "gene_ids", "gene_id")
SYMBOL_COLUMNS = ("feature_name", "gene_symbols", "gene_name", "gene_symbol")
NAMINGS = {
    "ensembl": ((GeneIdSystem.ENSEMBL, GeneIdSystem.ENSEMBL_VERSIONED), ENSEMBL_COLUMNS),
    "symbol": ((GeneIdSystem.SYMBOL,), SYMBOL_COLUMNS),
}
UNASSIGNED = "unassigned"


@dataclass(frozen=True)
class BatchSpec:
    """How each cell's batch label is built: none, a constant, or obs columns concatenated as strings."""

    columns: tuple[str, ...] = ()
    constant: Optional[str] = None
    chosen: bool = False  # the user named it (else the model's default)

    @classmethod
    def from_params(cls, batch_key: Optional[str], batch_columns: Sequence[str] = (),
                    default: tuple[str, ...] = ()) -> "BatchSpec":
        columns = tuple(c for c in batch_columns if c)
        if batch_key and columns:
            raise ConfigError("give batch_key or batch_columns, not both")
        if batch_key == UNASSIGNED:
            return cls(constant=UNASSIGNED, chosen=True)
        if batch_key or columns:
            return cls(columns=(batch_key,) if batch_key else columns, chosen=True)
        return cls(columns=default)

    def labels(self, obs: pd.DataFrame) -> Optional[pd.Series]:
        """One label per cell (for several columns, as CELLxGENE Census: the strings concatenated), or None."""
        if self.constant is not None:
            return pd.Series(self.constant, index=obs.index)
        if not self.columns:
            return None
        labels = obs[self.columns[0]].astype(str)
        for column in self.columns[1:]:
            labels = labels + obs[column].astype(str)
        return labels


@dataclass(frozen=True)
class DataNeeds:
    """What a model needs of a dataset; a validator declares it, the data manager resolves it."""

    gene_naming: Optional[str] = None  # "ensembl", "symbol", or None for any naming
    raw_counts: bool = True
    organisms: Optional[tuple[Organism, ...]] = None  # None: any organism
    obs_keys: tuple[str, ...] = ()
    var_keys: tuple[str, ...] = ()
    batch: BatchSpec = BatchSpec()


def resolve_gene_names(var: pd.DataFrame, var_names: pd.Index, naming: Optional[str]) -> tuple[str, np.ndarray]:
    """(source, names) in the wanted naming: var_names, else the first var column that holds it.

    Ensembl ids lose their version suffix. When nothing holds the wanted naming, var_names are returned
    and the validator reports the problem.
    """
    names_g = np.asarray(var_names, dtype=str)
    if naming is None:
        return "var_names", names_g
    systems, columns = NAMINGS[naming]
    candidates = [("var_names", var_names)] + [(f"var['{c}']", var[c]) for c in columns if c in var]
    for source, names in candidates:
        names = np.asarray(names, dtype=str)
        if gene_id_system(names) in systems:
            return source, strip_version(names) if naming == "ensembl" else names
    return "var_names", names_g


def detect_organism_of(header: DatasetHeader) -> SpeciesDetection:
    """The species of the dataset's genes, from var_names, or from an Ensembl-id var column when the
    names alone cannot decide (ids decide where symbols shared by related species cannot). Computed once
    per header: every model's data manager reads the same answer."""
    if header.species is None:
        detected = detect_species(np.asarray(header.var_names, dtype=str))
        if detected.uncertain:
            for column in ENSEMBL_COLUMNS:
                if column in header.var:
                    from_column = detect_species(np.asarray(header.var[column], dtype=str))
                    if not from_column.uncertain:
                        detected = from_column
                        break
        header.species = detected
    return cast(SpeciesDetection, header.species)


class DataManager:
    """The resolved facts of one dataset for one model; see the module docstring."""

    def __init__(self, header: DatasetHeader, needs: DataNeeds = DataNeeds(), organism: Optional[Organism] = None):
        self.header = header
        self.needs = needs
        self.counts_location: Optional[str] = header.counts_location  # None: no matrix holds raw counts
        self.matrix_location = self.counts_location or "X"  # what runners read (validators judge a non-count X)
        if self.matrix_location == "raw/X":  # raw.X has its own genes
            self.var, self.var_names = header.raw_var, header.raw_var_names
        else:
            self.var, self.var_names = header.var, header.var_names
        self.gene_source, self.genes_g = resolve_gene_names(self.var, self.var_names, needs.gene_naming)
        self.gene_system = gene_id_system(self.genes_g)
        self.detection = detect_organism_of(header)
        self.organism_given = organism
        self.organism: Optional[Organism] = organism or self.detection.organism
        # a set organism that strong evidence contradicts: kept (the user decides), with both figures
        self.organism_check = None if organism is None else compare_declared_organism(self.detection, organism)
        self.cells_kept_n = np.ones(header.n_obs, dtype=bool)  # every cell, until a runner's filter says otherwise
        self.first_row = 0  # the input row of this manager's first cell (a chunk or shard of a larger input)
        self._adata: Optional[ad.AnnData] = None

    @property
    def obs(self) -> pd.DataFrame:
        return self.header.obs if self._adata is None else self._adata.obs

    @property
    def n_cells(self) -> int:
        return self.header.n_obs

    def genes_in(self, naming: Optional[str]) -> np.ndarray:
        """The counts' genes in another naming than the model's ("ensembl", "symbol"), for a reader that
        matches genes by both (the tokenizer lab: ids for gene tables, symbols where tables are keyed so)."""
        return resolve_gene_names(self.var, self.var_names, naming)[1]

    def batch_labels(self) -> Optional[pd.Series]:
        return self.needs.batch.labels(self.obs)

    # -- reading rows ------------------------------------------------------------------------------

    @property
    def is_bound(self) -> bool:
        return self._adata is not None

    def bind(self, adata: ad.AnnData) -> "DataManager":
        """Attach the loaded data to read counts from; its obs replace the header's (same cells)."""
        if adata.n_obs != self.header.n_obs:
            raise ValueError(f"the loaded data has {adata.n_obs} cells, its header {self.header.n_obs}")
        self._adata = adata
        return self

    def _matrix(self):
        if self._adata is None:
            raise RuntimeError("bind() the loaded AnnData before reading counts")
        if self.matrix_location == "layers/counts":
            return self._adata.layers["counts"]
        if self.matrix_location == "raw/X":
            return self._adata.raw.X
        return self._adata.X

    def counts(self, rows: slice | np.ndarray = slice(None)) -> sp.csr_matrix:
        """`x_ng` of the chosen rows (all by default) from wherever the counts live, as CSR."""
        block = self._matrix()[rows]
        return as_csr(block)

"""Validators: can this model run on this dataset, and if not, what should the user do?

As in cz-benchmarks, a model implementation mixes in a validator
(`class PCABaseline(PCAValidator, BaseModelImplementation)`), and a `BaseSingleCellValidator` subclass
must declare `available_organisms`, `required_obs_keys` and `required_var_keys` or fail at class
creation. Unlike cz-benchmarks, `check()` collects every problem into a `ValidationReport` and works on a
`DatasetHeader`, so the app and `czb validate` can judge a 200,000-cell file without loading its matrix.
This module is the one place that judges the data schema; the facts it judges (where the counts are, the
gene names in the model's naming, the organism) are resolved once by `czb_core.schema.data_manager`.
"""

from __future__ import annotations

from abc import ABC
from pathlib import Path
from typing import ClassVar, Optional, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from czb_core.errors import DatasetValidationError
from czb_core.io.header import DatasetHeader, header_from_anndata
from czb_core.schema.data_manager import ENSEMBL_COLUMNS, SYMBOL_COLUMNS, DataManager, DataNeeds
from czb_core.schema.datasets import BaseDataset, SingleCellDataset
from czb_core.schema.report import Severity, ValidationReport
from czb_core.schema.species import GeneIdSystem
from czb_core.types import DataType, ModelType, Organism, Output

SMALL_PANEL_SHARE = 0.25  # of a model's vocabulary: below it, the dataset looks like a targeted gene panel
COUNTS_FIX = (
    "store raw integer UMI/read counts in X, layers['counts'] or raw.X "
    "(normalised, log-transformed or scaled values cannot be turned back into counts)"
)


class BaseModelValidator(ABC):
    """What a model needs: a dataset type and typed inputs; subclasses add the checks."""

    dataset_type: ClassVar[type[BaseDataset]]
    model_type: ClassVar[ModelType]
    output: ClassVar[Output] = Output.EMBEDDING
    display_name: str = ""

    @property
    def name(self) -> str:
        return self.display_name or type(self).__name__

    @property
    def inputs(self) -> set[DataType]:
        """ORGANISM is not listed: an unknown organism is a check (with a fix), not a missing input."""
        return {DataType.ANNDATA, DataType.METADATA}

    @property
    def outputs(self) -> set[DataType]:
        return {DataType.EMBEDDING if self.output == Output.EMBEDDING else DataType.PERTURBATION_PRED}

    def validate_dataset(self, dataset: BaseDataset) -> ValidationReport:
        """Check type and inputs, then every model check; raise one error listing all blocking problems."""
        if not isinstance(dataset, self.dataset_type):
            raise TypeError(
                f"{self.name} expects a {self.dataset_type.__name__}, got {type(dataset).__name__}"
            )
        missing = sorted(t.name for t in self.inputs if t not in dataset.inputs)
        if missing:
            raise DatasetValidationError(f"{self.name}: dataset is missing inputs {missing}; load it first")
        report = self._validate_dataset(dataset)
        report.raise_for_errors()
        return report

    def _validate_dataset(self, dataset: BaseDataset) -> ValidationReport:
        return ValidationReport(model=self.name)


class BaseSingleCellValidator(BaseModelValidator):
    """Checks for models of single-cell expression: organism, genes, counts, keys, vocabulary.

    A subclass declares what the model needs (the class attributes below, or `data_needs()` when they
    depend on the variant and parameters); `check()` judges the facts a `DataManager` resolved from them.
    Checks that need the model's files (vocabulary overlap) run in `check_weights()`, an explicit step
    once the weights are on disk, never as a side effect of `check()`.
    """

    dataset_type = SingleCellDataset
    available_organisms: ClassVar[Optional[Sequence[Organism]]]  # None: any organism
    required_obs_keys: ClassVar[Sequence[str]]
    required_var_keys: ClassVar[Sequence[str]]
    gene_id_kind: ClassVar[Optional[str]] = None  # "ensembl", "symbol", or None for any naming
    requires_raw_counts: ClassVar[bool] = True
    # vocabulary overlap: an error below the first share of the dataset's genes, a warning below the second
    vocabulary_shares: ClassVar[tuple[float, float]] = (0.2, 0.8)
    # a model that reads a cell through its genes cannot embed a cell with none of its genes: set these
    cell_input: ClassVar[Optional[str]] = None  # what such a cell lacks, e.g. "tokens"; None: empty cells only warn
    no_genes_fix: ClassVar[str] = ("filter out cells without the model's genes first (keep its genes, then "
                                   "sc.pp.filter_cells(adata, min_genes=1)); such cells carry nothing to read")
    variant: Optional[str] = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for attr in ("available_organisms", "required_obs_keys", "required_var_keys"):
            if not hasattr(cls, attr):
                raise TypeError(f"{cls.__name__} must define class attribute {attr!r}")

    def data_needs(self) -> DataNeeds:
        organisms = None if self.available_organisms is None else tuple(self.available_organisms)
        return DataNeeds(self.gene_id_kind, self.requires_raw_counts, organisms,
                         tuple(self.required_obs_keys), tuple(self.required_var_keys))

    def data_manager(self, header: DatasetHeader, organism: Optional[Organism] = None) -> DataManager:
        return DataManager(header, self.data_needs(), organism)

    # -- the checks --------------------------------------------------------------------------------

    def check(self, data: DatasetHeader | DataManager, organism: Optional[Organism] = None) -> ValidationReport:
        """Every check, every problem; never raises for a data problem. `data` is a header (a data manager
        is built from it) or the data manager a run already built."""
        manager = data if isinstance(data, DataManager) else self.data_manager(data, organism)
        needs = manager.needs
        report = ValidationReport(model=self.name, variant=self.variant)
        self._check_organism(report, manager)
        self._check_gene_ids(report, manager)
        self._check_keys(report, "obs keys", manager.obs.columns, needs.obs_keys, "obs")
        self._check_keys(report, "var keys", manager.var.columns, needs.var_keys, "var")
        self._check_counts(report, manager)
        self._check_empty_cells(report, manager.header)
        self._check_duplicates(report, manager)
        return report

    def check_weights(self, manager: DataManager, report: ValidationReport, weights_dirs: dict[str, Path]) -> None:
        """Checks that need the model's files (`weights_dirs`: role -> folder on disk): the vocabulary overlap
        when the model has a vocabulary and, once the data is loaded, the cells with none of its genes."""
        known_g = self.known_genes(manager.genes_g, weights_dirs)
        if known_g is None:
            return
        n_model_genes = self.vocabulary_size(weights_dirs) or len(self.vocabulary(weights_dirs))
        self._check_vocabulary(report, manager.genes_g, known_g, n_model_genes)
        if manager.is_bound and self.cell_input is not None:
            rows = np.flatnonzero(manager.cells_kept_n)
            detected_n = genes_detected_per_cell(manager.counts(rows), known_g)
            empty = np.flatnonzero(detected_n == 0)
            if len(empty):
                names = ", ".join(map(str, manager.obs.index[rows[empty[:3]]]))
                self._report_cells_without_genes(report, f"{len(empty):,} of {len(detected_n):,} cells have no gene "
                                                         f"in the vocabulary (e.g. {names})")

    def known_genes(self, genes_g: np.ndarray, weights_dirs: dict[str, Path]) -> Optional[np.ndarray]:
        """Which of the dataset's genes the model reads (bool per gene), None without a vocabulary. By
        default a name in `vocabulary()`; a model that matches names its own way overrides this."""
        vocab = self.vocabulary(weights_dirs)
        return None if vocab is None else np.isin(genes_g, list(vocab))

    def vocabulary(self, weights_dirs: dict[str, Path]) -> Optional[set[str]]:
        """Names the model knows, in its naming, read from its files; None when it has no vocabulary."""
        return None

    def vocabulary_size(self, weights_dirs: dict[str, Path]) -> Optional[int]:
        """How many genes the model knows, when `vocabulary()` also holds other names for them (symbols,
        retired ids); None: the vocabulary's own size."""
        return None

    def _validate_dataset(self, dataset: SingleCellDataset) -> ValidationReport:  # type: ignore[override]
        return self.check(header_from_anndata(dataset.adata, dataset.path), dataset.organism)

    def _check_organism(self, report: ValidationReport, manager: DataManager) -> None:
        report.ran("organism")
        detected, given, allowed = manager.detection, manager.organism_given, manager.needs.organisms
        report.facts["gene ids"] = detected.describe()
        if manager.organism_check is not None and manager.organism_check.contradicts:
            report.add("organism", "organism_mismatch", Severity.WARNING, manager.organism_check.message + ".",
                       f"set the organism to {detected.organism.latin_name} unless you know the gene names mislead")
        organism = manager.organism
        if organism is None:
            report.facts["organism"] = f"not decided: {detected.reason}"
        else:
            report.facts["organism"] = f"{organism.latin_name} ({'set' if given else 'detected from the gene names'})"
        if organism is None:
            if allowed is None:
                report.add("organism", "organism_unknown", Severity.INFO,
                           f"the species of the genes is not decided ({detected.reason}); {self.name} accepts any.")
            else:
                report.add("organism", "organism_unknown", Severity.ERROR,
                           f"the species of the genes is not decided ({detected.reason}) and {self.name} "
                           f"supports only {_organism_list(allowed)}.",
                           "set the organism of the dataset (the Organism choice above)")
        elif allowed is not None and organism not in allowed:
            report.add("organism", "organism_unsupported", Severity.ERROR,
                       f"{self.name} supports {_organism_list(allowed)}; this dataset is {organism.latin_name}.",
                       f"choose a model that supports {organism.latin_name}; mapping genes to another species' "
                       "orthologs is offered only as a labelled cross-species option")
        report.organism = organism

    def _check_gene_ids(self, report: ValidationReport, manager: DataManager) -> None:
        report.ran("gene ids")
        naming, system, source = manager.needs.gene_naming, manager.gene_system, manager.gene_source
        report.facts["genes read from"] = source
        if naming == "ensembl" and system not in (GeneIdSystem.ENSEMBL, GeneIdSystem.ENSEMBL_VERSIONED):
            report.add("gene ids", "symbols_not_ids" if system is GeneIdSystem.SYMBOL else "no_ensembl_ids",
                       Severity.ERROR,
                       f"{self.name} needs Ensembl gene ids, but var_names and var columns "
                       f"{list(ENSEMBL_COLUMNS)} hold {system.value} names.",
                       "map the gene symbols to Ensembl ids (the 'Map symbols to Ensembl ids' fix), or choose "
                       "the var column that holds Ensembl ids")
        elif naming == "symbol" and system is not GeneIdSystem.SYMBOL:
            report.add("gene ids", "ids_not_symbols", Severity.ERROR,
                       f"{self.name} needs gene symbols, but var_names and var columns "
                       f"{list(SYMBOL_COLUMNS)} hold {system.value} names.",
                       "choose the var column that holds gene symbols (the 'Use a var column as gene names' fix)")
        elif naming == "ensembl" and source != "var_names":
            report.add("gene ids", "ids_from_column", Severity.INFO, f"Ensembl ids are read from {source}.")

    def _check_keys(self, report, check: str, present, required: Sequence[str], where: str) -> None:
        report.ran(check)
        for key in required:
            if key not in present:
                report.add(check, f"missing_{where}_key", Severity.ERROR,
                           f"{self.name} needs the {where} column '{key}', which the dataset lacks.",
                           f"add {where}['{key}'] or choose an existing column to stand for it")

    def _check_counts(self, report: ValidationReport, manager: DataManager) -> None:
        report.ran("raw counts")
        report.ran("finite values")
        x = manager.header.x_sample
        location = manager.counts_location
        report.facts["raw counts"] = location or "not found"
        if x.has_nonfinite:
            report.add("finite values", "nonfinite_values", Severity.ERROR,
                       "X holds NaN or infinite values.", "remove or repair the affected cells before running")
        if location is None and manager.needs.raw_counts:
            what = "negative values (scaled data?)" if x.has_negative else f"non-integer values ({x.dtype})"
            report.add("raw counts", "not_raw_counts", Severity.ERROR,
                       f"{self.name} needs raw integer counts; X holds {what} and no layers['counts'] or "
                       "raw.X with counts was found.", COUNTS_FIX)
        elif location is None:
            report.add("raw counts", "not_raw_counts", Severity.WARNING,
                       f"X is not raw counts ({x.dtype}); {self.name} will use it as given.", COUNTS_FIX)
        elif location != "X":
            report.add("raw counts", "counts_elsewhere", Severity.INFO,
                       f"X is not raw counts; the raw counts in {location} will be used.")

    def _check_empty_cells(self, report: ValidationReport, header: DatasetHeader) -> None:
        report.ran("empty cells")
        if not header.n_empty_cells:
            return
        if self.cell_input is not None:
            scope = "" if header.empty_cells_exact else f" in a sample of {header.x_sample.n_rows_sampled}"
            self._report_cells_without_genes(report, f"{header.n_empty_cells:,} cells{scope} have no counts at all")
            return
        scope = "" if header.empty_cells_exact else f" (in a sample of {header.x_sample.n_rows_sampled})"
        report.add("empty cells", "empty_cells", Severity.WARNING,
                   f"{header.n_empty_cells:,} cells have no counts{scope}.",
                   "filter them first, e.g. sc.pp.filter_cells(adata, min_counts=1)")

    def _report_cells_without_genes(self, report: ValidationReport, what: str) -> None:
        report.add("empty cells", "cells_without_genes", Severity.ERROR,
                   f"{what}; {self.name} cannot embed a cell without {self.cell_input}.", self.no_genes_fix)

    def _check_duplicates(self, report: ValidationReport, manager: DataManager) -> None:
        report.ran("duplicate genes")
        keys = pd.Index(manager.genes_g)
        dup = keys[keys.duplicated()].unique()
        if len(dup):
            severity = Severity.ERROR if manager.needs.gene_naming else Severity.WARNING
            report.add("duplicate genes", "duplicate_genes", severity,
                       f"{len(dup):,} gene names in {manager.gene_source} occur more than once "
                       f"(e.g. {', '.join(map(str, dup[:3]))}).",
                       "sum or drop the duplicate columns, or call adata.var_names_make_unique()")

    def _check_vocabulary(self, report: ValidationReport, gene_names: np.ndarray, known_g: np.ndarray,
                          n_model_genes: int) -> None:
        report.ran("vocabulary")
        share = float(known_g.mean()) if len(gene_names) else 0.0
        n_known = len(set(gene_names[known_g]))
        covered = n_known / max(n_model_genes, 1)
        report.facts["vocabulary overlap"] = f"{share:.1%} of the dataset's genes"
        report.facts["vocabulary covered"] = f"{n_known:,} of the model's {n_model_genes:,} genes ({covered:.1%})"
        if share == 0:
            report.add("vocabulary", "no_vocabulary_overlap", Severity.ERROR,
                       f"none of the dataset's genes are in {self.name}'s vocabulary.",
                       "check the organism and gene naming (a mouse dataset on a human model looks like this)")
        elif share < self.vocabulary_shares[0]:
            report.add("vocabulary", "low_vocabulary_overlap", Severity.ERROR,
                       f"only {share:.1%} of the dataset's genes are in {self.name}'s vocabulary.",
                       "check the organism and gene naming")
        elif share < self.vocabulary_shares[1]:
            report.add("vocabulary", "partial_vocabulary_overlap", Severity.WARNING,
                       f"{share:.1%} of the dataset's genes are in {self.name}'s vocabulary; "
                       "the rest are ignored.")
        if share > 0 and covered < SMALL_PANEL_SHARE:
            report.add("vocabulary", "small_gene_panel", Severity.WARNING,
                       f"the dataset's genes cover only {covered:.1%} of {self.name}'s {n_model_genes:,}-gene "
                       f"vocabulary ({n_known:,} genes: a targeted panel?); a whole-transcriptome model sees "
                       "little of each cell, so compare it with the PCA baseline before trusting it.")


def genes_detected_per_cell(x_ng: sp.csr_matrix, known_g: np.ndarray) -> np.ndarray:
    """Per cell, how many stored positive counts fall on the genes a model reads (0: nothing to embed)."""
    hit_k = np.take(known_g, x_ng.indices) & (x_ng.data > 0)
    running = np.concatenate([[0], np.cumsum(hit_k)])
    return running[x_ng.indptr[1:]] - running[x_ng.indptr[:-1]]


def _organism_list(organisms: Sequence[Organism]) -> str:
    return ", ".join(o.latin_name for o in organisms)

"""Validators: can this model run on this dataset, and if not, what should the user do?

As in cz-benchmarks, a model implementation mixes in a validator
(`class PCABaseline(PCAValidator, BaseModelImplementation)`), and a `BaseSingleCellValidator` subclass
must declare `available_organisms`, `required_obs_keys` and `required_var_keys` or fail at class
creation. Unlike cz-benchmarks, `check()` collects every problem into a `ValidationReport` and works on a
`DatasetHeader`, so the app and `czb validate` can judge a 200,000-cell file without loading its matrix.
This module is the one place that checks the data schema; runners read genes through `gene_ids()`.
"""

from __future__ import annotations

from abc import ABC
from typing import ClassVar, Optional, Sequence

import numpy as np
import pandas as pd

from czb_core.datasets import BaseDataset, SingleCellDataset
from czb_core.errors import DatasetValidationError
from czb_core.genes import GeneIdDetection, GeneIdSystem, detect_gene_ids, strip_version
from czb_core.header import DatasetHeader, header_from_anndata
from czb_core.types import DataType, ModelType, Organism
from czb_core.validation import Severity, ValidationReport

ENSEMBL_COLUMNS = ("ensembl_id", "feature_id", "gene_ids", "gene_id")
SYMBOL_COLUMNS = ("feature_name", "gene_symbols", "gene_name", "gene_symbol")
COUNTS_FIX = (
    "store raw integer UMI/read counts in X, layers['counts'] or raw.X "
    "(normalised, log-transformed or scaled values cannot be turned back into counts)"
)


class BaseModelValidator(ABC):
    """What a model needs: a dataset type and typed inputs; subclasses add the checks."""

    dataset_type: ClassVar[type[BaseDataset]]
    model_type: ClassVar[ModelType]
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
        return {DataType.EMBEDDING}

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
    """Checks for models of single-cell expression: organism, genes, counts, keys, vocabulary."""

    dataset_type = SingleCellDataset
    available_organisms: ClassVar[Optional[Sequence[Organism]]]  # None: any organism
    required_obs_keys: ClassVar[Sequence[str]]
    required_var_keys: ClassVar[Sequence[str]]
    gene_id_kind: ClassVar[Optional[str]] = None  # "ensembl", "symbol", or None for any naming
    requires_raw_counts: ClassVar[bool] = True
    variant: Optional[str] = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for attr in ("available_organisms", "required_obs_keys", "required_var_keys"):
            if not hasattr(cls, attr):
                raise TypeError(f"{cls.__name__} must define class attribute {attr!r}")

    def vocabulary(self) -> Optional[set[str]]:
        """Genes the model knows, in its naming, when it has a vocabulary (and it is available)."""
        return None

    # -- gene naming -------------------------------------------------------------------------------

    def gene_ids(self, var: pd.DataFrame, var_names: pd.Index) -> tuple[str, np.ndarray]:
        """(source, names) of the genes in the model's naming: var_names or the first fitting column."""
        if self.gene_id_kind is None:
            return "var_names", np.asarray(var_names, dtype=str)
        wanted = {"ensembl": (GeneIdSystem.ENSEMBL, GeneIdSystem.ENSEMBL_VERSIONED),
                  "symbol": (GeneIdSystem.SYMBOL,)}[self.gene_id_kind]
        columns = ENSEMBL_COLUMNS if self.gene_id_kind == "ensembl" else SYMBOL_COLUMNS
        candidates = [("var_names", var_names)] + [(f"var['{c}']", var[c]) for c in columns if c in var]
        for source, names in candidates:
            names = np.asarray(names, dtype=str)
            if detect_gene_ids(names).system in wanted:
                return source, strip_version(names) if self.gene_id_kind == "ensembl" else names
        return "var_names", np.asarray(var_names, dtype=str)

    # -- the checks --------------------------------------------------------------------------------

    def check(self, header: DatasetHeader, organism: Optional[Organism] = None) -> ValidationReport:
        """Every check, every problem; never raises for a data problem."""
        report = ValidationReport(model=self.name, variant=self.variant)
        self._check_organism(report, header, organism)
        source, gene_names = self._check_gene_ids(report, header)
        self._check_keys(report, "obs keys", header.obs.columns, self.required_obs_keys, "obs")
        self._check_keys(report, "var keys", header.var.columns, self.required_var_keys, "var")
        self._check_counts(report, header)
        self._check_empty_cells(report, header)
        self._check_duplicates(report, gene_names, source)
        self._check_vocabulary(report, gene_names)
        return report

    def _validate_dataset(self, dataset: SingleCellDataset) -> ValidationReport:
        return self.check(header_from_anndata(dataset.adata, dataset.path), dataset.organism)

    def _check_organism(self, report: ValidationReport, header: DatasetHeader, given: Optional[Organism]):
        report.ran("organism")
        detected = detect_organism_of(header)
        report.facts["gene ids"] = detected.describe()
        allowed = self.available_organisms
        if given is not None and detected.organism is not None and detected.organism != given:
            if detected.organism_from == "ensembl_prefix":
                report.add("organism", "organism_mismatch", Severity.ERROR,
                           f"the gene ids look {detected.organism.latin_name} but the organism was given "
                           f"as {given.latin_name}.",
                           f"give the organism as {detected.organism.name.lower()}, or check the file")
        organism = given or detected.organism
        report.facts["organism"] = (
            f"{organism.latin_name} ({'given' if given else 'detected from ' + detected.organism_evidence})"
            if organism else "not detected"
        )
        if organism is None:
            if allowed is None:
                report.add("organism", "organism_unknown", Severity.INFO,
                           f"the organism could not be detected from the gene ids; {self.name} accepts any.")
            else:
                report.add("organism", "organism_unknown", Severity.ERROR,
                           f"the organism could not be detected from the gene ids and {self.name} "
                           f"supports only {_organism_list(allowed)}.",
                           "give the organism explicitly (--organism homo_sapiens, or the organism picker)")
        elif allowed is not None and organism not in allowed:
            report.add("organism", "organism_unsupported", Severity.ERROR,
                       f"{self.name} supports {_organism_list(allowed)}; this dataset is {organism.latin_name}.",
                       "choose a model that supports this organism (see the compatibility matrix)")
        report.organism = organism

    def _check_gene_ids(self, report: ValidationReport, header: DatasetHeader) -> tuple[str, np.ndarray]:
        report.ran("gene ids")
        source, gene_names = self.gene_ids(header.var, header.var_names)
        system = detect_gene_ids(gene_names).system
        report.facts["genes read from"] = source
        if self.gene_id_kind == "ensembl" and system not in (GeneIdSystem.ENSEMBL, GeneIdSystem.ENSEMBL_VERSIONED):
            report.add("gene ids", "symbols_not_ids" if system is GeneIdSystem.SYMBOL else "no_ensembl_ids",
                       Severity.ERROR,
                       f"{self.name} needs Ensembl gene ids, but var_names and var columns "
                       f"{list(ENSEMBL_COLUMNS)} hold {system.value} names.",
                       "map symbols to Ensembl ids (the app's 'Map symbols to Ensembl ids' fix, or "
                       "czb_core.genes.map_symbols_to_ensembl), or point var['ensembl_id'] at the ids")
        elif self.gene_id_kind == "symbol" and system is not GeneIdSystem.SYMBOL:
            report.add("gene ids", "ids_not_symbols", Severity.ERROR,
                       f"{self.name} needs gene symbols, but var_names and var columns "
                       f"{list(SYMBOL_COLUMNS)} hold {system.value} names.",
                       "add var['feature_name'] with gene symbols (the app's 'Map Ensembl ids to symbols' fix)")
        elif self.gene_id_kind == "ensembl" and source != "var_names":
            report.add("gene ids", "ids_from_column", Severity.INFO, f"Ensembl ids are read from {source}.")
        return source, gene_names

    def _check_keys(self, report, check: str, present, required: Sequence[str], where: str) -> None:
        report.ran(check)
        for key in required:
            if key not in present:
                report.add(check, f"missing_{where}_key", Severity.ERROR,
                           f"{self.name} needs the {where} column '{key}', which the dataset lacks.",
                           f"add {where}['{key}'] or choose an existing column to stand for it")

    def _check_counts(self, report: ValidationReport, header: DatasetHeader) -> None:
        report.ran("raw counts")
        report.ran("finite values")
        x = header.x_sample
        location = header.counts_location
        report.facts["raw counts"] = location or "not found"
        if x.has_nonfinite:
            report.add("finite values", "nonfinite_values", Severity.ERROR,
                       "X holds NaN or infinite values.", "remove or repair the affected cells before running")
        if location is None and self.requires_raw_counts:
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
        if header.n_empty_cells:
            scope = "" if header.empty_cells_exact else f" (in a sample of {header.x_sample.n_rows_sampled})"
            report.add("empty cells", "empty_cells", Severity.WARNING,
                       f"{header.n_empty_cells:,} cells have no counts{scope}.",
                       "filter them first, e.g. sc.pp.filter_cells(adata, min_counts=1)")

    def _check_duplicates(self, report: ValidationReport, gene_names: np.ndarray, source: str) -> None:
        report.ran("duplicate genes")
        keys = strip_version(gene_names) if self.gene_id_kind == "ensembl" else gene_names
        dup = pd.Index(keys)[pd.Index(keys).duplicated()].unique()
        if len(dup):
            severity = Severity.ERROR if self.gene_id_kind else Severity.WARNING
            report.add("duplicate genes", "duplicate_genes", severity,
                       f"{len(dup):,} gene names in {source} occur more than once "
                       f"(e.g. {', '.join(map(str, dup[:3]))}).",
                       "sum or drop the duplicate columns, or call adata.var_names_make_unique()")

    def _check_vocabulary(self, report: ValidationReport, gene_names: np.ndarray) -> None:
        vocab = self.vocabulary()
        if vocab is None:
            return
        report.ran("vocabulary")
        share = float(np.isin(gene_names, list(vocab)).mean()) if len(gene_names) else 0.0
        report.facts["vocabulary overlap"] = f"{share:.1%} of the dataset's genes"
        if share == 0:
            report.add("vocabulary", "no_vocabulary_overlap", Severity.ERROR,
                       f"none of the dataset's genes are in {self.name}'s vocabulary.",
                       "check the organism and gene naming (a mouse dataset on a human model looks like this)")
        elif share < 0.2:
            report.add("vocabulary", "low_vocabulary_overlap", Severity.ERROR,
                       f"only {share:.1%} of the dataset's genes are in {self.name}'s vocabulary.",
                       "check the organism and gene naming")
        elif share < 0.8:
            report.add("vocabulary", "partial_vocabulary_overlap", Severity.WARNING,
                       f"{share:.1%} of the dataset's genes are in {self.name}'s vocabulary; "
                       "the rest are ignored.")


def detect_organism_of(header: DatasetHeader) -> GeneIdDetection:
    """Gene-id detection on var_names, or on an Ensembl-id var column when var_names are symbols."""
    detected = detect_gene_ids(np.asarray(header.var_names, dtype=str))
    if detected.organism_from != "ensembl_prefix":
        for column in ENSEMBL_COLUMNS:
            if column in header.var:
                from_column = detect_gene_ids(np.asarray(header.var[column], dtype=str))
                if from_column.organism_from == "ensembl_prefix":
                    return from_column
    return detected


def _organism_list(organisms: Sequence[Organism]) -> str:
    return ", ".join(o.latin_name for o in organisms)

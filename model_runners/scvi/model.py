"""scVI (Lopez et al. 2018): the `fit` variant trains on the dataset, the Census variants map onto a reference.

What a variant needs depends on the variant and on the batch parameters, so the validator sets its
requirements per instance (the class attributes are the `fit` defaults, which the base class demands):

- `fit`: any organism, any gene naming, raw counts; the batch column(s) only when the user names them.
- Census variants (the variant has weights): one organism (`resources.organism`), Ensembl ids, raw
  counts, and the batch columns Census used (`dataset_id`, `assay`, `suspension_type`, `donor_id`,
  concatenated as strings) unless the user chose others (`batch_columns`) or a constant
  (`batch_key=unassigned`); plus the share of the reference's genes found in the dataset once the
  reference is on disk (`check_weights`, after the download, or before a run when it is cached).

scvi-tools and torch are imported only when a model runs (or a cached reference's genes are read),
so validating stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from czb_core.errors import WeightsError
from czb_core.models.base import BaseModelImplementation
from czb_core.models.params import Param
from czb_core.models.registry import MODEL_ROLE
from czb_core.models.runner import LoadedModels, RunOutput
from czb_core.models.safe_load import verify_trusted_file
from czb_core.schema.data_manager import UNASSIGNED, BatchSpec, DataManager, DataNeeds
from czb_core.schema.report import Severity, ValidationReport
from czb_core.schema.validators import BaseSingleCellValidator
from czb_core.types import ModelType, Organism

CENSUS_BATCH_COLUMNS = ("dataset_id", "assay", "suspension_type", "donor_id")
OVERLAP_FACT = "reference gene overlap"
OTHER_COLUMNS_FIX = "choose other batch columns (the batch_columns parameter)"
CONSTANT_FIX = f"one constant batch (batch_key={UNASSIGNED})"


def add_overlap_problems(report: ValidationReport, n_found: int, n_reference: int, name: str) -> None:
    """The reference-gene share as a fact, a warning under 80% (scvi-tools' own threshold), an error under 20%."""
    share = n_found / n_reference
    report.ran("vocabulary")
    report.facts[OVERLAP_FACT] = f"{n_found:,} of {n_reference:,} reference genes ({share:.1%}) are in the dataset"
    what = f"only {n_found:,} of the {n_reference:,} genes of {name}'s reference ({share:.1%}) are in the dataset"
    if share < 0.2:
        report.add("vocabulary", "low_vocabulary_overlap", Severity.ERROR, f"{what}; the embedding would be noise.",
                   "check the organism and that var_names (or var['ensembl_id']) hold Ensembl ids of all genes, "
                   "not a subset")
    elif share < 0.8:
        report.add("vocabulary", "partial_vocabulary_overlap", Severity.WARNING,
                   f"{what}; the missing ones are set to zero, which may degrade the embedding.")


# Verified references by file version: a Run page that re-validates on every click must not re-read,
# re-hash and re-unpickle a 100 MB model.pt each time.
_REFERENCES = LoadedModels(max_models=2)


class SCVIValidator(BaseSingleCellValidator):
    """Requirements per variant and batch parameters; mixed into `SCVIModel`, whose `__init__` sets
    `variant_config` and `args` before the requirements are derived from them."""

    model_type = ModelType.SCVI
    available_organisms = None
    required_obs_keys = ()
    required_var_keys = ()
    gene_id_kind = None
    requires_raw_counts = True

    @property
    def is_reference(self) -> bool:
        return self.variant_config.needs_weights

    @property
    def batch(self) -> BatchSpec:
        return BatchSpec.from_params(self.args.batch_key, self.args.batch_columns,
                                     CENSUS_BATCH_COLUMNS if self.is_reference else ())

    def data_needs(self) -> DataNeeds:
        batch = self.batch
        if self.is_reference:
            organism = Organism.parse(self.variant_config.resources["organism"])
            return DataNeeds("ensembl", True, (organism,), batch.columns, (), batch)
        return DataNeeds(None, True, None, batch.columns, (), batch)

    def _check_keys(self, report, check: str, present, required, where: str) -> None:
        if where != "obs":
            return super()._check_keys(report, check, present, required, where)
        report.ran(check)
        batch = self.batch
        for key in required:
            if key in present:
                continue
            if batch.chosen:
                message = f"the batch column '{key}' you chose is not in obs."
                fix = f"choose existing obs columns, or {CONSTANT_FIX if self.is_reference else 'no batch column'}"
            else:
                message = (f"{self.name} builds each cell's batch as CELLxGENE Census did, from obs columns "
                           f"{', '.join(CENSUS_BATCH_COLUMNS)}; the dataset lacks '{key}'.")
                fix = f"add obs['{key}'], {OTHER_COLUMNS_FIX} or {CONSTANT_FIX}"
            report.add(check, "missing_obs_key", Severity.ERROR, message, fix)

    def check_weights(self, manager: DataManager, report: ValidationReport, weights_dirs: dict[str, Path]) -> None:
        """For a Census variant: the share of the reference's genes in the dataset."""
        if not self.is_reference:
            return
        if any(p.check == "gene ids" and p.severity is Severity.ERROR for p in report.problems):
            report.facts[OVERLAP_FACT] = "not checked: the dataset has no Ensembl ids"
            return
        from model_runners.scvi.reference import overlap

        reference = self.reference(weights_dirs[MODEL_ROLE])
        add_overlap_problems(report, *overlap(manager.genes_g, reference), self.name)

    def check_cached_weights(self, manager: DataManager, report: ValidationReport) -> None:
        super().check_cached_weights(manager, report)
        if self.is_reference and OVERLAP_FACT not in report.facts:
            report.facts[OVERLAP_FACT] = "checked once the reference weights are downloaded"
            report.facts.pop("vocabulary", None)


class SCVIModel(SCVIValidator, BaseModelImplementation):
    """scVI on the dataset's raw counts; output: the latent mean (float32; `n_latent` or 50 for Census)."""

    default_batch_size = 128

    @property
    def embeds_cells_apart(self) -> bool:
        """A Census reference maps each cell to its latent mean alone; `fit` trains on all cells."""
        return self.is_reference

    def check_params(self) -> None:
        self.batch  # noqa: B018  (batch_key and batch_columns together are a ConfigError now, not at run time)

    @classmethod
    def declare_params(cls, variant) -> tuple[Param, ...]:
        batch = (
            Param("batch_key", "str", "", f"obs column of batches, or '{UNASSIGNED}' for one constant batch",
                  label="Batch key", obs_column=True, extra_options=(UNASSIGNED,)),
            Param("batch_columns", "list", (), "obs columns concatenated into the batch label",
                  label="Batch columns", parse=_column_list, obs_column=True),
        )
        if variant.needs_weights:
            return batch + (Param("weights_sha256", "str", "",
                                  "sha256 of model.pt: required to load a --weights override",
                                  label="model.pt sha256"),)
        return batch + (
            Param("n_latent", "int", 10, "latent dimensions (the embedding size)", label="Latent size", minimum=1),
            Param("n_layers", "int", 1, "hidden layers of encoder and decoder", label="Layers", minimum=1),
            Param("n_hidden", "int", 128, "units per hidden layer", label="Hidden units", minimum=1),
            Param("max_epochs", "int", None, "empty: scvi-tools' rule, min(round(20000 / n_cells * 400), 400)",
                  label="Epochs", minimum=1),
            Param("early_stopping", "bool", False, "stop when the validation loss stops improving",
                  label="Early stopping"),
        )

    # -- the reference (Census variants) -----------------------------------------------------------

    def reference(self, weights_dir: Path):
        """The reference model in `weights_dir` (the folder `check_weights` or `load` is handed: a run's cache
        entry, or an admin's import being checked), unpickled only from bytes that pass `verify_trusted_file`
        against `weights_manifest` (see safe_load), once per file version and trust decision in this process."""
        from model_runners.scvi.reference import MODEL_FILE, load_reference

        configured = self.variant_config.main_weights_uri
        pins = [self.args.weights_sha256 or None]
        if self.weights_manifest and self.weights_manifest.get("uri") == configured:
            pins.append(self.variant_config.weights_sha256.get(MODEL_FILE))
        try:
            stat = (weights_dir / MODEL_FILE).stat()
        except OSError:
            raise WeightsError(f"the scVI reference holds no {MODEL_FILE} (a scvi-tools model save)") from None
        key = (str(weights_dir), stat.st_size, stat.st_mtime_ns, json.dumps(self.weights_manifest, sort_keys=True),
               configured, tuple(pins))
        reference = _REFERENCES.get(key)
        if reference is None:
            verified = verify_trusted_file(weights_dir, MODEL_FILE, self.weights_manifest,
                                           configured_uri=configured, pins=pins)
            try:
                reference = load_reference(verified)
            except WeightsError:
                raise
            except Exception as exc:  # noqa: BLE001 - unpickling other bytes fails in many ways, all meaning this
                raise WeightsError(f"{MODEL_FILE} is not a scvi-tools model save "
                                   f"({type(exc).__name__}: {exc})") from exc
            _REFERENCES.put(key, reference)
        return reference

    # -- the protocol ------------------------------------------------------------------------------

    def load(self, weights_dir: Optional[Path], device: str) -> None:
        self.model = self.reference(Path(weights_dir)) if self.is_reference else None

    def load_key(self) -> tuple:
        return (self.args.weights_sha256,)

    def prepare(self, rows, manager: DataManager):
        batch_n = manager.batch_labels()
        return manager.counts(rows), manager.genes_g, None if batch_n is None else batch_n.iloc[rows]

    def embed(self, inputs, batch_size, progress, cancel) -> RunOutput:
        x_ng, genes_g, batch_n = inputs
        self.batch_size_used = batch_size
        if self.is_reference:
            from model_runners.scvi.reference import map_query

            emb_nd = map_query(x_ng, genes_g, batch_n, self.model, self.device, batch_size, self.args.seed,
                               progress, cancel)
            return RunOutput(emb_nd=emb_nd)
        return self._fit(x_ng, batch_n, batch_size, progress, cancel)

    def _fit(self, x_ng, batch_n, batch_size: int, progress, cancel) -> RunOutput:
        from model_runners.scvi.fit import FitParams, default_max_epochs, fit_latent

        a = self.args
        max_epochs = a.max_epochs or default_max_epochs(x_ng.shape[0])
        params = FitParams(a.n_latent, a.n_layers, a.n_hidden, max_epochs, a.early_stopping, batch_size, a.seed)
        emb_nd, epochs = fit_latent(x_ng, batch_n, params, self.device, progress, cancel)
        return RunOutput(emb_nd=emb_nd, facts={"max_epochs": max_epochs, "epochs trained": epochs})


def _column_list(value) -> tuple[str, ...]:
    """`"a, b"` or `["a", "b"]` -> `("a", "b")`."""
    items = value.split(",") if isinstance(value, str) else list(value or ())
    return tuple(str(item).strip() for item in items if str(item).strip())

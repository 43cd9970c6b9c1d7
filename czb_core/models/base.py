"""`BaseModelImplementation`: the cz-benchmarks run flow, in-process, on the three-method runner protocol.

A model subclasses this and mixes in its validator first
(`class PCABaseline(PCAValidator, BaseModelImplementation)`), declares its parameters (`params`, once)
and implements `prepare` and `embed` (and `load` when it has weights). `execute` is the one flow:
check the data manager's facts, fetch the weights, run the checks that need them, load the model (or
reuse it from `LOADED_MODELS`), prepare, embed. The reference API (`run(dataset)` ending in
`dataset.set_output(...)`, `run_model`, `download_model_weights`, `create_parser`, `parse_args`) is
kept, built on the same methods. Differences that matter in a server process: argv defaults to empty
(the reference read `sys.argv`, which broke under Streamlit), weights come from a checksummed cache,
progress and cancellation are passed in, and the device is an argument of its own.
"""

from __future__ import annotations

import argparse
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Optional, Sequence

import anndata as ad
import numpy as np

from czb_core.errors import ConfigError, DatasetValidationError, DeviceOutOfMemory, WeightsError
from czb_core.io.header import header_from_anndata
from czb_core.models.description import check_resources
from czb_core.models.device import is_cuda_oom, resolve_device
from czb_core.models.inference import autocast_dtype, precision_name
from czb_core.models.params import Param, ParamSchema, common_params
from czb_core.models.registry import ModelConfig, VariantConfig, main_role
from czb_core.models.runner import LOADED_MODELS, RunOutput
from czb_core.models.variant_weights import VariantWeights
from czb_core.progress import CancelToken, ProgressCallback, no_progress
from czb_core.schema.data_manager import DataManager
from czb_core.schema.datasets import BaseDataset, SingleCellDataset
from czb_core.schema.report import Severity, ValidationReport
from czb_core.types import DataType

if TYPE_CHECKING:
    from czb_core.io.header import DatasetHeader
    from czb_core.types import ModelType, Organism


class BaseModelImplementation(ABC):
    """One model variant with its parameters, ready to run on datasets. Subclasses mix in their validator first."""

    params: ClassVar[tuple[Param, ...]] = ()  # the model's own parameters (seed and batch_size are common)
    # keys every variant's `resources` in config.yaml must hold: checked once, at discovery (`describe`)
    required_resources: ClassVar[tuple[str, ...]] = ()
    default_batch_size: ClassVar[Optional[int]] = 64  # None: chosen from free GPU memory by the runner
    streams: ClassVar[bool] = False  # True: `embed_blocks` reads a dataset larger than memory in row blocks
    row_alignment: ClassVar[int] = 1  # cells drawing from one seeded generator: chunks and shards never split them
    # True when a cell's embedding depends on that cell alone (and on its row, for seeded draws), so cells can be
    # embedded in chunks or shards apart with the same result: a pretrained network's inference, not a model
    # fitted on the dataset or a prediction. A runner whose answer depends on its parameters makes it a property.
    embeds_cells_apart: ClassVar[bool] = False
    # True for a model fitted on all cells whose fit can run over row blocks on a Ray run's driver, so that only the
    # projection of the cells is sharded (the PCA baseline's incremental PCA); a property where the variant decides.
    shards_as_projection: ClassVar[bool] = False

    # given by the validator each runner mixes in first: `class Runner(Validator, BaseModelImplementation)`
    if TYPE_CHECKING:
        model_type: ClassVar[ModelType]

        def data_manager(self, header: DatasetHeader, organism: Optional[Organism] = None) -> DataManager: ...

        def check(self, data: DatasetHeader | DataManager, organism: Optional[Organism] = None) -> ValidationReport: ...

        def check_weights(self, manager: DataManager, report: ValidationReport,
                          weights_dirs: dict[str, Path]) -> None: ...

    def __init__(
        self,
        config: ModelConfig,
        variant: Optional[str] = None,
        *,
        argv: Optional[Sequence[str]] = None,
        weights_uri: Optional[str] = None,
        weights_cache=None,
        **params: Any,
    ):
        self.config = config
        self.variant_config = config.variant(variant)
        self.variant = self.variant_config.name
        self.display_name = config.display_name
        self.weights_uri = weights_uri
        self._weights_cache = weights_cache
        check_resources(config, self.variant, self.required_resources)
        self.schema = self.param_schema(self.variant_config)
        self.args = argparse.Namespace(**self.schema.resolve({**self.schema.from_argv(argv or ()), **params}))
        self.check_params()
        self.weights_dirs: dict[str, Path] = {}
        self.weights_manifest: Optional[dict] = None
        self.weights_warm = False
        self.device: Optional[str] = None  # set by load()
        self.model: Any = None  # what load() put in memory
        self.batch_size_used: Optional[int] = None  # set by embed(); an OOM retry halves it
        self.report: Optional[ValidationReport] = None

    # -- parameters --------------------------------------------------------------------------------

    @classmethod
    def declare_params(cls, variant: VariantConfig) -> tuple[Param, ...]:
        """The model's parameters for `variant` (override when they differ between variants)."""
        return cls.params

    @classmethod
    def param_schema(cls, variant: VariantConfig) -> ParamSchema:
        return ParamSchema(common_params(cls.default_batch_size) + cls.declare_params(variant), variant.params)

    def check_params(self) -> None:
        """Checks across parameters (one value constrains another); raise ConfigError."""

    def parameters(self) -> dict[str, Any]:
        """The effective parameters of this run (recorded in the run record)."""
        return dict(vars(self.args))

    def create_parser(self) -> argparse.ArgumentParser:
        return self.schema.add_arguments(argparse.ArgumentParser(prog=self.config.name, add_help=False))

    def parse_args(self, argv: Sequence[str], overrides: dict[str, Any]) -> argparse.Namespace:
        return argparse.Namespace(**self.schema.resolve({**self.schema.from_argv(argv), **overrides}))

    # -- weights -----------------------------------------------------------------------------------

    @property
    def weights_cache(self):
        if self._weights_cache is None:
            from czb_core.models.weights import WeightsCache

            self._weights_cache = WeightsCache()
        return self._weights_cache

    @classmethod
    def esm2_gene_table(cls, variant: VariantConfig, dirs: dict[str, Path], organism: Organism) -> Optional[Path]:
        """The ESM-2 gene table of `organism` that the variant's weights hold (`dirs`: role -> folder of the
        cached entries), for the tokenizer lab's Fg; None for a model whose weights hold none."""
        return None

    @property
    def weights(self) -> VariantWeights:
        """The variant's weights entries and what the cache holds of them."""
        return VariantWeights(self.config, self.variant_config, self.weights_cache)

    def weights_sources(self) -> dict[str, str]:
        """role -> URI of every weights entry; `--weights` replaces the model entry (or the only one).
        A variant whose weights have no download (`weights_from`) needs `--weights`, or an admin's import
        into the weights cache (Weights page, `czb weights import`)."""
        weights = self.weights
        sources = weights.entries
        if not sources:
            if self.weights_uri:
                raise ConfigError(f"{self.display_name} / {self.variant} uses no weights; drop --weights")
            return {}
        if self.weights_uri:
            sources[weights.main_role] = self.weights_uri
        elif self.weights_missing:
            raise ConfigError(" Fix: ".join(weights.no_download_problem()))
        return sources

    @property
    def weights_missing(self) -> bool:
        """Weights that have no download, were not given and were not imported: there is nothing to load."""
        weights = self.weights
        return not weights.has_download and not self.weights_uri and bool(weights.missing())

    def weights_source(self) -> Optional[str]:
        """The URI of the model entry (or the only entry), None for a model without weights."""
        sources = self.weights_sources()
        role = main_role(sources)
        return None if role is None else sources[role]

    def weights_cached(self) -> bool:
        if self.weights_missing:
            return False
        return all(self.weights_cache.is_cached(uri) for uri in self.weights_sources().values())

    def fetch_weights(self, progress: ProgressCallback = no_progress,
                      cancel: Optional[CancelToken] = None) -> dict[str, Path]:
        """Every weights entry on disk (downloaded, or found in the cache), role -> folder."""
        pinned = None if self.weights_uri else (self.variant_config.weights_sha256 or None)
        dirs, manifest = self.weights.fetch(self.weights_sources(), pinned, progress, cancel)
        self.weights_dirs = dirs
        if manifest is not None:
            self.weights_manifest = manifest
        return dirs

    def cached_weights_dirs(self) -> Optional[dict[str, Path]]:
        """The weights folders when every entry is cached already (never downloads), else None."""
        if not self.weights_cached():
            return None
        try:
            return self.fetch_weights()
        except WeightsError:  # a cached copy that cannot be read: the run reports it with its fix
            return None

    def get_model_weights_subdir(self, dataset: BaseDataset) -> str:
        return f"{self.config.name}/{self.variant}"

    def download_model_weights(self, dataset: BaseDataset) -> None:
        self.fetch_weights()

    # -- the protocol ------------------------------------------------------------------------------

    def load(self, weights_dir: Optional[Path], device: str) -> None:
        """Put the model in memory on `device` as `self.model` (a model without weights loads nothing)."""

    def load_key(self) -> tuple:
        """Parameters that change what `load` builds (part of the key of a model kept in memory)."""
        return ()

    @abstractmethod
    def prepare(self, rows: slice | np.ndarray, manager: DataManager) -> Any:
        """Model inputs (tokens, binned values, selected genes) of a block of cells."""

    @abstractmethod
    def embed(self, inputs: Any, batch_size: Optional[int], progress: ProgressCallback,
              cancel: CancelToken) -> RunOutput:
        """The embedding (or prediction) of prepared inputs; sets `batch_size_used` before its first batch."""

    def embed_blocks(self, blocks: Any, progress: ProgressCallback, cancel: CancelToken) -> RunOutput:
        """The embedding of a dataset read block by block from `blocks` (`czb_core.streaming.RowBlocks`),
        for runners with `streams = True`."""
        raise NotImplementedError(f"{self.display_name} does not stream")

    @property
    def can_stream(self) -> bool:
        """Whether a dataset larger than memory can run: fitted over row blocks (`streams`) or embedded in
        chunks (`embeds_cells_apart`)."""
        return self.streams or self.embeds_cells_apart

    def check_can_stream(self) -> None:
        """A ConfigError, with the way out, when this variant with these parameters cannot read in blocks."""
        if not self.can_stream:
            raise ConfigError(f"{self.display_name} / {self.variant} with these parameters uses all cells at once, "
                              "so it cannot read a dataset in blocks; run it without streaming, on a subset of "
                              "the cells, or on a machine with more memory")

    # -- the flow ----------------------------------------------------------------------------------

    def check_cached_weights(self, manager: DataManager, report: ValidationReport) -> None:
        """The checks that need weights, when the weights are cached already; otherwise say what is unknown."""
        if self.weights_missing:
            report.ran("weights")
            report.add("weights", "weights_not_given", Severity.ERROR, *self.weights.no_download_problem())
            report.facts["vocabulary"] = "unknown until the weights are given"
            return
        if not self.weights_sources():
            return
        dirs = self.cached_weights_dirs()
        if dirs is None:
            size = self.variant_config.weights_size_mb
            report.pending = f"its weights ({size:,.0f} MB) are downloaded" if size else "its weights are downloaded"
            report.facts["vocabulary"] = "unknown until the weights are downloaded"
            return
        self.check_weights(manager, report, dirs)

    def load_model(self, device: str) -> None:
        """`load`, or the same model kept in memory by an earlier run in this process."""
        self.device = device
        role = main_role(self.weights_dirs)
        weights_dir = None if role is None else self.weights_dirs[role]
        if weights_dir is None:
            self.load(None, device)
            return
        key = (self.config.name, self.variant, _files_signature(weights_dir), device, self.load_key())
        cached = LOADED_MODELS.get(key)
        self.weights_warm = cached is not None
        if cached is not None:
            self.model = cached
            return
        self.load(weights_dir, device)
        LOADED_MODELS.put(key, self.model)

    def validate_and_fetch(self, manager: DataManager, progress: ProgressCallback,
                           cancel: CancelToken) -> dict[str, Path]:
        """The checks that need no loaded data (raising on errors), then the weights on disk (role -> folder)."""
        progress("validate", 0, 1)
        self.report = self.check(manager)
        self.report.raise_for_errors()
        progress("validate", 1, 1)
        cancel.check()
        dirs = self.fetch_weights(progress, cancel)
        cancel.check()
        return dirs

    def execute(
        self,
        manager: DataManager,
        *,
        device: Optional[str] = None,
        progress: ProgressCallback = no_progress,
        cancel: Optional[CancelToken] = None,
        read_data: Optional[Callable[[], ad.AnnData]] = None,
        open_blocks: Optional[Callable[[], Any]] = None,
    ) -> RunOutput:
        """Validate, fetch weights, read the data, check with the weights, load, prepare, embed. `read_data`
        loads the matrix once the checks pass (the data manager is already bound when it is None);
        `open_blocks` instead streams it (`RowBlocks`) to `embed_blocks`, for a runner that can. Raises
        `DatasetValidationError`, `WeightsError`, `ConfigError`, `Cancelled` or `DeviceOutOfMemory`."""
        cancel = cancel or CancelToken()
        dirs = self.validate_and_fetch(manager, progress, cancel)
        if open_blocks is not None:
            self.check_can_stream()
            with open_blocks() as blocks:
                if self.streams:
                    self.load_model(resolve_device(device))
                    output = self.embed_blocks(blocks, progress, cancel)
                else:
                    from czb_core.streaming.chunks import embed_in_chunks

                    output = embed_in_chunks(self, manager, blocks, device=device, progress=progress, cancel=cancel)
            self._add_precision_fact(output)
            self.report.facts.update(output.facts)
            return output
        if read_data is not None:
            progress("load", 0, 1)
            manager.bind(read_data())
            progress("load", 1, 1)
        self.check_weights(manager, self.report, dirs)
        self.report.raise_for_errors()
        self.load_model(resolve_device(device))
        cancel.check()
        inputs = self.prepare(np.flatnonzero(manager.cells_kept_n), manager)
        try:
            output = self.embed(inputs, self.args.batch_size, progress, cancel)
        except Exception as exc:
            if is_cuda_oom(exc):
                raise DeviceOutOfMemory(self.batch_size_used or self.args.batch_size or 1) from None
            raise
        output.batch_size = output.batch_size or self.batch_size_used
        self._add_precision_fact(output)
        self.report.facts.update(output.facts)
        return output

    def _add_precision_fact(self, output: RunOutput) -> None:
        """The precision the run used on its device (`auto` is bf16 on a GPU that has it, else fp32), in the
        run record's facts: the parameter alone does not say which ran."""
        if "precision" in self.schema and self.device is not None:
            output.facts["precision"] = precision_name(autocast_dtype(self.args.precision, self.device))

    def run(self, dataset: SingleCellDataset, *, device: Optional[str] = None, progress: ProgressCallback = no_progress,
            cancel: Optional[CancelToken] = None) -> ValidationReport:
        """The reference flow for one dataset: load, validate, `run_model`; returns the validation report."""
        if DataType.ANNDATA not in dataset.inputs:
            dataset.load_data()
        dataset.validate()
        self.run_model(dataset, device=device, progress=progress, cancel=cancel)
        return self.report

    def run_model(self, dataset: SingleCellDataset, *, device: Optional[str] = None,
                  progress: ProgressCallback = no_progress, cancel: Optional[CancelToken] = None) -> RunOutput:
        """`execute` on the loaded dataset, ending as the reference did in `dataset.set_output(...)`."""
        manager = self.data_manager(header_from_anndata(dataset.adata, dataset.path), dataset.organism)
        output = self.execute(manager.bind(dataset.adata), device=device, progress=progress, cancel=cancel)
        n_dropped = int((~manager.cells_kept_n).sum())
        if output.emb_nd is not None and n_dropped:
            raise DatasetValidationError(
                f"{self.display_name}'s cell filter dropped {n_dropped:,} cells, and a dataset's output holds one "
                "embedding per cell; run it with `czb run` or the app, which keep the input order and name the "
                "dropped cells, or turn the filter off")
        if output.emb_nd is not None:
            dataset.set_output(self.model_type, DataType.EMBEDDING, output.emb_nd)
        return output


def _files_signature(folder: Path) -> tuple:
    """(path, size, mtime) of every file under `folder`: a model kept in memory is reused only while
    the files it was loaded from are unchanged."""
    return tuple(sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in Path(folder).rglob("*")
                        if p.is_file()))

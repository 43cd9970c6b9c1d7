"""`BaseModelImplementation`: the cz-benchmarks run flow, in-process.

The flow is the reference one: arguments (parser defaults < variant params < argv via
`parse_known_args` < keyword arguments), then per dataset `load_data`, `validate`,
`validate_dataset`, `download_model_weights`, `run_model`, which ends in `dataset.set_output(...)`.
Differences that matter in a server process: argv defaults to empty (the reference read `sys.argv`,
which broke under Streamlit), weights come from a checksummed cache rooted where configuration says,
progress and cancellation are passed in, and the device is chosen here, once.
"""

from __future__ import annotations

import argparse
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Optional

from czb_core.datasets import BaseDataset
from czb_core.errors import ConfigError
from czb_core.progress import CancelToken, ProgressCallback, no_progress
from czb_core.registry import ModelConfig
from czb_core.types import DataType
from czb_core.validation import ValidationReport


def resolve_device(requested: Optional[str]) -> str:
    """`cuda` when a GPU is present and nothing else was asked for, else `cpu`; asking for a missing GPU fails."""
    if requested == "cpu":
        return "cpu"
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if requested and requested.startswith("cuda"):
        if not has_cuda:
            raise ConfigError("--device cuda was requested but no CUDA GPU is available; use --device cpu")
        return requested
    if requested not in (None, "", "auto"):
        raise ConfigError(f"unknown device {requested!r}; use cpu, cuda or auto")
    return "cuda" if has_cuda else "cpu"


class BaseModelImplementation(ABC):
    """One model variant, ready to run on datasets. Subclasses mix in their validator first."""

    def __init__(
        self,
        config: ModelConfig,
        variant: Optional[str] = None,
        *,
        argv: Optional[list[str]] = None,
        weights_uri: Optional[str] = None,
        device: Optional[str] = None,
        progress: ProgressCallback = no_progress,
        cancel: Optional[CancelToken] = None,
        weights_cache=None,
        **kwargs: Any,
    ):
        self.config = config
        self.variant_config = config.variant(variant)
        self.variant = self.variant_config.name
        self.display_name = config.display_name
        self.progress = progress
        self.cancel = cancel or CancelToken()
        self.weights_uri = weights_uri
        self._weights_cache = weights_cache
        self.weights_dir: Optional[Path] = None
        self.weights_manifest: Optional[dict] = None
        self.extra_obs: dict[str, Any] = {}  # per-cell outputs besides the embedding (e.g. a perturbation shift)
        self.args = self.parse_args(argv or [], kwargs)
        self._device_request = device
        self._device: Optional[str] = None
        self.report: Optional[ValidationReport] = None

    @property
    def device(self) -> str:
        """Resolved on first use, so validating a dataset never imports torch."""
        if self._device is None:
            self._device = resolve_device(self._device_request)
        return self._device

    # -- arguments ---------------------------------------------------------------------------------

    def create_parser(self) -> argparse.ArgumentParser:
        """Parameters every model takes; subclasses call super() and add their own."""
        parser = argparse.ArgumentParser(prog=self.config.name, add_help=False)
        parser.add_argument("--batch_size", type=int, default=None, help="cells per batch (model default if unset)")
        parser.add_argument("--seed", type=int, default=0, help="seed for every random step")
        return parser

    def parse_args(self, argv: list[str], overrides: dict[str, Any]) -> argparse.Namespace:
        parser = self.create_parser()
        parser.set_defaults(**self.variant_config.params)
        args, _unknown = parser.parse_known_args(argv)  # tolerated, as in the reference
        actions = {a.dest: a for a in parser._actions}
        for key, value in overrides.items():
            if key not in actions:
                raise ConfigError(
                    f"{self.display_name} has no parameter {key!r}; known: {', '.join(sorted(vars(args)))}"
                )
            if isinstance(value, str) and actions[key].type is not None:
                try:
                    value = actions[key].type(value)  # `--param n_comps=30` arrives as text
                except (TypeError, ValueError) as exc:
                    raise ConfigError(f"parameter {key}={value!r}: {exc}") from None
            if value is not None:
                setattr(args, key, value)
        return args

    def parameters(self) -> dict[str, Any]:
        """The effective parameters of this run (recorded in the run record)."""
        return dict(vars(self.args))

    def parameter_help(self) -> dict[str, str]:
        """Each parameter's help text from the parser, for forms and `--help`-like listings."""
        return {a.dest: a.help or "" for a in self.create_parser()._actions if a.dest != "help"}

    # -- weights -----------------------------------------------------------------------------------

    @property
    def weights_cache(self):
        if self._weights_cache is None:
            from czb_core.weights import WeightsCache

            self._weights_cache = WeightsCache()
        return self._weights_cache

    def get_model_weights_subdir(self, dataset: BaseDataset) -> str:
        return f"{self.config.name}/{self.variant}"

    def weights_source(self) -> Optional[str]:
        """The URI of the weights: `--weights` when given, else the variant's `model` (or only) entry."""
        weights = self.variant_config.weights
        if not weights:
            if self.weights_uri:
                raise ConfigError(f"{self.display_name} / {self.variant} uses no weights; drop --weights")
            return None
        if self.weights_uri:
            return self.weights_uri
        return weights.get("model") or next(iter(weights.values()))

    def download_model_weights(self, dataset: BaseDataset) -> None:
        """Fetch (or find cached) weights; a model without weights skips this."""
        uri = self.weights_source()
        if uri is None:
            return
        self.weights_dir = self._download_model_weights(uri)
        self.weights_manifest = self.weights_cache.manifest(uri)

    def _download_model_weights(self, uri: str) -> Path:
        expected = None if self.weights_uri else (self.variant_config.weights_sha256 or None)
        return self.weights_cache.fetch(uri, progress=self.progress, cancel=self.cancel, expected_sha256=expected)

    # -- the run -----------------------------------------------------------------------------------

    @abstractmethod
    def run_model(self, dataset: BaseDataset) -> None:
        """Compute the output and `dataset.set_output(self.model_type, DataType.EMBEDDING, emb_nd)`."""

    def run(self, dataset: BaseDataset) -> ValidationReport:
        """The reference flow for one dataset; returns the validation report (warnings included)."""
        self.progress("load", 0, 1)
        if DataType.ANNDATA not in dataset.inputs:
            dataset.load_data()
        dataset.validate()
        self.progress("load", 1, 1)
        self.progress("validate", 0, 1)
        self.report = self.validate_dataset(dataset)
        self.progress("validate", 1, 1)
        self.cancel.check()
        self.download_model_weights(dataset)
        self.cancel.check()
        self.run_model(dataset)
        dataset.get_output(self.model_type, DataType.EMBEDDING)  # KeyError naming the model if missing
        return self.report

"""Datasets: typed inputs and per-model outputs, as cz-benchmarks' `BaseDataset`.

A dataset owns its AnnData; models read inputs from it and write outputs back with
`set_output(model_type, DataType.EMBEDDING, emb_nd)`. Type checks happen here, once, so a model that
writes the wrong thing fails at the point of writing rather than in a later metric.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Optional

import anndata as ad

from czb_core.errors import InputError
from czb_core.io.reading import read_anndata
from czb_core.types import DataType, ModelType, Organism


class BaseDataset(ABC):
    """Typed inputs (`set_input`) and outputs keyed by model (`set_output`)."""

    def __init__(self, path: str | Path, organism: Optional[Organism] = None):
        """`organism` may be None when it is unknown; validators decide whether that blocks a model."""
        self.path = Path(path)
        self.inputs: dict[DataType, Any] = {}
        self.outputs: dict[Optional[ModelType], dict[DataType, Any]] = {}
        if organism is not None:
            self.set_input(DataType.ORGANISM, organism)

    @staticmethod
    def _check_type(data_type: DataType, value: Any) -> None:
        if not isinstance(value, data_type.dtype):
            raise TypeError(
                f"{data_type.name} expects {getattr(data_type.dtype, '__name__', data_type.dtype)}, "
                f"got {type(value).__name__}"
            )

    def set_input(self, data_type: DataType, value: Any) -> None:
        if not data_type.is_input:
            raise ValueError(f"{data_type.name} is an output type; use set_output")
        self._check_type(data_type, value)
        self.inputs[data_type] = value

    def set_output(self, model_type: Optional[ModelType], data_type: DataType, value: Any) -> None:
        if data_type.is_input:
            raise ValueError(f"{data_type.name} is an input type; use set_input")
        self._check_type(data_type, value)
        self.outputs.setdefault(model_type, {})[data_type] = value

    def get_output(self, model_type: Optional[ModelType], data_type: DataType) -> Any:
        try:
            return self.outputs[model_type][data_type]
        except KeyError:
            raise KeyError(
                f"no {data_type.name} output for model {model_type}; has the model run?"
            ) from None

    @property
    def organism(self) -> Optional[Organism]:
        return self.inputs.get(DataType.ORGANISM)

    def validate(self) -> None:
        """Check the path and every stored type, then the subclass's own checks."""
        if not self.path.exists():
            raise InputError(f"{self.path}: no such file")
        for data_type, value in self.inputs.items():
            self._check_type(data_type, value)
        for by_type in self.outputs.values():
            for data_type, value in by_type.items():
                self._check_type(data_type, value)
        self._validate()

    @abstractmethod
    def _validate(self) -> None: ...

    @abstractmethod
    def load_data(self) -> None: ...

    def unload_data(self) -> None:
        """Drop the large inputs (AnnData) but keep outputs, so a long session does not hold RAM."""
        self.inputs.pop(DataType.ANNDATA, None)
        self.inputs.pop(DataType.METADATA, None)


class SingleCellDataset(BaseDataset):
    """An `.h5ad` or 10x `.h5` file of single cells. `load_data` sets ANNDATA and METADATA (= obs)."""

    @property
    def adata(self) -> ad.AnnData:
        if DataType.ANNDATA not in self.inputs:
            raise RuntimeError(f"{self.path.name}: call load_data() first")
        return self.inputs[DataType.ANNDATA]

    def load_data(self) -> None:
        adata = read_anndata(self.path)
        self.set_input(DataType.ANNDATA, adata)
        self.set_input(DataType.METADATA, adata.obs)

    def _validate(self) -> None:
        """Structural checks only; model-specific checks live in the validators and report all at once."""
        if DataType.ANNDATA in self.inputs:
            adata = self.adata
            if adata.n_obs == 0 or adata.n_vars == 0:
                raise InputError(f"{self.path.name}: the dataset is empty ({adata.n_obs} x {adata.n_vars})")

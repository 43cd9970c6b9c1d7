"""The runner protocol's result type, and the models kept loaded between runs.

A runner (a `BaseModelImplementation` subclass) is three methods: `load(weights_dir, device)` puts the
model in memory, `prepare(rows, manager)` turns a block of cells into model inputs, and
`embed(inputs, batch_size, progress, cancel)` returns a `RunOutput`. Everything else (validation,
weights, records, jobs) is shared code.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Hashable, Optional

import numpy as np


@dataclass
class RunOutput:
    """What one run computed: an embedding `emb_nd` (cells x dims) or a prediction `pred_ng` (cells x
    genes, with `genes_g` naming its columns), per-cell outputs for obs, named side outputs (`extras`:
    arrays that are not one row per cell, e.g. contextual gene embeddings; they go to a file beside the
    h5ad, never into it), the batch size actually used, notes for the user and facts for the run record."""

    emb_nd: Optional[np.ndarray] = None
    pred_ng: Optional[np.ndarray] = None
    genes_g: Optional[np.ndarray] = None
    obs: dict[str, np.ndarray] = field(default_factory=dict)
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    batch_size: Optional[int] = None
    notes: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.emb_nd is None) == (self.pred_ng is None):
            raise ValueError("a RunOutput holds an embedding or a prediction, exactly one of them")
        if self.pred_ng is not None and (self.genes_g is None or len(self.genes_g) != self.pred_ng.shape[1]):
            raise ValueError("a prediction needs genes_g naming each of its columns")
        n_cells = len(self.emb_nd if self.emb_nd is not None else self.pred_ng)
        for name, values in self.extras.items():
            if np.asarray(values).dtype == object:
                raise ValueError(f"side output {name!r} must be a numeric or string array, not objects")
        for name, values in self.obs.items():
            if len(values) != n_cells:
                raise ValueError(f"per-cell output {name!r} has {len(values)} values for {n_cells} cells")

    @property
    def n_cells(self) -> int:
        return len(self.emb_nd if self.emb_nd is not None else self.pred_ng)


class LoadedModels:
    """The last few loaded models of this process, by (model, variant, weights, device, load options).

    A worker runs job after job; a second job on the same variant reuses the model in memory instead of
    reading gigabytes of weights again. Small on purpose: a loaded model can hold GPU memory.
    """

    def __init__(self, max_models: int = 2):
        self.max_models = max_models
        self._models: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Optional[Any]:
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
        return None

    def put(self, key: Hashable, model: Any) -> None:
        with self._lock:
            self._models[key] = model
            self._models.move_to_end(key)
            while len(self._models) > self.max_models:
                self._models.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._models.clear()


LOADED_MODELS = LoadedModels()

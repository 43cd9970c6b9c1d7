"""A model run over a dataset larger than memory: row chunks read, embedded and written to disk one by one.

A runner whose cells embed apart (`embeds_cells_apart`: a pretrained network's inference, a reference
model's latent mean) needs no more than one chunk of counts, tokens and outputs at a time. `embed_in_chunks`
reads a chunk's rows (`RowBlocks`), binds them to a data manager of just those cells (`rows_manager`),
runs the runner's usual flow on them (checks, prepare, embed: Geneformer tokenizes each chunk as it
comes) and writes the rows of the kept cells into an embedding file on disk (`EmbeddingOnDisk`), so
peak memory is bounded by the chunk, not the dataset. The finished embedding is a memory map of that
file, paged in only where it is read. Each data manager knows its `first_row` in the input, which is
what seeded runners key their randomness on, so a chunked run gives what one whole run gives.

The shard workers of a Ray run (`czb_core.streaming.ray_actors`) run the same per-rows flow on their
shards; `merge_facts` turns the facts of many chunks or shards into one run's facts.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from typing import Any, Optional

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from czb_core.config import get_settings
from czb_core.errors import ConfigError
from czb_core.io.header import DatasetHeader
from czb_core.models.runner import RunOutput
from czb_core.progress import CancelToken, ProgressCallback, no_progress
from czb_core.schema.data_manager import DataManager
from czb_core.streaming.row_blocks import RowBlocks

EMBED_STEP = "embed"
MAX_CHUNK_ROWS = 10_000  # cells whose counts, model inputs and outputs are held at once


def chunk_rows_for(implementation) -> int:
    """Rows per chunk: at most `MAX_CHUNK_ROWS`, a whole multiple of the runner's `row_alignment` (the cells
    a seeded runner draws from one generator), so chunk boundaries never split such a group."""
    align = max(1, int(implementation.row_alignment))
    return max(align, MAX_CHUNK_ROWS // align * align)


def embed_in_chunks(implementation, manager: DataManager, blocks: RowBlocks, *, device: Optional[str],
                    progress: ProgressCallback, cancel: CancelToken) -> RunOutput:
    """The run of `implementation` on every row of `blocks`, chunk by chunk (see the module docstring).
    Sets `manager.cells_kept_n`; the report's problems are the first chunk's plus any new kind a later
    chunk found."""
    n_cells, step = blocks.n_cells, chunk_rows_for(implementation)
    report = implementation.report
    out = EmbeddingOnDisk(n_cells)
    kept_n = np.zeros(n_cells, dtype=bool)
    per_cell: dict[str, list[np.ndarray]] = {}
    facts, notes, batch_size = [], [], None
    progress(EMBED_STEP, 0, n_cells)
    for lo in range(0, n_cells, step):
        hi = min(lo + step, n_cells)
        x_ng = blocks.read(lo, hi)

        def chunk_progress(step: str, done: float, total: Optional[float], lo: int = lo) -> None:
            if step == EMBED_STEP:
                progress(EMBED_STEP, lo + done, n_cells)

        output, kept_k = embed_rows(implementation, manager.header, manager.organism_given, x_ng,
                                    manager.header.obs.iloc[lo:hi], lo, device, cancel, chunk_progress)
        out.append(output.emb_nd)
        kept_n[lo:hi] = kept_k
        for name, values in output.obs.items():
            per_cell.setdefault(name, []).append(np.asarray(values))
        facts.append(output.facts)
        notes.extend(output.notes)
        batch_size = batch_size or output.batch_size
        if implementation.report is not report:
            add_new_problems(report, implementation.report.problems)
        progress(EMBED_STEP, hi, n_cells)
    implementation.report = report
    manager.cells_kept_n = kept_n
    merged = merge_facts(facts)
    merged["reading"] = (f"streamed: {-(-n_cells // step):,} chunks of up to {step:,} cells, each read, "
                         "prepared and embedded alone, the embedding written to disk chunk by chunk")
    return RunOutput(emb_nd=out.finish(), obs={name: np.concatenate(parts) for name, parts in per_cell.items()},
                     batch_size=batch_size, notes=list(dict.fromkeys(notes)), facts=merged)


def embed_rows(implementation, header: DatasetHeader, organism, x_ng: sp.csr_matrix, obs: pd.DataFrame,
               first_row: int, device: Optional[str], cancel: CancelToken,
               progress: ProgressCallback = no_progress) -> tuple[RunOutput, np.ndarray]:
    """(RunOutput, kept_n) of the runner's usual flow (`execute`) on these rows alone: rows
    [first_row, first_row + n) of the input that `header` describes, with their `obs`. An embedding only:
    a prediction or side outputs of some cells do not add up to those of all of them."""
    rows = rows_manager(implementation, header, organism, x_ng, obs, first_row)
    output = implementation.execute(rows, device=device, progress=progress, cancel=cancel)
    if output.pred_ng is not None or output.extras:
        raise ConfigError(f"{implementation.display_name} makes a prediction or side outputs, which cannot be "
                          "gathered from chunks or shards; run it in one piece (without --stream or Ray)")
    return output, rows.cells_kept_n


def rows_manager(implementation, header: DatasetHeader, organism, x_ng: sp.csr_matrix, obs: pd.DataFrame,
                 first_row: int) -> DataManager:
    """A data manager of rows [first_row, first_row + n) of the input, bound to their counts. It resolves
    the same facts as the whole input's manager: gene names, species and matrix samples are the file's."""
    rows = implementation.data_manager(rows_header(header, obs, x_ng), organism)
    rows.first_row = first_row
    return rows.bind(rows_anndata(x_ng, obs, rows.var, rows.matrix_location))


def rows_header(header: DatasetHeader, obs: pd.DataFrame, x_ng: sp.csr_matrix) -> DatasetHeader:
    """The input's header narrowed to some of its cells (their obs and empty-cell count)."""
    n_empty = int(np.count_nonzero(np.diff(x_ng.indptr) == 0))
    return dataclasses.replace(header, obs=obs, n_obs=len(obs), n_empty_cells=n_empty, empty_cells_exact=True)


def rows_anndata(x_ng: sp.csr_matrix, obs: pd.DataFrame, var: pd.DataFrame, location: str) -> ad.AnnData:
    """An AnnData of some cells' counts at `location` (X, layers/counts or raw/X), where the data manager reads."""
    adata = ad.AnnData(X=x_ng, obs=obs, var=var)
    if location == "layers/counts":
        adata.layers["counts"] = x_ng
    elif location == "raw/X":
        adata.raw = adata
    return adata


def add_new_problems(report, problems) -> None:
    """Each kind of problem in `problems` that `report` does not hold yet, added once."""
    known = {p.code for p in report.problems}
    for problem in problems:
        if problem.code not in known:
            report.problems.append(problem)
            known.add(problem.code)


def merge_facts(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The facts of one run from those of its chunks (or shards), in order: a value every part agrees on is
    kept, lists are joined (e.g. the names of dropped cells), numbers that differ are added up (counts of
    cells truncated or dropped); anything else is the first part's."""
    merged: dict[str, Any] = {}
    for name in dict.fromkeys(name for part in parts for name in part):
        values = [part[name] for part in parts if name in part]
        first = values[0]
        if all(_same(value, first) for value in values):
            merged[name] = first
        elif all(isinstance(value, list) for value in values):
            merged[name] = [item for value in values for item in value]
        elif all(isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
                 for value in values):
            merged[name] = sum(values)
        else:
            merged[name] = first
    return merged


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except (ValueError, TypeError):  # arrays compare element-wise
        return False


class EmbeddingOnDisk:
    """The rows of a chunked run's embedding, appended chunk by chunk to an `.npy` file in the workspace.

    The file is unlinked as soon as it is mapped, so it never outlives the run (the mapping keeps its
    blocks until the array is dropped); its pages are written back to disk and can be evicted, so a
    multi-gigabyte embedding does not count against memory while it is written."""

    def __init__(self, max_rows: int):
        self.max_rows = max_rows
        self.n_rows = 0
        self.emb_nd: Optional[np.memmap] = None

    def append(self, emb_kd: np.ndarray) -> None:
        emb_kd = np.asarray(emb_kd, dtype=np.float32)
        if self.emb_nd is None:
            folder = get_settings().workspace / "chunked"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{uuid.uuid4().hex}.npy"
            self.emb_nd = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                                    shape=(self.max_rows, emb_kd.shape[1]))
            os.unlink(path)
        self.emb_nd[self.n_rows:self.n_rows + len(emb_kd)] = emb_kd
        self.n_rows += len(emb_kd)

    def finish(self) -> np.ndarray:
        """The embedding of the kept cells (a memory map), in input order."""
        if self.emb_nd is None:
            raise ConfigError("the dataset has no cells to embed")
        self.emb_nd.flush()
        return self.emb_nd[:self.n_rows]

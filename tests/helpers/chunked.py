"""A runner's whole (in-memory) run and its chunked (streamed) run on the same file, for tests that
compare them: a chunked run must give what one whole run gives."""

from __future__ import annotations

from typing import Callable, Optional

from czb_core.io.header import read_header
from czb_core.io.reading import read_anndata
from czb_core.models.runner import RunOutput
from czb_core.streaming import chunks
from czb_core.streaming.row_blocks import RowBlocks
from czb_core.types import Organism


def whole_and_chunked(make_runner: Callable, path, monkeypatch, chunk_rows: int,
                      organism: Optional[Organism] = None) -> tuple[RunOutput, RunOutput, list]:
    """(whole output, chunked output, the chunked run's progress calls) of two fresh runners from
    `make_runner()` on the file at `path`, the chunked one in chunks of at most `chunk_rows` cells."""
    monkeypatch.setattr(chunks, "MAX_CHUNK_ROWS", chunk_rows)
    whole_runner = make_runner()
    manager = whole_runner.data_manager(read_header(path), organism)
    whole = whole_runner.execute(manager, device="cpu", read_data=lambda: read_anndata(path))
    runner = make_runner()
    manager = runner.data_manager(read_header(path), organism)
    calls = []
    chunked = runner.execute(manager, device="cpu", open_blocks=lambda: RowBlocks(path, manager.matrix_location),
                             progress=lambda step, done, total: calls.append((step, done, total)))
    return whole, chunked, calls

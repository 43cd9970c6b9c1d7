"""Every GPU measurement of the repository, printed as one markdown table.

    PYTHONPATH=. python3 benchmarks/gpu_suite.py [--quick] [--device cuda|cpu] [--cells N]
    (or `make bench-gpu`)

It runs on a GPU server's plain python3, which has torch, transformers and numpy but not anndata,
scanpy, streamlit, omegaconf or numba, with the repository copied there without its virtual
environment. So it reads no files and imports only the models' torch code: each suite entry builds a
randomly initialised model of a real published size and generates its token batches in memory.
Random weights run the same kernels on the same shapes as trained ones, so the speed is the real
checkpoint's speed.

An entry is one model size timed in several setups; its first setup is the eager fp32 reference and
every row's ratio is its cells per second over that reference's. A setup's model is built, warmed up
on a few cells, then timed once over all the entry's cells (synchronised on CUDA: one pass of a
reference takes tens of seconds, far above the run-to-run noise). Peak GPU memory is
`torch.cuda.max_memory_allocated` from the built model on, so it counts the weights.

The default sizes are chosen, by counting FLOPs at fp32 rates (fp32 eager dominates), for about four
minutes on one H100/H200, so even twice that stays under eight; the last line prints the real time.
`--quick` swaps in tiny models and a few short cells, which run in seconds on the CPU: a check that
the suite works, not a measurement.

To add a model: write a function `quick -> list[SuiteEntry]` and append it to `ENTRY_BUILDERS`.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterator, Optional

import numpy as np

WARMUP_CELLS = 16
COLUMNS = ("model", "size", "precision / attention", "cells/s", "peak GPU memory", "vs eager fp32")


@dataclass(frozen=True)
class Setup:
    """One way to run an entry's model; `prepare(device)` builds it and returns `embed(cells)`."""

    label: str
    prepare: Callable[[str], Callable[[Any], None]]


@dataclass(frozen=True)
class SuiteEntry:
    """One model size: `generate(n_cells, seed)` makes its inputs, `setups[0]` is the eager fp32 reference."""

    model: str
    size: str
    n_cells: int
    generate: Callable[[int, int], Any]
    describe: Callable[[Any], str]
    setups: tuple[Setup, ...]


@dataclass(frozen=True)
class Row:
    model: str
    size: str
    label: str
    cells_per_s: float
    peak_bytes: Optional[int]
    reference_cells_per_s: float


# -- Geneformer ------------------------------------------------------------------------------------

GENEFORMER_V2_SIZES = {  # layers, hidden size, heads, FFN size of the published V2 checkpoints
    "V2-104M": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
    "V2-316M": dict(num_hidden_layers=18, hidden_size=1152, num_attention_heads=18, intermediate_size=4608),
}
GENEFORMER_V2_CELLS = {"V2-104M": 2_000, "V2-316M": 1_000}  # fp32 eager: about a minute each (estimate)
GENEFORMER_TINY = {"tiny 2-layer": dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                        intermediate_size=128)}
V2_VOCAB, V2_INPUT_SIZE = 20_275, 4_096  # both V2 sizes; the gc95M dictionary
PAD, CLS, EOS, FIRST_GENE = 0, 2, 3, 4  # gc95M token ids
REAL_DETECTED, QUICK_DETECTED = 2_000, 100  # genes per cell, on average: real cells detect 1-3k
QUICK_CELLS = 32
REFERENCE_BATCH = 16  # cz-benchmarks embedded 16 cells at a time, in input order


@dataclass(frozen=True)
class GeneratedCells:
    """Token sequences of generated cells, stored padded with `PAD` in `tokens_nl`, and their `lengths`.

    It offers what `CellEncoder.embed` reads of a `TokenizedCells` (`len`, `lengths`, `padded`):
    the tokenizer module, home of that class, needs numba, which the GPU server lacks.
    """

    tokens_nl: np.ndarray  # int64
    lengths: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.lengths)

    def padded(self, rows: np.ndarray, pad_token: int) -> tuple[np.ndarray, np.ndarray]:
        """(`tokens_bl` padded with `pad_token` to the longest of `rows`, `lengths_b`)."""
        lengths_b = self.lengths[rows]
        width = int(lengths_b.max()) if len(rows) else 0
        valid_bl = np.arange(width) < lengths_b[:, None]
        return np.where(valid_bl, self.tokens_nl[rows, :width], pad_token), lengths_b

    def chunks(self, size: int) -> Iterator["GeneratedCells"]:
        """Consecutive runs of `size` cells, in input order."""
        for start in range(0, len(self), size):
            yield GeneratedCells(self.tokens_nl[start : start + size], self.lengths[start : start + size])


def generate_geneformer_cells(n_cells: int, seed: int, detected: int) -> GeneratedCells:
    """V2 sequences: `<cls>`, between half and 1.5 times `detected` distinct gene tokens, `<eos>`.

    Lengths vary from cell to cell in input order, as a dataset's do, so padding each batch of
    consecutive cells to its longest costs what it costs on real data.
    """
    rng = np.random.default_rng(seed)
    n_genes_n = np.minimum(rng.integers(detected // 2, detected * 3 // 2 + 1, n_cells), V2_INPUT_SIZE - 2)
    lengths = n_genes_n + 2
    tokens_nl = np.full((n_cells, int(lengths.max())), PAD, dtype=np.int64)
    genes = np.arange(FIRST_GENE, V2_VOCAB)
    for i, n_genes in enumerate(n_genes_n):  # data generation, not measured
        tokens_nl[i, 0] = CLS
        tokens_nl[i, 1 : n_genes + 1] = rng.choice(genes, n_genes, replace=False)
        tokens_nl[i, n_genes + 1] = EOS
    return GeneratedCells(tokens_nl, lengths.astype(np.int64))


def describe_geneformer_cells(cells: GeneratedCells) -> str:
    return (f"{len(cells):,} generated cells of {cells.lengths.min():,}-{cells.lengths.max():,} tokens "
            f"(mean {cells.lengths.mean():,.0f}), emb_mode cls, second-to-last layer")


def prepare_geneformer(dims: dict, attention: str, precision: str, in_order: bool, device: str):
    """A random `BertForMaskedLM` of `dims` in this runner's `CellEncoder`; returns `embed(cells)`.

    `in_order`: batches of `REFERENCE_BATCH` consecutive cells, each padded to its own longest cell
    (the reference); otherwise the encoder's own length sorting and automatic batch size.
    """
    import torch
    from transformers import BertConfig, BertForMaskedLM

    from model_runners.geneformer.inference import CellEncoder

    config = BertConfig(vocab_size=V2_VOCAB, max_position_embeddings=V2_INPUT_SIZE, hidden_act="relu",
                        pad_token_id=PAD, attn_implementation=attention, **dims)
    torch.manual_seed(0)
    with torch.device(device):
        model = BertForMaskedLM(config).eval()
    encoder = CellEncoder(model, emb_layer=-1, device=device, precision=precision)
    embed = partial(encoder.embed, mode="cls", pad_token=PAD, has_cls=True, has_eos=True)

    def embed_cells(cells: GeneratedCells) -> None:
        if in_order:
            for chunk in cells.chunks(REFERENCE_BATCH):
                embed(chunk, batch_size=REFERENCE_BATCH)
        else:
            embed(cells)

    return embed_cells


def geneformer_entries(quick: bool) -> list[SuiteEntry]:
    """Each V2 size (a tiny one under `quick`) as cz-benchmarks ran it, and as this runner does."""
    sizes = GENEFORMER_TINY if quick else GENEFORMER_V2_SIZES
    detected = QUICK_DETECTED if quick else REAL_DETECTED
    entries = []
    for size, dims in sizes.items():
        setups = (
            Setup(f"fp32, eager attention, input order, batches of {REFERENCE_BATCH}",
                  partial(prepare_geneformer, dims, "eager", "fp32", True)),
            Setup("fp32, SDPA, length-sorted, auto batch", partial(prepare_geneformer, dims, "sdpa", "fp32", False)),
            Setup("bf16 autocast, SDPA, length-sorted, auto batch",
                  partial(prepare_geneformer, dims, "sdpa", "bf16", False)),
        )
        n_cells = QUICK_CELLS if quick else GENEFORMER_V2_CELLS[size]
        entries.append(SuiteEntry("Geneformer", size, n_cells, partial(generate_geneformer_cells, detected=detected),
                                  describe_geneformer_cells, setups))
    return entries


# -- scGPT -----------------------------------------------------------------------------------------

SCGPT_SIZES = {"whole-human": dict(embsize=512, nheads=8, d_hid=512, nlayers=12)}  # args.json of the published model
SCGPT_TINY = {"tiny 2-layer": dict(embsize=32, nheads=2, d_hid=48, nlayers=2)}
SCGPT_CELLS = 4_000  # fp32 eager: about 20 s on an H100/H200 (estimate, 80 GFLOP per 1,200-token cell)
SCGPT_VOCAB, SCGPT_PAD, SCGPT_CLS = 60_697, 60_694, 60_695  # the whole-human vocab.json
SCGPT_MAX_SEQ_LEN, SCGPT_BINS, SCGPT_PAD_VALUE = 1_200, 51, -2.0
SCGPT_REFERENCE_BATCH = 32  # cz-benchmarks embedded 32 cells at a time, in input order


def generate_scgpt_cells(n_cells: int, seed: int, detected: int, max_seq_len: int):
    """`<cls>` then between half and 1.5 times `detected` distinct genes (sampled down to `max_seq_len - 1`
    when more, as the tokenizer does) with random bins 1..50, as the tokenizer lays them out."""
    from model_runners.scgpt.cells import TokenizedCells

    rng = np.random.default_rng(seed)
    n_genes_n = rng.integers(detected // 2, detected * 3 // 2 + 1, n_cells)
    lengths = np.minimum(n_genes_n, max_seq_len - 1) + 1
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    genes_t = np.empty(offsets[-1], dtype=np.int32)
    values_t = rng.integers(1, SCGPT_BINS, offsets[-1]).astype(np.float32)
    for i in range(n_cells):  # data generation, not measured
        genes_t[offsets[i]] = SCGPT_CLS
        genes_t[offsets[i] + 1 : offsets[i + 1]] = np.sort(rng.choice(SCGPT_PAD, lengths[i] - 1, replace=False))
    values_t[offsets[:-1]] = SCGPT_PAD_VALUE
    return TokenizedCells(genes_t, values_t, offsets, n_genes_n.astype(np.int64), seed)


def describe_scgpt_cells(cells) -> str:
    return (f"{len(cells):,} generated cells of {cells.lengths.min():,}-{cells.lengths.max():,} tokens "
            f"(mean {cells.lengths.mean():,.0f}), emb_mode cls")


def prepare_scgpt(dims: dict, max_seq_len: int, attention: str, precision: str, in_order: bool, device: str):
    """A random scGPT encoder of `dims`; returns `embed(cells)` (input-order batches of
    `SCGPT_REFERENCE_BATCH` for the reference, else the runner's length sorting and automatic batch size)."""
    import torch

    from model_runners.scgpt.files import ScgptArgs, Vocab
    from model_runners.scgpt.inference import ScgptModel, build_encoder, embed

    args = ScgptArgs(pad_token="<pad>", pad_value=SCGPT_PAD_VALUE, n_bins=SCGPT_BINS, max_seq_len=max_seq_len, **dims)
    vocab = Vocab({"<pad>": SCGPT_PAD, "<cls>": SCGPT_CLS}, "<pad>")  # the ids embedding reads; genes are not looked up
    torch.manual_seed(0)
    model = ScgptModel(build_encoder(args, SCGPT_VOCAB, attention).to(device).eval(), args, vocab, torch.device(device))
    run = partial(embed, model, mode="cls", precision=precision)

    def embed_cells(cells) -> None:
        if in_order:
            for start in range(0, len(cells), SCGPT_REFERENCE_BATCH):
                run(cells.take(np.arange(start, min(start + SCGPT_REFERENCE_BATCH, len(cells)))),
                    batch_size=SCGPT_REFERENCE_BATCH)
        else:
            run(cells)

    return embed_cells


def scgpt_entries(quick: bool) -> list[SuiteEntry]:
    """The whole-human size (a tiny one under `quick`) as cz-benchmarks ran it, and as this runner does."""
    sizes = SCGPT_TINY if quick else SCGPT_SIZES
    detected = QUICK_DETECTED if quick else REAL_DETECTED
    max_seq_len = 2 * QUICK_DETECTED if quick else SCGPT_MAX_SEQ_LEN
    entries = []
    for size, dims in sizes.items():
        setups = (
            Setup(f"fp32, eager attention, input order, batches of {SCGPT_REFERENCE_BATCH}",
                  partial(prepare_scgpt, dims, max_seq_len, "eager", "fp32", True)),
            Setup("fp32, SDPA, length-sorted, auto batch",
                  partial(prepare_scgpt, dims, max_seq_len, "sdpa", "fp32", False)),
            Setup("bf16 autocast, SDPA, length-sorted, auto batch",
                  partial(prepare_scgpt, dims, max_seq_len, "sdpa", "bf16", False)),
        )
        n_cells = QUICK_CELLS if quick else SCGPT_CELLS
        entries.append(SuiteEntry("scGPT", size, n_cells,
                                  partial(generate_scgpt_cells, detected=detected, max_seq_len=max_seq_len),
                                  describe_scgpt_cells, setups))
    return entries


ENTRY_BUILDERS: tuple[Callable[[bool], list[SuiteEntry]], ...] = (geneformer_entries, scgpt_entries)


# -- the harness -----------------------------------------------------------------------------------

def suite_entries(quick: bool) -> list[SuiteEntry]:
    return [entry for build in ENTRY_BUILDERS for entry in build(quick)]


def time_setup(setup: Setup, cells, warmup, device: str) -> tuple[float, Optional[int]]:
    """(cells per second over `cells` after a warm-up on `warmup`, peak GPU bytes or None off CUDA)."""
    import torch

    on_cuda = torch.device(device).type == "cuda"
    embed = setup.prepare(device)
    gc.collect()  # what building left behind (the full model, the masked-LM head) is not counted
    if on_cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    embed(warmup)
    if on_cuda:
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    embed(cells)
    if on_cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) if on_cuda else None
    del embed
    gc.collect()
    if on_cuda:
        torch.cuda.empty_cache()
    return len(cells) / seconds, peak


def measure_entry(entry: SuiteEntry, device: str, n_cells: Optional[int]) -> list[Row]:
    cells = entry.generate(n_cells or entry.n_cells, 0)
    warmup = entry.generate(WARMUP_CELLS, 1)
    print(f"{entry.model} {entry.size}: {entry.describe(cells)}", flush=True)
    rows: list[Row] = []
    for setup in entry.setups:
        cells_per_s, peak = time_setup(setup, cells, warmup, device)
        reference = rows[0].cells_per_s if rows else cells_per_s
        rows.append(Row(entry.model, entry.size, setup.label, cells_per_s, peak, reference))
        print(f"  {setup.label}: {cells_per_s:,.1f} cells/s", file=sys.stderr, flush=True)
    return rows


def format_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        peak = "n/a" if row.peak_bytes is None else f"{row.peak_bytes / 2**30:.2f} GiB"
        cells = (row.model, row.size, row.label, f"{row.cells_per_s:,.1f}", peak,
                 f"{row.cells_per_s / row.reference_cells_per_s:.2f}x")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def resolve_device(requested: Optional[str], quick: bool) -> str:
    """The device to run on; refuses a missing GPU, and the full sizes on the CPU (hours, not minutes)."""
    import torch

    if requested is None:
        requested = "cuda" if torch.cuda.is_available() or not quick else "cpu"
    try:
        kind = torch.device(requested).type
    except RuntimeError as exc:
        raise SystemExit(f"--device {requested!r} is not a torch device ({exc})") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU is visible to torch here; for a CPU sanity check run with --quick --device cpu")
    if kind == "cpu" and not quick:
        raise SystemExit("the full-size suite on the CPU would take hours; add --quick for a CPU sanity check")
    return requested


def describe_device(device: str) -> str:
    import torch
    import transformers

    name = torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else "CPU"
    return f"device {device} ({name}), torch {torch.__version__}, transformers {transformers.__version__}"


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny models and few short cells (CPU allowed)")
    parser.add_argument("--device", help="torch device (default: cuda; cpu under --quick when there is no GPU)")
    parser.add_argument("--cells", type=int, help="cells per entry instead of each entry's own count")
    args = parser.parse_args(argv)
    if args.cells is not None and args.cells < 1:
        parser.error(f"--cells must be at least 1, got {args.cells}")
    device = resolve_device(args.device, args.quick)
    print(describe_device(device) + (", --quick (tiny models: not a measurement)" if args.quick else ""))
    t0 = time.perf_counter()
    rows = [row for entry in suite_entries(args.quick) for row in measure_entry(entry, device, args.cells)]
    print()
    print(format_table(rows))
    print(f"\nsuite time {time.perf_counter() - t0:,.0f} s")


if __name__ == "__main__":
    main()

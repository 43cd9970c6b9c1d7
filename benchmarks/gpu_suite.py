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


# -- TranscriptFormer ------------------------------------------------------------------------------

TF_SIZES = {  # config.json of TF-Sapiens: residual width, heads, layers, FFN width, ESM-2 width, vocabulary
    "TF-Sapiens": dict(embed_dim=2048, num_heads=16, num_layers=12, model_dim=2048, table_dim=2560,
                       vocab_size=23_829, seq_len=2047),
}
TF_TINY = {"tiny 2-layer": dict(embed_dim=32, num_heads=2, num_layers=2, model_dim=48, table_dim=24,
                                vocab_size=500, seq_len=127)}
TF_CELLS = 256  # fp32 eager: about 1.7 TFLOP per full-length cell, under a minute on an H100/H200 (estimate)
TF_SPECIALS, TF_PAD, TF_START, TF_ASSAYS = 7, 1, 2, 20  # the published special-token order; assay vocabulary


def generate_transcriptformer_cells(n_cells: int, seed: int, detected: int, seq_len: int, vocab_size: int):
    """Between half and 1.5 times `detected` distinct expressed genes per cell (cut to `seq_len`), clipped
    counts 1-30, one known assay token per cell, laid out as the tokenizer does."""
    from model_runners.transcriptformer.cells import TokenizedCells

    rng = np.random.default_rng(seed)
    lengths = np.minimum(rng.integers(detected // 2, detected * 3 // 2 + 1, n_cells), seq_len)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tokens_t = np.concatenate([rng.choice(np.arange(TF_SPECIALS, vocab_size), n, replace=False) for n in lengths])
    counts_t = np.minimum(rng.geometric(0.3, offsets[-1]), 30).astype(np.float32)
    aux_na = rng.integers(1, TF_ASSAYS, (n_cells, 1))
    return TokenizedCells(tokens_t.astype(np.int64), counts_t, offsets, aux_na.astype(np.int64))


def describe_transcriptformer_cells(cells) -> str:
    return (f"{len(cells):,} generated cells of {cells.lengths.min():,}-{cells.lengths.max():,} genes "
            f"(mean {cells.lengths.mean():,.0f}), cell embedding and llh")


def prepare_transcriptformer(dims: dict, attention: str, precision: str, device: str):
    """A random network of `dims` in this runner's `CellEncoder` (length-sorted, automatic batch size)."""
    import torch

    from model_runners.transcriptformer.inference import CellEncoder
    from model_runners.transcriptformer.network import NetSpec, TranscriptformerNet

    spec = NetSpec(vocab_size=dims["vocab_size"], table_dim=dims["table_dim"], embed_dim=dims["embed_dim"],
                   num_heads=dims["num_heads"], num_layers=dims["num_layers"], model_dim=dims["model_dim"],
                   activation="gelu", attn_bias=False, fw_bias=False, softcap=10.0, seq_len=dims["seq_len"],
                   log_counts_eps=1e-6, mu_link_fn="softmax", softplus_approx=True,
                   aux_sizes=(("assay", TF_ASSAYS),), aux_unknown_ids=(0,), start_id=TF_START, pad_id=TF_PAD)
    torch.manual_seed(0)
    encoder = CellEncoder(TranscriptformerNet(spec).eval(), device, precision, attention)
    return partial(encoder.run, clip_counts=30.0)


def transcriptformer_entries(quick: bool) -> list[SuiteEntry]:
    """TF-Sapiens (a tiny model under `quick`): eager fp32, then FlexAttention in fp32 and bf16."""
    sizes = TF_TINY if quick else TF_SIZES
    detected = QUICK_DETECTED if quick else REAL_DETECTED
    entries = []
    for size, dims in sizes.items():
        setups = (
            Setup("fp32, eager attention, length-sorted, auto batch",
                  partial(prepare_transcriptformer, dims, "eager", "fp32")),
            Setup("fp32, FlexAttention, length-sorted, auto batch",
                  partial(prepare_transcriptformer, dims, "flex", "fp32")),
            Setup("bf16 autocast, FlexAttention, length-sorted, auto batch",
                  partial(prepare_transcriptformer, dims, "flex", "bf16")),
        )
        generate = partial(generate_transcriptformer_cells, detected=detected, seq_len=dims["seq_len"],
                           vocab_size=dims["vocab_size"])
        entries.append(SuiteEntry("TranscriptFormer", size, QUICK_CELLS if quick else TF_CELLS, generate,
                                  describe_transcriptformer_cells, setups))
    return entries


# -- UCE -------------------------------------------------------------------------------------------

UCE_SIZES = {  # encoder layers of the published checkpoints; both: d_model 1,280, 20 heads, FFN 5,120
    "4-layer": dict(n_layers=4, d_model=1280, n_heads=20, d_hid=5120, token_dim=5120,
                    decoder_dims=(1024, 1280, 1280, 1280)),
    "33-layer": dict(n_layers=33, d_model=1280, n_heads=20, d_hid=5120, token_dim=5120,
                     decoder_dims=(1024, 1280, 1280, 1280)),
}
UCE_TINY = {"tiny 2-layer": dict(n_layers=2, d_model=40, n_heads=20, d_hid=64, token_dim=64,
                                 decoder_dims=(32, 24, 24, 24))}
UCE_CELLS = {"4-layer": 1_000, "33-layer": 200}  # fp32: about 310 GFLOP (4-layer), 2.4 TFLOP (33-layer) per cell
UCE_TABLE_ROWS, UCE_GENE_ROWS, UCE_CHROMOSOMES = 145_469, 143_574, 25  # the published table; a human-like genome
UCE_CHROMOSOME_GENES = (2050, 1250, 1080, 750, 880, 1040, 920, 680, 780, 730, 1300, 1030, 320, 610, 600, 850,
                        1180, 270, 1470, 540, 230, 440, 840, 45, 13)  # protein-coding genes on 1-22, X, Y, MT
UCE_DETECTED = (500, 2_500)  # detected genes per cell
UCE_LAYOUT = {"real": (1_024, 1_536), "quick": (160, 256)}  # (sampled genes, padded length)
UCE_BATCH = {"4-layer": 100, "33-layer": 25, "tiny 2-layer": 16}  # this runner's GPU batch (config.yaml)
UCE_REFERENCE_BATCH = 25  # the authors' default batch size


def generate_uce_cells(n_cells: int, seed: int, sample_size: int, pad_length: int, table_rows: int):
    """Sentences as the sampler lays them out, from real-shaped cells: genes on chromosomes sized as the
    human genome's, each cell drawing `sample_size` times from its own detected genes. Cells miss some small
    chromosomes, so sentence lengths vary as in real data (which sets how many batches this runner needs)."""
    from model_runners.uce.sampler import SentenceSpec, build_sentences

    rng = np.random.default_rng(seed)
    n_genes = min(20_000, table_rows // 2)
    chrom_offset = table_rows - UCE_CHROMOSOMES
    spec = SentenceSpec(sample_size, pad_length, pad_token=0, cls_token=3, chrom_right_token=2,
                        chrom_token_offset=chrom_offset)
    token_g = rng.integers(4, chrom_offset, n_genes)
    sizes = np.array(UCE_CHROMOSOME_GENES, dtype=float)
    chrom_g = rng.choice(UCE_CHROMOSOMES, n_genes, p=sizes / sizes.sum())
    detected_n = np.minimum(rng.integers(*UCE_DETECTED, n_cells), n_genes)
    genes_ns = np.stack([rng.choice(n_genes, d, replace=False)[rng.integers(0, d, sample_size)] for d in detected_n])
    return build_sentences(genes_ns, token_g, chrom_g, rng.integers(0, 10**8, n_genes), spec, rng)


def describe_uce_cells(cells) -> str:
    tokens_nl, lengths_n = cells
    return (f"{len(lengths_n):,} generated cells of {lengths_n.min():,}-{lengths_n.max():,} used tokens "
            f"(mean {lengths_n.mean():,.0f}, {len(np.unique(lengths_n))} lengths), padded to {tokens_nl.shape[1]:,}")


def random_uce_network(dims: dict, table_rows: int, max_len: int, attention: str, device: str):
    """A randomly initialised `UceNetwork` of `dims` with a random fp32 token table, on `device`."""
    import math

    import torch

    from model_runners.uce.encoder import UceDims, UceNetwork

    shape = UceDims(dims["token_dim"], dims["d_model"], dims["n_heads"], dims["d_hid"], dims["n_layers"],
                    tuple(dims["decoder_dims"]), max_len, table_rows)
    torch.manual_seed(0)
    with torch.device(device):
        network = UceNetwork(shape, attention)
        for layer in network.transformer_encoder.layers:
            torch.nn.init.xavier_uniform_(layer.self_attn.in_proj_weight)
            torch.nn.init.zeros_(layer.self_attn.in_proj_bias)
        position = torch.arange(max_len).unsqueeze(1)
        frequency = torch.exp(torch.arange(0, shape.d_model, 2) * (-math.log(10000.0) / shape.d_model))
        positions = torch.zeros(max_len, shape.d_model)
        positions[:, 0::2], positions[:, 1::2] = torch.sin(position * frequency), torch.cos(position * frequency)
        network.positions_ld = positions
        network.table_td = torch.randn(table_rows, shape.token_dim)
    return network.eval()


def prepare_uce(dims: dict, table_rows: int, max_len: int, attention: str, precision: str, batch_size: int,
                authors: bool, device: str):
    """`embed(cells)` through this runner's network. `authors`: their batching, `batch_size` consecutive
    cells cut to the longest sentence among them, the shorter ones padded under the float mask; else this
    runner's `UceEncoder.embed` (batches of up to `batch_size` sentences of one length, no padding)."""
    import torch

    from model_runners.uce.encoder import UceEncoder

    encoder = UceEncoder(random_uce_network(dims, table_rows, max_len, attention, device), device)

    def embed_cells(cells) -> None:
        tokens_nl, lengths_n = cells
        if not authors:
            encoder.embed(tokens_nl, lengths_n, batch_size, precision)
            return
        with torch.inference_mode():
            for start in range(0, len(lengths_n), batch_size):
                lengths_b = torch.from_numpy(lengths_n[start : start + batch_size]).to(device)
                width = int(lengths_b.max())
                tokens_bl = torch.from_numpy(tokens_nl[start : start + batch_size, :width]).to(device)
                used_bl = (torch.arange(width, device=device)[None, :] < lengths_b[:, None]).float()
                encoder.network(tokens_bl, used_bl).cpu()

    return embed_cells


def uce_entries(quick: bool) -> list[SuiteEntry]:
    """Each published depth (a tiny one under `quick`): the authors' batches and this runner's (which
    never pads, so it may run more, smaller batches: the rows say what that costs)."""
    sizes = UCE_TINY if quick else UCE_SIZES
    sample_size, pad_length = UCE_LAYOUT["quick" if quick else "real"]
    table_rows = 1_000 if quick else UCE_TABLE_ROWS
    entries = []
    for size, dims in sizes.items():
        batch = UCE_BATCH[size]
        build = partial(prepare_uce, dims, table_rows, pad_length)
        setups = (
            Setup(f"fp32, eager attention, batches of {UCE_REFERENCE_BATCH} cut to their longest (authors)",
                  partial(build, "eager", "fp32", UCE_REFERENCE_BATCH, True)),
            Setup(f"fp32, SDPA, batches of up to {batch} of one length",
                  partial(build, "sdpa", "fp32", batch, False)),
            Setup(f"bf16 autocast, SDPA, batches of up to {batch} of one length",
                  partial(build, "sdpa", "bf16", batch, False)),
        )
        n_cells = QUICK_CELLS if quick else UCE_CELLS[size]
        entries.append(SuiteEntry("UCE", size, n_cells,
                                  partial(generate_uce_cells, sample_size=sample_size, pad_length=pad_length,
                                          table_rows=table_rows),
                                  describe_uce_cells, setups))
    return entries


# -- Tokenizer lab ---------------------------------------------------------------------------------

LAB_SIZES = {  # the reference classifier (width 128) and a muP-widened one, over Geneformer-style sentences
    "d128 2-layer": dict(d_model=128, n_layers=2, n_heads=4),
    "d512 2-layer": dict(d_model=512, n_layers=2, n_heads=4),
}
LAB_TINY = {"tiny d32": dict(d_model=32, n_layers=2, n_heads=4)}
LAB_CELLS = {"d128 2-layer": 4_000, "d512 2-layer": 2_000}  # training: about 17 / 130 GFLOP per cell (estimate)
LAB_GENES, LAB_CLASSES, LAB_MAX_LENGTH, LAB_BATCH = 20_000, 10, 2_048, 32


def generate_lab_cells(n_cells: int, seed: int, detected: int, max_length: int):
    """(genes_nl padded with LAB_GENES, values_nl zeros (Fe zero), labels_n): between half and 1.5 times
    `detected` distinct genes per cell, cut to `max_length`, as the Geneformer preset lays them out."""
    rng = np.random.default_rng(seed)
    lengths = np.minimum(rng.integers(detected // 2, detected * 3 // 2 + 1, n_cells), max_length)
    genes_nl = np.full((n_cells, int(lengths.max())), LAB_GENES, dtype=np.int64)
    for i, n in enumerate(lengths):  # data generation, not measured
        genes_nl[i, :n] = rng.choice(LAB_GENES, n, replace=False)
    return genes_nl, np.zeros(genes_nl.shape, dtype=np.float32), rng.integers(0, LAB_CLASSES, n_cells)


def describe_lab_cells(cells) -> str:
    lengths = (cells[0] != LAB_GENES).sum(axis=1)
    return (f"{len(lengths):,} generated cells of {lengths.min():,}-{lengths.max():,} genes "
            f"(mean {lengths.mean():,.0f}), "
            f"training steps (forward, backward, AdamW) in batches of {LAB_BATCH}")


def prepare_lab(dims: dict, max_length: int, precision: str, attention: str, device: str):
    """A tokenizer-lab classifier (identity Fg, zero Fe) of `dims`; returns `train(cells)`, one AdamW step
    per batch of `LAB_BATCH` consecutive cells, each batch padded to its longest cell. `attention="eager"`
    pins SDPA to its plain math kernel (the reference)."""
    import contextlib

    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from czb_core.tokenizer_lab.fe import ZeroFe
    from czb_core.tokenizer_lab.fg import IdentityFg
    from czb_core.tokenizer_lab.model import ModelShape, TokenizedClassifier

    shape = ModelShape(**dims)
    torch.manual_seed(0)
    model = TokenizedClassifier(IdentityFg(LAB_GENES, shape.d_model), ZeroFe(shape.d_model), LAB_GENES, LAB_CLASSES,
                                max_length, shape).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.1, betas=(0.9, 0.95))

    def train_cells(cells) -> None:
        genes_nl, values_nl, labels_n = cells
        for start in range(0, len(labels_n), LAB_BATCH):
            rows = slice(start, start + LAB_BATCH)
            width = int((genes_nl[rows] != LAB_GENES).sum(axis=1).max())
            genes_bl = torch.from_numpy(genes_nl[rows, :width]).to(device)
            values_bl = torch.from_numpy(values_nl[rows, :width]).to(device)
            kernel = sdpa_kernel(SDPBackend.MATH) if attention == "eager" else contextlib.nullcontext()
            with kernel, torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                logits = model(genes_bl, values_bl, torch.zeros_like(genes_bl))
                loss = F.cross_entropy(logits.float(), torch.from_numpy(labels_n[rows]).to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()

    return train_cells


def tokenizer_lab_entries(quick: bool) -> list[SuiteEntry]:
    """The lab's classifier at the reference width and at 4x (muP), trained on Geneformer-style sentences."""
    sizes = LAB_TINY if quick else LAB_SIZES
    detected = QUICK_DETECTED if quick else REAL_DETECTED
    max_length = 2 * QUICK_DETECTED if quick else LAB_MAX_LENGTH
    entries = []
    for size, dims in sizes.items():
        setups = (
            Setup(f"fp32, eager attention (math kernel), training batches of {LAB_BATCH}",
                  partial(prepare_lab, dims, max_length, "fp32", "eager")),
            Setup(f"fp32, SDPA, training batches of {LAB_BATCH}",
                  partial(prepare_lab, dims, max_length, "fp32", "sdpa")),
            Setup(f"bf16 autocast, SDPA, training batches of {LAB_BATCH}",
                  partial(prepare_lab, dims, max_length, "bf16", "sdpa")),
        )
        n_cells = QUICK_CELLS if quick else LAB_CELLS[size]
        entries.append(SuiteEntry("Tokenizer lab", size, n_cells,
                                  partial(generate_lab_cells, detected=detected, max_length=max_length),
                                  describe_lab_cells, setups))
    return entries


# -- scGenePT --------------------------------------------------------------------------------------

SCGENEPT_SIZES = {  # the scGPT whole-human encoder it fine-tunes, with the NCBI+UniProt text table (1,536 wide)
    "whole-human + GenePT": dict(d_model=512, n_heads=8, d_hid=512, n_layers=12, text_dim=1536),
}
SCGENEPT_TINY = {"tiny 2-layer": dict(d_model=32, n_heads=2, d_hid=48, n_layers=2, text_dim=24)}
SCGENEPT_GENES, SCGENEPT_QUICK_GENES = 5_000, 64  # the gene axis of the Norman / Adamson screens (~5,000 genes)
SCGENEPT_CELLS = 512  # fp32 eager: about 0.8 TFLOP per cell over 5,000 genes, seconds on an H100/H200 (estimate)
SCGENEPT_REFERENCE_BATCH = 16


@dataclass(frozen=True)
class ControlCells:
    """What scGenePT's `predict` takes: control expression, the gene axis' tokens, the perturbation flags."""

    values_ng: np.ndarray
    tokens_g: np.ndarray
    flags_g: np.ndarray

    def __len__(self) -> int:
        return len(self.values_ng)


def generate_scgenept_cells(n_cells: int, seed: int, n_genes: int, vocab_size: int) -> ControlCells:
    """Log-normalised control expression (about a third of genes detected) over a gene axis of distinct
    tokens, and one perturbed gene."""
    rng = np.random.default_rng(seed)
    values_ng = np.where(rng.random((n_cells, n_genes)) < 0.33, rng.gamma(1.5, 1.0, (n_cells, n_genes)), 0.0)
    tokens_g = np.sort(rng.choice(vocab_size, n_genes, replace=False)).astype(np.int64)
    flags_g = np.zeros(n_genes, dtype=np.int64)
    flags_g[rng.integers(n_genes)] = 1
    return ControlCells(values_ng.astype(np.float32), tokens_g, flags_g)


def describe_scgenept_cells(cells: ControlCells) -> str:
    return f"{len(cells):,} generated control cells x {cells.values_ng.shape[1]:,} genes, one gene perturbed"


def prepare_scgenept(dims: dict, vocab_size: int, attention: str, precision: str, batch_size: Optional[int],
                     device: str):
    """A random scGenePT of `dims` (one text encoder); returns `predict(cells)`."""
    import torch

    from model_runners.scgenept.inference import LoadedScGenePT, predict
    from model_runners.scgenept.network import GENEPT_ENCODER, ScGenePT

    torch.manual_seed(0)
    network = ScGenePT(vocab_size, dims["d_model"], dims["n_heads"], dims["d_hid"], dims["n_layers"],
                       (GENEPT_ENCODER,), dims["text_dim"], attention)
    model = LoadedScGenePT(network.to(device).eval(), vocab_size, torch.device(device))

    def predict_cells(cells: ControlCells) -> None:
        predict(model, cells.values_ng, cells.tokens_g, cells.flags_g, batch_size=batch_size, precision=precision)

    return predict_cells


def scgenept_entries(quick: bool) -> list[SuiteEntry]:
    """The published size on the screens' gene axis: every position attends to every other (no padding)."""
    sizes = SCGENEPT_TINY if quick else SCGENEPT_SIZES
    n_genes = SCGENEPT_QUICK_GENES if quick else SCGENEPT_GENES
    vocab = 500 if quick else SCGPT_VOCAB
    entries = []
    for size, dims in sizes.items():
        batch = 4 if quick else SCGENEPT_REFERENCE_BATCH
        setups = (
            Setup(f"fp32, eager attention, batches of {batch}",
                  partial(prepare_scgenept, dims, vocab, "eager", "fp32", batch)),
            Setup(f"fp32, SDPA, batches of {batch}", partial(prepare_scgenept, dims, vocab, "sdpa", "fp32", batch)),
            Setup(f"bf16 autocast, SDPA, batches of {batch}",
                  partial(prepare_scgenept, dims, vocab, "sdpa", "bf16", batch)),
        )
        n_cells = QUICK_CELLS if quick else SCGENEPT_CELLS
        entries.append(SuiteEntry("scGenePT", size, n_cells,
                                  partial(generate_scgenept_cells, n_genes=n_genes, vocab_size=vocab),
                                  describe_scgenept_cells, setups))
    return entries


ENTRY_BUILDERS: tuple[Callable[[bool], list[SuiteEntry]], ...] = (
    geneformer_entries, scgpt_entries, transcriptformer_entries, uce_entries, scgenept_entries, tokenizer_lab_entries)


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

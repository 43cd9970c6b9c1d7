"""Issue 6 figures: Geneformer tokenization on the CPU, and inference on a GPU when there is one.

    python benchmarks/bench_geneformer.py [--cells 20000] [--genes 20000] [--detected 2000]
                                          [--plain-cells 2000] [--gpu-cells 2000]

Tokenization: cells per second of the tokenizer on generated counts (a CSR with about `--detected`
genes per cell over `--genes` genes, a fake V2 dictionary of as many genes) beside a plain per-cell
Python loop (scipy row, normalise, stable argsort, truncate), and their ratio. Both run in one process;
the tokenizer's numba kernel splits rows between the CPUs the process may use (the plain loop uses
one), and the plain loop runs on the first `--plain-cells` cells. The tokenizer's figure is steady
state (best of 3 after a warm-up call); the kernel's compile time is reported apart, as the first call
of fresh processes on a cold and on a filled numba cache (a throwaway cache folder).

Inference: with a CUDA GPU, randomly initialised models of the real V2-104M and V2-316M sizes
(model-formats.md section 1) on tokens of generated cells: fp32 with eager attention in input order
(batches of 16, as cz-benchmarks ran) against bf16 autocast with SDPA and length-sorted batches (this
runner), cells per second and peak GPU memory of each. Without a GPU that part is skipped, and a tiny
model runs the same comparison on the CPU as a sanity check only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from model_runners.geneformer.dictionaries import GeneDictionaries  # noqa: E402
from model_runners.geneformer.tokenizer import RankValueTokenizer, TokenizedCells, TokenizerSpec  # noqa: E402

V2_SIZES = {  # model-formats.md section 1
    "V2-104M": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
    "V2-316M": dict(num_hidden_layers=18, hidden_size=1152, num_attention_heads=18, intermediate_size=4608),
}
V2_VOCAB, V2_POSITIONS, INPUT_SIZE = 20275, 4096, 4096
SPECIALS = ("<pad>", "<mask>", "<cls>", "<eos>")


def generated_counts(n_cells: int, n_genes: int, detected: int, seed: int = 0) -> sp.csr_matrix:
    """Counts with ~`detected` genes per cell (between half and 1.5 times that), small integers."""
    rng = np.random.default_rng(seed)
    nnz_n = rng.integers(detected // 2, detected * 3 // 2, size=n_cells)
    indptr = np.concatenate([[0], np.cumsum(nnz_n)])
    # distinct sorted columns per row: random gaps that add up to at most n_genes
    gaps = rng.random(indptr[-1])
    columns = np.empty(indptr[-1], dtype=np.int32)
    for lo, hi in zip(indptr[:-1], indptr[1:]):  # data generation, not measured
        row = np.cumsum(gaps[lo:hi])
        columns[lo:hi] = (row / row[-1] * (n_genes - 1 - (hi - lo))).astype(np.int64) + np.arange(hi - lo)
    data = (rng.negative_binomial(1, 0.4, size=indptr[-1]) + 1).astype(np.float32)
    return sp.csr_matrix((data, columns, indptr), shape=(n_cells, n_genes))


def fake_dictionaries(n_genes: int, seed: int = 0) -> tuple[GeneDictionaries, list[str]]:
    rng = np.random.default_rng(seed)
    genes = [f"ENSG{i:011d}" for i in range(n_genes)]
    token = {name: i for i, name in enumerate(SPECIALS)} | {g: i + len(SPECIALS) for i, g in enumerate(genes)}
    median = dict(zip(genes, rng.lognormal(0.0, 1.0, n_genes)))
    return GeneDictionaries(token, median, {g: g for g in genes}, len(SPECIALS)), genes


def plain_tokenize(x_ng: sp.csr_matrix, token_c: np.ndarray, median_c: np.ndarray, input_size: int) -> list:
    """One cell at a time, as a straightforward implementation would (mapping done once up front)."""
    n_counts_n = np.asarray(x_ng.sum(axis=1), dtype=np.float64).ravel()
    cells = []
    for i in range(x_ng.shape[0]):
        row = x_ng[i]
        x_norm = row.data.astype(np.float64) / n_counts_n[i] * 10_000 / median_c[row.indices]  # float32 would
        # reorder ~0.6% of cells: float32 rounding (6e-8) exceeds the gap between neighbouring values
        ranked = row.indices[np.argsort(-x_norm, kind="stable")][: input_size - 2]
        cells.append(np.concatenate([[2], token_c[ranked], [3]]))
    return cells


def best_of(repeats: int, fn):
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def bench_tokenization(args) -> TokenizedCells:
    x_ng = generated_counts(args.cells, args.genes, args.detected)
    dictionaries, genes = fake_dictionaries(args.genes)
    tokenizer = RankValueTokenizer(dictionaries, TokenizerSpec(INPUT_SIZE, cls_token=2, eos_token=3))
    tokenizer.tokenize(x_ng[:10], genes)  # warm-up: compiles the kernel or loads it from numba's cache
    fast_s, cells = best_of(3, lambda: tokenizer.tokenize(x_ng, genes))
    n_plain = min(args.plain_cells, args.cells)
    token_c, median_c = dictionaries.tokens_of(genes), dictionaries.median_t[dictionaries.tokens_of(genes)]
    plain_s, plain = best_of(1, lambda: plain_tokenize(x_ng[:n_plain], token_c, median_c, INPUT_SIZE))
    same = sum(np.array_equal(plain[i], cells.cell(i)) for i in range(n_plain))
    fast, slow = args.cells / fast_s, n_plain / plain_s
    print(f"tokenization, {args.cells:,} cells x {args.genes:,} genes, {x_ng.nnz / args.cells:,.0f} detected per cell "
          f"(V2 layout, input {INPUT_SIZE}):")
    print(f"  tokenizer  : {fast:>9,.0f} cells/s ({fast_s:.2f} s, best of 3 after a warm-up, "
          f"{len(os.sched_getaffinity(0))} threads)")
    print(f"  plain loop : {slow:>9,.0f} cells/s ({plain_s:.2f} s for {n_plain:,} cells, one thread)")
    print(f"  ratio      : {fast / slow:.1f}x; identical tokens for {same:,} of {n_plain:,} cells")
    with tempfile.TemporaryDirectory() as cache:
        cold, cached = first_call_seconds(cache), first_call_seconds(cache)
    print(f"  compile    : first call {cold:.1f} s on a cold numba cache, {cached:.2f} s loading from the cache")
    return cells


def first_call_seconds(cache_dir: str) -> float:
    """Seconds of the first tokenization (of 10 cells) in a fresh process with numba's cache in `cache_dir`."""
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    out = subprocess.run([sys.executable, __file__, "--first-call"], env=env, check=True, capture_output=True,
                         text=True).stdout
    return float(out.split()[-1])


def print_first_call_seconds() -> None:
    x_ng = generated_counts(10, 2_000, 200)  # the same dtypes as the measured matrix: the same compiled kernel
    dictionaries, genes = fake_dictionaries(2_000)
    tokenizer = RankValueTokenizer(dictionaries, TokenizerSpec(INPUT_SIZE, cls_token=2, eos_token=3))
    t0 = time.perf_counter()
    tokenizer.tokenize(x_ng, genes)
    print(time.perf_counter() - t0)


def bench_inference(args, cells: TokenizedCells) -> None:
    import torch

    if not torch.cuda.is_available():
        print("inference: no CUDA GPU here, GPU part skipped (fp32-eager vs bf16-SDPA at V2-104M/V2-316M sizes)")
        sanity = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128)
        sample = cells.take(np.arange(min(64, len(cells))))
        compare("CPU sanity, tiny 2-layer model", sanity, sample, "cpu", naive_batch=16)
        return
    sample = cells.take(np.arange(min(args.gpu_cells, len(cells))))
    for name, sizes in V2_SIZES.items():
        compare(f"{name} on {torch.cuda.get_device_name(0)}", sizes, sample, "cuda", naive_batch=16)


def compare(title: str, sizes: dict, cells: TokenizedCells, device: str, naive_batch: int) -> None:
    """fp32 + eager attention in input order vs this runner's encoder (SDPA, bf16 on CUDA, sorted)."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    from model_runners.geneformer.inference import CellEncoder

    config = BertConfig(vocab_size=V2_VOCAB, max_position_embeddings=V2_POSITIONS, hidden_act="relu",
                        pad_token_id=0, **sizes)
    print(f"inference, {title}: {len(cells):,} cells, {cells.lengths.mean():,.0f} tokens on average")
    rows = []
    for label, attention, precision, batch_size, in_order in (
            ("fp32 eager, input order", "eager", "fp32", naive_batch, True),
            ("SDPA, auto precision, length-sorted", "sdpa", "auto", None, False)):
        torch.manual_seed(0)
        config._attn_implementation = attention
        with torch.device(device):
            model = BertForMaskedLM(config).eval()
        encoder = CellEncoder(model, emb_layer=-1, device=device, precision=precision)
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        if in_order:  # each batch of consecutive cells padded to its own longest cell: no length sorting
            for start in range(0, len(cells), batch_size):
                batch = cells.take(np.arange(start, min(start + batch_size, len(cells))))
                encoder.embed(batch, mode="cls", pad_token=0, has_cls=True, has_eos=True, batch_size=batch_size)
        else:
            encoder.embed(cells, mode="cls", pad_token=0, has_cls=True, has_eos=True, batch_size=batch_size)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device == "cuda" else "n/a (CPU)"
        rows.append((label, len(cells) / seconds))
        print(f"  {label:<38s}: {len(cells) / seconds:>8,.1f} cells/s, peak GPU memory {peak}")
        del model, encoder
        if device == "cuda":
            torch.cuda.empty_cache()
    print(f"  ratio: {rows[1][1] / rows[0][1]:.2f}x cells/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=20_000)
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--detected", type=int, default=2_000)
    parser.add_argument("--plain-cells", type=int, default=2_000)
    parser.add_argument("--gpu-cells", type=int, default=2_000)
    parser.add_argument("--first-call", action="store_true", help=argparse.SUPPRESS)  # see first_call_seconds
    args = parser.parse_args()
    if args.first_call:
        print_first_call_seconds()
        return
    cells = bench_tokenization(args)
    bench_inference(args, cells)


if __name__ == "__main__":
    main()

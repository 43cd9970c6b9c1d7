"""Issue 6 figures: Geneformer tokenization on the CPU.

    python benchmarks/bench_geneformer.py [--cells 20000] [--genes 20000] [--detected 2000]
                                          [--plain-cells 2000]

Tokenization: cells per second of the tokenizer on generated counts (a CSR with about `--detected`
genes per cell over `--genes` genes, a fake V2 dictionary of as many genes) beside a plain per-cell
Python loop (scipy row, normalise, stable argsort, truncate), and their ratio. Both run in one process;
the tokenizer's numba kernel splits rows between the CPUs the process may use (the plain loop uses
one), and the plain loop runs on the first `--plain-cells` cells. The tokenizer's figure is steady
state (best of 3 after a warm-up call); the kernel's compile time is reported apart, as the first call
of fresh processes on a cold and on a filled numba cache (a throwaway cache folder).

Inference (fp32 eager as cz-benchmarks ran against this runner's SDPA and bf16, on a GPU) is measured by
benchmarks/gpu_suite.py (`make bench-gpu`).
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
from benchmarks._common import best_of, generated_counts  # noqa: E402
from model_runners.geneformer.dictionaries import GeneDictionaries  # noqa: E402
from model_runners.geneformer.tokenizer import RankValueTokenizer, TokenizerSpec  # noqa: E402

INPUT_SIZE = 4096
SPECIALS = ("<pad>", "<mask>", "<cls>", "<eos>")




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




def bench_tokenization(args) -> None:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=20_000)
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--detected", type=int, default=2_000)
    parser.add_argument("--plain-cells", type=int, default=2_000)
    parser.add_argument("--first-call", action="store_true", help=argparse.SUPPRESS)  # see first_call_seconds
    args = parser.parse_args()
    if args.first_call:
        print_first_call_seconds()
        return
    bench_tokenization(args)


if __name__ == "__main__":
    main()

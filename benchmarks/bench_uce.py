"""Issue 14 figures: UCE's sentence sampling on the CPU, and bf16 autocast against fp32.

    python benchmarks/bench_uce.py [--cells 20000] [--genes 20000] [--detected 2000] [--plain-cells 1000]
                                   [--precision-cells 2 (0: skip)]

Sampling: cells per second of the vectorised sampler (`model_runners.uce.sampler.sample_sentences`)
on generated counts (a CSR with about `--detected` genes per cell over `--genes` genes on 25
chromosomes) beside a plain per-cell loop written here the way the authors sample (np.random.choice
with p, argsort by chromosome, shuffled chromosomes, argsort by start within each), and their ratio.
Both run single-threaded numpy in this process; the figure is the best of 3.

Precision: the largest 1 - cosine between fp32 and bf16-autocast embeddings of the same padded
sentences, on a tiny random network and on a random network of the published 4-layer size (d_model
1,280, 20 heads, FFN 5,120, 5,120-wide tokens; a 5,000-row table: the row count changes nothing but
memory). This runs bf16 autocast on the CPU (the GPU's kernels differ; the GPU suite times them).
Random weights, not the trained ones: a check of the arithmetic, not of the published checkpoint.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._common import best_of, generated_counts  # noqa: E402
from model_runners.uce.sampler import CountsBlock, SentenceSpec, sample_sentences  # noqa: E402

SPEC = SentenceSpec(sample_size=1024, pad_length=1536, pad_token=0, cls_token=3, chrom_right_token=2,
                    chrom_token_offset=143_574)
N_CHROMOSOMES = 25


def generated_genes(n_genes: int, seed: int = 0):
    """Random (token, chromosome, start) per gene."""
    rng = np.random.default_rng(seed)
    return (rng.integers(4, 100_000, n_genes), rng.integers(0, N_CHROMOSOMES, n_genes),
            rng.integers(0, 10**8, n_genes))


def plain_sentences(x, token_g, chrom_g, start_g, spec: SentenceSpec, seed: int) -> np.ndarray:
    """The authors' per-cell algorithm, one cell at a time (the comparison, not the runner's code)."""
    np.random.seed(seed)
    out = np.zeros((x.shape[0], spec.pad_length), dtype=np.int64)
    for c in range(x.shape[0]):
        row = x.getrow(c).toarray().ravel()
        weights = np.log1p(row)
        weights = weights / weights.sum()
        choice = np.random.choice(np.arange(len(weights)), size=spec.sample_size, p=weights, replace=True)
        choice = choice[np.argsort(chrom_g[choice])]
        chroms, starts = chrom_g[choice], start_g[choice]
        sentence = np.full(spec.pad_length, spec.cls_token)
        i = 1
        unique = np.unique(chroms)
        np.random.shuffle(unique)
        for chrom in unique:
            sentence[i] = chrom + spec.chrom_token_offset
            loc = np.where(chroms == chrom)[0]
            genes = choice[loc[np.argsort(starts[loc])]]
            sentence[i + 1 : i + 1 + len(genes)] = token_g[genes]
            i += len(genes) + 1
            sentence[i] = spec.chrom_right_token
            i += 1
        sentence[i:] = spec.pad_token
        out[c] = sentence
    return out




def bench_sampling(args) -> None:
    x = generated_counts(args.cells, args.genes, args.detected)
    token_g, chrom_g, start_g = generated_genes(args.genes)
    block = CountsBlock(x.indptr, x.indices, x.data)
    vectorised_s = best_of(3, lambda: [t for t, _ in sample_sentences(block, token_g, chrom_g, start_g, SPEC, 0,
                                                                                 np.arange(block.n_cells))])[0]
    plain_x = x[: args.plain_cells]
    plain_s = best_of(3, lambda: plain_sentences(plain_x, token_g, chrom_g, start_g, SPEC, 0))[0]
    vectorised, plain = args.cells / vectorised_s, args.plain_cells / plain_s
    print(f"sampling, {args.cells:,} cells x {args.genes:,} genes, {x.nnz / args.cells:,.0f} detected per cell, "
          f"{SPEC.sample_size} draws, padded to {SPEC.pad_length}:")
    print(f"  vectorised: {vectorised:,.0f} cells/s; plain per-cell loop ({args.plain_cells:,} cells): "
          f"{plain:,.0f} cells/s; ratio {vectorised / plain:.1f}x")


def bench_precision(args) -> None:
    import torch

    from benchmarks.gpu_suite import UCE_SIZES, UCE_TINY, generate_uce_cells, random_uce_network

    torch.set_num_threads(max(1, torch.get_num_threads()))
    cases = {"tiny 2-layer": (UCE_TINY["tiny 2-layer"], 1_000), "4-layer size": (UCE_SIZES["4-layer"], 5_000)}
    for name, (dims, rows) in cases.items():
        tokens_nl, lengths_n = generate_uce_cells(args.precision_cells, 0, SPEC.sample_size, SPEC.pad_length, rows)
        network = random_uce_network(dims, rows, SPEC.pad_length, "sdpa", "cpu")
        tokens = torch.from_numpy(tokens_nl)
        used = (torch.arange(SPEC.pad_length)[None] < torch.from_numpy(lengths_n)[:, None]).float()
        with torch.inference_mode():
            t0 = time.perf_counter()
            fp32 = network(tokens, used)
            t1 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                bf16 = network(tokens, used).float()
            t2 = time.perf_counter()
        gap = 1 - torch.nn.functional.cosine_similarity(fp32, bf16, dim=1)
        print(f"precision, {name}, {args.precision_cells} cells: max 1 - cos(fp32, bf16) = {float(gap.max()):.2e} "
              f"(fp32 {t1 - t0:.1f} s, bf16 {t2 - t1:.1f} s on the CPU)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=20_000)
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--detected", type=int, default=2_000)
    parser.add_argument("--plain-cells", type=int, default=1_000)
    parser.add_argument("--precision-cells", type=int, default=2, help="0 skips the precision check")
    args = parser.parse_args()
    bench_sampling(args)
    if args.precision_cells:
        bench_precision(args)


if __name__ == "__main__":
    main()

"""Issue 13 figures: scGPT preprocessing (gene match, per-cell binning, sampling) on the CPU.

    python benchmarks/bench_scgpt.py [--cells 20000] [--genes 20000] [--detected 2000] [--plain-cells 2000]

Cells per second of `model_runners.scgpt.tokenizer.tokenize` on generated counts (a CSR with about
`--detected` genes per cell over `--genes` genes, every gene in the vocabulary, heavy-tailed counts so
that some cells exceed the counting path's range) beside a plain per-cell implementation of the same
rules (CSR row, `np.quantile`, two `np.digitize`, the random tie break, a `permutation` sample), and
their ratio. Layout of the whole-human model: 51 bins, `max_seq_len` 1200, so most of these cells are
sampled. The tokenizer's figure is steady state (best of 3 after a warm-up call, which compiles the
numba kernel or loads it from the cache); it splits rows between the CPUs the process may use, the
plain loop uses one, on the first `--plain-cells` cells. Both must give every cell the same length.

Inference speed (fp32 eager against bf16 SDPA, length-bucketed) is measured by benchmarks/gpu_suite.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._common import best_of, generated_counts  # noqa: E402
from model_runners.scgpt.files import ScgptArgs, Vocab  # noqa: E402
from model_runners.scgpt.tokenizer import tokenize  # noqa: E402

WHOLE_HUMAN = ScgptArgs(embsize=512, nheads=8, d_hid=512, nlayers=12, pad_token="<pad>", pad_value=-2.0, n_bins=51,
                        max_seq_len=1200)




def plain_tokenize(x_ng: sp.csr_matrix, token_c: np.ndarray, args: ScgptArgs, cls_id: int, seed: int) -> list:
    """One cell at a time, as a straightforward implementation of the rules would (mapping done up front)."""
    rng = np.random.default_rng(seed)
    quantiles = np.linspace(0, 1, args.n_bins - 1)
    cells = []
    for i in range(x_ng.shape[0]):
        row = slice(x_ng.indptr[i], x_ng.indptr[i + 1])
        tokens, values = token_c[x_ng.indices[row]], x_ng.data[row].astype(np.float32)
        known = (tokens >= 0) & (values > 0)
        tokens, values = tokens[known], values[known]
        edges = np.quantile(values, quantiles)
        left, right = np.digitize(values, edges), np.digitize(values, edges, right=True)
        bins = np.ceil(rng.random(len(values)) * (right - left) + left)
        if len(tokens) > args.max_seq_len - 1:
            keep = np.sort(rng.permutation(len(tokens))[: args.max_seq_len - 1])
            tokens, bins = tokens[keep], bins[keep]
        cells.append((np.concatenate([[cls_id], tokens]), np.concatenate([[args.pad_value], bins])))
    return cells




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=20_000)
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--detected", type=int, default=2_000)
    parser.add_argument("--plain-cells", type=int, default=2_000)
    args = parser.parse_args()
    x_ng = generated_counts(args.cells, args.genes, args.detected)
    genes = [f"GENE{i}" for i in range(args.genes)]
    vocab = Vocab({**{g: i for i, g in enumerate(genes)}, "<pad>": args.genes, "<cls>": args.genes + 1,
                   "<eoc>": args.genes + 2}, "<pad>")
    t0 = time.perf_counter()
    tokenize(x_ng[:10], genes, vocab, WHOLE_HUMAN)
    first_s = time.perf_counter() - t0
    fast_s, cells = best_of(3, lambda: tokenize(x_ng, genes, vocab, WHOLE_HUMAN, seed=0))
    n_plain = min(args.plain_cells, args.cells)
    token_c = vocab.tokens_of(genes)
    plain_s, plain = best_of(1, lambda: plain_tokenize(x_ng[:n_plain], token_c, WHOLE_HUMAN, vocab.cls_id, 0))
    same_length = sum(len(plain[i][0]) == cells.lengths[i] for i in range(n_plain))
    fast, slow = args.cells / fast_s, n_plain / plain_s
    sampled = int((cells.n_genes > WHOLE_HUMAN.max_seq_len - 1).sum())
    print(f"scGPT preprocessing, {args.cells:,} cells x {args.genes:,} genes, {x_ng.nnz / args.cells:,.0f} detected "
          f"per cell (largest count {x_ng.data.max():,.0f}), 51 bins, max_seq_len 1200 ({sampled:,} cells sampled):")
    print(f"  tokenizer  : {fast:>9,.0f} cells/s ({fast_s:.2f} s, best of 3 after a warm-up of {first_s:.1f} s, "
          f"{len(os.sched_getaffinity(0))} threads)")
    print(f"  plain loop : {slow:>9,.0f} cells/s ({plain_s:.2f} s for {n_plain:,} cells, one thread)")
    print(f"  ratio      : {fast / slow:.1f}x; same sequence length for {same_length:,} of {n_plain:,} cells")


if __name__ == "__main__":
    main()

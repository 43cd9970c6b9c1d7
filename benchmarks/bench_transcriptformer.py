"""TranscriptFormer on the CPU: tokenization, and eager attention against FlexAttention.

    python benchmarks/bench_transcriptformer.py [--cells 20000] [--genes 20000] [--detected 2000]
                                                [--model-cells 24] [--threads 2]

Tokenization: cells per second of the vectorised tokenizer on generated counts (a CSR with about
`--detected` expressed genes per cell over `--genes` genes, every gene in a fake vocabulary, seq_len
2,047 as TF-Sapiens), best of 3.

Attention: a random network of a small size (2 layers, width 256, 8 heads, seq_len 511) on
`--model-cells` generated cells of 128-384 genes, fp32, batches of 8, timed once after a warm-up
batch, with the eager products and with (uncompiled) FlexAttention, which on the CPU materialises
the scores as eager does; the runner's CPU default is the faster of the two. Also prints the largest
difference between the two embeddings. GPU figures (compiled FlexAttention, bf16, TF-Sapiens size)
come from benchmarks/gpu_suite.py.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._common import best_of, generated_counts  # noqa: E402
from model_runners.transcriptformer.cells import TokenizedCells  # noqa: E402
from model_runners.transcriptformer.tokenizer import tokenize_genes  # noqa: E402

SMALL = dict(embed_dim=256, num_heads=8, num_layers=2, model_dim=256, table_dim=128, vocab_size=5_000, seq_len=511)




def bench_tokenizer(n_cells: int, n_genes: int, detected: int) -> None:
    x_ng = generated_counts(n_cells, n_genes, detected)
    token_g = np.arange(7, 7 + n_genes, dtype=np.int64)
    best, _ = best_of(3, lambda: tokenize_genes(x_ng, token_g, 2047, 30.0))
    print(f"tokenization: {n_cells:,} cells x {n_genes:,} genes, {x_ng.nnz / n_cells:,.0f} expressed per cell: "
          f"{n_cells / best:,.0f} cells/s ({best:.2f} s)")


def bench_attention(n_cells: int) -> None:
    import torch

    from model_runners.transcriptformer.inference import CellEncoder
    from model_runners.transcriptformer.network import NetSpec, TranscriptformerNet

    spec = NetSpec(vocab_size=SMALL["vocab_size"], table_dim=SMALL["table_dim"], embed_dim=SMALL["embed_dim"],
                   num_heads=SMALL["num_heads"], num_layers=SMALL["num_layers"], model_dim=SMALL["model_dim"],
                   activation="gelu", attn_bias=False, fw_bias=False, softcap=10.0, seq_len=SMALL["seq_len"],
                   log_counts_eps=1e-6, mu_link_fn="softmax", softplus_approx=True,
                   aux_sizes=(("assay", 20),), aux_unknown_ids=(0,), start_id=2, pad_id=1)
    torch.manual_seed(0)
    net = TranscriptformerNet(spec).eval()
    rng = np.random.default_rng(1)
    lengths = rng.integers(128, 385, n_cells)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tokens_t = np.concatenate([rng.choice(np.arange(7, SMALL["vocab_size"]), n, replace=False) for n in lengths])
    counts_t = np.minimum(rng.geometric(0.3, offsets[-1]), 30).astype(np.float32)
    cells = TokenizedCells(tokens_t.astype(np.int64), counts_t, offsets, rng.integers(1, 20, (n_cells, 1)))
    warmup = TokenizedCells(cells.tokens_t[:offsets[8]], cells.counts_t[:offsets[8]], offsets[:9], cells.aux_na[:8])
    embeddings = {}
    print(f"attention: {n_cells} cells of {lengths.min()}-{lengths.max()} genes, {SMALL['num_layers']} layers x "
          f"{SMALL['embed_dim']} wide, fp32, batches of 8, {torch.get_num_threads()} threads")
    for backend in ("eager", "flex"):
        encoder = CellEncoder(net, "cpu", "fp32", backend)
        encoder.run(warmup, 30.0, 8)
        seconds, _ = best_of(1, lambda: embeddings.__setitem__(backend, encoder.run(cells, 30.0, 8).emb_nd))
        print(f"  {backend:>5}: {n_cells / seconds:,.2f} cells/s ({seconds:.1f} s)")
    largest = np.abs(embeddings["eager"] - embeddings["flex"]).max()
    print(f"  largest |eager - flex| embedding difference: {largest:.1e}")




def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=20_000)
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--detected", type=int, default=2_000)
    parser.add_argument("--model-cells", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
    bench_tokenizer(args.cells, args.genes, args.detected)
    bench_attention(args.model_cells)


if __name__ == "__main__":
    main()

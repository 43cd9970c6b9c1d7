"""Parity of the scGPT runner with the authors' package (scgpt 0.2.4) on one tiny checkpoint and one set of cells.

    python benchmarks/parity_scgpt.py [--venv /tmp/scgptvenv] [--keep DIR]

The authors' package needs torch 2.3 and torchtext 0.18, which cannot share this project's environment,
so it runs in a side virtual environment (python 3.11), built once with:

    python3.11 -m venv /tmp/scgptvenv
    /tmp/scgptvenv/bin/pip install torch==2.3.0 torchtext==0.18.0 numpy==1.26.4 scanpy==1.10.4 \
        ipython==8.31.0 seaborn==0.13.2 datasets==2.21.0 pyarrow==17.0.0
    /tmp/scgptvenv/bin/pip install --no-deps scgpt==0.2.4

(the extra packages are what `import scgpt` pulls in; flash-attn is absent, so the authors' model uses
torch's own encoder layers after renaming `Wqkv` to `in_proj_`, as their loader does).

This script writes a tiny checkpoint in the real three-file format (tests/helpers/scgpt_files.py) and
two kinds of cells, runs the authors' `scgpt.tasks.embed_data` (their gene matching, data collator,
binning, model and `<cls>` read-out, on the CPU in fp32) in the side environment, and the runner here:

- cells without ties (distinct continuous values, fewer genes than `max_seq_len - 1`): nothing random
  happens in either, so the embeddings must agree to float32 rounding; prints the largest difference;
- count cells (ties, whose bins both draw at random, and cells longer than `max_seq_len - 1`, which
  both sample): compared in distribution. Binning: per gene, the mean bin over 300 draws of the
  authors' `binning` (numpy's global generator) against 300 seeds here, as z-scores. Embeddings: the
  cosine of the authors' embedding to this runner's, beside the cosine between two seeds here.

Exit status 0 when the exact part agrees within 1e-5 and the distributions agree (|z| < 5 per gene,
mean cosines within 0.01); 1 otherwise; 2 when the side environment is missing or broken (the message
says which).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from model_runners.scgpt.files import load_args, load_vocab  # noqa: E402
from model_runners.scgpt.inference import embed, load_model  # noqa: E402
from model_runners.scgpt.tokenizer import tokenize  # noqa: E402
from tests.helpers.scgpt_files import gene_symbols, write_checkpoint  # noqa: E402

N_GENES = 300
ARGS = {"embsize": 64, "nheads": 4, "d_hid": 96, "nlayers": 3, "max_seq_len": 128}
N_DRAWS = 300
EXACT_TOLERANCE = 1e-5
Z_LIMIT = 5.0
COSINE_TOLERANCE = 0.01

AUTHORS = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
import numpy as np, scipy.sparse as sp, anndata, torch
from scgpt.tasks import embed_data
from scgpt.preprocess import binning
work = sys.argv[1]
data = np.load(f"{work}/cells.npz", allow_pickle=False)
genes = [str(g) for g in data["genes"]]
torch.manual_seed(0)
np.random.seed(0)
out = {}
for part in ("exact", "ties"):
    x = sp.csr_matrix((data[part + "_data"], data[part + "_indices"], data[part + "_indptr"]),
                      shape=tuple(data[part + "_shape"]))
    adata = anndata.AnnData(X=x, var={"feature_name": genes})
    adata.var_names = genes
    result = embed_data(adata, f"{work}/checkpoint", gene_col="feature_name", max_length=int(data["max_length"]),
                        batch_size=8, device="cpu", use_fast_transformer=False, return_new_adata=True)
    out[part] = np.asarray(result.X, dtype=np.float32)
x = sp.csr_matrix((data["ties_data"], data["ties_indices"], data["ties_indptr"]), shape=tuple(data["ties_shape"]))
bins = []
for i in range(x.shape[0]):
    row = x.data[x.indptr[i]:x.indptr[i + 1]].astype(np.float32)
    bins.append(np.mean([binning(row.copy(), n_bins=int(data["n_bins"])) for _ in range(int(data["n_draws"]))], axis=0))
np.savez(f"{work}/authors.npz", exact=out["exact"], ties=out["ties"], mean_bins=np.concatenate(bins),
         version=np.array(__import__("scgpt").__version__), torch=np.array(torch.__version__))
"""


def exact_cells(rng, n_cells: int, max_genes: int) -> sp.csr_matrix:
    """Distinct continuous values, at most `max_genes` per cell: no value equals two edges, no sampling."""
    rows = []
    for _ in range(n_cells):  # data generation, not measured
        n = int(rng.integers(2, max_genes + 1))
        row = np.zeros(N_GENES, dtype=np.float32)
        row[rng.choice(N_GENES, n, replace=False)] = rng.permutation(np.linspace(0.5, 50.0, n) + rng.random(n) * 0.01)
        rows.append(row)
    return sp.csr_matrix(np.array(rows))


def count_cells(rng, n_cells: int) -> sp.csr_matrix:
    """Small whole-number counts (many ties); a third of the cells hold more genes than fit."""
    density_n = rng.choice([0.1, 0.3, 0.7], n_cells)[:, None]
    x_ng = (rng.random((n_cells, N_GENES)) < density_n) * (rng.negative_binomial(1, 0.3, (n_cells, N_GENES)) + 1)
    return sp.csr_matrix(x_ng.astype(np.float32))


def run_authors(venv: Path, work: Path) -> dict:
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"no side environment at {venv}: build it as this script's docstring says", file=sys.stderr)
        raise SystemExit(2)
    (work / "authors.py").write_text(AUTHORS)
    result = subprocess.run([str(python), str(work / "authors.py"), str(work)], capture_output=True, text=True)
    if result.returncode:
        print(result.stderr[-3000:], file=sys.stderr)
        print(f"the authors' package failed in {venv} (see above)", file=sys.stderr)
        raise SystemExit(2)
    return dict(np.load(work / "authors.npz"))


def ours_mean_bins(x_ng: sp.csr_matrix, args, vocab) -> np.ndarray:
    """Per stored value, the mean bin over `N_DRAWS` seeds (no sampling: every gene is kept)."""
    wide = type(args)(**{**args.__dict__, "max_seq_len": N_GENES + 1})
    total = np.zeros(x_ng.nnz)
    for seed in range(N_DRAWS):
        cells = tokenize(x_ng, gene_symbols(N_GENES), vocab, wide, seed=seed)
        keep = np.ones(len(cells.values), dtype=bool)
        keep[cells.offsets[:-1]] = False  # the <cls> places
        total += cells.values[keep]
    return total / N_DRAWS


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--venv", type=Path, default=Path("/tmp/scgptvenv"))
    parser.add_argument("--keep", type=Path, help="folder to keep the checkpoint, cells and outputs in")
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        work = options.keep or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        folder = write_checkpoint(work / "checkpoint", gene_symbols(N_GENES), ARGS, seed=1)
        args, vocab = load_args(folder), load_vocab(folder)
        rng = np.random.default_rng(0)
        exact, ties = exact_cells(rng, 40, args.max_seq_len - 1), count_cells(rng, 30)
        np.savez(work / "cells.npz", genes=np.array(gene_symbols(N_GENES)), max_length=args.max_seq_len,
                 n_bins=args.n_bins, n_draws=N_DRAWS,
                 **{f"{name}_{part}": getattr(x, part) for name, x in (("exact", exact), ("ties", ties))
                    for part in ("data", "indices", "indptr")},
                 exact_shape=exact.shape, ties_shape=ties.shape)
        authors = run_authors(options.venv, work)
        model = load_model(folder, "cpu")
        ours_exact = embed(model, tokenize(exact, gene_symbols(N_GENES), vocab, args, seed=0),
                           precision="fp32").outputs[0]
        exact_diff = float(np.abs(ours_exact - authors["exact"]).max())
        ours_a = embed(model, tokenize(ties, gene_symbols(N_GENES), vocab, args, seed=1), precision="fp32").outputs[0]
        ours_b = embed(model, tokenize(ties, gene_symbols(N_GENES), vocab, args, seed=2), precision="fp32").outputs[0]
        cos_authors = (ours_a * authors["ties"]).sum(1)
        cos_ours = (ours_a * ours_b).sum(1)
        mean_ours = ours_mean_bins(ties, args, vocab)
        # a value without a tie has sd 0: any difference at all then shows as a huge z
        z = np.abs(mean_ours - authors["mean_bins"]) / np.maximum(_tie_sd(ties, args), 1e-9)
    print(f"authors: scgpt {authors['version']} (torch {authors['torch']}); tiny checkpoint {ARGS}, fp32, CPU")
    print(f"cells without ties ({exact.shape[0]}): largest |difference| of the embeddings {exact_diff:.2e} "
          f"(tolerance {EXACT_TOLERANCE:g})")
    print(f"count cells ({ties.shape[0]}, {int((np.diff(ties.indptr) > args.max_seq_len - 1).sum())} sampled): "
          f"mean cosine to the authors {cos_authors.mean():.4f} (min {cos_authors.min():.4f}); "
          f"between two seeds here {cos_ours.mean():.4f} (min {cos_ours.min():.4f})")
    print(f"binning of tied values, {N_DRAWS} draws each side: largest |z| of the per-gene mean bins {z.max():.2f} "
          f"(limit {Z_LIMIT:g}); largest |mean difference| {np.abs(mean_ours - authors['mean_bins']).max():.3f} bins")
    ok = (exact_diff <= EXACT_TOLERANCE and z.max() < Z_LIMIT
          and abs(cos_authors.mean() - cos_ours.mean()) < COSINE_TOLERANCE)
    print("PARITY OK" if ok else "PARITY FAILED")
    return 0 if ok else 1


def _tie_sd(x_ng: sp.csr_matrix, args) -> np.ndarray:
    """Per stored value, the standard error of its mean bin over `N_DRAWS` draws: a value equal to k
    edges draws uniformly among k bins (sd sqrt((k^2 - 1) / 12)); the sd of a difference of two means."""
    sd = np.zeros(x_ng.nnz)
    for i in range(x_ng.shape[0]):
        row = slice(x_ng.indptr[i], x_ng.indptr[i + 1])
        edges = np.quantile(x_ng.data[row], np.linspace(0, 1, args.n_bins - 1))
        k = np.digitize(x_ng.data[row], edges) - np.digitize(x_ng.data[row], edges, right=True)
        sd[row] = np.sqrt((np.maximum(k, 1).astype(float) ** 2 - 1) / 12)
    return sd * np.sqrt(2 / N_DRAWS)


if __name__ == "__main__":
    sys.exit(main())

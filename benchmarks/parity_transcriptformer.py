"""Parity of the TranscriptFormer runner with the authors' package (transcriptformer 0.6.1) on one tiny
checkpoint and one set of cells.

    python benchmarks/parity_transcriptformer.py [--venv /tmp/tfvenv] [--keep DIR]

The authors' package pins torch 2.5.1 (and anndata, numpy, scanpy versions) that cannot share this
project's environment, so it runs in a side virtual environment (python 3.11), built once with:

    python3.11 -m venv /tmp/tfvenv
    /tmp/tfvenv/bin/pip install transcriptformer==0.6.1

This script writes a tiny checkpoint in the real layout (tests/helpers/transcriptformer_files.py: the
published config.json structure, a state dict with the authors' key names, assay vocabulary, HDF5 gene
table) and a dataset whose counts sit in raw.X with versioned Ensembl ids in var['ensembl_id'] and
obs['assay'] values known, unlisted and missing. In the side environment it runs the authors'
`run_inference` with their CLI's configuration (config.json merged under inference_config.yaml),
`output_keys: [embeddings, llh]`, fp32 on the CPU, uncompiled FlexAttention; here the runner runs with
fp32 on the CPU, once with its eager attention and once with FlexAttention. It prints the largest
absolute difference of the cell embeddings and the largest relative difference of the `llh` output.

Exit status 0 when both differences are below 1e-4, 1 otherwise, 2 when the side environment is
missing or broken (the message says which).
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
from model_runners.transcriptformer.files import load_checkpoint_files  # noqa: E402
from model_runners.transcriptformer.inference import CellEncoder, load_network  # noqa: E402
from model_runners.transcriptformer.tokenizer import gene_tokens, tokenize  # noqa: E402
from tests.helpers.transcriptformer_files import SPECIAL_TOKENS, TINY, write_checkpoint  # noqa: E402

N_CELLS, N_GENES, N_VOCAB = 48, 300, 220
TOLERANCE = 1e-4
SIZES = {**TINY, "seq_len": 63, "block_len": 32}  # 63 genes + 1 assay token = 2 blocks of 32

AUTHORS = r"""
import os, sys, warnings
warnings.simplefilter("ignore")
import json, logging
logging.disable(logging.CRITICAL)
import numpy as np, anndata
from omegaconf import OmegaConf
import transcriptformer
from transcriptformer.model.inference import run_inference

work = sys.argv[1]
checkpoint = os.path.join(work, "checkpoint")
# what the authors' CLI does: its inference_config.yaml merged over the checkpoint's config.json
conf = os.path.join(os.path.dirname(transcriptformer.__file__), "cli", "conf", "inference_config.yaml")
defaults = OmegaConf.load(conf)
defaults.pop("defaults", None)
cfg = OmegaConf.merge(OmegaConf.create(json.load(open(os.path.join(checkpoint, "config.json")))), defaults)
cfg.model.checkpoint_path = checkpoint
cfg.model.inference_config.load_checkpoint = os.path.join(checkpoint, "model_weights.pt")
cfg.model.data_config.aux_vocab_path = os.path.join(checkpoint, "vocabs")
cfg.model.data_config.esm2_mappings_path = os.path.join(checkpoint, "vocabs")
cfg.model.data_config.use_raw = None
cfg.model.inference_config.output_keys = ["embeddings", "llh"]
cfg.model.inference_config.precision = "32"
cfg.model.inference_config.device = "cpu"
cfg.model.inference_config.batch_size = 8
os.chdir(work)  # the Lightning logger writes ./logs
out = run_inference(cfg, [os.path.join(work, "cells.h5ad")])
np.save(os.path.join(work, "authors_emb.npy"), np.asarray(out.obsm["embeddings"], dtype=np.float32))
np.save(os.path.join(work, "authors_llh.npy"), np.asarray(out.uns["llh"]["llh"], dtype=np.float32))
"""


def make_cells(rng, genes_in_vocab: list[str]):
    """Counts (some above the clip, cells longer and shorter than seq_len) in raw.X, log values in X."""
    import anndata as ad
    import pandas as pd

    genes = genes_in_vocab + [f"ENSG8{i:010d}" for i in range(N_GENES - len(genes_in_vocab))]
    genes = list(rng.permutation(genes))
    x = rng.negative_binomial(2, 0.2, (N_CELLS, N_GENES)).astype(np.float32)
    x *= rng.random(x.shape) < rng.uniform(0.01, 0.6, (N_CELLS, 1))
    x[:, genes.index(genes_in_vocab[0])] += 1  # every cell expresses a vocabulary gene
    counts = ad.AnnData(sp.csr_matrix(x), var=pd.DataFrame(index=genes))
    assays = np.array(["10x 3' v3", "10x 3' v2", "Smart-seq2", "sci-RNA-seq", "unknown"], dtype=object)
    obs = pd.DataFrame({"assay": assays[rng.integers(0, len(assays), N_CELLS)]},
                       index=[f"cell{i}" for i in range(N_CELLS)])
    adata = ad.AnnData(sp.csr_matrix(np.log1p(x)), obs=obs, var=pd.DataFrame(index=genes))
    adata.raw = counts
    adata.var["ensembl_id"] = [f"{g}.4" for g in genes]
    adata.raw.var["ensembl_id"] = [f"{g}.4" for g in genes]  # the authors read the raw var when raw.X is used
    return adata


def run_authors(venv: Path, work: Path) -> tuple[np.ndarray, np.ndarray]:
    python = venv / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"no side environment at {venv}; build it as this script's docstring says")
    (work / "authors.py").write_text(AUTHORS)
    result = subprocess.run([str(python), str(work / "authors.py"), str(work)], capture_output=True, text=True)
    if result.returncode != 0:
        print(result.stderr[-4000:], file=sys.stderr)
        raise SystemExit(2)
    return np.load(work / "authors_emb.npy"), np.load(work / "authors_llh.npy")


def run_ours(work: Path, adata, attention: str) -> tuple[np.ndarray, np.ndarray]:
    checkpoint = load_checkpoint_files(work / "checkpoint")
    counts = adata.raw.to_adata()
    genes = [g.split(".")[0] for g in counts.var["ensembl_id"]]
    token_g = gene_tokens(genes, checkpoint.token_ids, len(checkpoint.data.special_tokens))
    cells = tokenize(counts.X, token_g, adata.obs, checkpoint.aux_vocabs, checkpoint.sizes.seq_len, 30.0)
    encoder = CellEncoder(load_network(checkpoint), "cpu", "fp32", attention)
    out = encoder.run(cells, 30.0, batch_size=5)
    return out.emb_nd, out.nll_n


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--venv", type=Path, default=Path("/tmp/tfvenv"))
    parser.add_argument("--keep", type=Path, help="write the checkpoint, cells and outputs here")
    args = parser.parse_args(argv)
    work = args.keep or Path(tempfile.mkdtemp(prefix="tf_parity_"))
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    vocab = [f"ENSG0{i:010d}" for i in range(N_VOCAB + 20)]  # 20 vocabulary genes no cell has
    write_checkpoint(work / "checkpoint", {"homo_sapiens": vocab}, seed=5, sizes=SIZES)
    adata = make_cells(rng, vocab[:N_VOCAB])
    adata.write_h5ad(work / "cells.h5ad")
    authors_emb, authors_llh = run_authors(args.venv, work)
    print(f"{N_CELLS} cells, {N_GENES} genes ({N_VOCAB} in the vocabulary), special tokens {SPECIAL_TOKENS}, "
          f"seq_len {SIZES['seq_len']}; authors' transcriptformer 0.6.1 in {args.venv}, fp32, CPU")
    worst = 0.0
    for attention in ("eager", "flex"):
        emb, llh = run_ours(work, adata, attention)
        d_emb = float(np.abs(emb - authors_emb).max())
        d_llh = float(np.abs(llh / authors_llh - 1).max())
        worst = max(worst, d_emb, d_llh)
        print(f"{attention:>5} attention: largest |embedding difference| {d_emb:.2e} "
              f"(embedding values up to {np.abs(authors_emb).max():.2f}); largest relative llh difference {d_llh:.2e}")
    return 0 if worst < TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())

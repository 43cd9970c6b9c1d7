"""Parity of this UCE runner with the authors' package (`uce-model==0.1.4`) on one tiny checkpoint.

    python benchmarks/parity_uce.py            # builds /tmp/ucevenv on first use, then runs itself there

The side venv sees this repository's virtual environment through a `.pth` file (torch, scanpy and
pandas at the versions pinned here) and adds only the authors' wheel (without its dependencies) and
`gdown`, which the package imports at start-up. No weights are downloaded: a tiny checkpoint is saved
from the authors' own `TransformerModel` class (their hard-coded decoder widths included), with tiny
model files in the real formats for all eight species.

It prints, each against the authors' code:
1. gene tokens, chromosome codes and starts of the dataset's genes (`adata_path_to_prot_chrom_starts`
   after `load_gene_embeddings_adata`): the number of differences (expected 0);
2. embeddings of the authors' own sentences (`sample_cell_sentences`) through their model and through
   this runner's network, both padded to 1,536: the largest absolute difference, fp32 (expected ~1e-6);
   and the same against the authors' collator, which trims each batch to its longest sentence: the
   difference the float-mask quirk makes (this runner never trims, so outputs do not depend on batches);
3. the sampler: how often each gene is drawn over many seeds, the authors' per-cell loop against this
   runner's vectorised sampler (their random streams differ, so the distributions are compared), as the
   largest difference in frequency against a 5-sigma binomial bound, and the mean number of chromosome
   groups per sentence.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

VENV = Path("/tmp/ucevenv")
ROOT = Path(__file__).resolve().parent.parent
PINS = ("uce-model==0.1.4",)
EXTRA = ("gdown==5.2.0",)


def ensure_venv() -> Path:
    """The side venv (made once): the repository's packages via a .pth file, plus the authors' wheel."""
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(VENV)], check=True)
        site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip()
        ours = subprocess.run([sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip()
        Path(site, "czb_main_venv.pth").write_text(ours + "\n")
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", site, *PINS],
                       check=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target", site, *EXTRA,
                        "beautifulsoup4==4.12.3", "soupsieve==2.6", "--no-deps"], check=True)
    return python


def run_parity() -> None:
    import argparse
    import tempfile

    import anndata as ad
    import numpy as np
    import pandas as pd
    import torch
    from torch import nn

    from czb_core.models.registry import get_model
    from czb_core.types import Organism
    from model_runners.uce import files
    from model_runners.uce.encoder import load_encoder
    from model_runners.uce.sampler import CountsBlock, SentenceSpec, draw_genes, build_sentences, chunk_rng
    from tests.helpers.uce_files import SpeciesGenes, write_model_files

    from uce.data_proc.data_utils import adata_path_to_prot_chrom_starts, get_spec_chrom_csv, get_species_to_pe
    from uce.data_proc.gene_embeddings import load_gene_embeddings_adata
    from uce.eval_data import sample_cell_sentences
    from uce.model import TransformerModel

    resources = get_model("uce").variant("4l").resources
    rng = np.random.default_rng(0)
    work = Path(tempfile.mkdtemp(prefix="uce_parity_"))
    token_dim, d_model, n_heads, d_hid, n_layers, out_dim = 24, 40, 20, 48, 2, 24
    species = []
    for latin, entry in resources["species"].items():
        n = 300 if latin == "homo_sapiens" else 15
        species.append(SpeciesGenes(entry["key"], entry["protein_embeddings"], [f"GENE{i}" for i in range(n)],
                                    list(rng.choice(["1", "2", "10", "X", "MT"], n)), list(rng.integers(0, 10**6, n))))
    folder = work / "model_files"
    n_rows, n_chrom = write_model_files(folder, species, token_dim)

    torch.manual_seed(0)
    authors = TransformerModel(token_dim=token_dim, d_model=d_model, nhead=n_heads, d_hid=d_hid, nlayers=n_layers,
                               output_dim=out_dim, dropout=0.05)
    authors.pe_embedding = nn.Embedding.from_pretrained(torch.randn(n_rows + n_chrom, token_dim))
    authors.eval()
    checkpoint = work / "4layer_model.torch"
    torch.save(authors.state_dict(), checkpoint)

    # 1. gene tokens: 280 genes with files, 20 unknown symbols, some lower-cased
    symbols = [f"GENE{i}" for i in range(280)] + [f"NOPE{i}" for i in range(20)]
    symbols = [s.lower() if i % 5 == 0 else s for i, s in enumerate(symbols)]
    x = rng.poisson(1.5, (40, len(symbols))).astype(np.float32)
    x[:, 0] += 1
    adata = ad.AnnData(x, var=pd.DataFrame(index=symbols))
    os.chdir(work)  # the authors' code reads model_files/protein_embeddings/ relative to the working folder
    sub, _ = load_gene_embeddings_adata(adata, species=["human"], embedding_model="ESM2")
    spec_pe_genes = list(get_species_to_pe(folder / "protein_embeddings")["human"].keys())
    offset = int(pd.read_pickle(folder / "species_offsets.pkl")["human"])
    pe_idx, chroms, starts = adata_path_to_prot_chrom_starts(sub, "human", spec_pe_genes,
                                                             get_spec_chrom_csv(folder / "species_chrom.csv"), offset)
    ours = files.gene_table(np.array(symbols), folder, resources, Organism.HUMAN)
    kept = np.isin(symbols, list(sub.var_names))
    diffs = (int((~(ours.usable_g == kept)).sum()) + int((ours.token_g[kept] != pe_idx.numpy()).sum())
             + int((ours.chrom_g[kept] != np.asarray(chroms)).sum()) + int((ours.start_g[kept] != starts).sum()))
    print(f"1. genes: {kept.sum()} of {len(symbols)} kept by both; token/chromosome/start differences: {diffs}")

    # 2. the authors' sentences through both networks
    args = argparse.Namespace(pad_length=1536, sample_size=1024, cls_token_idx=3, CHROM_TOKEN_OFFSET=n_rows,
                              chrom_token_right_idx=2, pad_token_idx=0)
    counts = torch.tensor(np.asarray(sub.X), dtype=torch.float32)
    weights = torch.log1p(counts)
    weights = weights / weights.sum(dim=1, keepdim=True)
    np.random.seed(0)
    sentences, mask, longest, _ = sample_cell_sentences(
        counts, weights, "d", args, dataset_to_protein_embeddings={"d": pe_idx},
        dataset_to_chroms={"d": np.asarray(chroms)}, dataset_to_starts={"d": np.asarray(starts)})

    def authors_embed(width: int) -> np.ndarray:
        with torch.no_grad():
            tokens = authors.pe_embedding(sentences[:, :width].permute(1, 0).long())
            return authors.forward(nn.functional.normalize(tokens, dim=2), mask=mask[:, :width])[1].numpy()

    encoder = load_encoder(checkpoint, n_heads, "cpu")
    lengths = mask.sum(dim=1).long().numpy()
    runner = encoder.embed(sentences.numpy(), lengths, batch_size=8)
    padded, trimmed = authors_embed(1536), authors_embed(longest)
    print(f"2. embeddings (fp32, {len(lengths)} cells): max |runner - authors| padded to 1536: "
          f"{np.abs(runner - padded).max():.2e}; authors trimmed to the batch's longest ({longest}) vs padded: "
          f"{np.abs(trimmed - padded).max():.2e}")

    # 3. sampler distributions, one cell over many seeds
    cell = counts[:1]
    n_seeds = 200
    theirs = np.zeros(kept.sum())
    groups_theirs = []
    for seed in range(n_seeds):
        np.random.seed(seed)
        s, m, _, _ = sample_cell_sentences(cell, weights[:1], "d", args, {"d": torch.arange(int(kept.sum())) + 10},
                                           {"d": np.asarray(chroms)}, {"d": np.asarray(starts)})
        body = s[0, 1 : int(m.sum())].numpy()
        genes = body[(body >= 10) & (body < n_rows)] - 10  # gene tokens shifted past the special ids
        theirs += np.bincount(genes, minlength=int(kept.sum()))
        groups_theirs.append((int(m.sum()) - 1 - 1024) // 2)
    x_cell = np.asarray(sub.X[:1])
    block = CountsBlock(np.array([0, int((x_cell > 0).sum())]), np.flatnonzero(x_cell[0]),
                        x_cell[0][x_cell[0] > 0].astype(np.float32))
    spec = SentenceSpec(1024, 1536, 0, 3, 2, n_rows)
    mine = np.zeros(kept.sum())
    groups_mine = []
    for seed in range(n_seeds):
        rng_seed = chunk_rng(seed, 0)
        genes_ns = draw_genes(block, 1024, rng_seed)
        tokens_nl, lengths_n = build_sentences(genes_ns, np.arange(int(kept.sum())), ours.chrom_g[kept],
                                               ours.start_g[kept], spec, rng_seed)
        mine += np.bincount(genes_ns.ravel(), minlength=int(kept.sum()))
        groups_mine.append((int(lengths_n[0]) - 1 - 1024) // 2)
    n = n_seeds * 1024
    p = theirs / n
    bound = 5 * np.sqrt(2 * p * (1 - p) / n).max()
    print(f"3. sampler: max |frequency difference| {np.abs(theirs - mine).max() / n:.2e} (5-sigma bound {bound:.2e}); "
          f"mean chromosome groups {np.mean(groups_theirs):.2f} (authors) vs {np.mean(groups_mine):.2f} (runner)")


if __name__ == "__main__":
    if Path(sys.prefix) != VENV:
        python = ensure_venv()
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        sys.exit(subprocess.run([str(python), str(Path(__file__).resolve())], env=env, cwd=ROOT).returncode)
    run_parity()

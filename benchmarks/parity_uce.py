"""Parity of this UCE runner with the authors' package (`uce-model==0.1.4`), end to end and step by step.

    python benchmarks/parity_uce.py [--cells 200] [--organisms mouse human] [--layouts 4l 33l]
                                    [--json results.json]

It builds a side venv (/tmp/ucevenv) on first use and runs itself there. The venv sees this repository's
virtual environment through a `.pth` file (torch, scanpy, pandas at the versions pinned here) and adds only
the authors' wheel, `accelerate` (their `run_evaluation` asks an `Accelerator` to place the model) and
`gdown` (imported at start-up), without their dependencies. Nothing is downloaded at run time.

What it builds, in the published layout but tiny widths: model files for all eight species (the protein-
embedding dicts in a shuffled key order, one mouse key repeated under upper-casing, mouse and human symbols
from this repository's gene tables, chromosomes spread as in the real genomes, `all_tokens.torch` of the
real 143,574 rows so that chromosome tokens start where the authors' default `CHROM_TOKEN_OFFSET` puts
them) and, per layout (4 and 33 encoder layers), a checkpoint saved from the authors' `TransformerModel`
with a 145,469-row token table. Two datasets of real-shaped cells (negative-binomial counts over ~3,000
genes, five cell types, lognormal depth around 6,000 UMIs, so ~600-1,800 detected genes a cell), one mouse
and one human, with lower-cased symbols and genes UCE has no embedding for.

Power: a random network maps every cell to nearly the same point, and a comparison of two runs then only
sees sampling noise. So the data genes' token rows are their loadings on the dataset's top principal
components (log-normalised counts), as a trained table gives co-expressed genes similar rows, and the
first layer's query and key weights are scaled by `1 / sqrt(d_model)`: its input is LayerNorm x
sqrt(d_model), so unscaled logits spread by ~d_model / 2 (39 here) and attention is one-hot (a pad's +1
would not matter); scaled, they spread by ~0.5, as in the later layers, whose input is a LayerNorm's output.
With these, the authors' runs with two seeds agree to a median centred cosine of ~0.985, and the same
sentences padded to 1,536 and cut to the batch's longest to ~0.86 (share >= 0.9: ~0.25).

The authors' side runs their own path: `AnndataProcessor` (`preprocess_anndata`, `generate_idxs`,
`run_evaluation`; filter off, batch 25, seeded with `np.random.seed`), with one substitution: their
`run_evaluation` hard-codes d_model 1,280 and a 145,469 x 5,120 placeholder for the token table, so their
model class is given the tiny d_model and a placeholder of the checkpoint's shape. This repository's side
is `czb run` after `czb weights import` of the same files, in a separate process.

Printed per dataset and layout, with what passes:
1. genes: kept set, token (dict key order + species offset, case-insensitive), chromosome code, start of
   every dataset gene, ours against `load_gene_embeddings_adata` + `adata_path_to_prot_chrom_starts`;
   and the chromosome code of every row of the CSV (all species): differences, 0 to pass;
2. sentences: the authors' sentences (`sample_cell_sentences`, seeded) rebuilt by this runner's
   `build_sentences` from the same drawn genes and chromosome order: CLS, chromosome tokens, genes by
   start, closing tokens, lengths, padding; cells that differ, 0 to pass (the generated starts are unique
   within a chromosome: for genes with equal starts the authors' unstable sort has no defined order);
3. sampling over 20 seeds: draws per (cell, gene) against log1p(counts) normalised, as chi-square / df
   for both samplers (1 +- 5 sqrt(2 / df) to pass); distinct genes per sentence (with replacement); the
   chromosome shuffle as the share of chromosome pairs left in code order (0.5 when uniform);
4. network: the authors' first batch of 25, cut to its longest sentence, through their model and through
   this runner's network (fp32; 1e-4 to pass; also against their `run_evaluation`, which shows that the
   sentences drawn here are the ones their run drew); every cell's sentence padded to 1,536 against their
   run (what this runner did before: the check's power);
5. end to end, as the median centred cosine (each run's embedding minus its mean over cells, then the
   cosine per cell) and the share of cells >= 0.9: authors seed 0 against authors seed 1 (the reference),
   `czb run` seed 2 against each of them, averaged (two pairs for the price of one run: the share of a
   200-cell sample moves by ~0.02 from seed to seed). Passes within 0.02 of the reference median and 0.05
   of its share. Batch dependence, the same seed in batches of 1 and of the default size: authors (25) and
   `czb run` (the variant's GPU batch), median and worst cell (ours must be no larger than theirs).
The embeddings of every run are left in the work folder (`embeddings_<dataset>_<layout>.npz`).

Exit status 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

VENV = Path("/tmp/ucevenv")
ROOT = Path(__file__).resolve().parent.parent
PINS = ("uce-model==0.1.4", "accelerate==1.16.0", "gdown==5.2.0", "beautifulsoup4==4.12.3", "soupsieve==2.6")

SEEDS = {"authors": 0, "authors, other seed": 1, "czb run": 2}  # np.random.seed / --seed of each run
TINY = dict(token_dim=32, d_model=80, d_hid=160, output_dim=64)  # 20 heads (the config's) of width 4
LAYERS = {"4l": 4, "33l": 33}
TOKEN_ROWS, TABLE_ROWS = 143_574, 145_469  # the published all_tokens.torch and checkpoint table
AUTHORS_BATCH = 25
SAMPLING_SEEDS = 20
ORGANISMS = {"mouse": "mus_musculus", "human": "homo_sapiens"}
GENOME = {  # protein-coding genes per chromosome, roughly as in GRCh38 / GRCm39
    "human": {"1": 2050, "2": 1250, "3": 1080, "4": 750, "5": 880, "6": 1040, "7": 920, "8": 680, "9": 780,
              "10": 730, "11": 1300, "12": 1030, "13": 320, "14": 610, "15": 600, "16": 850, "17": 1180,
              "18": 270, "19": 1470, "20": 540, "21": 230, "22": 440, "X": 840, "Y": 45, "MT": 13},
    "mouse": {"1": 1100, "2": 1800, "3": 1050, "4": 1300, "5": 1300, "6": 1200, "7": 1900, "8": 1100, "9": 1200,
              "10": 1000, "11": 1700, "12": 600, "13": 750, "14": 850, "15": 650, "16": 600, "17": 1000,
              "18": 450, "19": 500, "X": 900, "Y": 60, "MT": 13},
}


def ensure_venv() -> Path:
    """The side venv: the repository's packages via a .pth file, plus the pinned wheels (re-done when PINS change)."""
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(VENV)], check=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    stamp = VENV / "pins.txt"
    if not stamp.exists() or stamp.read_text() != "\n".join(PINS):
        ours = subprocess.run([sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip()
        Path(site, "czb_main_venv.pth").write_text(ours + "\n")
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--upgrade", "--no-deps", "--target",
                        site, *PINS], check=True)
        stamp.write_text("\n".join(PINS))
    return python


# -- the side venv's part ------------------------------------------------------------------------------


def centred_cosines(a_nd, b_nd):
    """Per cell: the cosine of the two runs' embeddings, each minus its own mean over the cells."""
    import numpy as np

    a_nd, b_nd = a_nd - a_nd.mean(axis=0), b_nd - b_nd.mean(axis=0)
    return (a_nd * b_nd).sum(axis=1) / (np.linalg.norm(a_nd, axis=1) * np.linalg.norm(b_nd, axis=1))


def summary(cos_n) -> dict:
    import numpy as np

    return {"median": float(np.median(cos_n)), "share_ge_0.9": float(np.mean(cos_n >= 0.9)),
            "worst": float(cos_n.min())}


def pick_symbols(organism: str, rng):
    """(data symbols, symbols with an embedding): ~3,000 protein-coding genes of the data have one, 150
    non-coding genes of the data do not, 500 coding genes have one but are not in the data."""
    import numpy as np

    from czb_core.schema.gene_references import gene_table
    from czb_core.types import Organism

    table = gene_table(Organism.parse(ORGANISMS[organism])).dropna(subset=["gene_name"])
    table = table.drop_duplicates("gene_name", keep=False)
    coding = table.loc[table["biotype"] == "protein_coding", "gene_name"].to_numpy()
    other = table.loc[table["biotype"] == "lncRNA", "gene_name"].to_numpy()
    coding = rng.permutation(coding)[:3500]
    data = np.concatenate([coding[:3000], rng.choice(other, 150, replace=False)])
    return [str(s) for s in rng.permutation(data)], [str(s) for s in coding]


def species_genes(organism: str, symbols: list, rng):
    """The species' files: dict keys in a shuffled order; chromosomes as in its genome; starts unique per
    chromosome. The mouse dict repeats one key upper-cased (the authors' and our lookups keep its first place)."""
    import numpy as np

    from tests.helpers.uce_files import SpeciesGenes

    genome = GENOME[organism]
    keys = [str(s) for s in rng.permutation(symbols)]
    if organism == "mouse":
        keys.append(keys[7].upper())
    names, sizes = list(genome), np.array(list(genome.values()), dtype=float)
    chromosomes = [str(c) for c in rng.choice(names, len(keys), p=sizes / sizes.sum())]
    starts = [int(s) for s in rng.choice(250_000_000, len(keys), replace=False)]
    key = {"human": "human", "mouse": "mouse"}[organism]
    file = {"human": "Homo_sapiens.GRCh38.gene_symbol_to_embedding_ESM2.pt",
            "mouse": "Mus_musculus.GRCm39.gene_symbol_to_embedding_ESM2.pt"}[organism]
    return SpeciesGenes(key, file, keys, chromosomes, starts)


def generate_cells(symbols: list, n_cells: int, rng, lower_every: int):
    """Real-shaped counts: per-gene means lognormal (heavy-tailed), five cell types shifting 20% of the genes,
    lognormal depth around 6,000 UMIs, gamma-Poisson (NB, dispersion 0.5) noise; every `lower_every`-th
    symbol lower-cased (matching is case-insensitive)."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    n_genes = len(symbols)
    log_mean_g = rng.normal(0, 1.8, n_genes)
    shift_tg = rng.normal(0, 2.0, (5, n_genes)) * (rng.random((5, n_genes)) < 0.2)
    type_n = rng.integers(0, 5, n_cells)
    share_ng = np.exp(log_mean_g[None, :] + shift_tg[type_n])
    share_ng /= share_ng.sum(axis=1, keepdims=True)
    depth_n = rng.lognormal(np.log(6000), 0.5, n_cells)
    mu_ng = share_ng * depth_n[:, None]
    x_ng = rng.poisson(rng.gamma(2.0, mu_ng / 2.0)).astype(np.float32)
    names = [s.lower() if i % lower_every == 0 else s for i, s in enumerate(symbols)]
    obs = pd.DataFrame({"cell_type": [f"type{t}" for t in type_n]}, index=[f"c{i}" for i in range(n_cells)])
    return ad.AnnData(sp.csr_matrix(x_ng), obs=obs, var=pd.DataFrame(index=names))


def structured_rows(adata, token_g, token_dim: int, table_td):
    """Each gene's loadings on the top `token_dim` principal components of the log-normalised cells, written
    into the table at its token."""
    import numpy as np
    import torch

    x_ng = adata.X.toarray()
    x_ng = np.log1p(x_ng / x_ng.sum(axis=1, keepdims=True) * 1e4)
    x_ng -= x_ng.mean(axis=0)
    _, s_k, vt_kg = np.linalg.svd(x_ng, full_matrices=False)
    k = min(token_dim, len(s_k))  # as many components as cells allow; the other columns stay 0
    loadings_gk = np.zeros((x_ng.shape[1], token_dim))
    loadings_gk[:, :k] = (vt_kg[:k] * s_k[:k, None]).T
    used = token_g >= 0
    table_td[torch.from_numpy(token_g[used])] = torch.from_numpy(loadings_gk[used]).float()


def write_checkpoint(path: Path, n_layers: int, table_td, seed: int):
    """The authors' TransformerModel, tiny widths, `table_td` as its token table, layer 0's Q and K scaled
    (the module docstring says why)."""
    import math

    import torch
    from torch import nn
    from uce.model import TransformerModel

    torch.manual_seed(seed)
    model = TransformerModel(token_dim=TINY["token_dim"], d_model=TINY["d_model"], nhead=20, d_hid=TINY["d_hid"],
                             nlayers=n_layers, output_dim=TINY["output_dim"], dropout=0.05)
    model.pe_embedding = nn.Embedding.from_pretrained(table_td)
    d = TINY["d_model"]
    with torch.no_grad():
        model.transformer_encoder.layers[0].self_attn.in_proj_weight[: 2 * d] /= math.sqrt(d)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)


def tiny_model_class():
    """The authors' model class with the tiny d_model in place of `run_eval`'s hard-coded 1,280, and a token
    table placeholder shaped like the checkpoint's (theirs is 145,469 x 5,120); nothing else changes."""
    import torch
    from torch import nn
    from uce.model import TransformerModel

    class TinyWidths(TransformerModel):
        def __init__(self, token_dim, d_model, nhead, d_hid, nlayers, output_dim, dropout=0.05):
            super().__init__(token_dim, TINY["d_model"], nhead, d_hid, nlayers, output_dim, dropout)

        def load_state_dict(self, state, strict=True, assign=False):
            self.pe_embedding = nn.Embedding.from_pretrained(torch.zeros_like(state["pe_embedding.weight"]))
            return super().load_state_dict(state, strict=strict, assign=assign)

    return TinyWidths


class AuthorsRun:
    """The authors' `AnndataProcessor` on one dataset and checkpoint, in its own folder."""

    def __init__(self, work: Path, adata_path: Path, species: str, checkpoint: Path, n_layers: int):
        from accelerate import Accelerator
        from uce.eval_single_anndata import parser
        from uce.evaluate import AnndataProcessor

        folder = work / f"authors_{adata_path.stem}_{n_layers}"
        folder.mkdir()
        self.args = parser.parse_args([])
        self.args.adata_path, self.args.dir, self.args.species = str(adata_path), f"{folder}/", species
        self.args.filter = False  # `--filter False` would parse as True (type=bool)
        self.args.model_loc, self.args.nlayers = str(checkpoint), n_layers
        self.args.token_dim, self.args.d_hid = TINY["token_dim"], TINY["d_hid"]
        self.args.output_dim = TINY["output_dim"]
        self.processor = AnndataProcessor(self.args, Accelerator(cpu=True))
        self.processor.preprocess_anndata()
        self.processor.generate_idxs()
        self.out_path = Path(f"{folder}/{self.processor.name}_uce_adata.h5ad")

    def embed(self, seed: int, batch_size: int):
        import anndata as ad
        import numpy as np

        np.random.seed(seed)
        self.args.batch_size = batch_size
        self.processor.run_evaluation()
        return np.asarray(ad.read_h5ad(self.out_path).obsm["X_uce"])

    def idxs(self):
        """(pe_idx, chroms, starts) as `generate_idxs` saved them."""
        import pickle

        import torch

        name = self.processor.name
        with open(self.processor.chroms_path, "rb") as f:
            chroms = pickle.load(f)[name]
        with open(self.processor.starts_path, "rb") as f:
            starts = pickle.load(f)[name]
        return torch.load(self.processor.pe_idx_path)[name], chroms, starts


def czb(*argv: str, env: dict) -> None:
    """This repository's command line, in its own process and environment."""
    python = os.environ["CZB_PARITY_PYTHON"]
    done = subprocess.run([python, "-m", "czb_core", *argv], env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"czb {' '.join(argv)} failed ({done.returncode}): {done.stderr[-2000:]}")


def czb_embed(adata_path: Path, variant: str, organism: str, seed: int, batch_size: int, env: dict):
    import anndata as ad
    import numpy as np

    out = adata_path.with_name(f"{adata_path.stem}_{variant}_{seed}_{batch_size}.h5ad")
    czb("run", str(adata_path), "--model", "uce", "--variant", variant, "--organism", ORGANISMS[organism],
        "--out", str(out), "--device", "cpu", "--seed", str(seed), "--batch-size", str(batch_size), env=env)
    return np.asarray(ad.read_h5ad(out).obsm["X_uce"])


def check_genes(adata, authors: AuthorsRun, model_files: Path, organism: str) -> dict:
    """Step 1: the dataset's genes and the whole CSV's chromosome codes, ours against the authors'."""
    import numpy as np
    from uce.data_proc.data_utils import get_spec_chrom_csv

    from czb_core.models.registry import get_model
    from czb_core.types import Organism
    from model_runners.uce import files

    resources = get_model("uce").variant("4l").resources
    ours = files.gene_table(np.asarray(adata.var_names), model_files, resources, Organism.parse(ORGANISMS[organism]))
    kept_g = np.isin(np.asarray(adata.var_names), np.asarray(authors.processor.adata.var_names))
    pe_idx, chroms, starts = authors.idxs()
    gene_diffs = (int((ours.usable_g != kept_g).sum()) + int((ours.token_g[kept_g] != pe_idx.numpy()).sum())
                  + int((ours.chrom_g[kept_g] != np.asarray(chroms)).sum())
                  + int((ours.start_g[kept_g] != np.asarray(starts)).sum()))
    csv_ours, _ = files.chromosome_table(model_files / "species_chrom.csv")
    csv_theirs = get_spec_chrom_csv(str(model_files / "species_chrom.csv"))
    csv_diffs = int((csv_ours["chrom"].to_numpy() != csv_theirs["spec_chrom"].cat.codes.to_numpy()).sum())
    return {"genes kept": int(kept_g.sum()), "genes": len(kept_g), "gene differences": gene_diffs,
            "csv rows": len(csv_ours), "csv code differences": csv_diffs}


def authors_sentences(counts_ng, pe_idx, chroms, starts, seed: int, token_offset: int):
    """The authors' `sample_cell_sentences` over every cell, as their dataset calls it: one cell at a time."""
    import argparse

    import numpy as np
    import torch
    from uce.eval_data import sample_cell_sentences

    args = argparse.Namespace(pad_length=1536, sample_size=1024, cls_token_idx=3, CHROM_TOKEN_OFFSET=token_offset,
                              chrom_token_right_idx=2, pad_token_idx=0)
    np.random.seed(seed)
    tokens, lengths = [], []
    for counts_g in counts_ng:
        counts = torch.tensor(counts_g).unsqueeze(0)
        weights = torch.log1p(counts)
        weights = weights / torch.sum(weights)
        sentence, mask, _, _ = sample_cell_sentences(counts, weights, "d", args, {"d": pe_idx}, {"d": chroms},
                                                     {"d": starts})
        tokens.append(sentence[0].numpy())
        lengths.append(int(mask.sum()))
    return np.stack(tokens), np.array(lengths)


class FixedOrder:
    """Stands in for the generator `build_sentences` shuffles chromosomes with: keys that sort each cell's
    chromosomes into a given order (those a cell lacks last)."""

    def __init__(self, keys_nc):
        self.keys_nc = keys_nc

    def random(self, shape):
        assert shape == self.keys_nc.shape
        return self.keys_nc


def check_sentences(counts_ng, pe_idx, chroms, starts, token_offset: int) -> dict:
    """Steps 2 and 3: the authors' sentences rebuilt by ours; both samplers' statistics over seeds."""
    import numpy as np

    from model_runners.uce.sampler import CountsBlock, SentenceSpec, build_sentences, chunk_rng, draw_genes

    token_g, chrom_g, start_g = pe_idx.numpy(), np.asarray(chroms, dtype=np.int64), np.asarray(starts)
    spec = SentenceSpec(1024, 1536, 0, 3, 2, token_offset)
    gene_of_token = {int(t): g for g, t in enumerate(token_g)}
    codes = np.unique(chrom_g)
    n_cells = len(counts_ng)

    def parse(tokens_nl, lengths_n):
        """(genes_ns in sentence order, chromosome order per cell) of sentences."""
        genes_ns, orders = [], []
        for tokens_l, length in zip(tokens_nl, lengths_n):
            body = tokens_l[1:length]
            is_chrom = body >= token_offset
            orders.append(body[is_chrom] - token_offset)
            genes_ns.append([gene_of_token[int(t)] for t in body[~is_chrom & (body != spec.chrom_right_token)]])
        return np.array(genes_ns), orders

    theirs_nl, theirs_n = authors_sentences(counts_ng, pe_idx, chroms, starts, SEEDS["authors"], token_offset)
    genes_ns, orders = parse(theirs_nl, theirs_n)
    keys_nc = np.full((n_cells, len(codes)), 2.0)
    for i, order in enumerate(orders):
        keys_nc[i, np.searchsorted(codes, order)] = np.arange(len(order)) / len(codes)
    ours_nl, ours_n = build_sentences(genes_ns, token_g, chrom_g, start_g, spec, FixedOrder(keys_nc))
    differing = int((~np.all(ours_nl == theirs_nl, axis=1) | (ours_n != theirs_n)).sum())

    x_ng = np.asarray(counts_ng, dtype=np.float64)
    p_ng = np.log1p(x_ng) / np.log1p(x_ng).sum(axis=1, keepdims=True)
    nz = np.flatnonzero(x_ng.ravel() > 0)
    block = CountsBlock(np.r_[0, np.cumsum((x_ng > 0).sum(axis=1))], np.nonzero(x_ng)[1], x_ng.ravel()[nz])
    stats = {}
    for who in ("authors", "czb"):
        tally_ng = np.zeros_like(x_ng)
        distinct, in_order = [], []
        for seed in range(SAMPLING_SEEDS):
            if who == "authors":
                tokens_nl, lengths_n = authors_sentences(counts_ng, pe_idx, chroms, starts, 100 + seed, token_offset)
                drawn_ns, orders = parse(tokens_nl, lengths_n)
            else:
                rng = chunk_rng(100 + seed, 0)
                drawn_ns = draw_genes(block, spec.sample_size, rng)
                tokens_nl, lengths_n = build_sentences(drawn_ns, token_g, chrom_g, start_g, spec, rng)
                orders = parse(tokens_nl, lengths_n)[1]
            np.add.at(tally_ng, (np.repeat(np.arange(n_cells), drawn_ns.shape[1]), drawn_ns.ravel()), 1)
            distinct += [len(np.unique(row)) for row in drawn_ns]
            in_order += [float(np.mean(np.subtract.outer(o, o)[np.triu_indices(len(o), 1)] < 0)) for o in orders]
        expected_ng = p_ng * SAMPLING_SEEDS * spec.sample_size
        cells = expected_ng >= 5
        df = int(cells.sum())
        chi2 = float(((tally_ng - expected_ng)[cells] ** 2 / expected_ng[cells]).sum())
        stats[who] = {"chi2/df": chi2 / df, "mean distinct genes": float(np.mean(distinct)),
                      "chromosome pairs in code order": float(np.mean(in_order))}
    expected_distinct = float(np.mean((1 - (1 - p_ng) ** spec.sample_size).sum(axis=1)))
    return {"sentences differing": differing, "cells": n_cells, "sampling": stats, "df": df,
            "expected distinct genes": expected_distinct}


def check_network(counts_ng, pe_idx, chroms, starts, checkpoint: Path, token_offset: int, theirs_nd) -> dict:
    """Step 4. `theirs_nd`: the authors' `run_evaluation` with seed 0 (batches of 25), whose sentences
    `authors_sentences` with seed 0 draws again (the same calls on the same stream). Their first batch,
    recomputed here, through their model and ours at its width; every cell padded to 1,536 instead."""
    import numpy as np
    import torch
    from torch import nn

    from model_runners.uce.encoder import load_encoder

    tokens_nl, lengths_n = authors_sentences(counts_ng, pe_idx, chroms, starts, SEEDS["authors"], token_offset)
    state = torch.load(checkpoint, weights_only=True)
    n_layers = len({k.split(".")[2] for k in state if k.startswith("transformer_encoder.layers.")})
    authors = tiny_model_class()(TINY["token_dim"], 1280, 20, TINY["d_hid"], n_layers, TINY["output_dim"])
    authors.load_state_dict(state)
    authors.eval()

    def theirs(rows: slice, width: int):
        used_bl = torch.from_numpy((np.arange(width)[None, :] < lengths_n[rows, None]).astype(np.float32))
        with torch.no_grad():
            tokens = authors.pe_embedding(torch.from_numpy(tokens_nl[rows, :width]).permute(1, 0))
            return authors(nn.functional.normalize(tokens, dim=2), mask=used_bl)[1].numpy()

    first = slice(0, AUTHORS_BATCH)
    width = int(lengths_n[first].max())
    network = load_encoder(checkpoint, 20, "cpu").network
    used_bl = torch.from_numpy((np.arange(width)[None, :] < lengths_n[first, None]).astype(np.float32))
    with torch.inference_mode():
        ours = network(torch.from_numpy(tokens_nl[first, :width]), used_bl).numpy()
    trimmed = theirs(first, width)
    padded_nd = np.concatenate([theirs(slice(i, i + AUTHORS_BATCH), 1536)
                                for i in range(0, len(lengths_n), AUTHORS_BATCH)])
    return {"max |authors here - run_evaluation|": float(np.abs(trimmed - theirs_nd[first]).max()),
            "max |ours - authors|": float(np.abs(ours - trimmed).max()),
            "padded to 1536 vs trimmed": summary(centred_cosines(padded_nd, theirs_nd))}


def run_parity(argv: list[str]) -> int:
    import argparse
    import shutil
    import tempfile

    import numpy as np
    import torch
    import uce.evaluate

    from czb_core.models.registry import get_model
    from czb_core.types import Organism
    from model_runners.uce import files
    from tests.helpers.uce_files import SpeciesGenes, write_model_files

    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", type=int, default=200, help="cells per dataset")
    parser.add_argument("--organisms", nargs="+", default=list(ORGANISMS), choices=list(ORGANISMS))
    parser.add_argument("--layouts", nargs="+", default=list(LAYERS), choices=list(LAYERS))
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)

    uce.evaluate.TransformerModel = tiny_model_class()
    config = get_model("uce")
    rng = np.random.default_rng(0)
    work = Path(tempfile.mkdtemp(prefix="uce_parity_"))
    os.chdir(work)  # the authors' code reads model_files/protein_embeddings/ relative to the working folder
    print(f"work folder {work}; seeds {SEEDS}; tiny widths {TINY}", flush=True)

    symbols = {organism: pick_symbols(organism, rng) for organism in ORGANISMS}
    species = []
    for latin, entry in config.variant("4l").resources["species"].items():
        organism = {"homo_sapiens": "human", "mus_musculus": "mouse"}.get(latin)
        if organism:
            species.append(species_genes(organism, symbols[organism][1], rng))
        else:  # a few genes, on chromosomes whose names sort between the human and mouse ones
            species.append(SpeciesGenes(entry["key"], entry["protein_embeddings"], [f"G{i}" for i in range(15)],
                                        list(rng.choice(["1", "2", "3", "X"], 15)),
                                        list(rng.choice(10**6, 15, replace=False))))
    model_files = work / "model_files"
    n_rows, n_chrom = write_model_files(model_files, species, TINY["token_dim"], token_rows=TOKEN_ROWS)
    assert n_rows == TOKEN_ROWS and n_rows + n_chrom <= TABLE_ROWS

    datasets = {}
    for organism in args.organisms:
        adata = generate_cells(symbols[organism][0], args.cells, rng, lower_every=9 if organism == "human" else 11)
        datasets[organism] = adata
        detected_n = np.asarray((adata.X > 0).sum(axis=1)).ravel()
        print(f"{organism}: {args.cells} cells x {adata.n_vars} genes, detected genes per cell "
              f"{int(np.median(detected_n))} (median; {detected_n.min()}-{detected_n.max()}), UMIs per cell "
              f"{int(np.median(np.asarray(adata.X.sum(axis=1))))} (median)", flush=True)

    table_td = torch.randn(TABLE_ROWS, TINY["token_dim"], generator=torch.Generator().manual_seed(1))
    for organism, adata in datasets.items():
        genes = files.gene_table(np.asarray(adata.var_names), model_files, config.variant("4l").resources,
                                 Organism.parse(ORGANISMS[organism]))
        structured_rows(adata, genes.token_g, TINY["token_dim"], table_td)

    env = dict(os.environ, CZB_HOME=str(work / "czb_home"), PYTHONPATH=str(ROOT))
    results = {"seeds": SEEDS, "tiny": TINY, "runs": {}}
    ok = True
    for layout in args.layouts:
        resources = config.variant(layout).resources
        weights = work / f"weights_{layout}"
        checkpoint = weights / "model" / resources["model_file"]
        write_checkpoint(checkpoint, LAYERS[layout], table_td, seed=LAYERS[layout])
        shutil.copytree(model_files, weights / "model_files")
        czb("weights", "import", "uce", layout, str(weights), env=env)
        gpu_batch = int(resources["gpu_batch_size"])
        for organism, adata in datasets.items():
            adata_path = work / f"{organism}_{layout}.h5ad"
            adata.write_h5ad(adata_path)
            authors = AuthorsRun(work, adata_path, organism, checkpoint, LAYERS[layout])
            pe_idx, chroms, starts = authors.idxs()
            counts_ng = np.asarray(authors.processor.adata.X.toarray(), dtype=np.int64)
            row = {"cells": args.cells, **check_genes(adata, authors, model_files, organism)}
            row.update(check_sentences(counts_ng, pe_idx, chroms, starts, n_rows))
            theirs = authors.embed(SEEDS["authors"], AUTHORS_BATCH)
            theirs_other = authors.embed(SEEDS["authors, other seed"], AUTHORS_BATCH)
            theirs_one = authors.embed(SEEDS["authors"], 1)
            print(f"[{organism} {layout}] authors' runs done", flush=True)
            row.update(check_network(counts_ng, pe_idx, chroms, starts, checkpoint, n_rows, theirs))
            ours = czb_embed(adata_path, layout, organism, SEEDS["czb run"], gpu_batch, env)
            ours_one = czb_embed(adata_path, layout, organism, SEEDS["czb run"], 1, env)
            np.savez(work / f"embeddings_{organism}_{layout}.npz", authors=theirs, authors_other_seed=theirs_other,
                     authors_batch_1=theirs_one, czb=ours, czb_batch_1=ours_one)
            row["authors seed to seed"] = summary(centred_cosines(theirs_other, theirs))
            pairs = [summary(centred_cosines(ours, theirs)), summary(centred_cosines(ours, theirs_other))]
            row["czb run vs authors (each seed)"] = pairs
            row["czb run vs authors"] = {k: float(np.mean([pair[k] for pair in pairs])) for k in pairs[0]}
            row["authors batch 1 vs 25"] = summary(centred_cosines(theirs_one, theirs))
            row[f"czb run batch 1 vs {gpu_batch}"] = summary(centred_cosines(ours_one, ours))
            passed = {
                "genes": row["gene differences"] == 0 and row["csv code differences"] == 0,
                "sentences": row["sentences differing"] == 0,
                "sampling": all(abs(s["chi2/df"] - 1) < 5 * np.sqrt(2 / row["df"]) for s in row["sampling"].values()),
                "network": row["max |ours - authors|"] < 1e-4 and row["max |authors here - run_evaluation|"] < 1e-4,
                "end to end": (abs(row["czb run vs authors"]["median"] - row["authors seed to seed"]["median"]) <= 0.02
                               and abs(row["czb run vs authors"]["share_ge_0.9"]
                                       - row["authors seed to seed"]["share_ge_0.9"]) <= 0.05),
                "batch dependence": (row[f"czb run batch 1 vs {gpu_batch}"]["median"]
                                     >= row["authors batch 1 vs 25"]["median"]
                                     and row[f"czb run batch 1 vs {gpu_batch}"]["worst"]
                                     >= row["authors batch 1 vs 25"]["worst"]),
            }
            row["passed"] = passed
            ok &= all(passed.values())
            results["runs"][f"{organism} {layout}"] = row
            print(f"[{organism} {layout}] " + json.dumps(row, indent=1), flush=True)
            if args.json:
                args.json.write_text(json.dumps(results, indent=1))

    print("\n| dataset | layout | cells | ours vs authors: median / share >= 0.9 | authors seed to seed | "
          "batch 1 vs default: ours (median / worst) | authors (median / worst) | steps |")
    print("|---|---|---|---|---|---|---|---|")
    for name, row in results["runs"].items():
        organism, layout = name.split()
        ours_batch = next(v for k, v in row.items() if k.startswith("czb run batch 1"))
        print(f"| {organism} | {layout} | {row['cells']} | {row['czb run vs authors']['median']:.4f} / "
              f"{row['czb run vs authors']['share_ge_0.9']:.2f} | {row['authors seed to seed']['median']:.4f} / "
              f"{row['authors seed to seed']['share_ge_0.9']:.2f} | {ours_batch['median']:.6f} / "
              f"{ours_batch['worst']:.6f} | {row['authors batch 1 vs 25']['median']:.6f} / "
              f"{row['authors batch 1 vs 25']['worst']:.6f} | "
              f"{'all pass' if all(row['passed'].values()) else 'FAIL: ' + str(row['passed'])} |")
    return 0 if ok else 1


if __name__ == "__main__":
    if Path(sys.prefix) != VENV:
        python = ensure_venv()
        env = dict(os.environ, PYTHONPATH=str(ROOT), CZB_PARITY_PYTHON=sys.executable)
        sys.exit(subprocess.run([str(python), str(Path(__file__).resolve()), *sys.argv[1:]], env=env,
                                cwd=ROOT).returncode)
    sys.exit(run_parity(sys.argv[1:]))

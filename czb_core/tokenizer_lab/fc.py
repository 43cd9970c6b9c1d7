"""Fc: how one cell becomes a sentence of gene tokens (order, sequence tailoring, reduction).

A cell arrives as its expressed genes (`genes_k`, indices into the dataset's genes) with their
log-normalised values (`values_k`). An order decides which genes come first; a tailor decides which
genes are kept (truncation to the maximum length, weighted resampling, UCE's chromosome grouping);
the reduce (applied in the model) decides whether each position carries its gene embedding alone or
gene + expression embedding. Randomness (random order, resampling, chromosome shuffling) comes from
the `rng` the caller passes, so a seed fixes every sentence.

Chromosome tokens are carried in a separate `special` channel: 0 = a gene position, 1 = the token
closing a chromosome group, 2 + c = the token opening chromosome c.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import pandas as pd

ORDERS = ("expression", "random", "chromosome")
TAILORS = ("truncate", "resample", "uce")
REDUCES = ("sum", "identity")
CLOSE_CHROM = 1
FIRST_CHROM = 2


@dataclass(frozen=True)
class FcSpec:
    """One cell-sentence constructor. `median_normalise`: rank by value minus the gene's median over
    the training cells (Geneformer's rank-value idea) instead of by raw value. `sample_size`: genes drawn
    by the resampling tailors."""

    order: str = "expression"
    tailor: str = "truncate"
    reduce: str = "sum"
    max_length: int = 2048
    median_normalise: bool = False
    sample_size: int = 924

    def __post_init__(self):
        for name, value, allowed in (("order", self.order, ORDERS), ("tailor", self.tailor, TAILORS),
                                     ("reduce", self.reduce, REDUCES)):
            if value not in allowed:
                raise ValueError(f"Fc {name} {value!r} is not one of {', '.join(allowed)}")
        if self.max_length < 1 or self.sample_size < 1:
            raise ValueError(f"Fc max_length and sample_size must be positive, got {self.max_length}, "
                             f"{self.sample_size}")

    @property
    def needs_chromosomes(self) -> bool:
        return self.order == "chromosome" or self.tailor == "uce"


@dataclass(frozen=True)
class ChromosomeMap:
    """Per dataset gene: chromosome code (-1 when unknown) and genomic start; `names` lists the codes."""

    chrom_g: np.ndarray  # int64
    start_g: np.ndarray  # int64
    names: tuple[str, ...]

    @property
    def known_g(self) -> np.ndarray:
        return self.chrom_g >= 0


def order_by_expression(values_k: np.ndarray, medians_k: Optional[np.ndarray] = None) -> np.ndarray:
    """Positions of the genes from highest to lowest value (minus their median when given); ties keep
    the input order, so the result does not depend on the sort algorithm."""
    score_k = values_k - medians_k if medians_k is not None else values_k
    return np.argsort(-score_k, kind="stable")


def order_randomly(n: int, rng: np.random.Generator) -> np.ndarray:
    """A uniform random permutation: the scGPT / scBERT view of a cell as a set."""
    return rng.permutation(n)


def order_by_chromosome(genes_k: np.ndarray, chroms: ChromosomeMap, rng: np.random.Generator) -> np.ndarray:
    """Chromosomes in a random order, genes by genomic start within each (UCE's layout, without the
    chromosome tokens)."""
    chrom_k = chroms.chrom_g[genes_k]
    present = np.unique(chrom_k)
    rank_c = np.empty(chroms.chrom_g.max() + 1 if len(chroms.chrom_g) else 1, dtype=np.int64)
    rank_c[present] = rng.permutation(len(present))
    return np.lexsort((genes_k, chroms.start_g[genes_k], rank_c[chrom_k]))


def resample_weighted(values_k: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` positions drawn with replacement, with probability proportional to log1p(value)."""
    weight_k = np.log1p(np.maximum(values_k, 0.0))
    total = weight_k.sum()
    if total <= 0:
        return np.zeros(0, dtype=np.int64)
    return rng.choice(len(values_k), size=size, replace=True, p=weight_k / total)


def group_by_chromosome(genes_s: np.ndarray, chroms: ChromosomeMap,
                        rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """UCE grouping of sampled genes: for each chromosome (shuffled), an opening token, its genes by
    start, a closing token. Returns (position into `genes_s` or -1 at a chromosome token, special code)."""
    order = order_by_chromosome(genes_s, chroms, rng)
    chrom_s = chroms.chrom_g[genes_s[order]]
    positions, specials = [], []
    for start, stop in _runs(chrom_s):
        positions += [-1, *order[start:stop].tolist(), -1]
        specials += [FIRST_CHROM + int(chrom_s[start]), *([0] * (stop - start)), CLOSE_CHROM]
    return np.asarray(positions, dtype=np.int64), np.asarray(specials, dtype=np.int64)


def _runs(codes: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each run of equal consecutive codes."""
    if len(codes) == 0:
        return []
    edges = np.flatnonzero(np.diff(codes)) + 1
    starts = np.concatenate([[0], edges])
    stops = np.concatenate([edges, [len(codes)]])
    return list(zip(starts.tolist(), stops.tolist()))


@dataclass(frozen=True)
class Sentence:
    """One cell's tokens: gene index (-1 at a chromosome token), value fed to Fe, special code."""

    genes_l: np.ndarray
    values_l: np.ndarray
    special_l: np.ndarray


def build_sentence(spec: FcSpec, genes_k: np.ndarray, values_k: np.ndarray, fe_values_k: np.ndarray,
                   rng: np.random.Generator, medians_g: Optional[np.ndarray] = None,
                   chroms: Optional[ChromosomeMap] = None) -> Sentence:
    """The sentence of one cell: `values_k` drive ordering and resampling, `fe_values_k` (the values
    after Fe's discretisation) are what each position carries."""
    if spec.needs_chromosomes and chroms is None:
        raise ValueError("this Fc needs gene coordinates (chromosome order or UCE grouping)")
    if spec.tailor in ("resample", "uce"):
        pick = resample_weighted(values_k, spec.sample_size, rng)
        genes_k, values_k, fe_values_k = genes_k[pick], values_k[pick], fe_values_k[pick]
    if spec.tailor == "uce":
        positions, special_l = group_by_chromosome(genes_k, chroms, rng)
        genes_l = np.where(positions >= 0, genes_k[positions], -1)
        fe_l = np.where(positions >= 0, fe_values_k[positions], 0.0)
    else:
        if spec.order == "expression":
            medians_k = medians_g[genes_k] if spec.median_normalise and medians_g is not None else None
            order = order_by_expression(values_k, medians_k)
        elif spec.order == "random":
            order = order_randomly(len(genes_k), rng)
        else:
            order = order_by_chromosome(genes_k, chroms, rng)
        genes_l, fe_l = genes_k[order], fe_values_k[order]
        special_l = np.zeros(len(genes_l), dtype=np.int64)
    keep = slice(0, spec.max_length)
    return Sentence(genes_l[keep].astype(np.int64), fe_l[keep].astype(np.float32), special_l[keep])


def pad_sentences(sentences: list[Sentence], pad_gene: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(genes_bl with `pad_gene` at chromosome tokens and padding, values_bl, special_bl) padded to the
    longest sentence; a padded position is one whose gene is `pad_gene` and special code 0."""
    width = max(1, max(len(s.genes_l) for s in sentences))
    genes_bl = np.full((len(sentences), width), pad_gene, dtype=np.int64)
    values_bl = np.zeros((len(sentences), width), dtype=np.float32)
    special_bl = np.zeros((len(sentences), width), dtype=np.int64)
    for i, s in enumerate(sentences):
        n = len(s.genes_l)
        genes_bl[i, :n] = np.where(s.genes_l >= 0, s.genes_l, pad_gene)
        values_bl[i, :n] = s.values_l
        special_bl[i, :n] = s.special_l
    return genes_bl, values_bl, special_bl


def chromosome_map(gene_ids: np.ndarray, symbols: np.ndarray, organism) -> ChromosomeMap:
    """Chromosome and start of each dataset gene from the bundled coordinates (human, mouse, zebrafish),
    matched by unversioned Ensembl id first, then by upper-case symbol."""
    from czb_core.errors import InputError
    from czb_core.schema.gene_references import gene_coordinates, strip_version

    try:
        coords = gene_coordinates(organism)
    except InputError as exc:
        raise InputError(f"chromosome order and UCE grouping need gene coordinates: {exc}") from None
    coords = coords[coords["chrom"] != ""]
    names = tuple(sorted(coords["chrom"].unique()))
    code = {c: i for i, c in enumerate(names)}
    by_id = coords.drop_duplicates("gene_id").set_index("gene_id")
    by_symbol = coords.assign(key=coords["gene_name"].str.upper()).drop_duplicates("key").set_index("key")
    ids = pd.Series(strip_version(np.asarray(gene_ids, dtype=str)))
    keys = pd.Series(np.asarray(symbols, dtype=str)).str.upper()
    chrom = ids.map(by_id["chrom"]).fillna(keys.map(by_symbol["chrom"]))
    start = ids.map(by_id["start"]).fillna(keys.map(by_symbol["start"]))
    chrom_g = chrom.map(code).fillna(-1).to_numpy(dtype=np.int64)
    start_g = start.fillna(0).to_numpy(dtype=np.int64)
    return ChromosomeMap(chrom_g, start_g, names)

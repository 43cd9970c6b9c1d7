"""Turning rows of the log-normalised matrix into model-ready batches under one tokenizer.

A tokenizer is an (Fg, Fe, Fc) triple. `SentenceMaker` holds what the triple needs from the dataset
(the genes Fg covers, the training-cell gene medians for median-normalised ranking, the chromosome
map) and builds each batch on the fly, so random orders and resampling change from epoch to epoch as
in training a real tokenizer, while a fixed generator makes evaluation repeatable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import scipy.sparse as sp

from czb_core.tokenizer_lab.fc import ChromosomeMap, FcSpec, build_sentence, pad_sentences
from czb_core.tokenizer_lab.fe import FeSpec, discretise
from czb_core.tokenizer_lab.fg import FgSpec


@dataclass(frozen=True)
class TokenizerSpec:
    """A named (Fg, Fe, Fc) combination."""

    name: str
    fg: FgSpec
    fe: FeSpec
    fc: FcSpec

    def describe(self) -> str:
        fg = self.fg.kind + (f" ({self.fg.path})" if self.fg.path else "")
        order = self.fc.order + (" (median-normalised)" if self.fc.median_normalise else "")
        return (f"Fg {fg}; Fe {self.fe.kind}; Fc {order} order, {self.fc.tailor}, {self.fc.reduce} reduce, "
                f"max {self.fc.max_length}")


def nonzero_medians(x_ng: sp.csr_matrix) -> np.ndarray:
    """Per gene, the median of its non-zero values over the given cells (0 for a gene never expressed)."""
    csc = x_ng.tocsc()
    medians_g = np.zeros(x_ng.shape[1], dtype=np.float32)
    for g in range(x_ng.shape[1]):
        column = csc.data[csc.indptr[g] : csc.indptr[g + 1]]
        column = column[column > 0]
        if len(column):
            medians_g[g] = np.median(column)
    return medians_g


class SentenceMaker:
    """Batches (genes_bl, values_bl, special_bl) of one tokenizer over a CSR matrix of cells x genes."""

    def __init__(self, fe: FeSpec, fc: FcSpec, x_ng: sp.csr_matrix, usable_g: np.ndarray,
                 medians_g: Optional[np.ndarray] = None, chroms: Optional[ChromosomeMap] = None):
        self.fe, self.fc, self.x_ng = fe, fc, x_ng
        self.usable_g = usable_g if chroms is None or not fc.needs_chromosomes else usable_g & chroms.known_g
        self.medians_g, self.chroms = medians_g, chroms
        self.pad_gene = x_ng.shape[1]

    def expressed(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """(genes_k, values_k) of one cell: its non-zero, usable genes in column order."""
        lo, hi = self.x_ng.indptr[row], self.x_ng.indptr[row + 1]
        genes_k, values_k = self.x_ng.indices[lo:hi], self.x_ng.data[lo:hi]
        keep = (values_k > 0) & self.usable_g[genes_k]
        return genes_k[keep].astype(np.int64), values_k[keep].astype(np.float32)

    def batch(self, rows: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sentences = []
        for row in rows:
            genes_k, values_k = self.expressed(int(row))
            fe_values_k = discretise(self.fe, values_k, rng)
            sentences.append(build_sentence(self.fc, genes_k, values_k, fe_values_k, rng, self.medians_g, self.chroms))
        return pad_sentences(sentences, self.pad_gene)

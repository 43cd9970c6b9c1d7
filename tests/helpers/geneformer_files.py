"""Geneformer files for tests: dictionaries pickled in the real structure (special tokens first, genes
sorted, consecutive ids, numpy scalar values), a plain one-cell-at-a-time reference tokenizer written from
the documented rules (independent of the compiled one), and a hostile pickle."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from model_runners.geneformer.dictionaries import DictionaryFiles

V1_SPECIALS = ("<pad>", "<mask>")
V2_SPECIALS = ("<pad>", "<mask>", "<cls>", "<eos>")
FILES = {
    "gc30M": DictionaryFiles("token_dictionary_gc30M.pkl", "gene_median_dictionary_gc30M.pkl",
                             "ensembl_mapping_dict_gc30M.pkl"),
    "gc95M": DictionaryFiles("token_dictionary_gc95M.pkl", "gene_median_dictionary_gc95M.pkl",
                             "ensembl_mapping_dict_gc95M.pkl"),
}


def dictionary_contents(genes, specials, medians, symbols=None, retired=None) -> tuple[dict, dict, dict]:
    """(token, median, mapping) dicts in the real structure, with numpy scalar values."""
    genes = sorted(genes)
    token = {name: np.int64(i) for i, name in enumerate(specials)}
    token.update({gene: np.int64(len(specials) + i) for i, gene in enumerate(genes)})
    median = {gene: np.float64(medians[gene]) for gene in genes}
    mapping = {gene: gene for gene in genes}
    mapping.update({symbol.upper(): gene for symbol, gene in (symbols or {}).items()})
    mapping.update(retired or {})
    return token, median, mapping


def write_dictionaries(folder: Path, family: str, contents: tuple[dict, dict, dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    files = FILES[family]
    for name, value in zip((files.token, files.median, files.mapping), contents):
        (folder / name).write_bytes(pickle.dumps(value, protocol=4))
    return folder


def reference_tokens(x_ng, names, contents, input_size, with_cls_eos, perturbation=None) -> list[list[int]]:
    """The documented rules, one cell and one gene at a time (no vectorisation, no shared code)."""
    token, median, mapping = contents
    perturbation = perturbation or {}
    column_gene = []
    for name in names:
        key = name.split(".")[0] if name.startswith("ENS") else name
        gene = mapping.get(key.upper())
        column_gene.append(gene if gene in median else None)
    dense = np.asarray(sp.csr_matrix(x_ng).todense())
    deleted = set(perturbation.get("deleted", ()))
    activated = list(perturbation.get("activated", ()))
    cells = []
    for row in dense:
        n_counts = float(row.sum())
        summed = {}
        for gene, value in zip(column_gene, row):
            if gene is not None and value > 0 and gene not in deleted and gene not in activated:
                summed[gene] = summed.get(gene, 0.0) + float(value)
        x_norm = {gene: value / n_counts * 10_000 / float(median[gene]) for gene, value in summed.items()}
        ranked = sorted(x_norm, key=lambda gene: (-x_norm[gene], int(token[gene])))
        genes = activated + ranked
        sequence = [int(token[g]) for g in genes][: input_size - (2 if with_cls_eos else 0)]
        if with_cls_eos:
            sequence = [int(token["<cls>"])] + sequence + [int(token["<eos>"])]
        mapped = {int(token[g]): t for g, t in perturbation.get("mapped", {}).items()}
        cells.append([mapped.get(t, t) for t in sequence])
    return cells


def as_lists(cells) -> list[list[int]]:
    return [cells.cell(i).tolist() for i in range(len(cells))]


class Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)

"""Fg: how a gene's identity becomes a vector.

`identity` learns one randomly initialised vector per gene. The pretrained kinds look each dataset gene
up in a frozen table read from a file: ESM-2 protein embeddings (UCE's `protein_embeddings/*.pt`, a
torch-saved dict symbol -> vector; TranscriptFormer's `<species>_gene.h5`, dataset `keys` of Ensembl
ids and group `arrays/<id>`), GenePT text embeddings (scGenePT's pickle, dict symbol -> 1,536 floats)
and Gene2Vec (whitespace-separated text, gene in column 0, an optional word2vec "count dim" header).
A table wider than the model is PCA-reduced to the model width over the genes it covers. A table that
covers under half of the dataset's genes is refused: most of the cell would be invisible to the model.
Genes the table lacks are left out of every sentence (the caller drops them through `covered_g`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from czb_core.errors import InputError, WeightsError

KINDS = ("identity", "esm2", "genept", "gene2vec")
MIN_COVERAGE = 0.5


@dataclass(frozen=True)
class FgSpec:
    """`kind` one of `KINDS`; `path` the table file (for `esm2` it may be omitted: the cached UCE or
    TranscriptFormer table of the dataset's species is used)."""

    kind: str = "identity"
    path: Optional[str] = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Fg {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.kind in ("genept", "gene2vec") and not self.path:
            raise ValueError(f"Fg {self.kind} needs the table file: {self.kind}:PATH")


@dataclass(frozen=True)
class GeneTable:
    """Gene keys (symbols or unversioned Ensembl ids, as `key_kind` says) and their vectors."""

    keys: tuple[str, ...]
    vectors_gd: np.ndarray  # float32
    key_kind: str  # "symbol" or "ensembl"
    source: str


def _checked(keys: list[str], rows: list, path: Path, key_kind: str) -> GeneTable:
    if not keys:
        raise WeightsError(f"{path}: the gene table holds no genes")
    try:
        vectors_gd = np.asarray(rows, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"{path}: gene vectors must all be numbers of one length ({exc})") from None
    if vectors_gd.ndim != 2:
        raise WeightsError(f"{path}: gene vectors must all have one length")
    if not np.isfinite(vectors_gd).all():
        raise WeightsError(f"{path}: the gene table holds non-finite values")
    return GeneTable(tuple(keys), vectors_gd, key_kind, str(path))


def read_torch_table(path: Path) -> GeneTable:
    """UCE protein embeddings: a torch-saved dict symbol -> 1-D tensor (loaded without unpickling code)."""
    try:
        table = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{path} cannot be read as a torch-saved dict of gene vectors ({exc})") from None
    if not isinstance(table, dict):
        raise WeightsError(f"{path} must hold a dict gene -> vector, not {type(table).__name__}")
    return _checked([str(k) for k in table], [torch.as_tensor(v).float().reshape(-1).numpy() for v in table.values()],
                    path, "symbol")


def read_h5_table(path: Path) -> GeneTable:
    """TranscriptFormer ESM-2 table: dataset `keys` (Ensembl ids, bytes) and group `arrays/<id>`."""
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            keys = [k.decode("utf-8") if isinstance(k, bytes) else str(k) for k in fh["keys"][:]]
            rows = [np.asarray(fh["arrays"][k][()]).reshape(-1) for k in keys]
    except (OSError, KeyError) as exc:
        raise WeightsError(f"{path} cannot be read as a gene table (HDF5 with 'keys' and 'arrays/<key>'): "
                           f"{exc}") from None
    return _checked([k.split(".")[0] for k in keys], rows, path, "ensembl")


def read_pickle_table(path: Path) -> GeneTable:
    """GenePT / scGenePT: a pickled dict symbol -> list of floats (read with the code-free unpickler)."""
    from czb_core.models.safe_pickle import load_pickle

    table = load_pickle(path)
    if not isinstance(table, dict):
        raise WeightsError(f"{path} must hold a dict gene -> vector, not {type(table).__name__}")
    return _checked([str(k) for k in table], [np.asarray(v, dtype=np.float32).reshape(-1) for v in table.values()],
                    path, "symbol")


def read_text_table(path: Path) -> GeneTable:
    """Gene2Vec text: one gene a line, name then its numbers, whitespace-separated; a first line of two
    integers (word2vec's count and dimension) is skipped."""
    keys, rows = [], []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise WeightsError(f"{path} cannot be read as text ({exc})") from None
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields or (number == 1 and len(fields) == 2 and all(f.isdigit() for f in fields)):
            continue
        try:
            rows.append([float(f) for f in fields[1:]])
        except ValueError:
            raise WeightsError(f"{path} line {number}: expected a gene name then numbers") from None
        keys.append(fields[0])
    return _checked(keys, rows, path, "symbol")


def read_gene_table(path: str | Path) -> GeneTable:
    """Any supported table, chosen by file suffix."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"gene table {path} does not exist")
    readers = {".pt": read_torch_table, ".torch": read_torch_table, ".h5": read_h5_table, ".hdf5": read_h5_table,
               ".pkl": read_pickle_table, ".pickle": read_pickle_table, ".txt": read_text_table}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise InputError(f"{path.name}: unknown gene-table format; expected one of {', '.join(readers)}")
    return reader(path)


def align_table(table: GeneTable, gene_ids: np.ndarray, symbols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(vectors of the covered dataset genes in dataset order, covered_g mask); refuses under half cover.
    Symbols match case-insensitively; Ensembl ids without their version."""
    from czb_core.schema.gene_references import strip_version

    if table.key_kind == "ensembl":
        wanted = strip_version(np.asarray(gene_ids, dtype=str))
        index = {k: i for i, k in enumerate(table.keys)}
    else:
        wanted = np.char.upper(np.asarray(symbols, dtype=str))
        index = {}
        for i, k in enumerate(table.keys):
            index.setdefault(k.upper(), i)
    rows_g = np.array([index.get(str(w), -1) for w in wanted], dtype=np.int64)
    covered_g = rows_g >= 0
    coverage = covered_g.mean() if len(covered_g) else 0.0
    if coverage < MIN_COVERAGE:
        raise InputError(f"{Path(table.source).name} covers {covered_g.sum():,} of {len(covered_g):,} genes "
                         f"({100 * coverage:.0f}%); at least {100 * MIN_COVERAGE:.0f}% are needed "
                         f"(it is keyed by {'Ensembl id' if table.key_kind == 'ensembl' else 'gene symbol'})")
    return table.vectors_gd[rows_g[covered_g]], covered_g


def reduce_to_width(vectors_gd: np.ndarray, d_model: int) -> np.ndarray:
    """PCA to `d_model` columns when the table is wider; a narrower table cannot fill the model width."""
    n_genes, dim = vectors_gd.shape
    if dim == d_model:
        return vectors_gd.astype(np.float32)
    if dim < d_model:
        raise InputError(f"the gene table has {dim} dimensions, fewer than the model width {d_model}; "
                         "choose a smaller width")
    if n_genes < d_model:
        raise InputError(f"PCA to {d_model} dimensions needs at least {d_model} covered genes, got {n_genes}")
    centred = vectors_gd.astype(np.float64) - vectors_gd.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return (centred @ vt[:d_model].T).astype(np.float32)


class IdentityFg(nn.Module):
    """A learnable vector per gene, N(0, 1) at start; the last row is the padding vector (zero)."""

    def __init__(self, n_genes: int, d_model: int):
        super().__init__()
        self.embedding = nn.Embedding(n_genes + 1, d_model, padding_idx=n_genes)

    def forward(self, genes_bl: torch.Tensor) -> torch.Tensor:
        return self.embedding(genes_bl)


class FrozenFg(nn.Module):
    """A fixed table (a buffer, never trained); uncovered genes and padding read the zero vector."""

    def __init__(self, table_gd: np.ndarray, covered_g: np.ndarray):
        super().__init__()
        full = np.zeros((len(covered_g) + 1, table_gd.shape[1]), dtype=np.float32)
        full[np.flatnonzero(covered_g)] = table_gd
        self.register_buffer("table", torch.from_numpy(full))

    table: torch.Tensor  # a registered buffer

    def forward(self, genes_bl: torch.Tensor) -> torch.Tensor:
        return self.table[genes_bl]


def cached_esm2_path(organism) -> Path:
    """An ESM-2 gene table of `organism` from a model's weights already in the cache (the first registered
    model whose default variant holds one: UCE's protein embeddings, TranscriptFormer's gene tables);
    nothing is downloaded here."""
    from czb_core.models.registry import discover_models
    from czb_core.models.variant_weights import VariantWeights

    for config in discover_models().values():
        weights = VariantWeights.of(config)
        dirs = weights.cached_dirs()
        path = config.load_implementation().esm2_gene_table(weights.variant, dirs, organism) if dirs else None
        if path is not None:
            return path
    raise InputError(f"no cached ESM-2 gene table for {organism.latin_name}: download the UCE model files "
                     "(czb run --model uce) or TranscriptFormer, or give the file as esm2:PATH")


def build_fg(spec: FgSpec, gene_ids: np.ndarray, symbols: np.ndarray, d_model: int,
             organism=None) -> tuple[nn.Module, np.ndarray]:
    """(the Fg module, covered_g: genes it can represent)."""
    if spec.kind == "identity":
        return IdentityFg(len(gene_ids), d_model), np.ones(len(gene_ids), dtype=bool)
    if spec.path:
        path = Path(spec.path)
    elif organism is None:
        raise InputError("Fg esm2 without a file needs the dataset's organism to find a cached table")
    else:
        path = cached_esm2_path(organism)
    vectors_gd, covered_g = align_table(read_gene_table(path), gene_ids, symbols)
    return FrozenFg(reduce_to_width(vectors_gd, d_model), covered_g), covered_g

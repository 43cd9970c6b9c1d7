"""UCE's model files, read into what the sampler needs: each dataset gene's token, chromosome and start.

`model_files/` holds `species_offsets.pkl` (species key -> the row of its first gene in the token
table; a pickle, read with the restricted unpickler), `species_chrom.csv` (species, gene_symbol,
chromosome, start), `protein_embeddings/<file>.pt` (a dict symbol -> ESM2 vector per species; only its
key order matters here) and `all_tokens.torch` (the gene rows of the token table, whose row count is
where the chromosome tokens start). The checkpoint's own `pe_embedding.weight` holds the gene rows
followed by the chromosome rows; it is the table the model reads.

The token rules: symbols match case-insensitively; a gene's token is the position of its upper-cased
symbol among the species' upper-cased dict keys (duplicates under upper-casing keep their first
position) plus the species offset; a gene's chromosome token is the category code of
`<species>_<chromosome>` over the whole CSV (categories in sorted order) plus the chromosome offset.
Torch is imported lazily; nothing here imports anndata.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
import pandas as pd

from czb_core.errors import WeightsError
from czb_core.models.safe_pickle import load_pickle
from czb_core.types import Organism


@dataclass(frozen=True)
class SpeciesFiles:
    """Where one organism's facts live: its key in the offsets and the CSV, its protein-embedding file."""

    key: str
    protein_embeddings: str


@dataclass(frozen=True)
class GeneTable:
    """Per dataset gene: whether UCE can use it and, if so, its token, chromosome code and start."""

    usable_g: np.ndarray  # bool
    token_g: np.ndarray  # int64, -1 where unusable
    chrom_g: np.ndarray  # int64 category code (not yet offset), -1 where unusable
    start_g: np.ndarray  # int64, 0 where unusable
    n_without_embedding: int
    n_without_position: int  # with an embedding but no row in species_chrom.csv

    @property
    def n_usable(self) -> int:
        return int(self.usable_g.sum())


def species_files(resources: Mapping, organism: Organism) -> SpeciesFiles:
    """The organism's entry in the variant's `species` resource, or a WeightsError naming the supported ones."""
    table = resources["species"]
    entry = table.get(organism.latin_name)
    if entry is None:
        raise WeightsError(f"UCE has no protein embeddings for {organism.latin_name}; it covers {', '.join(table)}")
    return SpeciesFiles(str(entry["key"]), str(entry["protein_embeddings"]))


def protein_embedding_path(model_files: Path, resources: Mapping, organism: Organism) -> Path:
    """The organism's protein-embedding file; a clear error when the folder lacks it."""
    name = species_files(resources, organism).protein_embeddings
    path = Path(model_files) / resources["protein_embeddings_dir"] / name
    if not path.is_file():
        raise WeightsError(f"the UCE gene table for {organism.latin_name} is missing: {path} does not exist; "
                           "check the model_files URI (it must hold protein_embeddings/ of every species used)")
    return path


def _signature(path: Path) -> tuple:
    stat = Path(path).stat()
    return (str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=8)
def _protein_symbols(signature: tuple) -> tuple[str, ...]:
    """The upper-cased symbols of a protein-embedding dict, in key order, first occurrence kept."""
    import torch

    path = signature[0]
    try:
        table = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # a truncated or foreign file: say which
        raise WeightsError(f"{Path(path).name} cannot be read as a UCE protein-embedding dict ({exc})") from exc
    if not isinstance(table, dict) or not all(isinstance(k, str) for k in table):
        raise WeightsError(f"{Path(path).name} is not a dict of gene symbol -> embedding")
    return tuple(pd.unique(pd.Index([k.upper() for k in table], dtype=object)))


def protein_symbols(path: Path) -> tuple[str, ...]:
    return _protein_symbols(_signature(path))


@lru_cache(maxsize=4)
def _chromosome_table(signature: tuple) -> tuple[pd.DataFrame, int]:
    """(rows of the CSV with upper-cased symbols and chromosome codes, the number of codes)."""
    path = signature[0]
    try:
        csv = pd.read_csv(path, dtype={"species": str, "gene_symbol": str, "chromosome": str})
    except Exception as exc:
        raise WeightsError(f"{Path(path).name} cannot be read as UCE's species/chromosome table ({exc})") from exc
    missing = {"species", "gene_symbol", "chromosome", "start"} - set(csv.columns)
    if missing:
        raise WeightsError(f"{Path(path).name} lacks the columns {sorted(missing)}")
    spec_chrom = pd.Categorical(csv["species"] + "_" + csv["chromosome"])
    table = pd.DataFrame({
        "species": csv["species"].to_numpy(),
        "symbol": csv["gene_symbol"].str.upper().to_numpy(),
        "chrom": spec_chrom.codes.astype(np.int64),
        "start": csv["start"].to_numpy(np.int64),
    })
    return table, len(spec_chrom.categories)


def chromosome_table(path: Path) -> tuple[pd.DataFrame, int]:
    return _chromosome_table(_signature(path))


def species_offset(model_files: Path, resources: Mapping, organism: Organism) -> int:
    offsets = load_pickle(Path(model_files) / resources["offsets_file"])
    key = species_files(resources, organism).key
    if not isinstance(offsets, dict) or key not in offsets:
        raise WeightsError(f"{resources['offsets_file']} has no offset for the species key {key!r}")
    return int(offsets[key])


def token_rows(model_files: Path, resources: Mapping) -> int:
    """Rows of `all_tokens.torch` (read memory-mapped: only the header is touched): where chromosome tokens start."""
    import torch

    path = Path(model_files) / resources["token_file"]
    try:
        tokens = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise WeightsError(f"{path.name} cannot be read as UCE's token table ({exc})") from exc
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
        raise WeightsError(f"{path.name} is not a 2-d tensor of gene tokens")
    return int(tokens.shape[0])


def gene_table(genes_g: np.ndarray, model_files: Path, resources: Mapping, organism: Organism) -> GeneTable:
    """Token, chromosome code and start of each dataset gene (vectorised lookups, no per-gene Python).

    A gene with an embedding but no row in the CSV cannot be placed on a chromosome, so it is dropped
    and counted; a symbol listed twice for a species keeps its first row."""
    upper_g = pd.Index(np.asarray(genes_g, dtype=str)).str.upper()
    symbols = pd.Index(protein_symbols(protein_embedding_path(model_files, resources, organism)))
    position_g = symbols.get_indexer(upper_g)
    table, _ = chromosome_table(Path(model_files) / resources["chrom_file"])
    key = species_files(resources, organism).key
    rows = table[table["species"] == key].drop_duplicates("symbol").set_index("symbol")
    if rows.empty:
        raise WeightsError(f"{resources['chrom_file']} has no genes of the species key {key!r}")
    row_g = rows.index.get_indexer(upper_g)
    has_embedding_g = position_g >= 0
    usable_g = has_embedding_g & (row_g >= 0)
    offset = species_offset(model_files, resources, organism)
    token_g = np.where(usable_g, position_g + offset, -1).astype(np.int64)
    chrom_g = np.where(usable_g, rows["chrom"].to_numpy()[row_g], -1).astype(np.int64)
    start_g = np.where(usable_g, rows["start"].to_numpy()[row_g], 0).astype(np.int64)
    return GeneTable(usable_g, token_g, chrom_g, start_g, int((~has_embedding_g).sum()),
                     int((has_embedding_g & (row_g < 0)).sum()))


def vocabulary(model_files: Path, resources: Mapping, organism: Optional[Organism]) -> Optional[set[str]]:
    """The upper-cased symbols UCE embeds for `organism` (None when the organism is not decided)."""
    if organism is None:
        return None
    return set(protein_symbols(protein_embedding_path(model_files, resources, organism)))

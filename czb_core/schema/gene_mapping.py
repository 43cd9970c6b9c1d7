"""Map gene symbols <-> Ensembl ids for any shipped species, and across species through orthologs.

Why this exists: models key their vocabularies on one id system, datasets arrive in another, and a
mapping is only trustworthy if it says what it did to every name and against which annotation
release. Every function returns a `GeneMapping`: the mapped names in input order plus a
`MappingReport` whose statuses partition the input and which records the reference release (e.g.
"GENCODE vM37"), so run records can carry it.

Same-species mapping (`map_symbols_to_ids`, `map_ids_to_symbols`) uses the dataset's own species'
reference. Cross-species mapping (`map_through_orthologs`) is separate on purpose: it changes what
the genes are, so it is never a fallback, and its report leads with the share of genes kept.

Duplicates (several inputs reaching one output, e.g. two retired symbols of one gene) are marked,
not merged: the caller sums their columns, because only the caller holds the counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from czb_core.errors import InputError
from czb_core.schema.gene_references import (
    ReferenceInfo,
    SpeciesIndex,
    looks_like_gene_id,
    ortholog_table,
    resolve_species,
    species_index,
    strip_version,
)
from czb_core.types import Organism

__all__ = [
    "STATUSES",
    "MappingReport",
    "GeneMapping",
    "map_symbols_to_ids",
    "map_ids_to_symbols",
    "map_through_orthologs",
]

STATUSES = ("mapped", "already_id", "already_symbol", "ambiguous", "duplicate", "unresolved")


@dataclass(eq=False)
class MappingReport:
    """What happened to every input name; the statuses partition `n_input`.

    n_mapped + n_already_ids + n_ambiguous + n_duplicates + n_unresolved == n_input, where:

    * `mapped`: resolved through the reference to one target.
    * `already_id` / `already_symbol`: already in the target system, kept (ids version-stripped);
      both count in `n_already_ids` ("already in the target system").
    * `ambiguous`: several targets; the lowest id (or first symbol) was taken.
    * `duplicate`: resolved to a target an earlier row already reached; `duplicate_of` names that
      row's input and `group_size` > 1 marks every member. Sum these columns.
    * `unresolved`: no target (output None); `note` says why.

    `table` columns: input, output, status, match ("id", "exact", "case_insensitive", "symbol",
    "ortholog" or ""), n_candidates, group_size, duplicate_of, note. `reference` is the release the
    names were mapped against (the target species' for orthologs; `source_reference` then holds the
    source species' and `orthologs` the ortholog table's release).
    """

    n_input: int
    n_mapped: int
    n_already_ids: int
    n_unresolved: int
    n_ambiguous: int
    n_duplicates: int
    table: pd.DataFrame = field(repr=False)
    direction: str
    organism: Organism | None
    reference: ReferenceInfo | None
    source_reference: ReferenceInfo | None = None
    orthologs: str = ""

    @property
    def source(self) -> str:
        """The release(s) used, in one string, for a log line or a run record."""
        if self.source_reference is not None and self.reference is not None:
            return f"{self.source_reference.label} -> {self.orthologs} orthologs (celltypist) -> {self.reference.label}"
        return self.reference.source if self.reference is not None else "no reference"

    @property
    def n_resolved(self) -> int:
        return self.n_input - self.n_unresolved

    @property
    def n_output_genes(self) -> int:
        """Distinct outputs: genes left once duplicates are summed."""
        return self.n_resolved - self.n_duplicates

    @property
    def share_kept(self) -> float:
        """Distinct output genes per input name (0 for empty input)."""
        return self.n_output_genes / self.n_input if self.n_input else 0.0

    def duplicate_groups(self) -> dict[str, list[str]]:
        """Output -> the input names that collapse onto it (groups of 2 or more only)."""
        t = self.table[self.table["group_size"] > 1]
        return {k: list(v) for k, v in t.groupby("output", sort=False)["input"]}

    def unresolved_names(self) -> list[str]:
        return self.table.loc[self.table["status"] == "unresolved", "input"].tolist()

    def summary(self) -> str:
        """One line for a log or a UI caption."""
        already = "already ids" if self.direction.endswith("to_id") else "already symbols"
        head = f"{self.n_input:,} names -> {self.n_output_genes:,} genes"
        if self.orthologs:
            head += f" ({100 * self.share_kept:.0f}% kept)"
        return (
            f"{head}: {self.n_mapped:,} mapped, {self.n_already_ids:,} {already}, "
            f"{self.n_ambiguous:,} ambiguous, {self.n_duplicates:,} duplicates to sum, "
            f"{self.n_unresolved:,} unresolved ({self.source})"
        )

    def to_csv(self, path_or_buf: Any = None) -> str | None:
        """The per-name table as CSV; with no target, the CSV text."""
        return self.table.to_csv(path_or_buf, index=False)

    def to_dict(self, max_examples: int = 20) -> dict[str, Any]:
        """JSON-ready counts, the releases used and a few unresolved names and duplicate groups."""
        return {
            "direction": self.direction,
            "organism": self.organism.name if self.organism is not None else None,
            "reference": self.reference.to_dict() if self.reference is not None else None,
            "source_reference": self.source_reference.to_dict() if self.source_reference is not None else None,
            "orthologs": self.orthologs,
            "source": self.source,
            "n_input": self.n_input,
            "n_mapped": self.n_mapped,
            "n_already_ids": self.n_already_ids,
            "n_unresolved": self.n_unresolved,
            "n_ambiguous": self.n_ambiguous,
            "n_duplicates": self.n_duplicates,
            "n_output_genes": self.n_output_genes,
            "share_kept": self.share_kept,
            "unresolved_examples": self.unresolved_names()[:max_examples],
            "duplicate_groups": dict(list(self.duplicate_groups().items())[:max_examples]),
            "summary": self.summary(),
        }


@dataclass(eq=False)
class GeneMapping:
    """`mapped[i]` is the target for input i (same order), or None when unresolved."""

    mapped: np.ndarray
    report: MappingReport

    @property
    def resolved(self) -> np.ndarray:
        return ~pd.isna(self.mapped).astype(bool)

    def mapped_or_input(self) -> np.ndarray:
        """Targets, unresolved positions keeping their input name (for var_names)."""
        inputs = self.report.table["input"].to_numpy(dtype=object)
        return np.where(self.resolved, self.mapped, inputs).astype(object)

    def __len__(self) -> int:
        return len(self.mapped)


# --------------------------------------------------------------------------------------------
# Shared bookkeeping


def _as_str_series(names: Any) -> pd.Series:
    if isinstance(names, str):
        names = [names]
    s = pd.Series(np.asarray(names, dtype=object).reshape(-1), dtype=object)
    if len(s):
        s = s.where(s.notna(), "").astype(str)
    return s.reset_index(drop=True)


@dataclass
class _Rows:
    """Per-row outcome columns, filled rule by rule (later rules only touch rows still open)."""

    output: pd.Series
    status: pd.Series
    match: pd.Series
    n_candidates: pd.Series
    note: pd.Series

    @classmethod
    def empty(cls, n: int) -> "_Rows":
        idx = pd.RangeIndex(n)
        return cls(
            output=pd.Series(None, index=idx, dtype=object),
            status=pd.Series("unresolved", index=idx, dtype=object),
            match=pd.Series("", index=idx, dtype=object),
            n_candidates=pd.Series(0, index=idx, dtype=int),
            note=pd.Series("", index=idx, dtype=object),
        )

    def set(
        self, rows: pd.Series, output: pd.Series, status: Any, match: Any, n_candidates: Any, note: Any = ""
    ) -> None:
        self.output[rows] = output[rows]
        self.status[rows] = status[rows] if isinstance(status, (pd.Series, np.ndarray)) else status
        self.match[rows] = match[rows] if isinstance(match, pd.Series) else match
        self.n_candidates[rows] = n_candidates[rows] if isinstance(n_candidates, pd.Series) else n_candidates
        self.note[rows] = note[rows] if isinstance(note, pd.Series) else note


def _finish(
    s: pd.Series,
    rows: _Rows,
    direction: str,
    organism: Organism | None,
    reference: ReferenceInfo | None,
    source_reference: ReferenceInfo | None = None,
    orthologs: str = "",
) -> GeneMapping:
    """Mark duplicates, build the table and the counts (vectorised)."""
    output = rows.output
    has = output.notna()
    dup = has & output.duplicated(keep="first")
    status = rows.status.where(~dup, "duplicate")
    sizes = output[has].value_counts()
    group_size = output.map(sizes).fillna(0).astype(int)
    first_input = pd.Series(s[has].to_numpy(), index=output[has].to_numpy())
    first_input = first_input[~first_input.index.duplicated(keep="first")]
    duplicate_of = output.where(dup).map(first_input).fillna("")
    table = pd.DataFrame(
        {
            "input": s.to_numpy(dtype=object),
            "output": output.astype(object).where(has, None).to_numpy(dtype=object),
            "status": status.to_numpy(dtype=object),
            "match": rows.match.to_numpy(dtype=object),
            "n_candidates": rows.n_candidates.astype(int).to_numpy(),
            "group_size": group_size.to_numpy(),
            "duplicate_of": duplicate_of.to_numpy(dtype=object),
            "note": rows.note.to_numpy(dtype=object),
        }
    )
    counts = table["status"].value_counts()
    report = MappingReport(
        n_input=len(table),
        n_mapped=int(counts.get("mapped", 0)),
        n_already_ids=int(counts.get("already_id", 0) + counts.get("already_symbol", 0)),
        n_unresolved=int(counts.get("unresolved", 0)),
        n_ambiguous=int(counts.get("ambiguous", 0)),
        n_duplicates=int(counts.get("duplicate", 0)),
        table=table,
        direction=direction,
        organism=organism,
        reference=reference,
        source_reference=source_reference,
        orthologs=orthologs,
    )
    return GeneMapping(mapped=table["output"].to_numpy(dtype=object), report=report)


def _ids_of(s: pd.Series, ix: SpeciesIndex) -> pd.Series:
    """Which names are gene ids: the stable-id grammar, or an id this species' table lists verbatim
    (fly lists a few, such as "FBtr0309721_df_nrg", outside the grammar)."""
    return pd.Series(looks_like_gene_id(s), dtype=bool) | s.isin(ix.id_to_symbol.index)


def _organism_of(species: Organism | str) -> Organism:
    info = species_index(species).info
    if info.organism is None:
        raise InputError(f"{info.species} is not an organism; map its features by id")
    return info.organism


# --------------------------------------------------------------------------------------------
# Same species


def _read_names(names: Any, species: Organism | str):
    """What both directions start from: the organism, its reference index, the names as text, empty result
    rows, which names are ids of the reference's system, and the names without version suffixes."""
    ix = species_index(species)
    s = _as_str_series(names)
    return (_organism_of(species), ix, s, _Rows.empty(len(s)), _ids_of(s, ix),
            pd.Series(strip_version(s), dtype=object))


def map_symbols_to_ids(names: Any, species: Organism | str) -> GeneMapping:
    """Symbols (any case) -> unversioned Ensembl ids of `species`' reference.

    Per name, first rule that applies: already an id -> kept version-stripped, `already_id` (noted
    when the reference lacks it: retired, or another species); a symbol of the reference, compared
    upper-cased -> `mapped` (match "exact" when the case agrees, else "case_insensitive"), or
    `ambiguous` when several genes carry it (the lowest id is taken); else `unresolved`.
    """
    organism, ix, s, rows, is_id, stripped = _read_names(names, species)
    in_ref = stripped.isin(ix.id_to_symbol.index)
    missing = pd.Series(np.where(in_ref, "", f"id not in {ix.info.label}"), dtype=object)
    rows.set(is_id, stripped, "already_id", "id", 1, missing)

    key = s.str.upper()
    target = key.map(ix.symbol_to_id)
    count = key.map(ix.symbol_count).fillna(0).astype(int)
    hit = ~is_id & target.notna()
    exact = s == key.map(ix.canonical_symbol)
    match = pd.Series(np.where(exact, "exact", "case_insensitive"))
    rows.set(hit, target, np.where(count > 1, "ambiguous", "mapped"), match, count)
    rows.note[~is_id & ~hit] = f"not a symbol in {ix.info.label}"
    return _finish(s, rows, "symbol_to_id", organism, ix.info)


def map_ids_to_symbols(ids: Any, species: Organism | str) -> GeneMapping:
    """Ensembl ids (versioned or not) -> symbols of `species`' reference.

    Per name: an id the reference names -> `mapped`; an id it lists without a symbol -> `unresolved`
    (noted; `mapped_or_input` keeps the id); an id it lacks -> `unresolved`; a symbol of the
    reference (any case) -> its reference spelling, `already_symbol`; anything else -> `unresolved`.
    """
    organism, ix, s, rows, is_id, stripped = _read_names(ids, species)
    symbol = stripped.map(ix.id_to_symbol)
    rows.set(is_id & symbol.fillna("").ne(""), symbol, "mapped", "id", 1)
    rows.note[is_id & symbol.eq("")] = f"gene has no symbol in {ix.info.label}"
    rows.note[is_id & symbol.isna()] = f"id not in {ix.info.label}"

    canonical = s.str.upper().map(ix.canonical_symbol)
    keep = ~is_id & canonical.notna()
    rows.set(keep, canonical, "already_symbol", "symbol", 1)
    rows.note[~is_id & ~keep] = f"neither an id nor a symbol of {ix.info.label}"
    return _finish(s, rows, "id_to_symbol", organism, ix.info)


# --------------------------------------------------------------------------------------------
# Across species


def _source_symbols(s: pd.Series, source: Organism | str) -> tuple[pd.Series, pd.Series]:
    """Each input as the source reference spells its symbol (ids through the table), and a note."""
    ix = species_index(source)
    is_id = _ids_of(s, ix)
    from_id = pd.Series(strip_version(s), dtype=object).map(ix.id_to_symbol)
    from_id = from_id.where(from_id != "")  # an unnamed gene has no symbol to look orthologs up by
    from_symbol = s.str.upper().map(ix.canonical_symbol)
    symbol = from_id.where(is_id, from_symbol)
    note = pd.Series(np.where(symbol.isna(), f"not a named gene of {ix.info.label}", ""), dtype=object)
    return symbol, note


def _ortholog_choice(pairs: pd.DataFrame, one_to_one: bool) -> tuple[pd.Series, pd.Series]:
    """UPPER(source symbol) -> chosen target symbol, and -> number of target orthologs.

    With `one_to_one`, pairs whose source or target has any other ortholog are dropped (as
    celltypist does for its own conversions); otherwise the first target alphabetically is taken.
    """
    pairs = pairs.assign(key=pairs["source"].str.upper(), tkey=pairs["target"].str.upper())
    pairs = pairs.drop_duplicates(["key", "tkey"])
    n_targets = pairs.groupby("key", sort=False).size()
    if one_to_one:
        n_sources = pairs.groupby("tkey", sort=False).size()
        pairs = pairs[pairs["key"].map(n_targets).eq(1) & pairs["tkey"].map(n_sources).eq(1)]
    first = pairs.sort_values(["key", "target"], kind="mergesort").drop_duplicates("key")
    return pd.Series(first["target"].to_numpy(), index=first["key"].to_numpy()), n_targets


def map_through_orthologs(
    names: Any,
    source: Organism,
    target: Organism = Organism.HUMAN,
    to: str = "id",
    one_to_one: bool = True,
) -> GeneMapping:
    """Genes of `source` (ids or symbols, any case) -> their `target` orthologs' ids (or symbols).

    Path: source name -> source symbol (source reference) -> ortholog symbol (celltypist's Ensembl
    ortholog table) -> target gene (target reference, case-insensitive). Each step that fails is
    named in `note`. With `one_to_one` (default) only genes with a single ortholog both ways are
    kept; otherwise a gene with several orthologs takes the first alphabetically (`ambiguous`).
    The report's `share_kept` and `summary()` give the share of genes that survive.
    """
    if to not in ("id", "symbol"):
        raise InputError(f"to must be 'id' or 'symbol', not {to!r}")
    if source is target:
        raise InputError("source and target are the same species; use map_symbols_to_ids / map_ids_to_symbols")
    src_ix, tgt_ix = species_index(resolve_species(source)), species_index(resolve_species(target))
    pairs, release = ortholog_table(source, target)
    chosen, n_targets = _ortholog_choice(pairs, one_to_one)

    s = _as_str_series(names)
    rows = _Rows.empty(len(s))
    symbol, note = _source_symbols(s, source)
    key = symbol.str.upper()
    ortholog = key.map(chosen)
    n_orth = key.map(n_targets).fillna(0).astype(int)
    tkey = ortholog.str.upper()
    target_symbol = tkey.map(tgt_ix.canonical_symbol)
    result = target_symbol if to == "symbol" else tkey.map(tgt_ix.symbol_to_id)

    note = note.where(symbol.isna() | n_orth.gt(0), f"no {target.name.lower()} ortholog in {release}")
    note = note.where(symbol.isna() | n_orth.eq(0) | ortholog.notna(), "ortholog not one-to-one")
    lost = "ortholog " + ortholog.fillna("") + f" not in {tgt_ix.info.label}"
    note = note.where(ortholog.isna() | result.notna(), lost)
    hit = result.notna()
    rows.set(hit, result, np.where(n_orth > 1, "ambiguous", "mapped"), "ortholog", n_orth)
    rows.note[:] = note.where(~hit, "")
    direction = f"{source.name.lower()}_to_{target.name.lower()}_orthologs_to_{to}"
    return _finish(s, rows, direction, target, tgt_ix.info, source_reference=src_ix.info, orthologs=release)

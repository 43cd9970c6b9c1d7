"""Tests for czb_core.schema.gene_references (shipped tables, versions, indices, orthologs) and
czb_core.schema.gene_mapping (symbols <-> ids for any species, and through orthologs)."""

from __future__ import annotations

import gzip
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

from czb_core.errors import InputError
from czb_core.schema import gene_references as gr
from czb_core.schema.gene_mapping import map_ids_to_symbols, map_symbols_to_ids, map_through_orthologs
from czb_core.types import Organism

SPECIES = gr.reference_species()
ROUND_TRIP = ("homo_sapiens", "mus_musculus", "danio_rerio", "drosophila_melanogaster", "caenorhabditis_elegans",
              "macaca_mulatta", "sus_scrofa", "rattus_norvegicus")


def uniquely_named(species: str, n: int, seed: int) -> pd.DataFrame:
    """Genes whose upper-cased symbol belongs to them alone, so a round trip has one right answer."""
    t = gr.gene_table(species)
    t = t[t["gene_name"] != t["gene_id"]]
    key = t["gene_name"].str.upper()
    t = t[~key.duplicated(keep=False)]
    return t.sample(n=min(n, len(t)), random_state=seed)


# ---------------------------------------------------------------- what the wheel ships


def test_fourteen_organisms_plus_ercc_and_sars_cov_2_each_with_an_organism():
    assert len(SPECIES) == 14
    assert set(gr.reference_species(organisms_only=False)) - set(SPECIES) == {"ercc", "sars_cov_2"}
    by_org = gr.organism_species()
    assert len(by_org) == 14 and set(by_org.values()) == set(SPECIES)
    for org, species in by_org.items():
        assert org.latin_name == species


def test_versions_come_from_gene_info_yml():
    info = yaml.safe_load((gr.reference_dir() / "gene_info.yml").read_text())
    by_latin = {v["description"]: v for v in info.values()}
    human, mouse = gr.reference_info(Organism.HUMAN), gr.reference_info("mouse")
    assert human.label == f"GENCODE v{by_latin['homo_sapiens']['version']}" == "GENCODE v48"
    assert mouse.label == f"GENCODE v{by_latin['mus_musculus']['version']}" == "GENCODE vM37"
    assert human.assembly == "GRCh38" and mouse.assembly == "GRCm39"
    for species in SPECIES:
        ref = gr.reference_info(species)
        if ref.annotation == "Ensembl":
            assert f"release-{ref.version}" in by_latin[species]["gtf_url"].replace("{version}", ref.version)
            assert ref.label == "Ensembl 114" and ref.assembly
        assert ref.package_version == gr.CXG_VERSION and ref.file in ref.source


def test_table_layout_matches_the_raw_file():
    path = gr.reference_dir() / "genes_homo_sapiens.csv.gz"
    with gzip.open(path, "rt") as f:
        first = f.readline().rstrip("\n").split(",")
    t = gr.gene_table("human")
    assert list(t.columns) == gr.TABLE_COLUMNS and len(first) == len(gr.TABLE_COLUMNS)
    assert t.iloc[0]["gene_id"] == first[0] and t.iloc[0]["gene_name"] == first[1]
    assert t.iloc[0]["length"] == int(first[3]) and t.iloc[0]["biotype"] == first[4]


@pytest.mark.parametrize("species", SPECIES)
def test_every_table_has_unique_unversioned_ids(species):
    t = gr.gene_table(species)
    assert len(t) > 10_000 and t["gene_id"].is_unique
    assert not t["gene_id"].str.contains(r"\.\d+$").any()
    assert (t["gene_name"] != "").all() and t["length"].notna().all()


def test_tables_are_cached_per_process_and_handed_out_as_copies():
    gr.gene_table("rabbit")
    t0 = time.perf_counter()
    first = gr.gene_table(Organism.RABBIT)
    assert time.perf_counter() - t0 < 0.5  # a cached copy, not a re-read
    first.loc[first.index[0], "gene_name"] = "CHANGED"
    assert gr.gene_table("oryctolagus_cuniculus").iloc[0]["gene_name"] != "CHANGED"
    assert gr.species_index("rabbit") is gr.species_index(Organism.RABBIT)


def test_unknown_species_and_species_without_a_table_are_clear_errors():
    with pytest.raises(InputError, match="no gene reference for unicorn; references exist for: .*homo_sapiens"):
        gr.resolve_species("unicorn")
    with pytest.raises(InputError, match="no gene reference for gallus_gallus"):
        gr.gene_table(Organism.CHICKEN)


def test_species_are_named_by_organism_latin_or_common_name():
    for name in (Organism.WILD_BOAR, "WILD_BOAR", "sus_scrofa", "Sus scrofa", "pig"):
        assert gr.resolve_species(name) == "sus_scrofa"
    assert gr.resolve_species("roundworm") == gr.resolve_species(Organism.C_ELEGANS)


# ---------------------------------------------------------------- ids and indices


def test_strip_version_and_id_recognition():
    out = gr.strip_version(
        ["ENSG00000141510.17", "ENSMUSG00000029580", "ENSG00000182378.14_PAR_Y", "RP11-34P13.7", "FBgn0000042.1"]
    )
    assert list(out) == ["ENSG00000141510", "ENSMUSG00000029580", "ENSG00000182378", "RP11-34P13.7", "FBgn0000042"]
    names = ["ENSDARG00000103202.2", "WBGene00000003", "ERCC-00002", "TP53", "AC000061.1", "12345"]
    looks = gr.looks_like_gene_id(names)
    assert list(looks) == [True, True, True, False, False, False]


def test_every_organism_prefix_names_its_organism():
    prefixes = gr.id_prefix_organisms()
    for org, species in gr.organism_species().items():
        assert prefixes[org.prefix] is org
        owners = gr.id_owners(gr.gene_table(species)["gene_id"])
        assert (owners == org).all(), species


def test_symbol_index_is_case_insensitive_and_picks_the_lowest_id():
    t = gr.gene_table("human")
    ix = gr.species_index("human")
    shared = t[t["gene_name"] == "Y_RNA"]["gene_id"]
    assert len(shared) > 1
    assert ix.symbol_to_id["Y_RNA".upper()] == shared.min() and ix.symbol_count["Y_RNA".upper()] == len(shared)
    mouse = gr.species_index("mouse")
    actb = gr.gene_table("mouse").query("gene_name == 'Actb'")["gene_id"].item()
    assert mouse.symbol_to_id["ACTB"] == actb and mouse.canonical_symbol["ACTB"] == "Actb"


def test_symbol_species_masks_say_which_species_have_a_symbol():
    order, masks = gr.symbol_species_masks()
    assert order == SPECIES
    bit = {s: 1 << i for i, s in enumerate(order)}
    mouse_only = masks[masks == bit["mus_musculus"]]
    assert len(mouse_only) > 1000
    human_keys = gr.species_index("human").symbol_to_id.index
    assert not mouse_only.index.isin(human_keys).any()
    assert masks["ACTB"] & bit["homo_sapiens"] and masks["ACTB"] & bit["mus_musculus"]


def test_gene_coordinates_for_the_three_species_that_have_them():
    coords = gr.gene_coordinates("human")
    assert {"chrom", "start", "end", "gene_id", "strand"} <= set(coords.columns)
    assert coords["gene_id"].isin(gr.gene_table("human")["gene_id"]).mean() > 0.99
    assert (coords["end"] >= coords["start"]).all()
    assert len(gr.gene_coordinates(Organism.ZEBRAFISH)) > 10_000
    with pytest.raises(InputError, match="no gene coordinates for sus_scrofa"):
        gr.gene_coordinates("pig")


def test_ortholog_tables_read_both_ways():
    forward, release = gr.ortholog_table(Organism.HUMAN, Organism.MOUSE)
    backward, _ = gr.ortholog_table(Organism.MOUSE, Organism.HUMAN)
    assert release == "Ensembl 105" and len(forward) > 20_000
    assert list(backward.columns) == ["source", "target"]
    assert set(zip(forward["source"], forward["target"])) == set(zip(backward["target"], backward["source"]))
    with pytest.raises(InputError, match="no ortholog table for zebrafish -> human"):
        gr.ortholog_table(Organism.ZEBRAFISH, Organism.HUMAN)


# ---------------------------------------------------------------- same-species mapping


@pytest.mark.parametrize("species", ROUND_TRIP)
@pytest.mark.parametrize("case", ["as_is", "upper", "lower"])
def test_symbols_to_ids_and_back_round_trip(species, case):
    genes = uniquely_named(species, 500, seed=1)
    symbols = {"as_is": genes["gene_name"], "upper": genes["gene_name"].str.upper(),
               "lower": genes["gene_name"].str.lower()}[case].to_numpy(dtype=object)
    forward = map_symbols_to_ids(symbols, species)
    assert list(forward.mapped) == genes["gene_id"].tolist()
    assert forward.report.n_mapped == len(genes) and forward.report.n_unresolved == 0
    expected_match = "exact" if case == "as_is" else None
    if expected_match:
        assert (forward.report.table["match"] == "exact").all()
    back = map_ids_to_symbols(forward.mapped, species)
    assert list(back.mapped) == genes["gene_name"].tolist()
    assert back.report.reference.label == gr.reference_info(species).label
    assert gr.reference_info(species).label in back.report.summary()


def test_versioned_ids_map_to_symbols():
    genes = uniquely_named("mus_musculus", 200, seed=2)
    versioned = (genes["gene_id"] + "." + genes["gene_version"]).to_numpy(dtype=object)
    mapping = map_ids_to_symbols(versioned, Organism.MOUSE)
    assert list(mapping.mapped) == genes["gene_name"].tolist()


def test_report_partitions_the_input_and_records_the_reference():
    t = gr.gene_table("human")
    y_rna = t[t["gene_name"] == "Y_RNA"]["gene_id"].min()
    names = ["TP53", "tp53", "Y_RNA", "ENSG00000141510.17", "ENSMUSG00000029580", "not_a_gene"]
    report = map_symbols_to_ids(names, "human").report
    status = dict(zip(report.table["input"], report.table["status"]))
    assert status == {"TP53": "mapped", "tp53": "duplicate", "Y_RNA": "ambiguous",
                      "ENSG00000141510.17": "duplicate", "ENSMUSG00000029580": "already_id", "not_a_gene": "unresolved"}
    assert report.table.set_index("input").loc["Y_RNA", "output"] == y_rna
    assert report.table.set_index("input").loc["ENSMUSG00000029580", "note"] == "id not in GENCODE v48"
    total = report.n_mapped + report.n_already_ids + report.n_ambiguous + report.n_duplicates + report.n_unresolved
    assert total == report.n_input == len(names)
    assert report.duplicate_groups()[report.table["output"][0]] == ["TP53", "tp53", "ENSG00000141510.17"]
    record = report.to_dict()
    assert record["reference"]["label"] == "GENCODE v48" and record["reference"]["package_version"] == gr.CXG_VERSION


def test_ids_without_symbol_are_unresolved_with_a_note():
    t = gr.gene_table("macaca_fascicularis")
    unnamed = t[t["gene_name"] == t["gene_id"]]["gene_id"].head(5).to_numpy(dtype=object)
    mapping = map_ids_to_symbols(unnamed, Organism.CRAB_EATING_MACAQUE)
    assert mapping.report.n_unresolved == 5
    assert (mapping.report.table["note"] == "gene has no symbol in Ensembl 114").all()
    assert list(mapping.mapped_or_input()) == list(unnamed)


def test_non_organism_tables_are_not_mapping_targets():
    with pytest.raises(InputError, match="ercc is not an organism"):
        map_symbols_to_ids(["ERCC-00002"], "ercc")


# ---------------------------------------------------------------- through orthologs


def test_mouse_genes_through_human_orthologs_report_the_share_kept():
    t = gr.gene_table("mouse")
    genes = t[(t["biotype"] == "protein_coding") & (t["gene_name"] != t["gene_id"])].sample(3000, random_state=3)
    mapping = map_through_orthologs(genes["gene_id"].to_numpy(dtype=object), Organism.MOUSE, Organism.HUMAN)
    report = mapping.report
    assert 0.5 < report.share_kept < 0.95  # orthology loses genes: the report must say how many
    assert report.share_kept == pytest.approx(report.n_output_genes / 3000)
    assert f"({100 * report.share_kept:.0f}% kept)" in report.summary()
    assert report.source == "GENCODE vM37 -> Ensembl 105 orthologs (celltypist) -> GENCODE v48"
    human_ids = set(gr.gene_table("human")["gene_id"])
    kept = mapping.mapped[mapping.resolved]
    assert set(kept) <= human_ids
    unresolved = report.table[report.table["status"] == "unresolved"]
    assert (unresolved["note"] != "").all()
    assert {"no human ortholog in Ensembl 105", "ortholog not one-to-one"} <= set(unresolved["note"])


def test_one_to_one_orthologs_map_to_the_human_gene_of_that_symbol():
    pairs, _ = gr.ortholog_table(Organism.MOUSE, Organism.HUMAN)
    src_n = pairs.groupby("source")["target"].transform("size")
    tgt_n = pairs.groupby("target")["source"].transform("size")
    one = pairs[(src_n == 1) & (tgt_n == 1)]
    mouse_ix, human_ix = gr.species_index("mouse"), gr.species_index("human")
    known = one["source"].str.upper().isin(mouse_ix.symbol_to_id.index)
    one = one[known & one["target"].str.upper().isin(human_ix.symbol_to_id.index)]
    one = one.sample(300, random_state=4)
    mapping = map_through_orthologs(one["source"].str.upper().to_numpy(dtype=object), Organism.MOUSE, to="symbol")
    assert list(mapping.mapped) == one["target"].str.upper().map(human_ix.canonical_symbol).tolist()
    assert mapping.report.share_kept == 1.0


def test_many_orthologs_are_dropped_or_marked_ambiguous():
    pairs, _ = gr.ortholog_table(Organism.MOUSE, Organism.HUMAN)
    counts = pairs.groupby("source")["target"].nunique()
    mouse_ix = gr.species_index("mouse")
    many = [s for s in counts[counts > 2].index if s.upper() in mouse_ix.symbol_to_id.index][:20]
    strict = map_through_orthologs(many, Organism.MOUSE, to="symbol")
    assert strict.report.n_resolved == 0 and (strict.report.table["note"] == "ortholog not one-to-one").all()
    loose = map_through_orthologs(many, Organism.MOUSE, to="symbol", one_to_one=False)
    assert loose.report.n_ambiguous > 0 and (loose.report.table["n_candidates"] > 2).all()


def test_ortholog_mapping_refuses_the_same_species_and_bad_targets():
    with pytest.raises(InputError, match="same species"):
        map_through_orthologs(["Actb"], Organism.MOUSE, Organism.MOUSE)
    with pytest.raises(InputError, match="to must be"):
        map_through_orthologs(["Actb"], Organism.MOUSE, to="entrez")


def test_importing_the_modules_reads_no_table():
    code = (
        "import czb_core.schema.gene_references as g, czb_core.schema.species, czb_core.schema.gene_mapping;"
        "print(g._read_table.cache_info().currsize, g._reference_catalog.cache_info().currsize)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "0"]

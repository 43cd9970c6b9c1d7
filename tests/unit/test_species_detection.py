"""Tests for czb_core.schema.species: id system and species from gene names, with evidence.

Test data are names sampled (seeded) from the shipped references themselves, transformed the way
datasets arrive: upper- or lower-cased, version-suffixed, mixed, spiked with another species.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from czb_core.schema import gene_references as gr
from czb_core.schema.gene_mapping import map_ids_to_symbols, map_symbols_to_ids
from czb_core.schema.species import (
    DOMINANCE,
    MIN_UNIQUE,
    SHARE_TOLERANCE,
    GeneIdSystem,
    compare_declared_organism,
    detect_species,
)
from czb_core.types import Organism

SPECIES = gr.reference_species()
# Species whose references carry many names no other reference has: symbols alone must decide them.
DISTINCT = (
    "homo_sapiens", "mus_musculus", "rattus_norvegicus", "danio_rerio", "drosophila_melanogaster",
    "caenorhabditis_elegans",
)
PRIMATES = (
    "pan_troglodytes", "gorilla_gorilla", "macaca_mulatta", "macaca_fascicularis", "callithrix_jacchus",
    "microcebus_murinus",
)


def organism_of(species: str) -> Organism:
    return gr.reference_info(species).organism


def named_genes(species: str, protein_coding: bool = False) -> pd.DataFrame:
    """Genes that have a symbol, one row per upper-cased symbol (as a dataset would list them)."""
    t = gr.gene_table(species)
    t = t[t["gene_name"] != t["gene_id"]]
    if protein_coding:
        t = t[t["biotype"] == "protein_coding"]
    return t[~t["gene_name"].str.upper().duplicated()]


def sample(frame: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    return frame.sample(n=min(n, len(frame)), random_state=seed)


def assert_consistent(d) -> None:
    """A call never comes with figures that contradict it."""
    if d.uncertain:
        assert d.organism is None
        return
    best = d.evidence[0]
    assert best.organism is d.organism
    assert best.n_unique >= MIN_UNIQUE
    assert all(best.n_unique >= DOMINANCE * e.n_unique for e in d.evidence[1:])
    assert best.share_explained >= max(e.share_explained for e in d.evidence) - SHARE_TOLERANCE


# ---------------------------------------------------------------- every shipped species


@pytest.mark.parametrize("species", SPECIES)
@pytest.mark.parametrize("versioned", [False, True])
def test_ensembl_ids_decide_every_species(species, versioned):
    table = gr.gene_table(species)
    if versioned:  # only stable ids carry versions (fly lists a few irregular ids that do not)
        table = table[gr.looks_like_gene_id(table["gene_id"])]
    ids = sample(table, 2000, seed=1)["gene_id"].to_numpy(dtype=object)
    if versioned:
        ids = np.array([f"{i}.{k % 9 + 1}" for k, i in enumerate(ids)], dtype=object)
    d = detect_species(ids)
    assert d.system is (GeneIdSystem.ENSEMBL_VERSIONED if versioned else GeneIdSystem.ENSEMBL)
    assert d.organism is organism_of(species) and not d.uncertain
    assert d.evidence[0].n_unique == len(ids) and d.n_ids == len(ids)
    assert d.reference == gr.reference_info(species).label
    assert_consistent(d)


@pytest.mark.parametrize("species", SPECIES)
@pytest.mark.parametrize("case", ["as_is", "upper", "lower"])
def test_symbols_of_every_species_never_name_a_wrong_species(species, case):
    names = sample(named_genes(species), 2000, seed=2)["gene_name"]
    names = {"as_is": names, "upper": names.str.upper(), "lower": names.str.lower()}[case]
    d = detect_species(names.to_numpy(dtype=object))
    assert d.system is GeneIdSystem.SYMBOL
    assert d.n_symbols + d.n_other == len(names)
    truth = organism_of(species)
    if d.uncertain:
        assert truth in d.candidates and d.group
    else:
        assert d.organism is truth
    if species in DISTINCT:
        assert d.organism is truth, d.describe()
    assert_consistent(d)


@pytest.mark.parametrize("species", SPECIES)
def test_mixed_ids_and_symbols(species):
    genes = sample(named_genes(species), 1000, seed=3)
    half = len(genes) // 2
    names = np.concatenate([genes["gene_id"].to_numpy()[:half], genes["gene_name"].str.upper().to_numpy()[half:]])
    d = detect_species(names)
    assert d.system is GeneIdSystem.MIXED
    assert d.organism is organism_of(species)  # the ids alone carry hundreds of unique names
    assert d.n_ids == half and d.n_symbols == len(names) - half
    assert_consistent(d)


# ---------------------------------------------------------------- the cases that matter


def test_upper_cased_mouse_symbols_are_mouse_not_human():
    # The reported case: a mouse lung matrix with upper-cased symbols. Most names are shared with
    # human (orthologs), so overlap alone says "human"; the names only mouse has decide.
    genes = sample(named_genes("mus_musculus"), 15000, seed=4)["gene_name"].str.upper()
    d = detect_species(genes.to_numpy(dtype=object))
    human, mouse = d.evidence_for(Organism.HUMAN), d.evidence_for(Organism.MOUSE)
    assert human.share_explained > 0.3  # the trap: a third or more are human symbols too
    assert d.organism is Organism.MOUSE and not d.uncertain
    assert mouse.n_unique > 20 * max(human.n_unique, 1)
    text = d.describe()
    assert f"{mouse.n_unique:,} names only mouse has" in text and "upper case" in text
    assert_consistent(d)


def test_small_mouse_panel_of_300_upper_cased_genes():
    panel = sample(named_genes("mus_musculus", protein_coding=True), 300, seed=5)["gene_name"].str.upper()
    d = detect_species(panel.to_numpy(dtype=object))
    assert d.n_names == 300
    assert d.organism is Organism.MOUSE, d.describe()
    assert_consistent(d)


def test_human_dataset_with_a_few_mouse_spike_in_genes():
    human = sample(named_genes("homo_sapiens"), 3000, seed=6)["gene_name"]
    human_keys = set(gr.species_index("human").symbol_to_id.index)
    mouse = named_genes("mus_musculus")["gene_name"]
    mouse_only = sample(mouse[~mouse.str.upper().isin(human_keys)].to_frame(), 20, seed=7)["gene_name"]
    d = detect_species(np.concatenate([human.to_numpy(), mouse_only.to_numpy()]))
    assert d.organism is Organism.HUMAN
    spiked = d.evidence_for(Organism.MOUSE)
    assert 0 < spiked.n_unique <= 20
    assert d.evidence_for(Organism.HUMAN).n_unique >= DOMINANCE * spiked.n_unique
    assert_consistent(d)


def test_a_human_mouse_mix_is_named_as_several_species_with_both_figures():
    human = sample(named_genes("homo_sapiens"), 1000, seed=8)["gene_id"]
    mouse = sample(named_genes("mus_musculus"), 1000, seed=8)["gene_id"]
    d = detect_species(np.concatenate([human.to_numpy(), mouse.to_numpy()]))
    assert d.uncertain and {Organism.HUMAN, Organism.MOUSE} <= set(d.candidates)
    assert d.group == "" and d.candidates == (Organism.HUMAN, Organism.MOUSE)
    text = d.describe()
    assert "names of several species" in text
    assert "1,000 only human has" in text and "1,000 only mouse has" in text


@pytest.mark.parametrize("species", PRIMATES)
def test_primates_by_shared_symbols_are_uncertain_but_ids_decide(species):
    # Symbols of this primate that human has too: no name is unique, so the honest answer is
    # "primate, uncertain" with the species among the candidates; its Ensembl ids decide at once.
    human_keys = set(gr.species_index("human").symbol_to_id.index)
    genes = named_genes(species, protein_coding=True)
    genes = sample(genes[genes["gene_name"].str.upper().isin(human_keys)], 300, seed=9)
    by_symbol = detect_species(genes["gene_name"].to_numpy(dtype=object))
    assert by_symbol.uncertain and by_symbol.organism is None
    assert by_symbol.group in ("primate", "macaque")
    assert organism_of(species) in by_symbol.candidates and Organism.HUMAN in by_symbol.candidates
    assert by_symbol.describe().startswith(f"gene symbols (upper case), {by_symbol.group}, uncertain: ")
    by_id = detect_species(genes["gene_id"].to_numpy(dtype=object))
    assert by_id.organism is organism_of(species) and not by_id.uncertain


def test_few_genes_are_uncertain():
    d = detect_species(sample(named_genes("mus_musculus"), 8, seed=10)["gene_id"].to_numpy())
    assert d.uncertain and d.candidates == (Organism.MOUSE,)
    assert "needs 10 unique names" in d.describe()


def test_entrez_numbers_are_detected_named_and_not_mapped():
    rng = np.random.default_rng(11)
    numbers = rng.choice(np.arange(1, 120_000), size=500, replace=False).astype(str)
    d = detect_species(numbers)
    assert d.system is GeneIdSystem.ENTREZ and d.n_numbers == 500
    assert d.uncertain and d.organism is None and d.evidence == ()
    assert "Entrez" in d.describe() and "not mapped" in d.describe()
    report = map_symbols_to_ids(numbers, Organism.HUMAN).report
    assert report.n_unresolved == 500 and report.n_mapped == 0


def test_row_numbers_are_not_genes():
    d = detect_species(np.arange(400).astype(str))
    assert d.positional and d.system is GeneIdSystem.UNKNOWN and d.uncertain
    assert "row numbers" in d.describe()


def test_spike_ins_are_counted_apart():
    human = sample(gr.gene_table("human"), 500, seed=12)["gene_id"]
    ercc = gr.gene_table("ercc")["gene_id"]
    sars = gr.gene_table("sars_cov_2")["gene_id"]
    d = detect_species(np.concatenate([human, ercc, sars]))
    assert d.n_spike_ins == len(ercc) + len(sars) and d.n_ids == len(human)
    assert d.organism is Organism.HUMAN and d.system is GeneIdSystem.ENSEMBL
    assert f"plus {len(ercc) + len(sars):,} spike-in" in d.describe()


def test_ids_of_a_species_without_a_table_are_named_by_prefix():
    frog = [f"ENSXETG{n:011d}" for n in range(1, 201)]
    d = detect_species(frog)
    assert d.organism is Organism.TROPICAL_CLAWED_FROG and d.reference == ""
    assert "its id prefix explains 100%" in d.describe()


def test_empty_and_blank_input():
    d = detect_species([])
    assert d.n_names == 0 and d.system is GeneIdSystem.UNKNOWN and d.uncertain
    assert detect_species(["", None, "  "]).n_names == 0


def test_result_is_frozen_and_serialisable():
    d = detect_species(sample(gr.gene_table("mouse"), 100, seed=13)["gene_id"].to_numpy())
    with pytest.raises(AttributeError):
        d.organism = Organism.HUMAN
    out = d.to_dict()
    assert out["organism"] == "MOUSE" and out["reference"] == gr.reference_info("mouse").label
    assert out["description"] == d.describe()


# ---------------------------------------------------------------- a user-set organism


def test_declared_organism_that_contradicts_strong_evidence_warns_with_both_figures():
    genes = sample(named_genes("mus_musculus"), 5000, seed=14)["gene_name"].str.upper()
    d = detect_species(genes.to_numpy(dtype=object))
    check = compare_declared_organism(d, Organism.HUMAN)
    assert check.contradicts and check.detected is Organism.MOUSE
    mouse, human = d.evidence_for(Organism.MOUSE), d.evidence_for(Organism.HUMAN)
    assert check.detected_evidence == mouse and check.declared_evidence == human
    assert f"{mouse.n_unique:,} only mouse has" in check.message
    assert f"{human.n_unique:,} only human has" in check.message
    assert not compare_declared_organism(d, Organism.MOUSE).contradicts


def test_declared_organism_is_not_contradicted_by_uncertain_evidence():
    human_keys = set(gr.species_index("human").symbol_to_id.index)
    genes = named_genes("pan_troglodytes", protein_coding=True)
    genes = sample(genes[genes["gene_name"].str.upper().isin(human_keys)], 300, seed=15)
    d = detect_species(genes["gene_name"].to_numpy(dtype=object))
    check = compare_declared_organism(d, Organism.HUMAN)
    assert not check.contradicts and check.detected is None
    assert "cannot decide" in check.message


# ---------------------------------------------------------------- detection feeds mapping


@pytest.mark.parametrize("species", ["mus_musculus", "danio_rerio", "rattus_norvegicus"])
def test_detected_species_maps_its_own_upper_cased_symbols(species):
    genes = sample(named_genes(species, protein_coding=True), 400, seed=16)
    d = detect_species(genes["gene_name"].str.upper().to_numpy(dtype=object))
    mapping = map_symbols_to_ids(genes["gene_name"].str.upper().to_numpy(dtype=object), d.organism)
    assert mapping.report.reference.label == d.reference
    assert mapping.report.n_unresolved == 0
    back = map_ids_to_symbols(mapping.mapped, d.organism)
    assert list(back.mapped) == genes["gene_name"].tolist()

"""Every registered variant describes itself, and the description agrees with its config.yaml; a config that
does not fit its runner is refused at discovery, naming the file."""

from __future__ import annotations

import dataclasses

import pytest

from czb_core.errors import ConfigError
from czb_core.models.description import Scaling, baseline_model, describe
from czb_core.models.registry import discover_models, get_model
from czb_core.types import Organism, Output

VARIANTS = [(name, variant) for name, config in discover_models().items() for variant in config.variants]


@pytest.mark.parametrize("name, variant", VARIANTS)
def test_every_variant_describes_itself_within_its_card(name, variant):
    config = get_model(name)
    description = describe(config, variant)
    assert (description.model, description.variant) == (name, variant)
    card = {entry.split()[0] for entry in config.card.organisms}
    assert description.organisms is None or {o.latin_name for o in description.organisms} <= card
    assert set(description.weight_entries) <= set(config.variant(variant).weights) | {"model"}
    assert describe(config, variant) is description  # read once


def test_the_descriptions_say_what_the_service_used_to_list_by_name():
    assert baseline_model(discover_models()) == "pca" and describe(get_model("pca")).baseline
    outputs = {name: describe(get_model(name)).output for name in discover_models()}
    assert [name for name, output in outputs.items() if output == Output.PREDICTION] == ["scgenept"]
    assert describe(get_model("pca")).scaling == Scaling.FITTED_OVER_BLOCKS
    assert describe(get_model("geneformer")).scaling == Scaling.CELLS_APART
    assert describe(get_model("scvi"), "fit").scaling == Scaling.WHOLE_DATASET
    assert describe(get_model("uce")).organisms[:2] == (Organism.HUMAN, Organism.MOUSE)
    assert describe(get_model("geneformer")).gene_naming == "ensembl"


def test_a_variant_without_a_resource_its_runner_reads_is_refused_naming_the_file():
    config = get_model("uce")
    variant = config.variant()
    resources = {k: v for k, v in variant.resources.items() if k != "n_heads"}
    broken = dataclasses.replace(config, variants={variant.name: dataclasses.replace(variant, resources=resources)})
    with pytest.raises(ConfigError, match=r"model_runners/uce/config.yaml: variant 4l lacks resources \['n_heads'\]"):
        describe(broken)


def test_a_card_that_does_not_list_an_organism_the_runner_reads_is_refused():
    config = get_model("geneformer")
    broken = dataclasses.replace(config, card=dataclasses.replace(config.card, organisms=["mus_musculus"]))
    with pytest.raises(ConfigError, match="reads \\['homo_sapiens'\\], which card.organisms does not list"):
        describe(broken)


def test_exactly_one_baseline():
    models = dict(discover_models())
    with pytest.raises(ConfigError, match="exactly one model must be the baseline"):
        baseline_model({k: v for k, v in models.items() if k != "pca"})

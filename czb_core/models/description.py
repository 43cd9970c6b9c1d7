"""One typed description per model variant: what it outputs, which organisms and gene naming it reads, which
weight entries it downloads, and how it scales; built once from the runner class and checked against the
model's `config.yaml`.

The service, the pages and the tests ask the description, never a list of model names: a prediction
model gets no UMAP and no embedding metrics because its description says `Output.PREDICTION`, the baseline
beside every run is the model whose description says `baseline`, and a variant that lacks a resource its
runner reads is refused at discovery, with the file to fix, not when a job reaches it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Optional

from czb_core.errors import ConfigError
from czb_core.types import ModelType, Organism, Output

if TYPE_CHECKING:
    from czb_core.models.registry import ModelConfig


class Scaling(str, Enum):
    FITTED_OVER_BLOCKS = "fitted over row blocks"  # a fit that reads the matrix block by block (larger than memory)
    CELLS_APART = "cells embedded apart"  # chunks and shards give the whole run's embedding
    WHOLE_DATASET = "whole dataset only"  # fitted on, or drawn from, all cells at once


@dataclass(frozen=True)
class ModelDescription:
    model: str
    variant: str
    output: Output
    baseline: bool
    organisms: Optional[tuple[Organism, ...]]  # None: any organism
    gene_naming: Optional[str]  # "ensembl", "symbol", or None for any naming
    weight_entries: tuple[str, ...]  # roles of the weights the variant downloads (or an admin imports)
    scaling: Scaling  # with the default parameters (a parameter may make a run use all cells at once)


# (id of the config, variant) -> (that config, its description). Keeping the config keeps its id from being
# reused by another, so a test's config of the same name is never mistaken for the registry's.
_DESCRIPTIONS: dict[tuple[int, str], tuple[ModelConfig, ModelDescription]] = {}


def describe(config: ModelConfig, variant: Optional[str] = None) -> ModelDescription:
    """The description of `variant` (default: the model's default variant), checked against config.yaml;
    read once per config and variant (the pages ask it for every job they list)."""
    name = config.variant(variant).name
    key = (id(config), name)
    if key not in _DESCRIPTIONS:
        _DESCRIPTIONS[key] = (config, _describe(config, name))
    return _DESCRIPTIONS[key][1]


def _describe(config: ModelConfig, variant: str) -> ModelDescription:
    cls = config.load_implementation()
    variant_config = config.variant(variant)
    runner = cls(config, variant)  # checks the variant's resources (`check_resources`)
    needs = runner.data_needs()
    description = ModelDescription(
        model=config.name, variant=variant, output=Output(cls.output),
        baseline=config.model_type == ModelType.BASELINE,
        organisms=None if needs.organisms is None else tuple(needs.organisms), gene_naming=needs.gene_naming,
        weight_entries=tuple(variant_config.weights) or (("model",) if variant_config.weights_from else ()),
        scaling=(Scaling.FITTED_OVER_BLOCKS if runner.streams else
                 Scaling.CELLS_APART if runner.embeds_cells_apart else Scaling.WHOLE_DATASET),
    )
    card = {name.split()[0] for name in config.card.organisms}
    if description.organisms is None and "any" not in card:
        raise ConfigError(f"model_runners/{config.name}/config.yaml: the card lists {sorted(card)}, but variant "
                          f"{variant} reads any organism; add `any` to card.organisms")
    unlisted = [o.latin_name for o in description.organisms or () if o.latin_name not in card]
    if unlisted:
        raise ConfigError(f"model_runners/{config.name}/config.yaml: variant {variant} reads {unlisted}, which "
                          "card.organisms does not list")
    return description


def check_resources(config: ModelConfig, variant: str, required: tuple[str, ...]) -> None:
    """A ConfigError naming the file to fix when `variant` lacks a resource its runner reads."""
    missing = [key for key in required if key not in config.variant(variant).resources]
    if missing:
        raise ConfigError(f"model_runners/{config.name}/config.yaml: variant {variant} lacks resources {missing}, "
                          f"which {config.implementation} reads")


def baseline_model(configs: dict[str, ModelConfig]) -> str:
    """The name of the one baseline model among `configs` (the run beside every model's run)."""
    baselines = [name for name, config in configs.items() if config.model_type == ModelType.BASELINE]
    if len(baselines) != 1:
        raise ConfigError(f"exactly one model must be the baseline (model_type BASELINE); found {baselines}")
    return baselines[0]

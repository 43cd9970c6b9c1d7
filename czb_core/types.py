"""The vocabulary shared by datasets, validators and models, as in cz-benchmarks.

`ModelType` and `DataType` values equal their names, so `ModelType.SCVI == "SCVI"` holds and the
enums round-trip through JSON, SQLite and h5ad `uns` without a custom encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd


class ModelType(str, Enum):
    """Which model produced an output. BASELINE keys PCA and other baselines."""

    BASELINE = "BASELINE"
    SCVI = "SCVI"
    SCGPT = "SCGPT"
    GENEFORMER = "GENEFORMER"
    SCGENEPT = "SCGENEPT"
    UCE = "UCE"
    AIDO = "AIDO"
    TRANSCRIPTFORMER = "TRANSCRIPTFORMER"

    def __str__(self) -> str:
        return self.value


class Output(str, Enum):
    """What a model gives for a dataset."""

    EMBEDDING = "embedding"  # cells x dims: UMAP, embedding metrics, the baseline beside it
    PREDICTION = "prediction"  # predicted expression: read on the Results page, scored as a prediction


@dataclass(frozen=True)
class DataTypeSpec:
    """What a DataType holds: the Python type of its value and whether models read or write it."""

    name: str
    dtype: Any
    description: str
    is_input: bool


class DataType(Enum):
    """Typed slots on a dataset; each member carries its `DataTypeSpec`."""

    METADATA = DataTypeSpec("metadata", pd.DataFrame, "Cell metadata (obs)", True)
    ANNDATA = DataTypeSpec("anndata", ad.AnnData, "The AnnData object", True)
    ORGANISM = DataTypeSpec("organism", "Organism", "The organism of the cells", True)
    EMBEDDING = DataTypeSpec("embedding", np.ndarray, "Cell embedding, cells x dims", False)
    CONDITION_KEY = DataTypeSpec("condition_key", str, "obs column of perturbation conditions", True)
    SPLIT_KEY = DataTypeSpec("split_key", str, "obs column of train/test/val splits", True)
    PERTURBATION_PRED = DataTypeSpec(
        "perturbation_pred", tuple, "(condition, predicted expression DataFrame)", False
    )
    PERTURBATION_TRUTH = DataTypeSpec(
        "perturbation_truth", dict, "condition -> true expression DataFrame", True
    )

    @property
    def spec(self) -> DataTypeSpec:
        return self.value

    @property
    def dtype(self) -> Any:
        return Organism if self.value.dtype == "Organism" else self.value.dtype

    @property
    def is_input(self) -> bool:
        return self.value.is_input

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            return self.name == other
        return super().__eq__(other)

    def __hash__(self) -> int:
        return hash(self.name)


class Organism(Enum):
    """Value = (latin name, Ensembl gene-id prefix). The prefix lets us detect organism from ids."""

    HUMAN = ("homo_sapiens", "ENSG")
    MOUSE = ("mus_musculus", "ENSMUSG")
    TROPICAL_CLAWED_FROG = ("xenopus_tropicalis", "ENSXETG")
    AFRICAN_CLAWED_FROG = ("xenopus_laevis", "ENSXLAG")
    ZEBRAFISH = ("danio_rerio", "ENSDARG")
    MOUSE_LEMUR = ("microcebus_murinus", "ENSMICG")
    WILD_BOAR = ("sus_scrofa", "ENSSSCG")
    CRAB_EATING_MACAQUE = ("macaca_fascicularis", "ENSMFAG")
    RHESUS_MACAQUE = ("macaca_mulatta", "ENSMMUG")
    PLATYPUS = ("ornithorhynchus_anatinus", "ENSOANG")
    OPOSSUM = ("monodelphis_domestica", "ENSMODG")
    GORILLA = ("gorilla_gorilla", "ENSGGOG")
    CHIMPANZEE = ("pan_troglodytes", "ENSPTRG")
    MARMOSET = ("callithrix_jacchus", "ENSCJAG")
    CHICKEN = ("gallus_gallus", "ENSGALG")
    RABBIT = ("oryctolagus_cuniculus", "ENSOCUG")
    FRUIT_FLY = ("drosophila_melanogaster", "FBgn")
    RAT = ("rattus_norvegicus", "ENSRNOG")
    NAKED_MOLE_RAT = ("heterocephalus_glaber", "ENSHGLG")
    C_ELEGANS = ("caenorhabditis_elegans", "WBGene")
    YEAST = ("saccharomyces_cerevisiae", "")
    MALARIA_PARASITE = ("plasmodium_falciparum", "PF3D7")
    SEA_LAMPREY = ("petromyzon_marinus", "ENSPMAG")
    FRESHWATER_SPONGE = ("spongilla_lacustris", "ENSLPGG")
    CORAL = ("stylophora_pistillata", "LOC")
    SEA_URCHIN = ("lytechinus_variegatus", "LOC/GeneID")

    @property
    def latin_name(self) -> str:
        return self.value[0]

    @property
    def prefix(self) -> str:
        return self.value[1]

    def __str__(self) -> str:
        return self.latin_name

    @classmethod
    def parse(cls, name: str) -> "Organism":
        """Accept `HUMAN`, `human`, `homo_sapiens` or `Homo sapiens`; raise ValueError listing choices."""
        key = name.strip().lower().replace(" ", "_")
        for org in cls:
            if key in (org.name.lower(), org.latin_name):
                return org
        choices = ", ".join(o.name.lower() for o in cls)
        raise ValueError(f"unknown organism {name!r}; choose one of: {choices}")

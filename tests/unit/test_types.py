import pandas as pd
import pytest

from czb_core.types import DataType, ModelType, Organism


def test_model_type_compares_equal_to_its_name():
    assert ModelType.SCVI == "SCVI"
    assert ModelType("GENEFORMER") is ModelType.GENEFORMER


def test_data_type_specs_say_input_or_output():
    assert DataType.ANNDATA.is_input and not DataType.EMBEDDING.is_input
    assert DataType.METADATA.dtype is pd.DataFrame
    assert DataType.ORGANISM.dtype is Organism
    assert DataType.EMBEDDING == "EMBEDDING"


def test_organism_carries_latin_name_and_prefix():
    assert Organism.MOUSE.latin_name == "mus_musculus" and Organism.MOUSE.prefix == "ENSMUSG"
    assert Organism.parse("Homo sapiens") is Organism.HUMAN
    assert Organism.parse("mouse") is Organism.MOUSE
    with pytest.raises(ValueError, match="unknown organism 'martian'"):
        Organism.parse("martian")

import pytest

from czb_core.errors import ConfigError
from czb_core.models.registry import _parse, discover_models, get_model
from czb_core.types import ModelType


def test_pca_baseline_is_discovered_first_with_its_card():
    models = discover_models()
    first = next(iter(models.values()))
    assert first.name == "pca" and first.model_type is ModelType.BASELINE
    assert first.card.embedding_dim == 50
    implementation = first.load_implementation()
    assert implementation.__name__ == "PCABaseline"
    defaults = implementation.param_schema(first.variant()).defaults()
    assert {k: defaults[k] for k in ("n_top_genes", "n_comps")} == {"n_top_genes": 3000, "n_comps": 50}


def test_unknown_model_and_variant_list_the_choices():
    with pytest.raises(ConfigError, match="unknown model 'nope'; available: pca"):
        get_model("nope")
    with pytest.raises(ConfigError, match="no variant 'huge'; choose one of: default"):
        get_model("pca").variant("huge")


def test_malformed_config_names_the_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("display_name: X\nmodels: {a: {}}\n")  # no model_type
    with pytest.raises(ConfigError, match="malformed model config"):
        _parse("x", path)


def test_embedding_size_is_stated_per_variant_where_it_differs():
    scvi = get_model("scvi")
    assert scvi.embedding_dim("fit") == 10 and scvi.embedding_dim("homo_sapiens") == 50
    assert get_model("pca").embedding_dim() == get_model("pca").card.embedding_dim

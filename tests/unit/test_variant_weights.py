"""The weights of a variant: its entries, the main one, the state of each in the cache, and the message
when some are missing (a stand-in cache says which addresses it holds)."""

from __future__ import annotations

from czb_core.models.registry import get_model
from czb_core.models.variant_weights import VariantWeights
from czb_core.models.weights import imported_uri


class HeldCache:
    def __init__(self, *held: str):
        self.held = set(held)

    def is_cached(self, uri: str) -> bool:
        return uri in self.held


def test_a_variant_in_parts_names_the_parts_it_lacks():
    config = get_model("geneformer")
    entries = VariantWeights.of(config, "gf-6L-30M-i2048", HeldCache()).entries
    assert set(entries) == {"model", "dictionaries"}
    partly = VariantWeights.of(config, "gf-6L-30M-i2048", HeldCache(entries["dictionaries"]))
    assert partly.main_role == "model" and partly.main_uri == entries["model"]
    assert partly.cached() == {"model": False, "dictionaries": True} and partly.missing() == ["model"]
    assert partly.status() == "partly cached (model missing)"
    assert "(model)" in partly.missing_message() and "Weights page" in partly.missing_message()
    whole = VariantWeights.of(config, "gf-6L-30M-i2048", HeldCache(*entries.values()))
    assert whole.status() == "cached" and whole.missing_message() is None


def test_a_variant_without_a_download_has_its_import_entry():
    config = get_model("scgpt")
    weights = VariantWeights.of(config, "blood", HeldCache())
    assert not weights.has_download and weights.entries == {"model": imported_uri("scgpt", "blood")}
    assert weights.status() == "import needed"
    message = weights.missing_message()
    assert "no weights to download" in message and config.variant("blood").weights_from in message
    assert "czb weights import scgpt blood FOLDER" in message
    assert VariantWeights.of(config, "blood", HeldCache(imported_uri("scgpt", "blood"))).status() == "cached"


def test_a_variant_without_weights_needs_none():
    weights = VariantWeights.of(get_model("pca"), None, HeldCache())
    assert weights.entries == {} and weights.main_uri is None
    assert weights.status() == "not needed" and weights.missing_message() is None

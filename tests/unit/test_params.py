"""The parameter schema: one declaration gives typed values, defaults, checks and the CLI options."""

import pytest

from czb_core.errors import ConfigError
from czb_core.models.params import Param, ParamSchema, common_params, parse_bool


def schema(variant_defaults=None) -> ParamSchema:
    return ParamSchema(common_params(32) + (
        Param("mode", "str", "cls", "pooling", choices=("cls", "mean")),
        Param("layers", "int", None, "layers to keep", minimum=1),
        Param("genes", "list", (), "genes", parse=lambda v: tuple(v.split(",")) if isinstance(v, str) else tuple(v)),
        Param("fast", "bool", False, "go fast"),
    ), variant_defaults)


def test_defaults_come_from_the_model_then_the_variant():
    assert schema().defaults() == {"seed": 0, "batch_size": 32, "mode": "cls", "layers": None, "genes": (),
                                   "fast": False}
    assert schema({"mode": "mean"}).default("mode") == "mean"
    with pytest.raises(ConfigError, match=r"config.yaml sets params \['depth'\]"):
        schema({"depth": 3})


def test_values_from_text_are_typed_and_checked():
    values = schema().resolve({"batch_size": "8", "genes": "A,B", "fast": "yes", "layers": 2.0})
    assert values["batch_size"] == 8 and values["genes"] == ("A", "B") and values["fast"] is True
    assert values["layers"] == 2
    with pytest.raises(ConfigError, match="mode must be cls or mean, got 'max'"):
        schema().resolve({"mode": "max"})
    with pytest.raises(ConfigError, match="batch_size must be at least 1, got 0"):
        schema().resolve({"batch_size": 0})
    with pytest.raises(ConfigError, match=r"layers=2.5: 2.5 is not a whole number"):
        schema().resolve({"layers": 2.5})
    with pytest.raises(ConfigError, match=r"no parameter 'depth' \(known: seed, batch_size, mode"):
        schema().resolve({"depth": 1})


def test_changed_names_only_what_differs_from_the_defaults():
    s = schema()
    assert s.changed(s.resolve({"batch_size": 32, "mode": "mean"})) == {"mode": "mean"}
    assert s.changed(s.resolve({})) == {}


def test_argv_is_parsed_with_unknown_options_tolerated():
    s = schema()
    assert s.from_argv(["--mode", "mean", "--unknown", "1", "--seed", "5"]) == {"mode": "mean", "seed": "5"}
    assert s.resolve(s.from_argv(["--seed", "5"]))["seed"] == 5


def test_parse_bool_refuses_anything_else():
    assert parse_bool("On") is True and parse_bool("0") is False
    with pytest.raises(ValueError, match="expected true or false"):
        parse_bool("maybe")

"""Model parameters, each declared once: type, default, allowed values and help.

A runner lists its `Param`s; the CLI's parser, the Run page's form, the job spec and validation are all
derived from that list, so a parameter cannot mean one thing on the command line and another in the app.
The device is not a parameter (where a run happens does not change what it computes), and every model
takes `seed` and `batch_size`, with one default batch size per model.

No parameter names a file, folder or URL. A browser user sets parameters on the Run page, and a value the
server would open or request (`s3://...`, `/etc/...`, `~/...`, `../...`) would let that user read server
files or make the server call any address. Weights and other model resources come from the variant's
`config.yaml` or an admin's import; `Param.convert` refuses any text value that looks like a location, so a
runner cannot bring such a parameter back.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from czb_core.errors import ConfigError
from czb_core.models.inference import PRECISION_HELP, PRECISIONS


def parse_bool(value: Any) -> bool:
    """`--param early_stopping=true` arrives as text."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


# scheme:// (or scheme:/), an absolute POSIX or Windows path, a home folder, or a `..` segment
_LOCATION = re.compile(r"^\s*(?:[A-Za-z][A-Za-z0-9+.-]*:/|[/\\~]|[A-Za-z]:[/\\])|(?:^|[/\\])\.\.(?:[/\\]|$)")


def names_a_location(text: str) -> bool:
    """Whether `text` reads as a URL or a filesystem path that a server would open."""
    return bool(_LOCATION.search(text))


def _texts(value: Any) -> list[str]:
    """The text inside a converted value: itself, the items of a list, the keys and values of a mapping."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [t for pair in value.items() for item in pair for t in _texts(item)]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _texts(item)]
    return []


def parse_list(value: Any) -> tuple[str, ...]:
    """`"A, B"` or `["A", "B"]` -> `("A", "B")`; empty entries dropped."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(str(item).strip() for item in items if str(item).strip())


@dataclass(frozen=True)
class Param:
    """One parameter. `kind` is int, float, str, bool or "list" (a comma-separated text or a sequence),
    or "mapping" (KEY=VALUE pairs); `parse` turns text or a Python value into the value the runner uses."""

    name: str
    kind: str
    default: Any
    help: str
    label: str = ""
    choices: Optional[tuple] = None
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    parse: Optional[Callable[[Any], Any]] = None  # for "list"/"mapping" and other structured values
    obs_column: bool = False  # the form offers the dataset's obs columns
    extra_options: tuple = ()  # offered beside the obs columns (e.g. a constant batch)

    @property
    def title(self) -> str:
        return self.label or self.name.replace("_", " ").capitalize()

    def convert(self, value: Any) -> Any:
        """The typed value, or ConfigError naming the parameter and what it accepts."""
        if value is None:
            return None
        try:
            if self.parse is not None:
                value = self.parse(value)
            elif self.kind == "list":
                value = parse_list(value)
            elif self.kind == "bool":
                value = parse_bool(value)
            elif self.kind == "int":
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError(f"{value} is not a whole number")
                value = int(value)
            elif self.kind == "float":
                value = float(value)
            elif self.kind == "str":
                value = str(value).strip()
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"parameter {self.name}={value!r}: {exc}") from None
        if any(names_a_location(text) for text in _texts(value)):
            raise ConfigError(f"parameter {self.name}={value!r}: a run parameter never names a file, folder or URL; "
                              "weights and model files come from the model's config or an admin's import "
                              "(the Weights page)")
        if self.choices is not None and value not in self.choices:
            choices = [str(c) for c in self.choices]
            allowed = " or ".join([", ".join(choices[:-1]), choices[-1]] if len(choices) > 1 else choices)
            raise ConfigError(f"{self.name} must be {allowed}, got {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise ConfigError(f"parameter {self.name} must be at least {self.minimum}, got {value}")
        if self.maximum is not None and value > self.maximum:
            raise ConfigError(f"parameter {self.name} must be at most {self.maximum}, got {value}")
        return value


def common_params(default_batch_size: int) -> tuple[Param, ...]:
    """What every model takes."""
    return (
        Param("seed", "int", 0, "seed of every random step; recorded in the run record", label="Seed"),
        Param("batch_size", "int", default_batch_size,
              "cells per batch; a CUDA out-of-memory error halves it and retries", label="Batch size", minimum=1),
    )


def precision_param(default: str = "auto") -> Param:
    """The one precision parameter of every model that runs a network (the engine decides what it means)."""
    return Param("precision", "str", default, PRECISION_HELP, label="Precision", choices=PRECISIONS)


class ParamSchema:
    """The ordered parameters of one model variant and how to read values for them."""

    def __init__(self, params: Iterable[Param], variant_defaults: Optional[Mapping[str, Any]] = None):
        self.params = {p.name: p for p in params}
        unknown = sorted(set(variant_defaults or {}) - set(self.params))
        if unknown:
            raise ConfigError(f"config.yaml sets params {unknown} that the model does not declare")
        self.variant_defaults = dict(variant_defaults or {})

    def __iter__(self):
        return iter(self.params.values())

    def __contains__(self, name: str) -> bool:
        return name in self.params

    def default(self, name: str) -> Any:
        param = self.params[name]
        return param.convert(self.variant_defaults.get(name, param.default))

    def defaults(self) -> dict[str, Any]:
        return {name: self.default(name) for name in self.params}

    def suggested(self, columns: Mapping[str, Optional[str]]) -> dict[str, Any]:
        """The defaults, with a detected obs column (e.g. {"batch_key": "batch"}) for each column parameter
        the model leaves empty: a form then starts from what the dataset holds, and a run that keeps the
        suggestion records it as a chosen value."""
        values = self.defaults()
        for name, column in columns.items():
            param = self.params.get(name)
            if column and param is not None and param.obs_column and not values[name]:
                values[name] = param.convert(column)
        return values

    def resolve(self, given: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
        """Defaults (the model's, then the variant's) overridden by `given`; every value typed and checked."""
        given = dict(given or {})
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            raise ConfigError(f"no parameter {', '.join(map(repr, unknown))} (known: {', '.join(self.params)})")
        values = self.defaults()
        for name, value in given.items():
            if value is not None:
                values[name] = self.params[name].convert(value)
        return values

    def changed(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Only the values that differ from the defaults: what a job spec needs to name a run."""
        defaults = self.defaults()
        return {k: v for k, v in values.items() if k in self.params and defaults.get(k) != v}

    def add_arguments(self, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        """`--name` options for an argparse parser, as the cz-benchmarks `create_parser` had them."""
        for param in self:
            parser.add_argument(f"--{param.name}", default=None, help=param.help)
        return parser

    def from_argv(self, argv: Sequence[str]) -> dict[str, Any]:
        """Values named on a command line; unknown options are tolerated, as in the reference."""
        parser = self.add_arguments(argparse.ArgumentParser(add_help=False))
        args, _unknown = parser.parse_known_args(list(argv))
        return {k: v for k, v in vars(args).items() if v is not None}

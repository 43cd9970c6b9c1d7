"""The published tokenizers as (Fg, Fe, Fc) presets, and parsing of a tokenizer named on a command line.

Presets use the learned identity Fg, so they differ only in how expression and order are encoded:
- geneformer: no value embedding, expression order (median-normalised), up to 2,048 genes;
- scgpt: quantile bins (50), random order, up to 1,200;
- scbert: integer bins (7), random order, up to 1,200;
- scfoundation: auto-discretisation (100 bins), random order, up to 1,200;
- uce: no value embedding, 924 genes resampled by log1p(value), grouped by chromosome, up to 1,024.
A composed tokenizer is written `fg=KIND[:PATH],fe=KIND,fc=KIND[,max=N][,reduce=sum|identity]`.
"""

from __future__ import annotations

from czb_core.errors import ConfigError
from czb_core.tokenizer_lab.fc import FcSpec
from czb_core.tokenizer_lab.fe import FeSpec
from czb_core.tokenizer_lab.fg import FgSpec
from czb_core.tokenizer_lab.sentences import TokenizerSpec

PRESETS = {
    "geneformer": TokenizerSpec("geneformer", FgSpec("identity"), FeSpec("zero"),
                                FcSpec("expression", "truncate", "sum", 2048, median_normalise=True)),
    "scgpt": TokenizerSpec("scgpt", FgSpec("identity"), FeSpec("quantile"), FcSpec("random", "truncate", "sum", 1200)),
    "scbert": TokenizerSpec("scbert", FgSpec("identity"), FeSpec("integer"), FcSpec("random", "truncate", "sum", 1200)),
    "scfoundation": TokenizerSpec("scfoundation", FgSpec("identity"), FeSpec("autobin"),
                                  FcSpec("random", "truncate", "sum", 1200)),
    "uce": TokenizerSpec("uce", FgSpec("identity"), FeSpec("zero"),
                         FcSpec("chromosome", "uce", "identity", 1024, sample_size=924)),
}

# Fc names accepted on a command line -> (order, tailor, reduce, default max length, median-normalised)
FC_CHOICES = {
    "expression": ("expression", "truncate", "sum", 2048, False),
    "expression-median": ("expression", "truncate", "sum", 2048, True),
    "random": ("random", "truncate", "sum", 1200, False),
    "chromosome": ("chromosome", "truncate", "sum", 2048, False),
    "resample": ("expression", "resample", "sum", 2048, False),
    "uce": ("chromosome", "uce", "identity", 1024, False),
}


def make_fg(text: str) -> FgSpec:
    kind, _, path = text.partition(":")
    try:
        return FgSpec(kind.strip(), path.strip() or None)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def make_fe(text: str) -> FeSpec:
    try:
        return FeSpec(text.strip())
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def make_fc(text: str, max_length: int | None = None, reduce: str | None = None) -> FcSpec:
    if text not in FC_CHOICES:
        raise ConfigError(f"Fc {text!r} is not one of {', '.join(FC_CHOICES)}")
    order, tailor, default_reduce, default_max, median = FC_CHOICES[text]
    try:
        return FcSpec(order, tailor, reduce or default_reduce, max_length or default_max, median)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def compose(fg: str = "identity", fe: str = "zero", fc: str = "expression", max_length: int | None = None,
            reduce: str | None = None, name: str | None = None) -> TokenizerSpec:
    """A tokenizer from its three parts, named after them unless `name` is given."""
    label = name or f"fg={fg},fe={fe},fc={fc}" + (f",max={max_length}" if max_length else "") + (
        f",reduce={reduce}" if reduce else "")
    return TokenizerSpec(label, make_fg(fg), make_fe(fe), make_fc(fc, max_length, reduce))


def parse_tokenizer(text: str) -> TokenizerSpec:
    """A preset name, or `fg=...,fe=...,fc=...[,max=N][,reduce=...]`."""
    text = text.strip()
    if text.lower() in PRESETS:
        return PRESETS[text.lower()]
    if "=" not in text:
        raise ConfigError(f"unknown tokenizer {text!r}; presets: {', '.join(PRESETS)}; or compose one as "
                          "fg=identity,fe=quantile,fc=random")
    parts = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep or key not in ("fg", "fe", "fc", "max", "reduce"):
            raise ConfigError(f"tokenizer part {item!r} must be fg=, fe=, fc=, max= or reduce=")
        parts[key] = value.strip()
    try:
        max_length = int(parts["max"]) if "max" in parts else None
    except ValueError:
        raise ConfigError(f"max={parts['max']!r} is not a whole number") from None
    return compose(parts.get("fg", "identity"), parts.get("fe", "zero"), parts.get("fc", "expression"),
                   max_length, parts.get("reduce"), name=text)

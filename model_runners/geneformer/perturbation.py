"""The user-facing form of in-silico perturbation (cellarium-ml's Geneformer interface).

Parameters arrive as text from the CLI, the app or a job spec (argparse converts `--param` strings
with these functions as their `type`), or as Python lists/dicts from code; both give the same result:

- `feature_deletion`: genes, comma-separated (`"ENSG00000141510,MYC"`) or a list.
- `feature_activation`: genes in rank order, first = top (same forms).
- `feature_map`: `GENE=TOKEN` pairs, comma-separated (`"TP53=<mask>,MYC=0"`) or a dict; TOKEN is a token
  id or a special token's name (`<mask>`, `<pad>`).

Genes are Ensembl ids (a version suffix is fine) or symbols; both go through Geneformer's mapping
dictionary, exactly like the dataset's gene names.
"""

from __future__ import annotations

from typing import Any, Optional

from czb_core.errors import ConfigError
from czb_core.models.params import parse_list
from model_runners.geneformer.dictionaries import GeneDictionaries
from model_runners.geneformer.tokenizer import Perturbation


def token_map(value: Any) -> dict[str, str]:
    """`"A=<mask>,B=0"` or `{"A": "<mask>", "B": 0}` -> `{"A": "<mask>", "B": "0"}`."""
    if value is None:
        return {}
    if isinstance(value, dict):
        pairs = [(str(k), str(v)) for k, v in value.items()]
    else:
        pairs = []
        for item in parse_list(value):
            gene, sep, token = item.partition("=")
            if not sep or not gene.strip() or not token.strip():
                raise ValueError(f"feature_map expects GENE=TOKEN pairs, got {item!r}")
            pairs.append((gene, token))
    return {gene.strip(): token.strip() for gene, token in pairs}


def resolve_perturbation(
    dictionaries: GeneDictionaries,
    deletion: Any = None,
    activation: Any = None,
    mapping: Any = None,
) -> Optional[Perturbation]:
    """The perturbation in token space, or None when no gene is named.

    Every gene must be in the model's vocabulary and appear in one role only among deletion and
    activation: an unknown name or a contradiction is a `ConfigError` listing all offenders.
    """
    deleted, activated, mapped = parse_list(deletion), parse_list(activation), token_map(mapping)
    if not (deleted or activated or mapped):
        return None
    names = list(dict.fromkeys(deleted + activated + tuple(mapped)))
    tokens = dict(zip(names, dictionaries.tokens_of(names).tolist()))
    unknown = [name for name in names if tokens[name] < 0]
    if unknown:
        raise ConfigError(
            f"perturbation genes not in Geneformer's vocabulary: {', '.join(unknown)} "
            "(give Ensembl ids or symbols that the model's mapping dictionary knows)"
        )
    both = sorted(set(deleted) & set(activated))
    if both:
        raise ConfigError(f"genes both deleted and activated: {', '.join(both)}; choose one")
    if len(set(activated)) < len(activated):
        raise ConfigError("feature_activation names a gene twice; each gene can hold one rank")
    return Perturbation(
        deleted=tuple(tokens[g] for g in deleted),
        activated=tuple(tokens[g] for g in activated),
        mapped={tokens[g]: _token_id(dictionaries, t) for g, t in mapped.items()},
    )


def _token_id(dictionaries: GeneDictionaries, token: str) -> int:
    """A token id from its number or a special token's name (`<mask>`)."""
    if token.lstrip("-").isdigit():
        value = int(token)
    elif token in dictionaries.token_ids:
        value = dictionaries.token_ids[token]
    else:
        raise ConfigError(f"feature_map token {token!r} is neither a token id nor a token name such as <mask>")
    if not 0 <= value < dictionaries.vocab_size:
        raise ConfigError(f"feature_map token {value} is outside the vocabulary (0..{dictionaries.vocab_size - 1})")
    return value

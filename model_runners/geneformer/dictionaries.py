"""Geneformer's gene dictionaries: which names the model knows, their tokens and their medians.

Three pickles ship beside every checkpoint family (gc30M for V1, gc95M for V2; the variant's config
names the files): the token dictionary (special tokens first, then sorted Ensembl ids with
consecutive ids), the gene median dictionary (Ensembl id -> non-zero median used to normalise), and
the mapping dictionary (upper-cased symbols and retired ids -> current Ensembl id). They are read
with the restricted unpickler, checked for the structure the tokenizer relies on (a mismatch means
the wrong files, which would otherwise give silently wrong tokens), and kept in memory per file
version, since the mapping dictionary alone has ~170,000 keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from czb_core.errors import WeightsError
from czb_core.models.safe_pickle import load_pickle
from czb_core.schema.gene_references import strip_version

PAD = "<pad>"


@dataclass(frozen=True)
class DictionaryFiles:
    """File names of one dictionary family, from the variant's params."""

    token: str
    median: str
    mapping: str


class GeneDictionaries:
    """The three dictionaries, validated, with vectorised name -> token lookups."""

    def __init__(self, token_ids: dict, medians: dict, mapping: dict, n_special: int, source: str = ""):
        self.source = source
        self.n_special = n_special
        self.token_ids = {str(k): int(v) for k, v in _as_dict(token_ids, "token dictionary", source).items()}
        self._check_tokens()
        medians = _as_dict(medians, "gene median dictionary", source)
        self.median_t = np.full(self.vocab_size, np.nan)
        missing = []
        for gene, token in self.token_ids.items():
            if token >= n_special:
                value = medians.get(gene)
                if value is None or not np.isfinite(float(value)) or float(value) <= 0:
                    missing.append(gene)
                else:
                    self.median_t[token] = float(value)
        if missing:
            raise WeightsError(
                f"{source}: {len(missing):,} genes of the token dictionary have no positive median in the "
                f"gene median dictionary (e.g. {', '.join(missing[:3])}): the dictionaries do not belong together"
            )
        mapping = _as_dict(mapping, "mapping dictionary", source)
        keys = pd.Index([str(k).upper() for k in mapping])
        targets = np.asarray([str(v) for v in mapping.values()], dtype=object)
        first = ~keys.duplicated()
        self._mapping_keys = keys[first]
        self._mapping_targets = targets[first]
        self._names_index = pd.Index(list(self.token_ids))
        self._names_tokens = np.fromiter(self.token_ids.values(), dtype=np.int64, count=self.vocab_size)

    def _check_tokens(self) -> None:
        ids = sorted(self.token_ids.values())
        if ids != list(range(len(ids))):
            raise WeightsError(
                f"{self.source}: token ids are not consecutive from 0; not a Geneformer token dictionary")
        by_id = {v: k for k, v in self.token_ids.items()}
        specials = [by_id[i] for i in range(min(self.n_special, len(ids)))]
        genes_named_special = [by_id[i] for i in range(self.n_special, len(ids)) if by_id[i].startswith("<")]
        if (len(specials) < self.n_special or not all(s.startswith("<") and s.endswith(">") for s in specials)
                or genes_named_special or by_id.get(0) != PAD):
            raise WeightsError(
                f"{self.source}: expected {self.n_special} special tokens first ({PAD} = 0), found "
                f"{specials + genes_named_special[:3]}; the dictionaries do not match this variant (gc30M vs gc95M?)"
            )

    @property
    def vocab_size(self) -> int:
        return len(self.token_ids)

    def special(self, name: str) -> int:
        """The id of a special token such as `<cls>`; a `WeightsError` if the dictionary lacks it."""
        token = self.token_ids.get(name)
        if token is None or token >= self.n_special:
            raise WeightsError(f"{self.source}: the token dictionary has no special token {name}")
        return token

    def tokens_of(self, names: Iterable[str]) -> np.ndarray:
        """Gene token per name (int64, -1 when unknown), as the authors' tokenizer resolves names.

        Version suffixes are stripped, names upper-cased and sent through the mapping dictionary
        (symbols and retired ids become current Ensembl ids); only ids in the token dictionary get a
        token. Names the mapping dictionary lacks are dropped, even if they are token ids.
        """
        upper = pd.Index(strip_version(np.asarray(list(names), dtype=object))).str.upper()
        where = self._mapping_keys.get_indexer(upper)
        tokens = self._gene_tokens(self._mapping_targets[np.maximum(where, 0)])
        tokens[where < 0] = -1
        return tokens

    def _gene_tokens(self, ensembl_ids: np.ndarray) -> np.ndarray:
        """Token per Ensembl id of the token dictionary, -1 for anything else (special tokens included)."""
        where = self._names_index.get_indexer(pd.Index(ensembl_ids))
        tokens = np.where(where >= 0, self._names_tokens[np.maximum(where, 0)], -1)
        tokens[tokens < self.n_special] = -1
        return tokens

    @cached_property
    def accepted_names(self) -> frozenset[str]:
        """Every (upper-case) name the tokenizer places on a gene token: the model's vocabulary."""
        return frozenset(self._mapping_keys[self._gene_tokens(self._mapping_targets) >= 0])


def find_file(folder: Path, name: str) -> Path:
    """The one file called `name` anywhere under `folder` (mirrors may nest the dictionaries).

    The errors name the file wanted, never what else the folder holds: the message reaches users of the app.
    """
    matches = sorted(p for p in Path(folder).rglob(name) if p.is_file())
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise WeightsError(f"{name} is missing from {folder}; the variant's dictionaries (config.yaml, or an "
                           "admin's import on the Weights page) must hold it")
    raise WeightsError(f"{folder} holds {len(matches)} files called {name}; keep one")


def load_dictionaries(folder: Path, files: DictionaryFiles, n_special: int) -> GeneDictionaries:
    """The dictionaries of one variant from a local folder, read once per file version."""
    paths = [find_file(folder, name) for name in (files.token, files.median, files.mapping)]
    stamps = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths)
    return _load(stamps, n_special)


@lru_cache(maxsize=4)
def _load(stamps: tuple, n_special: int) -> GeneDictionaries:
    token, median, mapping = (load_pickle(path) for path, _, _ in stamps)
    return GeneDictionaries(token, median, mapping, n_special, source=str(Path(stamps[0][0]).parent))


def _as_dict(value, what: str, source: str) -> dict:
    if not isinstance(value, dict):
        raise WeightsError(f"{source}: the {what} holds a {type(value).__name__}, not a dict")
    return value

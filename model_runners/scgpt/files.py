"""The text files of an scGPT checkpoint folder: `args.json` (training arguments) and `vocab.json` (tokens).

Every published checkpoint (whole-human and the organ and pan-cancer ones) is a folder of `best_model.pt`,
`args.json` and `vocab.json`. The model's sizes and the preprocessing constants are read from `args.json`,
so one code path serves every checkpoint; a file that lacks a needed key, or asks for an input style this
runner does not implement, is refused rather than guessed at.

The vocabulary is `{token: id}` with ids 0..N-1; the authors' loader appends `<pad>`, `<cls>` and `<eoc>`
(in that order) when the file lacks them, and the model's embedding table has a row for every token of
the result, so the same is done here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterable

import numpy as np

from czb_core.errors import WeightsError

WEIGHTS_FILE = "best_model.pt"
ARGS_FILE = "args.json"
VOCAB_FILE = "vocab.json"
CHECKPOINT_FILES = (WEIGHTS_FILE, ARGS_FILE, VOCAB_FILE)
CLS_TOKEN = "<cls>"
SPECIAL_TOKENS = ("<pad>", CLS_TOKEN, "<eoc>")  # appended in this order when vocab.json lacks them
REQUIRED_ARGS = ("embsize", "nheads", "d_hid", "nlayers", "pad_token", "pad_value", "n_bins", "max_seq_len")


@dataclass(frozen=True)
class ScgptArgs:
    """What `args.json` says about the model's sizes and its input encoding."""

    embsize: int
    nheads: int
    d_hid: int
    nlayers: int
    pad_token: str
    pad_value: float  # the value of `<cls>` and of padding
    n_bins: int  # non-zero values fall in bins 1..n_bins - 1
    max_seq_len: int  # tokens per cell, `<cls>` included


@dataclass(frozen=True)
class Vocab:
    """Token ids by name, with the specials the model needs and a vectorised gene lookup."""

    token_ids: dict[str, int]
    pad_token: str

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def pad_id(self) -> int:
        return self.token_ids[self.pad_token]

    @property
    def cls_id(self) -> int:
        return self.token_ids[CLS_TOKEN]

    @property
    def gene_names(self) -> frozenset[str]:
        """The genes the model knows (every token but the specials): what a dataset's names must match."""
        return frozenset(self._gene_ids)

    def tokens_of(self, names: Iterable[str]) -> np.ndarray:
        """Token per gene name (int64, -1 when unknown): exact, case-sensitive symbol match.

        Special tokens are not genes: a column named `<pad>` is unknown, not padding.
        """
        genes = self._gene_ids
        return np.fromiter((genes.get(name, -1) for name in names), dtype=np.int64)

    @cached_property
    def _gene_ids(self) -> dict[str, int]:
        return {name: token for name, token in self.token_ids.items() if name not in SPECIAL_TOKENS}


def load_args(folder: Path) -> ScgptArgs:
    """The model arguments in `folder/args.json`; `WeightsError` when the file is missing, unreadable or
    describes a model this runner cannot run faithfully."""
    raw = _read_json(Path(folder) / ARGS_FILE)
    missing = [key for key in REQUIRED_ARGS if key not in raw]
    if missing:
        raise WeightsError(f"{Path(folder) / ARGS_FILE} lacks {', '.join(missing)}; it is not an scGPT args.json")
    for key, wanted in (("input_emb_style", "continuous"), ("input_style", "binned")):
        if raw.get(key, wanted) != wanted:
            raise WeightsError(f"{Path(folder) / ARGS_FILE}: {key} is {raw[key]!r}; only {wanted!r} checkpoints "
                               "(all published ones) are supported")
    try:
        args = ScgptArgs(
            embsize=int(raw["embsize"]), nheads=int(raw["nheads"]), d_hid=int(raw["d_hid"]),
            nlayers=int(raw["nlayers"]), pad_token=str(raw["pad_token"]), pad_value=float(raw["pad_value"]),
            n_bins=int(raw["n_bins"]), max_seq_len=int(raw["max_seq_len"]),
        )
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"{Path(folder) / ARGS_FILE} holds a malformed value ({exc})") from None
    _check_sizes(args, Path(folder) / ARGS_FILE)
    return args


def _check_sizes(args: ScgptArgs, path: Path) -> None:
    if min(args.embsize, args.nheads, args.d_hid, args.nlayers) < 1 or args.embsize % args.nheads:
        raise WeightsError(f"{path}: embsize {args.embsize} must be a positive multiple of nheads {args.nheads}, "
                           f"and d_hid ({args.d_hid}) and nlayers ({args.nlayers}) positive")
    if args.n_bins < 3:
        raise WeightsError(f"{path}: n_bins is {args.n_bins}; binning needs at least 3")
    if args.max_seq_len < 2:
        raise WeightsError(f"{path}: max_seq_len is {args.max_seq_len}; a cell needs <cls> and one gene")


def load_vocab(folder: Path, pad_token: str = "<pad>") -> Vocab:
    """The vocabulary in `folder/vocab.json`, with the missing special tokens appended."""
    path = Path(folder) / VOCAB_FILE
    raw = _read_json(path)
    try:
        token_ids = {str(name): int(token) for name, token in raw.items()}
    except (TypeError, ValueError):
        raise WeightsError(f"{path} must map token names to integer ids") from None
    if sorted(token_ids.values()) != list(range(len(token_ids))):
        raise WeightsError(f"{path}: token ids must be 0..{len(token_ids) - 1}, each once; the file is not an scGPT "
                           "vocabulary")
    for name in SPECIAL_TOKENS:
        token_ids.setdefault(name, len(token_ids))
    if pad_token not in token_ids:
        raise WeightsError(f"{path} has no {pad_token!r}, the pad token args.json names")
    return Vocab(token_ids, pad_token)


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WeightsError(
            f"{path} is missing; an scGPT checkpoint folder holds {', '.join(CHECKPOINT_FILES)}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{path} cannot be read as JSON ({exc}); the download may be truncated") from None
    if not isinstance(value, dict):
        raise WeightsError(f"{path} must hold a JSON object, not {type(value).__name__}")
    return value

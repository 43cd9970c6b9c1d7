"""The files of a TranscriptFormer checkpoint folder, read into plain values.

An extracted checkpoint (`tf_sapiens/`, `tf_exemplar/`, `tf_metazoa/`) holds `config.json` (under
`model`: `model_config` sizes, `data_config` input encoding, `loss_config`), `model_weights.pt` (a plain
state dict), `vocabs/<column>_vocab.json` (the aux-token vocabulary of each obs column, e.g. assay) and
`vocabs/<species>_gene.h5` (per species: dataset `keys` of byte-string gene ids, group `arrays/<id>` of
ESM-2 protein embeddings). The gene token ids are the config's special tokens in the config's order,
then the genes of each `esm2_mappings` file in that order, a gene seen twice keeping its first id; the
state dict's frozen table has one row per token. A weights archive unpacks to a folder named after
the variant, so the checkpoint is found either at the top of the weights folder or one level down.

Everything here is numpy, json and h5py: no torch, so validators can read vocabularies cheaply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from czb_core.errors import WeightsError
from czb_core.types import Organism

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model_weights.pt"
VOCABS_DIR = "vocabs"
GENE_TABLE_SUFFIX = "_gene.h5"
UNKNOWN = "unknown"  # the aux vocabularies' (and the gene vocabulary's) token for anything unlisted
START, PAD = "[START]", "[PAD]"
REQUIRED_MODEL = ("embed_dim", "num_heads", "num_layers", "model_dim", "activation", "softcap", "seq_len",
                  "log_counts_eps", "mu_link_fn")
REQUIRED_DATA = ("special_tokens", "esm2_mappings")
ACTIVATIONS = ("relu", "gelu", "silu")
LINK_FUNCTIONS = ("softmax", "sigmoid", "softplus", "relu", "linear", "exp", "log", "tanh")


@dataclass(frozen=True)
class ModelSizes:
    """`model_config` of config.json: `embed_dim` is the residual width (and the cell embedding's),
    `model_dim` the feed-forward width."""

    embed_dim: int
    num_heads: int
    num_layers: int
    model_dim: int
    activation: str
    attn_bias: bool
    fw_bias: bool
    softcap: float
    seq_len: int
    log_counts_eps: float
    mu_link_fn: str
    block_len: int


@dataclass(frozen=True)
class DataSpec:
    """`data_config` of config.json: the input encoding the model was trained with."""

    special_tokens: tuple[str, ...]
    gene_tables: tuple[str, ...]  # esm2_mappings: `<species>_gene.h5` file names, in token order
    aux_columns: tuple[str, ...]  # obs columns read as aux tokens, prepended in this order
    pad_token: str
    pad_zeros: bool
    softplus_approx: bool  # loss_config: how the zero-truncated Poisson normaliser is computed


@dataclass(frozen=True)
class Checkpoint:
    """One extracted checkpoint folder and what its text files say."""

    folder: Path
    sizes: ModelSizes
    data: DataSpec

    @property
    def weights_path(self) -> Path:
        return self.folder / WEIGHTS_FILE

    @cached_property
    def token_ids(self) -> dict[str, int]:
        """Token id of every special token and gene (see the module docstring)."""
        ids = {token: i for i, token in enumerate(self.data.special_tokens)}
        for name in self.data.gene_tables:
            for gene in read_gene_keys(self.folder / VOCABS_DIR / name):
                ids.setdefault(gene, len(ids))
        return ids

    @cached_property
    def aux_vocabs(self) -> dict[str, dict[str, int]]:
        """column -> {value: token}, each with its `unknown` token."""
        return {column: read_aux_vocab(self.folder / VOCABS_DIR / f"{column}_vocab.json")
                for column in self.data.aux_columns}

    def special(self, token: str) -> int:
        if token not in self.data.special_tokens:
            raise WeightsError(f"{self.folder / CONFIG_FILE}: special_tokens lacks {token!r}")
        return self.data.special_tokens.index(token)

    @property
    def species(self) -> tuple[str, ...]:
        """Latin names of the species whose gene tables the model was trained with."""
        return tuple(name[: -len(GENE_TABLE_SUFFIX)] for name in self.data.gene_tables
                     if name.endswith(GENE_TABLE_SUFFIX))

    @property
    def organisms(self) -> tuple[Organism, ...]:
        by_name = {o.latin_name: o for o in Organism}
        return tuple(by_name[s] for s in self.species if s in by_name)


def find_checkpoint_folder(weights_dir: Path) -> Path:
    """The folder holding config.json: `weights_dir` itself, or its one subfolder that does (an archive's)."""
    weights_dir = Path(weights_dir)
    if (weights_dir / CONFIG_FILE).is_file():
        return weights_dir
    found = sorted(p.parent for p in weights_dir.glob(f"*/{CONFIG_FILE}")) if weights_dir.is_dir() else []
    if len(found) == 1:
        return found[0]
    what = "several checkpoints: " + ", ".join(p.name for p in found) if found else "no config.json"
    raise WeightsError(f"{weights_dir} is not a TranscriptFormer checkpoint ({what}); it needs config.json, "
                       f"{WEIGHTS_FILE} and {VOCABS_DIR}/, at its top or in one subfolder")


def load_checkpoint_files(weights_dir: Path) -> Checkpoint:
    """The checkpoint under `weights_dir`; `WeightsError` for a missing file or a value this runner
    cannot run faithfully."""
    folder = find_checkpoint_folder(weights_dir)
    path = folder / CONFIG_FILE
    raw = _read_json(path)
    model = raw.get("model") if isinstance(raw.get("model"), dict) else None
    if model is None or not all(isinstance(model.get(key), dict) for key in ("model_config", "data_config")):
        raise WeightsError(f"{path} has no model.model_config and model.data_config; it is not a TranscriptFormer "
                           "config.json")
    sizes = _model_sizes(model["model_config"], path)
    data = _data_spec(model["data_config"], model.get("loss_config") or {}, path)
    if not (folder / WEIGHTS_FILE).is_file():
        raise WeightsError(f"{folder / WEIGHTS_FILE} is missing; the download may be incomplete")
    for name in data.gene_tables:
        if not (folder / VOCABS_DIR / name).is_file():
            raise WeightsError(f"{folder / VOCABS_DIR / name}, named by config.json's esm2_mappings, is missing")
    checkpoint = Checkpoint(folder, sizes, data)
    for token in (START, data.pad_token):
        checkpoint.special(token)
    return checkpoint


def _model_sizes(mc: dict, path: Path) -> ModelSizes:
    missing = [key for key in REQUIRED_MODEL if key not in mc]
    if missing:
        raise WeightsError(f"{path}: model_config lacks {', '.join(missing)}")
    try:
        sizes = ModelSizes(
            embed_dim=int(mc["embed_dim"]), num_heads=int(mc["num_heads"]), num_layers=int(mc["num_layers"]),
            model_dim=int(mc["model_dim"]), activation=str(mc["activation"]),
            attn_bias=bool(mc.get("attn_bias", False)), fw_bias=bool(mc.get("fw_bias", False)),
            softcap=float(mc["softcap"]), seq_len=int(mc["seq_len"]), log_counts_eps=float(mc["log_counts_eps"]),
            mu_link_fn=str(mc["mu_link_fn"]), block_len=int(mc.get("block_len", 128)),
        )
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"{path}: model_config holds a malformed value ({exc})") from None
    if min(sizes.embed_dim, sizes.num_heads, sizes.num_layers, sizes.model_dim, sizes.seq_len) < 1 \
            or sizes.embed_dim % sizes.num_heads:
        raise WeightsError(f"{path}: embed_dim {sizes.embed_dim} must be a positive multiple of num_heads "
                           f"{sizes.num_heads}, and the other sizes positive")
    if sizes.activation not in ACTIVATIONS:
        raise WeightsError(f"{path}: activation {sizes.activation!r} is not one of {', '.join(ACTIVATIONS)}")
    if sizes.mu_link_fn not in LINK_FUNCTIONS:
        raise WeightsError(f"{path}: mu_link_fn {sizes.mu_link_fn!r} is not one of {', '.join(LINK_FUNCTIONS)}")
    return sizes


def _data_spec(dc: dict, lc: dict, path: Path) -> DataSpec:
    missing = [key for key in REQUIRED_DATA if not dc.get(key)]
    if missing:
        raise WeightsError(f"{path}: data_config lacks {', '.join(missing)}")
    aux = dc.get("aux_cols")
    aux_columns = tuple(c.strip() for c in aux.split(",") if c.strip()) if isinstance(aux, str) else tuple(aux or ())
    tables = tuple(str(name) for name in dc["esm2_mappings"])
    if any(Path(name).name != name for name in tables):
        raise WeightsError(f"{path}: esm2_mappings must name files inside {VOCABS_DIR}/, got {list(tables)}")
    spec = DataSpec(special_tokens=tuple(str(t) for t in dc["special_tokens"]), gene_tables=tables,
                    aux_columns=aux_columns, pad_token=str(dc.get("gene_pad_token", PAD)),
                    pad_zeros=bool(dc.get("pad_zeros", True)), softplus_approx=bool(lc.get("softplus_approx", True)))
    if not spec.pad_zeros:
        raise WeightsError(f"{path}: pad_zeros is false; every published checkpoint pads unexpressed genes, and "
                           "this runner implements only that encoding")
    return spec


def read_gene_keys(path: Path) -> list[str]:
    """The gene ids of one `<species>_gene.h5`, in file order."""
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            return [k.decode("utf-8") if isinstance(k, bytes) else str(k) for k in fh["keys"][:]]
    except (OSError, KeyError) as exc:
        raise WeightsError(f"{path} cannot be read as a gene table (HDF5 with a 'keys' dataset): {exc}") from None


def read_aux_vocab(path: Path) -> dict[str, int]:
    raw = _read_json(path)
    try:
        vocab = {str(k): int(v) for k, v in raw.items()}
    except (TypeError, ValueError):
        raise WeightsError(f"{path} must map values to integer token ids") from None
    if UNKNOWN not in vocab:
        raise WeightsError(f"{path} has no {UNKNOWN!r} token, which unlisted values need")
    return vocab


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WeightsError(f"{path} is missing; the download may be incomplete") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{path} cannot be read as JSON ({exc}); the download may be truncated") from None
    if not isinstance(value, dict):
        raise WeightsError(f"{path} must hold a JSON object, not {type(value).__name__}")
    return value

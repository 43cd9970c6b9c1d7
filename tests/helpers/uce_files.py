"""UCE files for tests, in the real on-disk formats, and a one-cell reference written with plain torch.nn.

`write_model_files` writes `model_files/` (all_tokens.torch [N, D], species_offsets.pkl with numpy
scalar offsets, species_chrom.csv, protein_embeddings/<Species file>.pt dicts symbol -> tensor[D]) for
any set of species, and `write_checkpoint` a state dict with the authors' key names (including the
parts a cell embedding never reads: binary_decoder, gene_embedding_layer) whose `pe_embedding.weight`
is the gene rows followed by one row per chromosome category. `ReferenceUce` is the architecture as
documented, built from `nn.TransformerEncoder` (seq-first, post-norm) and run one cell at a time by
`reference_embedding`, which never touches the runner's modules.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import torch
from torch import nn

TINY = dict(token_dim=24, d_model=40, n_heads=20, d_hid=48, n_layers=2, decoder=(32, 24), max_len=1536)
PAD_LENGTH, CLS, CHROM_RIGHT, PAD = 1536, 3, 2, 0


@dataclass
class SpeciesGenes:
    """One species' genes as the files list them: symbols (dict key order), chromosome and start of each."""

    key: str
    file: str
    symbols: list[str]
    chromosomes: list[str]
    starts: list[int]


def write_model_files(folder: Path, species: list[SpeciesGenes], token_dim: int, seed: int = 0,
                      first_row: int = 4, token_rows: Optional[int] = None) -> tuple[int, int]:
    """Write model_files/ under `folder`; returns (token rows N, chromosome categories). Species rows start
    at `first_row`, so no gene token coincides with the pad, chromosome-closing or CLS ids (0-3).
    `token_rows`: pad `all_tokens.torch` with random rows to that many (the published file's 143,574, which
    the authors' code takes as the place where chromosome tokens start). A symbol listed twice under
    upper-casing gets one CSV row, as the authors' lookup by upper-cased symbol needs."""
    rng = torch.Generator().manual_seed(seed)
    (folder / "protein_embeddings").mkdir(parents=True, exist_ok=True)
    offsets, rows, n_rows = {}, [], first_row
    for sp in species:
        offsets[sp.key] = np.int64(n_rows)
        table = {symbol: torch.randn(token_dim, generator=rng) for symbol in sp.symbols}
        torch.save(table, folder / "protein_embeddings" / sp.file)
        n_rows += len(sp.symbols)
        rows += [(sp.key, s.upper(), c, st) for s, c, st in zip(sp.symbols, sp.chromosomes, sp.starts)]
    csv = pd.DataFrame(rows, columns=["species", "gene_symbol", "chromosome", "start"])
    csv = csv.drop_duplicates(["species", "gene_symbol"])
    csv["end"] = csv["start"] + 1000
    csv.to_csv(folder / "species_chrom.csv", index=False)
    (folder / "species_offsets.pkl").write_bytes(pickle.dumps(offsets, protocol=4))
    if token_rows is not None:
        if token_rows < n_rows:
            raise ValueError(f"{n_rows} gene rows do not fit in {token_rows} token rows")
        n_rows = token_rows
    torch.save(torch.randn(n_rows, token_dim, generator=rng), folder / "all_tokens.torch")
    n_chrom = len(pd.Categorical(csv["species"] + "_" + csv["chromosome"]).categories)
    return n_rows, n_chrom


def full_block(n_in: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_out), nn.LayerNorm(n_out), nn.GELU(), nn.Dropout(0.05))


class Positions(nn.Module):
    def __init__(self, d_model: int, max_len: int):
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1)
        frequency = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, 1, d_model)
        pe[:, 0, 0::2] = torch.sin(position * frequency)
        pe[:, 0, 1::2] = torch.cos(position * frequency)
        self.register_buffer("pe", pe)


class ReferenceUce(nn.Module):
    """UCE as documented: projection, positions, nn.TransformerEncoder (seq-first, post-norm), decoder."""

    def __init__(self, table: torch.Tensor, token_dim, d_model, n_heads, d_hid, n_layers, decoder, max_len):
        super().__init__()
        self.d_model = d_model
        self.encoder = nn.Sequential(nn.Linear(token_dim, d_model), nn.GELU(), nn.LayerNorm(d_model))
        self.pos_encoder = Positions(d_model, max_len)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, d_hid, 0.05)
        self.transformer_encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        hidden, out = decoder
        self.decoder = nn.Sequential(full_block(d_model, hidden), full_block(hidden, out), full_block(out, out),
                                     nn.Linear(out, out))
        self.binary_decoder = nn.Sequential(full_block(out + d_model, 16), nn.Linear(16, 1))
        self.gene_embedding_layer = nn.Sequential(nn.Linear(token_dim, d_model), nn.GELU(), nn.LayerNorm(d_model))
        self.pe_embedding = nn.Embedding.from_pretrained(table)


def write_checkpoint(path: Path, n_gene_rows: int, n_chrom: int, seed: int = 0, spare_rows: int = 3) -> ReferenceUce:
    """A random tiny UCE state dict with the real key names; returns the model (in eval mode)."""
    torch.manual_seed(seed)
    dims = dict(TINY)
    table = torch.randn(n_gene_rows + n_chrom + spare_rows, dims["token_dim"])
    model = ReferenceUce(table, **dims).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model


def reference_embedding(model: ReferenceUce, tokens: list[int], pad_length: Optional[int] = None) -> np.ndarray:
    """One cell: tokens padded with 0 to `pad_length` (default: none, as the authors' collator cuts a batch
    of one cell to its sentence), mask 1 on used positions, the documented forward pass with `1 - mask`
    passed as a float key-padding mask."""
    length = len(tokens)
    pad_length = length if pad_length is None else pad_length
    ids = torch.tensor(tokens + [PAD] * (pad_length - length)).unsqueeze(1)  # seq-first, batch of one
    mask = torch.cat([torch.ones(length), torch.zeros(pad_length - length)]).unsqueeze(0)
    with torch.no_grad():
        x = nn.functional.normalize(model.pe_embedding(ids), dim=2)
        x = model.encoder(x) * math.sqrt(model.d_model)
        x = x + model.pos_encoder.pe[:pad_length]
        x = model.transformer_encoder(x, src_key_padding_mask=1 - mask)
        out = model.decoder(x)[0]
        return nn.functional.normalize(out, dim=1)[0].numpy()


def chromosome_codes(csv_path: Path) -> dict[tuple[str, str], int]:
    """"<species>_<chromosome>" -> category code over the whole CSV, categories sorted as strings."""
    csv = pd.read_csv(csv_path, dtype=str)
    labels = sorted(set(csv["species"] + "_" + csv["chromosome"]))
    return {label: i for i, label in enumerate(labels)}

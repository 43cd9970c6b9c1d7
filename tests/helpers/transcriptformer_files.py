"""TranscriptFormer checkpoints for tests, in the real layout: `config.json` (model/data/loss configs),
`model_weights.pt` (a plain state dict with the authors' key names, the gene-id head included),
`vocabs/assay_vocab.json` and `vocabs/<species>_gene.h5` (`keys` + `arrays/<id>`). The tensors are
made here from the key names and shapes alone, not from the runner's network, so a naming slip in
the runner fails to load. The gene table is built as the authors' loader builds it: special-token
rows from `RandomState(42).rand`, then each species' ESM-2 rows in file order."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import h5py
import numpy as np
import torch

SPECIAL_TOKENS = ["unknown", "[PAD]", "[START]", "[END]", "[RD]", "[CELL]", "[MASK]"]  # the published order
ASSAYS = {"unknown": 0, "10x 3' v2": 1, "10x 3' v3": 2, "Smart-seq2": 3}
TINY = dict(embed_dim=16, num_heads=2, num_layers=2, model_dim=24, seq_len=31, aux_len=1, block_len=16,
            table_dim=12, gene_head_hidden_dim=8)


def config_json(species: list[str], sizes: dict = TINY) -> dict:
    """config.json as the published checkpoints lay it out (sizes tiny)."""
    return {"model": {
        "model_type": "transcriptformer",
        "model_config": {
            "log_counts_eps": 1e-6, "num_heads": sizes["num_heads"], "num_layers": sizes["num_layers"],
            "model_dim": sizes["model_dim"], "embed_dim": sizes["embed_dim"], "dropout": 0.1, "activation": "gelu",
            "attn_bias": False, "fw_bias": False, "mu_link_fn": "softmax", "softcap": 10,
            "seq_len": sizes["seq_len"], "aux_len": sizes["aux_len"], "block_len": sizes["block_len"],
            "gene_head_hidden_dim": sizes["gene_head_hidden_dim"], "use_aux": True, "compile_block_mask": False,
        },
        "data_config": {
            "aux_vocab_path": "", "pin_memory": True, "aux_cols": "assay", "gene_col_name": "ensembl_id",
            "clip_counts": 30, "filter_to_vocabs": True, "filter_outliers": 0.0, "pad_zeros": True,
            "normalize_to_scale": 0, "n_data_workers": 0, "sort_genes": False, "randomize_genes": False,
            "min_expressed_genes": 0, "gene_pad_token": "[PAD]", "aux_pad_token": "unknown",
            "esm2_mappings": [f"{s}_gene.h5" for s in species], "special_tokens": SPECIAL_TOKENS,
        },
        "loss_config": {"gene_id_loss_weight": 1.0, "softplus_approx": True},
    }}


def state_dict_shapes(vocab_size: int, n_assays: int, sizes: dict = TINY) -> dict[str, tuple]:
    """Every tensor of the authors' model with its shape (no attention or feed-forward biases)."""
    e, f, t, h = sizes["embed_dim"], sizes["model_dim"], sizes["table_dim"], sizes["gene_head_hidden_dim"]
    shapes = {"gene_embeddings.embedding.weight": (vocab_size, t)}
    for prefix, (d_in, d_hid, d_out) in {"gene_embeddings.mlp": (t, e, e), "mu.mlp": (2 * e, 2 * e // 4, 1),
                                         "gene_id_head": (e, h, vocab_size)}.items():
        shapes.update({f"{prefix}.layers.0.weight": (d_hid, d_in), f"{prefix}.layers.0.bias": (d_hid,),
                       f"{prefix}.layers.2.weight": (d_hid,), f"{prefix}.layers.2.bias": (d_hid,),
                       f"{prefix}.layers.4.weight": (d_out, d_hid), f"{prefix}.layers.4.bias": (d_out,)})
    shapes["aux_embeddings.assay.weight"] = (n_assays, e)
    shapes["mu.gene_embedding.weight"] = (vocab_size, 1)
    for i in range(sizes["num_layers"]):
        p = f"transformer_encoder.encoder_layers.{i}"
        shapes.update({f"{p}.linear1.weight": (f, e), f"{p}.linear2.weight": (e, f),
                       **{f"{p}.self_attn.linears.{j}.weight": (e, e) for j in range(4)},
                       f"{p}.norm1.weight": (e,), f"{p}.norm1.bias": (e,), f"{p}.norm2.weight": (e,),
                       f"{p}.norm2.bias": (e,)})
    return shapes


def write_gene_table(path: Path, genes: list[str], table_gk: np.ndarray) -> None:
    with h5py.File(path, "w") as fh:
        fh.create_dataset("keys", data=np.asarray(genes, dtype="S"))
        arrays = fh.create_group("arrays")
        for gene, row in zip(genes, table_gk):
            arrays.create_dataset(gene, data=row.astype(np.float32))


def write_checkpoint(folder: Path, tables: dict[str, list[str]], seed: int, sizes: dict = TINY) -> Path:
    """A checkpoint with one gene table per species (`tables`: species -> gene ids) in `folder`."""
    rng = np.random.default_rng(seed)
    (folder / "vocabs").mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config_json(list(tables), sizes), indent=2))
    (folder / "vocabs" / "assay_vocab.json").write_text(json.dumps(ASSAYS))
    rows = [np.random.RandomState(42).rand(len(SPECIAL_TOKENS), sizes["table_dim"])]
    seen: set[str] = set()
    for species, genes in tables.items():
        table_gk = rng.normal(0, 1, (len(genes), sizes["table_dim"]))
        write_gene_table(folder / "vocabs" / f"{species}_gene.h5", genes, table_gk)
        rows.append(np.asarray([r for g, r in zip(genes, table_gk) if g not in seen]).reshape(-1, sizes["table_dim"]))
        seen.update(genes)
    table = np.concatenate(rows).astype(np.float32)
    state = {}
    for key, shape in state_dict_shapes(len(table), len(ASSAYS), sizes).items():
        if key == "gene_embeddings.embedding.weight":
            state[key] = torch.from_numpy(table)
        elif key.endswith(("norm1.weight", "norm2.weight", "layers.2.weight")):
            state[key] = torch.from_numpy(rng.uniform(0.5, 1.5, shape).astype(np.float32))
        else:  # large enough that scores pass the soft-cap's bend and the count bias matters
            scale = 0.9 if "self_attn" in key else 0.4
            state[key] = torch.from_numpy(rng.normal(0, scale, shape).astype(np.float32))
    torch.save(state, folder / "model_weights.pt")
    return folder


def tar_gz(folder: Path) -> bytes:
    """The folder as a `.tar.gz` holding `<folder name>/...`, as the published archives do."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return buffer.getvalue()

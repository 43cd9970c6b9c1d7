"""Tokenizer lab on the CPU: a muP learning-rate sweep across widths, and Geneformer-preset epoch time.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_tokenizer_lab.py [--cells 5000] [--epochs 3]
        [--widths 128 256 512] [--lrs 5e-4 1e-3 2e-3 4e-3 8e-3] [--epoch-cells 20000] [--time-batches 20]

Part 1 (muP transfer): generated counts (2,000 genes, 6 cell types, tissues blood / bone marrow), trained
on blood (80% train, 20% validation), tested on bone marrow, with the Geneformer preset cut to 256 genes.
Every width x learning rate is one run (seed 0); under muP the best learning rate should be the same
at every width. Part 2: the Geneformer preset (up to 2,048 genes) on a generated 20,000-cell, two-tissue
dataset; one epoch is timed over its first `--time-batches` training batches and scaled to the epoch's
batch count (a full epoch on two shared cores takes about an hour), and the scaling is printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time

import numpy as np
import torch

from czb_core.io.synthetic import make_synthetic_counts
from czb_core.tokenizer_lab.lab import LabSplit, TokenizerSetup, prepare_lab_data, run_lab
from czb_core.tokenizer_lab.model import ModelShape
from czb_core.tokenizer_lab.presets import PRESETS
from czb_core.tokenizer_lab.train import TrainConfig


def two_tissue_data(n_cells: int, seed: int = 0):
    """Generated counts with a `split` column: blood cells train (80%) / val (20%), bone marrow test."""
    adata = make_synthetic_counts(n_cells=n_cells, n_genes=2000, n_types=6, n_batches=2, seed=seed)
    rng = np.random.default_rng(seed)
    blood = adata.obs["tissue"].astype(str).to_numpy() == "blood"
    adata.obs["split"] = np.where(blood, np.where(rng.random(n_cells) < 0.8, "train", "val"), "test")
    return prepare_lab_data(adata, LabSplit("cell_type", "split", ("train",), ("val",), ("test",)))


def sweep(args) -> None:
    data = two_tissue_data(args.cells)
    spec = dataclasses.replace(PRESETS["geneformer"], fc=dataclasses.replace(PRESETS["geneformer"].fc,
                                                                            max_length=args.max_length))
    print(f"muP sweep: {args.cells:,} cells, Geneformer preset cut to {args.max_length} genes, {args.epochs} epochs")
    print("| width | lr | best val MCC | test MCC | final train loss | s |\n|---|---|---|---|---|---|")
    for width in args.widths:
        for lr in args.lrs:
            config = TrainConfig(epochs=args.epochs, lr=lr, patience=args.epochs, shape=ModelShape(d_model=width))
            run = run_lab(data, [spec], [0], config).runs[0]
            print(f"| {width} | {lr:g} | {run.best_val_mcc:.4f} | {run.test_mcc:.4f} | "
                  f"{run.curve[-1]['train_loss']:.4f} | {run.seconds:.0f} |", flush=True)


def epoch_time(args) -> None:
    data = two_tissue_data(args.epoch_cells, seed=1)
    setup = TokenizerSetup(PRESETS["geneformer"], data, 128)
    config = TrainConfig()
    torch.manual_seed(0)
    model = setup.build_model(len(data.classes), config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                  betas=config.betas)
    rng = np.random.default_rng(0)
    rows_n = rng.permutation(data.splits["train"])
    n_batches = math.ceil(len(rows_n) / config.batch_size)
    lengths = []
    t0 = time.perf_counter()
    for b in range(min(args.time_batches, n_batches)):
        rows = rows_n[b * config.batch_size : (b + 1) * config.batch_size]
        genes_bl, values_bl, special_bl = setup.maker.batch(rows, rng)
        lengths.append((genes_bl != setup.maker.pad_gene).sum(axis=1).mean())
        logits = model(torch.from_numpy(genes_bl), torch.from_numpy(values_bl), torch.from_numpy(special_bl))
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(data.labels_n[rows]))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
        optimizer.step()
    per_batch = (time.perf_counter() - t0) / len(lengths)
    print(f"\nGeneformer preset, {args.epoch_cells:,} cells ({len(rows_n):,} training), width 128, batch 32, "
          f"{torch.get_num_threads()} threads: {per_batch:.2f} s per batch over {len(lengths)} batches "
          f"(mean sentence {np.mean(lengths):,.0f} genes) -> {per_batch * n_batches / 60:.1f} min per epoch "
          f"({n_batches:,} batches, scaled)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--widths", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--lrs", type=float, nargs="+", default=[5e-4, 1e-3, 2e-3, 4e-3, 8e-3])
    parser.add_argument("--epoch-cells", type=int, default=20000)
    parser.add_argument("--time-batches", type=int, default=20)
    parser.add_argument("--skip-sweep", action="store_true")
    args = parser.parse_args()
    if not args.skip_sweep:
        sweep(args)
    epoch_time(args)


if __name__ == "__main__":
    main()

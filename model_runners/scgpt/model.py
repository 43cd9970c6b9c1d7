"""scGPT (Cui et al. 2024): binned expression of each cell's detected genes through a transformer encoder.

One weights entry per variant, `model`: a checkpoint folder (`best_model.pt`, `args.json`, `vocab.json`)
whose own `args.json` gives the sizes, input length and binning. Only the whole-human checkpoint has a
copy to download; the authors' other checkpoints are variants whose folder the user gives (`--weights`),
and their `weights_from` says where to get it.

`prepare` tokenizes a block of cells (seeded: tie breaks in binning and the sampling of long cells);
`embed` runs the encoder in batches of similar length. Cells with no gene in the vocabulary cannot be
embedded (their sequence would be `<cls>` alone), so the validator counts them once the data is loaded
and the run stops with that count and a fix instead of failing in the middle.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

import numpy as np

from czb_core.models.base import BaseModelImplementation
from czb_core.models.params import Param, precision_param
from czb_core.models.registry import MODEL_ROLE
from czb_core.models.runner import RunOutput
from czb_core.schema.data_manager import SYMBOL_COLUMNS, DataManager
from czb_core.schema.report import ValidationReport
from czb_core.schema.validators import BaseSingleCellValidator
from czb_core.types import ModelType, Organism
from model_runners.scgpt.cells import TokenizedCells
from model_runners.scgpt.files import Vocab, load_args, load_vocab
from model_runners.scgpt.inference import EMBEDDING_MODES, auto_batch_size, embed, load_model
from model_runners.scgpt.tokenizer import tokenize

NO_GENES_FIX = (
    "filter out the cells without any of scGPT's genes first (e.g. keep the vocabulary genes, then "
    "sc.pp.filter_cells(adata, min_genes=1)); such cells carry nothing for the model to read"
)
IDS_TO_SYMBOLS_FIX = (
    "add the gene symbols as var['feature_name'] (CELLxGENE files carry them), e.g. by mapping the Ensembl "
    "ids to symbols with czb_core.schema.gene_mapping.map_ids_to_symbols"
)


class ScgptValidator(BaseSingleCellValidator):
    """Human, gene symbols, raw counts; the vocabulary overlap and the cells without a vocabulary gene
    once the checkpoint is on disk (base class). Mixed into `Scgpt`."""

    model_type = ModelType.SCGPT
    available_organisms = (Organism.HUMAN,)
    required_obs_keys = ()
    required_var_keys = ()
    gene_id_kind = "symbol"
    requires_raw_counts = True
    vocabulary_shares = (0.1, 0.5)  # genes outside the vocabulary are dropped; under 10% leaves too little
    cell_input = "a vocabulary gene"
    no_genes_fix = NO_GENES_FIX

    def check(self, data, organism: Optional[Organism] = None) -> ValidationReport:
        """The base checks, with the fix for Ensembl ids that no var column names as symbols."""
        manager = data if isinstance(data, DataManager) else self.data_manager(data, organism)
        report = super().check(manager)
        if not any(column in manager.var for column in SYMBOL_COLUMNS):
            report.problems = [replace(p, fix=IDS_TO_SYMBOLS_FIX) if p.code == "ids_not_symbols" else p
                               for p in report.problems]
        return report

    def vocabulary(self, weights_dirs: dict[str, Path]) -> Optional[set[str]]:
        """The gene symbols of the checkpoint's `vocab.json` (special tokens excluded)."""
        return set(self.read_vocab(weights_dirs).gene_names)

    @staticmethod
    def read_vocab(weights_dirs: dict[str, Path]) -> Vocab:
        folder = weights_dirs[MODEL_ROLE]
        return load_vocab(folder, load_args(folder).pad_token)


class Scgpt(ScgptValidator, BaseModelImplementation):
    """One scGPT checkpoint. The whole-human variant downloads its folder; the others take it from `--weights`."""

    params = (
        Param("emb_mode", "str", "cls", "cls: the output at <cls> (the authors' and cz-benchmarks' choice); "
              "mean: the average over the cell's gene positions", label="Embedding", choices=EMBEDDING_MODES),
        precision_param(),
    )
    default_batch_size = None  # from the free GPU memory, 16 on the CPU (see inference.auto_batch_size)
    embeds_cells_apart = True  # a cell's binning and tie draws are its own (seeded by its input row)

    # -- the protocol ------------------------------------------------------------------------------

    def load(self, weights_dir: Path, device: str) -> None:
        self.model = load_model(weights_dir, device)

    def prepare(self, rows, manager: DataManager) -> TokenizedCells:
        return tokenize(manager.counts(rows), manager.genes_g, self.model.vocab, self.model.args, self.args.seed,
                        manager.first_row)

    def embed(self, inputs: TokenizedCells, batch_size, progress, cancel) -> RunOutput:
        self.batch_size_used = batch_size or auto_batch_size(self.model, int(inputs.lengths.max(initial=1)))
        batched = embed(self.model, inputs, mode=self.args.emb_mode, batch_size=self.batch_size_used,
                        precision=self.args.precision, progress=progress, cancel=cancel)
        self.batch_size_used, emb_nd = batched.batch_size, batched.outputs[0]
        max_genes = self.model.args.max_seq_len - 1
        facts = {
            "tokenizer seed": inputs.seed,
            "vocabulary genes per cell": f"median {np.median(inputs.n_genes):.0f}, max {inputs.n_genes.max():,}",
            "cells sampled": f"{np.count_nonzero(inputs.n_genes > max_genes):,} cells had more than "
                             f"{max_genes:,} genes and kept a seeded random {max_genes:,} of them",
        }
        return RunOutput(emb_nd=emb_nd, facts=facts)

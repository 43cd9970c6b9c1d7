"""TranscriptFormer (Pearce et al. 2025): cell embeddings and count log-likelihoods from its checkpoints.

One weights entry per variant: the authors' archive, unpacked (`config.json`, `model_weights.pt`,
`vocabs/`). The species a variant knows are its `resources.species` in config.yaml before the
download and the checkpoint's own gene tables after it; a dataset of another species is refused (the
authors' code would tokenize every gene as unknown, or need a swapped gene table). `prepare`
tokenizes the cells from `manager.counts` (raw counts wherever the data manager found them);
`embed` returns the embedding and `obs['transcriptformer_llh']`.

A cell with no expressed gene in the vocabulary cannot be embedded (its sequence would be `[START]`
alone, and its log-likelihood an average over no genes), so a run refuses such cells with a count and
a fix; the validator reports them before the run whenever it can.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from czb_core.errors import ConfigError, WeightsError
from czb_core.models.base import BaseModelImplementation
from czb_core.models.params import Param, precision_param
from czb_core.models.registry import MODEL_ROLE
from czb_core.models.runner import RunOutput
from czb_core.schema.data_manager import DataManager, DataNeeds
from czb_core.schema.report import Severity, ValidationReport
from czb_core.schema.validators import BaseSingleCellValidator
from czb_core.types import ModelType, Organism
from model_runners.transcriptformer.cells import TokenizedCells
from model_runners.transcriptformer.files import (
    GENE_TABLE_SUFFIX,
    UNKNOWN,
    VOCABS_DIR,
    Checkpoint,
    find_checkpoint_folder,
    load_checkpoint_files,
)
from model_runners.transcriptformer.tokenizer import aux_tokens, gene_tokens, tokenize

LLH_COLUMN = "transcriptformer_llh"
NO_GENES_FIX = (
    "filter cells without expressed vocabulary genes first, e.g. sc.pp.filter_cells(adata, min_genes=1) after "
    "keeping the model's genes; such cells give the model nothing to read"
)


class TranscriptformerValidator(BaseSingleCellValidator):
    """Ensembl ids, raw counts, a species the variant knows; assay tokens and the vocabulary once the
    checkpoint is on disk."""

    model_type = ModelType.TRANSCRIPTFORMER
    available_organisms = None  # per variant: resources['species'] (see data_needs)
    required_obs_keys = ()  # obs['assay'] is read when present; a missing one gives 'unknown' tokens
    required_var_keys = ()
    gene_id_kind = "ensembl"
    requires_raw_counts = True
    cell_input = "genes"
    no_genes_fix = NO_GENES_FIX

    def data_needs(self) -> DataNeeds:
        return dataclasses.replace(super().data_needs(), organisms=self.variant_organisms())

    def variant_organisms(self) -> tuple[Organism, ...]:
        by_name = {o.latin_name: o for o in Organism}
        names = self.variant_config.resources.get("species") or ()
        unknown = [n for n in names if n not in by_name]
        if unknown or not names:
            raise ConfigError(f"variant {self.variant} of TranscriptFormer needs resources.species of known "
                              f"organisms in config.yaml (unknown: {unknown or 'none listed'})")
        return tuple(by_name[n] for n in names)

    def check_weights(self, manager: DataManager, report: ValidationReport, weights_dirs: dict[str, Path]) -> None:
        """The species the checkpoint knows, the vocabulary overlap, each cell's assay token and, once the
        data is loaded, the exact count of cells without vocabulary genes."""
        checkpoint = load_checkpoint_files(weights_dirs[MODEL_ROLE])
        report.ran("species")
        known = checkpoint.organisms
        if manager.organism is not None and manager.organism not in known:
            report.add("species", "species_not_in_checkpoint", Severity.ERROR,
                       f"this {self.name} checkpoint has gene tables for {', '.join(checkpoint.species)}; the "
                       f"dataset is {manager.organism.latin_name}.",
                       "choose a variant trained on this species (tf_exemplar or tf_metazoa cover more)")
        super().check_weights(manager, report, weights_dirs)  # overlap, and cells without vocabulary genes
        self._report_aux_tokens(report, manager, checkpoint)

    def known_genes(self, genes_g: np.ndarray, weights_dirs: dict[str, Path]) -> np.ndarray:
        checkpoint = load_checkpoint_files(weights_dirs[MODEL_ROLE])
        return gene_tokens(genes_g, checkpoint.token_ids, len(checkpoint.data.special_tokens)) >= 0

    def vocabulary(self, weights_dirs: dict[str, Path]) -> Optional[set[str]]:
        return self._vocabulary_of(load_checkpoint_files(weights_dirs[MODEL_ROLE]))

    @staticmethod
    def _vocabulary_of(checkpoint: Checkpoint) -> set[str]:
        return set(checkpoint.token_ids) - set(checkpoint.data.special_tokens)

    def _report_aux_tokens(self, report: ValidationReport, manager: DataManager, checkpoint: Checkpoint) -> None:
        """Which aux (assay) token each cell gets, as counts per token; cells left `unknown` are a warning."""
        obs = manager.obs
        for column, vocab in checkpoint.aux_vocabs.items():
            check = f"{column} token"
            report.ran(check)
            token_n = aux_tokens(obs, {column: vocab})[:, 0]
            name_of = {token: value for value, token in vocab.items()}
            tokens, n_cells = np.unique(token_n, return_counts=True)
            ranked = sorted(zip(n_cells, tokens), key=lambda pair: (-pair[0], name_of[pair[1]]))
            report.facts[f"{column} tokens"] = "; ".join(f"{name_of[t]}: {n:,} cells" for n, t in ranked)
            examples = ", ".join(repr(v) for v in list(k for k in vocab if k != UNKNOWN)[:3])
            if column not in obs:
                report.add(check, f"no_{column}_column", Severity.WARNING,
                           f"obs has no '{column}' column, so every cell gets the '{UNKNOWN}' {column} token.",
                           f"add obs['{column}'] with CELLxGENE {column} names (e.g. {examples})")
                continue
            values = obs[column].astype(object).to_numpy()
            left_unknown = values[token_n == vocab[UNKNOWN]]
            unlisted = sorted({v for v in left_unknown if isinstance(v, str) and v != UNKNOWN})
            if unlisted:
                n_unlisted = int(np.isin(values.astype(str), unlisted).sum())
                report.add(check, f"unknown_{column}", Severity.WARNING,
                           f"{n_unlisted:,} cells have a {column} value the model does not list "
                           f"({', '.join(unlisted[:3])}); they get the '{UNKNOWN}' token.",
                           f"rename obs['{column}'] values to the model's names (e.g. {examples})")


@dataclass
class LoadedTranscriptformer:
    """What `load` keeps in memory: the checkpoint's files and the network on its device."""

    checkpoint: Checkpoint
    encoder: object  # inference.CellEncoder (torch is imported only when a model is loaded)


class Transcriptformer(TranscriptformerValidator, BaseModelImplementation):
    """One TranscriptFormer variant; sizes, tokens and gene tables come from its checkpoint."""

    params = (
        precision_param(),
        Param("attention", "str", "auto", "auto: FlexAttention on a GPU, eager products on the CPU; both compute "
              "the same masked, count-biased, soft-capped attention", label="Attention",
              choices=("auto", "flex", "eager")),
        Param("clip_counts", "float", 30.0, "counts above this are clipped (the authors' inference default)",
              label="Clip counts", minimum=1.0),
        Param("gene_embeddings", "list", (), "Ensembl ids, comma-separated: the contextual embedding of each of these "
              "genes in every cell that expresses it, saved beside the h5ad as `gene_embeddings` (each cell-gene "
              "pair takes embed_dim x 4 bytes: 8 KiB for TF-Sapiens; the run states the total before it starts)",
              label="Contextual gene embeddings for"),
    )
    default_batch_size = None  # from the free GPU memory; 4 on the CPU (see CellEncoder.auto_batch_size)

    @property
    def embeds_cells_apart(self) -> bool:
        """Cells embed apart, but the contextual gene embeddings are gathered over all cells of the run."""
        return not self.args.gene_embeddings

    @classmethod
    def esm2_gene_table(cls, variant, dirs, organism):
        """The checkpoint's `vocabs/<species>_gene.h5` (gene id -> ESM-2 vector) for the organism, when cached."""
        if MODEL_ROLE not in dirs:
            return None
        try:
            folder = find_checkpoint_folder(dirs[MODEL_ROLE])
        except WeightsError:
            return None
        path = folder / VOCABS_DIR / f"{organism.latin_name}{GENE_TABLE_SUFFIX}"
        return path if path.is_file() else None

    def load(self, weights_dir: Path, device: str) -> None:
        from model_runners.transcriptformer.inference import CellEncoder, load_network

        checkpoint = load_checkpoint_files(weights_dir)
        self.model = LoadedTranscriptformer(
            checkpoint, CellEncoder(load_network(checkpoint), device, self.args.precision, self.args.attention))

    def load_key(self) -> tuple:
        return (self.args.precision, self.args.attention)

    def prepare(self, rows, manager: DataManager) -> TokenizedCells:
        checkpoint = self.model.checkpoint
        token_g = gene_tokens(manager.genes_g, checkpoint.token_ids, len(checkpoint.data.special_tokens))
        return tokenize(manager.counts(rows), token_g, manager.obs.iloc[rows], checkpoint.aux_vocabs,
                        checkpoint.sizes.seq_len, self.args.clip_counts)

    def embed(self, inputs: TokenizedCells, batch_size, progress, cancel) -> RunOutput:
        from model_runners.transcriptformer.inference import GeneOutputs

        encoder = self.model.encoder
        self.batch_size_used = batch_size or encoder.auto_batch_size()
        genes_wanted = self._genes_wanted()
        collected = GeneOutputs(genes_wanted, encoder.spec.embed_dim) if genes_wanted else None
        notes: list[str] = []
        if collected is not None:
            pairs = int(np.isin(inputs.tokens_t, list(genes_wanted)).sum())
            notes.append(f"contextual gene embeddings: {pairs:,} cell-gene pairs x {encoder.spec.embed_dim} dims = "
                         f"{pairs * encoder.spec.embed_dim * 4 / 2**20:,.1f} MiB, saved beside the h5ad")
            progress(notes[-1], 0, None)
        out = encoder.run(inputs, self.args.clip_counts, self.batch_size_used, progress, cancel, gene_outputs=collected)
        self.batch_size_used = out.batch_size
        extras = {}
        if collected is not None:
            extras = dict(zip(("gene_embeddings_cell", "gene_embeddings_gene", "gene_embeddings"), collected.result()))
        facts = {"attention": encoder.attention,
                 "genes per cell": f"median {int(np.median(inputs.lengths)) if len(inputs) else 0:,} "
                                   f"(at most {self.model.checkpoint.sizes.seq_len:,} read)"}
        return RunOutput(emb_nd=out.emb_nd, obs={LLH_COLUMN: out.nll_n}, extras=extras, notes=notes, facts=facts)

    def _genes_wanted(self) -> dict[int, str]:
        """token -> Ensembl id of the genes asked for; ids the checkpoint does not know are an error."""
        wanted = [str(g).split(".")[0] for g in self.args.gene_embeddings]
        token_ids = self.model.checkpoint.token_ids
        unknown = [g for g in wanted if g not in token_ids]
        if unknown:
            raise ConfigError(f"gene_embeddings: {len(unknown)} gene(s) are not in the {self.variant} vocabulary "
                              f"({', '.join(unknown[:5])}); give Ensembl gene ids the model knows")
        return {int(token_ids[g]): g for g in wanted}

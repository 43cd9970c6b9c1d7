"""UCE (Rosen et al. 2023): cells of eight species in one space through protein-language-model gene tokens.

Two weights entries per variant: `model` (the checkpoint `.torch`, a state dict holding the frozen token
table) and `model_files` (offsets, chromosome table, protein-embedding dicts and `all_tokens.torch`,
shared by both variants), both named in `config.yaml` (or filled by an admin's import); no run parameter
points elsewhere, and `--weights` replaces only the checkpoint. `check_weights` resolves the dataset's
genes against the organism's files (case-insensitive symbols; genes without a protein embedding or a
chromosome position are dropped and counted) and, when asked for, applies the authors' optional filter
(genes detected in >= 10 cells, then cells with >= 25 of those genes) by marking the dropped cells in the
data manager, so the output keeps the input order of the kept cells and names the dropped ones.
`prepare` restricts the counts to the usable genes; `embed` samples each group of cells' sentences
(`sampler`) and runs the network (`encoder`) on batches of sentences of one length, cut to that length.

Chunked and sharded runs equal the whole run. A cell's sentence is drawn from the generator of its group
of `CHUNK_CELLS` input rows, and chunks and Ray shards hold whole groups (`row_alignment`), so every cell
gets the sentence it gets in the whole run. Its batch may differ (batches are formed per group, and the
batch size may be the CPU's, the GPU's, or one halved after a CUDA out-of-memory error), but a batch never
carries a pad, so the other cells of a batch do not enter a cell's embedding: what is left is
floating-point summation order (the encoder's batch-dependence figure; `tests/integration/test_uce_run.py`
compares a streamed run with the whole one, and batches of 1 with batches of 5).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from czb_core.errors import ConfigError, WeightsError
from czb_core.models.base import BaseModelImplementation
from czb_core.models.params import Param, precision_param
from czb_core.models.runner import RunOutput
from czb_core.schema.data_manager import DataManager
from czb_core.schema.report import Severity, ValidationReport
from czb_core.schema.validators import BaseSingleCellValidator
from czb_core.types import ModelType, Organism
from model_runners.uce import files
from model_runners.uce.sampler import CHUNK_CELLS, CountsBlock, SentenceSpec, sample_sentences

MODEL_FILES = "model_files"  # the weights entry of the shared model files
FILTER_MIN_CELLS, FILTER_MIN_GENES = 10, 25  # the authors' optional filter
CPU_BATCH_SIZE = 4  # ~1,070-token sentences of 5,120-wide rows: a few cells at a time on a CPU
NO_COUNTS_FIX = (
    "drop cells without counts in UCE's genes, e.g. sc.pp.filter_cells(adata, min_genes=1) after keeping the "
    "genes UCE embeds, or run with filter=true (the authors' filter)"
)


class UCEValidator(BaseSingleCellValidator):
    """Eight species, gene symbols, raw counts; the gene check once the model files are on disk."""

    model_type = ModelType.UCE
    available_organisms = (Organism.HUMAN, Organism.MOUSE, Organism.ZEBRAFISH, Organism.TROPICAL_CLAWED_FROG,
                           Organism.MOUSE_LEMUR, Organism.WILD_BOAR, Organism.CRAB_EATING_MACAQUE,
                           Organism.RHESUS_MACAQUE)
    required_obs_keys = ()
    required_var_keys = ()
    gene_id_kind = "symbol"
    requires_raw_counts = True

    def check_weights(self, manager: DataManager, report: ValidationReport, weights_dirs: dict[str, Path]) -> None:
        """Genes with a protein embedding for the organism (case-insensitive overlap), counted."""
        organism = manager.organism
        if organism not in self.available_organisms:  # the organism check already said why
            return
        folder, resources = weights_dirs[MODEL_FILES], self.variant_config.resources
        vocab = files.vocabulary(folder, resources, organism)
        upper_g = np.char.upper(np.asarray(manager.genes_g, dtype=str))
        self._check_vocabulary(report, upper_g, np.isin(upper_g, list(vocab)), len(vocab))
        table = files.gene_table(manager.genes_g, folder, resources, organism)
        report.facts["genes used"] = (
            f"{table.n_usable:,} of {len(table.usable_g):,} ({table.n_without_embedding:,} without a protein "
            f"embedding and {table.n_without_position:,} without a chromosome position dropped)")


@dataclass
class UceInputs:
    """Counts of the kept cells over the usable genes, and each usable gene's token, chromosome and start."""

    block: CountsBlock
    token_u: np.ndarray
    chrom_u: np.ndarray
    start_u: np.ndarray
    spec: SentenceSpec
    facts: dict
    rows_n: np.ndarray  # each kept cell's row in the input: what its sentence's random draws are keyed on


class UCE(UCEValidator, BaseModelImplementation):
    """One UCE variant; per-variant facts are the variant's `resources` in config.yaml."""

    params = (
        precision_param("fp32"),  # the reference by default: bf16 is faster, within 1e-3 cosine of fp32 in the tests
        Param("filter", "bool", False, f"the authors' filter: keep genes detected in >= {FILTER_MIN_CELLS} cells, "
              f"then cells with >= {FILTER_MIN_GENES} of them; dropped cells are named in the run record",
              label="Filter cells and genes"),
    )
    default_batch_size = None  # the variant's GPU batch (resources) on a GPU, CPU_BATCH_SIZE on the CPU
    row_alignment = CHUNK_CELLS  # the cells sampled from one generator
    required_resources = ("model_file", "n_heads", "sample_size", "pad_length", "pad_token", "chrom_token_right",
                          "cls_token", "token_file", "offsets_file", "chrom_file", "protein_embeddings_dir", "species",
                          "gpu_batch_size")

    @property
    def embeds_cells_apart(self) -> bool:
        """Cells embed apart, unless the authors' filter is on: it keeps genes by how many cells of the whole
        dataset detect them."""
        return not self.args.filter

    @classmethod
    def esm2_gene_table(cls, variant, dirs, organism):
        """The organism's protein-embedding file (symbol -> ESM-2 vector) in the cached model files."""
        if MODEL_FILES not in dirs or organism.latin_name not in variant.resources["species"]:
            return None
        try:
            return files.protein_embedding_path(dirs[MODEL_FILES], variant.resources, organism)
        except WeightsError:  # model files without this species' table: another model may have one
            return None

    def weights_sources(self) -> dict[str, str]:
        sources = super().weights_sources()
        if MODEL_FILES not in sources:
            raise ConfigError(f"variant {self.variant} names no weights['{MODEL_FILES}'] URI")
        return sources

    def check_weights(self, manager: DataManager, report: ValidationReport, weights_dirs: dict[str, Path]) -> None:
        """The gene check; with the data loaded, the filter (when on) and cells left without usable counts."""
        super().check_weights(manager, report, weights_dirs)
        if not manager.is_bound or manager.organism not in self.available_organisms or report.errors:
            return
        if self.args.filter:
            report.ran("filter")
            kept_n = cells_passing_filter(manager)
            dropped = manager.obs.index[manager.cells_kept_n & ~kept_n]
            manager.cells_kept_n = manager.cells_kept_n & kept_n
            report.facts["cells dropped by the filter"] = len(dropped)
            if len(dropped):
                report.add("filter", "cells_filtered", Severity.INFO,
                           f"the filter drops {len(dropped):,} cells with fewer than {FILTER_MIN_GENES} genes "
                           f"(e.g. {', '.join(map(str, dropped[:3]))}); the output holds the other "
                           f"{int(manager.cells_kept_n.sum()):,} cells in input order.")
        usable_g = self._usable_genes(manager, weights_dirs[MODEL_FILES])
        counts_n = np.asarray(manager.counts(np.flatnonzero(manager.cells_kept_n))[:, usable_g].sum(axis=1)).ravel()
        empty = np.flatnonzero(counts_n <= 0)
        if len(empty):
            names = manager.obs.index[np.flatnonzero(manager.cells_kept_n)[empty[:3]]]
            report.add("empty cells", "cells_without_usable_genes", Severity.ERROR,
                       f"{len(empty):,} of {len(counts_n):,} cells have no counts in the genes UCE embeds "
                       f"(e.g. {', '.join(map(str, names))}); UCE samples genes in proportion to log1p(counts) "
                       "and cannot sample from nothing.", NO_COUNTS_FIX)

    def _usable_genes(self, manager: DataManager, model_files: Path) -> np.ndarray:
        """Genes with a token and a position, and (with the filter on) detected in enough cells."""
        usable_g = files.gene_table(manager.genes_g, model_files, self.variant_config.resources,
                                    manager.organism).usable_g
        if self.args.filter:
            usable_g = usable_g & genes_passing_filter(manager)
        return usable_g

    # -- the protocol ------------------------------------------------------------------------------

    def load(self, weights_dir: Path, device: str) -> None:
        from model_runners.uce.encoder import UceFormatError, load_encoder

        path = model_file(Path(weights_dir), self.variant_config.resources["model_file"])
        try:
            self.model = load_encoder(path, int(self.variant_config.resources["n_heads"]), device)
        except UceFormatError as exc:
            raise WeightsError(f"{path.name}: {exc}") from exc

    def prepare(self, rows, manager: DataManager) -> UceInputs:
        model_files, resources = self.weights_dirs[MODEL_FILES], self.variant_config.resources
        table = files.gene_table(manager.genes_g, model_files, resources, manager.organism)
        usable_g = self._usable_genes(manager, model_files)
        x_nu = manager.counts(rows)[:, usable_g].tocsr()
        x_nu.eliminate_zeros()
        chrom_offset = files.token_rows(model_files, resources)
        _, n_codes = files.chromosome_table(Path(model_files) / resources["chrom_file"])
        if chrom_offset + n_codes > self.model.dims.table_rows:
            raise WeightsError(f"the checkpoint's token table has {self.model.dims.table_rows:,} rows, but "
                               f"{resources['token_file']} puts chromosome tokens at {chrom_offset:,} and the "
                               f"chromosome table has {n_codes:,} chromosomes: the files do not belong together")
        spec = SentenceSpec(int(resources["sample_size"]), int(resources["pad_length"]), int(resources["pad_token"]),
                            int(resources["cls_token"]), int(resources["chrom_token_right"]), chrom_offset)
        if spec.pad_length > self.model.dims.max_len:
            raise WeightsError(f"the checkpoint has {self.model.dims.max_len} positions, fewer than the padded "
                               f"length {spec.pad_length}")
        dropped = manager.obs.index[~manager.cells_kept_n]
        facts = {"genes used": int(usable_g.sum()),
                 "genes without a protein embedding": table.n_without_embedding,
                 "genes without a chromosome position": table.n_without_position,
                 "cells dropped by the filter": [str(name) for name in dropped]}
        return UceInputs(CountsBlock(x_nu.indptr, x_nu.indices, x_nu.data), table.token_g[usable_g],
                         table.chrom_g[usable_g], table.start_g[usable_g], spec, facts,
                         manager.first_row + np.arange(manager.n_cells)[rows])

    def embed(self, inputs: UceInputs, batch_size, progress, cancel) -> RunOutput:
        on_cuda = self.model.device.startswith("cuda")
        self.batch_size_used = batch_size or (int(self.variant_config.resources["gpu_batch_size"]) if on_cuda
                                              else CPU_BATCH_SIZE)
        n_cells, done = inputs.block.n_cells, 0
        parts = []
        progress("embed", 0, n_cells)
        for tokens_nl, lengths_n in sample_sentences(inputs.block, inputs.token_u, inputs.chrom_u, inputs.start_u,
                                                     inputs.spec, self.args.seed, inputs.rows_n):
            def chunk_progress(step: str, n_done: float, total, first: int = done) -> None:
                progress(step, first + n_done, n_cells)

            batched = self.model.embed(tokens_nl, lengths_n, self.batch_size_used, self.args.precision,
                                       chunk_progress, cancel)
            self.batch_size_used = batched.batch_size
            parts.append(batched.outputs[0])
            done += len(tokens_nl)
        emb_nd = np.concatenate(parts) if parts else np.zeros((0, self.model.dims.output_dim), np.float32)
        facts = {**inputs.facts,
                 "token table": (f"{self.model.table_bytes / 1e9:.2f} GB, {self.model.table_dtype} "
                                 f"on {self.model.device}"),
                 "batches": f"up to {self.batch_size_used} cells of one sentence length, no padding"}
        notes = []
        if facts["cells dropped by the filter"]:
            dropped = facts["cells dropped by the filter"]
            notes.append(f"the filter dropped {len(dropped):,} cells (listed in the run record's facts, e.g. "
                         f"{', '.join(dropped[:3])}); the embedding holds the other cells in input order")
        return RunOutput(emb_nd=emb_nd, facts=facts, notes=notes)


def model_file(folder: Path, name: str) -> Path:
    """The checkpoint in the model entry: the variant's file name, or the only `.torch` file of the folder."""
    if (folder / name).is_file():
        return folder / name
    found = sorted(folder.glob("*.torch"))
    if len(found) == 1:
        return found[0]
    raise WeightsError(f"the UCE model weights hold no {name} and {len(found)} other .torch files, not one; "
                       "check the variant's model URI or --weights")


def genes_passing_filter(manager: DataManager) -> np.ndarray:
    """Genes detected in at least FILTER_MIN_CELLS of all cells (the authors' first filter)."""
    x_ng = manager.counts()
    return np.bincount(x_ng.indices[x_ng.data > 0], minlength=x_ng.shape[1]) >= FILTER_MIN_CELLS


def cells_passing_filter(manager: DataManager) -> np.ndarray:
    """Cells with at least FILTER_MIN_GENES detected genes among those passing the gene filter.

    As the authors ran it, the cell filter counts every gene that passed the gene filter, whether or
    not UCE has a protein embedding for it."""
    detected_ng = manager.counts()[:, genes_passing_filter(manager)] > 0
    return np.asarray(detected_ng.sum(axis=1)).ravel() >= FILTER_MIN_GENES

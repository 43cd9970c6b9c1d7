"""Geneformer (Theodoris et al. 2023): rank-value tokens of each cell through a BERT encoder.

Two weights entries per variant: `model` (the checkpoint folder) and `dictionaries` (the gene
dictionaries every variant of a family shares), both named in `config.yaml` (or filled by an admin's
import); no run parameter points elsewhere, and `--weights` replaces only the checkpoint. Per-variant
facts (dictionary file names, special tokens, input size, whether `<cls>`/`<eos>` are added) are
variant `resources` in `config.yaml`, so the code holds no variant table. `prepare` tokenizes the cells
(and the perturbed cells, with perturbation params); `embed` embeds them and stores the cosine shift in
`obs["perturbation_shift"]`.

Cells with no gene in the vocabulary cannot be embedded (V1 has no token to read at all, and a V2
`<cls><eos>` sequence says nothing about the cell), so a run refuses them with a count and a fix
instead of inventing embeddings; the validator reports them before the run whenever it can.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from czb_core.errors import ConfigError
from czb_core.models.base import BaseModelImplementation
from czb_core.models.params import Param, precision_param
from czb_core.models.runner import RunOutput
from czb_core.schema.data_manager import DataManager
from czb_core.schema.report import Severity
from czb_core.schema.validators import BaseSingleCellValidator
from czb_core.types import ModelType, Organism
from model_runners.geneformer.dictionaries import DictionaryFiles, GeneDictionaries, load_dictionaries
from model_runners.geneformer.perturbation import resolve_perturbation, token_map
from model_runners.geneformer.tokenizer import RankValueTokenizer, TokenizedCells, TokenizerSpec

SHIFT_COLUMN = "perturbation_shift"
DICTIONARIES = "dictionaries"  # the weights entry of the gene dictionaries
NO_TOKENS_FIX = (
    "filter cells without detected genes first, e.g. sc.pp.filter_cells(adata, min_genes=1) after keeping "
    "Geneformer's genes; such cells carry nothing for the model to rank"
)


class GeneformerValidator(BaseSingleCellValidator):
    """Human, Ensembl ids, raw counts; the vocabulary check once the dictionaries are on disk.

    Mixed into `Geneformer`, whose variant config it reads.
    """

    model_type = ModelType.GENEFORMER
    available_organisms = (Organism.HUMAN,)
    required_obs_keys = ()
    required_var_keys = ()
    gene_id_kind = "ensembl"
    requires_raw_counts = True
    cell_input = "tokens"
    no_genes_fix = NO_TOKENS_FIX

    def known_genes(self, genes_g: np.ndarray, weights_dirs: dict[str, Path]) -> np.ndarray:
        """Names the dictionaries place on a gene token (after version stripping, upper-casing, retired ids)."""
        return self.load_dictionaries(weights_dirs[DICTIONARIES]).tokens_of(genes_g) >= 0

    def vocabulary(self, weights_dirs: dict[str, Path]) -> Optional[set[str]]:
        """Names the tokenizer places on a gene token (Ensembl ids, retired ids, symbols)."""
        return self.load_dictionaries(weights_dirs[DICTIONARIES]).accepted_names

    def vocabulary_size(self, weights_dirs: dict[str, Path]) -> Optional[int]:
        dictionaries = self.load_dictionaries(weights_dirs[DICTIONARIES])
        return len(dictionaries.token_ids) - dictionaries.n_special

    def load_dictionaries(self, folder: Path) -> GeneDictionaries:
        r = self.variant_config.resources
        files = DictionaryFiles(r["token_dictionary_file"], r["gene_median_file"], r["gene_mapping_file"])
        return load_dictionaries(folder, files, int(r["n_special_tokens"]))


@dataclass
class GeneformerInputs:
    """Tokens of the cells (and of the perturbed cells, when a perturbation is asked for)."""

    cells: TokenizedCells
    perturbed: Optional[TokenizedCells]
    spec: TokenizerSpec


class Geneformer(GeneformerValidator, BaseModelImplementation):
    """One Geneformer variant. Per-variant facts (dictionary files, special tokens, input size, whether
    <cls>/<eos> are added) are the variant's `resources` in config.yaml; its params set defaults."""

    params = (
        Param("emb_mode", "str", "cls", "cls: the <cls> position (V2 only); cell: the mean of gene positions",
              label="Embedding", choices=("cls", "cell")),
        Param("emb_layer", "int", -1, "-1: the second-to-last layer (the authors' default); 0: the last layer",
              label="Layer", choices=(-1, 0)),
        precision_param(),
        Param("feature_deletion", "list", (), "genes deleted before ranking (in-silico perturbation), "
              "comma-separated ids or symbols", label="Delete genes"),
        Param("feature_activation", "list", (), "genes moved to the top ranks, in order, comma-separated",
              label="Activate genes"),
        Param("feature_map", "mapping", {}, "GENE=TOKEN pairs, comma-separated; TOKEN an id or a name such as "
              "<mask>", label="Map genes to tokens", parse=token_map),
    )
    default_batch_size = None  # from the free GPU memory, 16 on the CPU (see CellEncoder.auto_batch_size)
    embeds_cells_apart = True  # each cell's rank-value tokens and forward pass are its own
    required_resources = ("token_dictionary_file", "gene_median_file", "gene_mapping_file", "n_special_tokens",
                          "model_input_size", "add_cls_eos")

    def check_params(self) -> None:
        if self.args.emb_mode == "cls" and not self.variant_config.resources["add_cls_eos"]:
            raise ConfigError(f"{self.variant} has no <cls> token, so emb_mode=cls is impossible; use emb_mode=cell")

    def weights_sources(self) -> dict[str, str]:
        sources = super().weights_sources()
        if DICTIONARIES not in sources:
            raise ConfigError(f"variant {self.variant} names no weights['{DICTIONARIES}'] URI")
        return sources

    # -- the protocol ------------------------------------------------------------------------------

    def load(self, weights_dir: Path, device: str) -> None:
        from model_runners.geneformer.inference import CellEncoder, load_checkpoint

        self.model = CellEncoder(load_checkpoint(weights_dir), self.args.emb_layer, device, self.args.precision)

    def load_key(self) -> tuple:
        return (self.args.emb_layer, self.args.precision)

    def prepare(self, rows, manager: DataManager) -> GeneformerInputs:
        dictionaries = self.load_dictionaries(self.weights_dirs[DICTIONARIES])
        x_ng = manager.counts(rows)
        obs = manager.obs.iloc[rows]
        n_counts_n = obs["n_counts"].to_numpy() if "n_counts" in obs else None
        perturbation = resolve_perturbation(dictionaries, self.args.feature_deletion,
                                            self.args.feature_activation, self.args.feature_map)
        spec = self._spec(dictionaries, self.model.config.max_position_embeddings)
        tokenizer = RankValueTokenizer(dictionaries, spec)
        cells = tokenizer.tokenize(x_ng, manager.genes_g, n_counts_n)
        perturbed = None
        if perturbation:
            perturbed = tokenizer.tokenize(x_ng, manager.genes_g, n_counts_n, perturbation)
        return GeneformerInputs(cells, perturbed, tokenizer.spec)

    def embed(self, inputs: GeneformerInputs, batch_size, progress, cancel) -> RunOutput:
        cells, spec = inputs.cells, inputs.spec
        self.batch_size_used = batch_size or self.model.auto_batch_size(int(cells.lengths.max()))
        emb_nd = self._embed(cells, spec, progress, cancel, "embed")
        if inputs.perturbed is None:
            return RunOutput(emb_nd=emb_nd)
        changed = np.flatnonzero(cells.differs_from(inputs.perturbed))
        self._refuse_all_padding(inputs.perturbed.take(changed), spec)
        perturbed_nd = emb_nd.copy()
        shift_n = np.zeros(len(cells), dtype=np.float32)  # an unchanged cell keeps its embedding exactly
        if len(changed):
            perturbed_nd[changed] = self._embed(inputs.perturbed.take(changed), spec, progress, cancel,
                                                "embed perturbed")
            shift_n[changed] = cosine_distance(emb_nd[changed], perturbed_nd[changed])
        return RunOutput(emb_nd=perturbed_nd, obs={SHIFT_COLUMN: shift_n})

    def _spec(self, dictionaries: GeneDictionaries, max_positions: int) -> TokenizerSpec:
        """The variant's sequence layout; sequences never exceed the checkpoint's position table."""
        input_size = int(self.variant_config.resources["model_input_size"])
        if input_size > max_positions:
            self.report.add("input size", "input_size_capped", Severity.INFO,
                            f"the checkpoint has {max_positions} positions; sequences are cut to that instead "
                            f"of the variant's input size of {input_size}.")
            input_size = max_positions
        with_specials = bool(self.variant_config.resources["add_cls_eos"])
        return TokenizerSpec(
            input_size=input_size,
            cls_token=dictionaries.special("<cls>") if with_specials else None,
            eos_token=dictionaries.special("<eos>") if with_specials else None,
            pad_token=dictionaries.special("<pad>"),
        )

    def _embed(self, cells: TokenizedCells, spec: TokenizerSpec, progress, cancel, step: str) -> np.ndarray:
        batched = self.model.embed(
            cells, mode=self.args.emb_mode, pad_token=spec.pad_token, has_cls=spec.cls_token is not None,
            has_eos=spec.eos_token is not None, batch_size=self.batch_size_used, progress=progress,
            cancel=cancel, step=step,
        )
        self.batch_size_used = batched.batch_size
        return batched.outputs[0]

    @staticmethod
    def _refuse_all_padding(cells: TokenizedCells, spec: TokenizerSpec) -> None:
        """A feature_map to `<pad>` must leave each perturbed cell at least one gene to attend to."""
        cell_of_token = np.repeat(np.arange(len(cells)), cells.lengths)
        attended = np.bincount(cell_of_token[cells.tokens != spec.pad_token], minlength=len(cells))
        bare = int(np.count_nonzero(attended <= spec.n_specials))
        if bare:
            raise ConfigError(f"feature_map leaves {bare:,} cells with no gene token besides <pad>; map fewer genes")


def cosine_distance(a_nd: np.ndarray, b_nd: np.ndarray) -> np.ndarray:
    """1 - cos(a, b) per row, as `|a/|a| - b/|b||^2 / 2` (the same value, but exact for tiny shifts,
    where `1 - cos` rounds to 0 in float64); 0 = no shift, 2 = opposite."""
    a_nd = a_nd.astype(np.float64) / np.linalg.norm(a_nd.astype(np.float64), axis=1, keepdims=True)
    b_nd = b_nd.astype(np.float64) / np.linalg.norm(b_nd.astype(np.float64), axis=1, keepdims=True)
    return (0.5 * np.square(a_nd - b_nd).sum(axis=1)).astype(np.float32)

"""Geneformer (Theodoris et al. 2023): rank-value tokens of each cell through a BERT encoder.

Two weights entries per variant: `model` (the checkpoint folder) and `dictionaries` (the gene
dictionaries every variant of a family shares). Per-variant facts (dictionary file names, special
tokens, input size, whether `<cls>`/`<eos>` are added) are variant params in `config.yaml`, so the
code holds no variant table. A run tokenizes all cells, embeds them, and with perturbation params
also embeds the perturbed cells and stores the cosine shift in `obs["perturbation_shift"]`.

Cells with no gene in the vocabulary cannot be embedded (V1 has no token to read at all, and a V2
`<cls><eos>` sequence says nothing about the cell), so a run refuses them with a count and a fix
instead of inventing embeddings; the validator reports them before the run whenever it can.
"""

from __future__ import annotations

import argparse
from typing import Optional

import numpy as np

from czb_core.datasets import SingleCellDataset
from czb_core.errors import ConfigError, WeightsError
from czb_core.header import DatasetHeader, header_from_anndata
from czb_core.model import BaseModelImplementation
from czb_core.types import DataType, ModelType, Organism
from czb_core.validation import Severity, ValidationReport
from czb_core.validators import BaseSingleCellValidator
from model_runners.geneformer.dictionaries import DictionaryFiles, GeneDictionaries, load_dictionaries
from model_runners.geneformer.perturbation import gene_list, resolve_perturbation, token_map
from model_runners.geneformer.tokenizer import RankValueTokenizer, TokenizedCells, TokenizerSpec, detected_genes

SHIFT_COLUMN = "perturbation_shift"
NO_TOKENS_FIX = (
    "filter cells without detected genes first, e.g. sc.pp.filter_cells(adata, min_genes=1) after keeping "
    "Geneformer's genes; such cells carry nothing for the model to rank"
)


class GeneformerValidator(BaseSingleCellValidator):
    """Human, Ensembl ids, raw counts; vocabulary and token checks once the dictionaries are cached.

    Mixed into `Geneformer`, whose variant config and weights cache it reads.
    """

    model_type = ModelType.GENEFORMER
    available_organisms = (Organism.HUMAN,)
    required_obs_keys = ()
    required_var_keys = ()
    gene_id_kind = "ensembl"
    requires_raw_counts = True

    def cached_dictionaries(self) -> Optional[GeneDictionaries]:
        """The variant's dictionaries when the weights cache already holds them, else None (never downloads).

        A cached copy that cannot be read also gives None here: validation goes on, and the run reports
        the `WeightsError` with its fix.
        """
        uri = self.dictionaries_uri()
        if not self.weights_cache.is_cached(uri):
            return None
        try:
            return self.load_dictionaries(self.weights_cache.fetch(uri))
        except WeightsError:
            return None

    def vocabulary(self) -> Optional[set[str]]:
        """Names the tokenizer places on a gene token (Ensembl ids, retired ids, symbols), if cached."""
        dictionaries = self.cached_dictionaries()
        return None if dictionaries is None else dictionaries.accepted_names

    def check(self, header: DatasetHeader, organism: Optional[Organism] = None) -> ValidationReport:
        """The base checks plus cells without tokens, as far as the header shows them (empty rows)."""
        report = super().check(header, organism)
        if "vocabulary" not in report.checks_run:
            report.facts["vocabulary"] = "not checked yet: the gene dictionaries download with the first run"
        if header.n_empty_cells:
            scope = "" if header.empty_cells_exact else f" in a sample of {header.x_sample.n_rows_sampled}"
            self._report_no_tokens(report, f"{header.n_empty_cells:,} cells{scope} have no counts at all")
        return report

    def _validate_dataset(self, dataset: SingleCellDataset) -> ValidationReport:
        """At run time the matrix is loaded: count cells without tokens exactly when the dictionaries are cached."""
        dictionaries = self.cached_dictionaries()
        if dictionaries is None:
            return super()._validate_dataset(dataset)
        report = BaseSingleCellValidator.check(self, header_from_anndata(dataset.adata, dataset.path), dataset.organism)
        x_ng, gene_names = self.counts_and_genes(dataset)
        n_empty = int(np.count_nonzero(detected_genes(x_ng, dictionaries.tokens_of(gene_names)) == 0))
        if n_empty:
            self._report_no_tokens(report, f"{n_empty:,} of {x_ng.shape[0]:,} cells have no gene in the vocabulary")
        return report

    def _report_no_tokens(self, report: ValidationReport, what: str) -> None:
        report.add("empty cells", "cells_without_tokens", Severity.ERROR,
                   f"{what}; {self.name} cannot embed a cell without tokens.", NO_TOKENS_FIX)


class Geneformer(GeneformerValidator, BaseModelImplementation):
    """One Geneformer variant. Params: see `create_parser` and the variant's `params` in config.yaml."""

    display_name = "Geneformer"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.dictionaries: Optional[GeneDictionaries] = None  # loaded with the weights

    def create_parser(self) -> argparse.ArgumentParser:
        parser = super().create_parser()
        parser.add_argument("--emb_mode", type=str, help="cls (position 0, V2 only) or cell (mean of gene positions)")
        parser.add_argument("--emb_layer", type=int, help="-1: second-to-last layer, 0: last layer")
        parser.add_argument("--precision", type=str, help="auto (bf16 on CUDA, fp32 on CPU), fp32 or bf16")
        parser.add_argument("--feature_deletion", type=gene_list, default=(),
                            help="genes to delete before ranking, comma-separated ids or symbols")
        parser.add_argument("--feature_activation", type=gene_list, default=(),
                            help="genes to move to the top ranks, in order, comma-separated")
        parser.add_argument("--feature_map", type=token_map, default={},
                            help="GENE=TOKEN pairs, comma-separated; TOKEN an id or a name such as <mask>")
        parser.add_argument("--dictionaries", type=str, default=None,
                            help="URI of the gene dictionaries (default: the variant's)")
        return parser

    def parse_args(self, argv, overrides) -> argparse.Namespace:
        args = super().parse_args(argv, overrides)
        required = ("token_dictionary_file", "gene_median_file", "gene_mapping_file", "n_special_tokens",
                    "model_input_size", "add_cls_eos", "emb_mode", "emb_layer", "precision")
        missing = [key for key in required if getattr(args, key, None) is None]
        if missing:
            raise ConfigError(f"variant {self.variant} of {self.display_name} lacks params {missing} in config.yaml")
        if args.emb_mode not in ("cls", "cell"):
            raise ConfigError(f"emb_mode must be cls or cell, got {args.emb_mode!r}")
        if args.emb_mode == "cls" and not args.add_cls_eos:
            raise ConfigError(f"{self.variant} has no <cls> token, so emb_mode=cls is impossible; use emb_mode=cell")
        if args.emb_layer not in (-1, 0):
            raise ConfigError(f"emb_layer must be -1 (second-to-last layer) or 0 (last layer), got {args.emb_layer}")
        if args.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"precision must be auto, fp32 or bf16, got {args.precision!r}")
        return args

    # -- weights -----------------------------------------------------------------------------------

    def dictionaries_uri(self) -> str:
        uri = self.args.dictionaries or self.variant_config.weights.get("dictionaries")
        if not uri:
            raise ConfigError(f"variant {self.variant} names no weights['dictionaries'] URI")
        return uri

    def load_dictionaries(self, folder) -> GeneDictionaries:
        files = DictionaryFiles(self.args.token_dictionary_file, self.args.gene_median_file,
                                self.args.gene_mapping_file)
        return load_dictionaries(folder, files, int(self.args.n_special_tokens))

    def download_model_weights(self, dataset) -> None:
        """The checkpoint (base class), then the dictionaries; the manifest records both."""
        super().download_model_weights(dataset)
        uri = self.dictionaries_uri()
        self.dictionaries = self.load_dictionaries(
            self.weights_cache.fetch(uri, progress=self.progress, cancel=self.cancel))
        self.weights_manifest = {**(self.weights_manifest or {}), "dictionaries": self.weights_cache.manifest(uri)}

    # -- the run -----------------------------------------------------------------------------------

    def counts_and_genes(self, dataset: SingleCellDataset):
        """(`x_ng` raw counts, their gene names in the model's naming), wherever the counts live."""
        x_ng, var_names = dataset.counts()
        adata = dataset.adata
        var = adata.var if var_names.equals(adata.var_names) else adata.raw.var  # raw.X has its own genes
        _, gene_names = self.gene_ids(var, var_names)
        return x_ng, gene_names

    def run_model(self, dataset: SingleCellDataset) -> None:
        from model_runners.geneformer.inference import CellEncoder, load_checkpoint

        dictionaries = self.dictionaries
        x_ng, gene_names = self.counts_and_genes(dataset)
        obs = dataset.adata.obs
        n_counts_n = obs["n_counts"].to_numpy() if "n_counts" in obs else None
        perturbation = resolve_perturbation(dictionaries, self.args.feature_deletion,
                                            self.args.feature_activation, self.args.feature_map)
        encoder = CellEncoder(load_checkpoint(self.weights_dir), self.args.emb_layer, self.device, self.args.precision)
        tokenizer = RankValueTokenizer(dictionaries, self._spec(dictionaries, encoder.config.max_position_embeddings))
        self.progress("tokenize", 0, 1)
        cells = tokenizer.tokenize(x_ng, gene_names, n_counts_n)
        self.progress("tokenize", 1, 1)
        self._refuse_cells_without_tokens(cells, dataset)
        emb_nd = self._embed(encoder, cells, tokenizer.spec, "embed")
        if perturbation:
            perturbed = tokenizer.tokenize(x_ng, gene_names, n_counts_n, perturbation)
            changed = np.flatnonzero(cells.differs_from(perturbed))
            self._refuse_all_padding(perturbed.take(changed), tokenizer.spec)
            perturbed_nd = emb_nd.copy()
            shift_n = np.zeros(len(cells), dtype=np.float32)  # an unchanged cell keeps its embedding exactly
            if len(changed):
                perturbed_nd[changed] = self._embed(encoder, perturbed.take(changed), tokenizer.spec, "embed perturbed")
                shift_n[changed] = cosine_distance(emb_nd[changed], perturbed_nd[changed])
            self.extra_obs[SHIFT_COLUMN] = shift_n
            emb_nd = perturbed_nd
        dataset.set_output(self.model_type, DataType.EMBEDDING, emb_nd)

    def _spec(self, dictionaries: GeneDictionaries, max_positions: int) -> TokenizerSpec:
        """The variant's sequence layout; sequences never exceed the checkpoint's position table."""
        input_size = int(self.args.model_input_size)
        if input_size > max_positions:
            self.report.add("input size", "input_size_capped", Severity.INFO,
                            f"the checkpoint has {max_positions} positions; sequences are cut to that instead "
                            f"of the variant's input size of {input_size}.")
            input_size = max_positions
        with_specials = bool(self.args.add_cls_eos)
        return TokenizerSpec(
            input_size=input_size,
            cls_token=dictionaries.special("<cls>") if with_specials else None,
            eos_token=dictionaries.special("<eos>") if with_specials else None,
            pad_token=dictionaries.special("<pad>"),
        )

    def _embed(self, encoder, cells: TokenizedCells, spec: TokenizerSpec, step: str) -> np.ndarray:
        return encoder.embed(
            cells, mode=self.args.emb_mode, pad_token=spec.pad_token, has_cls=spec.cls_token is not None,
            has_eos=spec.eos_token is not None, batch_size=self.args.batch_size, progress=self.progress,
            cancel=self.cancel, step=step,
        )

    def _refuse_cells_without_tokens(self, cells: TokenizedCells, dataset: SingleCellDataset) -> None:
        empty = np.flatnonzero(cells.n_genes == 0)
        if len(empty):
            names = ", ".join(map(str, dataset.adata.obs_names[empty[:3]]))
            self._report_no_tokens(self.report, f"{len(empty):,} of {len(cells):,} cells (e.g. {names}) have no "
                                                "gene in the vocabulary")
            self.report.raise_for_errors()

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

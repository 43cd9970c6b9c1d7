"""scGenePT (Istrate et al. 2024): the expression of control cells under a CRISPR perturbation.

Three weights entries per variant: `model` (the fine-tuned folder, one `*.pt`), `vocab` (scGPT's
whole-human `vocab.json`, the checkpoint's token ids) and `training_data` (GEARS' processed copy of the
training screen, whose conditions name the perturbations the variant was trained on). The flavour's text
encoders and head count are variant `resources`.

`prepare` picks the control cells (`obs[control_key] == control_value`), samples `n_cells` of them with
replacement (seeded, as the authors' `pred_perturb_from_ctrl` does), normalises their counts as the model
was trained (normalize_total to 1e4 over all the dataset's genes, log1p) and keeps the gene axis: the
dataset's genes in the vocabulary, in dataset order. `embed` predicts each sampled cell's expression with
the perturbed genes flagged and returns it as `pred_ng` over `genes_g`, with the control cell each row
came from in `obs["control_cell"]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from czb_core.errors import ConfigError
from czb_core.models.base import BaseModelImplementation
from czb_core.models.params import Param, precision_param
from czb_core.models.prediction import CONTROL_CELL_COLUMN, predicted_effect
from czb_core.models.registry import MODEL_ROLE
from czb_core.models.runner import RunOutput
from czb_core.schema.data_manager import DataManager, DataNeeds
from czb_core.schema.normalization import log_normalize
from czb_core.schema.report import Severity, ValidationReport
from czb_core.schema.validators import BaseSingleCellValidator
from czb_core.types import ModelType, Organism, Output
from model_runners.scgenept.perturbation import (
    CONTROL,
    flags_of,
    parse_perturbation,
    read_training_conditions,
    trained_genes,
    unknown_genes_message,
)
from model_runners.scgpt.files import Vocab, load_vocab

VOCAB = "vocab"
TRAINING_DATA = "training_data"
N_TOP_FACTS = 5


class ScgeneptValidator(BaseSingleCellValidator):
    """Human, gene symbols, raw counts, control cells in an obs column; once the files are on disk, the
    vocabulary overlap and the perturbation (trained on, in the vocabulary, among the dataset's genes)."""

    model_type = ModelType.SCGENEPT
    output = Output.PREDICTION
    available_organisms = (Organism.HUMAN,)
    required_obs_keys = ()  # the control column is a parameter: see data_needs
    required_var_keys = ()
    gene_id_kind = "symbol"
    requires_raw_counts = True
    vocabulary_shares = (0.1, 0.5)

    def data_needs(self) -> DataNeeds:
        needs = super().data_needs()
        return DataNeeds(needs.gene_naming, needs.raw_counts, needs.organisms, (self.args.control_key,),
                         needs.var_keys)

    def check(self, data, organism: Optional[Organism] = None) -> ValidationReport:
        """The base checks, the control cells, and a perturbation given at all."""
        manager = data if isinstance(data, DataManager) else self.data_manager(data, organism)
        report = super().check(manager)
        report.ran("control cells")
        key, value = self.args.control_key, self.args.control_value
        if key in manager.obs:
            labels = manager.obs[key].astype(str)
            n_control = int((labels == value).sum())
            report.facts["control cells"] = f"{n_control:,} with {key} == {value!r}"
            if not n_control:
                values = ", ".join(map(repr, labels.unique()[:8]))
                report.add("control cells", "no_control_cells", Severity.ERROR,
                           f"no cell has {key} == {value!r} (values: {values}).",
                           "set control_value (and control_key) to the label of the unperturbed cells")
        report.ran("perturbation")
        if not self.args.perturbation:
            report.add("perturbation", "no_perturbation", Severity.ERROR, f"{self.name} needs a perturbation.",
                       "set perturbation=GENE+ctrl or GENE1+GENE2, from the genes of the variant's training screen")
        return report

    def check_weights(self, manager: DataManager, report: ValidationReport, weights_dirs: dict[str, Path]) -> None:
        """The vocabulary overlap, then each perturbed gene against the training screen, the vocabulary and
        the dataset's genes."""
        super().check_weights(manager, report, weights_dirs)
        if not self.args.perturbation:
            return
        genes = parse_perturbation(self.args.perturbation).genes
        screen = self.variant_config.resources.get("training_dataset", "its training screen")
        trained = trained_genes(read_training_conditions(weights_dirs[TRAINING_DATA]))
        vocab = self.read_vocab(weights_dirs).gene_names
        dataset = set(map(str, manager.genes_g))
        for known, what, fix in (
            (trained, f"perturbed in the {screen} screen this variant was trained on",
             "choose a perturbation of the training screen's genes, or a variant trained on another screen"),
            (vocab, "in scGPT's vocabulary", "use the gene symbol the vocabulary knows"),
            (dataset, "among the dataset's genes", "the perturbed gene must be measured: use a dataset that has it"),
        ):
            missing = [g for g in genes if g not in known]
            if missing:
                report.add("perturbation", "perturbation_gene_unknown", Severity.ERROR,
                           unknown_genes_message(missing, known, what) + ".", fix)
                return
        report.facts["perturbation"] = self.args.perturbation

    def vocabulary(self, weights_dirs: dict[str, Path]) -> Optional[set[str]]:
        return set(self.read_vocab(weights_dirs).gene_names)

    def perturbation_choices(self) -> Optional[list[str]]:
        """The perturbations of the variant's training screen (`A+ctrl`, `A+B`), once its training data is on
        this server (a form then offers only these); None before."""
        uri = self.variant_config.weights.get(TRAINING_DATA)
        if uri is None or not self.weights_cache.is_cached(uri):
            return None
        return [c for c in read_training_conditions(self.weights_cache.fetch(uri)) if c != CONTROL]

    @staticmethod
    def read_vocab(weights_dirs: dict[str, Path]) -> Vocab:
        return load_vocab(weights_dirs[VOCAB])


@dataclass
class ControlSample:
    """The model inputs: normalised expression of the sampled control cells on the gene axis."""

    values_ng: np.ndarray
    genes_g: np.ndarray
    tokens_g: np.ndarray
    flags_g: np.ndarray
    cell_names_n: np.ndarray
    n_control: int


class Scgenept(ScgeneptValidator, BaseModelImplementation):
    """One scGenePT flavour fine-tuned on one screen."""

    params = (
        Param("perturbation", "str", "", "GENE+ctrl or GENE1+GENE2, genes of the variant's training screen",
              label="Perturbation"),
        Param("control_key", "str", "condition", "obs column that marks the control cells", label="Control column",
              obs_column=True),
        Param("control_value", "str", "ctrl", "label of the control cells in that column", label="Control label"),
        Param("n_cells", "int", 300, "control cells sampled (with replacement, seeded) to predict from",
              label="Cells sampled", minimum=1),
        precision_param(),
    )
    default_batch_size = 8
    required_resources = ("text_encoders", "n_heads", "training_dataset")

    def check_params(self) -> None:
        if self.args.perturbation:
            parse_perturbation(self.args.perturbation)

    def weights_sources(self) -> dict[str, str]:
        sources = super().weights_sources()
        missing = [role for role in (MODEL_ROLE, VOCAB, TRAINING_DATA) if role not in sources]
        if missing:
            raise ConfigError(f"variant {self.variant} names no weights {missing} URI")
        return sources

    # -- the protocol ------------------------------------------------------------------------------

    def load(self, weights_dir: Path, device: str) -> None:
        from model_runners.scgenept.inference import load_network

        resources = self.variant_config.resources
        self.model = load_network(weights_dir, int(resources["n_heads"]), list(resources["text_encoders"]), device)

    def prepare(self, rows, manager: DataManager) -> ControlSample:
        rows = np.asarray(rows)
        labels = manager.obs[self.args.control_key].astype(str).to_numpy()
        control_rows = rows[labels[rows] == self.args.control_value]
        if not len(control_rows):
            raise ConfigError(f"no cell has {self.args.control_key} == {self.args.control_value!r}")
        picked = np.random.default_rng(self.args.seed).integers(0, len(control_rows), self.args.n_cells)
        sampled = control_rows[picked]
        tokens_all = self.read_vocab(self.weights_dirs).tokens_of(manager.genes_g)
        axis_g = np.flatnonzero(tokens_all >= 0)
        genes_g = np.asarray(manager.genes_g, dtype=str)[axis_g]
        values_ng = log_normalize(manager.counts(sampled))[:, axis_g]
        flags_g = flags_of(parse_perturbation(self.args.perturbation), genes_g)
        return ControlSample(values_ng, genes_g, tokens_all[axis_g], flags_g,
                             np.asarray(manager.obs.index[sampled], dtype=str), len(control_rows))

    def embed(self, inputs: ControlSample, batch_size, progress, cancel) -> RunOutput:
        from model_runners.scgenept.inference import predict

        self.batch_size_used = batch_size or self.default_batch_size
        batched = predict(self.model, inputs.values_ng, inputs.tokens_g, inputs.flags_g,
                          batch_size=self.batch_size_used, precision=self.args.precision, progress=progress,
                          cancel=cancel)
        self.batch_size_used, pred_ng = batched.batch_size, batched.outputs[0]
        return RunOutput(pred_ng=pred_ng, genes_g=inputs.genes_g, obs={CONTROL_CELL_COLUMN: inputs.cell_names_n},
                         facts=self.prediction_facts(inputs, pred_ng))

    def prediction_facts(self, inputs: ControlSample, pred_ng: np.ndarray) -> dict:
        """The run in words: control cells, gene axis, and the control mean and predicted change of the
        genes the prediction moves most."""
        effect = predicted_effect(pred_ng, inputs.values_ng, inputs.genes_g)
        up, down = effect.top_genes(N_TOP_FACTS)

        def describe(table) -> str:
            return ", ".join(f"{r.gene} {r.control_mean:.3f} -> {r.predicted_mean:.3f} ({r.change:+.3f})"
                             for r in table.itertuples())

        return {
            "perturbation": self.args.perturbation,
            "control cells sampled": f"{len(inputs.values_ng):,} drawn with replacement (seed {self.args.seed}) "
                                     f"from {inputs.n_control:,} cells with {self.args.control_key} == "
                                     f"{self.args.control_value!r}",
            "gene axis": f"{len(inputs.genes_g):,} dataset genes in the vocabulary, normalize_total 1e4 + log1p",
            "control mean (all genes)": f"{effect.control_mean_g.mean():.4f}",
            "mean |predicted change|": f"{np.abs(effect.change_g).mean():.4f}",
            "largest predicted increases (control mean -> predicted)": describe(up),
            "largest predicted decreases (control mean -> predicted)": describe(down),
        }

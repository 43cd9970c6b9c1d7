"""Scoring predicted perturbation effects the way cz-benchmarks does, and two baselines to read them against.

Two task definitions, both consuming predictions and labels (never a model):

- cz-benchmarks 0.15 "perturbation expression prediction": a dataset with a condition column, a control
  label, a Wilcoxon DE table (`uns["de_results_wilcoxon"]`, computed here when absent) and treated cells
  matched 1-to-1 to control cells (`uns["control_cells_map"]`, drawn here with a seed when absent).
  DE genes pass `pval_adj < 1e-4` and `|logfoldchange| >= 1`; per condition half of them (floor) are the
  targets, drawn with seed 42 in the order conditions first appear, and a condition with fewer than 5
  targets is skipped. The score of a condition is the Spearman correlation between the observed log fold
  change and the predicted change (treated mean vs matched control mean over the targets); the summary
  across conditions is describe()-style statistics. "ratio" is ln((t + 1e-8) / (c + 1e-8)), falling back
  to the difference for a condition where any mean is <= 0.
- cz-benchmarks 0.10 metrics of one perturbation: MSE between predicted and observed mean expression and
  the Pearson correlation of their changes from the control mean, on all genes and on the top-20 and
  top-100 DE genes of truth vs control, plus the Jaccard index of the top-20 / top-100 DE sets of
  prediction vs control and truth vs control.

Baselines: "no change" predicts the control mean; "mean perturbation effect" predicts the control mean
plus the average effect of the dataset's other perturbed conditions.

`evaluate_prediction_run` reads a prediction run (`czb_core.models.prediction`) against the dataset it was
predicted from. It needs the dataset's counts on the same gene axis, read as the model read them: the
model's data manager decides where the counts and the gene symbols are, so the observed change is computed
on what the model saw. The condition, its column and the control label default to the run's own parameters
(`perturbation`, `control_key`, `control_value`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats

from czb_core.errors import InputError
from czb_core.io.header import read_header
from czb_core.io.reading import as_csr, read_anndata
from czb_core.models.prediction import CONTROL_CELL_COLUMN, PredictedEffect, is_prediction, predicted_effect
from czb_core.models.registry import get_model
from czb_core.schema.normalization import TARGET_SUM, log_normalize, scale_factors, scale_log1p
from czb_core.tasks.differential_expression import top_genes_by_score, wilcoxon_table
from czb_core.tasks.results import MetricResult
from czb_core.types import Organism

DE_TABLE_KEY = "de_results_wilcoxon"
CONTROL_MAP_KEY = "control_cells_map"
PVAL_MAX = 1e-4  # strict: pval_adj < PVAL_MAX
LFC_MIN = 1.0  # |logfoldchange| >= LFC_MIN
MASK_FRACTION = 0.5
MIN_TARGET_GENES = 5
TARGET_SEED = 42
RATIO_EPS = 1e-8
OPERATIONS = ("ratio", "difference")
TOP_K = (20, 100)
SPEARMAN = "spearman_correlation_calculation"


# -- expression --------------------------------------------------------------------------------------


def rows_with_label(obs: pd.DataFrame, key: str, value: str) -> np.ndarray:
    """Row numbers of the cells whose `obs[key]` equals `value` (compared as text)."""
    if key not in obs:
        raise InputError(f"obs has no column {key!r}; columns: {', '.join(map(str, obs.columns[:20]))}")
    labels_n = obs[key].astype(str).to_numpy()
    rows = np.flatnonzero(labels_n == str(value))
    if not len(rows):
        present = pd.unique(labels_n)[:10]
        raise InputError(f"no cell has {key} == {value!r}; values include {', '.join(map(repr, present))}")
    return rows


# -- cz-benchmarks 0.15: perturbation expression prediction ------------------------------------------


@dataclass
class ExpressionTaskInputs:
    """What the 0.15 task reads besides the prediction: the filtered DE table, the target genes per
    condition and the treated -> matched control cell map per condition."""

    de_results: pd.DataFrame  # condition, gene_id, logfoldchange
    targets: dict[str, list[str]]
    control_map: dict[str, dict[str, str]]
    condition_key: str
    control_name: str
    notes: list[str] = field(default_factory=list)


def filter_de_results(de: pd.DataFrame, condition_key: str = "condition", pval_max: float = PVAL_MAX,
                      lfc_min: float = LFC_MIN) -> pd.DataFrame:
    """The DE rows that count: `pval_adj < pval_max` and `|logfoldchange| >= lfc_min`, as
    [condition_key, gene_id, logfoldchange] (a `gene` column is read as `gene_id`)."""
    de = de.rename(columns={"gene": "gene_id"}) if "gene_id" not in de and "gene" in de else de
    missing = [c for c in (condition_key, "gene_id", "logfoldchange", "pval_adj") if c not in de]
    if missing:
        raise InputError(f"the DE table lacks columns {missing}; it needs {condition_key}, gene_id (or gene), "
                         "logfoldchange and pval_adj")
    kept = de[(de["pval_adj"] < pval_max) & (de["logfoldchange"].abs() >= lfc_min)]
    if kept.empty:
        raise InputError(f"no DE gene passes pval_adj < {pval_max:g} and |logfoldchange| >= {lfc_min:g}")
    return kept[[condition_key, "gene_id", "logfoldchange"]].reset_index(drop=True)


def sample_target_genes(de: pd.DataFrame, condition_key: str = "condition", fraction: float = MASK_FRACTION,
                        min_genes: int = MIN_TARGET_GENES, seed: int = TARGET_SEED) -> dict[str, list[str]]:
    """Per condition, floor(fraction x its DE genes) drawn without replacement from one seeded stream, in
    the order conditions first appear; a condition whose draw would be under `min_genes` gets no targets
    and leaves the stream untouched."""
    rng = np.random.RandomState(seed)
    targets = {}
    for condition in de[condition_key].unique():
        genes = de.loc[de[condition_key] == condition, "gene_id"].to_numpy()
        n = int(len(genes) * fraction)
        if n >= min_genes:
            targets[str(condition)] = [str(g) for g in rng.choice(genes, n, replace=False)]
    return targets


def match_control_cells(obs_names: Sequence[str] | np.ndarray, conditions_n: Sequence[str] | np.ndarray,
                        control_name: str,
                        seed: int = TARGET_SEED) -> dict[str, dict[str, str]]:
    """Treated cell -> a control cell, per condition, for a dataset without a matched-control map: each
    condition's cells get distinct control cells drawn with `seed` (with replacement only when the
    condition has more cells than there are controls)."""
    names_n, conditions_n = np.asarray(obs_names, dtype=str), np.asarray(conditions_n, dtype=str)
    controls = names_n[conditions_n == control_name]
    if not len(controls):
        raise InputError(f"no control cells ({control_name!r}) to match the perturbed cells with")
    rng = np.random.default_rng(seed)
    mapping = {}
    for condition in pd.unique(conditions_n[conditions_n != control_name]):
        treated = names_n[conditions_n == condition]
        drawn = rng.choice(controls, len(treated), replace=len(treated) > len(controls))
        mapping[str(condition)] = dict(zip(treated.tolist(), drawn.tolist()))
    return mapping


def expression_task_inputs(x_ng, genes_g: Sequence[str], obs: pd.DataFrame, uns: Mapping, *,
                           condition_key: str = "condition", control_name: str = "ctrl",
                           pval_max: float = PVAL_MAX, lfc_min: float = LFC_MIN, fraction: float = MASK_FRACTION,
                           min_genes: int = MIN_TARGET_GENES, seed: int = TARGET_SEED,
                           x_is_counts: bool = True) -> ExpressionTaskInputs:
    """The task's inputs from a dataset laid out as cz-benchmarks 0.15 specifies. `x_ng` is what the DE
    test runs on when `uns` has no DE table: raw counts (normalised here, 1e4 and log1p) or, with
    `x_is_counts=False`, log-normalised expression; gene ids are `genes_g` (the dataset's var index)."""
    conditions_n = rows_conditions(obs, condition_key, control_name)
    notes = []
    if DE_TABLE_KEY in uns:
        de = pd.DataFrame(uns[DE_TABLE_KEY])
    else:
        perturbed = [c for c in pd.unique(conditions_n) if c != control_name]
        x_log_ng = log_normalize(x_ng) if x_is_counts else _dense(x_ng)
        de = wilcoxon_table(x_log_ng, genes_g, conditions_n, control_name, perturbed)
        de = de.rename(columns={"condition": condition_key})
        notes.append(f"no uns['{DE_TABLE_KEY}']: the DE table was computed here (Wilcoxon, {len(perturbed)} "
                     "conditions against the controls)")
    filtered = filter_de_results(de, condition_key, pval_max, lfc_min)
    if CONTROL_MAP_KEY in uns:
        control_map = {str(c): {str(t): str(m) for t, m in dict(pairs).items()}
                       for c, pairs in dict(uns[CONTROL_MAP_KEY]).items()}
    else:
        control_map = match_control_cells(obs.index, conditions_n, control_name, seed)
        notes.append(f"no uns['{CONTROL_MAP_KEY}']: each perturbed cell was matched to a control cell drawn with "
                     f"seed {seed}")
    targets = sample_target_genes(filtered, condition_key, fraction, min_genes, seed)
    return ExpressionTaskInputs(filtered, targets, control_map, condition_key, control_name, notes)


def _dense(x_ng) -> np.ndarray:
    return np.asarray(x_ng.toarray() if sp.issparse(x_ng) else x_ng, dtype=np.float32)


def rows_conditions(obs: pd.DataFrame, condition_key: str, control_name: str) -> np.ndarray:
    """Each cell's condition as text, checked to include the controls."""
    rows_with_label(obs, condition_key, control_name)
    return obs[condition_key].astype(str).to_numpy()


@dataclass(frozen=True)
class ConditionScore:
    """One condition's Spearman correlation, with what it was computed on."""

    condition: str
    spearman: float
    n_genes: int
    n_pairs: int
    operation: str  # the one used: "ratio", or "difference" (asked for, or the ratio's fallback)


def score_expression_prediction(pred_ng, cell_index: Sequence[str], gene_index: Sequence[str],
                                inputs: ExpressionTaskInputs, operation: str = "ratio"
                                ) -> tuple[list[ConditionScore], dict[str, str]]:
    """(scores of the conditions that could be scored, skipped condition -> why). `pred_ng` rows are the
    cells `cell_index` (treated and control cells), columns the genes `gene_index` (ids of the DE table)."""
    if operation not in OPERATIONS:
        raise InputError(f"pred_effect_operation must be one of {OPERATIONS}, got {operation!r}")
    pred_ng = pred_ng.toarray() if sp.issparse(pred_ng) else np.asarray(pred_ng, dtype=np.float64)
    if pred_ng.shape != (len(cell_index), len(gene_index)):
        raise InputError(f"the prediction is {pred_ng.shape[0]} x {pred_ng.shape[1]}, its index names "
                         f"{len(cell_index)} cells x {len(gene_index)} genes")
    row_of = {str(c): i for i, c in enumerate(cell_index)}
    col_of = {str(g): i for i, g in enumerate(gene_index)}
    de = inputs.de_results
    scores, skipped = [], {}
    for condition in pd.unique(de[inputs.condition_key].astype(str)):
        if condition not in inputs.targets:
            skipped[condition] = "fewer target genes than the minimum"
            continue
        rows = de[(de[inputs.condition_key].astype(str) == condition) & de["gene_id"].astype(str).isin(
            inputs.targets[condition])].dropna(subset=["logfoldchange"])
        rows = rows[rows["gene_id"].astype(str).isin(col_of)]
        if rows.empty:
            skipped[condition] = "no target gene among the predicted genes"
            continue
        if condition not in inputs.control_map:
            raise InputError(f"condition {condition!r} has no entry in the matched-control map")
        pairs = [(row_of[t], row_of[c]) for t, c in inputs.control_map[condition].items()
                 if t in row_of and c in row_of]
        if not pairs:
            skipped[condition] = "no treated cell with its matched control among the predicted cells"
            continue
        cols = np.array([col_of[g] for g in rows["gene_id"].astype(str)])
        treated_rows, control_rows = (np.array(side) for side in zip(*pairs))
        treated_g = pred_ng[np.ix_(treated_rows, cols)].mean(0)
        control_g = pred_ng[np.ix_(control_rows, cols)].mean(0)
        change_g, used = predicted_change(treated_g, control_g, operation)
        scores.append(ConditionScore(condition, spearman(rows["logfoldchange"].to_numpy(), change_g), len(cols),
                                     len(pairs), used))
    return scores, skipped


def predicted_change(treated_g: np.ndarray, control_g: np.ndarray, operation: str) -> tuple[np.ndarray, str]:
    """The predicted effect per gene and the operation used (a ratio needs every mean above zero)."""
    if operation == "ratio" and np.all(treated_g > 0) and np.all(control_g > 0):
        return np.log((treated_g + RATIO_EPS) / (control_g + RATIO_EPS)), "ratio"
    return treated_g - control_g, "difference"


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """scipy's Spearman statistic; undefined (a constant side, one gene) counts as 0, as in cz-benchmarks."""
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    value = float(stats.spearmanr(a, b).statistic)
    return 0.0 if math.isnan(value) else value


def expression_metrics(scores: Sequence[ConditionScore]) -> list[MetricResult]:
    """One Spearman result per condition, as the 0.15 task reports them."""
    return [MetricResult(SPEARMAN, s.spearman, {"condition": s.condition}) for s in scores]


def summarize_scores(scores: Sequence[ConditionScore]) -> dict[str, float]:
    """count, mean, std, min, 25%, 50%, 75%, max of the per-condition correlations (pandas describe)."""
    return {k: float(v) for k, v in pd.Series([s.spearman for s in scores], dtype=float).describe().items()}


# -- cz-benchmarks 0.10: one perturbation ------------------------------------------------------------


def single_perturbation_metrics(pred_ng, truth_ng, control_ng, genes_g: Sequence[str] | np.ndarray,
                                top_k: Sequence[int] = TOP_K) -> list[MetricResult]:
    """MSE and delta-Pearson on all genes and the top-k DE genes of truth vs control, and the Jaccard index
    of the top-k DE sets of prediction vs control and truth vs control (all on log-normalised expression
    over the same genes)."""
    pred_ng, truth_ng, control_ng = (np.asarray(m.toarray() if sp.issparse(m) else m, dtype=np.float64)
                                     for m in (pred_ng, truth_ng, control_ng))
    genes_g = np.asarray(genes_g, dtype=str)
    if not pred_ng.shape[1] == truth_ng.shape[1] == control_ng.shape[1] == len(genes_g):
        raise InputError("prediction, truth and control cells must cover the same genes, in the same order")
    pred_g, truth_g, control_g = pred_ng.mean(0), truth_ng.mean(0), control_ng.mean(0)
    truth_top = top_genes_by_score(truth_ng, control_ng, genes_g, max(top_k))
    pred_top = top_genes_by_score(pred_ng, control_ng, genes_g, max(top_k))
    col_of = {g: i for i, g in enumerate(genes_g)}
    subsets = {"all": np.arange(len(genes_g))}
    subsets.update({f"top{k}": np.array([col_of[g] for g in truth_top[:k]]) for k in top_k})
    results = []
    for name, cols in subsets.items():
        results.append(MetricResult("mean_squared_error", float(np.mean((truth_g[cols] - pred_g[cols]) ** 2)),
                                    {"subset": name}))
    for name, cols in subsets.items():
        results.append(MetricResult("pearson_correlation", pearson(truth_g[cols] - control_g[cols],
                                                                   pred_g[cols] - control_g[cols]),
                                    {"subset": name}))
    for k in top_k:
        a, b = set(pred_top[:k]), set(truth_top[:k])
        results.append(MetricResult("jaccard", len(a & b) / len(a | b) if a | b else 0.0, {"subset": f"top{k}"}))
    return results


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """scipy's Pearson statistic; NaN when a side is constant (the metric is undefined there)."""
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(stats.pearsonr(a, b).statistic)


# -- baselines ---------------------------------------------------------------------------------------


def no_change_baseline(control_ng: np.ndarray, n_cells: int) -> np.ndarray:
    """`n_cells` rows of the control mean: the prediction that the perturbation changes nothing."""
    return np.tile(np.asarray(control_ng, dtype=np.float64).mean(0), (n_cells, 1))


def mean_effect_baseline(x_ng, conditions_n: Sequence[str] | np.ndarray, control_name: str, condition: str,
                         n_cells: int) -> Optional[np.ndarray]:
    """`n_cells` rows of the control mean plus the average effect (condition mean minus control mean) of
    the dataset's perturbed conditions other than `condition`; None when there are none."""
    x_ng = np.asarray(x_ng.toarray() if sp.issparse(x_ng) else x_ng, dtype=np.float64)
    conditions_n = np.asarray(conditions_n, dtype=str)
    control_g = x_ng[conditions_n == control_name].mean(0)
    others = [c for c in pd.unique(conditions_n) if c not in (control_name, condition)]
    if not others:
        return None
    effect_g = np.mean([x_ng[conditions_n == c].mean(0) - control_g for c in others], axis=0)
    return np.tile(control_g + effect_g, (n_cells, 1))


# -- one prediction against the dataset it was made from ----------------------------------------------


PREDICTED_ROW = "predicted:{}"
CONTROL_ROW = "control:{}"
PREDICTORS = ("model", "no change", "mean perturbation effect")


@dataclass
class PredictionEvaluation:
    """A prediction of one condition read against the dataset: per gene the control mean, the predicted
    mean and (when the dataset holds cells of the condition) the observed mean; the 0.10 metrics and the
    0.15 Spearman of the model and of both baselines (`metrics`: one row per metric, one column per
    predictor; empty without observed cells)."""

    condition: str
    effect: PredictedEffect
    observed_mean_g: Optional[np.ndarray]
    metrics: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    @property
    def observed_change_g(self) -> Optional[np.ndarray]:
        return None if self.observed_mean_g is None else self.observed_mean_g - self.effect.control_mean_g

    def change_correlation(self) -> float:
        """Pearson correlation of the predicted and observed change over all predicted genes."""
        return float("nan") if self.observed_mean_g is None else pearson(self.effect.change_g, self.observed_change_g)


def evaluate_prediction(pred_ng, pred_genes_g: Sequence[str] | np.ndarray, control_cells_n: Sequence[str], x_ng,
                        genes_g: Sequence[str], obs: pd.DataFrame, uns: Mapping, *, condition: str,
                        condition_key: str = "condition", control_name: str = "ctrl",
                        var_names: Optional[Sequence[str]] = None) -> PredictionEvaluation:
    """Score a prediction made from sampled control cells (rows of `pred_ng` predicted from the cells
    named `control_cells_n`, in the same order) against the dataset's counts `x_ng` over `genes_g`.

    Expression is log-normalised over each cell's total counts, then read on the predicted genes. The
    0.10 metrics compare the predicted mean with the observed cells of `condition`; the 0.15 Spearman
    scores each predicted row against the control cell it was predicted from (the matched pair), on
    `condition`'s target genes drawn from the dataset's DE table as the task draws them. `var_names`
    (the dataset's own gene names, in `genes_g`'s order) lets a DE table in `uns` that uses them be read.
    """
    pred_ng = np.asarray(pred_ng, dtype=np.float64)
    pred_genes_g = np.asarray(pred_genes_g, dtype=str)
    col_of = {g: i for i, g in enumerate(np.asarray(genes_g, dtype=str))}
    missing = [g for g in pred_genes_g if g not in col_of]
    if missing:
        raise InputError(f"{len(missing):,} predicted genes are not in the dataset ({', '.join(missing[:5])}); "
                         "score a prediction against the dataset it was made from")
    row_of = {name: i for i, name in enumerate(obs.index.astype(str))}
    unknown_cells = sorted({c for c in map(str, control_cells_n) if c not in row_of})
    if unknown_cells:
        raise InputError(f"the prediction names control cells the dataset lacks ({', '.join(unknown_cells[:3])})")
    conditions_n = rows_conditions(obs, condition_key, control_name)
    x_log_ng = _log_normalize_columns(x_ng, np.array([col_of[g] for g in pred_genes_g]))
    control_ng = x_log_ng[conditions_n == control_name]
    effect = predicted_effect(pred_ng, control_ng, pred_genes_g)
    truth_ng = x_log_ng[conditions_n == condition]
    if not len(truth_ng):
        note = f"the dataset has no cells with {condition_key} == {condition!r}: nothing observed to score against"
        return PredictionEvaluation(condition, effect, None, pd.DataFrame(), [note])
    n = len(pred_ng)
    predictions = {"model": pred_ng, "no change": no_change_baseline(control_ng, n),
                   "mean perturbation effect": mean_effect_baseline(x_log_ng, conditions_n, control_name, condition, n)}
    notes = []
    if predictions["mean perturbation effect"] is None:
        notes.append("the dataset has no other perturbed condition: no mean-perturbation-effect baseline")
        del predictions["mean perturbation effect"]
    columns = {name: {(m.metric_type, m.params["subset"]): m.value
                      for m in single_perturbation_metrics(p, truth_ng, control_ng, pred_genes_g)}
               for name, p in predictions.items()}
    spearman_rows, spearman_notes = _matched_spearman(predictions, x_log_ng, row_of, control_cells_n, pred_genes_g,
                                                      conditions_n, genes_g, var_names, obs, uns, condition,
                                                      condition_key, control_name)
    notes += spearman_notes
    for name, value in spearman_rows.items():
        columns[name][(SPEARMAN, "targets")] = value
    metrics = pd.DataFrame(columns)
    metrics.index = pd.MultiIndex.from_tuples(metrics.index, names=["metric", "genes"])
    return PredictionEvaluation(condition, effect, truth_ng.mean(0), metrics.reset_index(), notes)


def evaluate_prediction_run(
    prediction: ad.AnnData, data_path: str | Path, *, organism: Optional[Organism] = None,
    condition: Optional[str] = None, condition_key: Optional[str] = None, control_name: Optional[str] = None,
) -> PredictionEvaluation:
    """The prediction's effect per gene and, when the dataset holds cells of the condition, the 0.10 metrics
    and the 0.15 Spearman of the model beside the no-change and mean-effect baselines."""
    if not is_prediction(prediction):
        raise InputError("this run output is not a perturbation prediction (write one with `czb perturb-predict`)")
    record = prediction.uns["czb_run"]
    params = record.get("params") or {}
    config = get_model(str(record.get("model")))
    validator = config.load_implementation()(config, record.get("variant"))
    manager = validator.data_manager(read_header(data_path), organism)
    adata = read_anndata(data_path)
    manager.bind(adata)
    return evaluate_prediction(
        prediction.X, prediction.var_names, prediction.obs[CONTROL_CELL_COLUMN], manager.counts(), manager.genes_g,
        adata.obs, adata.uns, condition=str(condition or params.get("perturbation")),
        condition_key=str(condition_key or params.get("control_key") or "condition"),
        control_name=str(control_name or params.get("control_value") or "ctrl"), var_names=manager.var_names)


def _log_normalize_columns(x_ng, cols: np.ndarray) -> np.ndarray:
    """`log_normalize(x_ng)[:, cols]` in float64, normalising only those columns (over each cell's total
    of every gene): the metrics compare small differences of means, and the other genes are never densified."""
    total_n = np.asarray(x_ng.sum(axis=1)).ravel()
    return scale_log1p(as_csr(x_ng)[:, cols], scale_factors(total_n, TARGET_SUM, np.float64)).toarray()


def _matched_spearman(predictions: dict, x_log_ng: np.ndarray, row_of: dict, control_cells_n, pred_genes_g,
                      conditions_n, genes_g, var_names, obs, uns, condition, condition_key, control_name
                      ) -> tuple[dict[str, float], list[str]]:
    """The 0.15 score of `condition` for each predictor: predicted row i against control cell i."""
    uns = dict(uns)
    if DE_TABLE_KEY in uns and var_names is not None:
        renamed = dict(zip(np.asarray(var_names, dtype=str), np.asarray(genes_g, dtype=str)))
        de = pd.DataFrame(uns[DE_TABLE_KEY])
        gene_column = "gene_id" if "gene_id" in de else "gene"
        if gene_column in de:
            de[gene_column] = [renamed.get(str(g), str(g)) for g in de[gene_column]]
            uns[DE_TABLE_KEY] = de
    try:
        inputs = expression_task_inputs(x_log_ng, pred_genes_g, obs, uns, condition_key=condition_key,
                                        control_name=control_name, x_is_counts=False)
    except InputError as exc:
        return {}, [f"no 0.15 Spearman: {exc}"]
    de = inputs.de_results
    inputs.de_results = de[de[condition_key].astype(str) == condition]
    control_rows = np.array([row_of[str(c)] for c in control_cells_n])
    n = len(control_rows)
    cell_index = [PREDICTED_ROW.format(i) for i in range(n)] + [CONTROL_ROW.format(i) for i in range(n)]
    inputs.control_map = {condition: {PREDICTED_ROW.format(i): CONTROL_ROW.format(i) for i in range(n)}}
    scores, notes = {}, list(inputs.notes)
    for name, pred_ng in predictions.items():
        rows_ng = np.vstack([pred_ng, x_log_ng[control_rows]])
        found, skipped = score_expression_prediction(rows_ng, cell_index, pred_genes_g, inputs)
        found = [s for s in found if s.condition == condition]
        if found:
            scores[name] = found[0].spearman
        elif condition in skipped and name == "model":
            notes.append(f"no 0.15 Spearman for {condition}: {skipped[condition]}")
    return scores, notes

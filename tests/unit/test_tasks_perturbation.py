"""The perturbation tasks on toy data whose answers are worked out by hand in the comments."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from czb_core.errors import InputError
from czb_core.models.prediction import predicted_effect
from czb_core.schema.normalization import log_normalize
from czb_core.tasks.perturbation import (
    CONTROL_MAP_KEY,
    DE_TABLE_KEY,
    ExpressionTaskInputs,
    expression_metrics,
    expression_task_inputs,
    filter_de_results,
    mean_effect_baseline,
    no_change_baseline,
    sample_target_genes,
    score_expression_prediction,
    single_perturbation_metrics,
    summarize_scores,
)

CELLS = ["tA1", "tA2", "c1", "c2", "c3", "tB1"]
GENES = ["g0", "g1", "g2"]
# A: treated mean [2, 6, 4] against control mean [1, 1, 1]: ratio ln[2, 6, 4] and difference [1, 5, 3] both rank
#    [1, 3, 2] against the observed [1, 2, 3]: rho = 1 - 6 * (0 + 1 + 1) / (3 * 8) = 0.5.
# B: treated [0.5, 2, 1.2] against its control [0, 1, 1]: a zero mean, so the ratio falls back to the
#    difference [0.5, 1, 0.2], ranks [2, 3, 1]: rho = 1 - 6 * (1 + 1 + 4) / 24 = -0.5 (the ratio with its
#    epsilon would rank [3, 2, 1], rho = -1).
# C: has DE genes but no targets: skipped.
PRED = np.array([[2, 6, 4], [2, 6, 4], [1, 1, 1], [1, 1, 1], [0, 1, 1], [0.5, 2, 1.2]], dtype=float)
DE = pd.DataFrame({"condition": ["A"] * 3 + ["B"] * 3 + ["C"],
                   "gene_id": GENES + GENES + ["g0"], "logfoldchange": [1.0, 2, 3, 1, 2, 3, 2]})
CONTROL_MAP = {"A": {"tA1": "c1", "tA2": "c2"}, "B": {"tB1": "c3"}, "C": {}}


def toy_inputs() -> ExpressionTaskInputs:
    return ExpressionTaskInputs(DE, {"A": GENES, "B": GENES}, CONTROL_MAP, "condition", "ctrl")


@pytest.mark.parametrize("operation", ["ratio", "difference"])
def test_spearman_per_condition_by_hand(operation):
    scores, skipped = score_expression_prediction(PRED, CELLS, GENES, toy_inputs(), operation)
    by_condition = {s.condition: s for s in scores}
    assert by_condition["A"].spearman == pytest.approx(0.5)
    assert by_condition["B"].spearman == pytest.approx(-0.5)
    assert by_condition["A"].operation == operation and by_condition["B"].operation == "difference"
    assert (by_condition["A"].n_pairs, by_condition["B"].n_pairs, by_condition["A"].n_genes) == (2, 1, 3)
    assert list(skipped) == ["C"]
    assert summarize_scores(scores)["mean"] == pytest.approx(0.0)
    assert summarize_scores(scores)["count"] == 2
    assert [m.params["condition"] for m in expression_metrics(scores)] == ["A", "B"]


def test_rows_and_columns_are_read_by_name_not_position():
    order_n, order_g = [5, 3, 0, 2, 4, 1], [2, 0, 1]
    scores, _ = score_expression_prediction(PRED[np.ix_(order_n, order_g)], [CELLS[i] for i in order_n],
                                            [GENES[i] for i in order_g], toy_inputs())
    assert [round(s.spearman, 6) for s in scores] == [0.5, -0.5]


def test_a_constant_prediction_scores_zero_and_bad_shapes_are_refused():
    scores, _ = score_expression_prediction(np.ones_like(PRED), CELLS, GENES, toy_inputs(), "difference")
    assert [s.spearman for s in scores] == [0.0, 0.0]
    with pytest.raises(InputError, match="6 x 3"):
        score_expression_prediction(PRED, CELLS[:5], GENES, toy_inputs())


def test_de_filter_thresholds_are_strict_and_inclusive_as_specified():
    de = pd.DataFrame({"condition": ["A"] * 4, "gene": ["a", "b", "c", "d"],
                       "logfoldchange": [1.0, -1.0, 0.99, 2.0], "pval_adj": [1e-5, 5e-5, 1e-9, 1e-4]})
    kept = filter_de_results(de)
    assert kept["gene_id"].tolist() == ["a", "b"]  # |lfc| >= 1 kept; pval_adj == 1e-4 dropped
    with pytest.raises(InputError, match="no DE gene passes"):
        filter_de_results(de[de["gene"] == "c"])


def test_target_genes_are_half_of_each_condition_seeded_and_small_conditions_skipped():
    de = pd.DataFrame({"condition": ["A"] * 12 + ["B"] * 9, "gene_id": [f"a{i}" for i in range(12)] +
                       [f"b{i}" for i in range(9)], "logfoldchange": 1.0})
    targets = sample_target_genes(de)
    assert list(targets) == ["A"] and len(targets["A"]) == 6  # B: floor(9 / 2) = 4 < 5
    assert set(targets["A"]) <= {f"a{i}" for i in range(12)} and len(set(targets["A"])) == 6
    assert sample_target_genes(de) == targets
    assert sample_target_genes(de, seed=1) != targets


def test_task_inputs_from_a_dataset_with_and_without_uns_tables():
    rng = np.random.default_rng(0)
    n_genes, conditions = 8, np.array(["ctrl"] * 30 + ["A"] * 30)
    x = rng.poisson(20, size=(60, n_genes))
    x[conditions == "A", 0] = rng.poisson(200, 30)  # gene 0 up in A
    obs = pd.DataFrame({"condition": conditions}, index=[f"cell{i}" for i in range(60)])
    genes = [f"g{i}" for i in range(n_genes)]
    computed = expression_task_inputs(x, genes, obs, {}, min_genes=1)
    up = computed.de_results.set_index("gene_id")["logfoldchange"]
    assert "g0" in up.index and up["g0"] > 2
    assert set(computed.control_map["A"]) == set(obs.index[30:]) and len(set(computed.control_map["A"].values())) == 30
    assert len(computed.notes) == 2
    given = expression_task_inputs(x, genes, obs, {DE_TABLE_KEY: DE.assign(pval_adj=0.0),
                                                  CONTROL_MAP_KEY: CONTROL_MAP}, min_genes=1)
    assert given.control_map == CONTROL_MAP and not given.notes and set(given.targets) == {"A", "B"}
    with pytest.raises(InputError, match="no cell has condition == 'ctrl'"):
        expression_task_inputs(x, genes, obs.assign(condition="A"), {})


def test_single_perturbation_metrics_by_hand():
    rng = np.random.default_rng(1)
    control = rng.normal(1.0, 0.05, size=(40, 5))
    truth = control + np.array([2.0, 1.0, 0, 0, 0]) + rng.normal(0, 0.05, size=(40, 5))  # up: g0 > g1
    pred = control + np.array([1.5, 0, 0.8, 0, 0]) + rng.normal(0, 0.05, size=(40, 5))  # up: g0 > g2
    genes = [f"g{i}" for i in range(5)]
    results = {m.label: m.value for m in single_perturbation_metrics(pred, truth, control, genes, top_k=(2,))}
    p, t, c = pred.mean(0), truth.mean(0), control.mean(0)
    assert results["mean_squared_error (subset=all)"] == pytest.approx(np.mean((p - t) ** 2))
    assert results["mean_squared_error (subset=top2)"] == pytest.approx(np.mean((p[:2] - t[:2]) ** 2))
    assert results["pearson_correlation (subset=all)"] == pytest.approx(np.corrcoef(t - c, p - c)[0, 1])
    assert results["jaccard (subset=top2)"] == pytest.approx(1 / 3)  # {g0, g2} vs {g0, g1}
    assert len(results) == 5


def test_baselines_and_predicted_effect():
    x = np.array([[1.0, 2], [3, 2], [5, 2], [1, 6], [3, 8]])
    conditions = ["ctrl", "ctrl", "A", "B", "C"]
    np.testing.assert_allclose(no_change_baseline(x[:2], 3), [[2, 2]] * 3)
    # effects: A [3, 0], B [-1, 4] -> their mean [1, 2]; control mean [2, 2]
    np.testing.assert_allclose(mean_effect_baseline(x, conditions, "ctrl", "C", 2), [[3, 4]] * 2)
    assert mean_effect_baseline(x[[0, 1, 4]], ["ctrl", "ctrl", "C"], "ctrl", "C", 1) is None
    effect = predicted_effect(np.array([[3.0, 1], [5, 1]]), x[:2], ["u", "v"])
    np.testing.assert_allclose(effect.change_g, [2, -1])
    up, down = effect.top_genes(1)
    assert up["gene"].tolist() == ["u"] and down["gene"].tolist() == ["v"]


def test_log_normalize_matches_the_definition():
    x = np.array([[1, 3, 0], [0, 0, 0]])
    np.testing.assert_allclose(log_normalize(x), [[np.log1p(2500), np.log1p(7500), 0], [0, 0, 0]], rtol=1e-6)


def toy_screen(n_genes: int = 24, n_each: int = 20):
    """Controls all alike (10 counts per gene); every A cell alike with counts from 1 to 2,000, every B cell
    alike with the reverse: each group's mean is its cells' value, so changes are known exactly."""
    from czb_core.tasks.perturbation import log_normalize as _  # noqa: F401  (same module under test)

    a_g = np.geomspace(1, 2000, n_genes).round()
    rows = [np.full(n_genes, 10.0)] * n_each + [a_g] * n_each + [a_g[::-1]] * n_each
    obs = pd.DataFrame({"condition": ["ctrl"] * n_each + ["A+ctrl"] * n_each + ["B+ctrl"] * n_each},
                       index=[f"c{i}" for i in range(3 * n_each)])
    return np.array(rows), [f"g{i}" for i in range(n_genes)], obs


def test_a_prediction_equal_to_the_observed_cells_scores_perfectly_and_beats_the_baselines():
    from czb_core.tasks.perturbation import evaluate_prediction

    x_ng, genes, obs = toy_screen()
    truth_ng = log_normalize(x_ng)[obs["condition"].to_numpy() == "A+ctrl"]
    controls = list(obs.index[:5])  # the sampled control cells the rows were predicted from
    evaluation = evaluate_prediction(truth_ng[:5], genes, controls, x_ng, genes, obs, {}, condition="A+ctrl",
                                     condition_key="condition", control_name="ctrl")
    table = evaluation.metrics.set_index(["metric", "genes"])
    assert list(table.columns) == ["model", "no change", "mean perturbation effect"]
    assert table.loc[("mean_squared_error", "all"), "model"] == pytest.approx(0.0, abs=1e-12)
    assert table.loc[("pearson_correlation", "all"), "model"] == pytest.approx(1.0)
    assert table.loc[("spearman_correlation_calculation", "targets"), "model"] == pytest.approx(1.0)
    assert table.loc[("spearman_correlation_calculation", "targets"), "no change"] == 0.0  # no change: constant
    assert np.isnan(table.loc[("pearson_correlation", "all"), "no change"])
    # B is the mirror of A: the mean effect of the other conditions points the wrong way
    control_g, b_g = log_normalize(x_ng)[0], log_normalize(x_ng)[-1]
    expected = np.corrcoef(b_g - control_g, truth_ng[0] - control_g)[0, 1]
    assert expected < -0.5
    assert table.loc[("pearson_correlation", "all"), "mean perturbation effect"] == pytest.approx(expected)
    np.testing.assert_allclose(evaluation.effect.control_mean_g, control_g, rtol=1e-6)
    np.testing.assert_allclose(evaluation.observed_change_g, truth_ng[0] - control_g, rtol=1e-5)
    assert evaluation.change_correlation() == pytest.approx(1.0)
    assert any("computed here" in note for note in evaluation.notes)


def test_evaluation_reads_genes_by_name_and_refuses_what_it_cannot_read():
    from czb_core.tasks.perturbation import evaluate_prediction

    x_ng, genes, obs = toy_screen()
    truth_ng = log_normalize(x_ng)[20:22]
    order = np.arange(len(genes))[::-1]
    reversed_eval = evaluate_prediction(truth_ng[:, order], [genes[i] for i in order], ["c0", "c1"], x_ng, genes,
                                        obs, {}, condition="A+ctrl")
    assert reversed_eval.metrics.set_index(["metric", "genes"]).loc[("pearson_correlation", "all"), "model"] == \
        pytest.approx(1.0)
    with pytest.raises(InputError, match="not in the dataset"):
        evaluate_prediction(truth_ng, ["nope"] + genes[1:], ["c0", "c1"], x_ng, genes, obs, {}, condition="A+ctrl")
    with pytest.raises(InputError, match="control cells the dataset lacks"):
        evaluate_prediction(truth_ng, genes, ["c0", "zz"], x_ng, genes, obs, {}, condition="A+ctrl")
    unseen = evaluate_prediction(truth_ng, genes, ["c0", "c1"], x_ng, genes, obs, {}, condition="C+ctrl")
    assert unseen.metrics.empty and unseen.observed_mean_g is None and "no cells" in unseen.notes[0]


def test_effect_figures_name_the_most_changed_genes_and_show_the_correlation():
    from czb_core.tasks.perturbation import evaluate_prediction
    from czb_core.viz.perturbation import effect_figure, observed_vs_predicted_figure

    x_ng, genes, obs = toy_screen()
    truth_ng = log_normalize(x_ng)[20:23]
    evaluation = evaluate_prediction(truth_ng, genes, ["c0", "c1", "c2"], x_ng, genes, obs, {}, condition="A+ctrl")
    volcano = effect_figure(evaluation, n_labels=2)
    named = [t for t in volcano.data[0].text if t]
    change_g = evaluation.effect.change_g
    assert sorted(named) == sorted(genes[i] for i in [*np.argsort(change_g)[:2], *np.argsort(change_g)[-2:]])
    scatter = observed_vs_predicted_figure(evaluation)
    assert "r = 1.000" in scatter.layout.title.text
    unseen = evaluate_prediction(truth_ng, genes, ["c0", "c1", "c2"], x_ng, genes, obs, {}, condition="Z")
    assert observed_vs_predicted_figure(unseen) is None


def test_a_prediction_is_scored_on_the_counts_the_model_read_wherever_they_live(small_adata, write_h5ad):
    """Counts in raw.X over more genes than X (X log-normalised, as in CELLxGENE files) score a prediction as the
    same counts in X do: the DE table, keyed by the dataset's own gene names, is read on raw.X's genes."""
    import anndata as ad

    from czb_core.models.prediction import CONTROL_CELL_COLUMN
    from czb_core.models.registry import get_model
    from czb_core.tasks.perturbation import evaluate_prediction_run
    from tests.helpers.data import log_normalised

    counts = small_adata[:80].copy()
    counts.obs["condition"] = np.where(np.arange(80) < 50, "ctrl", "A+ctrl")
    counts.uns[DE_TABLE_KEY] = pd.DataFrame({"condition": "A+ctrl", "gene_id": counts.var_names[:14],
                                             "logfoldchange": np.tile([2.0, -2.0], 7), "pval_adj": 0.0})
    shaped = log_normalised(counts)[:, 10:].copy()  # X lacks the first DE genes
    shaped.raw = counts
    symbols = counts.var["feature_name"].astype(str).to_numpy()[:30]
    config = get_model("scgenept")
    controls = pd.DataFrame({CONTROL_CELL_COLUMN: counts.obs_names[:6]}, index=[f"p{i}" for i in range(6)])
    prediction = ad.AnnData(np.random.default_rng(0).random((6, 30)), obs=controls, var=pd.DataFrame(index=symbols))
    params = {"perturbation": "A+ctrl", "control_key": "condition", "control_value": "ctrl"}
    prediction.uns["czb_run"] = {"model": config.name, "variant": config.default_variant, "prediction_shape": [6, 30],
                                 "params": params}
    expected = evaluate_prediction_run(prediction, write_h5ad(counts)).metrics
    got = evaluate_prediction_run(prediction, write_h5ad(shaped)).metrics
    assert ("spearman_correlation_calculation", "targets") in set(zip(got["metric"], got["genes"]))
    pd.testing.assert_frame_equal(got, expected)

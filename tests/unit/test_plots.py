import numpy as np
import pandas as pd

from czb_core.viz.plots import MISSING, Panel, umap_grid


def _panels(values_a, values_b, n):
    rng = np.random.default_rng(0)
    return [Panel("run a", rng.normal(size=(n, 2)), pd.Series(values_a)),
            Panel("run b", rng.normal(size=(n, 2)), pd.Series(values_b))]


def test_one_colour_key_across_panels_with_missing_values():
    labels = np.array(["T", "B", "NK"] * 100)
    other = pd.Series(pd.Categorical(labels))
    other.iloc[:30] = np.nan  # a categorical column with missing values
    figure, n = umap_grid(_panels(labels, other, 300), np.arange(300).astype(str), "cell_type")
    assert n == 300
    legend = [t.name for t in figure.data if t.showlegend]
    assert sorted(legend) == ["B", "NK", "T"]  # one entry per category, from the first panel only
    colours = {}
    for trace in figure.data:
        colours.setdefault(trace.name, set()).add(trace.marker.color)
    assert all(len(c) == 1 for c in colours.values())  # a category keeps its colour in every panel
    assert MISSING in colours
    assert sum(len(t.x) for t in figure.data) == 600


def test_subsample_and_continuous_colour():
    n = 5000
    shift = np.linspace(0, 1, n)
    figure, drawn = umap_grid(_panels(shift, shift, n), np.arange(n).astype(str), "perturbation_shift",
                              max_points=1000)
    assert drawn == 1000
    assert len(figure.data) == 2 and all(len(t.x) == 1000 for t in figure.data)
    assert all(t.marker.coloraxis == "coloraxis" for t in figure.data)
    assert figure.data[0].x.dtype == np.float32


def test_umap_of_fewer_than_three_cells_is_an_error_not_a_picture():
    import pytest

    from czb_core.errors import InputError
    from czb_core.viz.umap import compute_umap

    with pytest.raises(InputError, match="at least 3 cells; this run has 2"):
        compute_umap(np.ones((2, 5), dtype=np.float32))


def test_panels_are_titled_equal_scaled_gridless_with_one_legend_place():
    from czb_core.viz.plots import panel_title

    labels = np.array(["T", "B"] * 50)
    panels = _panels(labels, labels, 100)
    panels[0].title = panel_title("scvi", "fit", 100, "n_latent=20")
    figure, _ = umap_grid(panels, np.arange(100).astype(str), "cell_type")
    assert figure.layout.annotations[0].text == "scvi / fit (n_latent=20) · 100 cells"
    assert figure.layout.yaxis.scaleanchor == "x" and figure.layout.yaxis2.scaleanchor == "x2"
    for axis in (figure.layout.xaxis, figure.layout.yaxis2):
        assert axis.showgrid is False and axis.zeroline is False and axis.showticklabels is False
    assert figure.layout.legend.x == figure.layout.coloraxis.colorbar.x > 1  # legend and colour bar: one place
    assert figure.layout.dragmode == "lasso"


def test_colouring_follows_the_choice_and_refuses_text_as_a_scale():
    import pytest

    from czb_core.errors import InputError
    from czb_core.viz.plots import CATEGORICAL, CONTINUOUS, colour_kind

    n = 300
    counts = pd.Series(np.arange(n, dtype=float))
    panels = _panels(counts, counts, n)
    assert colour_kind(panels, "n_counts") == CONTINUOUS
    figure, _ = umap_grid(panels, np.arange(n).astype(str), "n_counts", kind=CATEGORICAL)
    assert len([t for t in figure.data if t.showlegend]) == n  # every value its own category when asked
    with pytest.raises(InputError, match="'cell_type' holds text"):
        colour_kind(_panels(np.array(["a"] * n), np.array(["b"] * n), n), "cell_type", CONTINUOUS)
    shift = counts.copy()
    shift.iloc[:10] = np.nan
    figure, _ = umap_grid(_panels(shift, shift, n), np.arange(n).astype(str), "shift", kind=CONTINUOUS)
    assert [t.name for t in figure.data if t.showlegend] == [MISSING]  # missing values: grey, in the legend
    assert figure.layout.coloraxis.cmin == 10 and figure.layout.coloraxis.cmax == n - 1


def test_figure_files_for_a_paper():
    from czb_core.viz.plots import umap_image

    labels = np.array(["T cell", "B cell", "NK"] * 100)
    panels = _panels(labels, labels, 300)
    png = umap_image(panels, np.arange(300).astype(str), "cell_type", "png", dpi=50)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    svg = umap_image(panels, np.arange(300).astype(str), "cell_type", "svg").decode()
    assert svg.lstrip().startswith("<?xml") and "run a" in svg and "NK" in svg and "UMAP 1" in svg
    shift = pd.Series(np.linspace(0, 1, 300))
    assert umap_image(_panels(shift, shift, 300), np.arange(300).astype(str), "shift", "png", dpi=50)[:4] == b"\x89PNG"


def test_a_lasso_selection_is_described_against_all_cells():
    import pytest

    from czb_core.errors import InputError
    from czb_core.viz.plots import CATEGORICAL, CONTINUOUS, selected_cells, selection_composition

    points = [{"customdata": "c1"}, {"customdata": ["c2", "0.5"]}, {"customdata": "c1"}, {"x": 1}]
    assert selected_cells(points) == ["c1", "c2"]  # the same cell lassoed in two panels counts once
    values = pd.Series(["T", "T", "B", None], index=["c1", "c2", "c3", "c4"], name="cell_type")
    table = selection_composition(["c1", "c2", "c4"], values, CATEGORICAL)
    assert table["Cells"].to_dict() == {"T": 2, MISSING: 1}
    assert table.loc["T", "Share of selection"] == pytest.approx(2 / 3)
    assert table.loc["T", "Share of all cells"] == 0.5
    stats = selection_composition(["c1", "c2"], pd.Series([1.0, 3.0, 10.0], index=["c1", "c2", "c3"]), CONTINUOUS)
    assert stats.loc["mean", "Selection"] == 2.0 and stats.loc["max", "All cells"] == 10.0
    with pytest.raises(InputError, match="1 selected cells are not in this dataset"):
        selection_composition(["zz"], values, CATEGORICAL)


def test_scoreboard_bars_group_runs_with_the_baseline_in_grey():
    from czb_core.viz.plots import scoreboard_bars

    long = pd.DataFrame({"Run": ["pca", "pca", "scvi", "scvi"], "Metric": ["ARI", "MCC"] * 2,
                         "Value": [0.6, 0.9, 0.7, 0.95]})
    figure = scoreboard_bars(long, ["pca"])
    assert [t.name for t in figure.data] == ["pca", "scvi"] and figure.layout.barmode == "group"
    assert figure.data[0].marker.color == "#9e9e9e" and figure.data[1].marker.color != "#9e9e9e"
    assert list(figure.data[1].y) == [0.7, 0.95]

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

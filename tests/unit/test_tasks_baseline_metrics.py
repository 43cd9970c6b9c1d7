"""The baseline-metrics cache: a second scoring with the same options reads the stored results."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import czb_core.tasks.scoring as scoring
from czb_core.tasks import run_with_baseline
from czb_core.tasks.baseline_metrics import baseline_metrics_path, entry_key
from czb_core.tasks.options import NO_BATCH, MetricOptions
from czb_core.tasks.scoring import cached_baseline_results

SHA = "ab" * 32


def data(n_per_class=40, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(["T", "B", "NK"], n_per_class)
    centers = rng.normal(scale=4.0, size=(3, 6))
    codes = pd.Categorical(labels).codes
    good_nd = centers[codes] + rng.normal(size=(len(labels), 6))
    noise_nd = rng.normal(size=good_nd.shape)
    obs = pd.DataFrame({"cell_type": labels, "donor_id": rng.choice(["d1", "d2"], size=len(labels))})
    return good_nd, noise_nd, obs


@pytest.fixture
def counted_tasks(monkeypatch):
    """Counts the task runners scoring.py calls (the work the cache must save)."""
    calls = []
    for name, runner in list(scoring.RUNNERS.items()):
        def counting(*args, _runner=runner, _name=name, **kwargs):
            calls.append(_name)
            return _runner(*args, **kwargs)
        monkeypatch.setitem(scoring.RUNNERS, name, counting)
    return calls


def test_second_scoring_reads_the_baseline_from_the_cache(counted_tasks):
    good_nd, noise_nd, obs = data()
    kwargs = dict(tasks=["embedding", "label_prediction"], max_cells=1000)
    loads = []

    def baseline():
        loads.append(1)
        return noise_nd

    first = run_with_baseline(good_nd, baseline, obs, "cell_type", dataset_sha256=SHA, **kwargs)
    assert counted_tasks.count("label_prediction") == 2 and len(loads) == 1  # model + baseline
    counted_tasks.clear()
    second = run_with_baseline(good_nd * 2, baseline, obs, "cell_type", dataset_sha256=SHA, **kwargs)
    assert counted_tasks == ["embedding", "label_prediction"]  # the model's only
    assert len(loads) == 1  # the baseline embedding was not even loaded

    def values(results):
        return [(r.task_name, m.label, m.value) for r in results for m in r.metrics]

    assert values(second[1]) == values(first[1])
    assert all(r.runtime_metrics["from_cache"] for r in second[1])
    # the table compares the new model with the cached baseline exactly as a fresh baseline run would
    uncached = run_with_baseline(good_nd * 2, noise_nd, obs, "cell_type", **kwargs)
    pd.testing.assert_frame_equal(second[2], uncached[2])


def test_other_options_or_other_labels_are_scored_again(counted_tasks):
    good_nd, noise_nd, obs = data()
    options = MetricOptions(label_key="cell_type", batch_key=NO_BATCH, tasks=("embedding",), seed=1)
    cached_baseline_results(SHA, options, obs, noise_nd)
    cached_baseline_results(SHA, options, obs, noise_nd)
    assert counted_tasks == ["embedding"]
    cached_baseline_results(SHA, MetricOptions(label_key="cell_type", batch_key=NO_BATCH, tasks=("embedding",), seed=2),
                            obs, noise_nd)
    relabelled = obs.assign(cell_type=obs["cell_type"].sample(frac=1, random_state=0).to_numpy())
    cached_baseline_results(SHA, options, relabelled, noise_nd)
    with_batch = MetricOptions(label_key="cell_type", batch_key="donor_id", tasks=("embedding",), seed=1)
    cached_baseline_results(SHA, with_batch, obs, noise_nd)
    assert counted_tasks == ["embedding"] * 4


def test_default_tasks_and_the_same_tasks_named_share_an_entry():
    _, _, obs = data()
    implicit = MetricOptions(label_key="cell_type", batch_key=NO_BATCH)
    explicit = MetricOptions(label_key="cell_type", batch_key=NO_BATCH,
                             tasks=("clustering", "embedding", "label_prediction"))
    assert entry_key(implicit, obs) == entry_key(explicit, obs)
    with pytest.raises(ValueError, match="resolve"):
        entry_key(MetricOptions(label_key="cell_type"), obs)


def test_cache_file_lies_beside_the_baseline_and_a_broken_one_is_recomputed(counted_tasks):
    _, noise_nd, obs = data()
    options = MetricOptions(label_key="cell_type", batch_key=NO_BATCH, tasks=("embedding",))
    first = cached_baseline_results(SHA, options, obs, noise_nd)
    path = baseline_metrics_path(SHA, entry_key(options, obs))
    assert path.parent.parent.name == "baselines" and path.exists()
    stored = json.loads(path.read_text())
    assert stored["options"] == options.to_dict()
    assert stored["results"][0]["metrics"][0]["value"] == first[0].metrics[0].value
    path.write_text("{not json")
    again = cached_baseline_results(SHA, options, obs, noise_nd)
    assert counted_tasks == ["embedding", "embedding"]
    assert again[0].metrics[0].value == first[0].metrics[0].value

"""MetricOptions: the tri-state batch choice, canonical key, JSON round trip and column resolution."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from czb_core.errors import InputError
from czb_core.tasks.options import NO_BATCH, MetricOptions


def obs_with_roles(n=60):
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "cell_type": rng.choice(["T", "B", "NK"], size=n),
            "donor_id": rng.choice(["d1", "d2"], size=n),
            "tissue": rng.choice(["lung", "liver"], size=n),
        }
    )


def test_chosen_none_batch_stays_none_where_a_batch_column_is_suggested():
    obs = obs_with_roles()
    resolved = MetricOptions(label_key="cell_type", batch_key=NO_BATCH).resolve(obs)
    assert resolved.batch_key is NO_BATCH
    assert resolved.batch_column is None
    assert resolved.run_kwargs()["batch_key"] is None


def test_unchosen_batch_and_label_take_the_suggestions():
    resolved = MetricOptions().resolve(obs_with_roles())
    assert (resolved.label_key, resolved.batch_key) == ("cell_type", "donor_id")
    assert resolved.run_kwargs()["batch_key"] == "donor_id"


def test_chosen_columns_are_kept_and_missing_suggestion_becomes_no_batch():
    obs = obs_with_roles()
    assert MetricOptions(label_key="tissue", batch_key="cell_type").resolve(obs).batch_key == "cell_type"
    no_batch_obs = obs.drop(columns="donor_id")
    assert MetricOptions().resolve(no_batch_obs).batch_key is NO_BATCH
    # the suggested batch column being the chosen label column is no batch at all
    assert MetricOptions(label_key="donor_id").resolve(obs.drop(columns="cell_type")).batch_key is NO_BATCH


def test_no_label_suggestion_is_a_clear_error():
    obs = pd.DataFrame({"n_counts": np.arange(30.0)})
    with pytest.raises(InputError, match="choose the label column"):
        MetricOptions().resolve(obs)


def test_json_round_trip_keeps_none_and_not_chosen_apart():
    chosen_none = MetricOptions(label_key="cell_type", batch_key=NO_BATCH)
    not_chosen = MetricOptions(label_key="cell_type")
    assert chosen_none.to_dict()["batch_key"] is False and not_chosen.to_dict()["batch_key"] is None
    every_field = MetricOptions("c", "b", "tissue", "lung", "liver", ("embedding",), 3, 500)
    for options in (chosen_none, not_chosen, every_field):
        assert MetricOptions.from_dict(options.to_dict()) == options
    assert chosen_none.key() != not_chosen.key()
    assert pickle.loads(pickle.dumps(chosen_none)).batch_key is NO_BATCH


def test_key_is_canonical_sha256_of_the_choices():
    a = MetricOptions(label_key="cell_type", tasks=("label_prediction", "clustering"), seed=np.int64(7))
    b = MetricOptions(label_key="cell_type", tasks=["clustering", "label_prediction"], seed=7)
    assert a == b and a.key() == b.key() and len(a.key()) == 64
    assert a.key() != MetricOptions(label_key="cell_type", tasks=("clustering",), seed=7).key()
    assert a.key() != MetricOptions(label_key="cell_type", tasks=a.tasks, seed=8).key()


def test_bad_values_are_rejected_with_the_field_named():
    with pytest.raises(InputError, match="unknown task"):
        MetricOptions(tasks=("clustering", "umap"))
    with pytest.raises(InputError, match="batch_key"):
        MetricOptions(batch_key=False)
    with pytest.raises(InputError, match="max_cells"):
        MetricOptions(max_cells=0)
    with pytest.raises(InputError, match="unknown metric option"):
        MetricOptions.from_dict({"label": "cell_type"})
    with pytest.raises(InputError, match="not resolved"):
        MetricOptions(label_key="cell_type").run_kwargs()

"""Cross-split label transfer on a tiny example whose every prediction is known in advance."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from czb_core.tasks import run_tasks
from czb_core.tasks.cross_split import cross_split_transfer


def tiny():
    """Train: 6 'a' cells near x=0, 6 'b' near x=10. Test cells sit exactly on one cloud or the other:
    true  a a a b b c     ('c' never appears in training)
    where 0 0 10 10 10 0  -> every classifier predicts a a b b b a."""
    rng = np.random.default_rng(0)
    train_x = np.r_[rng.normal(0, 0.3, 6), rng.normal(10, 0.3, 6)]
    test_x = np.array([0.0, 0.0, 10.0, 10.0, 10.0, 0.0])
    x_n = np.r_[train_x, test_x]
    emb_nd = np.c_[x_n, rng.normal(0, 0.1, len(x_n))]
    labels_n = pd.Series(["a"] * 6 + ["b"] * 6 + ["a", "a", "a", "b", "b", "c"])
    split_n = pd.Series(["lung"] * 12 + ["liver"] * 6)
    return emb_nd, labels_n, split_n


def test_accuracy_mcc_f1_and_confusion_by_hand():
    emb_nd, labels_n, split_n = tiny()
    transfer = cross_split_transfer(emb_nd, labels_n, split_n, "lung", "liver", seed=0)
    # correct 4 of 6. MCC = (c*s - sum p_k t_k) / sqrt((s^2 - sum p_k^2)(s^2 - sum t_k^2)) with
    # c=4, s=6, predicted p=(a3, b3, c0), true t=(a3, b2, c1): (24 - 15) / sqrt(18 * 22)
    expected_mcc = 9 / np.sqrt(18 * 22)
    # F1 per class: a 2/3, b 0.8 (precision 2/3, recall 1), c 0 -> macro over a, b, c
    expected_f1 = (2 / 3 + 0.8 + 0) / 3
    values = {(m.metric_type, m.params["classifier"]): m.value for m in transfer.metrics}
    for classifier in ("lr", "knn", "MEAN(knn,lr)"):
        assert values[("accuracy", classifier)] == pytest.approx(4 / 6)
        assert values[("mcc", classifier)] == pytest.approx(expected_mcc)
        assert values[("f1", classifier)] == pytest.approx(expected_f1)
    expected = pd.DataFrame([[2, 1, 0], [0, 2, 0], [1, 0, 0]], index=list("abc"), columns=list("abc"))
    for frame in transfer.confusion.values():
        np.testing.assert_array_equal(frame.to_numpy(), expected.to_numpy())
        assert frame.index.tolist() == ["a", "b", "c"] and frame.columns.tolist() == ["a", "b", "c"]
    assert transfer.unseen_labels == {"c": 1}
    assert all(m.params["train"] == "lung" and m.params["test"] == "liver" for m in transfer.metrics)


def test_run_tasks_reports_confusion_matrices_and_unseen_labels():
    emb_nd, labels_n, split_n = tiny()
    obs = pd.DataFrame({"cell_type": labels_n, "tissue": split_n})
    (result,) = run_tasks(
        emb_nd, obs, "cell_type", split_key="tissue", train_value="lung", test_value="liver", tasks=["cross_split"]
    )
    assert result.task_name == "cross_split"
    assert result.extra["unseen_test_labels"] == {"c": 1}
    lr = result.extra["confusion_matrices"]["lr"]
    assert lr == {"classes": ["a", "b", "c"], "matrix": [[2, 1, 0], [0, 2, 0], [1, 0, 0]]}


@pytest.mark.parametrize(
    "train, test, message",
    [("lung", "kidney", "test value 'kidney' is not in split column 'tissue'"), ("lung", "lung", "must differ")],
)
def test_bad_split_values_are_clear_errors(train, test, message):
    emb_nd, labels_n, split_n = tiny()
    obs = pd.DataFrame({"cell_type": labels_n, "tissue": split_n})
    with pytest.raises(ValueError, match=message):
        run_tasks(emb_nd, obs, "cell_type", split_key="tissue", train_value=train, test_value=test,
                  tasks=["cross_split"])

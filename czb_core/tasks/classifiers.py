"""The classifiers cz-benchmarks 0.15 trains on an embedding (`tasks/label_prediction.py`).

Logistic regression and 5-nearest-neighbours each after `StandardScaler(with_mean=False)` (no
centring, so the same pipeline also takes sparse expression matrices), and a random forest on the
raw embedding, all with sklearn defaults. The forest grows its trees one after another (n_jobs=1,
cz-benchmarks' default): label prediction already runs folds on every core, and one thread adds up
the trees' probabilities in a fixed order (several threads add them in whatever order they finish,
which can change the last bits). Logistic regression keeps
sklearn's default 100 iterations as cz-benchmarks does, so it may warn that it did not converge.
"""

from __future__ import annotations

from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler


def make_classifiers(seed: int, names: tuple[str, ...] = ("lr", "knn", "rf")) -> dict[str, Pipeline]:
    """Fresh, unfitted pipelines keyed by cz-benchmarks' short names (lr, knn, rf)."""
    factories = {
        "lr": lambda: Pipeline([("scaler", StandardScaler(with_mean=False)), ("lr", LogisticRegression())]),
        "knn": lambda: Pipeline([("scaler", StandardScaler(with_mean=False)), ("knn", KNeighborsClassifier())]),
        "rf": lambda: Pipeline([("rf", RandomForestClassifier(random_state=seed, n_jobs=1))]),
    }
    return {name: factories[name]() for name in names}


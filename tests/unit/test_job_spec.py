"""The job spec names an embedding: equal requests share a key, anything that changes the result does not."""

import json

from czb_core.service.jobs.spec import JobSpec


def test_the_key_ignores_order_and_names_every_field():
    a = JobSpec("sha", "pca", "default", {"n_comps": 5, "seed": 1}, "homo_sapiens")
    b = JobSpec("sha", "pca", "default", {"seed": 1, "n_comps": 5}, "homo_sapiens")
    assert a.key() == b.key() and a.to_json() == b.to_json()
    for other in (JobSpec("sha2", "pca", "default", a.params, "homo_sapiens"),
                  JobSpec("sha", "pca", "default", {"n_comps": 6, "seed": 1}, "homo_sapiens"),
                  JobSpec("sha", "pca", "default", a.params, "mus_musculus"),
                  JobSpec("sha", "pca", "default", a.params, "homo_sapiens", weights="s3://b/w")):
        assert other.key() != a.key()


def test_a_spec_stored_with_metric_options_still_loads():
    old = json.dumps({"dataset_sha256": "sha", "model": "pca", "variant": "default", "params": {},
                      "organism": None, "weights": None, "metrics": {"label_key": "cell_type"}})
    assert JobSpec.from_json(old) == JobSpec("sha", "pca", "default")


def test_streaming_names_its_own_result_and_leaves_earlier_keys_as_they_were():
    plain = JobSpec("sha", "geneformer", "v2")
    streamed = JobSpec("sha", "geneformer", "v2", stream=True)
    assert streamed.key() != plain.key()
    assert "stream" not in json.loads(plain.to_json())  # a key made before streaming existed is still found
    assert JobSpec.from_json(streamed.to_json()) == streamed

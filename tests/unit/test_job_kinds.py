"""A queued job's kind comes from its model's description (or the tokenizer lab), never from a list of names."""

from czb_core.models.registry import discover_models
from czb_core.service.jobs.kinds import BASELINE, EMBEDDING, LAB_TRAINING, PREDICTION, kind_of
from czb_core.tokenizer_lab import LAB_MODEL


def test_every_registered_model_and_the_lab_have_a_kind():
    kinds = {name: kind_of(name) for name in discover_models()}
    assert kinds["pca"] == BASELINE and kinds["scgenept"] == PREDICTION
    assert {name for name, kind in kinds.items() if kind == EMBEDDING} == set(kinds) - {"pca", "scgenept"}
    assert kind_of(LAB_MODEL) == LAB_TRAINING


def test_what_each_kind_decides():
    assert BASELINE.cpu_only and BASELINE.scored and not EMBEDDING.cpu_only and EMBEDDING.scored
    assert not PREDICTION.scored and PREDICTION.page == "results" and PREDICTION.model_run
    assert LAB_TRAINING.page == "tokenizer_lab" and not LAB_TRAINING.model_run and not LAB_TRAINING.scored

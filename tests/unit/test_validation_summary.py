"""One line per model and each distinct problem once, from the reports of validators run on generated data."""

from dataclasses import replace

import pytest

from czb_core.io.header import header_from_anndata
from czb_core.io.synthetic import make_synthetic_counts
from czb_core.schema.report import Severity, ValidationReport
from czb_core.schema.summary import group_problems, split_report_key, summarize_by_model
from czb_core.schema.validators import BaseSingleCellValidator
from czb_core.types import ModelType, Organism
from tests.helpers.data import log_normalised


def validator(name: str, variant: str, obs_keys=(), organisms=None, raw_counts=True) -> BaseSingleCellValidator:
    """A validator declaring what a model variant needs, as model runners do."""
    cls = type(f"V_{name}_{variant}", (BaseSingleCellValidator,), {
        "model_type": ModelType.SCVI, "available_organisms": organisms, "required_obs_keys": tuple(obs_keys),
        "required_var_keys": (), "requires_raw_counts": raw_counts, "display_name": name})
    instance = cls()
    instance.variant = variant
    return instance


@pytest.fixture(scope="module")
def counts_header():
    return header_from_anndata(make_synthetic_counts(n_cells=120, n_genes=200, seed=3))


@pytest.fixture(scope="module")
def normalised_header():
    return header_from_anndata(log_normalised(make_synthetic_counts(n_cells=120, n_genes=200, seed=4)))


def check_all(header, validators: dict[str, BaseSingleCellValidator]) -> dict[str, ValidationReport]:
    return {key: v.check(header) for key, v in validators.items()}


def test_one_line_per_model_with_the_best_variant(counts_header):
    reports = check_all(counts_header, {
        "scvi / census_a": validator("scVI", "census_a", obs_keys=("dataset_id",)),
        "scvi / census_b": validator("scVI", "census_b", obs_keys=("dataset_id", "suspension_type")),
        "scvi / fit": validator("scVI", "fit"),
        "mouse_only / default": validator("Mouse model", "default", organisms=(Organism.MOUSE,)),
    })
    scvi, mouse = summarize_by_model(reports)
    assert (scvi.model, scvi.display_name, scvi.n_variants, scvi.n_runnable) == ("scvi", "scVI", 3, 1)
    assert scvi.best_variant == "fit" and scvi.status == "ready"
    assert scvi.text == "scVI: 1 of 3 variants can run"
    assert [v for v, verdict in scvi.verdicts if verdict == "blocked"] == ["census_a", "census_b"]
    assert mouse.status == "blocked" and mouse.text == "Mouse model: blocked"


def test_a_variant_that_runs_now_beats_one_that_needs_a_download_first(counts_header):
    reports = check_all(counts_header, {"gf / big": validator("Geneformer", "big"),
                                        "gf / small": validator("Geneformer", "small")})
    reports["gf / big"].pending = "its weights (600 MB) are downloaded"
    (line,) = summarize_by_model(reports)
    assert line.best_variant == "small" and line.status == "ready"
    reports["gf / small"].pending = "its weights (40 MB) are downloaded"
    (line,) = summarize_by_model(reports)
    assert line.status == "pending" and line.n_runnable == 2
    assert line.text == "Geneformer: 2 of 2 variants can run; big can run once its weights (600 MB) are downloaded"


def test_a_problem_shared_by_variants_and_models_is_one_item(normalised_header):
    reports = check_all(normalised_header, {
        "scvi / census_a": validator("scVI", "census_a", obs_keys=("dataset_id",)),
        "scvi / census_b": validator("scVI", "census_b", obs_keys=("dataset_id",)),
        "scvi / fit": validator("scVI", "fit"),
        "pca / default": validator("PCA baseline", "default"),
        "loose / default": validator("Loose", "default", raw_counts=False),
    })
    groups = group_problems(reports)
    counts = [g for g in groups if g.code == "not_raw_counts" and g.severity is Severity.ERROR]
    assert len(counts) == 1  # scVI's three variants and the PCA baseline: one item
    (raw,) = counts
    assert raw.models == ("scvi", "pca") and raw.n_variants == 4
    assert raw.message.startswith("The model needs raw integer counts") and "scVI" not in raw.message
    assert raw.applies_to == "scVI (all 3 variants); PCA baseline"
    # the model that takes X as given has the same code as a warning: a different item
    (loose,) = [g for g in groups if g.code == "not_raw_counts" and g.severity is Severity.WARNING]
    assert loose.message.startswith("X is not raw counts") and "Loose will use it" in loose.message
    (missing,) = [g for g in groups if g.code == "missing_obs_key"]
    assert missing.applies_to == "scVI: census_a, census_b (2 of 3 variants)"
    assert missing.message.startswith("scVI needs the obs column 'dataset_id'")  # one model: named
    assert missing.actions == ("batch_params",)
    assert groups[0].severity is Severity.ERROR and groups[-1].severity is Severity.WARNING
    assert groups.index(raw) < groups.index(missing)  # more variants first among errors


def test_infos_are_left_out_unless_asked_and_a_repeated_problem_counts_once(counts_header):
    report = ValidationReport(model="scVI", variant="fit")
    report.add("obs keys", "missing_obs_key", Severity.ERROR, "scVI needs 'x'.", "add obs['x']")
    report.add("obs keys", "missing_obs_key", Severity.ERROR, "scVI needs 'x'.", "add obs['x']")
    report.add("raw counts", "counts_elsewhere", Severity.INFO, "counts in layers/counts.")
    (group,) = group_problems({"scvi / fit": report})
    assert group.where[0].variants == ("fit",) and group.n_variants == 1
    assert group.fix == "add obs['x']" and group.applies_to == "scVI"
    infos = group_problems({"scvi / fit": report}, severities=(Severity.INFO,))
    assert [g.code for g in infos] == ["counts_elsewhere"]


def test_messages_naming_their_variant_are_one_item_and_long_variant_lists_are_shortened():
    reports = {}
    for i in range(6):
        reports[f"scgpt / v{i}"] = ValidationReport(model="scGPT", variant=f"v{i}")
        if i:
            reports[f"scgpt / v{i}"].add("weights", "weights_not_given", Severity.ERROR,
                                         f"scGPT / v{i} has no weights to download.", "give scGPT its weights")
    (group,) = group_problems(reports)
    assert group.applies_to == "scGPT: v1, v2, v3, … (5 of 6 variants)"
    assert group.message == "This variant has no weights to download." and group.fix == "give scGPT its weights"
    (single,) = group_problems({"scgpt / v2": reports["scgpt / v2"]})
    assert single.message == "scGPT / v2 has no weights to download."


def test_problems_of_one_kind_in_the_same_variants_are_one_item(counts_header):
    census = ("dataset_id", "suspension_type")
    reports = check_all(counts_header, {f"scvi / census_{v}": validator("scVI", v, obs_keys=census) for v in "ab"})
    reports["scvi / fit"] = validator("scVI", "fit", obs_keys=("dataset_id",)).check(counts_header)
    by_variants = {g.n_variants: g for g in group_problems(reports)}
    assert sorted(by_variants) == [2, 3]  # 'dataset_id' in all three variants, 'suspension_type' in two
    assert "'suspension_type'" in by_variants[2].message and "'dataset_id'" in by_variants[3].message
    reports["scvi / fit"] = validator("scVI", "fit", obs_keys=census).check(counts_header)
    (missing,) = group_problems(reports)
    assert len(missing.messages) == 2 and missing.n_variants == 3
    assert "'dataset_id'" in missing.messages[0] and "'suspension_type'" in missing.messages[1]
    assert missing.message == " ".join(missing.messages)
    assert missing.split_messages() == ("", missing.messages)  # no shared clause
    for report in reports.values():  # scVI's wording: the clauses up to "; " are the same
        report.problems = [replace(p, message=f"scVI builds batches from {', '.join(census)}; {p.message}")
                           for p in report.problems]
    (missing,) = group_problems(reports)
    shared, tails = missing.split_messages()
    assert shared == "scVI builds batches from dataset_id, suspension_type;"
    assert tails[0].startswith("scVI needs the obs column 'dataset_id'") and "'suspension_type'" in tails[1]
    assert missing.fix == "add obs['dataset_id'] or choose an existing column to stand for it; " \
                          "add obs['suspension_type'] or choose an existing column to stand for it"


def test_reports_survive_the_dict_round_trip_of_the_app_cache(normalised_header):
    report = validator("scVI", "census_a", obs_keys=("dataset_id",)).check(normalised_header)
    report.pending = "its weights are downloaded"
    back = ValidationReport.from_dict(report.to_dict())
    assert back.to_dict() == report.to_dict()
    assert back.verdict == "blocked" and back.status("raw counts") == "error" and back.status("vocabulary") == "not run"


def test_report_keys_split_into_model_and_variant():
    assert split_report_key("scvi / homo_sapiens_2024_07_01") == ("scvi", "homo_sapiens_2024_07_01")
    assert split_report_key("pca") == ("pca", "")

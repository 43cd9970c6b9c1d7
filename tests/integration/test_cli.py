"""`czb` end to end: exit codes, messages a person can act on, and the slim h5ad contract."""

import json
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from czb_core.cli import main
from tests.helpers.data import log_normalised


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_models_lists_the_pca_baseline(capsys):
    code, out, _ = run_cli(capsys, "models", "--json")
    rows = json.loads(out)
    assert code == 0
    pca = next(r for r in rows if r["model"] == "pca")
    assert pca["weights_status"] == "not needed" and pca["default"]


def test_validate_ok_and_json(capsys, small_h5ad):
    code, out, _ = run_cli(capsys, "validate", str(small_h5ad), "--model", "pca")
    assert code == 0 and "OK: nothing blocks a run" in out and "detected from" in out
    code, out, _ = run_cli(capsys, "validate", str(small_h5ad), "--model", "pca", "--json")
    report = json.loads(out)
    assert report["ok"] and report["checks"]["raw counts"] == "ok"


def test_validate_blocking_problem_exits_1(capsys, small_adata, write_h5ad):
    path = write_h5ad(log_normalised(small_adata))
    code, out, _ = run_cli(capsys, "validate", str(path), "--model", "pca")
    assert code == 1 and "not_raw_counts" in out and "fix:" in out


def test_validate_wrong_organism_given_is_a_warning_with_both_figures(capsys, small_h5ad):
    code, out, _ = run_cli(capsys, "validate", str(small_h5ad), "--model", "pca", "--organism", "mus_musculus")
    assert code == 0 and "WARNING [organism_mismatch]" in out  # the PCA baseline runs on any organism
    assert "human explains" in out and "mouse explains" in out


@pytest.mark.parametrize("kind", ["not_h5ad", "truncated", "zero_cells", "zero_genes"])
def test_unusable_input_exits_2_with_a_reason(capsys, tmp_path, small_h5ad, write_h5ad, kind):
    if kind == "not_h5ad":
        path = tmp_path / "table.h5ad"
        path.write_text("gene,count\nTP53,3\n")
    elif kind == "truncated":
        path = small_h5ad
        path.write_bytes(path.read_bytes()[:4096])
    else:
        shape = (0, 5) if kind == "zero_cells" else (5, 0)
        path = write_h5ad(ad.AnnData(sp.csr_matrix(shape, dtype=np.float32)))
    for command in (["validate", str(path), "--model", "pca"],
                    ["run", str(path), "--model", "pca", "--out", str(tmp_path / "o.h5ad")]):
        code, out, err = run_cli(capsys, *command)
        assert code == 2, (command, out, err)
        assert "czb: error: " in err and "Traceback" not in err
    assert not (tmp_path / "o.h5ad").exists()


def test_unknown_variant_and_param_exit_2(capsys, small_h5ad, tmp_path):
    code, _, err = run_cli(capsys, "validate", str(small_h5ad), "--model", "pca", "--variant", "huge")
    assert code == 2 and "no variant 'huge'; choose one of: default" in err
    code, _, err = run_cli(capsys, "run", str(small_h5ad), "--model", "pca", "--out", str(tmp_path / "o.h5ad"),
                           "--param", "n_pcs=5")
    assert code == 2 and "no parameter 'n_pcs'" in err and "n_comps" in err
    code, _, err = run_cli(capsys, "run", str(small_h5ad), "--model", "pca", "--out", str(tmp_path / "o.h5ad"),
                           "--weights", "s3://bucket/x")
    assert code == 2 and "uses no weights" in err


def test_run_writes_the_slim_h5ad_with_a_run_record(capsys, small_h5ad, small_adata, tmp_path):
    out_path = tmp_path / "out" / "pca.h5ad"
    code, out, err = run_cli(capsys, "run", str(small_h5ad), "--model", "pca", "--out", str(out_path),
                             "--param", "n_comps=12", "--param", "n_top_genes=200", "--seed", "3")
    assert code == 0, err
    assert "[czb] pca" in err and "wrote" in out
    result = ad.read_h5ad(out_path)
    assert result.n_obs == small_adata.n_obs and result.n_vars == 0
    assert result.obsm["X_pca"].shape == (small_adata.n_obs, 12)
    assert list(result.obs_names) == list(small_adata.obs_names)
    assert (result.obs["cell_type"] == small_adata.obs["cell_type"]).all()
    record = result.uns["czb_run"]
    from czb_core.io.hashing import sha256_file

    assert record["input"]["sha256"] == sha256_file(small_h5ad)
    assert record["model"] == "pca" and record["variant"] == "default" and record["device"] == "cpu"
    assert int(record["params"]["n_comps"]) == 12 and int(record["seed"]) == 3
    assert record["versions"]["scanpy"] and float(record["peak_rss_mb"]) > 0
    assert record["started_at"] <= record["finished_at"]
    assert record["genes"]["reference"].startswith("GENCODE v48") and "human:" in record["genes"]["species"]


def test_python_dash_m_entry_point(small_h5ad):
    done = subprocess.run([sys.executable, "-m", "czb_core", "validate", str(small_h5ad), "--model", "pca",
                           "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["model"] == "PCA baseline"


def test_run_record_with_problems_and_nested_lists_is_written(capsys, small_adata, write_h5ad, tmp_path):
    adata = small_adata.copy()
    x = adata.X.tolil()
    x[[0, 1], :] = 0  # empty cells: a warning that the record keeps
    adata.X = sp.csr_matrix(x)
    out_path = tmp_path / "o.h5ad"
    code, _, err = run_cli(capsys, "run", str(write_h5ad(adata)), "--model", "pca", "--out", str(out_path))
    assert code == 0, err
    record = ad.read_h5ad(out_path).uns["czb_run"]
    assert record["validation"]["0"]["code"] == "empty_cells"
    assert record["validation"]["0"]["severity"] == "warning"

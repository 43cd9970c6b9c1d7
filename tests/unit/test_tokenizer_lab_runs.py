"""Whole tokenizer-lab runs on generated data: a planted shift, seeded reproducibility, cancellation,
the result tables and the command line."""

from __future__ import annotations

import argparse
import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from czb_core.errors import Cancelled, ConfigError, InputError
from czb_core.io.synthetic import pick_human_genes
from czb_core.progress import CancelToken
from czb_core.tokenizer_lab.cli import add_tokenizer_lab_parser
from czb_core.tokenizer_lab.lab import LabSplit, prepare_lab_data, run_lab
from czb_core.tokenizer_lab.model import ModelShape
from czb_core.tokenizer_lab.presets import PRESETS, parse_tokenizer
from czb_core.tokenizer_lab.train import TrainConfig

SPLIT = LabSplit("cell_type", "tissue", ("gut",), ("lung",), ("brain",))
SMALL = TrainConfig(epochs=4, batch_size=32, shape=ModelShape(d_model=32, n_heads=4))


def shifted_cells(n_per: int = 60, n_genes: int = 24, n_types: int = 3, seed: int = 0) -> ad.AnnData:
    """Every cell expresses every gene, so which genes are present says nothing; type k raises genes
    3k..3k+2. The test tissue (brain) squares the counts: values move, each cell's gene ranks do not."""
    rng = np.random.default_rng(seed)
    genes = pick_human_genes(n_genes, 0)
    blocks, labels, tissues = [], [], []
    for tissue, power in (("gut", 1.0), ("lung", 1.0), ("brain", 2.0)):
        for k in range(n_types):
            base = rng.uniform(20, 40, size=(n_per, n_genes))
            base[:, 3 * k : 3 * k + 3] *= 4
            blocks.append(np.round(base**power))
            labels += [f"type{k}"] * n_per
            tissues += [tissue] * n_per
    obs = pd.DataFrame({"cell_type": labels, "tissue": tissues}, index=[f"c{i}" for i in range(len(labels))])
    var = pd.DataFrame({"feature_name": genes["gene_name"].to_numpy()}, index=genes["gene_id"].to_numpy())
    return ad.AnnData(sp.csr_matrix(np.vstack(blocks).astype(np.float32)), obs=obs, var=var)


@pytest.fixture(scope="module")
def data():
    return prepare_lab_data(shifted_cells(), SPLIT)


def test_rank_tokenizer_beats_order_blind_one_under_shift(data):
    ranked = parse_tokenizer("fg=identity,fe=zero,fc=expression")
    blind = parse_tokenizer("fg=identity,fe=zero,fc=random")  # neither values nor a meaningful order
    result = run_lab(data, [ranked, blind], [0], SMALL)
    mcc = result.summary().set_index("tokenizer")["mcc_mean"]
    assert mcc[ranked.name] > 0.8
    assert abs(mcc[blind.name]) < 0.2
    assert result.best_run().tokenizer == ranked.name


def test_same_seed_same_numbers_other_seed_other_numbers(data):
    spec = PRESETS["scgpt"]
    first = run_lab(data, [spec], [3], SMALL).runs[0]
    again = run_lab(data, [spec], [3], SMALL).runs[0]
    other = run_lab(data, [spec], [4], SMALL).runs[0]
    assert first.curve == again.curve and first.test_mcc == again.test_mcc
    assert first.curve != other.curve


def test_cancel_mid_training_stops_between_batches(data):
    token, reports = CancelToken(), []

    def progress(step, done, total):
        reports.append((step, done, total))
        if done == 1:
            token.cancel()

    with pytest.raises(Cancelled):
        run_lab(data, [PRESETS["geneformer"]], [0], SMALL, progress=progress, cancel=token)
    assert [r[1] for r in reports] == [0, 1] and reports[1][2] == SMALL.epochs
    assert "val MCC" in reports[1][0]


def test_result_tables_and_files(data, tmp_path):
    result = run_lab(data, [PRESETS["geneformer"], PRESETS["scbert"]], [0, 1], SMALL, heads_dir=tmp_path / "m")
    summary = result.summary()
    assert summary["tokenizer"].tolist() == ["geneformer", "scbert"] and (summary["n_seeds"] == 2).all()
    runs = result.runs_table()
    g = runs[runs["tokenizer"] == "geneformer"]["test_mcc"]
    assert summary.loc[0, "mcc_mean"] == pytest.approx(g.mean()) and summary.loc[0, "mcc_std"] == pytest.approx(g.std())
    confusion = result.best_confusion()
    assert confusion.to_numpy().sum() == len(data.splits["test"])
    files = result.write_csv(tmp_path / "csv")
    assert [f.name for f in files] == ["summary.csv", "runs.csv", "curves.csv", "confusion_best.csv"]
    curves = pd.read_csv(tmp_path / "csv" / "curves.csv")
    assert set(curves.columns) >= {"tokenizer", "seed", "epoch", "train_loss", "val_accuracy", "val_mcc"}
    assert len(list((tmp_path / "m").glob("*.pt"))) == 4


def test_split_errors_are_specific():
    adata = shifted_cells(n_per=5)
    with pytest.raises(InputError, match="no value 'skin' for test"):
        prepare_lab_data(adata, LabSplit("cell_type", "tissue", ("gut",), ("lung",), ("skin",)))
    with pytest.raises(InputError, match="no column 'organ'"):
        prepare_lab_data(adata, LabSplit("cell_type", "organ", ("gut",), ("lung",), ("brain",)))
    with pytest.raises(InputError, match="share split values"):
        prepare_lab_data(adata, LabSplit("cell_type", "tissue", ("gut",), ("gut",), ("brain",)))


def _run_cli(argv, capsys):
    parser = argparse.ArgumentParser()
    add_tokenizer_lab_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    code = args.func(args)
    return code, capsys.readouterr().out


def test_cli_prints_one_line_per_tokenizer_and_json(tmp_path, capsys):
    path = tmp_path / "d.h5ad"
    shifted_cells(n_per=20).write_h5ad(path)
    base = ["tokenizer-lab", str(path), "--label-key", "cell_type", "--split-key", "tissue", "--train", "gut",
            "--val", "lung", "--test", "brain", "--seeds", "2", "--epochs", "1", "--width", "32",
            "--tokenizer", "geneformer", "--fe", "quantile", "--fc", "random"]
    code, out = _run_cli(base, capsys)
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 2
    assert lines[0].startswith("geneformer") and "MCC" in lines[0] and "(2 seeds)" in lines[0]
    code, out = _run_cli(base + ["--json", "--out", str(tmp_path / "o")], capsys)
    document = json.loads(out)
    assert [r["tokenizer"] for r in document["summary"]] == ["geneformer", "fg=identity,fe=quantile,fc=random"]
    assert len(document["runs"]) == 4 and (tmp_path / "o" / "summary.csv").is_file()
    with pytest.raises(ConfigError, match="at least one tokenizer"):
        _run_cli(base[:-6], capsys)

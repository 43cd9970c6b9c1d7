"""scGPT runs end to end on tiny checkpoints in the real format, served by a loopback S3 server.

The checkpoints (`best_model.pt` with `self_attn.Wqkv.*` keys, `args.json`, `vocab.json`) know 250 of the
300 genes of the generated data by symbol. The batched runner is checked against a one-cell-at-a-time
reference written with the test helpers' plain torch.nn forward pass (`PlainScgpt`) and a tokenizer loop
written here with numpy's own quantile and digitize. That loop cannot draw the runner's random tie
breaks, so the reference data gives every detected gene of a cell its own count (no value sits on two
bin edges: binning is then deterministic) and no cell is longer than the checkpoint's input.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from czb_core.cli import main
from czb_core.errors import ConfigError, DatasetValidationError
from czb_core.io.header import read_header
from czb_core.models.compatibility import check_variant
from czb_core.models.registry import get_model
from czb_core.schema.datasets import SingleCellDataset
from czb_core.types import DataType, ModelType
from model_runners.scgpt.model import Scgpt
from tests.helpers.chunked import whole_and_chunked
from tests.helpers.data import log_normalised
from tests.helpers.scgpt_files import PlainScgpt, write_checkpoint, write_pickled_checkpoint

N_VOCAB_GENES = 250  # the first 250 symbols of `small_adata`; the other 50 are unknown to the model
MAX_SEQ_LEN = 128  # <cls> + up to 127 genes; `small_adata` cells have up to ~230 vocabulary genes
AUTHORS = "https://github.com/bowang-lab/scGPT#pretrained-scgpt-model-zoo"


@dataclasses.dataclass
class Store:
    root: Path
    genes: list  # vocabulary symbols
    bucket: str = ""

    def uri(self, name: str = "human") -> str:
        return f"s3://{self.bucket}/scgpt/{name}"


@pytest.fixture(scope="module")
def store(tmp_path_factory, small_adata) -> Store:
    root = tmp_path_factory.mktemp("scgpt")
    genes = list(small_adata.var["feature_name"].astype(str)[:N_VOCAB_GENES])
    write_checkpoint(root / "human", genes, args={"max_seq_len": MAX_SEQ_LEN}, seed=1)
    write_checkpoint(root / "brain", genes, args={"max_seq_len": MAX_SEQ_LEN}, seed=2)
    return Store(root, genes)


@pytest.fixture(scope="module")
def served(s3_server, store) -> Store:
    bucket = s3_server.new_bucket("scgpt")
    s3_server.put_dir(bucket, "scgpt/human", store.root / "human")
    return dataclasses.replace(store, bucket=bucket)


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """The weights cache talks to the moto server."""
    monkeypatch.setenv("CZB_S3_ENDPOINT_URL", s3_server.endpoint_url)


@pytest.fixture
def config(served, s3_env):
    """The real config, its `human` variant reading from the moto bucket."""
    real = get_model("scgpt")
    human = dataclasses.replace(real.variant("human"), weights={"model": served.uri()})
    return dataclasses.replace(real, variants={**real.variants, "human": human})


def distinct_counts(small_adata, n_cells: int, seed: int) -> ad.AnnData:
    """`n_cells` cells of 2 to ~120 detected genes (varied lengths), each gene of a cell with its own count.

    At least two vocabulary genes per cell: a single value sits on every bin edge, so its bin is drawn."""
    rng = np.random.default_rng(seed)
    adata = small_adata[:n_cells].copy()
    x_ng = np.zeros(adata.shape, dtype=np.float32)
    for i in range(n_cells):
        n_genes = int(rng.integers(2, 120))
        known = rng.choice(N_VOCAB_GENES, 2, replace=False)
        others = rng.choice(np.setdiff1d(np.arange(adata.n_vars), known), n_genes - 2, replace=False)
        columns = np.concatenate([known, others])
        x_ng[i, columns] = rng.permutation(np.arange(1, 500))[:n_genes]
    adata.X = sp.csr_matrix(x_ng)
    return adata


def reference_tokens(x_ng: sp.csr_matrix, symbols, vocab: dict, args: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per cell: `<cls>` then its detected vocabulary genes in column order, the values binned by numpy.

    A value's bin is the number of edges at or below it (`np.digitize`); that it touches at most one
    edge (no random tie break) is asserted, as is that no cell needs sampling.
    """
    token_c = np.array([vocab.get(s, -1) for s in symbols])
    quantiles = np.linspace(0, 1, args["n_bins"] - 1)
    cells = []
    for i in range(x_ng.shape[0]):
        row = x_ng[i].toarray().ravel().astype(np.float32)
        keep = (token_c >= 0) & (row > 0)
        values = row[keep]
        edges = np.quantile(values, quantiles)
        assert np.all((edges[None, :] == values[:, None]).sum(1) <= 1) and keep.sum() < args["max_seq_len"]
        bins = np.digitize(values, edges).astype(np.float32)
        cells.append((np.concatenate([[vocab["<cls>"]], token_c[keep]]),
                      np.concatenate([[args["pad_value"]], bins]).astype(np.float32)))
    return cells


def reference_embeddings(folder: Path, adata: ad.AnnData, mode: str) -> np.ndarray:
    vocab = json.loads((folder / "vocab.json").read_text())
    args = json.loads((folder / "args.json").read_text())
    tokens = reference_tokens(sp.csr_matrix(adata.X), adata.var["feature_name"].astype(str), vocab, args)
    assert len({len(genes) for genes, _ in tokens}) > 10  # lengths really vary, so batches pad
    plain = PlainScgpt(folder)
    return np.stack([plain.embed(genes, values, mode) for genes, values in tokens])


def run_reference_flow(config, path, variant="human", weights=None, **params) -> np.ndarray:
    """The reference flow (`run_model`, ending in `set_output`) on the CPU; returns the stored embedding."""
    dataset = SingleCellDataset(path)
    dataset.load_data()
    Scgpt(config, variant, weights_uri=weights, **params).run_model(dataset, device="cpu")
    return np.asarray(dataset.get_output(ModelType.SCGPT, DataType.EMBEDDING))


def czb_run(path, out, *args) -> int:
    """`czb run` on the CPU; the exit code."""
    return main(["run", str(path), "--model", "scgpt", "--out", str(out), "--device", "cpu", *map(str, args)])


# ----------------------------------------------------------------------------- the runner equals the reference


def test_batched_embeddings_equal_the_one_cell_reference_in_any_batch_size_and_order(
        config, store, small_adata, write_h5ad):
    adata = distinct_counts(small_adata, n_cells=40, seed=0)
    expected = reference_embeddings(store.root / "human", adata, "cls")
    path = write_h5ad(adata)
    for batch_size in (1, 3, 64):
        emb_nd = run_reference_flow(config, path, batch_size=batch_size, precision="fp32")
        assert emb_nd.shape == (40, 16) and emb_nd.dtype == np.float32
        np.testing.assert_allclose(emb_nd, expected, atol=1e-5, rtol=0)
    order = np.random.default_rng(1).permutation(adata.n_obs)
    shuffled = run_reference_flow(config, write_h5ad(adata[order].copy()), batch_size=7, precision="fp32")
    np.testing.assert_allclose(shuffled, expected[order], atol=1e-5, rtol=0)


def test_a_chunked_run_draws_the_same_ties_and_equals_the_whole_run(config, small_adata, write_h5ad, monkeypatch):
    adata = small_adata[:30].copy()  # small whole counts: many ties, so the seeded tie draws matter
    path = write_h5ad(adata)
    whole, chunked, _ = whole_and_chunked(lambda: Scgpt(config, "human", batch_size=4, precision="fp32", seed=5),
                                          path, monkeypatch, 8)
    np.testing.assert_allclose(chunked.emb_nd, whole.emb_nd, atol=1e-5, rtol=0)
    assert chunked.facts["reading"].startswith("streamed: 4 chunks of up to 8 cells")


def test_mean_mode_equals_the_reference(config, store, small_adata, write_h5ad):
    adata = distinct_counts(small_adata, n_cells=15, seed=2)
    emb_nd = run_reference_flow(config, write_h5ad(adata), emb_mode="mean", batch_size=4, precision="fp32")
    np.testing.assert_allclose(emb_nd, reference_embeddings(store.root / "human", adata, "mean"), atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", ["symbols_in_var_names", "counts_layer", "raw"])
def test_the_counts_and_symbols_are_found_where_users_keep_them(config, small_adata, write_h5ad, shape, monkeypatch):
    adata = distinct_counts(small_adata, n_cells=12, seed=3)
    expected = run_reference_flow(config, write_h5ad(adata), batch_size=5)
    user = adata.copy()
    if shape == "symbols_in_var_names":
        user.var_names = user.var["feature_name"].astype(str).to_numpy()
        user.var = user.var.drop(columns="feature_name")
    elif shape == "counts_layer":
        user.layers["counts"] = user.X.copy()
        user = log_normalised(user)
    else:
        user.raw = user.copy()
        user = log_normalised(user)
    path = write_h5ad(user)
    np.testing.assert_allclose(run_reference_flow(config, path, batch_size=5), expected, atol=1e-6)
    _, chunked, _ = whole_and_chunked(lambda: Scgpt(config, "human", batch_size=5), path, monkeypatch, 5)
    np.testing.assert_allclose(chunked.emb_nd, expected, atol=1e-5)  # streamed, the counts are found there too


# ----------------------------------------------------------------------------- czb run end to end


def test_czb_run_writes_the_embedding_and_a_seeded_run_is_reproduced(served, s3_env, small_adata, write_h5ad,
                                                                     tmp_path, capsys):
    adata = small_adata[:30].copy()  # ties in every cell, and about half the cells longer than the input
    path = write_h5ad(adata)
    outputs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        out = tmp_path / f"{name}.h5ad"
        code = czb_run(path, out, "--weights", served.uri(), "--seed", seed, "--batch-size", 4)
        assert code == 0, capsys.readouterr().err
        outputs[name] = ad.read_h5ad(out)
    result = outputs["a"]
    assert result.obsm["X_scgpt"].shape == (30, 16) and list(result.obs_names) == list(adata.obs_names)
    record = result.uns["czb_run"]
    assert record["model"] == "scgpt" and record["variant"] == "human" and int(record["seed"]) == 3
    assert int(record["batch_size_used"]) == 4 and record["params"]["emb_mode"] == "cls"
    assert int(record["facts"]["tokenizer seed"]) == 3
    assert not record["weights_warm"] and outputs["b"].uns["czb_run"]["weights_warm"]  # loaded once, then kept
    n_long = int((np.diff(adata[:, :N_VOCAB_GENES].X.indptr) > MAX_SEQ_LEN - 1).sum())
    assert n_long > 5 and record["facts"]["cells sampled"].startswith(f"{n_long} cells had more than 127 genes")
    np.testing.assert_array_equal(outputs["a"].obsm["X_scgpt"], outputs["b"].obsm["X_scgpt"])
    changed = np.abs(outputs["a"].obsm["X_scgpt"] - outputs["c"].obsm["X_scgpt"]).max(1) > 1e-4
    assert changed.sum() > 20  # another seed draws other tie breaks and samples


def test_a_variant_without_a_download_says_where_its_weights_come_from(store, small_adata, write_h5ad, tmp_path,
                                                                       capsys):
    path = write_h5ad(distinct_counts(small_adata, n_cells=8, seed=4))
    report = check_variant(read_header(path), get_model("scgpt"), "brain")
    (problem,) = report.errors
    assert problem.code == "weights_not_given" and AUTHORS in problem.fix and "--weights DIR" in problem.fix
    assert report.facts["vocabulary"] == "unknown until the weights are given"
    assert czb_run(path, tmp_path / "x.h5ad", "--variant", "brain") == 2
    err = capsys.readouterr().err
    assert "scGPT / brain has no weights to download" in err and AUTHORS in err and "--weights DIR" in err
    with pytest.raises(ConfigError, match="has no weights to download"):
        Scgpt(get_model("scgpt"), "brain").weights_sources()
    out = tmp_path / "brain.h5ad"
    assert czb_run(path, out, "--variant", "brain", "--weights", store.root / "brain") == 0, capsys.readouterr().err
    record = ad.read_h5ad(out).uns["czb_run"]
    assert record["variant"] == "brain" and record["weights_source"] == str(store.root / "brain")
    assert check_variant(read_header(path), get_model("scgpt"), "human").ok  # the default needs no --weights


# ----------------------------------------------------------------------------- data the model cannot use


@pytest.mark.parametrize("problem", ["ensembl_only", "mouse", "floats"])
def test_unusable_datasets_are_refused_with_a_fix(config, small_adata, write_h5ad, problem):
    adata = distinct_counts(small_adata, n_cells=10, seed=5)
    if problem == "ensembl_only":
        adata.var = adata.var.drop(columns="feature_name")
        code, match = "ids_not_symbols", "needs gene symbols"
    elif problem == "mouse":
        adata.var_names = [f"ENSMUSG{i:011d}" for i in range(adata.n_vars)]
        adata.var["feature_name"] = adata.var["feature_name"].astype(str).str.capitalize()
        code, match = "organism_unsupported", "supports homo_sapiens; this dataset is mus_musculus"
    else:
        adata = log_normalised(adata)
        code, match = "not_raw_counts", "needs raw integer counts"
    path = write_h5ad(adata)
    report = check_variant(read_header(path), config, "human")
    (found,) = [p for p in report.errors if p.code == code]
    assert match in found.message and found.fix
    if problem == "ensembl_only":
        assert "map_ids_to_symbols" in found.fix and "var['feature_name']" in found.fix
    with pytest.raises(DatasetValidationError, match=match):
        run_reference_flow(config, path)


@pytest.mark.parametrize("n_known, severity, code", [(20, "error", "low_vocabulary_overlap"),
                                                      (120, "warning", "partial_vocabulary_overlap")])
def test_vocabulary_overlap_is_judged_once_the_weights_are_cached(s3_server, s3_env, small_adata, write_h5ad,
                                                                  tmp_path, n_known, severity, code):
    genes = list(small_adata.var["feature_name"].astype(str)[:n_known])
    bucket = s3_server.new_bucket("vocab")
    s3_server.put_dir(bucket, "ckpt", write_checkpoint(tmp_path / "ckpt", genes, args={"max_seq_len": MAX_SEQ_LEN}))
    real = get_model("scgpt")
    config = dataclasses.replace(real, variants={"human": dataclasses.replace(
        real.variant("human"), weights={"model": f"s3://{bucket}/ckpt"})})
    adata = distinct_counts(small_adata, n_cells=10, seed=6)
    x_ng = adata.X.toarray()
    x_ng[:, 0] = 3  # every cell keeps a known gene
    adata.X = sp.csr_matrix(x_ng)
    path = write_h5ad(adata)
    before = check_variant(read_header(path), config)
    assert "vocabulary" not in before.checks_run and before.verdict.startswith("can run once its weights")
    if severity == "error":
        with pytest.raises(DatasetValidationError, match=f"only {n_known / 300:.1%} of the dataset's genes"):
            run_reference_flow(config, path)
    else:
        assert run_reference_flow(config, path, batch_size=5).shape == (10, 16)
    after = check_variant(read_header(path), config)
    assert after.facts["vocabulary overlap"] == f"{n_known / 300:.1%} of the dataset's genes"
    assert after.status("vocabulary") == severity and code in [p.code for p in after.problems]


def test_cells_without_a_vocabulary_gene_are_counted_before_the_model_loads(config, small_adata, write_h5ad):
    adata = distinct_counts(small_adata, n_cells=20, seed=7)
    x_ng = adata.X.toarray()
    x_ng[:3, :N_VOCAB_GENES] = 0  # three cells keep only genes outside the vocabulary
    x_ng[:3, N_VOCAB_GENES] = 4
    adata.X = sp.csr_matrix(x_ng)
    no_genes = r"3 of 20 cells have no gene in the vocabulary \(e.g. cell0"
    with pytest.raises(DatasetValidationError, match=no_genes) as err:
        run_reference_flow(config, write_h5ad(adata))
    assert "filter out the cells without any of scGPT's genes" in str(err.value)


def test_cells_without_counts_are_refused_before_any_download(small_adata, write_h5ad):
    adata = distinct_counts(small_adata, n_cells=10, seed=8)
    x_ng = adata.X.toarray()
    x_ng[4] = 0
    adata.X = sp.csr_matrix(x_ng)
    report = check_variant(read_header(write_h5ad(adata)), get_model("scgpt"))
    assert [p.code for p in report.errors] == ["cells_without_genes"]


# ----------------------------------------------------------------------------- checkpoints that must fail


@pytest.mark.parametrize("damage, message", [
    ("pickled", "is refused: it holds Python objects beyond tensors"),
    ("missing_key", r"lacks 1 encoder tensors (transformer_encoder.layers.1.linear2.weight)"),
])
def test_bad_checkpoints_on_s3_fail_the_run_with_a_weights_error(s3_server, s3_env, store, small_adata, write_h5ad,
                                                                tmp_path, capsys, damage, message):
    folder = tmp_path / damage
    if damage == "pickled":
        write_pickled_checkpoint(folder, store.genes)
    else:
        write_checkpoint(folder, store.genes, drop=["transformer_encoder.layers.1.linear2.weight"])
    bucket = s3_server.new_bucket(damage.replace("_", "-"))
    s3_server.put_dir(bucket, "ckpt", folder)
    code = czb_run(write_h5ad(distinct_counts(small_adata, n_cells=5, seed=9)), tmp_path / "o.h5ad",
                   "--weights", f"s3://{bucket}/ckpt")
    err = capsys.readouterr().err
    assert code == 3 and message in err

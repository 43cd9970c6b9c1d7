"""Sharded runs on a real Ray cluster (local, on loopback, two CPUs, started once for the module).

A sharded run must give what the same run gives in one process: the PCA baseline's sharded projection
equals the streamed baseline exactly, a tiny Geneformer (real checkpoint format, served by the loopback
S3 server) equals the in-process run to float tolerance. Killing the workers mid-run costs retries, not
a different result; cancelling stops the workers.
"""

from __future__ import annotations

import time

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from transformers import BertConfig, BertForMaskedLM

from czb_core.cli import main
from czb_core.config import get_settings
from czb_core.errors import Cancelled, ConfigError, DatasetValidationError
from czb_core.io.synthetic import make_synthetic_counts
from czb_core.models.pipeline import embed_file
from czb_core.models.registry import get_model
from czb_core.progress import CancelToken
from czb_core.streaming.ray_actors import PCA_PROJECTION
from czb_core.streaming.sharding import (
    MAX_SHARD_ROWS,
    RAY_ADDRESS_ENV,
    SHARDED,
    SHARDS_STEP,
    WORKER_NAME,
    configured_ray_address,
    plan_shards,
    shard_kind,
)
from tests.helpers.geneformer_files import V1_SPECIALS, dictionary_contents, write_dictionaries

PCA_PARAMS = {"n_top_genes": 150, "n_comps": 8}


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, address="local", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def counts_h5ad(tmp_path_factory):
    adata = make_synthetic_counts(n_cells=1200, n_genes=400, n_types=4, n_batches=2, mean_counts=600, seed=3)
    path = tmp_path_factory.mktemp("ray") / "counts.h5ad"
    adata.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def streamed_pca(counts_h5ad, tmp_path_factory) -> np.ndarray:
    """The single-process result the sharded PCA runs must equal: the streamed baseline."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CZB_HOME", str(tmp_path_factory.mktemp("czb_home")))
        return embed_file(counts_h5ad, "pca", params=PCA_PARAMS, stream=True).emb_nd


@pytest.fixture(scope="module")
def geneformer_v1(s3_server, small_adata, tmp_path_factory):
    """A V1-format tiny checkpoint and gc30M dictionaries in a loopback S3 bucket: the weights of the config's
    `gf-6L-30M-i2048` there (role -> URI)."""
    root = tmp_path_factory.mktemp("geneformer")
    genes = sorted(small_adata.var_names[:250])
    medians = dict(zip(genes, np.random.default_rng(7).lognormal(0, 1, len(genes))))
    contents = dictionary_contents(genes, V1_SPECIALS, medians)
    write_dictionaries(root / "dicts", "gc30M", contents)
    torch.manual_seed(1)
    config = BertConfig(vocab_size=len(contents[0]), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, hidden_act="relu", pad_token_id=0)
    BertForMaskedLM(config).save_pretrained(root / "model")
    bucket = s3_server.new_bucket("ray-geneformer")
    for name in ("dicts", "model"):
        s3_server.put_dir(bucket, f"gf/{name}", root / name)
    return {"model": f"s3://{bucket}/gf/model", "dictionaries": f"s3://{bucket}/gf/dicts"}


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    monkeypatch.setenv("CZB_S3_ENDPOINT_URL", s3_server.endpoint_url)


@pytest.fixture
def geneformer_registered(geneformer_v1, monkeypatch):
    """The registry as `embed_file` and the command line read it: Geneformer's V1 variant with its weights in the
    loopback bucket (the shards get the config object itself, so the workers read the same)."""
    import dataclasses

    from czb_core.models import pipeline

    real = get_model("geneformer")
    variant = dataclasses.replace(real.variant("gf-6L-30M-i2048"), weights=geneformer_v1)
    config = dataclasses.replace(real, variants={**real.variants, variant.name: variant})
    monkeypatch.setattr(pipeline, "get_model", lambda name: config if name == "geneformer" else get_model(name))
    return config


def live_workers(ray) -> list[str]:
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(WORKER_NAME)]


def on_shards_report(n: int = 0, action=None):
    """A progress callback keeping the shards step's reports (`.seen`) and calling `action` at the n-th. The
    first comes before any worker exists, the second right after the first worker has loaded and taken its
    first shard: then the queue still holds most shards."""
    seen = []

    def progress(step, done, total):
        if step == SHARDS_STEP:
            seen.append((done, total))
            if len(seen) == n:
                action()

    progress.seen = seen
    return progress


# ----------------------------------------------------------------------------- planning (no cluster)


def test_shards_cover_every_row_once_aligned_to_blocks():
    shards = plan_shards(1_000_003, n_workers=4, block_rows=10_000)
    assert shards[0].lo == 0 and shards[-1].hi == 1_000_003
    assert all(a.hi == b.lo for a, b in zip(shards, shards[1:]))
    assert {s.n_rows for s in shards[:-1]} == {MAX_SHARD_ROWS}
    small = plan_shards(60, n_workers=2)
    assert [s.n_rows for s in small] == [8] * 7 + [4]  # about four per worker
    assert [s.n_rows for s in plan_shards(10, 3, shard_rows=4)] == [4, 4, 2]
    with pytest.raises(ConfigError):
        plan_shards(10, 1, shard_rows=0)


def test_ray_address_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(RAY_ADDRESS_ENV, raising=False)
    assert configured_ray_address() is None
    monkeypatch.setenv(RAY_ADDRESS_ENV, " auto ")
    assert configured_ray_address() == "auto"


def test_only_the_pca_baselines_projection_is_sharded_of_models_fitted_on_all_cells():
    config = get_model("pca")
    implementation = config.load_implementation()
    assert shard_kind(implementation(config)) == PCA_PROJECTION
    with pytest.raises(ConfigError, match="cannot run apart"):
        shard_kind(implementation(config, "ppca"))


# ----------------------------------------------------------------------------- on the cluster


@pytest.mark.slow
def test_sharded_pca_projection_equals_the_streamed_baseline(ray_cluster, counts_h5ad, streamed_pca, monkeypatch):
    monkeypatch.setenv(RAY_ADDRESS_ENV, "auto")  # the process is connected already; the setting turns sharding on
    progress = on_shards_report()
    sharded = embed_file(counts_h5ad, "pca", params=PCA_PARAMS, progress=progress)
    np.testing.assert_array_equal(sharded.emb_nd, streamed_pca)
    record = sharded.record
    assert record["reading"] == SHARDED and record["sharding"]["kind"] == "sharded PCA projection"
    shards = record["sharding"]["shards"]
    assert [s["rows"] for s in shards] == [[s["index"] * 150, s["index"] * 150 + 150] for s in shards]
    assert len(shards) == 8 and {s["attempts"] for s in shards} == {1}
    nodes = {(n["hostname"], n["pid"]) for n in record["sharding"]["nodes"]}
    assert {(s["hostname"], s["pid"]) for s in shards} <= nodes
    assert progress.seen[-1] == (8, 8) and [d for d, _ in progress.seen] == sorted(d for d, _ in progress.seen)
    assert not live_workers(ray_cluster)
    assert not list((get_settings().workspace / "shards").iterdir())  # the store is gone once read back


@pytest.mark.slow
def test_sharded_geneformer_through_the_cli_equals_one_process(ray_cluster, geneformer_registered, s3_env,
                                                               small_adata, write_h5ad, tmp_path):
    adata = small_adata[:60].copy()
    x_ng = adata.X.toarray()
    x_ng[:, 0] = np.maximum(x_ng[:, 0], 1)  # a vocabulary gene in every cell
    adata.X = sp.csr_matrix(x_ng)
    path = write_h5ad(adata)
    single = embed_file(path, "geneformer", "gf-6L-30M-i2048", params={"batch_size": 5})
    out = tmp_path / "sharded.h5ad"
    code = main(["run", str(path), "--model", "geneformer", "--variant", "gf-6L-30M-i2048", "--batch-size", "5",
                 "--ray", "auto", "--out", str(out)])
    assert code == 0
    result = ad.read_h5ad(out)
    np.testing.assert_allclose(result.obsm["X_geneformer"], single.emb_nd, atol=1e-5, rtol=0)
    assert list(result.obs_names) == list(adata.obs_names)
    run = result.uns["czb_run"]
    assert run["reading"] == SHARDED and run["batch_size_used"] == 5
    assert len(run["sharding"]["shards"]) == 8
    assert any(p["code"] == "input_size_capped" for p in run["validation"].values())  # from a shard's checks

    x_ng[37, :250], x_ng[37, 260] = 0, 3  # a cell with counts in no vocabulary gene: only a shard can see it
    adata.X = sp.csr_matrix(x_ng)
    with pytest.raises(DatasetValidationError, match="1 of 8 cells have no gene in the vocabulary"):
        embed_file(write_h5ad(adata), "geneformer", "gf-6L-30M-i2048", ray_address="auto")
    assert not live_workers(ray_cluster)


@pytest.mark.slow
def test_killed_workers_are_replaced_and_their_shards_retried(ray_cluster, counts_h5ad, streamed_pca):

    def kill_every_worker():  # the one that took shard 0 and the one still loading
        for name in live_workers(ray_cluster):
            ray_cluster.kill(actor_named(ray_cluster, name))

    sharded = embed_file(counts_h5ad, "pca", params=PCA_PARAMS, ray_address="auto",
                         progress=on_shards_report(2, kill_every_worker))
    np.testing.assert_array_equal(sharded.emb_nd, streamed_pca)
    sharding = sharded.record["sharding"]
    # at least one retry; a replacement that took a retried shard before the kill ends may be killed too, and
    # how many attempts that costs depends on the machine's timing, not on the sharding
    assert max(s["attempts"] for s in sharding["shards"]) >= 2
    assert any("ActorDiedError" in failure for failure in sharding["failures"])
    ran = {(s["hostname"], s["pid"]) for s in sharding["shards"]}
    assert len(sharding["nodes"]) >= 3 and ran <= {(n["hostname"], n["pid"]) for n in sharding["nodes"]}


@pytest.mark.slow
def test_cancel_stops_the_workers(ray_cluster, counts_h5ad):
    cancel = CancelToken()
    with pytest.raises(Cancelled):
        embed_file(counts_h5ad, "pca", params=PCA_PARAMS, ray_address="auto", cancel=cancel,
                   progress=on_shards_report(2, cancel.cancel))
    deadline = time.monotonic() + 10
    while live_workers(ray_cluster) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not live_workers(ray_cluster)
    assert not list((get_settings().workspace / "shards").iterdir())


def actor_named(ray, name: str):
    namespace = next(a["namespace"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"] == name)
    return ray.get_actor(name, namespace=namespace)

"""TranscriptFormer runs end to end on tiny checkpoints in the real layout.

The checkpoints are served as `.tar.gz` archives, like the published ones, from the loopback S3 server:
moto answers a plain-HTTP GET of a public object, so the weights URI is the object's `http://` URL and
the download goes through the same archive path (`fetch_url`, safe extraction) as the real `https://`
archives; no local TLS is involved. The batched runner is checked against a one-cell-at-a-time reference
written here from the authors' definitions with plain torch.nn blocks: the full `seq_len` input, the
explicit mask, bias and soft-cap per query, the mean over the padded length and the zero-truncated
Poisson NLL.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from torch import nn

from czb_core.cli import main
from czb_core.errors import DatasetValidationError, WeightsError
from czb_core.io.header import read_header
from czb_core.models.compatibility import check_variant
from czb_core.models.registry import get_model
from czb_core.schema.datasets import SingleCellDataset
from czb_core.types import DataType, ModelType, Organism
from model_runners.transcriptformer.files import load_checkpoint_files
from model_runners.transcriptformer.inference import load_network
from model_runners.transcriptformer.model import LLH_COLUMN, Transcriptformer
from tests.helpers.chunked import whole_and_chunked
from tests.helpers.transcriptformer_files import ASSAYS, SPECIAL_TOKENS, TINY, tar_gz, write_checkpoint

N_VOCAB_GENES = 220  # of the 300 genes of `small_adata`; the rest are outside the vocabulary
MOUSE = [f"ENSMUSG{i:011d}" for i in range(40)]


@dataclasses.dataclass
class Store:
    root: Path
    human_genes: list
    bucket: str = ""
    endpoint: str = ""

    def url(self, name: str) -> str:
        return f"{self.endpoint}/{self.bucket}/weights/{name}.tar.gz"


@pytest.fixture(scope="module")
def store(tmp_path_factory, small_adata) -> Store:
    root = tmp_path_factory.mktemp("transcriptformer")
    rng = np.random.default_rng(3)
    extra = [f"ENSG9{i:010d}" for i in range(15)]  # vocabulary genes no dataset has
    human = list(rng.permutation(list(small_adata.var_names[:N_VOCAB_GENES]) + extra))
    write_checkpoint(root / "tf_tiny_sapiens", {"homo_sapiens": human}, seed=1)
    # two species sharing a gene id: the second table's copy keeps the first id
    write_checkpoint(root / "tf_tiny_exemplar", {"homo_sapiens": human, "mus_musculus": MOUSE + human[:2]}, seed=2)
    return Store(root, human)


@pytest.fixture(scope="module")
def served(s3_server, store) -> Store:
    bucket = s3_server.new_bucket("transcriptformer")
    for name in ("tf_tiny_sapiens", "tf_tiny_exemplar"):
        s3_server.put_bytes(bucket, f"weights/{name}.tar.gz", tar_gz(store.root / name))
    return dataclasses.replace(store, bucket=bucket, endpoint=s3_server.endpoint_url)


@pytest.fixture
def config(served):
    """The real config's variants, downloading the tiny archives; exemplar also claims zebrafish (which
    its tiny checkpoint lacks) to test the check against the checkpoint's own tables."""
    real = get_model("transcriptformer")
    sapiens = dataclasses.replace(real.variant("tf_sapiens"), weights={"model": served.url("tf_tiny_sapiens")})
    exemplar = dataclasses.replace(real.variant("tf_exemplar"), weights={"model": served.url("tf_tiny_exemplar")},
                                   resources={"species": ["homo_sapiens", "mus_musculus", "danio_rerio"]})
    return dataclasses.replace(real, variants={"tf_sapiens": sapiens, "tf_exemplar": exemplar})


def varied_cells(small_adata, n_cells=40, seed=0) -> ad.AnnData:
    """Cells with 1 to ~200 expressed genes (some past seq_len), assays known, unlisted and missing."""
    rng = np.random.default_rng(seed)
    adata = small_adata[rng.permutation(small_adata.n_obs)[:n_cells]].copy()
    x = adata.X.toarray()
    keep = rng.random(x.shape) < rng.uniform(0.005, 0.8, size=(n_cells, 1))
    keep[:, 0] = True  # var_names[:220] are all in the vocabulary
    x[:, 0] = np.maximum(x[:, 0], 1)
    adata.X = sp.csr_matrix(x * keep)
    assays = np.array(["10x 3' v3", "10x 3' v2", "Smart-seq2", "sci-RNA-seq", None], dtype=object)
    adata.obs["assay"] = pd.Categorical(assays[rng.integers(0, len(assays), n_cells)])
    return adata


# ----------------------------------------------------------------------------- the one-cell reference


def reference_inputs(x_g, genes, token_ids, seq_len, clip):
    """One cell, the authors' dataloader rules: vocabulary genes, expressed first in column order, zeros
    as [PAD], cut and padded to seq_len, counts clipped."""
    in_vocab = [i for i, g in enumerate(genes) if g in token_ids]
    expressed = [i for i in in_vocab if x_g[i] != 0]
    zero = [i for i in in_vocab if x_g[i] == 0]
    order = (expressed + zero)[:seq_len]
    tokens = [token_ids[genes[i]] if x_g[i] != 0 else token_ids["[PAD]"] for i in order]
    counts = [min(max(float(x_g[i]), 0.0), clip) for i in order]
    tokens += [token_ids["[PAD]"]] * (seq_len - len(tokens))
    counts += [0.0] * (seq_len - len(counts))
    return tokens, counts


class ReferenceModel:
    """The authors' arithmetic, one cell, full length, with plain nn blocks filled from the state dict."""

    def __init__(self, folder: Path):
        cfg = load_checkpoint_files(folder)
        state = torch.load(cfg.weights_path, weights_only=True)
        self.cfg, self.s = cfg, cfg.sizes
        self.table = nn.Embedding.from_pretrained(state["gene_embeddings.embedding.weight"])
        self.gene_mlp = self._mlp(state, "gene_embeddings.mlp")
        self.mu_mlp = self._mlp(state, "mu.mlp")
        self.gene_bias = nn.Embedding.from_pretrained(state["mu.gene_embedding.weight"])
        self.aux = nn.Embedding.from_pretrained(state["aux_embeddings.assay.weight"])
        self.layers = []
        for i in range(self.s.num_layers):
            p = f"transformer_encoder.encoder_layers.{i}"
            lin = lambda key: self._linear(state[f"{p}.{key}.weight"])  # noqa: E731
            norm = lambda key: self._norm(state[f"{p}.{key}.weight"], state[f"{p}.{key}.bias"])  # noqa: E731
            self.layers.append(dict(q=lin("self_attn.linears.0"), k=lin("self_attn.linears.1"),
                                    v=lin("self_attn.linears.2"), o=lin("self_attn.linears.3"),
                                    w1=lin("linear1"), w2=lin("linear2"), n1=norm("norm1"), n2=norm("norm2")))

    @staticmethod
    def _linear(weight, bias=None):
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        layer.weight.data = weight.clone()
        if bias is not None:
            layer.bias.data = bias.clone()
        return layer

    @staticmethod
    def _norm(weight, bias):
        layer = nn.LayerNorm(weight.shape[0])
        layer.weight.data, layer.bias.data = weight.clone(), bias.clone()
        return layer

    def _mlp(self, state, p):
        return nn.Sequential(self._linear(state[f"{p}.layers.0.weight"], state[f"{p}.layers.0.bias"]), nn.ReLU(),
                             self._norm(state[f"{p}.layers.2.weight"], state[f"{p}.layers.2.bias"]),
                             self._linear(state[f"{p}.layers.4.weight"], state[f"{p}.layers.4.bias"]))

    @torch.no_grad()
    def cell(self, tokens, counts, assay_token, clip):
        ids, eps, cap = self.cfg.token_ids, self.s.log_counts_eps, self.s.softcap
        pad, start = ids["[PAD]"], ids["[START]"]
        shifted = [start] + tokens[:-1]
        shifted_counts = [1.0] + counts[:-1]
        x = torch.cat([self.aux(torch.tensor([assay_token])), self.gene_mlp(self.table(torch.tensor(shifted)))])
        key_ok = [assay_token != ASSAYS["unknown"]] + [t != pad for t in shifted]
        bias = [math.log1p(c + eps) for c in [1.0] + shifted_counts]
        n, h = len(key_ok), self.s.num_heads
        d = self.s.embed_dim // h
        for layer in self.layers:
            x = layer["n1"](x)
            q, k, v = (layer[name](x).view(n, h, d) for name in "qkv")
            out = torch.zeros(n, h, d)
            for qi in range(n):
                keys = [j for j in range(qi + 1) if key_ok[j]]
                if not keys:
                    continue  # FlexAttention gives a query without keys a zero output
                for hi in range(h):
                    s = torch.stack([q[qi, hi] @ k[j, hi] / math.sqrt(d) + bias[j] for j in keys])
                    s = cap * torch.tanh(s / cap)
                    out[qi, hi] = torch.softmax(s, 0) @ v[keys, hi]
            x = layer["o"](out.reshape(n, h * d)) + x
            x = layer["n2"](x)
            x = layer["w2"](nn.functional.gelu(layer["w1"](x))) + x
        gene_out = x[1:]
        self.last_gene_out = {t: gene_out[i].numpy() for i, t in enumerate(tokens) if t != pad}  # by target token
        mask = torch.tensor([t != pad for t in shifted], dtype=torch.float32)
        emb = (gene_out * mask[:, None]).mean(0)
        own = self.gene_mlp(self.table(torch.tensor(tokens)))
        logit = (self.gene_bias(torch.tensor(tokens))[:, 0] + self.mu_mlp(torch.cat([gene_out, own], 1))[:, 0])
        is_pad = torch.tensor([t == pad for t in tokens])
        mu = torch.softmax(logit.masked_fill(is_pad, float("-inf")), 0) * sum(counts)
        target = torch.tensor(counts[:-1] + [1.0]).clamp(eps, clip)
        rate = mu + eps
        nll = -target * torch.log(rate) + torch.clamp(rate - nn.functional.softplus(-rate), min=0) \
            + torch.lgamma(target + 1)
        return emb.numpy(), float(nll[~is_pad].mean())


def reference_outputs(folder, adata, clip=30.0):
    model = ReferenceModel(folder)
    x = adata.X.toarray()
    genes = list(adata.var_names)
    embs, nlls = [], []
    for i in range(adata.n_obs):
        tokens, counts = reference_inputs(x[i], genes, model.cfg.token_ids, model.s.seq_len, clip)
        assay = adata.obs["assay"].iloc[i] if "assay" in adata.obs else None
        emb, nll = model.cell(tokens, counts, ASSAYS.get(assay, 0) if isinstance(assay, str) else 0, clip)
        embs.append(emb)
        nlls.append(nll)
    return np.stack(embs), np.array(nlls, dtype=np.float32)


def run_variant(config, variant, path, **params):
    impl = Transcriptformer(config, variant, **params)
    dataset = SingleCellDataset(path, organism=Organism.HUMAN)
    dataset.load_data()
    output = impl.run_model(dataset, device="cpu")
    return impl, output, np.asarray(dataset.get_output(ModelType.TRANSCRIPTFORMER, DataType.EMBEDDING))


# ----------------------------------------------------------------------------- the fast path equals the reference


def test_batched_outputs_equal_the_one_cell_reference(config, store, small_adata, write_h5ad):
    adata = varied_cells(small_adata)
    lengths = (adata.X[:, :N_VOCAB_GENES] > 0).sum(1).A1
    assert lengths.min() < 5 and lengths.max() > TINY["seq_len"]  # short cells and cells cut at seq_len
    path = write_h5ad(adata)
    expected_emb, expected_nll = reference_outputs(store.root / "tf_tiny_sapiens", adata)
    for batch_size in (1, 3, 64):
        impl, output, emb_nd = run_variant(config, "tf_sapiens", path, batch_size=batch_size)
        assert emb_nd.shape == (adata.n_obs, TINY["embed_dim"]) and emb_nd.dtype == np.float32
        np.testing.assert_allclose(emb_nd, expected_emb, atol=2e-5, rtol=0)
        np.testing.assert_allclose(output.obs[LLH_COLUMN], expected_nll, rtol=2e-5)
    assert impl.report.facts["attention"] == "eager"
    _, _, flex_nd = run_variant(config, "tf_sapiens", path, batch_size=5, attention="flex")
    np.testing.assert_allclose(flex_nd, expected_emb, atol=2e-5, rtol=0)


def test_a_chunked_run_equals_the_whole_run_and_keeps_the_likelihoods(config, store, small_adata, write_h5ad,
                                                                      monkeypatch):
    path = write_h5ad(varied_cells(small_adata, n_cells=20, seed=2))
    whole, chunked, _ = whole_and_chunked(lambda: Transcriptformer(config, "tf_sapiens", batch_size=3), path,
                                          monkeypatch, 6, organism=Organism.HUMAN)
    np.testing.assert_allclose(chunked.emb_nd, whole.emb_nd, atol=2e-5, rtol=0)
    np.testing.assert_allclose(chunked.obs[LLH_COLUMN], whole.obs[LLH_COLUMN], rtol=2e-5)
    assert Transcriptformer(config, "tf_sapiens").can_stream
    assert not Transcriptformer(config, "tf_sapiens", gene_embeddings=["ENSG00000000003"]).can_stream


def test_clip_counts_and_a_shared_gene_in_two_tables(config, store, small_adata, write_h5ad):
    adata = varied_cells(small_adata, n_cells=12, seed=1)
    expected_emb, expected_nll = reference_outputs(store.root / "tf_tiny_exemplar", adata, clip=4.0)
    _, output, emb_nd = run_variant(config, "tf_exemplar", write_h5ad(adata), clip_counts="4", batch_size=5)
    np.testing.assert_allclose(emb_nd, expected_emb, atol=2e-5, rtol=0)
    np.testing.assert_allclose(output.obs[LLH_COLUMN], expected_nll, rtol=2e-5)
    ids = load_checkpoint_files(store.root / "tf_tiny_exemplar").token_ids
    assert list(ids)[:7] == SPECIAL_TOKENS and ids[store.human_genes[0]] == 7
    assert len(ids) == 7 + len(store.human_genes) + len(MOUSE)  # the shared ids keep their first token


# ----------------------------------------------------------------------------- through the CLI, shaped like users' data


def test_czb_run_reads_raw_counts_and_ensembl_column(served, small_adata, write_h5ad, tmp_path, capsys):
    adata = varied_cells(small_adata, n_cells=15, seed=2)
    counts = adata.copy()
    adata.X = sp.csr_matrix(np.log1p(adata.X.toarray()).astype(np.float32))  # X normalised, counts in raw.X
    adata.raw = counts
    adata.var["ensembl_id"] = [f"{g}.7" for g in adata.var_names]  # versioned ids in a column,
    adata.var_names = adata.var["feature_name"].astype(str)  # symbols as names
    out = tmp_path / "tf.h5ad"
    code = main(["run", str(write_h5ad(adata)), "--model", "transcriptformer", "--out", str(out),
                 "--weights", served.url("tf_tiny_sapiens"), "--batch-size", "4"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = ad.read_h5ad(out)
    assert result.obsm["X_transcriptformer"].shape == (15, TINY["embed_dim"])
    assert result.obs[LLH_COLUMN].dtype == np.float32 and np.isfinite(result.obs[LLH_COLUMN]).all()
    expected_emb, _ = reference_outputs(served.root / "tf_tiny_sapiens", counts)
    np.testing.assert_allclose(result.obsm["X_transcriptformer"], expected_emb, atol=2e-5, rtol=0)


def test_contextual_gene_embeddings_go_beside_the_h5ad_and_equal_the_reference(served, small_adata, write_h5ad,
                                                                               tmp_path, capsys):
    adata = varied_cells(small_adata, n_cells=10, seed=4)
    wanted = list(adata.var_names[:2])
    out = tmp_path / "tf.h5ad"
    code = main(["run", str(write_h5ad(adata)), "--model", "transcriptformer", "--out", str(out),
                 "--weights", served.url("tf_tiny_sapiens"), "--batch-size", "3",
                 "--param", f"gene_embeddings={wanted[0]}.3,{wanted[1]}"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "contextual gene embeddings:" in captured.err and "MiB" in captured.err  # the size, before the run
    with np.load(tmp_path / "tf.extras.npz", allow_pickle=False) as extras:
        cell_k, gene_k = extras["gene_embeddings_cell"], extras["gene_embeddings_gene"]
        emb_kd = extras["gene_embeddings"]
    assert "gene_embeddings" not in ad.read_h5ad(out).obsm  # not in the h5ad
    model = ReferenceModel(served.root / "tf_tiny_sapiens")
    x, genes, ids = adata.X.toarray(), list(adata.var_names), model.cfg.token_ids
    expected = []
    for i in range(adata.n_obs):
        tokens, counts = reference_inputs(x[i], genes, ids, model.s.seq_len, 30.0)
        model.cell(tokens, counts, ASSAYS.get(adata.obs["assay"].iloc[i], 0), 30.0)
        expected += [(i, g, model.last_gene_out[ids[g]]) for g in sorted(wanted) if ids[g] in model.last_gene_out]
    assert len(expected) > 3 and [(c, g) for c, g, _ in expected] == list(zip(cell_k.tolist(), gene_k.tolist()))
    np.testing.assert_allclose(emb_kd, np.stack([e for _, _, e in expected]), atol=2e-5, rtol=0)
    bad = main(["run", str(write_h5ad(adata)), "--model", "transcriptformer", "--out", str(tmp_path / "bad.h5ad"),
                "--weights", served.url("tf_tiny_sapiens"), "--param", "gene_embeddings=ENSG00000999999"])
    assert bad != 0 and "ENSG00000999999" in capsys.readouterr().err


def test_validate_reports_assay_tokens_and_overlap_once_cached(config, small_adata, write_h5ad):
    adata = varied_cells(small_adata, n_cells=30, seed=3)
    path = write_h5ad(adata)
    before = Transcriptformer(config).check(read_header(path))
    assert "assay token" not in before.checks_run  # nothing is downloaded to validate
    run_variant(config, "tf_sapiens", path)
    after = check_variant(read_header(path), config, "tf_sapiens")
    assert after.facts["vocabulary overlap"] == "73.3% of the dataset's genes"
    assay = adata.obs["assay"].astype(object)
    expected = {"10x 3' v3": int((assay == "10x 3' v3").sum()), "unknown": int((~assay.isin(list(ASSAYS))).sum())}
    fact = after.facts["assay tokens"]
    for name, n in expected.items():
        assert f"{name}: {n:,} cells" in fact
    warning = next(p for p in after.problems if p.code == "unknown_assay")
    assert "sci-RNA-seq" in warning.message and warning.fix


def test_missing_assay_column_is_a_warning_and_every_cell_gets_unknown(config, store, small_adata, write_h5ad):
    adata = varied_cells(small_adata, n_cells=8, seed=4)
    del adata.obs["assay"]
    impl, output, emb_nd = run_variant(config, "tf_sapiens", write_h5ad(adata))
    assert impl.report.facts["assay tokens"] == "unknown: 8 cells"
    assert any(p.code == "no_assay_column" for p in impl.report.problems)
    np.testing.assert_allclose(emb_nd, reference_outputs(store.root / "tf_tiny_sapiens", adata)[0], atol=2e-5)


# ----------------------------------------------------------------------------- refusals


def test_species_the_variant_does_not_know_is_refused(config, small_adata, write_h5ad):
    adata = varied_cells(small_adata, n_cells=6, seed=5)
    adata.var_names = [f"ENSMUSG{i:011d}" for i in range(adata.n_vars)]
    report = Transcriptformer(config, "tf_sapiens").check(read_header(write_h5ad(adata)))
    assert "supports homo_sapiens; this dataset is mus_musculus" in " ".join(p.message for p in report.errors)
    fish = adata.copy()
    fish.var_names = [f"ENSDARG{i:011d}" for i in range(adata.n_vars)]
    impl = Transcriptformer(config, "tf_exemplar")
    dataset = SingleCellDataset(write_h5ad(fish), organism=Organism.ZEBRAFISH)
    dataset.load_data()
    with pytest.raises(DatasetValidationError, match="gene tables for homo_sapiens, mus_musculus; the dataset is "
                                                     "danio_rerio") as err:
        impl.run_model(dataset, device="cpu")  # allowed by config.yaml, refused by the checkpoint's tables
    assert "choose a variant trained on this species" in str(err.value)


def test_cells_without_vocabulary_genes_and_duplicates_are_refused(config, small_adata, write_h5ad):
    adata = varied_cells(small_adata, n_cells=10, seed=6)
    x = adata.X.toarray()
    x[:2, :N_VOCAB_GENES] = 0
    x[:2, -1] = 3  # only a gene outside the vocabulary
    adata.X = sp.csr_matrix(x)
    with pytest.raises(DatasetValidationError, match=r"2 of 10 cells have no gene in the vocabulary"):
        run_variant(config, "tf_sapiens", write_h5ad(adata))
    dup = varied_cells(small_adata, n_cells=5, seed=7)
    dup.var_names = [f"{g}.{i % 2}" if i < 2 else g for i, g in enumerate([dup.var_names[0]] * 2 +
                                                                          list(dup.var_names[2:]))]
    report = Transcriptformer(config).check(read_header(write_h5ad(dup)))
    problem = next(p for p in report.errors if p.code == "duplicate_genes")
    assert problem.fix


def test_broken_weights_are_weights_errors(tmp_path, store):
    folder = tmp_path / "broken"
    write_checkpoint(folder, {"homo_sapiens": store.human_genes[:50]}, seed=3)
    data = (folder / "model_weights.pt").read_bytes()
    (folder / "model_weights.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="cannot be loaded"):
        load_network(load_checkpoint_files(folder))
    write_checkpoint(folder, {"homo_sapiens": store.human_genes[:50]}, seed=3)
    state = torch.load(folder / "model_weights.pt", weights_only=True)
    del state["transformer_encoder.encoder_layers.1.linear2.weight"]
    torch.save(state, folder / "model_weights.pt")
    with pytest.raises(WeightsError, match="1 missing"):
        load_network(load_checkpoint_files(folder))
    (folder / "vocabs" / "homo_sapiens_gene.h5").unlink()
    with pytest.raises(WeightsError, match="named by config.json's esm2_mappings, is missing"):
        load_checkpoint_files(folder)

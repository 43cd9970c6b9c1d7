"""scGPT's encoder on tiny checkpoints in the real format, against a plain one-cell-at-a-time forward pass.

The reference (`PlainScgpt` in the test helpers) is built from torch.nn building blocks (`Embedding`,
`LayerNorm`, `Linear`, `TransformerEncoderLayer`), loaded straight from `best_model.pt`; it shares no code
with the runner.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from czb_core.errors import Cancelled, ConfigError, InputError, WeightsError
from czb_core.progress import CancelToken
from model_runners.scgpt.files import load_args, load_vocab
from model_runners.scgpt.inference import embed, load_model
from model_runners.scgpt.tokenizer import tokenize
from tests.helpers.scgpt_files import PlainScgpt, gene_symbols, write_checkpoint, write_pickled_checkpoint

ROOT = Path(__file__).resolve().parents[2]
N_GENES = 120


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("scgpt") / "human", gene_symbols(N_GENES), seed=3)


@pytest.fixture(scope="module")
def cells(checkpoint):
    """Cells of 1 to ~100 genes (max_seq_len 64: the longest are sampled), one with a single gene."""
    rng = np.random.default_rng(0)
    density_n = rng.uniform(0.02, 0.9, 23)[:, None]
    x_ng = (rng.random((23, N_GENES)) < density_n) * rng.negative_binomial(1, 0.2, (23, N_GENES))
    x_ng[0] = 0
    x_ng[0, 5] = 7
    x_ng[1, 1] += 1  # every row has a gene
    return tokenize(sp.csr_matrix(x_ng.astype(np.float32)), gene_symbols(N_GENES), load_vocab(checkpoint),
                    load_args(checkpoint), seed=5)


def reference(checkpoint, cells, mode, normalize=True) -> np.ndarray:
    plain = PlainScgpt(checkpoint)
    return np.stack([plain.embed(*cells.cell(i), mode, normalize) for i in range(len(cells))])


@pytest.mark.parametrize("mode", ["cls", "mean"])
@pytest.mark.parametrize("batch_size", [1, 4, 7, 64])
def test_batched_embeddings_equal_the_plain_forward_pass(checkpoint, cells, mode, batch_size):
    assert cells.lengths.min() == 2 and cells.lengths.max() == 64 and len(set(cells.lengths)) > 5
    model = load_model(checkpoint, "cpu")
    expected_nd = reference(checkpoint, cells, mode)
    emb_nd = embed(model, cells, mode=mode, batch_size=batch_size, precision="fp32").outputs[0]
    assert emb_nd.shape == (len(cells), 16) and emb_nd.dtype == np.float32
    np.testing.assert_allclose(emb_nd, expected_nd, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(emb_nd, axis=1), 1.0, atol=1e-6)


def test_cell_order_does_not_change_a_cells_embedding(checkpoint, cells):
    model = load_model(checkpoint, "cpu")
    order = np.random.default_rng(1).permutation(len(cells))
    shuffled = embed(model, cells.take(order), batch_size=5, precision="fp32").outputs[0]
    np.testing.assert_allclose(shuffled, reference(checkpoint, cells, "cls")[order], atol=1e-5, rtol=0)


def test_unnormalised_embeddings_are_the_raw_outputs(checkpoint, cells):
    emb_nd = embed(load_model(checkpoint, "cpu"), cells, mode="mean", normalize=False, batch_size=6).outputs[0]
    np.testing.assert_allclose(emb_nd, reference(checkpoint, cells, "mean", normalize=False), atol=1e-5, rtol=0)
    assert not np.allclose(np.linalg.norm(emb_nd, axis=1), 1.0)


def test_the_same_seed_gives_identical_embeddings(checkpoint):
    rng = np.random.default_rng(2)
    x_ng = sp.csr_matrix((rng.negative_binomial(1, 0.3, (12, N_GENES)) * (rng.random((12, N_GENES)) < 0.8))
                         .astype(np.float32))
    vocab, args, model = load_vocab(checkpoint), load_args(checkpoint), load_model(checkpoint)
    runs = [embed(model, tokenize(x_ng, gene_symbols(N_GENES), vocab, args, seed=seed), batch_size=5).outputs[0]
            for seed in (9, 9, 10)]
    assert np.array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])  # ties and the sample are drawn anew


def test_progress_counts_cells_and_cancel_stops_between_batches(checkpoint, cells):
    model = load_model(checkpoint)
    reports = []
    embed(model, cells, batch_size=10, progress=lambda step, done, total: reports.append((step, done, total)))
    assert reports == [("embed", 0, 23), ("embed", 10, 23), ("embed", 20, 23), ("embed", 23, 23)]
    token = CancelToken()

    def cancel_after_first(step, done, total):
        if done:
            token.cancel()

    with pytest.raises(Cancelled):
        embed(model, cells, batch_size=10, progress=cancel_after_first, cancel=token)


def test_a_cell_without_genes_is_refused(checkpoint):
    x_ng = sp.csr_matrix(np.array([[1, 2, 0], [0, 0, 0]], dtype=np.float32))
    empty = tokenize(x_ng, gene_symbols(3), load_vocab(checkpoint), load_args(checkpoint))
    with pytest.raises(InputError, match="1 of 2 cells .*no gene"):
        embed(load_model(checkpoint), empty)


@pytest.mark.parametrize("setting, message", [
    (dict(mode="avg"), "emb_mode"), (dict(precision="fp16"), "fp16 needs a CUDA"),
    (dict(precision="int8"), "precision"), (dict(batch_size=0), "batch_size"),
])
def test_bad_settings_are_refused(checkpoint, cells, setting, message):
    with pytest.raises(ConfigError, match=message):
        embed(load_model(checkpoint), cells, **setting)


def test_bf16_on_the_cpu_stays_close(checkpoint, cells):
    emb_nd = embed(load_model(checkpoint), cells, precision="bf16", batch_size=8).outputs[0]
    cosine = (emb_nd * reference(checkpoint, cells, "cls")).sum(1)
    assert cosine.min() > 0.99


# ----------------------------------------------------------------------------- checkpoints that must fail

def test_a_missing_encoder_key_fails_loudly(tmp_path):
    dropped = "transformer_encoder.layers.1.self_attn.Wqkv.bias"
    folder = write_checkpoint(tmp_path / "c", gene_symbols(10), drop=[dropped])
    missing = r"lacks 1 encoder tensors \(transformer_encoder.layers.1.self_attn.in_proj_bias\)"
    with pytest.raises(WeightsError, match=missing):
        load_model(folder)


def test_missing_decoder_heads_do_not_matter(tmp_path):
    heads = ["decoder.fc.0.weight", "cls_decoder.out_layer.bias"]
    folder = write_checkpoint(tmp_path / "c", gene_symbols(10), drop=heads)
    assert load_model(folder).args.embsize == 16


def test_a_pickled_checkpoint_is_refused(tmp_path):
    folder = write_pickled_checkpoint(tmp_path / "c", gene_symbols(10))
    with pytest.raises(WeightsError, match="refused"):
        load_model(folder)


def test_a_truncated_checkpoint_is_refused(tmp_path):
    folder = write_checkpoint(tmp_path / "c", gene_symbols(10))
    data = (folder / "best_model.pt").read_bytes()
    (folder / "best_model.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="cannot be read"):
        load_model(folder)


def test_a_vocabulary_of_another_size_is_refused(tmp_path):
    folder = write_checkpoint(tmp_path / "c", gene_symbols(10))
    (folder / "vocab.json").write_text(json.dumps({g: i for i, g in enumerate(gene_symbols(11))}))
    with pytest.raises(WeightsError, match=r"embedding.weight \(13, 16\) \(args.json/vocab.json imply \(14, 16\)"):
        load_model(folder)


def test_the_model_code_imports_without_the_app_stack():
    """The GPU server's python lacks these; the encoder, files and cell layout must not need them."""
    code = ("import sys\n"
            "for name in ('anndata', 'scanpy', 'streamlit', 'omegaconf', 'numba', 'pandas'):\n"
            "    sys.modules[name] = None\n"
            "import model_runners.scgpt.inference, model_runners.scgpt.encoder, model_runners.scgpt.cells\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert result.returncode == 0, result.stderr

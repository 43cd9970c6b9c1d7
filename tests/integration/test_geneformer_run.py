"""Geneformer runs end to end on tiny checkpoints in the real formats, served by a loopback S3 server.

The variants under test are the real config's V1 (`gf-6L-30M-i2048`) and V2 (`Geneformer-V2-316M`)
variants with their URIs pointed at the moto bucket and the input size fitted to the tiny checkpoints'
64 positions; the real config keeps the cz-benchmarks URIs. The batched fast path is checked against
a one-cell-at-a-time reference written here: its own tokenizer loop and an unbatched eager forward
pass of the whole `BertForMaskedLM` with `output_hidden_states=True`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from transformers import BertConfig, BertForMaskedLM

from czb_core.cli import main
from czb_core.errors import ConfigError, DatasetValidationError, WeightsError
from czb_core.io.header import read_header
from czb_core.models.compatibility import check_variant
from czb_core.models.registry import get_model
from czb_core.models.runner import RunOutput
from czb_core.models.safe_pickle import UnsafePickleError
from czb_core.schema.datasets import SingleCellDataset
from czb_core.types import DataType, ModelType
from model_runners.geneformer.inference import load_checkpoint
from model_runners.geneformer.model import SHIFT_COLUMN, Geneformer
from model_runners.geneformer.perturbation import resolve_perturbation
from model_runners.geneformer.tokenizer import RankValueTokenizer, TokenizerSpec
from tests.helpers.chunked import whole_and_chunked
from tests.helpers.data import log_normalised
from tests.helpers.geneformer_files import (
    V1_SPECIALS,
    V2_SPECIALS,
    dictionary_contents,
    reference_tokens,
    write_dictionaries,
)

N_VOCAB_GENES = 250  # of the 300 in `small_adata`: the rest count in n_counts but get no token
INPUT_SIZE = {"v1": 48, "v2": 64}
REAL_VARIANT = {"v1": "gf-6L-30M-i2048", "v2": "Geneformer-V2-316M"}


@dataclasses.dataclass
class Store:
    root: Path
    contents: dict  # family -> (token, median, mapping)
    genes: list  # the vocabulary genes (Ensembl ids)
    bucket: str = ""


def tiny_checkpoint(folder: Path, vocab_size: int, seed: int) -> Path:
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64, hidden_act="relu", pad_token_id=0)
    BertForMaskedLM(cfg).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def store(tmp_path_factory, small_adata) -> Store:
    """Dictionaries of both families and a V1-like and a V2-like checkpoint, on disk."""
    root = tmp_path_factory.mktemp("geneformer")
    rng = np.random.default_rng(7)
    genes = sorted(small_adata.var_names[:N_VOCAB_GENES])
    medians = dict(zip(genes, rng.lognormal(0, 1, len(genes))))
    symbols = dict(zip(small_adata.var["feature_name"][:N_VOCAB_GENES], small_adata.var_names[:N_VOCAB_GENES]))
    contents = {
        "gc30M": dictionary_contents(genes, V1_SPECIALS, medians, symbols),
        "gc95M": dictionary_contents(genes, V2_SPECIALS, medians, symbols),
    }
    for family, values in contents.items():
        write_dictionaries(root / "dicts", family, values)
    tiny_checkpoint(root / "v1", len(contents["gc30M"][0]), seed=1)
    tiny_checkpoint(root / "v2", len(contents["gc95M"][0]), seed=2)
    return Store(root, contents, genes)


@pytest.fixture(scope="module")
def served(s3_server, store) -> Store:
    bucket = s3_server.new_bucket("geneformer")
    for name in ("dicts", "v1", "v2"):
        s3_server.put_dir(bucket, f"geneformer/{name}", store.root / name)
    return dataclasses.replace(store, bucket=bucket)


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """The weights cache talks to the moto server."""
    monkeypatch.setenv("CZB_S3_ENDPOINT_URL", s3_server.endpoint_url)


@pytest.fixture
def config(served, s3_env):
    """The real config's V1 and V2 variants, reading from the moto bucket."""
    real = get_model("geneformer")
    variants = {}
    for name, real_name in REAL_VARIANT.items():
        variant = real.variant(real_name)
        weights = {"model": f"s3://{served.bucket}/geneformer/{name}",
                   "dictionaries": f"s3://{served.bucket}/geneformer/dicts"}
        resources = {**variant.resources, "model_input_size": INPUT_SIZE[name]}
        variants[name] = dataclasses.replace(variant, name=name, weights=weights, resources=resources)
    return dataclasses.replace(real, variants=variants, default_variant="v2")


@pytest.fixture
def registered(served, s3_env, monkeypatch):
    """The command line's registry: the real Geneformer config (real variant names and input sizes) with
    every variant's weights and dictionaries in the moto bucket, as an admin's config.yaml would point them."""
    from czb_core.models import pipeline

    real = get_model("geneformer")
    variants = {}
    for name, variant in real.variants.items():
        family = "v2" if variant.resources["add_cls_eos"] else "v1"
        weights = {"model": f"s3://{served.bucket}/geneformer/{family}",
                   "dictionaries": f"s3://{served.bucket}/geneformer/dicts"}
        variants[name] = dataclasses.replace(variant, weights=weights)
    config = dataclasses.replace(real, variants=variants)
    monkeypatch.setattr(pipeline, "get_model", lambda name: config if name == "geneformer" else get_model(name))
    return config


def varied_cells(small_adata, n_cells=60, seed=0) -> ad.AnnData:
    """`n_cells` cells with 2 to ~150 detected genes (varied lengths), in a shuffled order."""
    rng = np.random.default_rng(seed)
    adata = small_adata[rng.permutation(small_adata.n_obs)[:n_cells]].copy()
    x = adata.X.toarray()
    keep = rng.random(x.shape) < rng.uniform(0.02, 1.0, size=(n_cells, 1))
    keep[:, 0] = True  # a vocabulary gene (var_names[:250] are the vocabulary) in every cell
    x[:, 0] = np.maximum(x[:, 0], 1)
    adata.X = sp.csr_matrix(x * keep)
    return adata


def run_variant(config, variant, path, **params) -> tuple[RunOutput, np.ndarray]:
    """The reference flow (`run`, ending in `set_output`), with the runner's full output."""
    impl = Geneformer(config, variant, **params)
    dataset = SingleCellDataset(path)
    dataset.load_data()
    output = impl.run_model(dataset, device="cpu")
    return output, np.asarray(dataset.get_output(ModelType.GENEFORMER, DataType.EMBEDDING))


def reference_embeddings(checkpoint: Path, cells: list[list[int]], emb_mode: str, emb_layer: int, has_specials: bool):
    """One cell at a time, no padding, the full masked-LM model with every hidden state."""
    model = BertForMaskedLM.from_pretrained(checkpoint, attn_implementation="eager").eval()
    n_layers = model.config.num_hidden_layers
    rows = []
    with torch.no_grad():
        for tokens in cells:
            out = model(input_ids=torch.tensor([tokens]), output_hidden_states=True)
            hidden = out.hidden_states[n_layers - 1 if emb_layer == -1 else n_layers][0]
            if emb_mode == "cls":
                rows.append(hidden[0])
            else:
                rows.append((hidden[1:-1] if has_specials else hidden).mean(0))
    return torch.stack(rows).numpy()


# ----------------------------------------------------------------------------- the fast path equals the reference


@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_batched_embeddings_equal_the_one_cell_reference(config, store, small_adata, write_h5ad, variant):
    adata = varied_cells(small_adata)
    path = write_h5ad(adata)
    family = "gc30M" if variant == "v1" else "gc95M"
    has_specials = variant == "v2"
    expected_tokens = reference_tokens(adata.X, list(adata.var_names), store.contents[family], INPUT_SIZE[variant],
                                       has_specials)
    assert len({len(t) for t in expected_tokens}) > 10  # lengths really vary, so batches pad
    mode = Geneformer.param_schema(config.variant(variant)).default("emb_mode")
    expected = reference_embeddings(store.root / variant, expected_tokens, mode, -1, has_specials)
    for batch_size in (1, 3, 64):
        impl, emb_nd = run_variant(config, variant, path, batch_size=batch_size)
        assert emb_nd.shape == (adata.n_obs, 16) and emb_nd.dtype == np.float32
        np.testing.assert_allclose(emb_nd, expected, atol=1e-5, rtol=0)
    spec = TokenizerSpec(INPUT_SIZE[variant], *((2, 3) if has_specials else (None, None)))
    cells = RankValueTokenizer(Geneformer(config, variant).load_dictionaries(store.root / "dicts"),
                               spec).tokenize(adata.X, adata.var_names)
    assert [cells.cell(i).tolist() for i in range(len(cells))] == expected_tokens


def test_a_chunked_run_tokenizes_and_embeds_chunk_by_chunk_and_equals_the_whole_run(config, store, small_adata,
                                                                                    write_h5ad, monkeypatch):
    path = write_h5ad(varied_cells(small_adata, n_cells=30, seed=3))
    whole, chunked, calls = whole_and_chunked(lambda: Geneformer(config, "v2", batch_size=4), path, monkeypatch, 7)
    np.testing.assert_allclose(chunked.emb_nd, whole.emb_nd, atol=1e-5, rtol=0)
    assert chunked.facts["reading"].startswith("streamed: 5 chunks of up to 7 cells")
    embed_calls = [(done, total) for step, done, total in calls if step == "embed"]
    assert embed_calls[-1] == (30, 30) and all(total == 30 for _, total in embed_calls)
    assert [done for done, _ in embed_calls] == sorted(done for done, _ in embed_calls)  # never goes back


def test_cell_mode_and_last_layer_on_v2(config, store, small_adata, write_h5ad):
    adata = varied_cells(small_adata, n_cells=20, seed=1)
    tokens = reference_tokens(adata.X, list(adata.var_names), store.contents["gc95M"], 64, True)
    _, emb_nd = run_variant(config, "v2", write_h5ad(adata), emb_mode="cell", emb_layer="0", batch_size=7)
    np.testing.assert_allclose(emb_nd, reference_embeddings(store.root / "v2", tokens, "cell", 0, True), atol=1e-5)


def test_v1_has_no_cls_and_bad_params_are_config_errors(config):
    with pytest.raises(ConfigError, match="no <cls> token"):
        Geneformer(config, "v1", emb_mode="cls")
    with pytest.raises(ConfigError, match="emb_layer must be -1"):
        Geneformer(config, "v2", emb_layer="3")
    with pytest.raises(ConfigError, match="precision must be"):
        Geneformer(config, "v2", precision="fp8")


# ----------------------------------------------------------------------------- perturbation


def test_perturbation_shift_is_zero_where_nothing_changes(config, small_adata, write_h5ad):
    adata = varied_cells(small_adata, n_cells=30, seed=2)
    gene = adata.var_names[5]
    x = adata.X.toarray()
    x[:10, 5] = 0  # ten cells do not express the deleted gene
    x[10:, 5] = np.maximum(x[10:, 5], 50)  # the others rank it high
    adata.X = sp.csr_matrix(x)
    path = write_h5ad(adata)
    _, plain = run_variant(config, "v2", path)
    output, perturbed = run_variant(config, "v2", path, feature_deletion=gene)
    shift = output.obs[SHIFT_COLUMN]
    assert np.all(shift[:10] == 0) and np.all(shift[10:] > 0)
    np.testing.assert_array_equal(perturbed[:10], plain[:10])
    cos = np.sum(plain * perturbed, 1) / np.linalg.norm(plain, axis=1) / np.linalg.norm(perturbed, axis=1)
    np.testing.assert_allclose(shift, 1 - cos, atol=1e-6)


def test_activation_goes_first_and_feature_map_replaces_the_token(config, store, small_adata, write_h5ad):
    adata = varied_cells(small_adata, n_cells=12, seed=3)
    x = adata.X.toarray()
    x[:, 0] = 1000  # every cell ranks var_names[0] first, so masking it changes every sequence
    adata.X = sp.csr_matrix(x)
    symbol, gene = adata.var["feature_name"].iloc[8], adata.var_names[8]
    output, _ = run_variant(config, "v2", write_h5ad(adata), feature_activation=symbol,
                            feature_map=f"{adata.var_names[0]}=<mask>")
    assert np.all(output.obs[SHIFT_COLUMN] > 0)
    d = Geneformer(config, "v2").load_dictionaries(store.root / "dicts")
    token = d.token_ids[gene]
    perturbation = resolve_perturbation(d, activation=symbol.lower(), mapping=f"{adata.var_names[0]}=<mask>")
    tokenizer = RankValueTokenizer(d, TokenizerSpec(64, 2, 3))
    cells = tokenizer.tokenize(adata.X, adata.var_names, perturbation=perturbation)
    plain = tokenizer.tokenize(adata.X, adata.var_names)
    first_gene = d.token_ids[adata.var_names[0]]
    for i in range(len(cells)):
        assert cells.cell(i)[:2].tolist() == [2, token]
        assert first_gene not in cells.cell(i) and 1 in cells.cell(i)  # every cell expresses var_names[0]
        assert cells.cell(i)[-1] == 3 and len(cells.cell(i)) <= 64
        assert token not in plain.cell(i)[:2]


def test_czb_perturb_writes_the_shift_beside_the_perturbed_embedding(registered, small_adata, write_h5ad,
                                                                    tmp_path, capsys):
    adata = varied_cells(small_adata, n_cells=25, seed=4)
    out = tmp_path / "perturbed.h5ad"
    symbol = adata.var["feature_name"].iloc[3]
    code = main(["perturb", str(write_h5ad(adata)), "--variant", "Geneformer-V2-316M", "--out", str(out),
                 "--delete", symbol, "--activate", adata.var_names[4], adata.var_names[6], "--batch-size", "4"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "obs['perturbation_shift']" in captured.out and "64 positions" in captured.err
    result = ad.read_h5ad(out)
    assert result.obsm["X_geneformer"].shape == (25, 16) and list(result.obs_names) == list(adata.obs_names)
    assert result.obs[SHIFT_COLUMN].dtype == np.float32 and (result.obs[SHIFT_COLUMN] > 0).all()
    record = result.uns["czb_run"]
    assert list(record["params"]["feature_deletion"]) == [symbol] and int(record["params"]["batch_size"]) == 4
    assert list(record["params"]["feature_activation"]) == [adata.var_names[4], adata.var_names[6]]
    assert record["weights"]["dictionaries"]["uri"].endswith("geneformer/dicts")
    assert main(["perturb", "x.h5ad", "--out", str(out)]) == 2  # no gene named


def test_czb_run_v1_through_the_registry(registered, small_adata, write_h5ad, tmp_path, capsys):
    out = tmp_path / "v1.h5ad"
    code = main(["run", str(write_h5ad(varied_cells(small_adata, n_cells=10))), "--model", "geneformer",
                 "--variant", "gf-6L-30M-i2048", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    result = ad.read_h5ad(out)
    assert result.obsm["X_geneformer"].shape == (10, 16) and SHIFT_COLUMN not in result.obs


# ----------------------------------------------------------------------------- bad input and bad weights


def test_validator_reports_vocabulary_and_cells_without_tokens_once_dictionaries_are_cached(
        config, small_adata, write_h5ad):
    adata = varied_cells(small_adata, n_cells=20, seed=5)
    x = adata.X.toarray()
    x[:3, :N_VOCAB_GENES] = 0  # three cells keep only genes outside the vocabulary
    adata.X = sp.csr_matrix(x)
    path = write_h5ad(adata)
    impl = Geneformer(config, "v2")
    before = impl.check(read_header(path))
    assert "vocabulary" not in before.checks_run  # dictionaries not cached: nothing downloaded to validate
    with pytest.raises(DatasetValidationError, match=r"3 of 20 cells have no gene in the vocabulary \(e.g. .*\)"):
        run_variant(config, "v2", path)  # found at run time, after the download, before the model is loaded
    after = check_variant(read_header(path), config, "v2")  # the dictionaries are cached now
    assert after.facts["vocabulary overlap"] == "83.3% of the dataset's genes"
    with pytest.raises(DatasetValidationError, match="3 of 20 cells have no gene in the vocabulary") as err:
        run_variant(config, "v2", path)
    assert "filter cells without detected genes" in str(err.value)


@pytest.mark.parametrize("problem", ["symbols", "mouse", "floats", "empty"])
def test_unusable_datasets_are_refused_with_a_fix(config, small_adata, write_h5ad, problem):
    adata = varied_cells(small_adata, n_cells=10, seed=6)
    if problem == "symbols":
        adata.var_names = adata.var["feature_name"].astype(str).to_numpy()
        adata.var = adata.var.drop(columns="feature_name")
        match = "needs Ensembl gene ids"
    elif problem == "mouse":
        adata.var_names = [f"ENSMUSG{i:011d}" for i in range(adata.n_vars)]
        match = "supports homo_sapiens; this dataset is mus_musculus"
    elif problem == "floats":
        adata = log_normalised(adata)
        match = "needs raw integer counts"
    else:
        x = adata.X.toarray()
        x[2] = 0
        adata.X = sp.csr_matrix(x)
        match = "1 cells have no counts at all; Geneformer cannot embed a cell without tokens"
    path = write_h5ad(adata)
    report = Geneformer(config, "v2").check(read_header(path))
    assert not report.ok and match in " ".join(p.message for p in report.errors)
    assert all(p.fix for p in report.errors)
    with pytest.raises(DatasetValidationError, match=match):
        run_variant(config, "v2", path)


@pytest.mark.parametrize("damage", ["truncated", "random_bytes", "missing"])
def test_broken_checkpoints_give_a_weights_error(tmp_path, store, damage):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_bytes((store.root / "v2" / "config.json").read_bytes())
    weights = (store.root / "v2" / "model.safetensors").read_bytes()
    if damage == "truncated":
        (folder / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    elif damage == "random_bytes":
        (folder / "model.safetensors").write_bytes(np.random.default_rng(0).bytes(len(weights)))
    with pytest.raises(WeightsError, match="cannot be loaded|not a Geneformer checkpoint"):
        load_checkpoint(folder)


def test_truncated_checkpoint_on_s3_fails_the_run_with_a_weights_error(s3_server, store, registered, small_adata,
                                                                       write_h5ad, capsys, tmp_path):
    bucket = s3_server.new_bucket("broken")
    weights = (store.root / "v2" / "model.safetensors").read_bytes()
    s3_server.put_bytes(bucket, "v2/config.json", (store.root / "v2" / "config.json").read_bytes())
    s3_server.put_bytes(bucket, "v2/model.safetensors", weights[:-100])
    code = main(["run", str(write_h5ad(varied_cells(small_adata, n_cells=5))), "--model", "geneformer",
                 "--out", str(tmp_path / "o.h5ad"), "--weights", f"s3://{bucket}/v2"])  # the config's dictionaries
    err = capsys.readouterr().err
    assert code == 3 and "cannot be loaded" in err and "download it again" in err


def test_checkpoint_that_does_not_fill_the_model_is_refused(tmp_path, store):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "partial"
    folder.mkdir()
    (folder / "config.json").write_bytes((store.root / "v2" / "config.json").read_bytes())
    tensors = load_file(store.root / "v2" / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if "layer.1." not in k}, folder / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(WeightsError, match="would run with random weights"):
        load_checkpoint(folder)


def test_malicious_dictionary_pickle_is_refused_before_anything_runs(s3_server, store, config, small_adata,
                                                                     write_h5ad, tmp_path):
    import pickle

    from tests.helpers.geneformer_files import Exploit

    marker = tmp_path / "pwned"
    bucket = s3_server.new_bucket("evil")
    s3_server.put_dir(bucket, "dicts", store.root / "dicts")
    token = dict(store.contents["gc95M"][0])
    token["<pad>"] = Exploit(marker)
    s3_server.put_bytes(bucket, "dicts/token_dictionary_gc95M.pkl", pickle.dumps(token))
    evil = dataclasses.replace(config.variant("v2"), weights={**config.variant("v2").weights,
                                                               "dictionaries": f"s3://{bucket}/dicts"})
    with pytest.raises(UnsafePickleError, match="token_dictionary_gc95M.pkl: refusing to load posix.system"):
        run_variant(dataclasses.replace(config, variants={"v2": evil}), "v2",
                    write_h5ad(varied_cells(small_adata, n_cells=5)))
    assert not marker.exists()


def test_pytorch_bin_checkpoint_loads_and_training_args_are_never_unpickled(tmp_path, store):
    from safetensors.torch import load_file

    from tests.helpers.geneformer_files import Exploit

    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "config.json").write_bytes((store.root / "v1" / "config.json").read_bytes())
    tensors = load_file(store.root / "v1" / "model.safetensors")
    torch.save(tensors, folder / "pytorch_model.bin")
    marker = tmp_path / "pwned"
    torch.save({"args": Exploit(marker)}, folder / "training_args.bin")  # a hostile pickle beside the weights
    model = load_checkpoint(folder)
    assert not marker.exists()
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, tensors["bert.embeddings.word_embeddings.weight"])

"""UCE runs end to end on tiny files in the real formats, served by a loopback S3 server.

The variant under test is the real config's `4l` with its URIs pointed at the moto bucket (sizes come
from the tiny checkpoint; the sequence layout, 1,024 genes in sentences of up to 1,536, is the real one).
The batched path is checked against a one-cell reference written with plain torch.nn (`tests/helpers/
uce_files.py`): each cell alone, cut to its sentence, as the authors' collator cuts a batch of one; and
the sentences against the test's own reading of the files.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from czb_core.cli import main
from czb_core.errors import ConfigError, DatasetValidationError, WeightsError
from czb_core.io.header import read_header
from czb_core.models.compatibility import check_variant
from czb_core.models.pipeline import embed_file, write_run_h5ad
from czb_core.models.registry import get_model
from czb_core.models.safe_pickle import UnsafePickleError
from czb_core.schema.datasets import SingleCellDataset
from czb_core.schema.gene_references import gene_table
from czb_core.types import DataType, ModelType, Organism
from model_runners.uce import files
from model_runners.uce.model import MODEL_FILES, UCE
from model_runners.uce.sampler import sample_sentences
from tests.helpers.geneformer_files import Exploit
from tests.helpers.uce_files import (
    CHROM_RIGHT,
    CLS,
    PAD_LENGTH,
    TINY,
    SpeciesGenes,
    chromosome_codes,
    reference_embedding,
    write_checkpoint,
    write_model_files,
)

HUMAN_PLACED, HUMAN_UNPLACED = 250, 10  # of the 300 genes of `small_adata`: the rest have no embedding
CHROMOSOMES = ("1", "10", "2", "MT", "X")


@dataclasses.dataclass
class Store:
    root: Path
    species: dict  # latin name -> SpeciesGenes
    model: object  # the ReferenceUce the checkpoint was saved from
    n_gene_rows: int
    bucket: str = ""


def species_genes(real: dict, small_adata) -> dict:
    rng = np.random.default_rng(0)
    human = list(small_adata.var["feature_name"][: HUMAN_PLACED + HUMAN_UNPLACED])
    coding = gene_table(Organism.MOUSE).query("biotype == 'protein_coding'")
    mouse = list(coding.drop_duplicates("gene_name", keep=False)["gene_name"].iloc[:200])
    out = {}
    for latin, entry in real.items():
        symbols = {"homo_sapiens": human, "mus_musculus": mouse}.get(latin, [f"G{i}" for i in range(15)])
        out[latin] = SpeciesGenes(entry["key"], entry["protein_embeddings"], symbols,
                                  list(rng.choice(CHROMOSOMES, len(symbols))),
                                  list(rng.integers(0, 10**6, len(symbols))))
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory, small_adata) -> Store:
    root = tmp_path_factory.mktemp("uce")
    real = get_model("uce").variant("4l").resources["species"]
    genes = species_genes(real, small_adata)
    human = genes["homo_sapiens"]
    placed = dataclasses.replace(human, symbols=human.symbols[:HUMAN_PLACED],
                                 chromosomes=human.chromosomes[:HUMAN_PLACED], starts=human.starts[:HUMAN_PLACED])
    n_rows, n_chrom = write_model_files(root / "model_files", [placed if s is human else s for s in genes.values()],
                                        TINY["token_dim"])
    # the unplaced human genes have embeddings (rewrite the human dict with all of them) but no CSV row
    write_model_files(root / "human_all", [human], TINY["token_dim"])
    (root / "model_files" / "protein_embeddings" / human.file).write_bytes(
        (root / "human_all" / "protein_embeddings" / human.file).read_bytes())
    model = write_checkpoint(root / "model" / "4layer_model.torch", n_rows, n_chrom, seed=1)
    return Store(root, genes, model, n_rows)


@pytest.fixture(scope="module")
def served(s3_server, store) -> Store:
    bucket = s3_server.new_bucket("uce")
    s3_server.put_dir(bucket, "uce", store.root / "model")
    s3_server.put_dir(bucket, "uce/model_files", store.root / "model_files")
    return dataclasses.replace(store, bucket=bucket)


@pytest.fixture
def config(served, s3_server, monkeypatch):
    monkeypatch.setenv("CZB_S3_ENDPOINT_URL", s3_server.endpoint_url)
    real = get_model("uce")
    variant = dataclasses.replace(real.variant("4l"), weights={
        "model": f"s3://{served.bucket}/uce/4layer_model.torch",
        MODEL_FILES: f"s3://{served.bucket}/uce/model_files/"})
    return dataclasses.replace(real, variants={"4l": variant})


@pytest.fixture
def registered(config, monkeypatch):
    """`embed_file` and the command line read the registry: there, UCE is the config pointed at the moto bucket."""
    from czb_core.models import pipeline

    monkeypatch.setattr(pipeline, "get_model", lambda name: config if name == "uce" else get_model(name))
    return config


def human_cells(small_adata, n_cells=24, seed=0) -> ad.AnnData:
    """Cells with varied numbers of detected genes; some symbols lower-cased (matching is case-insensitive)."""
    rng = np.random.default_rng(seed)
    adata = small_adata[:n_cells].copy()
    x = adata.X.toarray()
    x *= rng.random(x.shape) < rng.uniform(0.05, 1.0, (n_cells, 1))
    x[:, 0] = np.maximum(x[:, 0], 1)
    adata.X = sp.csr_matrix(x)
    names = adata.var["feature_name"].astype(str).to_numpy().copy()
    names[::7] = np.char.lower(names[::7].astype(str))
    adata.var["feature_name"] = names
    return adata


def mouse_cells(store: Store, n_cells=12, seed=0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    table = gene_table(Organism.MOUSE).drop_duplicates("gene_name").set_index("gene_name")
    symbols = store.species["mus_musculus"].symbols + ["Notagene1"]
    ids = [table.loc[s, "gene_id"] if s in table.index else "ENSMUSG99999999999" for s in symbols]
    x = rng.poisson(2.0, (n_cells, len(symbols))).astype(np.float32)
    x[:, 0] += 1
    obs = pd.DataFrame(index=[f"m{i}" for i in range(n_cells)])
    return ad.AnnData(sp.csr_matrix(x), obs=obs, var=pd.DataFrame({"feature_name": symbols}, index=ids))


def run(config, path, **params):
    impl = UCE(config, "4l", **params)
    dataset = SingleCellDataset(path)
    dataset.load_data()
    output = impl.run_model(dataset, device="cpu")
    return impl, output, np.asarray(dataset.get_output(ModelType.UCE, DataType.EMBEDDING))


def runner_sentences(impl: UCE, manager_path, config) -> tuple[np.ndarray, np.ndarray]:
    """The sentences the run embedded: the same seed through the runner's prepare and sampler."""
    adata = ad.read_h5ad(manager_path)
    manager = impl.data_manager(read_header(manager_path)).bind(adata)
    inputs = impl.prepare(np.flatnonzero(manager.cells_kept_n), manager)
    parts = list(sample_sentences(inputs.block, inputs.token_u, inputs.chrom_u, inputs.start_u, inputs.spec,
                                  impl.args.seed, inputs.rows_n))
    return np.concatenate([t for t, _ in parts]), np.concatenate([n for _, n in parts])


def test_batched_run_matches_a_one_cell_reference_without_padding(config, served, small_adata, write_h5ad):
    path = write_h5ad(human_cells(small_adata))
    impl, output, emb_nd = run(config, path, batch_size=5, seed=3)
    tokens_nl, lengths_n = runner_sentences(impl, path, config)
    assert len(set(lengths_n)) > 1  # cells of several lengths: batches of one length, never padded
    reference_nd = np.stack([reference_embedding(served.model, tokens_nl[i, :n].tolist())
                             for i, n in enumerate(lengths_n)])
    assert emb_nd.shape == (24, TINY["decoder"][1])
    np.testing.assert_allclose(emb_nd, reference_nd, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(emb_nd, axis=1), 1.0, atol=1e-5)
    one_by_one = run(config, path, batch_size=1, seed=3)[2]
    np.testing.assert_allclose(one_by_one, emb_nd, atol=1e-6)
    short = int(np.argmin(lengths_n))
    sentence = tokens_nl[short, : lengths_n[short]].tolist()
    longest = reference_embedding(served.model, sentence, pad_length=int(lengths_n.max()))
    padded = reference_embedding(served.model, sentence, pad_length=PAD_LENGTH)
    for other in (longest, padded):  # the +1 quirk: padding the cell would change its output
        assert np.abs(other - emb_nd[short]).max() > 1e-4
    assert output.facts["batches"] == "up to 5 cells of one sentence length, no padding"
    assert output.facts["genes used"] == HUMAN_PLACED
    assert output.facts["genes without a protein embedding"] == 300 - HUMAN_PLACED - HUMAN_UNPLACED
    assert output.facts["genes without a chromosome position"] == HUMAN_UNPLACED


def test_sentences_hold_the_cells_expressed_genes_by_the_files_own_tokens(config, served, small_adata, write_h5ad):
    adata = human_cells(small_adata, n_cells=8, seed=1)
    path = write_h5ad(adata)
    impl, _, _ = run(config, path, seed=0)
    tokens_nl, lengths_n = runner_sentences(impl, path, config)
    human = served.species["homo_sapiens"]
    codes = chromosome_codes(served.root / "model_files" / "species_chrom.csv")
    offsets = {"human": 4}  # human is written first, after the four special rows
    position = {s.upper(): i for i, s in enumerate(human.symbols)}
    chrom_of = {s.upper(): c for s, c in zip(human.symbols[:HUMAN_PLACED], human.chromosomes)}
    x = adata.X.toarray()
    for i in range(8):
        expressed = {position[s.upper()] + offsets["human"] for s, v in zip(adata.var["feature_name"], x[i])
                     if v > 0 and s.upper() in chrom_of}
        sentence = tokens_nl[i, : lengths_n[i]]
        assert sentence[0] == CLS and np.all(tokens_nl[i, lengths_n[i]:] == 0)
        chrom_tokens = {served.n_gene_rows + codes[f"human_{c}"] for c in CHROMOSOMES}
        genes = [t for t in sentence[1:] if t not in chrom_tokens and t != CHROM_RIGHT]
        assert len(genes) == 1024 and set(genes) <= expressed
        assert set(sentence) - set(genes) - {CLS, CHROM_RIGHT} <= chrom_tokens


def test_cli_run_writes_x_uce(registered, small_adata, write_h5ad, tmp_path, capsys):
    path = write_h5ad(human_cells(small_adata, n_cells=6))
    out = tmp_path / "out.h5ad"
    code = main(["run", str(path), "--model", "uce", "--out", str(out), "--device", "cpu", "--batch-size", "4"])
    assert code == 0, capsys.readouterr().err
    result = ad.read_h5ad(out)
    assert result.obsm["X_uce"].shape == (6, TINY["decoder"][1])
    assert list(result.obs_names) == list(ad.read_h5ad(path).obs_names)
    assert result.uns["czb_run"]["model"] == "uce"


def test_filter_drops_cells_and_keeps_the_others_in_input_order(registered, small_adata, write_h5ad):
    adata = human_cells(small_adata, n_cells=30, seed=2)
    x = adata.X.toarray()
    x[:, :40] = np.maximum(x[:, :40], 1)  # 40 detected genes in every cell...
    sparse_cells = [3, 11, 20]
    x[sparse_cells] = 0
    x[sparse_cells, :5] = 2  # ...but 5 in these: below the filter's 25
    adata.X = sp.csr_matrix(x)
    path = write_h5ad(adata)
    result = embed_file(path, "uce", "4l", params={"filter": True, "batch_size": 8}, device="cpu")
    kept = [name for i, name in enumerate(adata.obs_names) if i not in sparse_cells]
    assert list(result.obs.index) == kept
    assert result.emb_nd.shape[0] == len(kept)
    dropped = [adata.obs_names[i] for i in sparse_cells]
    assert result.record["facts"]["cells dropped by the filter"] == dropped
    assert any("dropped 3 cells" in note for note in result.record["notes"])
    assert any(p["code"] == "cells_filtered" for p in result.record["validation"])
    plain = embed_file(path, "uce", "4l", params={"batch_size": 8}, device="cpu")
    assert plain.emb_nd.shape[0] == 30


def test_a_streamed_run_samples_by_input_row_and_equals_the_whole_run(registered, small_adata, write_h5ad,
                                                                     monkeypatch, tmp_path):
    from czb_core.streaming import chunks
    from model_runners.uce import sampler

    monkeypatch.setattr(sampler, "CHUNK_CELLS", 8)  # three generators over 24 cells, one per chunk
    monkeypatch.setattr(UCE, "row_alignment", 8)
    monkeypatch.setattr(chunks, "MAX_CHUNK_ROWS", 10)  # rounded down to whole groups: chunks of 8
    path = write_h5ad(human_cells(small_adata))
    params = {"batch_size": 5, "seed": 4}
    whole = embed_file(path, "uce", "4l", params=params, device="cpu", stream=False)
    streamed = embed_file(path, "uce", "4l", params=params, device="cpu", stream=True)
    np.testing.assert_allclose(streamed.emb_nd, whole.emb_nd, atol=1e-6)
    assert streamed.record["reading"] == "streamed"
    assert "3 chunks of up to 8 cells" in streamed.record["facts"]["reading"]
    assert streamed.record["facts"]["genes used"] == HUMAN_PLACED  # the same in every chunk: kept once
    assert list(streamed.obs.index) == list(whole.obs.index)
    write_run_h5ad(streamed, tmp_path / "streamed.h5ad")  # the embedding on disk is written like any other
    np.testing.assert_allclose(ad.read_h5ad(tmp_path / "streamed.h5ad").obsm["X_uce"], whole.emb_nd, atol=1e-6)
    with pytest.raises(ConfigError, match="uses all cells at once"):  # the filter counts cells of the whole file
        embed_file(path, "uce", "4l", params={**params, "filter": True}, device="cpu", stream=True)


def test_mouse_runs_on_uce_and_is_refused_by_geneformer(config, served, write_h5ad):
    path = write_h5ad(mouse_cells(served))
    header = read_header(path)
    geneformer = check_variant(header, get_model("geneformer"))
    assert "organism_unsupported" in {p.code for p in geneformer.errors}
    impl, output, emb_nd = run(config, path, batch_size=6)
    assert impl.report.organism is Organism.MOUSE
    assert emb_nd.shape == (12, TINY["decoder"][1]) and np.isfinite(emb_nd).all()
    assert output.facts["genes used"] == 200 and output.facts["genes without a protein embedding"] == 1


def test_every_species_resolves_to_its_gene_table(served):
    resources = get_model("uce").variant("4l").resources
    folder = served.root / "model_files"
    uce_organisms = set(UCE.available_organisms)
    assert {Organism.parse(name) for name in resources["species"]} == uce_organisms
    files_seen = set()
    for organism in uce_organisms:
        symbols = served.species[organism.latin_name].symbols[:HUMAN_PLACED]  # those with a chromosome row
        table = files.gene_table(np.array([s.lower() for s in symbols]), folder, resources, organism)
        assert table.usable_g.all() and len(set(table.token_g)) == len(symbols)
        files_seen.add(files.species_files(resources, organism).protein_embeddings)
    assert len(files_seen) == 8


def test_a_missing_species_gene_table_is_a_clear_error(served, tmp_path):
    import shutil

    folder = tmp_path / "model_files"
    shutil.copytree(served.root / "model_files", folder)
    resources = get_model("uce").variant("4l").resources
    (folder / "protein_embeddings" / served.species["danio_rerio"].file).unlink()
    with pytest.raises(WeightsError, match="gene table for danio_rerio is missing"):
        files.gene_table(np.array(["G1"]), folder, resources, Organism.ZEBRAFISH)
    with pytest.raises(WeightsError, match="no protein embeddings for rattus_norvegicus"):
        files.species_files(resources, Organism.RAT)


def test_a_hostile_offsets_pickle_is_refused(served, tmp_path):
    import shutil

    folder = tmp_path / "model_files"
    shutil.copytree(served.root / "model_files", folder)
    marker = tmp_path / "owned"
    import pickle

    (folder / "species_offsets.pkl").write_bytes(pickle.dumps({"human": Exploit(marker)}))
    resources = get_model("uce").variant("4l").resources
    with pytest.raises(UnsafePickleError):
        files.species_offset(folder, resources, Organism.HUMAN)
    assert not marker.exists()


def test_cells_without_usable_counts_are_refused_with_a_count(config, small_adata, write_h5ad):
    adata = human_cells(small_adata, n_cells=10)
    x = adata.X.toarray()
    x[4] = 0
    x[4, -1] = 5  # a gene without a protein embedding only
    adata.X = sp.csr_matrix(x)
    with pytest.raises(DatasetValidationError, match="1 of 10 cells have no counts in the genes UCE embeds"):
        run(config, write_h5ad(adata))

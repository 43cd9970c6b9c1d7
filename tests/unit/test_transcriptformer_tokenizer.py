"""TranscriptFormer inputs from counts and obs, and the checkpoint's vocabulary, on hand-made examples."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from czb_core.errors import WeightsError
from model_runners.transcriptformer.files import find_checkpoint_folder, load_checkpoint_files
from model_runners.transcriptformer.tokenizer import aux_tokens, gene_tokens, tokenize_genes
from tests.helpers.transcriptformer_files import SPECIAL_TOKENS, write_checkpoint

VOCAB = {**{t: i for i, t in enumerate(SPECIAL_TOKENS)}, "G1": 7, "G2": 8, "G3": 9, "G4": 10}


def test_expressed_vocabulary_genes_in_column_order_cut_and_clipped():
    genes = ["G3", "OUT", "G1", "[PAD]", "G4", "G2"]  # OUT and a column named like a special token are not genes
    token_g = gene_tokens(genes, VOCAB, len(SPECIAL_TOKENS))
    assert token_g.tolist() == [9, -1, 7, -1, 10, 8]
    x = sp.csr_matrix(np.array([
        [5, 9, 0, 4, 40, 2],  # G3, G1 unexpressed, G4 clipped to 30, G2; OUT and [PAD] dropped
        [0, 0, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 1],  # four vocabulary genes, cut to three
        [0, 3, 0, 0, 0, 0],  # only a gene outside the vocabulary
    ], dtype=np.float32))
    x[1, 5] = 0  # a stored zero is not an expressed gene
    assert x[1].nnz == 2
    tokens_t, counts_t, offsets = tokenize_genes(x, token_g, seq_len=3, clip_counts=30)
    cells = [tokens_t[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]
    assert cells == [[9, 10, 8], [7], [9, 7, 10], []]
    assert counts_t[: offsets[1]].tolist() == [5, 30, 2]


def test_padding_a_batch_to_a_width():
    from model_runners.transcriptformer.cells import TokenizedCells

    cells = TokenizedCells(np.array([9, 10, 8, 7]), np.array([5, 30, 2, 1], np.float32), np.array([0, 3, 4]),
                           np.zeros((2, 1), np.int64))
    tokens_bw, counts_bw = cells.padded(np.array([1, 0]), width=4, pad_token=1)
    assert tokens_bw.tolist() == [[7, 1, 1, 1], [9, 10, 8, 1]]
    assert counts_bw.tolist() == [[1, 0, 0, 0], [5, 30, 2, 0]]


def test_assay_tokens_with_unlisted_missing_and_absent_values():
    vocab = {"assay": {"unknown": 0, "10x 3' v3": 2, "Smart-seq2": 3}}
    obs = pd.DataFrame({"assay": pd.Categorical(["Smart-seq2", "sci-RNA-seq", None, "10x 3' v3"])})
    assert aux_tokens(obs, vocab)[:, 0].tolist() == [3, 0, 0, 2]
    assert aux_tokens(obs.drop(columns="assay"), vocab)[:, 0].tolist() == [0, 0, 0, 0]


def test_token_ids_follow_the_config_order_and_archives_unpack_one_level_down(tmp_path):
    write_checkpoint(tmp_path / "tf_x", {"homo_sapiens": ["ENSG1", "ENSG2"], "mus_musculus": ["ENSMUSG1", "ENSG2"]},
                     seed=0)
    assert find_checkpoint_folder(tmp_path) == tmp_path / "tf_x"
    checkpoint = load_checkpoint_files(tmp_path)
    assert checkpoint.token_ids == {**{t: i for i, t in enumerate(SPECIAL_TOKENS)}, "ENSG1": 7, "ENSG2": 8,
                                    "ENSMUSG1": 9}
    assert checkpoint.special("[PAD]") == 1 and checkpoint.special("[START]") == 2
    assert checkpoint.species == ("homo_sapiens", "mus_musculus")
    assert checkpoint.aux_vocabs["assay"]["unknown"] == 0


@pytest.mark.parametrize("damage", ["no_config", "no_embed_dim", "pad_zeros_false", "bad_activation"])
def test_unusable_configs_are_weights_errors(tmp_path, damage):
    folder = write_checkpoint(tmp_path / "tf_x", {"homo_sapiens": ["ENSG1"]}, seed=0)
    path = folder / "config.json"
    config = json.loads(path.read_text())
    if damage == "no_config":
        path.unlink()
        match = "not a TranscriptFormer checkpoint"
    elif damage == "no_embed_dim":
        del config["model"]["model_config"]["embed_dim"]
        match = "model_config lacks embed_dim"
    elif damage == "pad_zeros_false":
        config["model"]["data_config"]["pad_zeros"] = False
        match = "pad_zeros is false"
    else:
        config["model"]["model_config"]["activation"] = "swish"
        match = "activation 'swish'"
    if path.exists():
        path.write_text(json.dumps(config))
    with pytest.raises(WeightsError, match=match):
        load_checkpoint_files(folder)

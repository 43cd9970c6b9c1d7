"""Tiny weights in each model's real format, and data each model should accept, for the model contract test.

`TINY_WEIGHTS` maps a model's `implementation` (the runner class its `config.yaml` names) to the builder
that writes stand-ins for every weights URI of that config: the same files under the same names as the
published weights (a checkpoint folder, one object, a `.tar.gz` archive), with tiny sizes and random
values, from the writers of the per-model tests (`tests/helpers/*_files.py`). A model whose variants need
weights and whose implementation has no entry here fails the contract test with a message saying to add a
builder: a new model folder cannot slip through unchecked. A model without weights (no variant names any)
needs no entry; `NoWeights` is used for it.

`serve` puts the stand-ins where URIs of the real kind point (S3 prefix or object on the loopback moto
server, an `http://` object or archive on the same server, a local path for a local URI), so the weights
cache downloads them as it downloads the real ones, manifest and checksums included.

Genes: `organism_genes` picks, per organism, real genes of the organism's shipped reference table (Ensembl
ids with their symbols) or, for an organism without one, ids in the organism's own id format; `cells`
generates counts over the first `N_GENES` of them (ids in var_names, symbols in var['feature_name'], the
obs columns of a CELLxGENE file), and every builder puts the first `N_KNOWN` of them (and `N_EXTRA` genes
the data lacks) in its tiny vocabulary, so the data is mostly known to the model.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import pickle
import tarfile
from pathlib import Path, PurePosixPath
from typing import Any, Optional
from urllib.parse import urlsplit

import anndata as ad
import numpy as np
import pandas as pd

from czb_core.io.synthetic import make_synthetic_counts
from czb_core.models.registry import ModelConfig, VariantConfig
from czb_core.models.weights import parse_uri
from czb_core.schema.gene_references import gene_table, organism_species
from czb_core.types import Organism

N_CELLS, N_GENES, N_KNOWN, N_EXTRA = 24, 60, 50, 6
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")
Claims = dict[str, Optional[tuple[Organism, ...]]]  # variant -> the organisms its validator accepts (None: any)


# ----------------------------------------------------------------------------- genes and cells


def _initials(organism: Organism) -> str:
    return "".join(word[0] for word in organism.latin_name.split("_")).upper()


def synthetic_ids(organism: Organism, n: int) -> list[str]:
    """`n` gene ids in the organism's id format (its Ensembl prefix, FlyBase, WormBase, PlasmoDB, yeast
    systematic names, else NCBI LOC ids), for an organism whose reference table is not shipped."""
    prefix = organism.prefix
    if prefix.startswith("ENS"):
        return [f"{prefix}{i:011d}" for i in range(1, n + 1)]
    if prefix == "FBgn":
        return [f"FBgn{i:07d}" for i in range(1, n + 1)]
    if prefix == "WBGene":
        return [f"WBGene{i:08d}" for i in range(1, n + 1)]
    if prefix == "PF3D7":
        return [f"PF3D7_{100100 + i:07d}" for i in range(n)]
    if prefix == "":  # yeast systematic names: Y, chromosome letter, arm, number, strand
        return [f"Y{'ABCDEFGHIJKLMNOP'[i // 1000 % 16]}{'LR'[i % 2]}{1 + i % 999:03d}{'WC'[i // 2 % 2]}"
                for i in range(n)]
    return [f"LOC{115_000_000 + i}" for i in range(n)]


@functools.lru_cache(maxsize=None)
def organism_genes(organism: Organism, n: int = N_GENES + N_EXTRA) -> pd.DataFrame:
    """`n` genes of `organism` (columns gene_id, gene_name), the same ones on every call: named genes of
    its shipped reference (unique ids, symbols unique even upper-cased) in a seeded order, or made-up
    genes in its id format when no reference is shipped."""
    if organism in organism_species():
        table = gene_table(organism)
        table = table[(table["gene_name"] != table["gene_id"]) & (table["gene_name"] != "")]
        table = table.drop_duplicates("gene_id")
        table = table[~table["gene_name"].str.upper().duplicated(keep=False)]
        return table.sample(n=n, random_state=0)[["gene_id", "gene_name"]].reset_index(drop=True)
    return pd.DataFrame({"gene_id": synthetic_ids(organism, n),
                         "gene_name": [f"{_initials(organism)}g{i}" for i in range(1, n + 1)]})


def vocabulary_genes(organism: Organism) -> pd.DataFrame:
    """The genes a tiny vocabulary holds for `organism`: the first N_KNOWN genes of the data and N_EXTRA
    genes the data lacks."""
    genes = organism_genes(organism)
    return pd.concat([genes.iloc[:N_KNOWN], genes.iloc[N_GENES:]], ignore_index=True)


def cells(organism: Organism, n_cells: int = N_CELLS, seed: int = 0) -> ad.AnnData:
    """Raw counts of `n_cells` cells over the first N_GENES genes of `organism`, shaped like a CELLxGENE
    file: Ensembl-style ids in var_names, symbols in var['feature_name'], obs cell_type, batch, donor_id,
    assay, dataset_id, suspension_type."""
    counts = make_synthetic_counts(n_cells=n_cells, n_genes=N_GENES, n_types=3, n_batches=2, mean_counts=600,
                                   seed=seed)
    genes = organism_genes(organism).iloc[:N_GENES]
    obs = counts.obs.copy()
    obs["dataset_id"] = "ds1"
    obs["suspension_type"] = "cell"
    var = pd.DataFrame({"feature_name": genes["gene_name"].to_numpy()}, index=pd.Index(genes["gene_id"].to_numpy()))
    return ad.AnnData(X=counts.X, obs=obs, var=var)


def every_claimed(claims: Claims, default: tuple[Organism, ...] = (Organism.HUMAN,)) -> list[Organism]:
    """The organisms any variant claims, in order (`default` for variants that accept any)."""
    found: dict[Organism, None] = {}
    for organisms in claims.values():
        found.update(dict.fromkeys(organisms or default))
    return list(found)


# ----------------------------------------------------------------------------- what a builder returns


@dataclasses.dataclass
class TinyWeights:
    """Stand-ins of one model's weights: real URI -> a local folder or file in the same layout; variant ->
    the folder to give as `--weights` for a variant whose weights have no download (`weights_from`)."""

    stand_ins: dict[str, Path] = dataclasses.field(default_factory=dict)
    given: dict[str, Path] = dataclasses.field(default_factory=dict)


class NoWeights:
    """A model that needs no weights; also the base of every builder: tiny run parameters, data as is."""

    def build(self, config: ModelConfig, root: Path, claims: Claims) -> TinyWeights:
        return TinyWeights()

    def run_params(self, config: ModelConfig, variant: VariantConfig, claims: Claims) -> dict[str, Any]:
        """Parameters that keep a run tiny (or that the model needs to run at all); empty by default."""
        return {}

    def prepare_data(self, adata: ad.AnnData, config: ModelConfig, claims: Claims) -> ad.AnnData:
        """The generated cells with whatever obs the model needs beyond a CELLxGENE file's."""
        return adata


class PcaBaseline(NoWeights):
    def run_params(self, config, variant, claims):
        return {"n_comps": 8}


class Geneformer(NoWeights):
    """BERT checkpoints (`save_pretrained` folders, 64 positions) and the pickled gene dictionaries of each
    family the variants' resources name, all families in the one dictionaries folder as published."""

    def build(self, config, root, claims):
        import torch
        from transformers import BertConfig, BertForMaskedLM

        from tests.helpers.geneformer_files import dictionary_contents

        rng = np.random.default_rng(7)
        out = TinyWeights()
        for k, (name, variant) in enumerate(config.variants.items()):
            r = variant.resources
            genes = pd.concat([vocabulary_genes(o) for o in claims[name] or (Organism.HUMAN,)])
            ids = sorted(genes["gene_id"])
            medians = dict(zip(ids, rng.lognormal(0, 1, len(ids))))
            specials = ("<pad>", "<mask>", "<cls>", "<eos>")[: int(r["n_special_tokens"])]
            contents = dictionary_contents(ids, specials, medians, dict(zip(genes["gene_name"], genes["gene_id"])))
            folder = out.stand_ins.setdefault(variant.weights["dictionaries"], root / "dictionaries")
            folder.mkdir(parents=True, exist_ok=True)
            for file, value in zip((r["token_dictionary_file"], r["gene_median_file"], r["gene_mapping_file"]),
                                   contents):
                (folder / file).write_bytes(pickle.dumps(value, protocol=4))
            torch.manual_seed(k)
            bert = BertConfig(vocab_size=len(contents[0]), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=32, max_position_embeddings=64, hidden_act="relu", pad_token_id=0)
            out.stand_ins[variant.weights["model"]] = root / name
            BertForMaskedLM(bert).save_pretrained(root / name)
        return out


class Scgpt(NoWeights):
    """Checkpoint folders (best_model.pt, args.json, vocab.json over the claimed organisms' symbols): the
    downloadable variant's at its URI, the others' as the folder given with --weights (the same format)."""

    def build(self, config, root, claims):
        from tests.helpers.scgpt_files import write_checkpoint

        out = TinyWeights()
        for k, (name, variant) in enumerate(config.variants.items()):
            symbols = pd.concat([vocabulary_genes(o) for o in claims[name] or (Organism.HUMAN,)])["gene_name"]
            folder = write_checkpoint(root / name, list(symbols), seed=k)
            if variant.weights:
                out.stand_ins[variant.weights["model"]] = folder
            else:
                out.given[name] = folder
        return out


class Scgenept(NoWeights):
    """Fine-tuned folders (one state dict with the flavour's text encoders), scGPT's vocab.json as one
    object, and GEARS' zipped screen (named as the download is) whose conditions perturb vocabulary genes."""

    def build(self, config, root, claims):
        from tests.helpers.scgenept_files import write_checkpoint, write_gears_zip, write_vocab

        out = TinyWeights()
        symbols = list(pd.concat([vocabulary_genes(o) for o in every_claimed(claims)])["gene_name"])
        for k, (name, variant) in enumerate(config.variants.items()):
            vocab_uri, data_uri = variant.weights["vocab"], variant.weights["training_data"]
            if vocab_uri not in out.stand_ins:
                out.stand_ins[vocab_uri] = write_vocab(root / "vocab", symbols) / PurePosixPath(vocab_uri).name
            if data_uri not in out.stand_ins:
                folder = root / "gears" / str(len(out.stand_ins))
                written = write_gears_zip(folder, variant.resources["training_dataset"], self._conditions(symbols))
                out.stand_ins[data_uri] = written.rename(folder / PurePosixPath(urlsplit(data_uri).path).name)
            out.stand_ins[variant.weights["model"]] = write_checkpoint(
                root / name, len(symbols), list(variant.resources["text_encoders"]), seed=k)
        return out

    @staticmethod
    def _conditions(symbols: list[str]) -> list[str]:
        return [f"{symbols[0]}+ctrl", f"{symbols[1]}+ctrl", f"{symbols[0]}+{symbols[2]}", "ctrl"]

    def run_params(self, config, variant, claims):
        symbols = vocabulary_genes(every_claimed(claims)[0])["gene_name"]
        return {"perturbation": f"{symbols[0]}+ctrl", "n_cells": 12}

    def prepare_data(self, adata, config, claims):
        perturbed = f"{adata.var['feature_name'].iloc[1]}+ctrl"  # a third of the cells: not control cells
        adata.obs["condition"] = np.where(np.arange(adata.n_obs) % 3 < 2, "ctrl", perturbed)
        return adata


class Transcriptformer(NoWeights):
    """Checkpoint folders (config.json, model_weights.pt, vocabs/ with one gene table per species the
    variant's resources name), served as the `.tar.gz` archives the authors publish."""

    def build(self, config, root, claims):
        from tests.helpers.transcriptformer_files import write_checkpoint

        out = TinyWeights()
        for k, (name, variant) in enumerate(config.variants.items()):
            uri = variant.weights["model"]
            stem = PurePosixPath(urlsplit(uri).path).name
            for suffix in ARCHIVE_SUFFIXES:
                stem = stem.removesuffix(suffix)
            tables = {o.latin_name: list(vocabulary_genes(o)["gene_id"]) for o in claims[name] or (Organism.HUMAN,)}
            out.stand_ins[uri] = write_checkpoint(root / name / stem, tables, seed=k)
        return out


class Uce(NoWeights):
    """The shared model_files folder (token table, offsets, chromosome CSV, one protein-embedding dict per
    species of the resources) and each variant's state dict as one object named as the variant's file."""

    def build(self, config, root, claims):
        from tests.helpers.uce_files import TINY, SpeciesGenes, write_checkpoint, write_model_files

        out = TinyWeights()
        rng = np.random.default_rng(0)
        by_folder: dict[str, dict[str, dict]] = {}
        for variant in config.variants.values():
            by_folder.setdefault(variant.weights["model_files"], {}).update(variant.resources["species"])
        sizes = {}
        for k, (uri, species) in enumerate(by_folder.items()):
            genes = []
            for latin, entry in species.items():
                symbols = list(vocabulary_genes(Organism.parse(latin))["gene_name"])
                genes.append(SpeciesGenes(entry["key"], entry["protein_embeddings"], symbols,
                                          list(rng.choice(["1", "2", "X"], len(symbols))),
                                          list(rng.integers(0, 10**6, len(symbols)))))
            folder = root / f"model_files{k}"
            sizes[uri] = write_model_files(folder, genes, TINY["token_dim"])
            out.stand_ins[uri] = folder
        for k, (name, variant) in enumerate(config.variants.items()):
            path = root / name / PurePosixPath(variant.weights["model"]).name
            write_checkpoint(path, *sizes[variant.weights["model_files"]], seed=k)
            out.stand_ins[variant.weights["model"]] = path
        return out


class ScviModel(NoWeights):
    """Census-format references (a scvi-tools `model.save` folder; one `model.pt` object for the URIs that
    name it), trained for one epoch on the variant's organism with Ensembl ids and batch key 'batch'."""

    def build(self, config, root, claims):
        import scvi

        out = TinyWeights()
        trained: dict[str, Path] = {}
        for name, variant in config.variants.items():
            if not variant.weights:
                continue
            organism = variant.resources["organism"]
            if organism not in trained:
                genes = vocabulary_genes(Organism.parse(organism))
                counts = make_synthetic_counts(n_cells=60, n_genes=len(genes), n_types=3, n_batches=2, seed=5)
                ref = ad.AnnData(counts.X, obs=counts.obs[["batch"]].copy(),
                                 var=pd.DataFrame(index=pd.Index(genes["gene_id"].to_numpy())))
                scvi.settings.seed = 0
                scvi.model.SCVI.setup_anndata(ref, batch_key="batch")
                model = scvi.model.SCVI(ref, n_layers=1, n_latent=4, n_hidden=16)
                model.train(max_epochs=1, accelerator="cpu", enable_progress_bar=False)
                model.save(str(root / organism))
                trained[organism] = root / organism
            uri = variant.weights["model"]
            out.stand_ins[uri] = trained[organism] / "model.pt" if uri.endswith(".pt") else trained[organism]
        return out

    def run_params(self, config, variant, claims):
        return {} if variant.needs_weights else {"max_epochs": 2}


TINY_WEIGHTS: dict[str, NoWeights] = {
    "PCABaseline": PcaBaseline(),
    "Geneformer": Geneformer(),
    "Scgpt": Scgpt(),
    "Scgenept": Scgenept(),
    "Transcriptformer": Transcriptformer(),
    "UCE": Uce(),
    "SCVIModel": ScviModel(),
}


def builder_for(config: ModelConfig) -> NoWeights:
    """The builder of `config`'s implementation; an AssertionError naming what to add when there is none."""
    if config.implementation in TINY_WEIGHTS:
        return TINY_WEIGHTS[config.implementation]
    if not any(v.needs_weights for v in config.variants.values()):
        return NoWeights()
    raise AssertionError(
        f"model_runners/{config.name} (implementation {config.implementation!r}) needs weights, and the model "
        f"contract test has no way to build tiny ones: add a builder for {config.implementation!r} to "
        "TINY_WEIGHTS in tests/helpers/model_contract.py (tiny weights in the model's real format, see the "
        "other builders there)")


# ----------------------------------------------------------------------------- serving the stand-ins


def tar_gz(folder: Path) -> bytes:
    """`folder` as a `.tar.gz` holding `<folder name>/...`, as published archives do."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return buffer.getvalue()


def serve(stand_ins: dict[str, Path], s3_server, bucket: str) -> dict[str, str]:
    """Real URI -> a URI of the same kind where its stand-in now is: an S3 prefix (a folder) or object (a
    file), an `http://` object or archive, both in `bucket` on the moto server (keyed by the real host
    and path); a local path as is."""
    served = {}
    for uri, path in stand_ins.items():
        source = parse_uri(uri)
        if source.kind not in ("s3", "http"):
            served[uri] = str(path)
            continue
        parts = urlsplit(uri)
        key = f"{parts.netloc}{parts.path}".strip("/")
        if path.is_dir() and not uri.endswith(ARCHIVE_SUFFIXES):
            assert source.kind == "s3", f"{uri}: a folder stand-in needs an s3:// prefix or an archive URL"
            s3_server.put_dir(bucket, key, path)
            served[uri] = f"s3://{bucket}/{key}" + ("/" if uri.endswith("/") else "")
            continue
        assert path.is_dir() or path.name == PurePosixPath(key).name, (
            f"{uri}: its stand-in {path.name} must carry the object's name")
        s3_server.put_bytes(bucket, key, tar_gz(path) if path.is_dir() else path.read_bytes())
        served[uri] = f"s3://{bucket}/{key}" if source.kind == "s3" else f"{s3_server.endpoint_url}/{bucket}/{key}"
    return served


def with_served_weights(config: ModelConfig, served: dict[str, str]) -> ModelConfig:
    """`config` with every variant's weights URIs replaced by their served stand-ins."""
    variants = {name: dataclasses.replace(v, weights={role: served[uri] for role, uri in v.weights.items()})
                for name, v in config.variants.items()}
    return dataclasses.replace(config, variants=variants)

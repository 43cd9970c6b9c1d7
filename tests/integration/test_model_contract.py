"""The contract every registered model variant keeps, checked from the registry (no list of models here).

For each (model, variant) of `discover_models()`, on tiny weights in the model's real format (built by the
builder `tests/helpers/model_contract.py` keeps for its implementation, served where URIs of the real kind
point) and on generated cells whose genes the tiny vocabulary knows:

- its description (`czb_core.models.description`) agrees with its runner and its model card, and it
  validates data of every organism the description names (a sample of three where it reads any);
- it refuses data of an organism it does not claim, with an organism error in the validation report;
- the embedding (or prediction) of cells one at a time equals the batched one;
- a streamed run (`czb run --stream`, in chunks and row blocks far smaller than the data) gives the whole
  run's answer where the variant's description says it scales that way (cells embedded apart: equal; fitted
  over row blocks: the same space), and is refused with the way out where it says whole dataset only;
- bf16 autocast on the CPU stays close to fp32, for a runner that declares a `precision` parameter;
- the run record holds every key, filled, and survives the h5ad.

Every run goes through `embed_file`, the entry of the CLI and the job workers. A new model folder gets all of
this without a test of its own; if its weights cannot be built here, its checks fail saying where to add a
builder. Checks that do not apply to a variant (it reads any organism, fits on all cells, has no precision)
are skipped with the reason, derived from its description and declared parameters, never from its name. The
equivalence checks of variants other than a model's default are marked slow (same writer, same code path).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

import anndata as ad
import numpy as np
import pytest

from czb_core.errors import ConfigError, DatasetValidationError
from czb_core.io.header import read_header
from czb_core.models import pipeline
from czb_core.models.description import Scaling, describe
from czb_core.models.inference import autocast_dtype, precision_name
from czb_core.models.pipeline import RunResult, embed_file, write_run_h5ad
from czb_core.models.registry import ModelConfig, discover_models
from czb_core.models.weights import WeightsCache
from czb_core.schema.gene_references import organism_species
from czb_core.streaming import chunks, row_blocks
from czb_core.types import Organism
from tests.helpers import model_contract as mc

pytestmark = [pytest.mark.filterwarnings("ignore:Category .* has fewer than 3 cells"),  # scVI on 10-cell chunks
              pytest.mark.filterwarnings("ignore:The number of training batches")]
ANY_ORGANISM_SAMPLE = (Organism.HUMAN, Organism.MOUSE, Organism.FRUIT_FLY)  # for a variant that accepts any
CHUNK_ROWS, BLOCK_ROWS = 10, 8  # of the N_CELLS cells: a streamed run reads several chunks / blocks
RECORD_KEYS = ("model", "model_type", "display_name", "variant", "obsm_key", "embedding_shape", "prediction_shape",
               "input", "organism", "weights_source", "weights", "weights_warm", "params", "seed", "batch_size_used",
               "facts", "extras", "notes", "validation", "versions", "device", "platform", "started_at",
               "finished_at", "wall_s", "peak_rss_mb", "peak_gpu_mb", "reading", "genes")
LISTS_MAY_BE_EMPTY = ("facts", "extras", "notes", "validation")  # what a runner adds, side outputs, notes, problems


# ----------------------------------------------------------------------------- parametrisation from the registry


def claimed(config: ModelConfig, variant: str) -> Optional[tuple[Organism, ...]]:
    """The organisms the variant reads, as its description says (None: any)."""
    return describe(config, variant).organisms


def _variants(heavy: bool = False):
    """(model, variant) of the registry; `heavy`: checks that embed several more times, marked slow for variants
    other than the model's default (same writer, same code path; `make test` runs them, the fast lanes not)."""
    for name, config in discover_models().items():
        for variant in config.variants:
            marks = [pytest.mark.slow] if heavy and variant != config.default_variant else []
            yield pytest.param(name, variant, id=f"{name}-{variant}", marks=marks)


def _variant_organisms():
    for name, config in discover_models().items():
        for variant in config.variants:
            try:
                organisms = claimed(config, variant) or ANY_ORGANISM_SAMPLE
            except Exception as exc:  # noqa: BLE001 - reported by the test, not at collection
                yield pytest.param(name, variant, repr(exc), id=f"{name}-{variant}-unloadable")
                continue
            for organism in organisms:
                yield pytest.param(name, variant, organism, id=f"{name}-{variant}-{organism.latin_name}")


VARIANTS = list(_variants())
HEAVY_VARIANTS = list(_variants(heavy=True))
DEFAULT_VARIANTS = [pytest.param(name, config.default_variant, id=name) for name, config in discover_models().items()]
VARIANT_ORGANISMS = list(_variant_organisms())

# Product bugs these checks found, each its own parametrisation (strict: a fix makes the test fail until the
# entry is removed). Keys: (check, model, variant or None for every variant, organism or None).
KNOWN_BUGS = {
    ("validates", "transcriptformer", "tf_metazoa", "lytechinus_variegatus"): "TranscriptFormer claims "
        "lytechinus_variegatus, whose gene ids are NCBI LOC/GeneID ids (Organism.SEA_URCHIN's prefix), but its "
        "validator demands Ensembl-form ids (TranscriptformerValidator.gene_id_kind='ensembl') and gene_id_system "
        "calls LOC ids symbols: every sea urchin dataset in its own ids is refused with symbols_not_ids",
}


def known_bug(request, check: str, name: str, variant: str, organism: Optional[Organism] = None) -> None:
    """Mark this parametrisation xfail (strict) when KNOWN_BUGS lists it."""
    for (c, n, v, o), reason in KNOWN_BUGS.items():
        if (c, n) == (check, name) and v in (None, variant) and (o is None or organism is not None
                                                                  and o == organism.latin_name):
            request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


# ----------------------------------------------------------------------------- the tiny registry


@dataclasses.dataclass
class Tiny:
    """One model with tiny weights: its config (URIs to the served stand-ins), builder and claims."""

    config: ModelConfig
    builder: mc.NoWeights
    claims: mc.Claims
    given: dict[str, str]

    def params(self, variant: str) -> dict[str, Any]:
        return self.builder.run_params(self.config, self.config.variant(variant), self.claims)

    def default_organism(self, variant: str) -> Organism:
        return (self.claims[variant] or (Organism.HUMAN,))[0]


class Contract:
    """Tiny models, data files and runs, each made once per module and shared by the checks."""

    def __init__(self, root: Path, s3_server):
        self.root, self.s3 = root, s3_server
        self.cache = WeightsCache(root / "weights", endpoint_url=s3_server.endpoint_url)
        self.models: dict[str, Tiny] = {}
        self.paths: dict[tuple, Path] = {}
        self.runs: dict[tuple, RunResult] = {}

    def tiny(self, name: str) -> Tiny:
        if name not in self.models:
            real = discover_models()[name]
            builder = mc.builder_for(real)
            claims = {variant: claimed(real, variant) for variant in real.variants}
            weights = builder.build(real, self.root / "models" / name, claims)
            served = mc.serve(weights.stand_ins, self.s3, self.s3.new_bucket(name.lower().replace("_", "-")))
            missing = sorted(set(uri for v in real.variants.values() for uri in v.weights.values()) - set(served))
            assert not missing, f"the {name} builder wrote no stand-in for {missing}"
            self.models[name] = Tiny(mc.with_served_weights(real, served), builder, claims,
                                     {v: str(p) for v, p in weights.given.items()})
        return self.models[name]

    def implementation(self, name: str, variant: str, **params):
        tiny = self.tiny(name)
        return tiny.config.load_implementation()(tiny.config, variant, weights_uri=tiny.given.get(variant),
                                                 weights_cache=self.cache, **{**tiny.params(variant), **params})

    def data(self, name: str, organism: Organism) -> Path:
        """Generated cells of `organism` as the model needs them, written once."""
        key = (name, organism)
        if key not in self.paths:
            tiny = self.tiny(name)
            adata = tiny.builder.prepare_data(mc.cells(organism), tiny.config, tiny.claims)
            path = self.root / "data" / f"{name}-{organism.latin_name}.h5ad"
            path.parent.mkdir(parents=True, exist_ok=True)
            adata.write_h5ad(path)
            self.paths[key] = path
        return self.paths[key]

    def run(self, name: str, variant: str, stream: bool = False, **params) -> RunResult:
        """`embed_file` of the variant on its default organism's cells, on the CPU (made once per arguments)."""
        key = (name, variant, stream, tuple(sorted(params.items())))
        if key not in self.runs:
            tiny = self.tiny(name)
            organism = tiny.default_organism(variant)
            given = None if organism in organism_species() else organism  # detected from the gene ids otherwise
            self.runs[key] = embed_file(self.data(name, organism), name, variant, organism=given,
                                        params={**tiny.params(variant), **params}, weights=tiny.given.get(variant),
                                        device="cpu", weights_cache=self.cache, stream=stream)
        return self.runs[key]


@pytest.fixture(scope="module")
def contract(tmp_path_factory, s3_server) -> Contract:
    return Contract(tmp_path_factory.mktemp("contract"), s3_server)


@pytest.fixture(autouse=True)
def tiny_registry(contract, monkeypatch):
    """`embed_file` finds the tiny configs where it reads the registry."""
    monkeypatch.setattr(pipeline, "get_model", lambda name: contract.tiny(name).config)


@dataclasses.dataclass
class SmallBlocks(row_blocks.RowBlocks):
    chunk_rows: int = BLOCK_ROWS


def outputs(result: RunResult) -> np.ndarray:
    return np.asarray(result.emb_nd if result.emb_nd is not None else result.pred_ng, dtype=np.float64)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def assert_same_rows(a: RunResult, b: RunResult, what: str) -> None:
    x, y = outputs(a), outputs(b)
    assert x.shape == y.shape and np.isfinite(x).all(), what
    assert list(a.obs.index) == list(b.obs.index), f"{what}: the rows are not the same cells in the same order"
    scale = max(float(np.abs(y).max()), 1e-12)
    np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-4 * scale, err_msg=what)


# ----------------------------------------------------------------------------- the checks


@pytest.mark.parametrize("name, variant", VARIANTS)
def test_the_description_agrees_with_the_runner_and_the_card(name, variant):
    config = discover_models()[name]
    description = describe(config, variant)
    runner = config.load_implementation()(config, variant)
    assert description.organisms == runner.data_needs().organisms
    assert description.gene_naming == runner.data_needs().gene_naming
    assert description.output == runner.output
    card = config.card.organisms
    if description.organisms is None:
        assert any(entry.startswith("any") for entry in card), f"{name}/{variant} accepts any organism; its card {card}"
    else:
        missing = [o.latin_name for o in description.organisms if o.latin_name not in card]
        assert not missing, f"{name}/{variant} accepts {missing}, which its card ({card}) does not list"


@pytest.mark.parametrize("name, variant, organism", VARIANT_ORGANISMS)
def test_validates_each_claimed_organism(contract, request, name, variant, organism):
    assert isinstance(organism, Organism), f"{name}/{variant}: the runner cannot be built: {organism}"
    known_bug(request, "validates", name, variant, organism)
    implementation = contract.implementation(name, variant)
    manager = implementation.data_manager(read_header(contract.data(name, organism)), organism)
    report = implementation.check(manager)
    implementation.fetch_weights()  # the checks that need the weights run as they do before a run
    implementation.check_cached_weights(manager, report)
    assert report.ok, report.format_text()
    assert report.organism is organism


@pytest.mark.parametrize("name, variant", VARIANTS)
def test_refuses_an_organism_it_does_not_claim(contract, name, variant):
    tiny = contract.tiny(name)
    organisms = tiny.claims[variant]
    if organisms is None:
        pytest.skip(f"{name}/{variant} reads any organism (its description lists none)")
    other = next(o for o in organism_species() if o not in organisms)
    path = contract.data(name, other)
    implementation = contract.implementation(name, variant)
    report = implementation.check(implementation.data_manager(read_header(path)))  # the organism is detected
    refusals = [p for p in report.errors if p.check == "organism"]
    assert refusals, report.format_text()
    assert all(other.latin_name in p.message and p.fix for p in refusals), report.format_text()
    with pytest.raises(DatasetValidationError, match=other.latin_name):
        embed_file(path, name, variant, params=tiny.params(variant), weights=tiny.given.get(variant), device="cpu",
                   weights_cache=contract.cache)


@pytest.mark.parametrize("name, variant", HEAVY_VARIANTS)
def test_one_cell_equals_batched(contract, name, variant):
    implementation = contract.implementation(name, variant)
    scaling = describe(contract.tiny(name).config, variant).scaling
    if scaling is not Scaling.CELLS_APART and "precision" not in implementation.schema:
        pytest.skip(f"{name}/{variant} is {scaling.value} and runs no network (no precision parameter): its "
                    "batch_size is a fitting parameter, not an inference batch")
    batched = contract.run(name, variant)
    one = contract.run(name, variant, batch_size=1)
    assert batched.record["batch_size_used"] > 1 and one.record["batch_size_used"] == 1
    assert_same_rows(one, batched, f"{name}/{variant}: one cell at a time differs from batches")


@pytest.mark.parametrize("name, variant", HEAVY_VARIANTS)
def test_chunked_equals_whole(contract, request, name, variant, monkeypatch):
    known_bug(request, "chunked", name, variant)
    monkeypatch.setattr(chunks, "MAX_CHUNK_ROWS", CHUNK_ROWS)
    monkeypatch.setattr(row_blocks, "RowBlocks", SmallBlocks)
    scaling = describe(contract.tiny(name).config, variant).scaling
    if scaling is Scaling.WHOLE_DATASET:
        with pytest.raises(ConfigError, match="cannot read a dataset in blocks"):
            contract.run(name, variant, stream=True)
        return
    whole, streamed = contract.run(name, variant), contract.run(name, variant, stream=True)
    assert whole.record["reading"] == "in memory" and streamed.record["reading"] == "streamed"
    if scaling is Scaling.CELLS_APART:
        assert_same_rows(streamed, whole, f"{name}/{variant}: the chunked run differs from the whole run")
        return
    # fitted over row blocks (streams): the same space, up to a rotation (an incremental fit is not the solver
    # of the whole matrix); a least-squares map of one onto the other leaves almost nothing
    x, y = outputs(streamed), outputs(whole)
    assert x.shape == y.shape and list(streamed.obs.index) == list(whole.obs.index)
    u, _, vt = np.linalg.svd((x - x.mean(0)).T @ (y - y.mean(0)))
    residual = np.linalg.norm((x - x.mean(0)) @ u @ vt - (y - y.mean(0))) / np.linalg.norm(y - y.mean(0))
    assert residual < 0.05, f"{name}/{variant}: streamed and whole runs span different spaces ({residual:.3f})"


@pytest.mark.parametrize("name, variant", HEAVY_VARIANTS)
def test_bf16_autocast_is_close_to_fp32(contract, name, variant):
    implementation = contract.implementation(name, variant)
    if "precision" not in implementation.schema:
        pytest.skip(f"{name}/{variant} declares no precision parameter")
    default = implementation.schema.default("precision")
    fp32 = contract.run(name, variant) if autocast_dtype(default, "cpu") is None else \
        contract.run(name, variant, precision="fp32")
    bf16 = contract.run(name, variant, precision="bf16")
    assert bf16.record["params"]["precision"] == "bf16"
    x, y = outputs(bf16), outputs(fp32)
    assert x.shape == y.shape and np.isfinite(x).all()
    similarity = cosines(x, y)
    assert np.median(similarity) > 0.99, f"{name}/{variant}: bf16 vs fp32 cosine median {np.median(similarity):.4f}"


def _filled(value) -> bool:
    return value is not None and not (isinstance(value, (str, list, tuple, dict)) and len(value) == 0)


@pytest.mark.parametrize("name, variant", VARIANTS)
def test_run_record_is_complete(contract, name, variant, tmp_path):
    result = contract.run(name, variant)
    record = result.record
    assert set(RECORD_KEYS) <= set(record), f"missing {sorted(set(RECORD_KEYS) - set(record))}"
    needs_weights = result.record["weights_source"] is not None
    optional = {"peak_gpu_mb"} | set(LISTS_MAY_BE_EMPTY)  # no GPU; lists that say "none"
    optional |= {"embedding_shape"} if result.pred_ng is not None else {"prediction_shape"}
    optional |= set() if contract.tiny(name).config.variant(variant).needs_weights else {"weights_source", "weights"}
    empty = [key for key in record if key not in optional and not _filled(record[key])]  # any key added later too
    assert not empty, f"{name}/{variant}: empty record entries {empty}"
    assert needs_weights == contract.tiny(name).config.variant(variant).needs_weights
    assert all(_filled(v) for v in record["input"].values()), record["input"]
    assert all(_filled(v) for v in record["genes"].values()), record["genes"]
    assert set(record["params"]) == {p.name for p in contract.implementation(name, variant).schema}
    assert record["model"] == name and record["variant"] == variant and record["device"] == "cpu"
    assert record["input"]["n_obs"] == len(result.obs) and record["batch_size_used"] >= 1
    if needs_weights:
        assert all(_filled(f.get("sha256")) for f in record["weights"]["files"]), record["weights"]
    stored = ad.read_h5ad(write_run_h5ad(result, tmp_path / "run.h5ad")).uns["czb_run"]
    assert {k for k, v in record.items() if v is not None} <= set(stored)


@pytest.mark.parametrize("name, variant", DEFAULT_VARIANTS)
def test_run_record_states_the_precision_it_ran_in(contract, request, name, variant):
    """`precision=auto` means bf16 on a GPU that has it and fp32 elsewhere: the record says which one ran (the
    engine's `precision_name`), not only the parameter. What a runner's code does, so once per model."""
    implementation = contract.implementation(name, variant)
    if "precision" not in implementation.schema:
        pytest.skip(f"{name}/{variant} declares no precision parameter")
    known_bug(request, "precision fact", name, variant)
    default = implementation.schema.default("precision")
    facts = contract.run(name, variant).record["facts"]
    assert facts.get("precision") == precision_name(autocast_dtype(default, "cpu")), facts


def test_a_model_without_a_weights_builder_fails_saying_where_to_add_one():
    config = next(c for c in discover_models().values() if any(v.needs_weights for v in c.variants.values()))
    with pytest.raises(AssertionError, match=r"add a builder for 'NewModel' to TINY_WEIGHTS in tests/helpers/model_"):
        mc.builder_for(dataclasses.replace(config, name="new_model", implementation="NewModel"))
    weightless = dataclasses.replace(config, implementation="NewModel", variants={
        n: dataclasses.replace(v, weights={}, weights_from="") for n, v in config.variants.items()})
    assert type(mc.builder_for(weightless)) is mc.NoWeights

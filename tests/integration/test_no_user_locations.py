"""No user-supplied paths or URLs: a run parameter never names a location, the job manager takes no weights
location, weights are managed only by admins once login is on, and an admin's import is what a run uses.

Before, Geneformer's "Dictionaries URI" and UCE's "Model files URI" parameters let a browser user make the
server request any URL, copy server files into the cache, and learn from the error which server paths
exist and what a folder holds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from czb_core.cli import main
from czb_core.errors import ConfigError, WeightsError
from czb_core.io.synthetic import make_synthetic_counts
from czb_core.models.params import Param, ParamSchema, names_a_location
from czb_core.models.pipeline import embed_file
from czb_core.models.registry import discover_models, get_model
from czb_core.models.weights import WeightsCache
from czb_core.models.weights_admin import import_weights
from czb_core.service.access import may_manage_weights
from czb_core.service.jobs import JobManager
from czb_core.service.workspace import Workspace
from tests.helpers.apptest import ROOT, TIMEOUT, fresh_manager, page  # noqa: F401  (fixture)
from tests.helpers.geneformer_files import V1_SPECIALS, dictionary_contents, write_dictionaries
from tests.integration.test_jobs import FakeRun
from tests.integration.test_login import AUTH

LOCATIONS = ("s3://bucket/prefix", "https://example.org/w.tar.gz", "http://169.254.169.254/latest/meta-data/",
             "file:///etc/passwd", "/etc/passwd", "  /srv/czb/weights", "~/weights", "~root", "../../etc",
             "dicts/../../etc", "..", "C:\\weights", "\\\\server\\share")
NOT_LOCATIONS = ("TP53", "ENSG00000141510", "GENE+ctrl", "KLF1+MAP2K6", "<mask>", "dataset_id", "batch",
                 "cell_type.level1", "a..b", "ctrl", "unassigned", "fp32", "0" * 64, "leiden/0.5")


# ----------------------------------------------------------------------------- the parameter schema


@pytest.mark.parametrize("text", LOCATIONS)
def test_locations_are_recognised(text):
    assert names_a_location(text)


@pytest.mark.parametrize("text", NOT_LOCATIONS)
def test_gene_names_columns_and_labels_are_not_locations(text):
    assert not names_a_location(text)


def test_a_text_parameter_refuses_a_location_in_any_shape():
    schema = ParamSchema((Param("where", "str", "", "free text"), Param("genes", "list", (), "genes"),
                          Param("pairs", "mapping", {}, "pairs", parse=lambda v: dict(v))))
    assert schema.resolve({"where": "TP53", "genes": "A,B", "pairs": {"A": "<mask>"}})["where"] == "TP53"
    for given in ({"where": "/etc/passwd"}, {"genes": "TP53, s3://bucket/x"}, {"pairs": {"A": "~/x"}},
                  {"pairs": {"../x": "B"}}):
        with pytest.raises(ConfigError, match="never names a file, folder or URL"):
            schema.resolve(given)
    with pytest.raises(ConfigError, match="never names a file, folder or URL"):
        ParamSchema((Param("where", "str", "/srv/default", "a runner's own default"),)).defaults()


def registered_schemas():
    """Every (model, variant, schema) the registry holds: what the Run page's form and `--param` accept."""
    for name, config in discover_models().items():
        implementation = config.load_implementation()
        for variant in config.variants.values():
            yield name, variant.name, implementation.param_schema(variant)


def test_no_parameter_of_any_registered_model_accepts_a_location():
    checked = set()
    for model, variant, schema in registered_schemas():
        schema.defaults()  # no default is a location either
        for param in schema:
            for location in LOCATIONS:
                with pytest.raises(ConfigError):
                    schema.resolve({param.name: location})
            checked.add((model, param.name))
    assert ("geneformer", "feature_map") in checked and ("scvi", "batch_key") in checked
    assert {"dictionaries", "model_files"}.isdisjoint(name for _, name in checked)
    text_params = {(m, p.name) for m, _, s in registered_schemas() for p in s if p.kind == "str" and not p.choices}
    assert ("scgenept", "control_value") in text_params  # free text exists, so the check above is not vacuous


def test_geneformer_and_uce_take_their_resources_from_the_config_only():
    for model, param, role in (("geneformer", "dictionaries", "dictionaries"), ("uce", "model_files", "model_files")):
        config = get_model(model)
        implementation = config.load_implementation()
        with pytest.raises(ConfigError, match=f"no parameter '{param}'"):
            implementation(config, **{param: "s3://bucket/elsewhere"})
        runner = implementation(config)
        assert runner.weights_sources()[role] == config.variant().weights[role]


# ----------------------------------------------------------------------------- nothing is ever requested


@pytest.fixture
def listener():
    """A local HTTP server that records every request it gets (it must get none)."""
    hits = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the http.server API)
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ami-id\n")

        do_HEAD = do_GET

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/latest/meta-data/", hits
    server.shutdown()
    server.server_close()


def test_a_url_given_as_a_parameter_or_weights_is_never_requested(listener, small_h5ad, tmp_path, capsys):
    url, hits = listener
    with pytest.raises(ConfigError):
        embed_file(small_h5ad, "geneformer", params={"dictionaries": url})
    with pytest.raises(ConfigError):
        embed_file(small_h5ad, "scgenept", params={"perturbation": "KLF1+ctrl", "control_value": url})
    assert main(["run", str(small_h5ad), "--model", "uce", "--out", str(tmp_path / "o.h5ad"),
                 "--param", f"model_files={url}"]) == 2
    assert main(["validate", str(small_h5ad), "--model", "geneformer", "--param", f"dictionaries={url}"]) == 2
    capsys.readouterr()

    manager = JobManager(Workspace(), run_fn=FakeRun(), score=False, processes=False)
    try:
        dataset = manager.workspace.add_file(small_h5ad).id
        for model, params in (("geneformer", {"dictionaries": url}), ("uce", {"model_files": url}),
                              ("scvi", {"batch_key": url}), ("scgenept", {"control_key": "/etc/passwd"})):
            with pytest.raises(ConfigError):
                manager.submit(dataset, model, params=params)
        with pytest.raises(TypeError):  # the server has no weights option at all
            manager.submit(dataset, "pca", weights=url)
        assert manager.list() == []
    finally:
        manager.shutdown(timeout=5)
    assert hits == []


def test_the_refusal_is_the_same_whether_a_server_path_exists_or_not(tmp_path):
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "dont_list_me.pkl").write_bytes(b"x")
    config = get_model("scgenept")
    implementation = config.load_implementation()
    messages = []
    for path in (tmp_path / "secret", tmp_path / "absent"):
        with pytest.raises(ConfigError) as err:
            implementation(config, control_key=str(path))
        messages.append(str(err.value).replace(str(path), "PATH"))
    assert messages[0] == messages[1] and "dont_list_me" not in messages[0]


def test_the_run_page_offers_no_location_field(small_h5ad):
    record = Workspace().add_file(small_h5ad)
    at = page("run", dataset=record.id)
    for model in ("geneformer", "uce"):
        next(s for s in at.selectbox if s.label == "Model").set_value(model).run()
        assert not at.exception
        fields = " ".join(f"{t.label} {t.help}" for t in at.text_input)
        assert "URI" not in fields and "dictionaries" not in fields.lower() and "model files" not in fields.lower()


# ----------------------------------------------------------------------------- who manages weights


def test_with_login_only_named_admins_manage_weights(monkeypatch):
    assert not may_manage_weights("bob@lab.org", login_required=True)  # CZB_ADMINS unset: nobody
    assert may_manage_weights("local", login_required=False)  # the single local user
    monkeypatch.setenv("CZB_ADMINS", "alice@lab.org")
    assert may_manage_weights("Alice@Lab.org", login_required=True)
    assert not may_manage_weights("bob@lab.org", login_required=True)
    assert not may_manage_weights("local", login_required=False)  # admins named: the local user is not one


def weights_page_as(email: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / "weights.py"), default_timeout=TIMEOUT)
    at.secrets.update(AUTH)
    at.user = {"is_logged_in": True, "email": email, "sub": f"sub-{email}"}
    return at.run()


def test_with_login_and_no_admins_named_no_account_may_replace_the_shared_weights(fresh_manager, monkeypatch):
    at = weights_page_as("bob@lab.org")
    assert not at.exception and len(at.dataframe) == 1  # the table, read-only
    assert not [b for b in at.button if b.label in ("Import", "Download now", "Import the upload")]
    assert not at.text_input and "Only the server's admins" in at.info[0].value
    monkeypatch.setenv("CZB_ADMINS", "alice@lab.org")
    at = weights_page_as("alice@lab.org")
    assert not at.exception and [b for b in at.button if b.label == "Download now"]


# ----------------------------------------------------------------------------- admins' imports


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("CZB_DATA_ROOTS", str(root))
    with socket.socket() as sock:  # no S3 answers: imported weights are all a run has
        sock.bind(("127.0.0.1", 0))
        monkeypatch.setenv("CZB_S3_ENDPOINT_URL", f"http://127.0.0.1:{sock.getsockname()[1]}")
    return root


def test_a_refused_import_names_the_file_wanted_not_what_the_folder_holds(data_root):
    folder = data_root / "dicts"
    folder.mkdir()
    (folder / "private_notes_2024.txt").write_text("not for users")
    with pytest.raises(WeightsError, match="token_dictionary_gc30M.pkl is missing") as err:
        import_weights("geneformer", "gf-6L-30M-i2048", folder, role="dictionaries")
    assert "private_notes_2024" not in str(err.value)

    medians = {"ENSG00000141510": 1.5, "ENSG00000111640": 2.0}
    write_dictionaries(folder, "gc30M", dictionary_contents(medians, V1_SPECIALS, medians))
    (entry,) = import_weights("geneformer", "gf-6L-30M-i2048", folder, role="dictionaries")
    assert entry.cached and entry.n_files == 4  # the stray file comes along, as in any copied folder


def test_a_checkpoint_folder_error_names_what_is_missing_not_what_is_there(tmp_path):
    from model_runners.geneformer.inference import load_checkpoint
    from model_runners.uce.model import model_file

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "private_notes_2024.torch").write_bytes(b"x")
    (tmp_path / "other_private.torch").write_bytes(b"x")
    with pytest.raises(WeightsError, match="it has no model.safetensors or pytorch_model.bin$") as gf:
        load_checkpoint(tmp_path)
    with pytest.raises(WeightsError, match="hold no 4layer_model.torch and 2 other .torch files") as uce:
        model_file(tmp_path, "4layer_model.torch")
    assert "private" not in str(gf.value) + str(uce.value)


@pytest.fixture(scope="module")
def census_reference(tmp_path_factory):
    """A tiny scVI reference in the Census save format (Ensembl var_names, batch key "batch") and a query
    with the Census batch columns."""
    import scvi

    root = tmp_path_factory.mktemp("census")
    cells = make_synthetic_counts(n_cells=260, n_genes=120, n_types=3, n_batches=2, seed=8)
    cells.obs["dataset_id"], cells.obs["suspension_type"] = "ds1", "cell"
    ref = ad.AnnData(cells.X[:200].copy(), obs=cells.obs.iloc[:200][["batch"]].copy(),
                     var=pd.DataFrame(index=cells.var_names))
    scvi.settings.seed = 0
    scvi.model.SCVI.setup_anndata(ref, batch_key="batch")
    model = scvi.model.SCVI(ref, n_layers=1, n_latent=4)
    model.train(max_epochs=1, accelerator="cpu", enable_progress_bar=False)
    model.save(str(root / "saved"))
    query = root / "query.h5ad"
    cells[200:].copy().write_h5ad(query)
    return root / "saved", query


def test_czb_weights_import_of_a_census_scvi_reference_is_what_runs_use(census_reference, data_root, capsys):
    import shutil

    saved, query = census_reference
    folder = data_root / "scvi_human"
    shutil.copytree(saved, folder)
    uri = get_model("scvi").variant("homo_sapiens").weights["model"]

    assert main(["weights", "import", "scvi", "homo_sapiens", str(folder)]) == 0, capsys.readouterr().err
    assert "imported 1 files" in capsys.readouterr().out
    manifest = WeightsCache().manifest(uri)
    assert manifest["files"][0]["sha256"] == hashlib.sha256((folder / "model.pt").read_bytes()).hexdigest()
    result = embed_file(query, "scvi", "homo_sapiens")  # offline: the import is all there is
    assert result.emb_nd.shape == (60, 4) and np.isfinite(result.emb_nd).all()
    assert result.record["weights_source"] == uri

    wrong = data_root / "not_scvi"
    wrong.mkdir()
    (wrong / "model.pt").write_bytes(b"not a torch save")
    assert main(["weights", "import", "scvi", "mus_musculus", str(wrong)]) == 3
    assert "not usable as the weights of scVI / mus_musculus" in capsys.readouterr().err
    empty = data_root / "empty_scvi"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("x")
    assert main(["weights", "import", "scvi", "mus_musculus", str(empty)]) == 3
    assert "holds no model.pt" in capsys.readouterr().err
    assert not WeightsCache().is_cached(get_model("scvi").variant("mus_musculus").weights["model"])

    assert main(["weights", "import", "scvi", "fit", str(folder)]) == 2  # trains on the data: nothing to import
    assert "uses no weights; there is nothing to import" in capsys.readouterr().err


def test_a_census_reference_is_checked_against_the_variants_pin_on_import(census_reference, data_root,
                                                                            monkeypatch):
    from czb_core.models import weights_admin

    saved, _ = census_reference
    config = get_model("scvi")
    pinned = dataclasses.replace(config.variant("homo_sapiens"), weights_sha256={"model.pt": "0" * 64})
    monkeypatch.setattr(weights_admin, "get_model",
                        lambda name: dataclasses.replace(config, variants={**config.variants, "homo_sapiens": pinned}))
    with pytest.raises(WeightsError, match="checksum mismatch for 'model.pt'"):
        import_weights("scvi", "homo_sapiens", saved, allowed_roots=(saved,))
    assert not WeightsCache().is_cached(pinned.weights["model"])

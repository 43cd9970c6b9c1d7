"""Who a visitor is: `make serve` starts only with login or for one person on this machine
(`CZB_SINGLE_USER=1`, on 127.0.0.1 only), a login with an e-mail the provider has not verified is refused,
and a share link shows its run alone, without the owner or the server's paths."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Optional

import anndata as ad
import numpy as np
import psutil
import pytest
import streamlit as st
from streamlit import config
from streamlit.testing.v1 import AppTest

from czb_core.errors import ConfigError
from czb_core.service.identity import (
    NO_LOGIN_NOTE,
    SINGLE_USER_NOTE,
    is_loopback,
    login_refusal,
    serve_address,
    serving_problem,
)
from czb_core.service.jobs import artifacts
from czb_core.service.sharing import Shares, public_record, public_result
from tests.helpers.apptest import TIMEOUT, fresh_manager  # noqa: F401  (fixture)
from tests.helpers.browser import free_port, wait_healthy
from tests.integration import test_jobs
from tests.integration.test_jobs import fake_manager, fake_result  # noqa: F401  (fixture)
from tests.integration.test_login import AUTH
from tests.integration.test_sharing import done_job  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[2]
SERVER_PATH = "/srv/lab/alice/pbmc.h5ad"
WEIGHTS_URI = "s3://czi-bucket/pca/model.pt"


def open_app(claims: Optional[dict] = None, **query) -> AppTest:
    """app.py at its default page; with `claims`, login is configured and the visitor is that `st.user`."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    if claims is not None:
        at.secrets.update(AUTH)
        at.user = claims
    for key, value in query.items():
        at.query_params[key] = value
    return at.run()


@pytest.fixture
def server_address(request):
    """Streamlit's server.address for one test, as `--server.address` sets it (None: every interface);
    `st.set_option` refuses server options, the command line sets them through `streamlit.config`."""
    before = st.get_option("server.address")
    config.set_option("server.address", request.param)
    yield request.param
    config.set_option("server.address", before)


# -- where `make serve` may listen ------------------------------------------------------------------------


def test_without_login_only_a_single_user_may_serve_and_only_on_loopback(monkeypatch):
    with pytest.raises(ConfigError, match=r"No login is configured.*\[auth\] section in .streamlit/secrets.toml"
                                          r".*CZB_SINGLE_USER=1"):
        serve_address(False, None)
    assert serve_address(True, None) == "0.0.0.0" and serve_address(True, "10.0.0.5") == "10.0.0.5"

    monkeypatch.setenv("CZB_SINGLE_USER", "1")
    assert serve_address(False, None) == "127.0.0.1" and serve_address(False, "::1") == "::1"
    for host in ("0.0.0.0", "10.0.0.5", "czb.lab.example.org"):
        with pytest.raises(ConfigError, match=f"CZB_HOST={host} lets other machines reach it.*In a container"):
            serve_address(False, host)
    with pytest.raises(ConfigError, match="both set"):
        serve_address(True, None)

    monkeypatch.setenv("CZB_SINGLE_USER", "yes")
    with pytest.raises(ConfigError, match="CZB_SINGLE_USER must be 1 or 0, not 'yes'"):
        serve_address(False, None)


def test_loopback_addresses():
    assert all(map(is_loopback, ("127.0.0.1", "127.0.1.1", "::1", "[::1]", "localhost", "LOCALHOST ")))
    assert not any(map(is_loopback, (None, "", "0.0.0.0", "::", "192.168.1.4", "czb.lab.example.org")))


def test_the_app_refuses_a_single_user_that_other_machines_reach(monkeypatch):
    assert serving_problem(False, None) is None  # `make run`: one local user, as before
    monkeypatch.setenv("CZB_SINGLE_USER", "1")
    assert serving_problem(False, "127.0.0.1") is None
    assert "listens on every interface" in serving_problem(False, None)
    assert "listens on 0.0.0.0" in serving_problem(False, "0.0.0.0")
    assert "both set" in serving_problem(True, "127.0.0.1")


def make_serve(tmp_path: Path, **env: str) -> tuple[subprocess.Popen, int]:
    """`make serve` as an admin starts it, in its own process group, and its port: the venv is taken as it
    is (not rebuilt), HOME is empty (no ~/.streamlit/secrets.toml), the ports are free ones."""
    if (ROOT / ".streamlit" / "secrets.toml").exists():
        pytest.skip("this checkout has a .streamlit/secrets.toml: login is configured here")
    home = tmp_path / "home"
    home.mkdir(parents=True)
    port = free_port()
    environment = {key: value for key, value in os.environ.items() if key != "CZB_HOST"}
    environment.update(HOME=str(home), CZB_HOME=str(tmp_path / "czb"), CZB_PORT=str(port),
                       CZB_HEALTH_PORT=str(free_port()), **env)
    process = subprocess.Popen(["make", "-s", "-o", ".venv/.installed", "serve"], cwd=ROOT, env=environment,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    return process, port


def stop(process: subprocess.Popen) -> str:
    """End `make serve` and what it started (its process group, if still there); its stderr."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    return process.communicate(timeout=60)[1]


def refusal(process: subprocess.Popen) -> str:
    """The stderr of a `make serve` expected to end on its own, having started nothing (a Streamlit that
    started would not end: it is stopped after a while and the test fails)."""
    try:
        process.wait(timeout=120)
    finally:
        stderr = stop(process)
    assert process.returncode not in (0, -signal.SIGTERM), stderr
    return stderr


def test_make_serve_refuses_to_start_without_login_or_for_a_single_user_on_every_interface(tmp_path):
    stderr = refusal(make_serve(tmp_path / "bare")[0])
    assert "czb: not starting: No login is configured" in stderr and "CZB_SINGLE_USER=1" in stderr
    stderr = refusal(make_serve(tmp_path / "container", CZB_SINGLE_USER="1", CZB_HOST="0.0.0.0")[0])
    assert "CZB_HOST=0.0.0.0 lets other machines reach it" in stderr


def test_make_serve_for_a_single_user_listens_on_loopback_only(tmp_path):
    process, port = make_serve(tmp_path, CZB_SINGLE_USER="1")
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process, timeout=180)
        listening = {c.laddr.ip for c in psutil.net_connections("inet")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
    finally:
        stderr = stop(process)
    assert listening == {"127.0.0.1"}
    assert f"czb: {SINGLE_USER_NOTE}; listening on 127.0.0.1" in stderr


# -- what the sidebar says, and what the app refuses --------------------------------------------------------


@pytest.mark.usefixtures("fresh_manager")
@pytest.mark.parametrize("server_address", ["127.0.0.1"], indirect=True)
def test_a_single_user_on_this_machine_is_told_so(server_address, monkeypatch):
    monkeypatch.setenv("CZB_SINGLE_USER", "1")
    at = open_app()
    assert not at.exception and not at.error
    assert [c.value for c in at.sidebar.caption] == [SINGLE_USER_NOTE]
    assert at.radio  # the Dataset page ran


@pytest.mark.usefixtures("fresh_manager")
@pytest.mark.parametrize("server_address", [None, "0.0.0.0"], indirect=True)
def test_a_single_user_that_other_machines_reach_gets_no_page(server_address, monkeypatch):
    monkeypatch.setenv("CZB_SINGLE_USER", "1")
    at = open_app()
    assert not at.exception
    assert [e.value for e in at.error] == [serving_problem(False, server_address)]
    assert not at.radio and not at.sidebar.children


@pytest.mark.usefixtures("fresh_manager")
def test_without_login_the_sidebar_says_whoever_opens_the_address_shares_the_datasets():
    at = open_app()
    assert [c.value for c in at.sidebar.caption] == [NO_LOGIN_NOTE]
    assert at.radio


# -- email_verified ----------------------------------------------------------------------------------------


def test_only_an_email_the_provider_calls_unverified_is_refused():
    for verified in (False, "false", "False "):
        assert "has not verified alice@lab.org" in login_refusal({"email": "alice@lab.org", "email_verified": verified})
    for verified in (True, "true", None):
        assert login_refusal({"email": "alice@lab.org", "email_verified": verified}) is None
    assert login_refusal({"email": "alice@lab.org"}) is None


@pytest.mark.usefixtures("fresh_manager")
@pytest.mark.parametrize("verified", [False, "false"])
def test_a_login_with_an_unverified_email_is_refused(verified):
    claims = {"is_logged_in": True, "email": "alice@lab.org", "sub": "sub-alice", "email_verified": verified}
    at = open_app(claims)
    assert not at.exception
    assert [e.value for e in at.error] == [login_refusal(claims)]
    assert not at.radio and not at.sidebar.caption  # no page ran, nobody is named
    assert [b.label for b in at.sidebar.button] == ["Log out"]


@pytest.mark.usefixtures("fresh_manager")
@pytest.mark.parametrize("verified", [True, None])
def test_a_login_with_a_verified_email_or_none_said_is_let_in(verified):
    claims = {"is_logged_in": True, "email": "alice@lab.org", "sub": "sub-alice"}
    at = open_app(claims if verified is None else {**claims, "email_verified": verified})
    assert not at.exception and not at.error
    assert [c.value for c in at.sidebar.caption] == ["Logged in as **alice@lab.org**"]
    assert at.radio


# -- share links -------------------------------------------------------------------------------------------


def result_with_server_details(params: dict):
    """A run whose record names the dataset's server path, a local weights folder and the owner's e-mail."""
    result = fake_result(params)
    result.record.update({
        "input": {"path": SERVER_PATH, "sha256": "ab" * 32, "n_obs": 6},
        "weights_source": WEIGHTS_URI,
        "weights": {"files": [{"path": "model.pt", "size": 1}], "imported_from": "/home/alice/weights"},
        "notes": [f"read {SERVER_PATH} in 1 s", "asked for by alice@lab.org"],
    })
    return result


@pytest.fixture
def manager(fake_manager, monkeypatch):  # noqa: F811  (the manager `done_job` runs its job on)
    monkeypatch.setattr(test_jobs, "fake_result", result_with_server_details)
    return fake_manager


@pytest.fixture
def share_link(manager, done_job, monkeypatch):  # noqa: F811
    st.cache_resource.clear()
    monkeypatch.setattr("pages.common.JobManager", lambda: manager)
    yield Shares(manager.store).share_job(done_job.id, "alice")
    st.cache_resource.clear()


def assert_public(text: str) -> None:
    assert "alice" not in text and "/srv/" not in text and "/home/" not in text and '"owner"' not in text


@pytest.mark.parametrize("claims", [None, {"is_logged_in": True, "email": "bob@lab.org"}])
def test_a_share_link_shows_the_run_and_nothing_of_the_server(share_link, claims):
    at = open_app(claims, share=share_link)
    assert not at.exception, at.exception
    assert at.title[0].value == "Shared result" and not at.error
    assert not at.sidebar.children  # no navigation, no account panel, no datasets of anyone
    (shown,) = [json.loads(j.value) for j in at.json]
    assert shown["weights_source"] == WEIGHTS_URI and shown["notes"] == [
        "read <server path> in 1 s", "asked for by <e-mail>"]
    assert_public(json.dumps(shown))
    assert_public(" ".join(m.value for m in [*at.markdown, *at.caption]))


def test_the_shared_downloads_carry_the_public_record(done_job, tmp_path):  # noqa: F811
    artifact_dir = Path(done_job.artifact_dir)
    stored = ad.read_h5ad(artifact_dir / artifacts.EMBEDDING_H5AD)
    assert stored.uns["czb_run"]["job"]["owner"] == "alice" and SERVER_PATH in str(stored.uns["czb_run"])

    assert_public(artifacts.record_json(public_record(artifacts.read_record(artifact_dir))).decode())
    (tmp_path / "shared.h5ad").write_bytes(public_result(artifact_dir))
    shared = ad.read_h5ad(tmp_path / "shared.h5ad")
    assert_public(json.dumps(public_record(shared.uns["czb_run"])))
    assert "owner" not in shared.uns["czb_run"]["job"] and "path" not in shared.uns["czb_run"]["input"]
    assert list(shared.uns["czb_run"]["notes"]) == ["read <server path> in 1 s", "asked for by <e-mail>"]
    assert shared.uns["czb_run"]["weights_source"] == WEIGHTS_URI
    assert np.array_equal(shared.obsm["X_pca"], stored.obsm["X_pca"]) and shared.obs.equals(stored.obs)


def test_the_public_record_keeps_how_the_run_was_made_and_drops_who_and_where():
    record = {
        "model": "scgpt", "params": {"batch_size": 64}, "job": {"id": "3f2a", "owner": "carol"},
        "input": {"path": "/data/x.h5ad", "sha256": "ab"}, "weights_source": "s3://bucket/scgpt/best_model.pt",
        "weights": {"files": [{"path": "files/best_model.pt"}], "source": "file:///srv/weights/scgpt"},
        "owner_email": "carol@lab.org", "notes": np.array(["cached in ~/weights (hit)", "10x 3' v3 / 2 batches"]),
        "validation": [{"message": "gene ids in var['feature_id'] (not /tmp/x)"}],
    }
    assert public_record(record) == {
        "model": "scgpt", "params": {"batch_size": 64}, "job": {"id": "3f2a"}, "input": {"sha256": "ab"},
        "weights_source": "s3://bucket/scgpt/best_model.pt", "weights": {"files": [{"path": "files/best_model.pt"}]},
        "notes": ["cached in <server path> (hit)", "10x 3' v3 / 2 batches"],
        "validation": [{"message": "gene ids in var['feature_id'] (not <server path>)"}],
    }

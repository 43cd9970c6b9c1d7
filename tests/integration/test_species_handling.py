"""Species and gene ids end to end: a mouse dataset is called mouse, human-only models refuse it with the
species named, fixes stay within the dataset's species, the organism is set per dataset, and verdicts say
what is not known yet."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from czb_core.cli import main
from czb_core.io.header import read_header
from czb_core.models.compatibility import check_variant, compatibility_matrix
from czb_core.models.registry import get_model
from czb_core.schema.gene_references import gene_table
from czb_core.service.fixes import map_symbols_to_ids, map_to_orthologs
from czb_core.service.workspace import Workspace
from czb_core.types import Organism
from tests.helpers.apptest import fresh_manager, page  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def mouse_upper(small_adata) -> ad.AnnData:
    """A mouse dataset exported with upper-cased symbols (a common export), raw counts."""
    table = gene_table(Organism.MOUSE)
    table = table[(table["biotype"] == "protein_coding") & (table["gene_name"] != "")]
    symbols = table["gene_name"].str.upper().drop_duplicates().sample(2000, random_state=0).to_numpy()
    rng = np.random.default_rng(0)
    x = sp.random(200, len(symbols), density=0.1, format="csr", random_state=0, dtype=np.float32)
    x.data = rng.integers(1, 20, size=x.nnz).astype(np.float32)
    obs = pd.DataFrame({"cell_type": rng.choice(["AT1", "AT2", "club"], 200)}, index=[f"c{i}" for i in range(200)])
    return ad.AnnData(x, obs=obs, var=pd.DataFrame(index=symbols))


def test_upper_case_mouse_symbols_are_mouse_and_human_only_models_refuse_them(mouse_upper, write_h5ad):
    header = read_header(write_h5ad(mouse_upper))
    report = check_variant(header, get_model("geneformer"))
    assert report.organism is Organism.MOUSE
    assert "mouse:" in report.facts["gene ids"] and "names only mouse has" in report.facts["gene ids"]
    (refusal,) = [p for p in report.errors if p.code == "organism_unsupported"]
    assert "this dataset is mus_musculus" in refusal.message and "labelled cross-species" in refusal.fix
    assert not any("human" in p.fix.lower() and "map" in p.fix.lower() and p.code == "symbols_not_ids"
                   for p in report.problems if "human Ensembl" in p.fix)
    verdicts = {v.model: v for v in compatibility_matrix(header)}
    assert verdicts["geneformer"].runnable == [] and verdicts["geneformer"].summary.startswith("0 of 5")
    assert verdicts["pca"].runnable == ["default", "ppca", "ppca_linear_vae"]


def test_symbols_map_within_the_datasets_species_and_orthologs_only_when_asked(mouse_upper):
    mapped, report = map_symbols_to_ids(mouse_upper, Organism.MOUSE)
    assert all(name.startswith("ENSMUSG") for name in mapped.var_names)
    assert report.n_unresolved < 0.05 * mouse_upper.n_vars and "vM" in report.source
    human, orthologs = map_to_orthologs(mouse_upper, Organism.MOUSE, Organism.HUMAN)
    assert all(name.startswith("ENSG") for name in human.var_names)
    assert 0.3 < orthologs.share_kept < 1.0 and "orthologs" in orthologs.summary()


def test_the_organism_is_set_per_dataset(small_h5ad, write_h5ad, mouse_upper):
    workspace = Workspace()
    human = workspace.add_file(small_h5ad)
    mouse = workspace.add_file(write_h5ad(mouse_upper))
    workspace.set_organism(human.id, "mus_musculus")
    assert workspace.get(human.id).organism == "mus_musculus" and workspace.get(mouse.id).organism is None


def test_verdicts_say_what_is_unknown_until_the_weights_are_downloaded(small_h5ad, capsys):
    report = check_variant(read_header(small_h5ad), get_model("geneformer"))
    assert report.verdict == "can run once its weights (1,259 MB) are downloaded"
    assert report.facts["vocabulary"] == "unknown until the weights are downloaded"
    assert report.status("vocabulary") == "not run"  # never "ok" before it could be checked
    code = main(["validate", str(small_h5ad), "--model", "scvi", "--variant", "homo_sapiens",
                 "--param", "batch_key=unassigned"])
    out = capsys.readouterr().out
    assert code == 0 and "can run once its weights" in out and "checked once the reference weights" in out


@pytest.mark.usefixtures("fresh_manager")
def test_run_page_blocks_a_human_only_model_for_mouse_data(write_h5ad, mouse_upper):
    record = Workspace().add_file(write_h5ad(mouse_upper))
    at = page("run", dataset=record.id)
    next(s for s in at.selectbox if s.label == "Model").set_value("geneformer").run()
    assert not at.exception
    assert next(b for b in at.button if b.label == "Run").disabled
    assert any("this dataset is mus_musculus" in e.value for e in at.error)

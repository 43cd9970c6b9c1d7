"""The Results page's view of perturbation predictions (scGenePT runs): the predicted change per gene against
the control mean, the genes it moves most, and, when the dataset holds cells of that perturbation, the
observed change beside the predicted one with the metrics of the model and both baselines. The reading is
`czb_core.tasks.perturbation.evaluate_prediction_run`, the same as `czb benchmark --task perturbation`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import anndata as ad
import streamlit as st

from czb_core.errors import CzbError
from czb_core.io.exports import download_name
from czb_core.service.jobs import artifacts
from czb_core.tasks.perturbation import PredictionEvaluation, evaluate_prediction_run
from czb_core.types import Organism
from czb_core.viz.perturbation import effect_figure, observed_vs_predicted_figure

N_TOP = 20


@st.cache_data(max_entries=8, show_spinner="Reading the prediction against the dataset…")
def evaluation_of(artifact_dir: str, data_path: str, organism: Optional[str]) -> PredictionEvaluation:
    """Cached per run: a finished run's files and its dataset never change."""
    prediction = ad.read_h5ad(Path(artifact_dir) / artifacts.EMBEDDING_H5AD)
    return evaluate_prediction_run(prediction, data_path, organism=Organism.parse(organism) if organism else None)


def prediction_view(predictions: list, labels: dict, stems: dict, data_path: str) -> None:
    """One chosen prediction run of `predictions` (finished jobs), with its downloads."""
    st.subheader("Perturbation predictions")
    by_id = {job.id: job for job in predictions}
    job_id = st.selectbox("Prediction", list(by_id), format_func=labels.get, key="prediction_run")
    job = by_id[job_id]
    try:
        evaluation = evaluation_of(str(job.artifact_dir), data_path, job.spec.organism)
    except CzbError as exc:
        st.error(str(exc))
        return
    st.plotly_chart(effect_figure(evaluation), width="stretch", key="prediction_effect")
    up, down = evaluation.effect.top_genes(N_TOP)
    c1, c2 = st.columns(2)
    c1.markdown(f"**Top {N_TOP} predicted increases**")
    c1.dataframe(up.style.format(precision=4), hide_index=True, width="stretch")
    c2.markdown(f"**Top {N_TOP} predicted decreases**")
    c2.dataframe(down.style.format(precision=4), hide_index=True, width="stretch")
    scatter = observed_vs_predicted_figure(evaluation)
    if scatter is not None:
        st.plotly_chart(scatter, width="stretch", key="prediction_observed")
        st.markdown("**Metrics against the observed cells**, beside the no-change and mean-effect baselines")
        st.dataframe(evaluation.metrics.style.format(precision=4, na_rep="—", subset=evaluation.metrics.columns[2:]),
                     hide_index=True, width="stretch")
    for note in evaluation.notes:
        st.caption(f"Note: {note}")
    table = evaluation.effect.top_genes(len(evaluation.effect.genes_g))[0]
    d1, d2, d3 = st.columns(3)
    name, mime = artifacts.FORMATS["prediction (h5ad)"]
    d1.download_button("Prediction (h5ad)", lambda: (Path(job.artifact_dir) / artifacts.EMBEDDING_H5AD).read_bytes(),
                       download_name(stems[job_id], name), mime, key="prediction_h5ad")
    d2.download_button("Predicted change per gene (CSV)", table.to_csv(index=False),
                       f"{stems[job_id]}.predicted_change.csv", "text/csv", key="prediction_csv")
    d3.download_button("Run record (JSON)", lambda: (Path(job.artifact_dir) / artifacts.RECORD_JSON).read_bytes(),
                       f"{stems[job_id]}.run_record.json", "application/json", key="prediction_record")

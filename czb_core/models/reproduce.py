"""The commands that make a run again: `czb run` with the run record's model, variant, organism, device,
weights and every parameter that is not its variant's default, and `czb benchmark` with the metrics options;
`reproduce_script` puts them in a shell script that first checks the input by its sha256 (a download of
the Results page).
"""

from __future__ import annotations

import shlex
from typing import Any, Optional

from czb_core.io.exports import param_text
from czb_core.models.registry import get_model

DEFAULT_METRICS_SEED = 42  # `czb benchmark --seed` default


def changed_params(record: dict) -> dict[str, Any]:
    """The run's parameters that differ from its variant's defaults (read back from a run record,
    where lists came back from JSON as lists)."""
    config = get_model(record["model"])
    schema = config.load_implementation().param_schema(config.variant(record["variant"]))
    given = {k: v for k, v in (record.get("params") or {}).items() if k in schema and v is not None}
    return schema.changed(schema.resolve(given))


def _configured_weights(record: dict) -> Optional[str]:
    """The weights source the variant names by itself (as `czb models` shows it)."""
    variant = get_model(record["model"]).variant(record["variant"])
    return variant.main_weights_uri


def recorded_organism(record: dict) -> Optional[str]:
    """`homo_sapiens` from the record's `homo_sapiens (detected from the gene names)`."""
    text = str(record.get("organism") or "").strip()
    return text.split()[0] if text else None


def run_command(record: dict, data_file: str, out: str) -> list[str]:
    """`czb run` argv that embeds `data_file` as the record says: model, variant, organism, device,
    weights (when not the variant's own), seed, batch size and every other non-default parameter."""
    argv = ["czb", "run", data_file, "--model", record["model"], "--variant", record["variant"]]
    organism = recorded_organism(record)
    if organism:
        argv += ["--organism", organism]
    device = str(record.get("device") or "")
    if device:
        argv += ["--device", "cuda" if device.startswith("cuda") else "cpu"]
    weights = record.get("weights_source")
    if weights and weights != _configured_weights(record):
        argv += ["--weights", str(weights)]
    params = changed_params(record)
    if "seed" in params:
        argv += ["--seed", str(params.pop("seed"))]
    if "batch_size" in params:
        argv += ["--batch-size", str(params.pop("batch_size"))]
    for key, value in params.items():
        argv += ["--param", f"{key}={param_text(value)}"]
    return argv + ["--out", out]


def benchmark_command(record: dict, options: dict, h5ad: str, out: str) -> list[str]:
    """`czb benchmark` argv that scores the embedding in `h5ad` with a metrics document's `options`."""
    argv = ["czb", "benchmark", h5ad, "--embedding", str(record["obsm_key"]), "--label-key", str(options["label_key"])]
    if options.get("batch_key"):
        argv += ["--batch-key", str(options["batch_key"])]
    if options.get("split_key"):
        argv += ["--split-key", str(options["split_key"]), "--train", str(options["train"]),
                 "--test", str(options["test"])]
    if options.get("tasks"):
        argv += ["--tasks", *options["tasks"]]
    if options.get("max_cells"):
        argv += ["--max-cells", str(options["max_cells"])]
    organism = recorded_organism(record)
    if organism:
        argv += ["--organism", organism]
    return argv + ["--seed", str(options.get("seed", DEFAULT_METRICS_SEED)), "--out", out]


def reproduce_script(record: dict, data_file: str, stem: str, options: Optional[dict] = None) -> str:
    """A shell script that checks the input by its sha256, embeds it as this run did and (given the
    metrics document's options) scores it: the commands a methods section can cite."""
    sha = record["input"]["sha256"]
    lines = [
        "#!/bin/sh",
        f"# Recreates {record['model']} / {record['variant']} on {data_file} "
        f"(czb {record.get('versions', {}).get('czb_core', '')})",
        "set -e",
        f"echo {shlex.quote(f'{sha}  {data_file}')} | sha256sum --check -",
        shlex.join(run_command(record, data_file, f"{stem}.h5ad")),
    ]
    if options:
        lines.append(shlex.join(benchmark_command(record, options, f"{stem}.h5ad", f"{stem}.metrics.json")))
    return "\n".join(lines) + "\n"

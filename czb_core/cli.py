"""`czb`: validate datasets, run models and benchmark embeddings from a terminal.

Exit codes: 0 success; 1 the dataset fails a blocking check; 2 unusable input or configuration;
3 weights could not be had; 4 an unexpected failure (message printed; `CZB_DEBUG=1` shows the
traceback); 130 cancelled.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Optional, Sequence

from czb_core.errors import Cancelled, ConfigError, DatasetValidationError, InputError, WeightsError
from czb_core.types import Organism, Output

EXIT_CODES = ((DatasetValidationError, 1), (InputError, 2), (ConfigError, 2), (WeightsError, 3), (Cancelled, 130))


def _organism(value: Optional[str]) -> Optional[Organism]:
    try:
        return Organism.parse(value) if value else None
    except ValueError as exc:
        raise ConfigError(f"--organism: {exc}") from None


def _check_out(out: str) -> None:
    """Refuse an output path that cannot be written before the run, not after it."""
    path = Path(out)
    if path.is_dir():
        raise ConfigError(f"--out {out} is a directory; name the file to write, e.g. {path / 'out.h5ad'}")
    if path.suffix.lower() != ".h5ad":
        raise ConfigError(f"--out {out}: the output is an AnnData file; give it the suffix .h5ad")
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ConfigError(f"--out {out}: {parent} is a file, not a folder")


def _params(pairs: Sequence[str]) -> dict[str, str]:
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param expects KEY=VALUE, got {pair!r}")
        params[key.strip().replace("-", "_")] = value
    return params


def _add_run_arguments(p: argparse.ArgumentParser, *model_flag: str, **model_options) -> None:
    """The arguments every command that runs a model takes: the data, the model (`model_options`: its
    default or that it is required), the variant, organism, device, batch size, parameters and weights."""
    p.add_argument("data")
    p.add_argument(*model_flag, **model_options)
    p.add_argument("--variant")
    p.add_argument("--organism")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default=None)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="model parameter (repeatable)")
    p.add_argument("--weights", help="S3 URI, https URL or local directory to use instead of the variant's model "
                                      "weights (its other parts, e.g. Geneformer's dictionaries, stay the config's)")


def cmd_models(args) -> int:
    from czb_core.models.registry import discover_models
    from czb_core.models.variant_weights import VariantWeights
    from czb_core.models.weights import WeightsCache

    cache = WeightsCache()
    rows = []
    for name, cfg in discover_models().items():
        for vname, variant in cfg.variants.items():
            weights = VariantWeights(cfg, variant, cache)
            rows.append({"model": name, "display_name": cfg.display_name, "variant": vname,
                         "default": vname == cfg.default_variant,
                         "weights": variant.main_weights_uri or variant.weights_from or None,
                         "weights_status": weights.status(),
                         "organisms": cfg.card.organisms, "embedding_dim": cfg.card.embedding_dim})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            star = "*" if r["default"] else " "
            print(f"{r['model']:18s} {star}{r['variant']:24s} weights: {r['weights_status']:19s} "
                  f"{r['display_name']}")
    return 0


def cmd_validate(args) -> int:
    from czb_core.io.header import read_header
    from czb_core.models.compatibility import check_variant
    from czb_core.models.registry import get_model

    report = check_variant(read_header(args.data), get_model(args.model), args.variant, _organism(args.organism),
                           _params(args.param))
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format_text())
    return 0 if report.ok else 1


def cmd_params(args) -> int:
    """A model's parameters, from its schema: name, type, default (for the variant), allowed values, help."""
    from czb_core.models.registry import get_model

    config = get_model(args.model)
    variant = config.variant(args.variant)
    schema = config.load_implementation().param_schema(variant)
    rows = [{"name": p.name, "type": p.kind, "default": schema.default(p.name), "choices": p.choices,
             "minimum": p.minimum, "help": p.help} for p in schema]
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    print(f"{config.display_name} / {variant.name} (set with --param NAME=VALUE)")
    for r in rows:
        allowed = f" one of {', '.join(map(str, r['choices']))};" if r["choices"] else ""
        print(f"  {r['name']:20s} {r['type']:7s} default {r['default']!r};{allowed} {r['help']}")
    return 0


def _run_and_write(args, params: dict):
    """Run the model with progress on stderr, report the validation problems, write `--out`."""
    from czb_core.models.pipeline import embed_file, extras_path, write_extras, write_run_h5ad
    from czb_core.progress import StderrProgress

    _check_out(args.out)
    if args.batch_size is not None:
        params["batch_size"] = args.batch_size
    result = embed_file(
        args.data, args.model, args.variant, organism=_organism(args.organism), params=params,
        weights=args.weights, device=args.device, progress=StderrProgress(),
        stream=True if getattr(args, "stream", False) else None, ray_address=getattr(args, "ray", None),
    )
    for problem in result.report.problems:
        print(f"[czb] {problem.severity.value}: {problem.message}", file=sys.stderr)
    out = write_run_h5ad(result, args.out)
    extras = write_extras(result, extras_path(out))
    if extras is not None:
        print(f"wrote {extras}: {', '.join(f'{k} {v.shape}' for k, v in result.extras.items())}", file=sys.stderr)
    return result, out


def cmd_run(args) -> int:
    params = _params(args.param)
    if args.seed is not None:
        params["seed"] = args.seed
    result, out = _run_and_write(args, params)
    if result.emb_nd is None:
        print(f"wrote {out}: a prediction of {result.pred_ng.shape[0]:,} rows x {result.pred_ng.shape[1]:,} genes in X")
        return 0
    print(f"wrote {out}: {result.emb_nd.shape[0]:,} cells x {result.emb_nd.shape[1]} dims in "
          f"obsm['{result.obsm_key}'] ({result.record['wall_s']:.1f} s, peak {result.record['peak_rss_mb']:.0f} MB)")
    return 0


def cmd_perturb(args) -> int:
    """In-silico perturbation: embed perturbed cells; `obs['perturbation_shift']` = cosine shift from the originals."""
    if not (args.delete or args.activate or args.map):
        raise ConfigError("name genes to perturb with --delete, --activate and/or --map")
    params = _params(args.param)
    for key, genes in (("feature_deletion", args.delete), ("feature_activation", args.activate),
                       ("feature_map", args.map)):
        if genes:
            params[key] = ",".join(genes)  # the model parses comma-separated text (see its --help)
    result, out = _run_and_write(args, params)
    shift = result.obs["perturbation_shift"]
    print(f"wrote {out}: {len(shift):,} perturbed cells in obsm['{result.obsm_key}'], cosine shift in "
          f"obs['perturbation_shift'] (mean {shift.mean():.4g}, max {shift.max():.4g}; "
          f"{int((shift > 0).sum()):,} cells changed)")
    return 0


def cmd_perturb_predict(args) -> int:
    """scGenePT: the predicted expression of sampled control cells under a perturbation, and its change."""
    params = _params(args.param)
    given = dict(perturbation=args.perturbation, control_key=args.control_key, control_value=args.control_value,
                 n_cells=args.n_cells, seed=args.seed)
    params.update({key: value for key, value in given.items() if value is not None})  # else the model's defaults
    args.model = args.model or _prediction_model()
    result, out = _run_and_write(args, params)
    print(f"wrote {out}: predicted expression of {result.pred_ng.shape[0]:,} sampled control cells x "
          f"{result.pred_ng.shape[1]:,} genes under {args.perturbation}")
    for key, value in result.record.get("facts", {}).items():
        print(f"  {key}: {value}")
    return 0


def _prediction_model() -> str:
    """The one registered model whose output is a prediction (`--model` names one when there are several)."""
    from czb_core.models.description import describe
    from czb_core.models.registry import discover_models

    found = [name for name, config in discover_models().items() if describe(config).output == Output.PREDICTION]
    if len(found) != 1:
        raise ConfigError(f"name the model with --model (prediction models: {', '.join(found) or 'none'})")
    return found[0]


def _benchmark_baseline(args, adata):
    """The PCA baseline of the file, or of the original input named in its run record (slim h5ad)."""
    from czb_core.service.baseline import baseline_embedding

    if adata.n_vars > 0:
        return baseline_embedding(args.data, organism=_organism(args.organism))
    source = (adata.uns.get("czb_run") or {}).get("input", {})
    original = Path(str(source.get("path", "")))
    if original.is_file():
        return baseline_embedding(original, str(source.get("sha256") or "") or None, _organism(args.organism))
    raise InputError(
        f"{args.data} holds no expression matrix for the PCA baseline and its run record names no readable "
        "original file; run on the original dataset, or pass --no-baseline"
    )


def cmd_benchmark(args) -> int:
    """Score an embedding in a file (beside the PCA baseline), with progress and every warning on stderr."""
    import numpy as np
    import pandas as pd

    if args.task == "perturbation":
        return _benchmark_perturbation(args)
    missing = [flag for flag, value in (("--embedding", args.embedding), ("--label-key", args.label_key)) if not value]
    if missing:
        raise ConfigError(f"the embedding task needs {' and '.join(missing)}")

    from czb_core.io.reading import read_anndata
    from czb_core.progress import StderrProgress
    from czb_core.tasks import NO_BATCH, MetricOptions
    from czb_core.tasks.scoring import score_embedding

    adata = read_anndata(args.data) if Path(args.data).suffix == ".h5" else _read_any_h5ad(args.data)
    if args.embedding not in adata.obsm:
        raise InputError(f"obsm has no {args.embedding!r}; available: {', '.join(adata.obsm) or 'none'}")
    emb_nd = np.asarray(adata.obsm[args.embedding])
    record = adata.uns.get("czb_run") or {}
    model = {"type": record.get("model_type", args.embedding), "variant": record.get("variant", ""),
             "name_display": record.get("display_name", args.embedding)}
    dataset = {"name": Path(args.data).name, "organism": record.get("organism", "")}
    options = MetricOptions(label_key=args.label_key, batch_key=args.batch_key or NO_BATCH, split_key=args.split_key,
                            train=args.train, test=args.test, tasks=args.tasks, seed=args.seed,
                            max_cells=args.max_cells)
    baseline = None if args.no_baseline else (lambda: _benchmark_baseline(args, adata))
    try:
        document = score_embedding(emb_nd, adata.obs, options, baseline, model=model, dataset=dataset,
                                   progress=StderrProgress())
    except ValueError as exc:
        raise InputError(str(exc)) from None
    for warning in document["warnings"]:
        print(f"[czb] warning: {warning}", file=sys.stderr)
    if args.out:
        Path(args.out).write_text(json.dumps(document, indent=2, default=str))
    if args.json:
        print(json.dumps(document, indent=2, default=str))
    else:
        if document["subsampled"]:
            print(f"metrics on a stratified subsample of {document['n_used']:,} of {document['n_total']:,} cells "
                  f"(seed {args.seed})")
        table = pd.DataFrame(document["table"])
        shown = table if document["baseline"] else table.drop(columns=["baseline", "delta", "better"])
        print(shown.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


def _benchmark_perturbation(args) -> int:
    """A scGenePT prediction against the dataset it was made from: the 0.10 metrics and the 0.15
    Spearman of the model and of the no-change and mean-effect baselines."""
    from czb_core.tasks.perturbation import evaluate_prediction_run

    if not args.prediction:
        raise ConfigError("--task perturbation needs --prediction (a `czb perturb-predict` output)")
    prediction = _read_any_h5ad(args.prediction)
    evaluation = evaluate_prediction_run(prediction, args.data, organism=_organism(args.organism),
                                         condition=args.condition, condition_key=args.condition_key,
                                         control_name=args.control_name)
    for note in evaluation.notes:
        print(f"[czb] note: {note}", file=sys.stderr)
    record = prediction.uns["czb_run"]
    document = {"condition": evaluation.condition, "metrics": evaluation.metrics.to_dict(orient="records"),
                "notes": evaluation.notes, "prediction": record.get("input", {}), "model": record.get("model"),
                "variant": record.get("variant")}
    if args.out:
        Path(args.out).write_text(json.dumps(document, indent=2, default=str))
    if args.json:
        print(json.dumps(document, indent=2, default=str))
    elif not evaluation.metrics.empty:
        print(evaluation.metrics.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


def _read_any_h5ad(path: str):
    """An h5ad, also a slim one without genes (our run outputs), which `read_anndata` would refuse."""
    import anndata as ad

    from czb_core.io.reading import check_readable

    try:
        return ad.read_h5ad(check_readable(path))
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{Path(path).name}: cannot be read as AnnData ({exc})") from exc


def cmd_demo(args) -> int:
    from czb_core.io.synthetic import write_demo

    path = write_demo(args.out, n_cells=args.cells, n_genes=args.genes, seed=args.seed)
    print(f"wrote {path}")
    return 0


def cmd_warmup(args) -> int:
    from czb_core.viz.warmup import warm_up

    print(f"UMAP code compiled and cached in {warm_up():.1f} s", file=sys.stderr)
    return 0


def cmd_weights_list(args) -> int:
    from czb_core.models.weights_admin import list_weights

    entries = list_weights(look_up_sizes=not args.no_sizes)
    if args.json:
        print(json.dumps([e.to_dict() for e in entries], indent=2))
        return 0
    for e in entries:
        state = "cached" if e.cached else ("import only" if e.weights_from else "not cached")
        print(f"{e.model:16s} {e.variant:36s} {e.role:13s} {state:11s} {e.size_text:>22s}  "
              f"{(e.sha256 or '-')[:16]:16s}  {e.uri}")
    return 0


def cmd_weights_fetch(args) -> int:
    from czb_core.models.weights_admin import fetch_weights
    from czb_core.progress import StderrProgress

    for role, folder in fetch_weights(args.model, args.variant, progress=StderrProgress()).items():
        print(f"{role}: {folder}")
    return 0


def cmd_weights_import(args) -> int:
    from czb_core.models.weights_admin import import_weights
    from czb_core.progress import StderrProgress

    # CZB_DATA_ROOTS limits what the web app may read on a user's behalf; a shell user reads the files anyway
    entries = import_weights(args.model, args.variant, args.source, role=args.role, progress=StderrProgress(),
                             allowed_roots=(Path("/"),))
    for e in entries:
        print(f"{e.model} / {e.variant} {e.role}: imported {e.n_files} files ({e.size_text}), sha256 {e.sha256}")
    return 0


def cmd_weights_verify(args) -> int:
    from czb_core.models.weights_admin import verify_weights

    problems = verify_weights(args.model, args.variant)
    for role, found in problems.items():
        print(f"{role}: " + ("intact" if not found else "; ".join(found)))
    return 1 if any(problems.values()) else 0


def add_weights_parser(sub) -> None:
    weights = sub.add_parser("weights", help="list, download, import and verify model weights (for admins)")
    actions = weights.add_subparsers(dest="weights_command", required=True)

    p = actions.add_parser("list", help="every variant's weights: source, size, cached or not, sha256")
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-sizes", action="store_true", help="do not ask the sources for the sizes of missing weights")
    p.set_defaults(func=cmd_weights_list)

    p = actions.add_parser("fetch", help="download a variant's weights into the cache now")
    p.add_argument("model")
    p.add_argument("variant", nargs="?")
    p.set_defaults(func=cmd_weights_fetch)

    p = actions.add_parser("import", help="copy weights from a folder or .tar.gz into the cache, checked first")
    p.add_argument("model")
    p.add_argument("variant")
    p.add_argument("source", help="a folder in the layout of the weights' source, or a .tar/.tar.gz of it")
    p.add_argument("--role", help="which part of a variant's weights this is (e.g. dictionaries)")
    p.set_defaults(func=cmd_weights_import)

    p = actions.add_parser("verify", help="re-read cached weights against their recorded sha256 (exit 1 if changed)")
    p.add_argument("model")
    p.add_argument("variant", nargs="?")
    p.set_defaults(func=cmd_weights_verify)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="czb", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list models, variants and whether their weights are cached")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("validate", help="check whether a dataset fits a model")
    p.add_argument("data", help=".h5ad or 10x .h5 file")
    p.add_argument("--model", required=True)
    p.add_argument("--variant")
    p.add_argument("--organism", help="e.g. homo_sapiens; detected from gene ids when omitted")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="model parameter (repeatable)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("params", help="list a model's parameters with their defaults")
    p.add_argument("model")
    p.add_argument("--variant")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("run", help="embed a dataset with a model and write a slim h5ad")
    _add_run_arguments(p, "--model", required=True)
    p.add_argument("--out", required=True, help="output .h5ad (obs, obsm['X_<model>'], uns['czb_run'])")
    p.add_argument("--seed", type=int)
    p.add_argument("--stream", action="store_true",
                   help="read the matrix in row blocks, never whole (models that can; default: only when it does "
                        "not fit in memory)")
    p.add_argument("--ray", metavar="auto|ADDRESS",
                   help="run as shards of rows on a Ray cluster, one worker per GPU (or CPU): auto finds the "
                        "cluster of this node, else HOST:PORT; input and workspace must be on a shared filesystem "
                        "(default: CZB_RAY_ADDRESS, else this process)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("perturb", help="in-silico perturbation: embed perturbed cells and their shift (Geneformer)")
    _add_run_arguments(p, "--model", default="geneformer")
    p.add_argument("--out", required=True, help="output .h5ad: perturbed embedding, obs['perturbation_shift']")
    p.add_argument("--delete", nargs="+", default=[], metavar="GENE", help="genes removed before ranking")
    p.add_argument("--activate", nargs="+", default=[], metavar="GENE", help="genes moved to the top, in order")
    p.add_argument("--map", nargs="+", default=[], metavar="GENE=TOKEN",
                   help="replace a gene's token (e.g. TP53=<mask>)")
    p.set_defaults(func=cmd_perturb)

    p = sub.add_parser("perturb-predict", help="predict a perturbation's effect on control cells (scGenePT)")
    _add_run_arguments(p, "--model", help="a model whose output is a prediction (default: the only one registered)")
    p.add_argument("--perturbation", required=True, metavar="GENE+ctrl|GENE1+GENE2")
    p.add_argument("--control-key", help="obs column marking the control cells (default: the model's)")
    p.add_argument("--control-value", help="the control cells' label in that column (default: the model's)")
    p.add_argument("--n-cells", type=int, help="control cells sampled, seeded (default: the model's)")
    p.add_argument("--seed", type=int)
    p.add_argument("--out", required=True, help="output .h5ad: X = predicted expression, obs['control_cell']")
    p.set_defaults(func=cmd_perturb_predict)

    p = sub.add_parser("benchmark", help="score an embedding already in an h5ad beside the PCA baseline, or "
                                          "(--task perturbation) a predicted perturbation beside two baselines")
    p.add_argument("data", help=".h5ad holding the embedding (and counts, or a czb run record, for the baseline); "
                                "for --task perturbation the dataset the prediction was made from")
    p.add_argument("--task", choices=("embedding", "perturbation"), default="embedding")
    p.add_argument("--embedding", metavar="OBSM_KEY", help="e.g. X_scvi (embedding task)")
    p.add_argument("--label-key", metavar="COL", help="cell-type column (embedding task)")
    p.add_argument("--prediction", metavar="H5AD", help="perturbation task: a `czb perturb-predict` output")
    p.add_argument("--condition-key", metavar="COL",
                   help="perturbation task: condition column (default: the prediction's control column)")
    p.add_argument("--control-name", help="perturbation task: the control cells' condition (default: the "
                                          "prediction's control label)")
    p.add_argument("--condition", help="perturbation task: the dataset's label of the predicted perturbation "
                                       "(default: the perturbation the prediction was made for)")
    p.add_argument("--batch-key", metavar="COL")
    p.add_argument("--split-key", metavar="COL", help="cross-split label transfer: the column of the groups")
    p.add_argument("--train", metavar="VALUE", help="the split value to train on")
    p.add_argument("--test", metavar="VALUE", help="the split value to test on")
    p.add_argument("--tasks", nargs="+", choices=("clustering", "embedding", "label_prediction",
                                                  "batch_integration", "cross_split"))
    p.add_argument("--organism")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--max-cells", type=int, help="subsample above this many cells (default CZB_METRICS_MAX_CELLS)")
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--json", action="store_true", help="print the cz-benchmarks-style results JSON")
    p.add_argument("--out", help="also write the JSON to this file")
    p.set_defaults(func=cmd_benchmark)

    p = sub.add_parser("demo", help="write the synthetic demo dataset")
    p.add_argument("--out", default="data/demo.h5ad")
    p.add_argument("--cells", type=int, default=3000)
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("warmup", help="compile the UMAP code once and cache it on disk (run at install)")
    p.set_defaults(func=cmd_warmup)

    add_weights_parser(sub)

    from czb_core.tokenizer_lab.cli import add_tokenizer_lab_parser

    add_tokenizer_lab_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:
        for kind, code in EXIT_CODES:
            if isinstance(exc, kind):
                print(f"czb: error: {exc}", file=sys.stderr)
                return code
        print(f"czb: unexpected error: {type(exc).__name__}: {exc}", file=sys.stderr)
        if os.environ.get("CZB_DEBUG") == "1":
            traceback.print_exc()
        else:
            print("czb: set CZB_DEBUG=1 to see the traceback", file=sys.stderr)
        return 4

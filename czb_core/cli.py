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
from czb_core.types import Organism

EXIT_CODES = ((DatasetValidationError, 1), (InputError, 2), (ConfigError, 2), (WeightsError, 3), (Cancelled, 130))


def _organism(value: Optional[str]) -> Optional[Organism]:
    return Organism.parse(value) if value else None


def _params(pairs: Sequence[str]) -> dict[str, str]:
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param expects KEY=VALUE, got {pair!r}")
        params[key.strip().replace("-", "_")] = value
    return params


def cmd_models(args) -> int:
    from czb_core.registry import discover_models
    from czb_core.weights import WeightsCache

    cache = WeightsCache()
    rows = []
    for name, cfg in discover_models().items():
        for vname, variant in cfg.variants.items():
            uri = variant.weights.get("model") or next(iter(variant.weights.values()), None)
            cached = "not needed" if uri is None else ("cached" if cache.is_cached(uri) else "not cached")
            rows.append({"model": name, "display_name": cfg.display_name, "variant": vname,
                         "default": vname == cfg.default_variant, "weights": uri, "weights_status": cached,
                         "organisms": cfg.card.organisms, "embedding_dim": cfg.card.embedding_dim})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            star = "*" if r["default"] else " "
            print(f"{r['model']:18s} {star}{r['variant']:24s} weights: {r['weights_status']:11s} "
                  f"{r['display_name']}")
    return 0


def cmd_validate(args) -> int:
    from czb_core.header import read_header
    from czb_core.registry import get_model

    header = read_header(args.data)
    config = get_model(args.model)
    validator = config.load_implementation()(config, args.variant)
    report = validator.check(header, _organism(args.organism))
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format_text())
    return 0 if report.ok else 1


def cmd_run(args) -> int:
    from czb_core.progress import StderrProgress
    from czb_core.run import run_model, write_run_h5ad

    params = _params(args.param)
    if args.batch_size is not None:
        params["batch_size"] = args.batch_size
    if args.seed is not None:
        params["seed"] = args.seed
    result = run_model(
        args.data, args.model, args.variant, organism=_organism(args.organism), params=params,
        weights=args.weights, device=args.device, progress=StderrProgress(),
    )
    for problem in result.report.problems:
        print(f"[czb] {problem.severity.value}: {problem.message}", file=sys.stderr)
    out = write_run_h5ad(result, args.out)
    print(f"wrote {out}: {result.emb_nd.shape[0]:,} cells x {result.emb_nd.shape[1]} dims in "
          f"obsm['{result.obsm_key}'] ({result.record['wall_s']:.1f} s, peak {result.record['peak_rss_mb']:.0f} MB)")
    return 0


def cmd_demo(args) -> int:
    from czb_core.synthetic import write_demo

    path = write_demo(args.out, n_cells=args.cells, n_genes=args.genes, seed=args.seed)
    print(f"wrote {path}")
    return 0


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
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("run", help="embed a dataset with a model and write a slim h5ad")
    p.add_argument("data")
    p.add_argument("--model", required=True)
    p.add_argument("--variant")
    p.add_argument("--organism")
    p.add_argument("--out", required=True, help="output .h5ad (obs, obsm['X_<model>'], uns['czb_run'])")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default=None)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="model parameter (repeatable)")
    p.add_argument("--weights", help="S3 URI, https URL or local directory to use instead of the variant's weights")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="write the synthetic demo dataset")
    p.add_argument("--out", default="data/demo.h5ad")
    p.add_argument("--cells", type=int, default=3000)
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)
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

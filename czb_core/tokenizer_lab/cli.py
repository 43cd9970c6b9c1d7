"""`czb tokenizer-lab`: compare tokenizers on a user's dataset, one line per tokenizer."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from czb_core.errors import ConfigError

PRESET_HELP = "geneformer, scgpt, scbert, scfoundation, uce, or fg=...,fe=...,fc=... (repeatable)"


def add_tokenizer_lab_parser(subparsers) -> None:
    p = subparsers.add_parser("tokenizer-lab", help="which tokenizer generalises to held-out groups (e.g. tissues)")
    p.add_argument("data", help=".h5ad or 10x .h5 with raw counts")
    p.add_argument("--label-key", required=True, metavar="COL", help="obs column to predict (e.g. cell_type)")
    p.add_argument("--split-key", required=True, metavar="COL", help="obs column whose values split the cells")
    p.add_argument("--train", required=True, nargs="+", metavar="VALUE", help="split value(s) to train on")
    p.add_argument("--val", required=True, nargs="+", metavar="VALUE", help="split value(s) for early stopping")
    p.add_argument("--test", required=True, nargs="+", metavar="VALUE", help="split value(s) to score")
    p.add_argument("--tokenizer", action="append", default=[], metavar="NAME", help=PRESET_HELP)
    p.add_argument("--fg", help="compose one more tokenizer: identity, esm2[:PATH], genept:PATH, gene2vec:PATH")
    p.add_argument("--fe", help="its Fe: zero, linear, mlp, quantile, integer, autobin")
    p.add_argument("--fc", help="its Fc: expression, expression-median, random, chromosome, resample, uce")
    p.add_argument("--max-length", type=int, help="maximum sentence length of the composed tokenizer")
    p.add_argument("--seeds", type=int, default=3, help="seeds per tokenizer (0, 1, ...)")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--width", type=int, default=128, help="model width (muP: the learning rate carries over)")
    p.add_argument("--organism", help="for chromosome order and cached ESM-2 tables; detected when omitted")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--out", help="folder for summary.csv, runs.csv, curves.csv, confusion_best.csv and models")
    p.add_argument("--json", action="store_true", help="print the summary and runs as JSON")
    p.set_defaults(func=tokenizer_lab_command)


def tokenizer_specs(args) -> list:
    from czb_core.tokenizer_lab.presets import compose, parse_tokenizer

    specs = [parse_tokenizer(t) for t in args.tokenizer]
    if args.fg or args.fe or args.fc:
        specs.append(compose(args.fg or "identity", args.fe or "zero", args.fc or "expression", args.max_length))
    elif args.max_length:
        raise ConfigError("--max-length applies to a tokenizer composed with --fg/--fe/--fc")
    if not specs:
        raise ConfigError("name at least one tokenizer: --tokenizer geneformer, or compose one with --fg/--fe/--fc")
    return specs


def tokenizer_lab_command(args) -> int:
    from czb_core.io.reading import read_anndata
    from czb_core.progress import StderrProgress
    from czb_core.tokenizer_lab.lab import LabSplit, prepare_lab_data, run_lab
    from czb_core.tokenizer_lab.model import ModelShape
    from czb_core.tokenizer_lab.train import TrainConfig
    from czb_core.types import Organism

    if args.seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {args.seeds}")
    specs = tokenizer_specs(args)
    try:
        config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                             shape=ModelShape(d_model=args.width))
        organism = Organism.parse(args.organism) if args.organism else None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    split = LabSplit(args.label_key, args.split_key, tuple(args.train), tuple(args.val), tuple(args.test))
    data = prepare_lab_data(read_anndata(args.data), split, organism)
    for warning in data.warnings:
        print(f"[czb] warning: {warning}", file=sys.stderr)
    heads = Path(args.out) / "models" if args.out else None
    result = run_lab(data, specs, list(range(args.seeds)), config, StderrProgress(), heads_dir=heads,
                     device=args.device)
    summary = result.summary()
    if args.out:
        result.write_csv(args.out)
    if args.json:
        print(json.dumps({"summary": summary.to_dict(orient="records"),
                          "runs": result.runs_table().to_dict(orient="records"),
                          "best": result.best_run().tokenizer, "warnings": result.warnings}, indent=2))
        return 0
    for row in summary.itertuples(index=False):
        print(f"{row.tokenizer:32s} test accuracy {row.accuracy_mean:.4f} ± {row.accuracy_std:.4f}   "
              f"MCC {row.mcc_mean:.4f} ± {row.mcc_std:.4f}   ({row.n_seeds} seeds)")
    return 0

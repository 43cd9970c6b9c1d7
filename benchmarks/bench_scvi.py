"""Issue 5 figures: scVI `fit` training speed on a generated 50,000 x 2,000 file, CPU and (when present) GPU.

    python benchmarks/bench_scvi.py [--cells 50000] [--genes 2000] [--epochs 3]

Each device runs in its own process: read the counts, train `--epochs` epochs (batch key: the file's 4
batches, scVI defaults otherwise), take the latent mean. Reported: seconds per epoch (each epoch and
their median), the latent step, peak RSS, and what scvi-tools' default epoch count would cost at this size.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._common import generated_h5ad, measure  # noqa: E402

FIT = """
import json, time
import anndata as ad
from czb_core.progress import CancelToken
from model_runners.scvi.fit import FitParams, default_max_epochs, fit_latent
a = ad.read_h5ad({path!r})
marks = []
def progress(step, done, total):
    marks.append((step, done, time.perf_counter()))
t0 = time.perf_counter()
emb, epochs = fit_latent(a.X, a.obs["batch"], FitParams(max_epochs={epochs}, seed=0), {device!r}, progress,
                         CancelToken())
t_end = time.perf_counter()
train = [t for step, _, t in marks if step == "train epoch"]
print(json.dumps({{"epoch_s": [round(b - a, 2) for a, b in zip(train, train[1:])],
                  "setup_s": round(train[0] - t0, 2), "embed_s": round(t_end - train[-1], 2),
                  "epochs": epochs, "default_epochs": default_max_epochs(a.n_obs), "shape": list(emb.shape)}}))
"""
CUDA = "import json, torch; print(json.dumps({'cuda': torch.cuda.is_available(), 'threads': torch.get_num_threads()}))"


def report(device: str, result: dict, cells: int) -> None:
    per_epoch = statistics.median(result["epoch_s"])  # robust to an epoch slowed by another process
    default = result["default_epochs"]
    print(f"{device}: {result['epochs']} epochs, seconds per epoch {result['epoch_s']} (median {per_epoch:.2f} s); "
          f"setup {result['setup_s']} s, latent mean {result['embed_s']} s; peak RSS {result['peak_rss_mb']} MB; "
          f"emb {result['shape']}")
    print(f"{device}: scvi-tools' default at {cells:,} cells is {default} epochs, about "
          f"{per_epoch * default / 60:.1f} min of training")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", type=int, default=50_000)
    parser.add_argument("--genes", type=int, default=2_000)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    path = str(generated_h5ad(args.cells, args.genes))
    env = measure(CUDA)
    print(f"scVI fit on {args.cells:,} x {args.genes:,} generated counts; torch CPU threads: {env['threads']}")
    for device in ("cpu", "cuda"):
        if device == "cuda" and not env["cuda"]:
            print("cuda: skipped (torch.cuda.is_available() is False on this machine)")
            continue
        report(device, measure(FIT.format(path=path, epochs=args.epochs, device=device)), args.cells)


if __name__ == "__main__":
    main()

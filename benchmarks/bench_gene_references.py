"""Issue 10 figures: cost of loading one species' gene reference, and of detecting a dataset's species.

    python benchmarks/bench_gene_references.py [--species homo_sapiens mus_musculus ...]

Each species is measured in a fresh interpreter (nothing cached): seconds to read its table, seconds
to build its symbol/id index, the table's own size in memory (pandas deep count) and the process's
RSS growth across the load. Target: under a second per species. Then detection, which needs every
species' symbols: the one-off cost of loading all references, and one call on 30,000 names.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._common import measure  # noqa: E402

RSS = """
def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024
"""
ONE_SPECIES = RSS + """
import json, time
from czb_core.schema import gene_references as gr
gr.reference_info({species!r})  # the yml catalog, not what is measured
before = rss_mb()
t0 = time.perf_counter()
table = gr._read_table({species!r})
t1 = time.perf_counter()
gr.species_index({species!r})
t2 = time.perf_counter()
t3 = time.perf_counter()
gr.gene_table({species!r})
cached_s = time.perf_counter() - t3
print(json.dumps({{"genes": len(table), "read_s": round(t1 - t0, 3), "index_s": round(t2 - t1, 3),
                  "cached_copy_s": round(cached_s, 4),
                  "table_mb": round(table.memory_usage(deep=True).sum() / 2**20, 1),
                  "rss_growth_mb": round(rss_mb() - before, 1)}}))
"""
DETECT = RSS + """
import json, time
import numpy as np
from czb_core.schema import gene_references as gr
from czb_core.schema.species import detect_species
gr.reference_info("mouse")
before = rss_mb()
t0 = time.perf_counter()
gr.symbol_species_masks(); gr.id_prefix_organisms(); gr.irregular_ids()
t1 = time.perf_counter()
t = gr.gene_table("mouse")
names = t[t.gene_name != t.gene_id].gene_name.sample(30000, random_state=0).str.upper().to_numpy(dtype=object)
t2 = time.perf_counter()
d = detect_species(names)
t3 = time.perf_counter()
print(json.dumps({{"load_all_s": round(t1 - t0, 2), "detect_30k_s": round(t3 - t2, 3),
                  "rss_growth_mb": round(rss_mb() - before, 1), "result": d.describe()}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--species", nargs="*", default=None, help="latin names (default: all shipped organisms)")
    args = parser.parse_args()
    from czb_core.schema.gene_references import reference_info, reference_species

    species = args.species or list(reference_species())
    header = ("species", "reference", "genes", "read s", "index s", "table MB", "RSS +MB")
    print("{:26s} {:13s} {:>7s} {:>7s} {:>8s} {:>9s} {:>8s}".format(*header))
    for name in species:
        r = measure(ONE_SPECIES.format(species=name))
        print(f"{name:26s} {reference_info(name).label:13s} {r['genes']:7,d} {r['read_s']:7.3f} {r['index_s']:8.3f} "
              f"{r['table_mb']:9.1f} {r['rss_growth_mb']:8.1f}")
    r = measure(DETECT.format())
    print(f"\ndetection: all references loaded in {r['load_all_s']:.2f} s (+{r['rss_growth_mb']:.0f} MB RSS, "
          f"peak {r['peak_rss_mb']:.0f} MB), then 30,000 names in {r['detect_30k_s']:.3f} s")
    print(f"  -> {r['result']}")


if __name__ == "__main__":
    main()

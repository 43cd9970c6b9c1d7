"""The GPU suite runs on a bare python (no anndata, scanpy, streamlit, omegaconf, numba) and prints its table.

The suite is run in a subprocess whose imports of those packages fail as if they were not installed
(`sys.modules[name] = None`: `import` raises ImportError and `importlib.util.find_spec` answers None),
the way the GPU server's python3 behaves.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu_suite import COLUMNS, main, suite_entries

pytestmark = pytest.mark.slow  # the quick suite runs every benchmark entry in a fresh python (tens of seconds)

ROOT = Path(__file__).resolve().parents[2]
ABSENT = ("anndata", "scanpy", "streamlit", "omegaconf", "numba")
BARE_PYTHON = (
    "import runpy, sys\n"
    f"for name in {ABSENT!r}:\n"
    "    sys.modules[name] = None\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


def run_bare(*args: str) -> subprocess.CompletedProcess:
    """`python3 <args>` from the repository root with PYTHONPATH=. and the absent packages unimportable."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, "-c", BARE_PYTHON, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def table_rows(stdout: str) -> list[list[str]]:
    lines = [line for line in stdout.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_the_bare_python_cannot_import_the_absent_packages(tmp_path):
    script = tmp_path / "imports.py"
    script.write_text("import model_runners.geneformer.tokenizer\n")  # needs numba
    result = run_bare(str(script))
    assert result.returncode != 0
    assert "ModuleNotFoundError: import of numba halted" in result.stderr


def test_quick_suite_prints_one_row_per_setup_of_every_entry():
    result = run_bare("benchmarks/gpu_suite.py", "--quick", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    header, rule, *rows = table_rows(result.stdout)
    assert tuple(header) == COLUMNS
    assert set(rule) == {"---"}
    expected = [(entry.model, entry.size, setup.label) for entry in suite_entries(quick=True) for setup in entry.setups]
    assert [tuple(row[:3]) for row in rows] == expected
    ratios = {}
    for model, size, label, cells_per_s, peak, ratio in rows:
        assert float(cells_per_s.replace(",", "")) > 0
        assert peak == "n/a"  # CPU: no GPU memory to report
        ratios.setdefault((model, size), []).append(float(ratio.rstrip("x")))
    for entry_ratios in ratios.values():
        assert entry_ratios[0] == 1.0  # the eager fp32 reference
        assert all(r > 0 for r in entry_ratios)


def test_entries_put_the_eager_fp32_reference_first():
    for quick in (True, False):
        for entry in suite_entries(quick):
            assert entry.setups[0].label.startswith("fp32, eager attention")


@pytest.mark.parametrize("argv, message", [
    (["--device", "cpu"], "add --quick"),
    (["--quick", "--device", "tpu9"], "is not a torch device"),
])
def test_refuses_a_device_it_cannot_run_on(argv, message):
    with pytest.raises(SystemExit, match=message):
        main(argv)

"""Every `czb_core` module imports on its own, first thing in a process: a circular import (the retention
sweep and the job manager importing each other) shows only in that order, never in the app's."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers.fresh_imports import ROOT, module_names


def test_every_czb_core_module_imports_first_in_a_process_of_its_own():
    assert {"czb_core", "czb_core.service.retention", "czb_core.service.jobs"} <= set(module_names())
    done = subprocess.run([sys.executable, "-m", "tests.helpers.fresh_imports"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, check=True)
    failures = json.loads(done.stdout)
    assert failures == {}, "\n\n".join(f"{name}:\n{report}" for name, report in failures.items())

"""A run function for worker processes that misbehaves on request (real OS-level faults, no mocks).

The job's `n_comps` parameter picks the fault; any other value runs the real PCA pipeline. It lives in a
module (not a test) so a spawned worker process can import it.
"""

from __future__ import annotations

import os
import signal
import time

from czb_core.models.pipeline import embed_file

KILLED, ABORTS, ALLOCATES, STUCK = 1, 2, 3, 4


def fault_run(path, model, variant, *, params, progress, cancel, **kwargs):
    fault = params.get("n_comps")
    progress("embed", 0, 1)
    if fault == KILLED:
        os.kill(os.getpid(), signal.SIGKILL)  # what the OS out-of-memory killer does
    elif fault == ABORTS:
        os.abort()  # a native library's abort (a segfault ends the process the same way)
    elif fault == ALLOCATES:
        hog = bytearray(4 << 30)  # past the worker's RLIMIT_DATA: MemoryError
        return hog
    elif fault == STUCK:
        time.sleep(600)  # a long native call that never reaches the next cancel check
    return embed_file(path, model, variant, params=params, progress=progress, cancel=cancel, **kwargs)

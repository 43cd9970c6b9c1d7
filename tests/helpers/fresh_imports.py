"""Import every `czb_core` module first, each in a process that has never imported any of `czb_core`.

A circular import shows only when a module of the cycle is the first one imported (`import
czb_core.service.retention` alone failed while the app, importing the job manager first, worked), so each
module needs a process of its own. A fresh interpreter per module spends most of its time importing torch,
scanpy and the like; instead this process imports every module once (which loads those libraries), drops
every `czb_core` module from `sys.modules`, and forks one child per module: the child imports the module as
a fresh interpreter would, since none of `czb_core` is loaded and nothing else imports `czb_core`.

`python -m tests.helpers.fresh_imports` prints a JSON object: module name -> traceback of each failure.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "czb_core"


def module_names() -> list[str]:
    """Every module of the package, from its files (importing a package to list it would import it); not
    `__main__`, whose import runs the command line."""
    names = []
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] != "__main__":
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def forget_package() -> None:
    for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
        del sys.modules[name]


def import_in_child(name: str) -> str | None:
    """The traceback of importing `name` in a forked child with no `czb_core` module loaded, or None."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into the caller's code
        os.close(read_fd)
        code = 0
        try:
            importlib.import_module(name)
        except BaseException:
            os.write(write_fd, traceback.format_exc().encode())
            code = 1
        os.close(write_fd)
        os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        report = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) == 0:
        return None
    return report or f"the child importing {name} ended with status {os.waitstatus_to_exitcode(status)}"


def failures() -> dict[str, str]:
    names = module_names()
    for name in names:  # load the third-party libraries once; a failure here is judged in the child below
        try:
            importlib.import_module(name)
        except Exception:
            pass
    forget_package()
    return {name: report for name in names if (report := import_in_child(name)) is not None}


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    print(json.dumps(failures()))

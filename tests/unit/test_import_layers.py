"""The import contract of the product code (czb_core, model_runners, pages, app.py), read from the source.

Every import statement counts: at the top of a module, inside a function (a function-local import hides a
cycle from the import machinery, not from this test), under `if TYPE_CHECKING:` or in a `try:`.

1. No import cycle between modules.
2. Layers, lowest first; a module imports only from its own layer or a lower one:

       core            czb_core (the package itself), types, errors, config, progress
       io/schema       czb_core.io, czb_core.schema, and czb_core.streaming's out-of-core reading and fitting
                       (row blocks, read plans, one-pass statistics, incremental and probabilistic PCA, the
                       streamed PCA baseline, streamed logistic regression: no model, no task)
       models          czb_core.models, model_runners
       streaming/tasks the runs of a model (`RUNS`: the pipeline, which reads a file in memory, streamed or
                       sharded, and the streamed and sharded runs), czb_core.tasks, czb_core.viz,
                       czb_core.tokenizer_lab. The pipeline keeps its path, czb_core.models.pipeline, which the
                       service, the CLI, tests and benchmarks import.
       service         czb_core.service, czb_core.cli, czb_core.__main__
       pages           pages, app

   A module belongs to the layer of its longest matching prefix.
3. czb_core and model_runners never import streamlit; czb_core never imports model_runners (the registry finds
   each runner from its config.yaml).
4. Tasks, pictures and the tokenizer lab score, draw or train on what they are given: they never run a model
   (they import none of `RUNS`), and the runs import none of them.

`ALLOWED` lists the imports that break a rule and why; each must still be needed (a stale one fails).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path
from typing import Iterator, NamedTuple, Optional

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("czb_core", "model_runners", "pages")
SCRIPTS = ("app.py",)

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("core", ("czb_core", "czb_core.types", "czb_core.errors", "czb_core.config", "czb_core.progress")),
    ("io/schema", ("czb_core.io", "czb_core.schema", "czb_core.streaming")),
    ("models", ("czb_core.models", "model_runners")),
    ("streaming/tasks", ("czb_core.models.pipeline", "czb_core.streaming.chunks", "czb_core.streaming.ray_actors",
                         "czb_core.streaming.sharding", "czb_core.tasks", "czb_core.viz", "czb_core.tokenizer_lab")),
    ("service", ("czb_core.service", "czb_core.cli", "czb_core.__main__")),
    ("pages", ("pages", "app")),
)
EXACT = {"czb_core"}  # prefixes that name the package module alone, not everything under it
RUNS = ("czb_core.models.pipeline", "czb_core.streaming.chunks", "czb_core.streaming.ray_actors",
        "czb_core.streaming.sharding")
NEVER_RUN_A_MODEL = ("czb_core.tasks", "czb_core.viz", "czb_core.tokenizer_lab")

# (importer, imported) -> why the import stays although it breaks a rule.
ALLOWED: dict[tuple[str, str], str] = {
    ("czb_core.models.base", "czb_core.streaming.chunks"):
        "`execute` given row blocks runs a runner that cannot stream by itself chunk by chunk; `embed_in_chunks` "
        "calls `execute` again on each chunk, so the chunked flow is part of `execute`. It stays in "
        "czb_core.streaming.chunks, the module the streamed runs share and the tests patch (MAX_CHUNK_ROWS).",
    ("czb_core.service.identity", "streamlit"):
        "`make serve` runs `python -m czb_core.service.identity` to decide where the app may listen, which depends on "
        "whether login is configured: Streamlit's secrets, read as the app reads them (`st.secrets`). Only that "
        "check imports streamlit, inside the function; the CLI and the workers never call it.",
}


class Import(NamedTuple):
    importer: str
    imported: str  # a module of the product code, or the top-level name of an outside package
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def product_modules() -> dict[str, Path]:
    paths = [path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))]
    paths += [ROOT / script for script in SCRIPTS]
    return {module_name(path): path for path in paths}


def resolve(name: str, modules: dict[str, Path]) -> Optional[str]:
    """The deepest product module that `name` (a dotted import target) is or lies in; None for outside code."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> Iterator[Import]:
    """Every import anywhere in the module's source: product modules resolved, outside ones by top-level name."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from package import submodule` imports the submodule; `from module import name` the module
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                       for alias in node.names]
        else:
            continue
        for target in targets:
            found = resolve(target, modules)
            if found != module:
                yield Import(module, found or target.split(".")[0], node.lineno)


def import_graph() -> tuple[dict[str, Path], list[Import]]:
    modules = product_modules()
    found = [imp for module, path in modules.items() for imp in imports_of(module, path, modules)]
    return modules, found


def layer_of(module: str) -> int:
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or (prefix not in EXACT and module.startswith(prefix + "."))
            if matches and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS")
    return best


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def describe(imports: list[Import]) -> str:
    return "\n".join(f"  {imp.importer} -> {imp.imported} (line {imp.line})" for imp in imports)


def broken_rules(modules: dict[str, Path], found: list[Import]) -> dict[tuple[str, str], str]:
    """(importer, imported) -> the rule the import breaks, for every import of the product code."""
    broken: dict[tuple[str, str], str] = {}
    for imp in found:
        key = (imp.importer, imp.imported)
        if imp.imported in modules:
            low, high = layer_of(imp.importer), layer_of(imp.imported)
            if high > low:
                broken[key] = f"layer {LAYERS[low][0]} imports layer {LAYERS[high][0]}"
            elif within(imp.importer, NEVER_RUN_A_MODEL) and within(imp.imported, RUNS):
                broken[key] = "runs a model"
            elif within(imp.importer, RUNS) and within(imp.imported, NEVER_RUN_A_MODEL):
                broken[key] = "a run imports a task, picture or the tokenizer lab"
            elif within(imp.importer, ("czb_core",)) and within(imp.imported, ("model_runners",)):
                broken[key] = "the core imports a runner"
        elif imp.imported == "streamlit" and within(imp.importer, ("czb_core", "model_runners")):
            broken[key] = "imports streamlit"
    return broken


def test_the_scanner_sees_every_kind_of_import(tmp_path):
    source = ("import czb_core.io.reading\nfrom czb_core.schema import data_manager\nfrom . import errors\n"
              "def f():\n    from czb_core.models.pipeline import embed_file\n"
              "try:\n    import streamlit\nexcept ImportError:\n    pass\n")
    path = tmp_path / "probe.py"
    path.write_text(source)
    modules = {**product_modules(), "czb_core.probe": path}
    got = {(imp.imported, imp.line) for imp in imports_of("czb_core.probe", path, modules)}
    assert got == {("czb_core.io.reading", 1), ("czb_core.schema.data_manager", 2), ("czb_core.errors", 3),
                   ("czb_core.models.pipeline", 5), ("streamlit", 7)}


def test_every_product_module_is_in_a_layer():
    modules, _ = import_graph()
    assert {"czb_core", "czb_core.models.pipeline", "model_runners.pca.model", "pages.run", "app"} <= set(modules)
    for module in modules:
        layer_of(module)


def test_no_import_cycles():
    modules, found = import_graph()
    edges: dict[str, set[str]] = defaultdict(set)
    for imp in found:
        if imp.imported in modules:
            edges[imp.importer].add(imp.imported)
    found_cycles = cycles(edges)
    details = [describe(sorted({imp for imp in found if imp.importer in cycle and imp.imported in cycle}))
               for cycle in found_cycles]
    assert not found_cycles, "import cycles:\n" + "\n\n".join(details)


def test_layers_and_rules():
    modules, found = import_graph()
    broken = broken_rules(modules, found)
    unexplained = sorted({imp for imp in found if (imp.importer, imp.imported) in broken
                          and (imp.importer, imp.imported) not in ALLOWED})
    assert not unexplained, "imports that break the contract:\n" + "\n".join(
        f"  {imp.importer} -> {imp.imported} (line {imp.line}): {broken[imp.importer, imp.imported]}"
        for imp in unexplained)


def test_every_allowance_is_still_needed():
    modules, found = import_graph()
    broken = broken_rules(modules, found)
    stale = [pair for pair in ALLOWED if pair not in broken]
    assert not stale, f"allowances no import needs any more (remove them from ALLOWED): {stale}"

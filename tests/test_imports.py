"""The package's import structure, read from the source (every ``import`` statement, module level and inside
functions, ``TYPE_CHECKING`` blocks included): layers import only downwards, inside ``lit`` too, the package has no
import cycle, and no module imports another module's private (``_name``) objects."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sagnn_lightning"

#: a layer may import itself and the layers after it in this list, never one before it
LAYERS = ("__main__", "cli", "pretrained", "lit", "models", "nn", "kernels", "data", "files", "errors")

#: the modules of ``lit``, top to bottom: each may import those after it, never one before it (a module not listed
#: fails the test, so that a new one is placed deliberately)
LIT_ORDER = (
    "sagnn_lightning.lit",
    "sagnn_lightning.lit.attention_logger",
    "sagnn_lightning.lit.attention_plots",
    "sagnn_lightning.lit.ensemble_assemble",
    "sagnn_lightning.lit.ensemble_fit",
    "sagnn_lightning.lit.pretrained",
    "sagnn_lightning.lit.ensemble",
    "sagnn_lightning.lit.loading",
    "sagnn_lightning.lit.callbacks",
    "sagnn_lightning.lit.attention_export",
    "sagnn_lightning.lit.module",
    "sagnn_lightning.lit.inference",
    "sagnn_lightning.lit.predictions_csv",
    "sagnn_lightning.lit.lr_multipliers",
    "sagnn_lightning.lit.finetune",
    "sagnn_lightning.lit.checkpoints",
    "sagnn_lightning.lit.registry",
    "sagnn_lightning.lit.metrics",
    "sagnn_lightning.lit.schedules",
    "sagnn_lightning.lit.progress",
    "sagnn_lightning.lit.signals",
    "sagnn_lightning.lit.wandb",
    "sagnn_lightning.lit.deadline",
    "sagnn_lightning.lit.history",
)


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports(root: Path = PACKAGE) -> dict[str, list[tuple[str, list[str]]]]:
    """``module -> [(imported module, [imported names])]`` for imports of ``sagnn_lightning.*``; ``from package import
    submodule`` is an edge to the submodule."""
    found: dict[str, list[tuple[str, list[str]]]] = {}
    modules = {_module_name(path, root) for path in root.rglob("*.py")}
    for path in sorted(root.rglob("*.py")):
        edges = found.setdefault(_module_name(path, root), [])
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sagnn_lightning"):
                names = [a.name for a in node.names]
                submodules = [n for n in names if f"{node.module}.{n}" in modules]
                edges += [(f"{node.module}.{n}", []) for n in submodules]
                rest = [n for n in names if n not in submodules]
                if rest or not submodules:
                    edges.append((node.module, rest))
            elif isinstance(node, ast.Import):
                edges += [(a.name, []) for a in node.names if a.name.startswith("sagnn_lightning")]
    return found


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def upward_imports(imports: dict) -> list[str]:
    wrong = []
    for module, edges in imports.items():
        here = _layer(module)
        if here not in LAYERS:
            continue
        for target, _ in edges:
            there = _layer(target)
            if there in LAYERS and LAYERS.index(there) < LAYERS.index(here):
                wrong.append(f"{module} imports {target}")
    return wrong


def lit_upward_imports(imports: dict) -> list[str]:
    """Imports inside ``lit`` against :data:`LIT_ORDER` (and ``lit`` modules missing from it)."""
    wrong = []
    for module, edges in imports.items():
        if not module.startswith("sagnn_lightning.lit"):
            continue
        if module not in LIT_ORDER:
            wrong.append(f"{module} is not in LIT_ORDER")
            continue
        for target, _ in edges:
            if target in LIT_ORDER and target != module and LIT_ORDER.index(target) < LIT_ORDER.index(module):
                wrong.append(f"{module} imports {target}")
    return wrong


def import_cycle(imports: dict, prefix: str = "sagnn_lightning") -> list[str] | None:
    """A cycle of imports among the modules under ``prefix`` (function-level imports count), or ``None``."""
    graph = {
        m: {t for t, _ in edges if t.startswith(prefix) and t != m}
        for m, edges in imports.items()
        if m.startswith(prefix)
    }
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path, node, nxt]
            if state.get(nxt) is None:
                cycle = visit(nxt, [*path, node])
                if cycle:
                    return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if state.get(start) is None:
            cycle = visit(start, [])
            if cycle:
                return cycle
    return None


def private_imports(imports: dict) -> list[str]:
    return [
        f"{module} imports {target}.{name}"
        for module, edges in imports.items()
        for target, names in edges
        for name in names
        if name.startswith("_") and not name.startswith("__") and target != module
    ]


def test_layers_import_only_downwards():
    assert upward_imports(package_imports()) == []


def test_the_package_has_no_import_cycle():
    """Function-level imports are edges too: a cycle held apart only by a lazy import is still a cycle."""
    cycle = import_cycle(package_imports())
    assert cycle is None, " -> ".join(cycle)


def test_lit_modules_import_only_downwards():
    assert lit_upward_imports(package_imports()) == []


def test_no_module_imports_private_names_of_another():
    assert private_imports(package_imports()) == []


def test_the_checks_see_an_upward_import_a_cycle_and_a_private_import(tmp_path):
    """The checks above are not blind: planted violations are found."""
    fake = tmp_path / "sagnn_lightning"
    for folder in ("data", "nn"):
        (fake / folder).mkdir(parents=True)
        (fake / folder / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "data" / "a.py").write_text("from sagnn_lightning.data.b import _hidden\n")
    (fake / "data" / "b.py").write_text("def f():\n    from sagnn_lightning.data.a import thing\n")
    (fake / "nn" / "layer.py").write_text("from sagnn_lightning.lit.module import SAGNNModule\n")
    (fake / "lit").mkdir()
    (fake / "lit" / "__init__.py").write_text("")
    (fake / "lit" / "registry.py").write_text("def f():\n    from sagnn_lightning.lit import module\n")
    (fake / "lit" / "module.py").write_text("")
    imports = package_imports(fake)
    assert lit_upward_imports(imports) == ["sagnn_lightning.lit.registry imports sagnn_lightning.lit.module"]
    assert upward_imports(imports) == ["sagnn_lightning.nn.layer imports sagnn_lightning.lit.module"]
    assert import_cycle(imports) == ["sagnn_lightning.data.a", "sagnn_lightning.data.b", "sagnn_lightning.data.a"]
    assert private_imports(imports) == ["sagnn_lightning.data.a imports sagnn_lightning.data.b._hidden"]


def test_readers_know_no_matbench():
    """The generic readers, the table and the fingerprints import nothing of matbench; matbench's layout and ids
    live in ``data/matbench_format.py`` and reach the readers only as a ``default_ids`` argument."""
    imports = package_imports()
    matbench = {"sagnn_lightning.data.matbench", "sagnn_lightning.data.matbench_format", "sagnn_lightning.data.tasks"}
    for module in ("sagnn_lightning.data.readers", "sagnn_lightning.data.table", "sagnn_lightning.data.fingerprint"):
        assert module in imports
        imported = {name for name, _ in imports[module]}
        assert not imported & matbench, (module, imported & matbench)

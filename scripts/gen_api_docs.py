"""Write docs/api.md, the API reference: one mkdocstrings entry per public name of ``sagnn_lightning``.

    python scripts/gen_api_docs.py            # rewrite docs/api.md
    python scripts/gen_api_docs.py --check    # exit 1 if docs/api.md is not what this script writes

The public names are read at run time from ``__all__``: first the package's top-level modules
(``sagnn_lightning.data``, ``.models``, ``.nn``, ``.lit``, ``.kernels``, ``.pretrained``, ``.cli``, ...), then
every deeper module that declares ``__all__``. A name is documented once, at the path where it is defined
(``sagnn_lightning.data.graph.GraphSettings``), in the section of the first module that exports it; a module
whose names are all documented above gets no section. ``tests/test_docs.py`` checks that docs/api.md equals
this script's output and that every name is there.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import pkgutil
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
API_MD = REPO / "docs" / "api.md"
PACKAGE = "sagnn_lightning"

#: a Sphinx cross-reference in a docstring: :role:`~a.b.name` (shown as `name`) or :role:`a.b.name`
SPHINX_ROLE = re.compile(r":\w+:`(?:~[\w.]*?\.(\w+)|([\w.]+))`")

HEADER = """\
# API reference

Generated from the docstrings by `python scripts/gen_api_docs.py` (do not edit by hand): every name in the
`__all__` of the package's modules, in the section of the first module that exports it (import it from there).
"""


def public_modules() -> list[ModuleType]:
    """The top-level modules of the package (not ``__main__``, none private), then every deeper module with
    ``__all__``; each group sorted by name."""
    sys.path.insert(0, str(REPO))  # this checkout, also when the package is installed elsewhere
    package = importlib.import_module(PACKAGE)
    names = [
        info.name
        for info in pkgutil.walk_packages(package.__path__, f"{PACKAGE}.")
        if not any(part.startswith("_") for part in info.name.split("."))
    ]
    modules = [importlib.import_module(name) for name in sorted(names)]
    top = [m for m in modules if m.__name__.count(".") == 1]
    deeper = [m for m in modules if m.__name__.count(".") > 1 and hasattr(m, "__all__")]
    return top + deeper


def _assigned_names(module: ModuleType) -> set[str]:
    """Names bound at the top level of ``module``'s source by an assignment (constants, type aliases)."""
    tree = ast.parse(inspect.getsource(module))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        elif isinstance(node, getattr(ast, "TypeAlias", ())):  # `type X = ...`, Python 3.12+
            targets = [node.name]  # type: ignore[attr-defined]
        else:
            continue
        names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def defining_path(module: ModuleType, name: str) -> str:
    """Where ``module.<name>`` is defined, as a dotted path mkdocstrings can find without importing."""
    obj = getattr(module, name)
    if inspect.ismodule(obj):
        return obj.__name__
    home = getattr(obj, "__module__", None)
    if (inspect.isclass(obj) or inspect.isroutine(obj)) and home and home.startswith(PACKAGE):
        return f"{home}.{obj.__qualname__}"
    # a constant or type alias: the package module whose source assigns it
    owners = sorted(
        m.__name__
        for m in list(sys.modules.values())
        if getattr(m, "__name__", "").startswith(PACKAGE)
        and getattr(m, name, None) is obj
        and name in _assigned_names(m)
    )
    if len(owners) != 1:
        raise SystemExit(f"gen_api_docs: cannot tell where {module.__name__}.{name} is defined (candidates: {owners})")
    return f"{owners[0]}.{name}"


def sections() -> Iterator[tuple[ModuleType, list[str]]]:
    """(module, the defining paths of its exported names not documented in an earlier section)."""
    seen: set[str] = set()
    for module in public_modules():
        paths = []
        for name in module.__all__ if hasattr(module, "__all__") else []:
            path = defining_path(module, name)
            if path not in seen:
                seen.add(path)
                paths.append(path)
        if paths:
            yield module, paths


def render() -> str:
    """The text of docs/api.md."""
    parts = [HEADER]
    for module, paths in sections():
        summary = (module.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        summary = SPHINX_ROLE.sub(lambda m: f"`{m[1] or m[2]}`", summary)  # :mod:`~a.b` → `b`
        parts.append(f"## `{module.__name__}`\n")
        if summary:
            parts.append(f"{summary}\n")
        parts.extend(f"::: {path}\n" for path in paths)
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/api.md differs; write nothing")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if API_MD.read_text(encoding="utf-8") != text:
            print("docs/api.md is out of date: run python scripts/gen_api_docs.py", file=sys.stderr)
            return 1
        return 0
    API_MD.write_text(text, encoding="utf-8")
    print(f"wrote {API_MD.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

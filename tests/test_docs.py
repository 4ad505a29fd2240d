"""The docs tell the truth about the code: the docs home is the README, lists render as lists, the API reference
holds every public name, and the README's and Getting started's shell commands run offline as typed.

The README's Python block runs in ``tests/lit/test_readme_example.py``, its CPU DDP command in
``tests/lit/test_ddp.py::test_readme_multi_device_command_in_a_terminal``; every recipe's YAMLs parse in
``tests/lit/test_cli.py``. Here: every ``python ...`` line of the two pages names files that exist, its
LightningCLI options parse (``--print_config``, nothing trained), and the package's own commands (``models``,
``predict --model``, ``attention-plots``) run for real on a few bundled crystals.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest

import sagnn_lightning
from sagnn_lightning.data.samples import sample_path
from tests.lit.conftest import offline_env  # noqa: F401  (the fixture: W&B offline, graph cache in tmp)
from tests.lit.test_cli import _print_config, _recipe_configs

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO / "../shared"
DOCS = REPO / "docs"
MARKDOWN = [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]
COMMAND_PAGES = [REPO / "README.md", DOCS / "getting-started.md"]

#: ``python -m sagnn_lightning <sub>``: the LightningCLI's subcommands and the package's own commands
LIGHTNING_SUBCOMMANDS = {"fit", "validate", "test"}
PACKAGE_COMMANDS = {"predict", "models", "attention-plots"}


# ----------------------------------------------------------------------------------------------- docs home


def test_docs_home_is_the_readme():
    """docs/index.md holds no text of its own: it includes README.md, so the two cannot drift."""
    assert (DOCS / "index.md").read_text() == '{% include-markdown "../README.md" %}\n'
    assert re.search(r"^\s+- include-markdown\s*$", (REPO / "mkdocs.yml").read_text(), re.M)


def test_docs_home_renders_the_readme(tmp_path):
    """The built home page has every README section, and the README's links (docs/x.md) point into the site."""
    pytest.importorskip("mkdocs_include_markdown_plugin", reason="the docs extra is not installed")
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--quiet", "--site-dir", str(site)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    home = (site / "index.html").read_text()
    for heading in re.findall(r"^## (.+)$", (REPO / "README.md").read_text(), re.M):
        assert f">{heading}<" in home.replace("\u00b6", ""), f"README section {heading!r} missing from the docs home"
    links = re.findall(r'href="([^"#:]+)"', home)
    assert "guide/recipes/" in links and "benchmarks/" in links
    assert not [link for link in links if link.startswith("docs/") or link.endswith(".md")]


# ----------------------------------------------------------------------------------------------- Markdown lists

LIST_ITEM = re.compile(r"\s*(?:[-*+]|\d+[.)])\s")


def lists_glued_to_a_paragraph(text: str) -> list[int]:
    """Line numbers of list items that directly follow a paragraph line: Markdown renders them as that paragraph's
    text ("Policies: - **One pipeline.** ..."), not as a list. A list needs a blank line before it."""
    bad, fence, block_start = [], False, None
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith(("```", "~~~")):
            fence, block_start = not fence, None
            continue
        if fence or not line.strip():
            block_start = None
            continue
        if block_start is None:
            block_start = line
        elif LIST_ITEM.match(line) and not LIST_ITEM.match(block_start) and not block_start.startswith(("#", "|", "<")):
            bad.append(number)
    return bad


def test_the_list_check_finds_a_glued_list():
    assert lists_glued_to_a_paragraph("Policies:\n- one\n- two\n") == [2, 3]
    assert lists_glued_to_a_paragraph("Policies:\n\n- one\n  wrapped\n- two\n\n1. a\n2. b\n") == []
    assert lists_glued_to_a_paragraph("## Title\n- one\n\n```\ntext\n- not a list\n```\n") == []


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda p: str(p.relative_to(REPO)))
def test_every_list_has_a_blank_line_before_it(page):
    bad = lists_glued_to_a_paragraph(page.read_text())
    assert not bad, f"{page.relative_to(REPO)}: a list directly after a paragraph line (add a blank line) at {bad}"


# ----------------------------------------------------------------------------------------------- API reference


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_api_docs", REPO / "scripts" / "gen_api_docs.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_reference_is_what_the_generator_writes():
    assert (DOCS / "api.md").read_text() == _generator().render(), "run: python scripts/gen_api_docs.py"


def _documented_objects() -> list[object]:
    """The objects that docs/api.md's ``::: path`` entries name, each imported from its path."""
    objects = []
    for path in re.findall(r"^::: (\S+)$", (DOCS / "api.md").read_text(), re.M):
        parts = path.split(".")
        for split in range(len(parts), 0, -1):  # the longest importable module, then attributes
            try:
                obj: object = importlib.import_module(".".join(parts[:split]))
                break
            except ModuleNotFoundError:
                continue
        for attribute in parts[split:]:
            obj = getattr(obj, attribute)
        objects.append(obj)
    return objects


def test_every_public_name_is_in_the_api_reference():
    """Every name in the ``__all__`` of the package's top-level modules is one of docs/api.md's entries."""
    modules = {
        info.name: importlib.import_module(info.name)
        for info in pkgutil.iter_modules(sagnn_lightning.__path__, "sagnn_lightning.")
        if not info.name.rsplit(".", 1)[1].startswith("_")
    }
    named = {f"sagnn_lightning.{m}" for m in ("data", "models", "nn", "lit", "kernels", "pretrained", "cli", "errors")}
    assert named <= set(modules)
    documented = _documented_objects()
    missing = [
        f"{name}.{attr}"
        for name, module in sorted(modules.items())
        for attr in getattr(module, "__all__", [])
        if not any(getattr(module, attr) is obj for obj in documented)
    ]
    assert not missing, f"not in docs/api.md (run python scripts/gen_api_docs.py): {missing}"


# ----------------------------------------------------------------------------------------------- shell commands


@dataclass(frozen=True)
class Command:
    page: Path
    line: int
    env: dict[str, str]
    argv: list[str]

    def __str__(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def shell_commands(page: Path) -> list[Command]:
    """Every command of the page's ``bash`` blocks: continuation lines joined, comments dropped, ``a && b`` split,
    leading ``NAME=value`` assignments kept as the command's environment."""
    commands = []
    lines = page.read_text().splitlines()
    number = 0
    while number < len(lines):
        if lines[number].strip() != "```bash":
            number += 1
            continue
        number += 1
        while lines[number].strip() != "```":
            start, text = number + 1, lines[number]
            while text.rstrip().endswith("\\"):
                number += 1
                text = text.rstrip()[:-1] + " " + lines[number]
            number += 1
            for part in text.split("&&"):
                words = shlex.split(part, comments=True)
                env = {}
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                    key, value = words.pop(0).split("=", 1)
                    env[key] = value
                if words:
                    commands.append(Command(page, start, env, words))
    return commands


COMMANDS = [command for page in COMMAND_PAGES for command in shell_commands(page)]


def test_command_extraction():
    page = REPO / "README.md"
    commands = shell_commands(page)
    assert commands[0].argv == ["bash", "scripts/setup.sh"]
    assert commands[1].argv[:2] == ["python", "recipes/quickstart.py"]
    assert any(c.env == {"MATMINER_DATA": "../shared/data/matbench"} for c in commands)
    assert any("--data.target_columns=[gap]" in c.argv for c in commands)  # quoted word kept whole
    assert all(not word.startswith("#") for c in commands for word in c.argv)


def _option(argv: list[str], flag: str) -> list[str]:
    """Values of ``flag`` (``--flag value`` and ``--flag=value``)."""
    values = [argv[i + 1] for i, word in enumerate(argv[:-1]) if word == flag]
    return values + [word.split("=", 1)[1] for word in argv if word.startswith(flag + "=")]


#: developer tools the README's test command runs (from the ``test`` and ``docs`` extras)
DEV_TOOLS = ("ruff", "mypy", "mkdocs")


def _kind(command: Command) -> str:
    """``recipe``, ``lightning`` (``-m sagnn_lightning fit|test|...``), ``package`` (its own commands), ``bash``."""
    argv = command.argv
    if argv[0] == "bash":
        return "bash"
    if argv[0] in DEV_TOOLS or argv[:3] == ["python", "-m", "pytest"]:
        return "tool"
    assert argv[0] == "python", f"{command}: only python and bash commands are checked; got {argv[0]!r}"
    if argv[1].endswith(".py"):
        return "recipe" if argv[1].startswith("recipes/") else "script"
    assert argv[1:3] == ["-m", "sagnn_lightning"], f"{command}: unknown module {argv[1:3]}"
    sub = argv[3]
    assert sub in LIGHTNING_SUBCOMMANDS | PACKAGE_COMMANDS, f"{command}: no subcommand {sub!r}"
    return "package" if sub in PACKAGE_COMMANDS else "lightning"


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_commands_name_files_that_exist(command):
    kind = _kind(command)
    if kind == "tool":  # the test command's linters: installed by the extras that scripts/setup.sh installs
        extras = (REPO / "pyproject.toml").read_text().split("[project.optional-dependencies]")[1]
        extras = extras.split("\n[project.")[0]
        tool = "pytest" if command.argv[0] == "python" else command.argv[0]
        assert re.search(rf'"{tool}[=<>\[]', extras), command
        return
    if kind in ("bash", "recipe", "script"):
        assert (REPO / command.argv[1]).is_file(), f"{command}: no file {command.argv[1]}"
    for config in _option(command.argv, "--config"):
        assert (REPO / config).is_file(), f"{command}: no config {config}"
    words = [part for word in [*command.argv, *command.env.values()] for part in word.split("=")]
    shared = [word for word in words if word.startswith("../shared/")]
    if shared and not SHARED.is_dir():
        pytest.skip(f"no {SHARED.resolve()}")
    for path in shared:
        assert (REPO / path).exists(), f"{command}: no {path}"


LIGHTNING_COMMANDS = [c for c in COMMANDS if _kind(c) in ("recipe", "lightning")]


@pytest.mark.parametrize("command", LIGHTNING_COMMANDS, ids=str)
def test_lightning_commands_parse(command, capsys, monkeypatch):
    """Every option of a recipe / ``-m sagnn_lightning fit`` line exists and has a valid value (``--print_config``
    parses the whole command line, config files included, and builds nothing)."""
    monkeypatch.chdir(REPO)
    if command.argv[1].startswith("recipes/"):
        configs, args = _recipe_configs(REPO / command.argv[1]), command.argv[2:]
    else:
        configs, args = [], command.argv[3:]
    printed = _print_config(args, configs, capsys)
    assert printed["model"] and printed["data"] and printed["trainer"]


def _help(sub: str, capsys) -> str:
    from sagnn_lightning.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main([sub, "--help"])
    assert exit_info.value.code in (None, 0)
    return capsys.readouterr().out


def _missing_inputs(argv: list[str], cwd: Path) -> list[str]:
    """What a package command reads that is not in ``cwd``: ``--input``, ``--run-dir``, a ``--ckpt`` file, the
    folder of ``attention-plots``."""
    paths = _option(argv, "--input") + _option(argv, "--run-dir")
    paths += [c for c in _option(argv, "--ckpt") if c not in ("best", "last")]
    if argv[3] == "attention-plots":
        paths.append(argv[4])
    return [p for p in paths if not (cwd / p).exists()]


def test_package_commands_run_offline(offline_env, tmp_path, capsys):  # noqa: F811 (the fixture imported above)
    """The pages' ``python -m sagnn_lightning predict|models|attention-plots`` lines, in order, in a folder holding
    the user's files they name (``my_cifs/``: three bundled MP perovskites): the first line of each command whose
    inputs are there runs as typed; the others (a second ``predict``, or a run dir that only training makes) have
    every flag in their command's ``--help``."""
    cifs = tmp_path / "my_cifs"
    cifs.mkdir()
    for row in pd.read_csv(sample_path("mp_abx3_perovskites")).head(3).itertuples():
        (cifs / f"{row.material_id}.cif").write_text(row.cif)
    commands = [c for c in COMMANDS if _kind(c) == "package"]
    assert {c.argv[3] for c in commands} == PACKAGE_COMMANDS
    ran = []
    for command in commands:
        argv = command.argv
        if argv[3] in ran or _missing_inputs(argv, tmp_path):
            helped = _help(argv[3], capsys)
            unknown = [w.split("=")[0] for w in argv[4:] if w.startswith("--") and w.split("=")[0] not in helped]
            assert not unknown, f"{command}: not options of {argv[3]}: {unknown}"
            continue
        proc = subprocess.run(
            [sys.executable, *argv[1:]],
            cwd=tmp_path,
            env={**offline_env, **command.env, "OMP_NUM_THREADS": "1"},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, f"{command}: {shlex.join(argv)}\n{proc.stderr[-3000:]}"
        for output in _option(argv, "--output"):
            assert len(pd.read_csv(tmp_path / output)) == 3, f"{command}: {output}"
        ran.append(argv[3])
    assert sorted(ran) == sorted(PACKAGE_COMMANDS)

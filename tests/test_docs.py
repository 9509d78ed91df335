"""The documentation: its examples run, it builds without warnings, and the
API reference covers every public name.

* Every script under ``docs/snippets/`` (the code the tutorial and how-tos
  show with ``literalinclude``) runs on the fake kernel.
* ``sphinx-build -n -W --keep-going -b html docs <tmp>`` succeeds: no
  warning, and every cross-reference resolves (nitpicky), the standard
  library's through the Python documentation's ``objects.inv`` installed on
  the machine (``python3.11-doc``; the test fails, saying so, without one).
* Every name in ``pyvfio.__all__`` has an entry of its own as ``pyvfio.NAME``
  in the built ``objects.inv``, and every name in the ``__all__`` of each
  public module (the layer packages' modules, the backend's, the fake's
  public ones) has one under its module's name or wherever the same object
  is documented; every public module has a page.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import runpy
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any, Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
SNIPPETS = DOCS / "snippets"

#: Helper modules the snippets import; not examples of their own.
HELPERS = {"edu.py"}

#: Modules whose ``__all__`` must be fully documented, besides the public
#: modules docs/conf.py finds (``public_modules``: every module directly
#: under pyvfio and every module of the layer packages).
API_MODULES = [
    "pyvfio.backend.base",
    "pyvfio.backend.kernel",
    "pyvfio.backend.trace",
    "pyvfio.fake",
    "pyvfio.fake.machine.topology",
    "pyvfio.fake.machine.pci",
    "pyvfio.fake.models",
]


def _snippets() -> list[str]:
    return sorted(p.name for p in SNIPPETS.glob("*.py") if p.name not in HELPERS)


# -- the examples -----------------------------------------------------------------------


@pytest.mark.parametrize("name", _snippets())
def test_snippet_runs_on_fake(name: str, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.syspath_prepend(str(SNIPPETS))
    monkeypatch.setattr(sys, "argv", [str(SNIPPETS / name)])  # no --real
    runpy.run_path(str(SNIPPETS / name), run_name="__main__")
    capsys.readouterr()


def _rst_files() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.rst") if "_build" not in p.parts)


def test_every_snippet_is_shown() -> None:
    """A script nobody includes is an example nobody reads."""
    included = set()
    for rst in _rst_files():
        for m in re.finditer(r"^\.\. literalinclude:: (\S+)", rst.read_text(), re.M):
            target = (rst.parent / m.group(1)).resolve()
            assert target.exists(), f"{rst.relative_to(REPO)} includes missing {m.group(1)}"
            included.add(target)
    for name in [*_snippets(), *HELPERS]:
        assert (SNIPPETS / name).resolve() in included, f"docs/snippets/{name} is not shown"


def test_every_example_program_is_described() -> None:
    """docs/examples.rst describes each program of examples/ and shows how
    to run it."""
    page = (DOCS / "examples.rst").read_text()
    for script in sorted((REPO / "examples").glob("*.py")):
        assert f"``{script.name}``" in page, f"examples/{script.name} is not described"
        assert f"python3 examples/{script.name} " in page, f"no command line for {script.name}"


def test_documented_cli_commands_exist() -> None:
    """Every ``pyvfio <command>`` the pages mention is a command, and the
    read-only ones run on a fake machine."""
    from pyvfio.setup import cli

    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    mentioned = set()
    for rst in _rst_files():
        text = rst.read_text()
        mentioned |= set(re.findall(r"``pyvfio (\w+)", text))
        for block in re.findall(r"^\.\. code-block:: sh\n\n((?:[ \t]+.*\n|\n)+)", text, re.M):
            mentioned |= set(re.findall(r"(?:^|[\s/])pyvfio (\w+)", block))
    assert mentioned, "the pages mention no pyvfio command"
    unknown = mentioned - set(commands)
    assert not unknown, f"documented commands that do not exist: {sorted(unknown)}"
    for command in {"doctor", "status", "groups"} & mentioned:
        assert cli.main([command, "--fake", "default"]) in (0, 1), command


# -- the build ---------------------------------------------------------------------------


def _docs_conf() -> Any:
    """docs/conf.py as a module (it finds the Python inventory)."""
    spec = importlib.util.spec_from_file_location("pyvfio_docs_conf", DOCS / "conf.py")
    assert spec is not None and spec.loader is not None
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    return conf


@pytest.fixture(scope="module")
def html(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The HTML build of the documentation: warnings are errors and every
    cross-reference must resolve (``-n``)."""
    import sphinx  # noqa: F401  (a test dependency: missing, the test fails)
    assert _docs_conf().PYTHON_INVENTORY is not None, (
        "no objects.inv of the Python documentation: standard-library references "
        "could not be checked. Install it (Debian: apt-get install python3.11-doc) or "
        "point PYVFIO_PYTHON_INVENTORY at a copy")
    out = tmp_path_factory.mktemp("html")
    cmd = [sys.executable, "-m", "sphinx", "-n", "-W", "--keep-going", "-q", "-b", "html",
           "-d", str(out / ".doctrees"), str(DOCS), str(out)]
    env = dict(os.environ, PYTHONWARNINGS="ignore::ResourceWarning")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (
        "sphinx-build -n -W failed:\n" + proc.stderr[-6000:] + proc.stdout[-2000:])
    yield out


def test_docs_build_without_warnings(html: Path) -> None:
    for page in ("index", "tutorial", "errno", "howto/setup", "howto/driver",
                 "howto/testing", "howto/migrate", "howto/vm", "api/index", "internals"):
        assert (html / f"{page}.html").exists(), page


def _documented_ids(html: Path) -> set[str]:
    ids: set[str] = set()
    for page in html.rglob("*.html"):
        if "_modules" in page.parts:
            continue
        text = page.read_text(encoding="utf-8")
        ids |= set(re.findall(r'<dt class="sig sig-object py[^"]*" id="([^"]+)"', text))
        ids |= {m for m in re.findall(r'id="module-([\w.]+)"', text)}
    return ids


def _resolve(dotted: str) -> Any:
    """The object a documented dotted name stands for (or a sentinel)."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for attr in parts[i:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return _MISSING
        return obj
    return _MISSING


_MISSING = object()


def _inventory(html: Path) -> dict[str, tuple[str, int]]:
    """Every object of the built ``objects.inv``: name -> (role, priority);
    priority -1 marks an alias (a canonical name Sphinx added)."""
    head, _, body = (html / "objects.inv").read_bytes().partition(b"zlib.\n")
    assert head.startswith(b"# Sphinx inventory version 2"), head[:60]
    entries: dict[str, tuple[str, int]] = {}
    for line in zlib.decompress(body).decode().splitlines():
        m = re.match(r"(.+?) (\S+:\S+) (-?\d+) ", line)
        if m:
            entries[m.group(1)] = (m.group(2), int(m.group(3)))
    return entries


def _public_modules() -> list[str]:
    return sorted({*_docs_conf().public_modules(), *API_MODULES})


def test_every_top_level_name_has_its_own_entry(html: Path) -> None:
    """``pyvfio.X`` for each X of ``pyvfio.__all__``: the name users import
    is the name the reference documents (and ``:class:`pyvfio.X``` links)."""
    import pyvfio

    inventory = _inventory(html)
    missing = [name for name in pyvfio.__all__
               if inventory.get(f"pyvfio.{name}", ("", -1))[1] == -1
               or not inventory[f"pyvfio.{name}"][0].startswith("py:")]
    assert not missing, f"pyvfio.__all__ names without an entry of their own: {missing}"


def _unbound(obj: Any) -> Any:
    return getattr(obj, "__func__", obj)


@pytest.mark.parametrize("module_name", _public_modules())
def test_public_names_documented(html: Path, module_name: str) -> None:
    """Each name of a public module's ``__all__`` has an entry: under this
    module's name, or wherever the same object is documented (a re-export
    documented where it is defined, or as ``pyvfio.X``)."""
    inventory = _inventory(html)
    module = importlib.import_module(module_name)
    missing = []
    for name in getattr(module, "__all__", ()):
        if f"{module_name}.{name}" in inventory:
            continue
        obj = _unbound(getattr(module, name))
        same = [entry for entry in inventory
                if entry.rsplit(".", 1)[-1] == name and _unbound(_resolve(entry)) is obj]
        if not same:
            missing.append(name)
    assert not missing, f"{module_name}: not in the API reference: {missing}"


def test_the_inventory_check_sees_a_missing_entry(html: Path) -> None:
    """The two tests above can fail: a name nothing documents is missing."""
    inventory = _inventory(html)
    assert "pyvfio.IommuFd" in inventory and inventory["pyvfio.IommuFd"][1] != -1
    assert "pyvfio.core.iommufd.IommuFd" in inventory  # its canonical alias
    assert "pyvfio.core.resource.open_node" not in inventory  # not in __all__: no entry


def test_every_public_module_has_a_page(html: Path) -> None:
    """Every module directly under pyvfio (api/more.rst picks up those
    without a page of their own) and the fake kernel's public modules."""
    import pkgutil

    import pyvfio

    modules = [f"pyvfio.{m.name}" for m in pkgutil.iter_modules(pyvfio.__path__)
               if not m.name.startswith("_")]
    for layer in ("core", "toolkit", "setup", "testing"):
        package = importlib.import_module(f"pyvfio.{layer}")
        modules += [f"pyvfio.{layer}.{m.name}" for m in pkgutil.iter_modules(package.__path__)
                    if not m.name.startswith("_")]
    modules += ["pyvfio.backend.base", "pyvfio.backend.kernel", "pyvfio.fake.machine.topology",
                "pyvfio.fake.machine.pci", "pyvfio.fake.models", "pyvfio.fake.models.edu",
                "pyvfio.fake.models.nvme"]
    ids = _documented_ids(html)
    missing = [m for m in modules if m not in ids]
    assert not missing, f"modules without a page: {missing}"

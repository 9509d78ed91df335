"""Start-up: ``import pyvfio`` and the ``pyvfio`` command load only what is used.

``import pyvfio`` loads no other module of the package (each name of
``__all__`` is imported from its module on first use), and every name of
``__all__`` still resolves, to the object its module defines; the three
declarations of an export in ``pyvfio/__init__.py`` (the ``TYPE_CHECKING``
import, the lazy table, ``__all__``) agree.  The command's ``--help`` and
``status --json`` leave the fake kernel, the toolkit and the binding code
alone.  These are structural checks in fresh interpreters; how long
start-up takes is measured in bench/ (timing is never asserted here).
"""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

import pyvfio

REPO = Path(__file__).resolve().parent.parent

#: Prints the pyvfio modules (with cffi and importlib.metadata) loaded after running the code
#: given as argv[1] (its own output goes to /dev/null).
_PROBE = """
import contextlib, json, os, sys
with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
    try:
        exec(sys.argv[1])
    except SystemExit:
        pass
print(json.dumps(sorted(m for m in sys.modules
                        if m.split(".")[0] in ("pyvfio", "_cffi_backend")
                        or m == "importlib.metadata")))
"""


def loaded_after(code: str) -> set[str]:
    """The pyvfio modules a fresh interpreter has loaded after ``code``."""
    proc = subprocess.run([sys.executable, "-c", _PROBE, code], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.splitlines()[-1]))


def test_import_pyvfio_loads_nothing_else() -> None:
    assert loaded_after("import pyvfio") == {"pyvfio"}


def test_one_name_loads_its_module_only() -> None:
    mods = loaded_after("import pyvfio; pyvfio.VfioError")
    assert mods == {"pyvfio", "pyvfio.errors"}
    mods = loaded_after("from pyvfio import IommuFd")
    assert "pyvfio.core.iommufd" in mods
    assert not {m for m in mods if m.startswith(("pyvfio.fake", "pyvfio.toolkit",
                                                   "pyvfio.setup", "pyvfio.testing"))}


def test_every_name_of_all_resolves_to_its_definition() -> None:
    assert len(set(pyvfio.__all__)) == len(pyvfio.__all__)
    for name in pyvfio.__all__:
        value = getattr(pyvfio, name)
        source = importlib.import_module(pyvfio._SOURCE_OF[name], "pyvfio")
        assert value is getattr(source, name), name
        if name not in ("ffi", "lib", "Backend", "MemoryMap"):  # defined where declared
            assert value.__module__ == source.__name__, (name, value.__module__)
    assert pyvfio.IommuFd.__module__ == "pyvfio.core.iommufd"


def test_star_import_dir_and_missing_names() -> None:
    namespace: dict[str, object] = {}
    exec("from pyvfio import *", namespace)
    assert set(pyvfio.__all__) <= set(namespace)
    assert set(pyvfio.__all__) | {"__version__"} <= set(dir(pyvfio))
    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        pyvfio.NoSuchName  # noqa: B018
    with pytest.raises(ImportError):
        exec("from pyvfio import NoSuchName", {})
    with pytest.raises(AttributeError, match="no attribute 'nosuchmodule'"):
        pyvfio.core.nosuchmodule  # noqa: B018


def test_modules_reachable_as_attributes_after_a_plain_import() -> None:
    """``import pyvfio`` used to load core and toolkit: their modules stay
    reachable as attributes (loaded when named); the fake is not."""
    mods = loaded_after("import pyvfio; pyvfio.core.sysfs.PCI_DEVICES; "
                        "pyvfio.toolkit.dma.DmaBuffer; pyvfio.backend.base.Backend")
    assert {"pyvfio.core.sysfs", "pyvfio.toolkit.dma", "pyvfio.backend.base"} <= mods
    assert not any(m.startswith("pyvfio.fake") for m in mods)
    assert loaded_after("import pyvfio\ntry:\n    pyvfio.fake\nexcept AttributeError:\n"
                        "    pass") == {"pyvfio"}


def _declarations() -> tuple[dict[str, str], list[str]]:
    """From pyvfio/__init__.py's source: name -> module of the imports under
    ``if TYPE_CHECKING:``, and the literal ``__all__``."""
    tree = ast.parse((REPO / "pyvfio" / "__init__.py").read_text(encoding="utf-8"))
    imports: dict[str, str] = {}
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) \
                and node.test.id == "TYPE_CHECKING":
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom), ast.dump(stmt)
                for alias in stmt.names:
                    imports[alias.asname or alias.name] = "." * stmt.level + (stmt.module or "")
        elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            names = list(ast.literal_eval(node.value))
    return imports, names


def test_the_three_declarations_agree() -> None:
    imports, names = _declarations()
    assert names == pyvfio.__all__
    assert imports == pyvfio._SOURCE_OF
    assert set(names) == set(pyvfio._SOURCE_OF)


def test_cli_help_loads_no_objects_fake_or_toolkit() -> None:
    mods = loaded_after("from pyvfio.setup.cli import main; main(['--help'])")
    assert "pyvfio.setup.cli" in mods
    heavy = {m for m in mods if m.startswith(("pyvfio.fake", "pyvfio.toolkit", "pyvfio.core",
                                              "pyvfio.testing", "pyvfio._uapi"))}
    # (pyvfio.setup.binding_state is loaded: the help of --state, a common
    # option, shows its folder)
    heavy |= mods & {"pyvfio.setup.binding", "pyvfio.setup.devices",
                     "pyvfio.setup.environment", "pyvfio.setup.capture",
                     "pyvfio.setup.host_use", "_cffi_backend",
                     "importlib.metadata", "secrets"}  # --version looks the version up when asked
    assert not heavy
    assert "importlib.metadata" in loaded_after(
        "from pyvfio.setup.cli import main; main(['--version'])")


def test_help_names_the_state_folder(capsys: pytest.CaptureFixture[str]) -> None:
    """The help of the binding commands shows the binding state's folder,
    filled in when the help is formatted."""
    from pyvfio.setup import cli
    from pyvfio.setup.binding_state import STATE_DIR

    assert cli.main(["bind", "--help"]) == cli.EXIT_OK
    out = " ".join(capsys.readouterr().out.split())
    assert f"(default: {STATE_DIR}/bindings.json," in out and "<STATE_DIR>" not in out


def test_cli_status_json_loads_no_fake_toolkit_or_binding() -> None:
    """``status --json --real`` (this machine, read only) needs discovery,
    viability and host use; not the fake (which ``status`` shows instead on
    a machine without IOMMU groups, unless ``--real``), the toolkit, the
    objects or binding and environment checks."""
    mods = loaded_after("from pyvfio.setup.cli import main; main(['status', '--json', '--real'])")
    assert {"pyvfio.setup.devices", "pyvfio.core.viability", "pyvfio.setup.host_use"} <= mods
    heavy = {m for m in mods if m.startswith(("pyvfio.fake", "pyvfio.toolkit", "pyvfio.testing"))}
    heavy |= mods & {"pyvfio.setup.binding", "pyvfio.setup.environment", "pyvfio.setup.capture",
                     "pyvfio.core.device", "pyvfio.core.container", "pyvfio.core.iommufd"}
    assert not heavy

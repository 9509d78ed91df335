"""The nodes of the simulated sysfs (what kernfs keeps): attributes with
their ``show``/``store`` functions, symbolic links and directories whose
children are generated from the machine's state when they are looked at.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Callable, Union

__all__ = ["Attr", "Link", "Dir", "Node", "show_text", "rel", "attrs"]


@dataclass
class Attr:
    """An attribute file: ``show`` gives its contents (None: write-only),
    ``store`` takes one write (None: read-only)."""

    #: The attribute's show(): its contents.
    show: Callable[[], bytes] | None = None
    #: The attribute's store(): one write of the text; raises OSError.
    store: Callable[[str], None] | None = None


@dataclass
class Link:
    """A symbolic link."""

    #: Where the link points, relative to its folder (as readlink gives it).
    target: str


class Dir:
    """A directory; ``children()`` lists its nodes by name.

    ``lookup(name)``, when given, finds one child without generating the
    others (kernfs_find_ns next to kernfs_fop_readdir): a path walk through
    a folder of many devices then costs one entry, not the whole folder.
    It must give what ``children().get(name)`` gives.
    """

    def __init__(self, children: Callable[[], dict[str, Node]],
                 lookup: Callable[[str], Node | None] | None = None) -> None:
        self.children = children
        self._lookup = lookup

    def lookup(self, name: str) -> Node | None:
        """The child called ``name``, or None."""
        if self._lookup is not None:
            return self._lookup(name)
        return self.children().get(name)


#: Any node of the tree.
Node = Union[Attr, Link, Dir]


def show_text(s: str) -> Callable[[], bytes]:
    """A show() that gives the fixed text ``s``."""
    return lambda: s.encode()


@functools.lru_cache(maxsize=1 << 16)
def rel(from_dir: str, target: str) -> str:
    """Relative link from directory ``from_dir`` to ``target`` (both under /sys)."""
    both = from_dir + "\0" + target
    if from_dir[:1] != "/" or target[:1] != "/" or "/." in both or "//" in both \
            or from_dir.endswith("/") or target.endswith("/"):
        return os.path.relpath(target, from_dir)
    # both absolute and normal: what os.path.relpath gives, by components
    a, b = from_dir.split("/"), target.split("/")
    common = 0
    for x, y in zip(a, b):
        if x != y:
            break
        common += 1
    return "/".join([".."] * (len(a) - common) + b[common:]) or "."


def attrs(values: dict[str, str]) -> dict[str, Node]:
    """A folder of read-only attributes with fixed contents."""
    return {name: Attr(show=show_text(text)) for name, text in values.items()}

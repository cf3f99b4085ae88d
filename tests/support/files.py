"""Small file helpers shared by several test modules."""
from __future__ import annotations

import os
import textwrap


def write_yaml(tmp_path, text: str, name: str = "config.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def read_lines(path: str) -> list[str]:
    with open(path) as handle:
        return handle.read().splitlines()


def partial_files(root: str) -> list[str]:
    """The leftover temporary files (``*.partial``) of atomic writes below ``root``."""
    return [name for _, _, names in os.walk(root) for name in names if name.endswith(".partial")]


def page_references(path: str) -> list[str]:
    """The ``src`` and ``href`` targets of an HTML page, in order of appearance."""
    from html.parser import HTMLParser

    found = []

    class Parser(HTMLParser):
        def handle_starttag(self, tag, attributes):
            found.extend(value for name, value in attributes if name in ("src", "href") and value)

    with open(path, encoding="utf-8") as handle:
        Parser().feed(handle.read())
    return found

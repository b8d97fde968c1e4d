"""YAML loading that remembers where each key was written, so errors can name the line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from autoprune.errors import ConfigError

__all__ = ["Loc", "line_of", "load_yaml_with_lines"]

Loc = tuple[str | int, ...]


def _walk(node: yaml.Node, path: Loc, lines: dict[Loc, int]) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:  # PyYAML keeps the last silently; a key written twice is almost always a mistake
                where = ".".join(str(p) for p in (*path, key))
                raise ConfigError(f"field '{where}' (line {key_node.start_mark.line + 1}): written twice")
            seen.add(key)
            lines[(*path, key)] = key_node.start_mark.line + 1
            _walk(value_node, (*path, key), lines)
            lines[(*path, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*path, i), lines)


def load_yaml_with_lines(path: Path) -> tuple[Any, dict[Loc, int]]:
    """Return the parsed document and a map from key path to 1-based line number."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    lines: dict[Loc, int] = {}
    if node is not None:
        try:
            _walk(node, (), lines)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
    return data, lines


def line_of(lines: dict[Loc, int], loc: Loc) -> int | None:
    """The line of the longest prefix of ``loc`` that the file contains."""
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None

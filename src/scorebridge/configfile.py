"""Config files: read one (naming the file and line when it is empty, not YAML, not a
mapping, or repeats a key) and find the line that sets a dotted key, for the errors of
`scorebridge.config`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

__all__ = ["read_config_file", "locate_key", "key_parts", "key_depth"]


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"a string ({value[:40]!r})"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    return type(value).__name__


def _yaml_problem(err: yaml.YAMLError, text: str) -> tuple[str, int | None]:
    """(message, line) of a YAML error: where the parser stopped or, when the file ends
    inside an open bracket, quote or block, where that opened (else its last line)."""
    problem = getattr(err, "problem", None) or str(err)
    context = getattr(err, "context", None)
    mark, opened = getattr(err, "problem_mark", None), getattr(err, "context_mark", None)
    end = len(text.rstrip())
    msg = f"not valid YAML: {problem}" + (f" ({context})" if context else "")
    if "'\\t'" in problem:
        msg += "; YAML indents with spaces, not tabs"
    if mark is not None and mark.index >= end:  # the file ends too early
        if opened is not None and opened.index < end:
            return f"not valid YAML: {problem} ({context}: it opens on this line and is never closed)", opened.line + 1
        last = text[:end].count("\n") + 1 if end else 1
        return f"not valid YAML: the file ends inside an open bracket, quote or block: {problem}" + (
            f" ({context})" if context else ""
        ), last
    return msg, (mark.line + 1 if mark is not None else None)


def read_config_file(path: str | Path) -> dict:
    """The mapping a YAML (or JSON) config file holds. ConfigError naming the file and
    line when it cannot be read, is not valid YAML, is empty or is not a mapping."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(None, f"cannot be read ({err})", file=path) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        msg, line = _yaml_problem(err, text)
        raise ConfigError(None, msg, file=path, line=line) from None
    _no_repeated_keys(node, path)
    expected = "expected a mapping of sections such as `era5:`, `sr:`, `bridge:` (config/README.md)"
    if data is None:
        raise ConfigError(None, f"empty (no settings, only blank lines or comments); {expected}", file=path, line=1)
    if not isinstance(data, dict):
        line = node.start_mark.line + 1 if node is not None else 1
        raise ConfigError(None, f"the top level is {_kind(data)}; {expected}", file=path, line=line)
    return data


def _no_repeated_keys(node, path) -> None:
    """ConfigError at the second of two equal keys in one mapping (YAML readers keep the
    last silently: a second `sr:` section would drop the first)."""
    stack = [(node, "")]
    while stack:
        n, where = stack.pop()
        if isinstance(n, yaml.MappingNode):
            seen: dict = {}
            for k, v in n.value:
                name = k.value if isinstance(k, yaml.ScalarNode) else None
                key = f"{where}.{name}" if where else str(name)
                if name is not None and name in seen:
                    raise ConfigError(
                        key,
                        f"given twice (lines {seen[name]} and {k.start_mark.line + 1}); the second would silently replace the first: merge them",
                        file=path,
                        line=k.start_mark.line + 1,
                    )
                if name is not None:
                    seen[name] = k.start_mark.line + 1
                stack.append((v, key))
        elif isinstance(n, yaml.SequenceNode):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(n.value))


def key_parts(key: str) -> list:
    """'era5.default.levels[0]' -> ['era5', 'default', 'levels', 0]."""
    return [int(i) if i else name for i, name in re.findall(r"\[(\d+)\]|([^.\[\]]+)", key)]


def key_depth(data: Any, parts: list) -> int:
    """How many leading `parts` of a key the nested dicts and lists `data` hold."""
    depth = 0
    for part in parts:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            break
        depth += 1
    return depth


def _node_line(root, parts: list) -> tuple[int, int | None]:
    """(how many leading parts of the key the YAML node tree holds, the line of the last)."""
    depth, line, node = 0, None, root
    for part in parts:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            match = next(((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == part), None)
            if match is None:
                break
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
        depth += 1
    return depth, line


def locate_key(files, key: str) -> tuple[Any, int] | None:
    """(file, line) where the dotted `key` is set among `files` (lowest precedence first):
    the file that holds most of the key (the last such file on a tie), at the line of the
    deepest part it holds; None when no file holds even its first part."""
    parts = key_parts(key)
    best = None
    for f in files:
        try:
            root = yaml.compose(Path(f).read_text(), Loader=yaml.SafeLoader)
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        depth, line = _node_line(root, parts)
        if depth and (best is None or depth >= best[0]):
            best = (depth, f, line)
    return None if best is None else (best[1], best[2])

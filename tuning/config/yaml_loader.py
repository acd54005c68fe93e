"""Reading a config file with PyYAML, bounded: a hostile file (alias bomb, deep nesting,
huge size, repeated key) and any syntax error become one ConfigError line naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tuning.config.validation_errors import printable
from tuning.errors import ConfigError, YamlLimitError, shown_value

# What one config file (or one text area of the web form) may hold. The shipped
# configs use a few hundred nodes, a few levels deep; these bounds are far above that
# and far below what could exhaust memory or Python's recursion limit.
MAX_YAML_BYTES = 1024 * 1024
MAX_YAML_DEPTH = 50
# Nodes after expanding every alias: a "billion laughs" file is small but expands
# to billions of nodes, so the expansion is counted, not the file.
MAX_YAML_NODES = 10_000
# Characters of all scalars after expanding aliases: an alias repeats a long string.
MAX_YAML_CHARS = MAX_YAML_BYTES

_MERGE_TAG = "tag:yaml.org,2002:merge"


def _too_large(problem: str) -> YamlLimitError:
    """A bound passed; read_yaml adds the file."""
    return YamlLimitError(f"{problem}.", fix="write the values out plainly: a config needs "
                                             "no deep nesting and no large repeated aliases.")


def _line(node_or_event: Any) -> int:
    return node_or_event.start_mark.line + 1


class BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses deep nesting, huge alias expansions and repeated keys."""

    def __init__(self, stream: Any):
        super().__init__(stream)
        self._depth = 0
        self._composed = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        # PyYAML composes recursively: past the bound, refuse before Python's own limit.
        self._depth += 1
        self._composed += 1
        try:
            if self._composed > MAX_YAML_NODES:
                line = _line(self.peek_event())
                raise _too_large(f"holds more than {MAX_YAML_NODES} values (line {line})")
            if self._depth > MAX_YAML_DEPTH:
                line = _line(self.peek_event())
                raise _too_large(f"nesting deeper than {MAX_YAML_DEPTH} levels at line {line}")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self) -> Any:
        node = super().compose_document()
        if node is not None:
            _ExpansionMeter().measure(node, level=1)
        return node

    def compose_mapping_node(self, anchor: Any) -> Any:
        # Checked as written, before `<<` merges add keys that may rightly repeat.
        node = super().compose_mapping_node(anchor)
        self._refuse_repeated_keys(node)
        return node

    def _refuse_repeated_keys(self, node: Any) -> None:
        first_line: dict[Any, int] = {}
        for key_node, _value in node.value:
            # `<<: *defaults` merges, and a key written next to it wins by design.
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            line = _line(key_node)
            try:
                seen = first_line.get(key)
            except TypeError:  # unhashable: PyYAML's own error names it
                continue
            if seen is not None:
                shown = key if isinstance(key, str) else shown_value(key)
                raise YamlLimitError(f"the same key appears twice in one mapping (lines {seen} "
                                     f"and {line}).", key=printable(shown),
                                     fix="keep one of them: the later one would silently win.")
            first_line[key] = line


class _ExpansionMeter:
    """Walks a composed YAML graph as the constructor will expand it, each shared (aliased)
    node measured once, and stops at the first bound passed."""

    def __init__(self) -> None:
        self._measured: dict[int, tuple[int, int, int]] = {}  # id -> nodes, chars, height
        self._open: set[int] = set()

    def measure(self, node: Any, *, level: int) -> tuple[int, int, int]:
        known = self._measured.get(id(node))
        if known is None:
            known = self._measure_new(node, level)
        nodes, chars, height = known
        if level + height - 1 > MAX_YAML_DEPTH:
            raise _too_large(f"aliases nest deeper than {MAX_YAML_DEPTH} levels "
                             f"(line {_line(node)})")
        return known

    def _measure_new(self, node: Any, level: int) -> tuple[int, int, int]:
        if id(node) in self._open:
            raise _too_large(f"an alias refers to a node that contains it (line {_line(node)})")
        if level > MAX_YAML_DEPTH:
            raise _too_large(f"aliases nest deeper than {MAX_YAML_DEPTH} levels "
                             f"(line {_line(node)})")
        self._open.add(id(node))
        nodes, chars, height = 1, 0, 1
        for child in self._children(node):
            child_nodes, child_chars, child_height = self.measure(child, level=level + 1)
            nodes, chars = nodes + child_nodes, chars + child_chars
            height = max(height, child_height + 1)
            self._check_size(nodes, chars, node)
        if isinstance(node, yaml.ScalarNode):
            chars = len(node.value)
            self._check_size(nodes, chars, node)
        self._open.discard(id(node))
        self._measured[id(node)] = (nodes, chars, height)
        return nodes, chars, height

    @staticmethod
    def _children(node: Any) -> list[Any]:
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        if isinstance(node, yaml.MappingNode):
            return [part for pair in node.value for part in pair]
        return []

    @staticmethod
    def _check_size(nodes: int, chars: int, node: Any) -> None:
        if nodes > MAX_YAML_NODES:
            raise _too_large(f"expands to more than {MAX_YAML_NODES} values once its "
                             f"aliases are expanded (line {_line(node)})")
        if chars > MAX_YAML_CHARS:
            raise _too_large(f"expands to more than {MAX_YAML_CHARS} characters once its "
                             f"aliases are expanded (line {_line(node)})")


def _refuse_oversized(path: Path) -> None:
    # Before parsing: PyYAML holds the whole text and every token of it in memory.
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise ConfigError(f"file is larger than {MAX_YAML_BYTES} bytes (got {size} bytes).",
                          file=str(path),
                          fix="a config file holds settings, not data: shorten it.")


def read_yaml(path: Path) -> dict[str, Any]:
    """Read one YAML mapping; an empty file is an empty mapping."""
    if not path.is_file():
        raise ConfigError("file not found.", file=str(path),
                          fix="pass an existing file, or copy one from configs/.")
    try:
        _refuse_oversized(path)
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=BoundedLoader)
    except YamlLimitError as exc:   # raised inside PyYAML, which does not know the file
        raise YamlLimitError(exc.message, file=str(path), key=exc.key, fix=exc.fix) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"YAML syntax error{where}: {problem}.", file=str(path),
                          fix="correct the YAML syntax (indentation, colons, quotes).") from None
    except UnicodeDecodeError:
        raise ConfigError("file is not UTF-8 text.", file=str(path),
                          fix="save it as UTF-8.") from None
    except OSError as exc:   # unreadable (permissions), or gone since the check above
        raise ConfigError(f"file cannot be read: {exc.strerror or exc}.", file=str(path),
                          fix="make it readable by this user (chmod a+r), or pass another.") from None
    except ValueError as exc:
        # The constructor's own checks: a date such as 2024-13-01, an integer past
        # Python's digit limit.
        raise ConfigError(f"a value cannot be read: {exc}.", file=str(path),
                          fix="quote it if it is text, or correct it.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"the top level must be a mapping, not {type(data).__name__}.",
                          file=str(path), fix="write `key: value` pairs at the top level.")
    return data

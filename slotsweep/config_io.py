"""Reading config and sweep files: safe YAML (YAML 1.2 floats, bounded depth and size),
`--set key=value` overrides, and the one-line messages that name the file and the key.
No torch here, and no model of a config: `slotsweep.config` and `slotsweep.sweep.spec`
build theirs on these."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-3` as a float (YAML 1.2), not the string YAML 1.1 gives."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    """Parse YAML safely (no object construction), with YAML 1.2 floats."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and the key path."""


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{path}."))
        else:
            out[path] = value
    return out


def parse_override(item: str) -> tuple[str, Any]:
    """`loss.beta=0.1` → ("loss.beta", 0.1); the value is parsed as YAML."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r}: expected key=value, e.g. loss.beta=0.1")
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from None
    return key.strip(), value


def apply_overrides(tree: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of `tree` with dotted keys set. Unknown keys are caught by validation."""
    tree = _deepcopy(tree)
    for dotted, value in overrides.items():
        node = tree
        *parents, leaf = dotted.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {dotted}: {part} is not a section")
            node = child
        node[leaf] = value
    return tree


def _deepcopy(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _deepcopy(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_deepcopy(v) for v in tree]
    return tree


# A trial config is three levels deep and a sweep file five; anything far deeper, or an
# alias that contains itself (infinitely deep), would exhaust the stack of the recursive
# steps after loading, and aliases of aliases ("billion laughs") would exhaust the memory.
_MAX_DEPTH = 64


_MAX_VALUES = 100_000


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Load a YAML mapping; syntax errors and non-mappings name the file (and line)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: not UTF-8 text (byte {raw[exc.start]:#04x} "
                          f"at offset {exc.start}); save the file as UTF-8") from None
    try:
        data = yaml_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{where}: YAML syntax error: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to read") from None
    except ValueError as exc:  # a scalar the safe constructor cannot build: 2024-13-01, a
        # 5000-digit integer
        raise ConfigError(f"{path}: a value cannot be read: {str(exc).split(';')[0]}") from None
    _check_size(data, path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def _check_size(data: Any, path: Path) -> None:
    """Refuse a tree deeper than _MAX_DEPTH (an alias inside itself is infinitely deep) or
    holding more than _MAX_VALUES values once aliases are expanded; iterative, bounded."""
    todo, seen = [(data, 0)], 0
    while todo:
        node, depth = todo.pop()
        seen += 1
        if depth > _MAX_DEPTH:
            raise ConfigError(f"{path}: nested more than {_MAX_DEPTH} levels deep (or an "
                              "alias refers to itself)")
        if seen > _MAX_VALUES:
            raise ConfigError(f"{path}: holds more than {_MAX_VALUES} values once its "
                              "aliases are expanded")
        if isinstance(node, dict):
            todo.extend((value, depth + 1) for value in node.values())
        elif isinstance(node, list):
            todo.extend((value, depth + 1) for value in node)


def format_validation_error(exc: ValidationError, source: str, root: type[BaseModel]) -> str:
    """One line per problem: `file: dotted.key: message (got value)`."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        kind, msg = err["type"], err["msg"]
        if kind == "extra_forbidden":
            msg = "unknown key" + _suggest(err["loc"], root)
        elif kind == "value_error":
            # Cross-field checks name their own key: "loss.beta: ..." or "resolution: ...".
            msg = msg.removeprefix("Value error, ")
            key, sep, rest = msg.partition(": ")
            if sep and " " not in key:
                loc = ".".join(filter(None, [loc, key]))
                msg = rest
        else:
            msg = f"{msg} (got {err['input']!r})" if "input" in err else msg
            msg = msg[0].lower() + msg[1:]
        lines.append(f"{source}: {loc or '<root>'}: {msg}")
    return "\n".join(lines)


def _suggest(loc: tuple[Any, ...], root: type[BaseModel]) -> str:
    model: Any = root
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return ""
        model = field.annotation
    names = list(getattr(model, "model_fields", {}))
    close = difflib.get_close_matches(str(loc[-1]), names, n=1)
    return f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(names)}"

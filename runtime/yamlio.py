r"""YAML with line numbers: what config errors need to name the file, the line and the field.

    >>> data, label, base = read('jtype: Deployment\nreplicas: 2\n')
    >>> data.lines['replicas'], label
    (2, '<yaml>')

:func:`read` parses a file (or YAML text with a newline) into :class:`Map` objects that
remember each key's line; :class:`Where` carries a location (file, line, path
like ``executors[1].replicas``) and makes the :class:`ConfigError` that names it;
:func:`substitute_env` replaces ``${{ ENV.VAR }}``. Used by :mod:`runtime.config`
(Deployment/Flow configs) and :mod:`runtime.uses` (Executor configs).
"""
from __future__ import annotations

import os
import re
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import yaml

from runtime.args import JINA_ONLY, check_kwargs


class Map(dict):
    """A mapping that remembers the line of each key (1-based)."""
    lines: Dict[Any, int]
    line: int = 0


class _Loader(yaml.SafeLoader):
    pass


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> Map:
    loader.flatten_mapping(node)
    out = Map()
    out.lines = {}
    out.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in out:
            raise ConfigError(f'line {key_node.start_mark.line + 1}: key {key!r} appears twice')
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = key_node.start_mark.line + 1
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file, the line and the field."""


class Where:
    """Where a value sits: the file and a path like ``executors[1].replicas``."""

    def __init__(self, source: str, path: str = '', line: int = 0):
        self.source, self.path, self.line = source, path, line

    def at(self, key: Union[str, int], mapping: Any = None) -> 'Where':
        path = f'{self.path}[{key}]' if isinstance(key, int) else (f'{self.path}.{key}' if self.path else key)
        line = self.line
        if isinstance(mapping, Map):
            line = mapping.lines.get(key, mapping.line) if not isinstance(key, int) else mapping.line
        return Where(self.source, path, line)

    def item(self, i: int, value: Any) -> 'Where':
        line = value.line if isinstance(value, Map) else self.line
        return Where(self.source, f'{self.path}[{i}]', line)

    def error(self, msg: str) -> ConfigError:
        loc = self.source + (f', line {self.line}' if self.line else '')
        return ConfigError(f'{loc}: {self.path + ": " if self.path else ""}{msg}')


def read(source: str) -> Tuple[Any, str, str]:
    """``source`` (a path, or YAML text with a newline) -> (parsed data, label, base dir)."""
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str):
        raise ValueError(f'a config is a YAML file path or YAML text, got {type(source).__name__}')
    if '\n' in source:
        text, label, base = source, '<yaml>', os.getcwd()
    else:
        if not os.path.isfile(source):
            raise FileNotFoundError(f'config file {source!r} does not exist')
        label, base = source, os.path.dirname(os.path.abspath(source))
        text = _read_text(source)
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as e:
        raise ConfigError(f'{label}: {e}') from None
    except yaml.reader.ReaderError as e:   # a control character: no line/column marks, a position
        ch = chr(e.character) if isinstance(e.character, int) else e.character
        raise ConfigError(f'{label}: not a YAML text file: character {ch!r} at position {e.position} '
                          f'is not allowed in YAML ({e.reason})') from None
    except yaml.YAMLError as e:
        mark = getattr(e, 'problem_mark', None) or getattr(e, 'context_mark', None)
        where = f'line {mark.line + 1}, column {mark.column + 1}' if mark else 'unknown line'
        problem = getattr(e, 'problem', None) or str(e)
        context = getattr(e, 'context', None)
        raise ConfigError(f'{label}: YAML syntax error at {where}: {problem}'
                          + (f' ({context})' if context else '')) from None
    return data, label, base


def _read_text(path: str) -> str:
    """A config file's text (UTF-8); a binary or otherwise unreadable file -> ConfigError naming it."""
    try:
        with open(path, 'rb') as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f'{path}: cannot read the config file: {e.strerror or e}') from None
    try:
        return raw.decode('utf-8')
    except UnicodeDecodeError as e:
        line = raw.count(b'\n', 0, e.start) + 1
        raise ConfigError(f'{path}: not a YAML text file: byte {raw[e.start:e.start + 1]!r} at line {line} '
                          f'(offset {e.start}) is not UTF-8 text; a config is a UTF-8 YAML file') from None


# ----------------------------------------------------------------------------- ${{ ENV.VAR }}

_ENV_RE = re.compile(r'\$\{\{\s*(?:ENV|env)\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}')


def substitute_env(value: Any, where: Where, environ: Optional[Dict[str, str]] = None) -> Any:
    """Replace ``${{ ENV.VAR }}`` in every string of ``value`` (a parsed YAML tree)."""
    environ = os.environ if environ is None else environ
    if isinstance(value, Map):
        out = Map()
        out.lines, out.line = value.lines, value.line
        for k, v in value.items():
            out[k] = substitute_env(v, where.at(k, value), environ)
        return out
    if isinstance(value, dict):
        return {k: substitute_env(v, where.at(k), environ) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_env(v, where.item(i, v), environ) for i, v in enumerate(value)]
    if not isinstance(value, str) or '${{' not in value:
        return value

    def lookup(m: 're.Match') -> str:
        var = m.group(1)
        if var not in environ:
            raise where.error(f'{m.group(0)}: environment variable {var} is not set')
        return environ[var]

    whole = _ENV_RE.fullmatch(value.strip())
    if whole:
        raw = lookup(whole)
        try:
            parsed = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            return raw
        return parsed if isinstance(parsed, (int, float, bool)) else raw
    out = _ENV_RE.sub(lookup, value)
    if '${{' in out:
        raise where.error(f'{value!r}: only ${{{{ ENV.VAR }}}} expressions are supported')
    return out


def type_name(v: Any) -> str:
    """How an error names the type of ``v``: ``type_name(3) == 'an integer'``."""
    return {str: 'a string', int: 'an integer', float: 'a number', bool: 'a boolean', list: 'a list',
            type(None): 'null'}.get(type(v), 'a mapping' if isinstance(v, dict) else type(v).__name__)


def check_keys(mapping: dict, allowed: Sequence[str], where: Where, what: str) -> None:
    """Refuse a key that is not in ``allowed``, naming it, its line and the closest valid key."""
    for key in mapping:
        line = mapping.lines.get(key, mapping.line) if isinstance(mapping, Map) else where.line
        w = Where(where.source, where.path, line)
        if not isinstance(key, str):
            raise w.error(f'keys are strings; got {key!r}')
        if key in allowed:
            continue
        if key in JINA_ONLY:
            raise w.error(f'unknown key {key!r} in {what}: {JINA_ONLY[key]}')
        try:
            check_kwargs({key: mapping[key]}, list(allowed), what)
        except ValueError as e:
            raise w.error(str(e).replace(f'{what} got an unknown argument', 'unknown key')
                          .replace(' (valid:', f' (valid in {what}:')) from None


def plain(v: Any) -> Any:
    """Map -> dict, recursively (specs are plain data)."""
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [plain(x) for x in v]
    return v


def source_label(source: Any) -> str:
    """What errors call ``source``: its path, or ``<yaml>`` for YAML text."""
    s = os.fspath(source) if isinstance(source, os.PathLike) else str(source)
    return '<yaml>' if '\n' in s else s

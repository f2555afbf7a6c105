"""YAML configs for Deployments and Flows: load, validate, dump.

The format mirrors Jina's::

    jtype: Deployment            # arguments at top level, or under `with:`
    with:
      name: indexer
      uses: my_pkg.executors:Indexer
      replicas: 3
      env: {OMP_NUM_THREADS: '1'}

    jtype: Flow
    with: {port: 5555}           # the gateway's arguments
    executors:
      - name: encoder
        uses: {jtype: Encoder, with: {dim: 128}, py_modules: [encoder.py]}
        replicas: 2
      - name: indexer
        uses: Indexer
        py_modules: [indexer.py]
        shards: 2
        polling: {/search: ALL, '*': ANY}

``uses`` is ``package.module:Class``, a class name found in ``py_modules``
(paths relative to the YAML file), a nested ``{jtype, with, py_modules}``
mapping, or the path of such an Executor YAML. ``${{ ENV.VAR }}`` is replaced
by the environment variable (a value that is only the expression is read as a
YAML scalar, so ``replicas: ${{ ENV.N }}`` gives an int).

Unlike Jina, a bad config is refused, never half-used: a syntax error names the
line; an unknown key names the key and suggests the closest valid one; a wrong
type names the field and the expected type; a hub reference (``jinaai://``)
says what to write instead.

The *spec* is the normalized, plain-data form of a config (defaults dropped,
``py_modules`` absolute): ``load_spec(path) == load_spec(save(load(path)))``.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
import os
import re
import sys
import tempfile
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import yaml

from runtime.deployment import DEPLOYMENT_ARGS, Deployment, check_kwargs

HUB_PREFIXES = ('jinaai://', 'jinahub://', 'jinahub+docker://', 'jinaai+docker://', 'jinahub+sandbox://')
ECHO = 'runtime.executors.echo:Echo'

# field -> (allowed Python types, how to say it)
_INT = ((int,), 'an integer')
_BOOL = ((bool,), 'true or false')
_STR = ((str,), 'a string')
_DICT = ((dict,), 'a mapping')
FIELD_TYPES: Dict[str, Tuple[tuple, str]] = {
    'name': _STR, 'uses': ((str, dict), "'package.module:Class', a class name, or a mapping"),
    'uses_with': _DICT, 'replicas': _INT, 'shards': _INT,
    'polling': ((str, dict), "'ANY', 'ALL' or a mapping of endpoint -> 'ANY'/'ALL'"),
    'port': ((int, list), 'a port number (or a list of ports with external: true)'),
    'host': ((str, list), 'a host (or a list of hosts with external: true)'),
    'env': _DICT, 'workspace': _STR, 'timeout_ready': ((int, float), 'a number of seconds'),
    'stateful': _BOOL, 'peer_ports': ((list, dict), 'a list of ports (or a mapping shard -> ports)'),
    'raft_configuration': _DICT, 'raft_password': _STR, 'read_consistency': _STR,
    'external': _BOOL, 'max_in_flight_per_replica': _INT, 'blas_threads': _INT, 'log_dir': _STR,
    'no_reduce': _BOOL, 'allow_partial': _BOOL, 'stream_logs': _BOOL,
    'needs': ((str, list), 'an Executor name or a list of names'),
    'py_modules': ((str, list), 'a file path or a list of file paths'), 'log_level': _STR,
    'protocol': _STR,
}
_USES_KEYS = ('jtype', 'with', 'py_modules', 'metas')
_JINA_ONLY = {
    'install_requirements': 'it installs Jina Hub Executors; hub Executors are not supported here: '
                            'install the package yourself and write uses: package.module:Class',
    'uses_metas': "use 'uses: {jtype: Class, metas: {py_modules: [...]}}' or 'py_modules'",
    'gpus': "use env: {CUDA_VISIBLE_DEVICES: RR} to spread replicas over GPUs",
}


# ----------------------------------------------------------------------------- YAML with line numbers

class _Map(dict):
    """A mapping that remembers the line of each key (1-based)."""
    lines: Dict[Any, int]
    line: int = 0


class _Loader(yaml.SafeLoader):
    pass


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    out = _Map()
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


class _Where:
    """Where a value sits: the file and a path like ``executors[1].replicas``."""

    def __init__(self, source: str, path: str = '', line: int = 0):
        self.source, self.path, self.line = source, path, line

    def at(self, key: Union[str, int], mapping: Any = None) -> '_Where':
        path = f'{self.path}[{key}]' if isinstance(key, int) else (f'{self.path}.{key}' if self.path else key)
        line = self.line
        if isinstance(mapping, _Map):
            line = mapping.lines.get(key, mapping.line) if not isinstance(key, int) else mapping.line
        return _Where(self.source, path, line)

    def item(self, i: int, value: Any) -> '_Where':
        line = value.line if isinstance(value, _Map) else self.line
        return _Where(self.source, f'{self.path}[{i}]', line)

    def error(self, msg: str) -> ConfigError:
        loc = self.source + (f', line {self.line}' if self.line else '')
        return ConfigError(f'{loc}: {self.path + ": " if self.path else ""}{msg}')


def _read(source: str) -> Tuple[Any, str, str]:
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
        with open(source, encoding='utf-8') as f:
            text = f.read()
        label, base = source, os.path.dirname(os.path.abspath(source))
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as e:
        raise ConfigError(f'{label}: {e}') from None
    except yaml.YAMLError as e:
        mark = getattr(e, 'problem_mark', None) or getattr(e, 'context_mark', None)
        where = f'line {mark.line + 1}, column {mark.column + 1}' if mark else 'unknown line'
        problem = getattr(e, 'problem', None) or str(e)
        context = getattr(e, 'context', None)
        raise ConfigError(f'{label}: YAML syntax error at {where}: {problem}'
                          + (f' ({context})' if context else '')) from None
    return data, label, base


# ----------------------------------------------------------------------------- ${{ ENV.VAR }}

_ENV_RE = re.compile(r'\$\{\{\s*(?:ENV|env)\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}')


def substitute_env(value: Any, where: _Where, environ: Optional[Dict[str, str]] = None) -> Any:
    """Replace ``${{ ENV.VAR }}`` in every string of ``value`` (a parsed YAML tree)."""
    environ = os.environ if environ is None else environ
    if isinstance(value, _Map):
        out = _Map()
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


# ----------------------------------------------------------------------------- validation

def _defaults(func) -> Dict[str, Any]:
    return {k: p.default for k, p in inspect.signature(func).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _deployment_defaults() -> Dict[str, Any]:
    d = _defaults(Deployment.__init__)
    d.update({'needs': None, 'py_modules': None})
    return d


def _check_type(key: str, value: Any, where: _Where) -> None:
    types, say = FIELD_TYPES.get(key, ((object,), 'any value'))
    ok = isinstance(value, types)
    if ok and isinstance(value, bool) and bool not in types:
        ok = False  # `replicas: true` is not an integer
    if not ok:
        raise where.error(f'expected {say}, got {value!r} ({_type_name(value)})')


def _type_name(v: Any) -> str:
    return {str: 'a string', int: 'an integer', float: 'a number', bool: 'a boolean', list: 'a list',
            type(None): 'null'}.get(type(v), 'a mapping' if isinstance(v, dict) else type(v).__name__)


def _check_keys(mapping: dict, allowed: Sequence[str], where: _Where, what: str) -> None:
    """Refuse a key that is not in ``allowed``, naming it, its line and the closest valid key."""
    for key in mapping:
        line = mapping.lines.get(key, mapping.line) if isinstance(mapping, _Map) else where.line
        w = _Where(where.source, where.path, line)
        if not isinstance(key, str):
            raise w.error(f'keys are strings; got {key!r}')
        if key in allowed:
            continue
        if key in _JINA_ONLY:
            raise w.error(f'unknown key {key!r} in {what}: {_JINA_ONLY[key]}')
        try:
            check_kwargs({key: None}, list(allowed), what)
        except ValueError as e:
            raise w.error(str(e).replace(f'{what} got an unknown argument', f'unknown key')
                          .replace(' (valid:', f' (valid in {what}:')) from None


def _abs_paths(value: Any, where: _Where, base: str) -> List[str]:
    paths = [value] if isinstance(value, str) else value
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise where.error(f'expected a file path or a list of file paths, got {value!r}')
    out = []
    for p in paths:
        full = os.path.normpath(os.path.join(base, os.path.expanduser(p)))
        if not os.path.isfile(full):
            raise where.error(f'py_modules file {p!r} does not exist (looked for {full})')
        out.append(full)
    return out


def _norm_uses(uses: Any, where: _Where, base: str) -> Any:
    """Check ``uses`` and make its paths absolute; hub references are refused here."""
    if uses is None:
        return None
    if isinstance(uses, str):
        u = uses.strip()
        if u.startswith(HUB_PREFIXES):
            raise where.error(
                f'{u!r} is a Jina Hub reference; hub references are not supported. Install the '
                "Executor's package and write 'uses: package.module:ClassName', or put the class in "
                "a file and write 'uses: ClassName' with 'py_modules: [file.py]'")
        if u.startswith('docker://'):
            raise where.error(f'{u!r}: container images are not supported; run the image yourself and '
                              'add it with external: true, host and port')
        if u.lower().endswith(('.yml', '.yaml')):
            full = os.path.normpath(os.path.join(base, os.path.expanduser(u)))
            if not os.path.isfile(full):
                raise where.error(f'Executor config {u!r} does not exist (looked for {full})')
            return full
        if u == ECHO:
            return None
        return u
    if isinstance(uses, dict):
        _check_keys(uses, _USES_KEYS, where, 'uses')
        jtype = uses.get('jtype')
        if not isinstance(jtype, str) or not jtype:
            raise where.at('jtype', uses).error(
                f'expected the Executor class name (or package.module:Class), got {jtype!r}')
        out: Dict[str, Any] = {'jtype': _norm_uses(jtype, where.at('jtype', uses), base)}
        with_ = uses.get('with')
        if with_ is not None:
            if not isinstance(with_, dict):
                raise where.at('with', uses).error(f'expected a mapping of constructor arguments, got {with_!r}')
            if with_:
                out['with'] = _plain(with_)
        mods: List[str] = []
        if uses.get('py_modules') is not None:
            mods += _abs_paths(uses['py_modules'], where.at('py_modules', uses), base)
        metas = uses.get('metas')
        if metas is not None:
            mw = where.at('metas', uses)
            if not isinstance(metas, dict):
                raise mw.error(f'expected a mapping, got {metas!r}')
            _check_keys(metas, ('py_modules',), mw, 'metas')
            if metas.get('py_modules') is not None:
                mods += _abs_paths(metas['py_modules'], mw.at('py_modules', metas), base)
        if mods:
            out['py_modules'] = mods
        return out
    if isinstance(uses, type):
        return uses
    raise where.error(f"expected 'package.module:Class', a class name, or a mapping, got {uses!r}")


def _is_default(value: Any, default: Any) -> bool:
    """``replicas: 1`` and ``timeout_ready: 60`` are defaults; ``stateful: 0`` is not ``false``."""
    if default is None:
        return False
    return value == default and isinstance(value, bool) == isinstance(default, bool)


def _plain(v: Any) -> Any:
    """_Map -> dict, recursively (specs are plain data)."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def normalize_deployment_args(args: dict, where: _Where, base: str, allowed: Sequence[str] = DEPLOYMENT_ARGS
                              ) -> Dict[str, Any]:
    """Validate a Deployment's (or a Flow Executor's) arguments -> their spec (defaults dropped)."""
    _check_keys(args, allowed, where, 'an Executor' if where.path else 'a Deployment')
    defaults = _deployment_defaults()
    out: Dict[str, Any] = {}
    for key in DEPLOYMENT_ARGS:
        if key not in args:
            continue
        value, w = args[key], where.at(key, args)
        if value is None:
            continue
        if key == 'uses':
            value = _norm_uses(value, w, base)
            if value is None:
                continue
        else:
            _check_type(key, value, w)
        if key == 'py_modules':
            value = _abs_paths(value, w, base)
        elif key in ('workspace', 'log_dir'):
            value = os.path.normpath(os.path.join(base, os.path.expanduser(value)))
        elif key == 'env':
            for k, v in value.items():
                if not isinstance(k, str) or isinstance(v, (dict, list)):
                    raise w.at(str(k)).error(f'environment values are strings or numbers, got {v!r}')
            value = {k: (None if v is None else str(v) if not isinstance(v, bool) else str(v).lower())
                     for k, v in value.items()}
        elif key == 'polling':
            value = _norm_polling(value, w)
        elif key == 'needs':
            value = [value] if isinstance(value, str) else list(value)
            if not all(isinstance(n, str) for n in value):
                raise w.error(f'expected Executor names, got {value!r}')
        elif key == 'read_consistency' and value not in ('eventual', 'strong'):
            raise w.error(f"expected 'eventual' or 'strong', got {value!r}")
        value = _plain(value)
        if value == {} and key != 'polling':
            continue
        if _is_default(value, defaults.get(key)):
            continue
        if key == 'host' and value == '127.0.0.1':
            continue
        out[key] = value
    return out


def _norm_polling(value: Any, where: _Where) -> Any:
    from runtime.routing import PollingPolicy
    try:
        return PollingPolicy(_plain(value)).to_config()
    except ValueError as e:
        raise where.error(str(e)) from None


# ----------------------------------------------------------------------------- spec <-> YAML

def load_spec(source: str) -> Dict[str, Any]:
    """Parse and validate a ``jtype: Deployment`` or ``jtype: Flow`` config -> its spec."""
    data, label, base = _read(source)
    where = _Where(label)
    if not isinstance(data, dict):
        raise where.error(f'a config is a mapping with a `jtype:` key, got {_type_name(data)}')
    data = substitute_env(data, where)
    jtype = data.get('jtype')
    if jtype == 'Deployment':
        return {'jtype': 'Deployment', 'with': _deployment_section(data, where, base)}
    if jtype == 'Flow':
        return _flow_spec(data, where, base)
    w = where.at('jtype', data)
    if jtype is None:
        raise where.error("missing `jtype:`; write 'jtype: Deployment' or 'jtype: Flow'")
    if isinstance(jtype, str) and jtype:
        raise w.error(f"jtype={jtype!r} is an Executor config, not a Deployment or Flow; use it as "
                      f"'uses: {os.path.basename(label)}' in one, or write 'jtype: Deployment' / 'jtype: Flow'")
    raise w.error(f"expected 'Deployment' or 'Flow', got {jtype!r}")


def _deployment_section(data: dict, where: _Where, base: str) -> Dict[str, Any]:
    top = _Map({k: v for k, v in data.items() if k not in ('jtype', 'with', 'version')})
    top.lines = dict(getattr(data, 'lines', {}))
    top.line = getattr(data, 'line', 0)
    with_ = data.get('with')
    if with_ is None:
        with_ = _Map()
        with_.lines, with_.line = {}, 0
    if not isinstance(with_, dict):
        raise where.at('with', data).error(f'expected a mapping of Deployment arguments, got {with_!r}')
    _check_keys(top, DEPLOYMENT_ARGS, where, 'a Deployment')
    for k in top:
        if k in with_:
            raise where.at(k, data).error(f'{k!r} is given both at top level and under `with:`; keep one')
    merged = _Map(with_)
    merged.lines = dict(getattr(with_, 'lines', {}))
    merged.line = getattr(with_, 'line', 0)
    for k, v in top.items():
        merged[k] = v
        merged.lines[k] = data.lines.get(k, 0) if isinstance(data, _Map) else 0
    spec = normalize_deployment_args(merged, _Where(where.source), base)
    spec.pop('needs', None)
    return spec


def _flow_spec(data: dict, where: _Where, base: str) -> Dict[str, Any]:
    from runtime.flow import FLOW_ARGS, Flow
    _check_keys(data, ('jtype', 'version', 'with', 'executors'), where, 'Flow')
    with_ = data.get('with') or {}
    ww = where.at('with', data)
    if not isinstance(with_, dict):
        raise ww.error(f'expected a mapping of Flow (gateway) arguments, got {with_!r}')
    _check_keys(with_, FLOW_ARGS, ww, 'Flow `with:`')
    defaults = _defaults(Flow.__init__)
    flow_with: Dict[str, Any] = {}
    for key in FLOW_ARGS:
        if key not in with_ or with_[key] is None:
            continue
        value = with_[key]
        _check_type(key, value, ww.at(key, with_))
        if key == 'host' and not isinstance(value, str):
            raise ww.at(key, with_).error(f'expected a string, got {value!r}')
        if key == 'log_dir':
            value = os.path.normpath(os.path.join(base, value))
        if _is_default(value, defaults.get(key)):
            continue
        flow_with[key] = value
    executors = data.get('executors') or []
    ew = where.at('executors', data)
    if not isinstance(executors, list):
        raise ew.error(f'expected a list of Executors, got {_type_name(executors)}')
    names: List[str] = []
    out = []
    for i, entry in enumerate(executors):
        w = ew.item(i, entry)
        if not isinstance(entry, dict):
            raise w.error(f'expected a mapping of Executor arguments, got {entry!r}')
        spec = normalize_deployment_args(entry, w, base)
        name = entry.get('name') if isinstance(entry.get('name'), str) else f'executor{i}'
        if name in names or name == 'gateway':
            raise w.at('name', entry).error(f'name {name!r} is used twice (or is reserved)')
        spec['name'] = name
        default_needs = [names[-1] if names else 'gateway']
        needs = spec.get('needs', default_needs)
        for n in needs:
            if n != 'gateway' and n not in names:
                raise w.at('needs', entry).error(
                    f'needs {n!r}, which is not an Executor listed before it; known: '
                    + ', '.join(repr(k) for k in ['gateway'] + names))
        if needs == default_needs:
            spec.pop('needs', None)
        else:
            spec['needs'] = needs
        names.append(name)
        out.append(_ordered(spec))
    spec = {'jtype': 'Flow'}
    if flow_with:
        spec['with'] = flow_with
    spec['executors'] = out
    return spec


def _ordered(spec: Dict[str, Any]) -> Dict[str, Any]:
    return {k: spec[k] for k in DEPLOYMENT_ARGS if k in spec}


def dump_spec(spec: Dict[str, Any], path: Optional[str] = None) -> str:
    """A spec -> YAML text (``py_modules`` and nested paths relative to ``path``'s folder)."""
    base = os.path.dirname(os.path.abspath(path)) if path else None

    def rel(v: Any, key: str = '') -> Any:
        if isinstance(v, dict):
            return {k: rel(x, k) for k, x in v.items()}
        if isinstance(v, list):
            return [rel(x, key) for x in v]
        if base and isinstance(v, str) and os.path.isabs(v) and (
                key == 'py_modules' or (key in ('uses', 'jtype') and v.lower().endswith(('.yml', '.yaml')))):
            return os.path.relpath(v, base)
        return v

    return yaml.safe_dump(rel(spec), sort_keys=False, default_flow_style=False, allow_unicode=True)


# ----------------------------------------------------------------------------- objects <-> spec

def uses_reference(uses: Any) -> Any:
    """What a config writes for ``uses``: a string, a nested mapping, or None (the default Echo)."""
    if uses is None or uses == ECHO:
        return None
    if isinstance(uses, type):
        module = getattr(uses, '__module__', '')
        qual = getattr(uses, '__qualname__', uses.__name__)
        if module in ('__main__', '') or '<locals>' in qual or module.startswith('__'):
            raise ValueError(
                f'cannot save uses={uses.__name__} to YAML: the class is defined in a notebook cell or '
                'script, which a config cannot name. Move it into a module and write '
                "uses='package.module:ClassName', or use uses=ClassName with py_modules=['file.py']")
        return f'{module}:{qual}'
    return uses


def deployment_spec(dep: Deployment, flow_entry: bool = False) -> Dict[str, Any]:
    """A Deployment's current arguments as a spec (defaults dropped)."""
    raw: Dict[str, Any] = {'name': dep.name,
                           'uses': uses_reference(getattr(dep, '_uses_source', dep.uses)),
                           'uses_with': getattr(dep, '_uses_with_source', dep.uses_with), 'replicas': dep.replicas, 'shards': dep.shards,
                           'polling': dep.polling.to_config(), 'env': dep.env, 'workspace': dep.workspace,
                           'timeout_ready': dep.timeout_ready, 'stateful': dep.stateful,
                           'peer_ports': dep.peer_ports, 'raft_configuration': dep.raft_configuration,
                           'raft_password': dep.raft_password, 'read_consistency': dep.read_consistency,
                           'external': dep.external,
                           'max_in_flight_per_replica': dep.max_in_flight_per_replica,
                           'blas_threads': dep.blas_threads, 'no_reduce': dep.no_reduce,
                           'allow_partial': dep.allow_partial, 'stream_logs': dep.stream_logs,
                           'log_level': dep.log_level, 'py_modules': dep.py_modules}
    if dep.external:
        raw['host'] = list(dep.external_addresses)
    else:
        raw['host'] = dep.host
        raw['port'] = dep._port_arg
    if not _generated_log_dir(dep):
        raw['log_dir'] = dep.log_dir
    base = os.getcwd()
    spec = normalize_deployment_args(raw, _Where(f'Deployment {dep.name!r}'), base)
    if flow_entry:
        spec['name'] = dep.name
    return _ordered(spec)


def _generated_log_dir(orch: Any) -> bool:
    root = os.path.join(tempfile.gettempdir(), 'orchestra-nb', f'{orch.name}-{os.getpid()}-')
    return str(orch.log_dir).startswith(root)


def flow_spec(flow: Any) -> Dict[str, Any]:
    """A Flow's current graph as a spec."""
    from runtime.flow import Flow
    defaults = _defaults(Flow.__init__)
    with_: Dict[str, Any] = {}
    values = {'name': flow.name, 'port': flow._port_arg, 'host': flow.host, 'protocol': flow.protocol,
              'timeout_ready': flow.timeout_ready,
              'log_dir': None if _generated_log_dir(flow) else flow.log_dir,
              'max_in_flight_per_replica': flow.max_in_flight_per_replica, 'stream_logs': flow.stream_logs}
    for k, v in values.items():
        if v is not None and not _is_default(v, defaults.get(k)):
            with_[k] = v
    executors = []
    prev = 'gateway'
    for e in flow.entries:
        if e.is_join:
            spec: Dict[str, Any] = {'name': e.name}
        else:
            spec = deployment_spec(e.deployment, flow_entry=True)
            if e.replica_port is not None:
                spec['port'] = e.replica_port
        if list(e.needs) != [prev]:
            spec['needs'] = list(e.needs)
        else:
            spec.pop('needs', None)
        executors.append(_ordered(spec))
        prev = e.name
    out: Dict[str, Any] = {'jtype': 'Flow'}
    if with_:
        out['with'] = with_
    out['executors'] = executors
    return out


def to_spec(obj: Any) -> Dict[str, Any]:
    """A Deployment or Flow -> its spec."""
    from runtime.flow import Flow
    if isinstance(obj, Flow):
        return flow_spec(obj)
    if isinstance(obj, Deployment):
        spec = deployment_spec(obj)
        spec.pop('needs', None)
        return {'jtype': 'Deployment', 'with': spec}
    raise ValueError(f'expected a Deployment or a Flow, got {type(obj).__name__}')


def build(spec: Dict[str, Any]) -> Any:
    """A spec -> a (not started) Deployment or Flow."""
    if spec.get('jtype') == 'Deployment':
        return Deployment(**spec.get('with', {}))
    if spec.get('jtype') == 'Flow':
        from runtime.flow import Flow
        flow = Flow(**spec.get('with', {}))
        for entry in spec.get('executors', []):
            try:
                flow.add(**entry)
            except ValueError as e:
                raise ConfigError(f'Executor {entry.get("name")!r}: {e}') from None
        return flow
    raise ValueError(f"spec jtype must be 'Deployment' or 'Flow', got {spec.get('jtype')!r}")


def load(source: str) -> Any:
    """A YAML path (or text) -> a Deployment or a Flow, by its ``jtype``."""
    spec = load_spec(source)
    try:
        return build(spec)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f'{_label(source)}: {e}') from None


def load_deployment(source: str) -> Deployment:
    """``Deployment.load_config``: refuses a ``jtype: Flow`` config with a pointer to Flow."""
    spec = load_spec(source)
    if spec['jtype'] != 'Deployment':
        raise ConfigError(f'{_label(source)} is a jtype: {spec["jtype"]} config; use Flow.load_config')
    return load(source)


def load_flow(source: str) -> Any:
    """``Flow.load_config``: refuses a ``jtype: Deployment`` config with a pointer to Deployment."""
    spec = load_spec(source)
    if spec['jtype'] != 'Flow':
        raise ConfigError(f'{_label(source)} is a jtype: {spec["jtype"]} config; use Deployment.load_config')
    return load(source)


def save(obj: Any, path: str) -> None:
    """Write a Deployment or Flow as YAML (``load(path)`` rebuilds an equal spec)."""
    text = dump_spec(to_spec(obj), path)
    with open(path, 'w', encoding='utf-8') as f:
        f.write(text)


def _label(source: Any) -> str:
    s = os.fspath(source) if isinstance(source, os.PathLike) else str(source)
    return '<yaml>' if '\n' in s else s


# ----------------------------------------------------------------------------- resolving `uses`

def resolve_uses(uses: Any, uses_with: Optional[dict] = None, py_modules: Any = None,
                 base: Optional[str] = None) -> Tuple[Any, Optional[dict]]:
    """``uses`` as written -> (what a replica loads: a class or 'pkg.mod:Class', merged uses_with).

    Handles a class name found in ``py_modules``, a nested ``{jtype, with, py_modules}``
    mapping and the path of an Executor YAML (``jtype: ClassName``). ``uses_with``
    overrides the nested ``with:``.
    """
    base = base or os.getcwd()
    where = _Where('uses')
    mods = _abs_paths(py_modules, _Where('py_modules'), base) if py_modules else []
    if isinstance(uses, str) and uses.strip().lower().endswith(('.yml', '.yaml')):
        data, label, ybase = _read(os.path.join(base, uses))
        data = substitute_env(data, _Where(label))
        if not isinstance(data, dict) or not isinstance(data.get('jtype'), str):
            raise ConfigError(f'{label}: an Executor config is a mapping with `jtype: ClassName`')
        if data['jtype'] in ('Deployment', 'Flow'):
            raise ConfigError(f'{label} is a jtype: {data["jtype"]} config, not an Executor config; '
                              f'use {data["jtype"]}.load_config({label!r})')
        _check_keys(data, _USES_KEYS, _Where(label), 'an Executor config')
        uses = _norm_uses(data, _Where(label), ybase)
    elif isinstance(uses, dict):
        uses = _norm_uses(uses, where, base)
    if isinstance(uses, dict):
        merged = dict(uses.get('with') or {})
        merged.update(uses_with or {})
        uses_with = merged
        mods = list(uses.get('py_modules') or []) + mods
        uses = uses['jtype']
    if isinstance(uses, str) and uses.strip().startswith(HUB_PREFIXES):
        _norm_uses(uses, where, base)  # raises the hub message
    for m in mods:
        import_py_module(m)
    if isinstance(uses, str) and mods and uses.isidentifier():
        return find_class(uses, mods), uses_with
    if isinstance(uses, str) and uses.isidentifier():
        raise ConfigError(f"uses={uses!r} names a class but no py_modules say where it is; write "
                          f"'package.module:{uses}' or add py_modules: [file.py]")
    return uses, uses_with


def import_py_module(path: str):
    """Import a ``py_modules`` file by its name, its folder appended to ``sys.path``.

    Replicas are started with the owner's ``sys.path``, so they import it the same way.
    """
    path = os.path.abspath(path)
    folder, fname = os.path.split(path)
    stem = os.path.splitext(fname)[0]
    if not stem.isidentifier():
        raise ConfigError(f'py_modules file {path!r}: {stem!r} is not a valid module name; rename the file')
    existing = sys.modules.get(stem)
    if existing is not None:
        if os.path.abspath(getattr(existing, '__file__', '') or '') == path:
            return existing
        raise ConfigError(f'py_modules file {path!r}: a different module named {stem!r} is already '
                          f'imported (from {getattr(existing, "__file__", "?")}); rename the file')
    if folder not in sys.path:
        sys.path.append(folder)
    module = importlib.import_module(stem)
    if os.path.abspath(getattr(module, '__file__', '') or '') != path:
        raise ConfigError(f'py_modules file {path!r}: importing {stem!r} found {module.__file__} first; '
                          'rename the file')
    return module


def find_class(name: str, modules: Sequence[str]) -> type:
    """The Executor class ``name`` defined in one of the ``py_modules`` files."""
    from runtime.executor import Executor
    found = []
    for path in modules:
        module = import_py_module(path)
        cls = getattr(module, name, None)
        if isinstance(cls, type) and issubclass(cls, Executor):
            return cls
        found += [k for k, v in vars(module).items()
                  if isinstance(v, type) and issubclass(v, Executor) and v is not Executor]
    close = difflib.get_close_matches(name, found, n=1)
    hint = f'; did you mean {close[0]!r}?' if close else ''
    raise ConfigError(f'uses={name!r}: no Executor class of that name in py_modules '
                      f'{[os.path.basename(m) for m in modules]}{hint} (found: {", ".join(found) or "none"})')

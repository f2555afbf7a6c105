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
Which keys exist, their types and defaults come from :mod:`runtime.args`;
``uses`` is checked by :mod:`runtime.uses`. This module builds no objects and
imports neither Deployment nor Flow: ``Deployment.load_config``,
``Flow.load_config`` and :func:`runtime.flow.load` build from the spec.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Dict, List, Optional, Sequence

import yaml

from runtime.args import (DEPLOYMENT_ARGS, FLOW_ADD_ARGS, FLOW_ARGS, FLOW_WIDE_ARGS, JINA_TRANSLATED, Arg, arg_names,
                          by_name, translate_jina_arguments)
from runtime.uses import normalize_uses, py_module_paths, uses_reference
from runtime.yamlio import ConfigError, Map, Where, check_keys, plain, read, substitute_env, type_name

__all__ = ['ConfigError', 'load_spec', 'dump_spec', 'normalize_deployment_args', 'deployment_spec', 'flow_spec',
           'to_spec', 'save', 'substitute_env']

_FLOW = by_name(FLOW_ARGS)
_FLOW_WIDE = by_name(FLOW_WIDE_ARGS)
_DEPLOYMENT_NAMES = arg_names(DEPLOYMENT_ARGS)


# ----------------------------------------------------------------------------- validation

def _check_type(arg: Arg, value: Any, where: Where) -> None:
    if not arg.accepts_type(value):   # `replicas: true` is not an integer
        raise where.error(f'expected {arg.say}, got {value!r} ({type_name(value)})')


def _is_default(value: Any, default: Any) -> bool:
    """``replicas: 1`` and ``timeout_ready: 60`` are defaults; ``stateful: 0`` is not ``false``."""
    if default is None:
        return False
    return value == default and isinstance(value, bool) == isinstance(default, bool)


def _normalize_value(arg: Arg, value: Any, w: Where, base: str) -> Any:
    """One checked value -> its spec form (paths absolute, env values strings, ...)."""
    if arg.name == 'uses':
        return normalize_uses(value, w, base)
    _check_type(arg, value, w)
    if arg.name == 'polling':
        return _norm_polling(value, w)
    if arg.form == 'paths':
        return py_module_paths(value, w, base)
    if arg.form == 'path':
        return os.path.normpath(os.path.join(base, os.path.expanduser(value)))
    if arg.form == 'env':
        for k, v in value.items():
            if not isinstance(k, str) or isinstance(v, (dict, list)):
                raise w.at(str(k)).error(f'environment values are strings or numbers, got {v!r}')
        return {k: (None if v is None else str(v) if not isinstance(v, bool) else str(v).lower())
                for k, v in value.items()}
    if arg.form == 'names':
        value = [value] if isinstance(value, str) else list(value)
        if not all(isinstance(n, str) for n in value):
            raise w.error(f'expected Executor names, got {value!r}')
    if arg.choices and value not in arg.choices:
        raise w.error(f'expected {" or ".join(repr(c) for c in arg.choices)}, got {value!r}')
    return value


def _normalize(schema: Sequence[Arg], args: dict, where: Where, base: str) -> Dict[str, Any]:
    """Checked ``args`` (a mapping whose keys are in ``schema``) -> their spec (defaults dropped)."""
    out: Dict[str, Any] = {}
    for arg in schema:
        if args.get(arg.name) is None:
            continue
        value = _normalize_value(arg, args[arg.name], where.at(arg.name, args), base)
        if value is None:
            continue
        value = plain(value)
        if value == {} and arg.name != 'polling':
            continue
        if _is_default(value, arg.default):
            continue
        out[arg.name] = value
    return out


def normalize_deployment_args(args: dict, where: Where, base: str) -> Dict[str, Any]:
    """Validate a Deployment's (or a Flow Executor's) arguments -> their spec (defaults dropped).

    >>> normalize_deployment_args({'replicas': 2, 'shards': 1}, Where('<dict>'), '.')
    {'replicas': 2}
    """
    check_keys(args, _DEPLOYMENT_NAMES, where, 'an Executor' if where.path else 'a Deployment')
    try:
        ours = translate_jina_arguments(args, 'Jina argument')   # volumes, uses_metas -> workspace, py_modules
    except ValueError as e:
        raise where.error(str(e)) from None
    if ours:
        merged = Map({k: v for k, v in args.items() if k not in JINA_TRANSLATED}, **ours)
        merged.lines, merged.line = dict(getattr(args, 'lines', {})), getattr(args, 'line', 0)
        args = merged
    return _normalize(DEPLOYMENT_ARGS, args, where, base)


def _norm_polling(value: Any, where: Where) -> Any:
    from runtime.specs import PollingPolicy
    try:
        return PollingPolicy(plain(value)).to_config()
    except ValueError as e:
        raise where.error(str(e)) from None


# ----------------------------------------------------------------------------- spec <-> YAML

def load_spec(source: str) -> Dict[str, Any]:
    """Parse and validate a ``jtype: Deployment`` or ``jtype: Flow`` config -> its spec."""
    data, label, base = read(source)
    where = Where(label)
    if not isinstance(data, dict):
        raise where.error(f'a config is a mapping with a `jtype:` key, got {type_name(data)}')
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


def _deployment_section(data: dict, where: Where, base: str) -> Dict[str, Any]:
    top = Map({k: v for k, v in data.items() if k not in ('jtype', 'with', 'version')})
    top.lines = dict(getattr(data, 'lines', {}))
    top.line = getattr(data, 'line', 0)
    with_ = data.get('with')
    if with_ is None:
        with_ = Map()
        with_.lines, with_.line = {}, 0
    if not isinstance(with_, dict):
        raise where.at('with', data).error(f'expected a mapping of Deployment arguments, got {with_!r}')
    check_keys(top, _DEPLOYMENT_NAMES, where, 'a Deployment')
    for k in top:
        if k in with_:
            raise where.at(k, data).error(f'{k!r} is given both at top level and under `with:`; keep one')
    merged = Map(with_)
    merged.lines = dict(getattr(with_, 'lines', {}))
    merged.line = getattr(with_, 'line', 0)
    for k, v in top.items():
        merged[k] = v
        merged.lines[k] = data.lines.get(k, 0) if isinstance(data, Map) else 0
    spec = normalize_deployment_args(merged, Where(where.source), base)
    spec.pop('needs', None)
    return spec


def _flow_spec(data: dict, where: Where, base: str) -> Dict[str, Any]:
    check_keys(data, ('jtype', 'version', 'with', 'executors'), where, 'Flow')
    with_ = data.get('with') or {}
    ww = where.at('with', data)
    if not isinstance(with_, dict):
        raise ww.error(f'expected a mapping of Flow (gateway) arguments, got {with_!r}')
    check_keys(with_, arg_names(FLOW_ARGS) + arg_names(FLOW_WIDE_ARGS), ww, 'Flow `with:`')
    flow_with = _normalize(FLOW_ARGS, with_, ww, base)
    flow_with.update(_normalize(FLOW_WIDE_ARGS, with_, ww, base))   # defaults of every Executor (Jina)
    executors = data.get('executors') or []
    ew = where.at('executors', data)
    if not isinstance(executors, list):
        raise ew.error(f'expected a list of Executors, got {type_name(executors)}')
    names: List[str] = []
    out = []
    for i, entry in enumerate(executors):
        w = ew.item(i, entry)
        if not isinstance(entry, dict):
            raise w.error(f'expected a mapping of Executor arguments, got {entry!r}')
        extra = {a.name: entry[a.name] for a in FLOW_ADD_ARGS if a.name in entry}   # floating
        rest = entry
        if extra:   # the entry less FLOW_ADD_ARGS, keeping its line numbers
            rest = Map({k: v for k, v in entry.items() if k not in extra})
            rest.lines, rest.line = dict(getattr(entry, 'lines', {})), getattr(entry, 'line', 0)
        spec = normalize_deployment_args(rest, w, base)
        spec.update(_normalize(FLOW_ADD_ARGS, extra, w, base))
        for k in _FLOW_WIDE:   # against the Flow's default of .add(): kept where it differs, even from ours
            if k in flow_with:
                if k in entry and k not in spec:
                    spec[k] = plain(entry[k])
                if spec.get(k) == flow_with[k]:
                    spec.pop(k)
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
    return {k: spec[k] for k in _DEPLOYMENT_NAMES + arg_names(FLOW_ADD_ARGS) if k in spec}


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

def deployment_spec(dep: Any, flow_entry: bool = False) -> Dict[str, Any]:
    """A Deployment's current arguments as a spec (defaults dropped): each argument of the
    schema is the Deployment's attribute of that name, save those written here."""
    raw: Dict[str, Any] = {a.name: getattr(dep, a.name, None) for a in DEPLOYMENT_ARGS if a.name != 'needs'}
    raw.update({'uses': uses_reference(getattr(dep, '_uses_source', dep.uses)),
                'uses_with': getattr(dep, '_uses_with_source', dep.uses_with),
                'polling': dep.polling.to_config()})
    if dep.external:
        raw['host'] = list(dep.external_addresses)
        raw['port'] = None
    else:
        raw['port'] = dep._port_arg
    raw['log_dir'] = None if _generated_log_dir(dep) else dep.log_dir
    base = os.getcwd()
    spec = normalize_deployment_args(raw, Where(f'Deployment {dep.name!r}'), base)
    if flow_entry:
        spec['name'] = dep.name
    return _ordered(spec)


def _generated_log_dir(orch: Any) -> bool:
    root = os.path.join(tempfile.gettempdir(), 'orchestra-nb', f'{orch.name}-{os.getpid()}-')
    return str(orch.log_dir).startswith(root)


def flow_spec(flow: Any) -> Dict[str, Any]:
    """A Flow's current graph as a spec."""
    values = {a.name: getattr(flow, a.name, None) for a in FLOW_ARGS}
    values.update({'port': flow._port_arg, 'log_dir': None if _generated_log_dir(flow) else flow.log_dir})
    with_ = {k: v for k, v in values.items() if v is not None and not _is_default(v, _FLOW[k].default)}
    with_.update(_normalize(FLOW_WIDE_ARGS, getattr(flow, 'executor_defaults', {}), Where(f'Flow {flow.name!r}'),
                            os.getcwd()))
    executors = []
    prev = 'gateway'
    for e in flow.entries:
        if e.is_join:
            spec: Dict[str, Any] = {'name': e.name}
        else:
            spec = deployment_spec(e.deployment, flow_entry=True)
            if e.replica_port is not None:
                spec['port'] = e.replica_port
            if getattr(e, 'floating', False):
                spec['floating'] = True
            for k, v in with_.items():   # written where it differs from the Flow's default of .add()
                if k in _FLOW_WIDE:
                    if spec.get(k) == v:
                        spec.pop(k)
                    elif k not in spec:
                        spec[k] = _FLOW_WIDE[k].default
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
    """A Deployment or Flow -> its spec (by the class's ``jtype``)."""
    kind = getattr(type(obj), 'jtype', None)
    if kind == 'Flow':
        return flow_spec(obj)
    if kind == 'Deployment':
        spec = deployment_spec(obj)
        spec.pop('needs', None)
        return {'jtype': 'Deployment', 'with': spec}
    raise ValueError(f'expected a Deployment or a Flow, got {type(obj).__name__}')


def save(obj: Any, path: str) -> None:
    """Write a Deployment or Flow as YAML (``load_spec(path) == to_spec(obj)``)."""
    text = dump_spec(to_spec(obj), path)
    with open(path, 'w', encoding='utf-8') as f:
        f.write(text)

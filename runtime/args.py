"""The argument schema: one declaration per Deployment / Flow argument.

Each :class:`Arg` says the argument's name, default, help, the types a config
may give it, how a command line writes it (``form``) and the check that the
constructors run. Everything else derives from these tuples:

* ``Deployment(...)`` / ``Flow(...)`` and ``Flow.add(...)``: the accepted
  keywords, their defaults (a test compares the signatures with the schema)
  and their checks (:func:`check_values`);
* YAML configs (:mod:`runtime.config`): the accepted keys, their types, the
  defaults dropped from a spec, the normalisation of paths;
* the ``orchestra deployment|flow`` flags (:mod:`runtime.cli`) and the
  ``%orchestra up`` flags (``orchestra_nb.magics``), through :func:`add_flags`
  and :func:`flag_values`;
* the fields of ``orchestra_nb.ControlPanel``.

Adding an argument: append one ``Arg`` to :data:`DEPLOYMENT_ARGS` (and/or
:data:`FLOW_ARGS`), add the keyword to ``Deployment.__init__`` (``tests/
test_args.py`` checks that they agree), then use the value where it matters::

    Arg('timeout_send', None, 'seconds a request may take before the gateway gives up',
        (int, float), 'a number of seconds', check=optional(check_seconds)),
"""
from __future__ import annotations

import argparse
import difflib
import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

#: how a command line writes a value; ``''`` picks one from the Arg's types
FORMS = ('text', 'int', 'float', 'bool', 'negated', 'json', 'env', 'path', 'paths', 'names', 'ports',
         'hosts', 'port-list', 'protocols')


@dataclass(frozen=True)
class Arg:
    """One argument of a Deployment or Flow.

    ``types``/``say``: what a YAML value may be and how an error says it (a bool is
    never taken for a number). ``check(value, name)`` returns the value to use or
    raises ``ValueError`` naming the value and what is allowed; it is what the
    constructors run. ``form``: how a flag is written and how YAML normalises it
    (``'path'``: relative to the YAML file; see :data:`FORMS`).

    >>> Arg('replicas', 1, 'replicas per shard', (int,), 'an integer', check=check_count).flag
    '--replicas'
    """
    name: str
    default: Any
    help: str
    types: Tuple[type, ...]
    say: str
    check: Optional[Callable[[Any, str], Any]] = None
    form: str = ''
    choices: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.form:
            t = self.types
            form = ('bool' if t == (bool,) else 'int' if t == (int,) else 'float' if float in t
                    else 'text' if t == (str,) else 'json')
            object.__setattr__(self, 'form', form)
        if self.form not in FORMS:
            raise ValueError(f'Arg {self.name!r}: form={self.form!r}; allowed: {", ".join(FORMS)}')

    @property
    def flag(self) -> str:
        """The command-line flag: ``uses_with`` -> ``--uses-with``."""
        return '--' + self.name.replace('_', '-')

    def accepts_type(self, value: Any) -> bool:
        """Whether ``value`` has one of ``types`` (``True`` is not an integer here)."""
        if isinstance(value, bool) and bool not in self.types:
            return False
        return isinstance(value, self.types)


# ----------------------------------------------------------------------------- checks

def check_kwargs(kwargs: Dict[str, Any], allowed: Sequence[str], where: str) -> None:
    """Refuse unknown keyword arguments, suggesting the closest valid one.

    >>> check_kwargs({'replica': 2}, ['replicas'], 'Deployment')
    Traceback (most recent call last):
    ValueError: Deployment got an unknown argument 'replica'; did you mean 'replicas'? (valid: replicas)
    """
    for key in kwargs:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f'; did you mean {close[0]!r}?' if close else ''
            raise ValueError(f'{where} got an unknown argument {key!r}{hint} '
                             f'(valid: {", ".join(sorted(allowed))})')


def check_count(value: Any, what: str, minimum: int = 1) -> int:
    """An integer >= ``minimum`` (not a bool), else ``ValueError``. ``check_count(3, 'replicas') == 3``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f'{what}={value!r}: must be an integer >= {minimum}')
    return value


def check_port(port: Any, what: str = 'port') -> Optional[int]:
    """A port 0..65535 (a string of digits too), or None (the OS picks). ``check_port('80') == 80``."""
    if port is None:
        return None
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f'{what}={port!r}: must be an integer from 0 to 65535 (0 or None: the OS picks)')
    return port


def check_seconds(value: Any, what: str) -> float:
    """A number of seconds > 0 (not a bool). ``check_seconds(2, 'timeout_ready') == 2``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f'{what}={value!r}: must be a number of seconds > 0')
    return value


def check_name(value: Any, what: str) -> str:
    """A non-empty string without ``/`` (``/`` separates replica names)."""
    if not isinstance(value, str) or not value or '/' in value:
        raise ValueError(f'{what}={value!r}: must be a non-empty string without "/"')
    return value


def check_flag(value: Any, what: str) -> bool:
    """``True`` or ``False``; ``'false'`` or ``1`` is refused rather than guessed."""
    if not isinstance(value, bool):
        raise ValueError(f'{what}={value!r}: must be True or False')
    return value


def check_path(value: Any, what: str) -> Optional[str]:
    """None, or a path as str / os.PathLike -> str."""
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise ValueError(f'{what}={value!r}: must be a folder path (a string)')
    return os.fspath(value)


def check_paths(value: Any, what: str) -> Any:
    """None, a file path, or a list of file paths."""
    if value is None or isinstance(value, (str, os.PathLike)):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(p, (str, os.PathLike)) for p in value):
        return list(value)
    raise ValueError(f'{what}={value!r}: must be a file path or a list of file paths')


def mapping(say: str) -> Callable[[Any, str], Optional[dict]]:
    """A check for ``None`` or a dict (``say`` names what the dict holds)."""
    def check(value: Any, what: str) -> Optional[dict]:
        if value is not None and not isinstance(value, dict):
            raise ValueError(f'{what}={value!r}: must be a dict of {say}')
        return value
    return check


def optional(check: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    """``check``, letting ``None`` through (the default: unset)."""
    def checked(value: Any, what: str) -> Any:
        return None if value is None else check(value, what)
    return checked


def one_of(*allowed: str) -> Callable[[Any, str], str]:
    """A check for one of ``allowed``."""
    def check(value: Any, what: str) -> str:
        if value not in allowed:
            raise ValueError(f'{what}={value!r}: allowed: {", ".join(repr(a) for a in allowed)}')
        return value
    return check


#: the gateway's doors, in Jina's spelling; the first is the default
PROTOCOLS = ('grpc', 'http', 'websocket')


def check_protocol(value: Any, what: str) -> Any:
    """One of :data:`PROTOCOLS` (any case) or a list of them without repeats -> lower case.

    >>> check_protocol(['GRPC', 'http'], 'protocol')
    ['grpc', 'http']
    """
    many = isinstance(value, (list, tuple))
    names = list(value) if many else [value]
    if not names or not all(isinstance(n, str) and n.lower() in PROTOCOLS for n in names):
        raise ValueError(f'{what}={value!r}: allowed: {", ".join(repr(p) for p in PROTOCOLS)} '
                         'or a list of them, e.g. ["grpc", "http"]')
    lowered = [n.lower() for n in names]
    if len(set(lowered)) != len(lowered):
        raise ValueError(f'{what}={value!r}: each protocol at most once (one port per protocol)')
    return lowered if many else lowered[0]


def protocol_ports(protocol: Any, port: Any) -> Tuple[List[str], List[Optional[int]]]:
    """``protocol`` and ``port`` (checked) -> the doors and their ports, in the same order (0 or None: the OS
    picks).

    >>> protocol_ports(['grpc', 'http'], [5555, 5556])
    (['grpc', 'http'], [5555, 5556])
    >>> protocol_ports('http', None)
    (['http'], [None])
    """
    protocols = check_protocol(protocol, 'protocol')
    protocols = protocols if isinstance(protocols, list) else [protocols]
    if port is None:
        return protocols, [None] * len(protocols)
    ports = list(port) if isinstance(port, (list, tuple)) else [port]
    if len(ports) != len(protocols):
        raise ValueError(f'port={port!r} with protocol={protocol!r}: give one port per protocol, in the same '
                         f'order (e.g. port={[5555 + i for i in range(len(protocols))]}), or omit port')
    ports = [check_port(p, 'port') for p in ports]
    if len(set(p for p in ports if p)) != len([p for p in ports if p]):
        raise ValueError(f'port={port!r}: each protocol needs its own port')
    return protocols, ports


def _check_secret(value: Any, what: str) -> str:
    from runtime.secrets import check_secret   # what the secret may be: runtime.secrets
    return check_secret(value, what)


# ----------------------------------------------------------------------------- the schema

_INT, _BOOL, _STR, _DICT = (int,), (bool,), (str,), (dict,)
_SECONDS = (int, float)

TIMEOUT_READY = Arg('timeout_ready', 60.0, 'seconds to wait for readiness', _SECONDS, 'a number of seconds',
                    check=check_seconds)
LOG_DIR = Arg('log_dir', None, 'folder for the replica logs', _STR, 'a string', check=check_path, form='path')
MAX_IN_FLIGHT = Arg('max_in_flight_per_replica', 4, 'requests in flight per replica before the gateway queues',
                    _INT, 'an integer', check=check_count)
PROTOCOL = Arg('protocol', 'grpc', "the gateway's doors: 'grpc', 'http', 'websocket' or a list of them, with "
               'port a list in the same order (docs/http.md)', (str, list), "a protocol or a list of protocols",
               check=check_protocol, form='protocols')
STREAM_LOGS = Arg('stream_logs', False, 'copy replica logs to this terminal (always on for the CLI)', _BOOL,
                  'true or false', check=check_flag)
# the gateway's TLS and the secret: in a Flow, the Flow's (Flow.add refuses them); see docs/security.md
SECURITY_ARGS = (
    Arg('secret', None, 'secret of control calls and RAFT encryption (default: generated; kept in the workspace '
        'when stateful); prefer ORCHESTRA_SECRET_FILE=PATH to a flag, which other local users can see',
        _STR, 'a string', check=optional(_check_secret)),
    Arg('tls_cert', None, "PEM certificate (chain) of the gateway's public port: TLS (with tls_key)", _STR,
        'a string', check=check_path, form='path'),
    Arg('tls_key', None, 'PEM private key of tls_cert', _STR, 'a string', check=check_path, form='path'),
)

#: every argument of ``Deployment(...)`` and ``Flow.add(...)``, in signature order
DEPLOYMENT_ARGS: Tuple[Arg, ...] = (
    Arg('name', 'executor', 'name of the Executor (replicas are NAME/rep-i)', _STR, 'a string', check=check_name),
    Arg('uses', None, 'the Executor: package.module:Class, a class name with py_modules, a mapping '
        '{jtype, with, py_modules}, or an Executor YAML', (str, dict),
        "'package.module:Class', a class name, or a mapping"),   # resolved by runtime.uses
    Arg('uses_with', None, 'constructor arguments of the Executor, as JSON', _DICT, 'a mapping',
        check=mapping('constructor arguments')),
    Arg('replicas', 1, 'replicas per shard', _INT, 'an integer', check=check_count),
    Arg('shards', 1, 'number of shards', _INT, 'an integer', check=check_count),
    Arg('polling', None, "'ANY', 'ALL', or JSON {endpoint: mode, '*': fallback}", (str, dict),
        "'ANY', 'ALL' or a mapping of endpoint -> 'ANY'/'ALL'"),   # checked by routing.PollingPolicy
    Arg('port', None, 'gateway port (0 or omitted: the OS picks); with --external, replica ports', (int, list),
        'a port number (or a list of ports with external: true)', form='ports'),   # depends on `external`
    Arg('host', '127.0.0.1', 'gateway host (default 127.0.0.1); with --external, replica hosts (or HOST:PORT)',
        (str, list), 'a host (or a list of hosts with external: true)', form='hosts'),   # depends on `external`
    PROTOCOL,
    Arg('env', None, 'environment of the replicas: KEY=VALUE (repeatable) or JSON', _DICT, 'a mapping',
        check=mapping('environment variables'), form='env'),
    Arg('workspace', None, 'folder for Executor state', _STR, 'a string', check=check_path, form='path'),
    TIMEOUT_READY,
    Arg('stateful', False, 'replicate @write endpoints through RAFT', _BOOL, 'true or false', check=check_flag),
    Arg('peer_ports', None, 'RAFT ports (ints, comma-separated, or JSON)', (list, dict),
        'a list of ports (or a mapping shard -> ports)', form='port-list'),   # checked by runtime.consensus
    Arg('raft_configuration', None, 'RAFT settings as JSON', _DICT, 'a mapping'),   # checked by runtime.consensus
    Arg('raft_password', None, 'RAFT password', _STR, 'a string'),
    Arg('read_consistency', 'eventual', "'eventual' or 'strong'", _STR, 'a string',
        check=one_of('eventual', 'strong'), choices=('eventual', 'strong')),
    Arg('external', False, 'use replicas already running at host/port', _BOOL, 'true or false', check=check_flag),
    MAX_IN_FLIGHT,
    Arg('blas_threads', None, 'BLAS threads per replica', _INT, 'an integer', check=optional(check_count)),
    LOG_DIR,
    Arg('no_reduce', False, 'ALL polling: concatenate shard results instead of merging by id', _BOOL,
        'true or false', check=check_flag, form='negated'),
    Arg('allow_partial', False, 'ALL polling: answer from the live shards when one is down', _BOOL,
        'true or false', check=check_flag),
    STREAM_LOGS,
    Arg('log_level', 'INFO', 'log level of the replicas (DEBUG, INFO, ...)', _STR, 'a string'),
    Arg('needs', None, 'Executors this one waits for (Flow only)', (str, list), 'an Executor name or a list of names',
        form='names'),   # checked by Flow
    Arg('py_modules', None, 'Python files holding the Executor class', (str, list),
        'a file path or a list of file paths', check=check_paths, form='paths'),
    # supervision (docs/reliability.md); defaults in runtime.supervision.Policy
    Arg('timeout_send', None, 'seconds a replica may take to answer one request before the gateway gives up '
        '(and retries it on another replica where that is safe); omitted: no limit on the Executor call',
        _SECONDS, 'a number of seconds', check=optional(check_seconds)),
    Arg('health_timeout', 2.0, 'seconds a replica has to answer its health probe; one that misses it leaves '
        'the rotation', _SECONDS, 'a number of seconds', check=check_seconds),
    Arg('restart_grace', 10.0, 'seconds a replica may fail its health probes before it is killed and restarted',
        _SECONDS, 'a number of seconds', check=check_seconds),
    Arg('max_restarts', 5, 'a replica (or gateway) restarted this many times within restart_window that dies '
        'again is left down (crash loop)', _INT, 'an integer', check=check_count),
    Arg('restart_window', 60.0, 'seconds over which max_restarts is counted', _SECONDS, 'a number of seconds',
        check=check_seconds),
    # -- durability (docs/reliability.md) --
    Arg('durability', 'fsync', "stateful: 'fsync' puts the RAFT journal and request bodies on disk before a "
        "write is acknowledged (survives a power cut); 'none' leaves them in the page cache (faster)",
        _STR, 'a string', check=one_of('fsync', 'none'), choices=('fsync', 'none')),
    *SECURITY_ARGS,
)

#: every argument of ``Flow(...)`` (YAML: the ``with:`` of a ``jtype: Flow``): its gateway's
FLOW_ARGS: Tuple[Arg, ...] = (
    Arg('name', 'flow', 'name of the Flow', _STR, 'a string', check=check_name),
    Arg('port', None, 'gateway port (0 or omitted: the OS picks); a list: one per protocol', (int, list),
        'a port number or a list of ports', form='ports'),   # checked with protocol: protocol_ports
    Arg('host', '127.0.0.1', 'gateway host (default 127.0.0.1)', _STR, 'a string'),
    PROTOCOL,
    TIMEOUT_READY, LOG_DIR, MAX_IN_FLIGHT, STREAM_LOGS, *SECURITY_ARGS,
)

#: keys Jina knows that this toolkit refuses, with what to write instead
JINA_ONLY = {
    'install_requirements': 'it installs Jina Hub Executors; hub Executors are not supported here: '
                            'install the package yourself and write uses: package.module:Class',
    'uses_metas': "use 'uses: {jtype: Class, metas: {py_modules: [...]}}' or 'py_modules'",
    'gpus': "use env: {CUDA_VISIBLE_DEVICES: RR} to spread replicas over GPUs",
}


def arg_names(args: Iterable[Arg]) -> Tuple[str, ...]:
    """``arg_names(FLOW_ARGS) == ('name', 'port', ...)``."""
    return tuple(a.name for a in args)


def by_name(args: Iterable[Arg]) -> Dict[str, Arg]:
    """The Args keyed by name."""
    return {a.name: a for a in args}


def pick(args: Sequence[Arg], *names: str) -> Tuple[Arg, ...]:
    """The Args called ``names`` (in that order); a name not in ``args`` raises ``KeyError``."""
    table = by_name(args)
    missing = [n for n in names if n not in table]
    if missing:
        raise KeyError(f'not arguments: {missing}; known: {", ".join(table)}')
    return tuple(table[n] for n in names)


def without(args: Sequence[Arg], *names: str) -> Tuple[Arg, ...]:
    """``args`` less those called ``names`` (each must exist)."""
    pick(args, *names)
    return tuple(a for a in args if a.name not in names)


def defaults(args: Iterable[Arg]) -> Dict[str, Any]:
    """name -> default."""
    return {a.name: a.default for a in args}


def check_values(args: Iterable[Arg], values: Dict[str, Any]) -> Dict[str, Any]:
    """Run each Arg's check on ``values[name]`` -> the checked values (unchecked ones as given)."""
    out = dict(values)
    for a in args:
        if a.check is not None and a.name in values:
            out[a.name] = a.check(values[a.name], a.name)
    return out


# ----------------------------------------------------------------------------- command-line flags

def _json_or_text(text: str) -> Any:
    """``'{"a": 1}'`` -> dict, ``'[1, 2]'`` -> list, ``'3'`` -> 3, anything else -> the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def add_flags(parser: argparse.ArgumentParser, args: Iterable[Arg]) -> None:
    """One flag per Arg (``--uses-with``), all defaulting to None (= not given); see :func:`flag_values`."""
    for a in args:
        if a.form == 'env':
            parser.add_argument(a.flag, action='append', metavar='KEY=VALUE', help=a.help)
        elif a.form in ('paths', 'names', 'ports', 'hosts', 'port-list', 'protocols'):
            parser.add_argument(a.flag, nargs='+', help=a.help)
        elif a.form == 'negated':   # no_reduce: --no-reduce / --reduce
            positive = a.name[len('no_'):].replace('_', '-')
            g = parser.add_mutually_exclusive_group()
            g.add_argument(a.flag, dest=a.name, action='store_const', const=True, help=a.help)
            g.add_argument(f'--{positive}', dest=a.name, action='store_const', const=False,
                           help=f'the opposite of {a.flag} (the default)')
        elif a.form == 'bool':
            parser.add_argument(a.flag, action=argparse.BooleanOptionalAction, default=None, help=a.help)
        elif a.form == 'int':
            parser.add_argument(a.flag, type=int, help=a.help)
        elif a.form == 'float':
            parser.add_argument(a.flag, type=float, help=a.help)
        elif a.choices:
            parser.add_argument(a.flag, choices=a.choices, help=a.help)
        else:   # text, path, json
            parser.add_argument(a.flag, help=a.help)


def _json_value(a: Arg, text: str) -> Any:
    if text.strip()[:1] in ('{', '['):
        try:
            return json.loads(text)
        except ValueError as e:
            raise ValueError(f'{a.flag} {text!r}: not valid JSON ({e})') from None
    return _json_or_text(text)


def _flag_value(a: Arg, value: Any) -> Any:
    if a.form == 'env':
        env: Dict[str, Any] = {}
        for item in value:
            parsed = _json_value(a, item) if item.strip().startswith('{') else None
            if isinstance(parsed, dict):
                env.update(parsed)
            elif '=' in item and item.partition('=')[0]:
                k, v = item.split('=', 1)
                env[k] = v
            else:
                raise ValueError(f'{a.flag} {item!r}: write KEY=VALUE or a JSON mapping')
        return env
    if a.form == 'json':
        return _json_value(a, value)
    if a.form == 'paths':
        return list(value)
    if a.form == 'names':
        if len(value) == 1 and value[0].strip().startswith('['):
            return _json_value(a, value[0])
        return list(value)
    if a.form in ('hosts', 'protocols'):   # --protocol grpc http: a list; one: the value
        return value[0] if len(value) == 1 else list(value)
    if a.form == 'ports':
        try:
            ports = [int(v) for v in value]
        except ValueError:
            raise ValueError(f'{a.flag} {" ".join(value)}: ports are integers') from None
        return ports[0] if len(ports) == 1 else ports
    if a.form == 'port-list':   # 1 2 3, 1,2,3, or JSON ([1, 2, 3] / {"0": [...], "1": [...]})
        if len(value) == 1 and value[0].strip()[:1] in ('{', '['):
            return _json_value(a, value[0])
        try:
            return [int(p) for item in value for p in item.split(',') if p.strip()]
        except ValueError:
            raise ValueError(f'{a.flag} {" ".join(value)}: expected port numbers (comma- or space-separated) '
                             'or JSON') from None
    return value


def flag_values(namespace: argparse.Namespace, args: Iterable[Arg]) -> Dict[str, Any]:
    """The flags given on a command line (parsed by :func:`add_flags`) -> argument values.

    Flags not given are left out, so a YAML's values stay where no flag overrides them.
    """
    out: Dict[str, Any] = {}
    for a in args:
        value = getattr(namespace, a.name, None)
        if value is not None:
            out[a.name] = _flag_value(a, value)
    return out


def flag_names(parser: argparse.ArgumentParser) -> List[str]:
    """The ``dest`` of every optional flag of ``parser`` (for tests and help)."""
    return sorted({act.dest for act in parser._actions if act.option_strings and act.dest != 'help'})

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
import re
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
        if key not in allowed and not check_jina_keyword(key, kwargs[key], where):
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
# Prometheus metrics (docs/monitoring.md), Jina's names
MONITORING = Arg('monitoring', False, 'serve Prometheus metrics at /metrics on the gateway and on every replica',
                 _BOOL, 'true or false', check=check_flag)
PORT_MONITORING = Arg('port_monitoring', None, "the gateway's /metrics port (0 or omitted: the OS picks; status() "
                      "reports it); in Flow.add, its one replica's", _INT, 'a port number', check=check_port)

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
        "'ANY', 'ALL' or a mapping of endpoint -> 'ANY'/'ALL'"),   # checked by specs.PollingPolicy
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
        'a list of ports (or a mapping shard -> ports)', form='port-list'),   # checked by runtime.raft
    Arg('raft_configuration', None, 'RAFT settings as JSON', _DICT, 'a mapping'),   # checked by runtime.raft
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
    # supervision (docs/reliability.md); runtime.specs.SupervisionPolicy takes these defaults
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
    MONITORING, PORT_MONITORING,
)

#: every argument of ``Flow(...)`` (YAML: the ``with:`` of a ``jtype: Flow``): its gateway's
FLOW_ARGS: Tuple[Arg, ...] = (
    Arg('name', 'flow', 'name of the Flow', _STR, 'a string', check=check_name),
    Arg('port', None, 'gateway port (0 or omitted: the OS picks); a list: one per protocol', (int, list),
        'a port number or a list of ports', form='ports'),   # checked with protocol: protocol_ports
    Arg('host', '127.0.0.1', 'gateway host (default 127.0.0.1)', _STR, 'a string'),
    PROTOCOL,
    TIMEOUT_READY, LOG_DIR, MAX_IN_FLIGHT, STREAM_LOGS, *SECURITY_ARGS, MONITORING, PORT_MONITORING,
)

#: arguments ``Flow.add`` (and a Flow YAML's ``executors:`` entry) takes beyond a Deployment's
FLOW_ADD_ARGS: Tuple[Arg, ...] = (
    Arg('floating', False, "Jina's floating Executor: it gets every request, its output goes nowhere (the reply "
        "does not wait for it), and the next .add() chains after the Executor before it", _BOOL, 'true or false',
        check=check_flag),
)

#: a Deployment's arguments that are not a Flow's own but that Flow(...) takes as the default of every
#: ``.add()`` (Jina passes such Flow keywords down to its Executors: ``Flow(replicas=2)``); ``env`` is merged
FLOW_WIDE_ARGS: Tuple[Arg, ...] = tuple(
    a for a in DEPLOYMENT_ARGS
    if a.name not in {f.name for f in FLOW_ARGS} and a.name not in (
        'name', 'port', 'host', 'uses', 'uses_with', 'needs', 'external', 'secret', 'tls_cert', 'tls_key'))

#: keys Jina knows that this toolkit refuses, with why and what to write instead (one line each);
#: the constructors, YAML configs, the CLI and the magic all refuse them from this table
#: (docs/jina-compatibility.md lists every Jina argument with its decision)
JINA_ONLY: Dict[str, str] = {
    # Jina Hub, containers and clouds
    'install_requirements': 'it installs Jina Hub Executors; hub Executors are not supported here: '
                            'install the package yourself and write uses: package.module:Class',
    'force_update': 'it re-pulls Jina Hub Executors; hub Executors are not supported here: install the package '
                    'and write uses: package.module:Class',
    'prefer_platform': 'it picks the Docker platform of a containerized Executor; Executors run as local processes '
                       'here (export Compose/Kubernetes files with dep.to_docker_compose_yaml for containers)',
    'gpus': "it passes GPUs to a Docker container; use env={'CUDA_VISIBLE_DEVICES': 'RR'} to spread replicas "
            'over GPUs',
    'docker_kwargs': 'Executors run as local processes, not Docker containers; use dep.to_docker_compose_yaml '
                     'for containers',
    'entrypoint': 'Executors run as local processes, not Docker containers; use dep.to_docker_compose_yaml',
    'disable_auto_volume': 'Executors run as local processes, not Docker containers: no volume is mounted',
    'provider': 'cloud providers (SageMaker, Azure) are not supported; export Kubernetes or Compose files instead',
    'provider_endpoint': 'cloud providers (SageMaker, Azure) are not supported; export Kubernetes or Compose files',
    # Jina internals with no counterpart
    'runtime_cls': "Jina's runtime classes do not exist here: every replica runs runtime.worker",
    'connection_list': "internal to Jina's head runtime; to use running replicas write external=True with host/port",
    'uses_before': 'shard pre-processing Executors are not supported; add an Executor before this one in a Flow',
    'uses_after': "shard post-processing Executors are not supported; shard results are merged by id (no_reduce=True "
                  "concatenates them), or add an Executor after this one in a Flow",
    'uses_before_address': 'shard pre-processing Executors are not supported; add an Executor before it in a Flow',
    'uses_after_address': 'shard post-processing Executors are not supported; add an Executor after it in a Flow',
    'uses_requests': 'remapping endpoints from outside the class is not supported; write @requests(on=...) '
                     'in the Executor',
    'uses_dynamic_batching': 'write @dynamic_batching(preferred_batch_size=...) on the endpoint method',
    'when': "DocArray v1 query filters are not supported on docarray v2 (Jina's own when= is v1 only); filter "
            'inside the Executor',
    'output_array_type': 'a docarray v1 protobuf option; the columnar codec keeps each tensor type as it is',
    'allow_concurrent': 'a replica runs one request at a time, so Executors need not be thread-safe; scale out '
                        'with replicas=N',
    'exit_on_exceptions': 'a failing request is answered with its error and the replica keeps serving; a replica '
                          'that dies is restarted (max_restarts, restart_window)',
    'reload': 'hot reloading is not supported; restart the Deployment (in a notebook: re-run the cell)',
    'retries': 'the gateway retries a request on another replica when its replica is lost (never a @write '
               'that may have been applied); the client retries with post(max_attempts=N)',
    'timeout_ctrl': 'control calls have fixed timeouts; readiness waits timeout_ready seconds',
    'grpc_server_options': 'servers use fixed options (1 GiB messages, SO_REUSEPORT off)',
    'grpc_channel_options': 'channels use fixed options (1 GiB messages)',
    'grpc_metadata': 'the gateway sends no custom gRPC metadata to replicas',
    'compression': 'requests between the gateway and its replicas are not compressed (they travel on 127.0.0.1); '
                   'post(compression=...) compresses between client and gateway',
    'log_config': "Jina's logging YAML is not read; use log_level='DEBUG' and dep.logs()",
    'quiet': "replica logs go to files, not to this terminal (stream_logs=True copies them); use log_level='ERROR'",
    'quiet_error': "use log_level='CRITICAL'; errors always reach the client with their traceback",
    'suppress_root_logging': 'the root logger is never changed here',
    'tracing': 'OpenTelemetry tracing is not supported; dep.status() and docs/telemetry.md give per-replica counters',
    'traces_exporter_host': 'OpenTelemetry tracing is not supported; dep.status() gives per-replica counters',
    'traces_exporter_port': 'OpenTelemetry tracing is not supported; dep.status() gives per-replica counters',
    'metrics': 'OpenTelemetry metrics are not supported; monitoring=True serves Prometheus metrics',
    'metrics_exporter_host': 'OpenTelemetry metrics are not supported; monitoring=True serves Prometheus metrics',
    'metrics_exporter_port': 'OpenTelemetry metrics are not supported; monitoring=True serves Prometheus metrics',
    'tls': "a Deployment's gateway serves TLS with tls_cert=... and tls_key=...; a Client connects with tls=True",
    'ssl_certfile': "the gRPC gateway's TLS is tls_cert=PATH (with tls_key)",
    'ssl_keyfile': "the gRPC gateway's TLS key is tls_key=PATH (with tls_cert)",
    'inspect': "inspect Executors (Flow(inspect=...)) are not supported; read dep.logs() and dep.status()",
    # HTTP / WebSocket gateway settings (see docs/jina-compatibility.md)
    'cors': 'an HTTP gateway setting; not offered by the HTTP door (docs/http.md)',
    'title': 'an HTTP gateway (OpenAPI) setting; not offered by the HTTP door (docs/http.md)',
    'description': 'an HTTP gateway (OpenAPI) setting; not offered by the HTTP door (docs/http.md)',
    'uvicorn_kwargs': 'an HTTP gateway setting; not offered by the HTTP door (docs/http.md)',
    'no_debug_endpoints': 'an HTTP gateway setting; not offered by the HTTP door (docs/http.md)',
    'no_crud_endpoints': 'an HTTP gateway setting; not offered by the HTTP door (docs/http.md)',
    'expose_endpoints': 'an HTTP gateway setting; not offered by the HTTP door (docs/http.md)',
    'expose_graphql_endpoint': 'GraphQL is not supported',
    'proxy': 'the client never reads http_proxy for gRPC; nothing to turn off',
    # a Flow's gateway internals and options
    'asyncio': 'there is one Flow class: await flow.apost(...) from async code (or a notebook\'s top level)',
    'prefetch': "the gateway queues requests (FIFO) and keeps max_in_flight_per_replica per replica; a client's "
                'window is post(prefetch=N)',
    'reuse_session': 'an HTTP client setting; the Flow posts over gRPC',
    'deployments_addresses': "internal to Jina's gateway: the Flow tells its gateway where its replicas are",
    'deployments_metadata': "internal to Jina's gateway: no gRPC metadata is sent to replicas",
    'deployments_no_reduce': "internal to Jina's gateway: write no_reduce=True on the Executor",
    'graph_description': "internal to Jina's gateway: the graph comes from .add(needs=...)",
    'graph_conditions': "internal to Jina's gateway: when= conditions are not supported",
}

#: keywords Jina's Flow(...) takes whose name is a Deployment argument here, refused on a Flow
FLOW_JINA_ONLY: Dict[str, str] = {
    'uses': 'a Flow YAML is loaded with Flow.load_config(path) (or runtime.flow.load); Flow(uses=...) is not '
            'read',
    'uses_with': "Flow(uses_with=...) configures Jina's custom gateways, which are not supported",
    'external': 'external=True belongs to one Executor: Flow().add(external=True, host=..., port=...)',
}

#: Jina arguments accepted because Jina's meaning holds here with nothing to do, as long as the value is one of
#: these: name -> (check of the value, what the value must be, why nothing is needed)
JINA_ACCEPTED: Dict[str, Tuple[Callable[[Any], bool], str, str]] = {
    'native': (lambda v: isinstance(v, bool), 'True or False', 'every Executor here runs natively in its process'),
    'deployment_role': (lambda v: v is None, 'None', 'roles are inferred from the graph'),
    'copy_flow': (lambda v: v is False or v is None, 'False',
                  'Flow.add changes the Flow in place and returns it'),
}


def _volumes_to_workspace(value: Any) -> Dict[str, Any]:
    """Jina's ``volumes`` (``'HOST[:CONTAINER]'`` or a list of one): the host folder is the workspace."""
    items = [value] if isinstance(value, (str, os.PathLike)) else value
    if not isinstance(items, (list, tuple)) or len(items) != 1 or not isinstance(items[0], (str, os.PathLike)):
        raise ValueError(f"volumes={value!r}: one folder 'HOST_PATH' or 'HOST_PATH:CONTAINER_PATH' (it becomes "
                         'the workspace: replicas run as local processes, nothing is mounted)')
    host = os.fspath(items[0]).split(':', 1)[0]
    if not host:
        raise ValueError(f'volumes={value!r}: the host folder is empty')
    return {'workspace': host}


def _metas_to_arguments(value: Any) -> Dict[str, Any]:
    """Jina's ``uses_metas``: ``py_modules`` and ``workspace`` become those arguments; ``name`` is ignored
    (the Deployment's name names the replicas)."""
    allowed = ('py_modules', 'workspace', 'name', 'description')
    if not isinstance(value, dict) or any(k not in allowed for k in value):
        raise ValueError(f'uses_metas={value!r}: a mapping with keys among {", ".join(allowed)}')
    return {k: v for k, v in value.items() if k in ('py_modules', 'workspace')}


#: Jina arguments implemented by turning them into ours: name -> (the function, what it becomes)
JINA_TRANSLATED: Dict[str, Tuple[Callable[[Any], Dict[str, Any]], str]] = {
    'volumes': (_volumes_to_workspace, "its one host folder ('HOST[:CONTAINER]') becomes the workspace (the "
                'state of a stateful Deployment lives there)'),
    'uses_metas': (_metas_to_arguments, 'its py_modules and workspace become those arguments'),
}


def translate_jina_arguments(given: Dict[str, Any], where: str) -> Dict[str, Any]:
    """The arguments that :data:`JINA_TRANSLATED` keys in ``given`` stand for (only those not given too).

    >>> translate_jina_arguments({'volumes': ['/data/ws:/workspace']}, 'Deployment')
    {'workspace': '/data/ws'}
    """
    out: Dict[str, Any] = {}
    for key, (translate, _) in JINA_TRANSLATED.items():
        if given.get(key) is None:
            continue
        try:
            ours = translate(given[key])
        except ValueError as e:
            raise ValueError(f'{where}: {e}') from None
        for name, value in ours.items():
            if given.get(name) is not None and given[name] != value:
                raise ValueError(f'{where}: {key}={given[key]!r} sets {name}={value!r}, but {name}={given[name]!r} '
                                 'is given too; keep one')
            out[name] = value
    return out


def check_jina_keyword(key: str, value: Any, where: str) -> bool:
    """True for a Jina keyword accepted with nothing to do (:data:`JINA_ACCEPTED`); raise ``ValueError``
    with the reason for a refused one (:data:`JINA_ONLY`); False for a keyword Jina does not know either.

    >>> check_jina_keyword('native', True, 'Deployment')
    True
    """
    if key in JINA_TRANSLATED:
        return True   # turned into our arguments by translate_jina_arguments
    if key in JINA_ACCEPTED:
        ok, allowed, why = JINA_ACCEPTED[key]
        if not ok(value):
            raise ValueError(f'{where}: {key}={value!r} is not supported: {why} (allowed: {allowed})')
        return True
    if key in JINA_ONLY:
        raise ValueError(f'{where}: {key}= is a Jina argument not supported here: {JINA_ONLY[key]}')
    return False


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

def _flags_in_use(parser: argparse.ArgumentParser, argv: Sequence[str]) -> List[str]:
    """The flags of ``parser`` and of the subcommand ``argv`` names (an unknown flag of a
    subcommand is reported by the top parser)."""
    out: List[str] = []
    for act in parser._actions:
        out += act.option_strings
        if isinstance(act, argparse._SubParsersAction):
            for i, token in enumerate(argv):
                if token in act.choices:
                    out += _flags_in_use(act.choices[token], argv[i + 1:])
                    break
    return out


def closest(word: str, candidates: Iterable[str]) -> str:
    """``"; did you mean '--replicas'?"`` for the candidate closest to ``word``, or ''.

    >>> closest('--replica', ['--replicas', '--shards'])
    "; did you mean '--replicas'?"
    """
    candidates = list(candidates)
    prefixed = [c for c in candidates if c.startswith(word) and len(word) > 2]   # an abbreviation
    close = prefixed[:1] or difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f'; did you mean {close[0]!r}?' if close else ''


class StrictParser(argparse.ArgumentParser):
    """argparse without prefix matching (``--replica`` is not taken for ``--replicas``), whose
    errors about an unknown flag or value name the closest valid one. Every parser of the
    CLI and the magics is one (subparsers inherit the class)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs['allow_abbrev'] = False
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args: Optional[Sequence[str]] = None, namespace: Any = None) -> Any:
        self._argv = list(args) if args is not None else []   # what explain() looks at
        return super().parse_known_args(args, namespace)

    def error(self, message: str):   # type: ignore[override]
        super().error(self.explain(message))

    def explain(self, message: str) -> str:
        """``message`` with the closest valid flag or value appended (where one is close)."""
        if message.startswith('unrecognized arguments: '):
            flags = _flags_in_use(self, getattr(self, '_argv', []))
            hints = [closest(tok.split('=', 1)[0], flags) for tok in message.split(': ', 1)[1].split()
                     if tok.startswith('-')]
            hints = [h for h in hints if h]
            return message + (hints[0] if hints else '')
        match = re.search(r"invalid choice: '?([^'\s]*)'? \(choose from (.*)\)", message)
        if match:
            choices = [c.strip(" '") for c in match.group(2).split(',')]
            return message + closest(match.group(1), choices)
        return message


def _json_or_text(text: str) -> Any:
    """``'{"a": 1}'`` -> dict, ``'[1, 2]'`` -> list, ``'3'`` -> 3, anything else -> the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


_REFUSED = 'jina_refused__'   # dest prefix of the flags of JINA_ONLY (hidden; using one is an error)


class _RefuseJinaFlag(argparse.Action):
    """``--install-requirements`` & co: the parser's error, with the reason from :data:`JINA_ONLY`."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f'{option_string} is a Jina argument not supported here: {JINA_ONLY[self.dest[len(_REFUSED):]]}')


def add_flags(parser: argparse.ArgumentParser, args: Iterable[Arg]) -> None:
    """One flag per Arg (``--uses-with``), all defaulting to None (= not given); see :func:`flag_values`.

    Jina's flags that are refused (:data:`JINA_ONLY`) are added hidden: using one is the parser's
    error, saying why (the CLI and ``%orchestra up`` refuse them as the constructors do)."""
    args = list(args)
    taken = {a.flag for a in args} | {s for act in parser._actions for s in act.option_strings}
    for name in JINA_ONLY:
        flag = '--' + name.replace('_', '-')
        if flag not in taken:
            parser.add_argument(flag, dest=_REFUSED + name, nargs='*', action=_RefuseJinaFlag,
                                help=argparse.SUPPRESS)
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
    return sorted({act.dest for act in parser._actions
                   if act.option_strings and act.dest != 'help' and not act.dest.startswith(_REFUSED)})


# ----------------------------------------------------------------------------- post() keywords

def _check_callback(value: Any, what: str) -> Any:
    if value is not None and not callable(value):
        raise ValueError(f'{what}={value!r}: must be a function (or None)')
    return value


def _check_number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f'{what}={value!r}: must be a number >= 0')
    return value


def _check_request_size(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f'{what}={value!r}: must be an integer (<= 0: all inputs in one request, as in Jina)')
    return value


def _check_target(value: Any, what: str) -> Optional[str]:
    import re
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f'{what}={value!r}: must be a regular expression (a string) matched against Executor names')
    try:
        re.compile(value)
    except re.error as e:
        raise ValueError(f'{what}={value!r}: not a valid regular expression ({e})') from None
    return value


def _check_compression(value: Any, what: str) -> Optional[str]:
    allowed = ('NoCompression', 'Deflate', 'Gzip')
    if value is not None and value not in allowed:
        raise ValueError(f'{what}={value!r}: allowed: None, {", ".join(repr(a) for a in allowed)}')
    return value


#: every keyword of ``Client.post`` / ``Deployment.post`` / ``Flow.post`` after ``on`` and ``inputs``, in
#: signature order: Jina's (jina.clients.mixin.PostMixin.post) and then ours (marked in the help)
POST_ARGS: Tuple[Arg, ...] = (
    Arg('on_done', None, "called with each request's Response when it succeeded; post then returns None",
        (object,), 'a function', check=_check_callback),
    Arg('on_error', None, 'called with (Response, exception) for each request that failed, instead of raising',
        (object,), 'a function', check=_check_callback),
    Arg('on_always', None, 'called with each Response, failed or not; post then returns None', (object,),
        'a function', check=_check_callback),
    Arg('parameters', None, "a dict (or a pydantic model) passed to the Executor's parameters; Jina's "
        "Executor-specific keys too ('indexer__limit', parameters['indexer'])", (dict, object),
        'a dict or a pydantic model'),   # checked by runtime.client.parameters_dict
    Arg('target_executor', None, 'a regular expression (re.match): only the Executors whose name matches run; the '
        'others pass the docs on unchanged', _STR, 'a string', check=_check_target),
    Arg('request_size', 100, 'documents per request (<= 0: all in one request)', _INT, 'an integer',
        check=_check_request_size),
    Arg('show_progress', False, 'a progress bar (tqdm) counting requests', _BOOL, 'true or false', check=check_flag),
    Arg('continue_on_error', False, 'a failed request is logged and the others go on; the result holds the docs of '
        'the requests that succeeded', _BOOL, 'true or false', check=check_flag),
    Arg('max_attempts', 1, 'attempts per request while the gateway is unreachable (UNAVAILABLE)', _INT,
        'an integer', check=check_count),
    Arg('initial_backoff', 0.5, 'seconds before the first retry', _SECONDS, 'a number', check=_check_number),
    Arg('max_backoff', 2.0, 'the longest wait between retries, in seconds', _SECONDS, 'a number',
        check=_check_number),
    Arg('backoff_multiplier', 1.5, 'each wait is the previous one times this', _SECONDS, 'a number',
        check=_check_number),
    Arg('results_in_order', False, 'results always come back in input order here, so True and False both hold',
        _BOOL, 'true or false', check=check_flag),
    Arg('stream', True, "Jina's choice of gRPC streaming or unary calls; one transport here, same results",
        _BOOL, 'true or false', check=check_flag),
    Arg('prefetch', None, 'requests in flight at once (default: the Client\'s, 16)', _INT, 'an integer',
        check=optional(check_count)),
    Arg('return_type', None, 'DocList[X] (docs decoded as X), or a doc class X: one doc back is returned alone',
        (type,), 'a DocList or doc class'),
    Arg('timeout', None, '(ours) seconds each request may take', _SECONDS, 'a number of seconds',
        check=optional(check_seconds)),
    Arg('compression', None, "gRPC compression between client and gateway: 'Gzip', 'Deflate' or 'NoCompression'",
        _STR, 'a string', check=_check_compression),
    Arg('consistency', None, "(ours) stateful reads: 'strong' reads the RAFT leader's state", _STR, 'a string',
        check=optional(one_of('eventual', 'strong'))),
    Arg('allow_partial', None, '(ours) ALL polling: answer from the live shards when one is down', _BOOL,
        'true or false', check=optional(check_flag)),
    Arg('no_reduce', None, '(ours) ALL polling: concatenate shard results instead of merging by id', _BOOL,
        'true or false', check=optional(check_flag)),
)

#: keywords of Jina's post() refused here, with why and what to use instead
JINA_POST_ONLY: Dict[str, str] = {
    'return_responses': "Response objects are not returned: post returns a DocList; each request's results dict "
                        'is in client.last_results, and on_done=fn receives each Response',
    'metadata': 'custom gRPC metadata is not sent; the gateway authenticates control calls with its secret only',
    'credentials': 'per-call gRPC credentials are not supported; use Client(tls=True, ca=...)',
    'exec_endpoint': "write on='/endpoint' (the endpoint is post's first argument)",
    'data_type': 'a docarray v1 option: pass docs (a DocList, a doc, a list or a generator)',
    'total_docs': 'show_progress counts requests; the total is not needed',
}


def check_post_kwargs(kwargs: Dict[str, Any], where: str = 'post') -> None:
    """Refuse keywords ``post`` does not take: a Jina one with its reason, else the closest valid one.

    >>> check_post_kwargs({'target_executr': 'a'})
    Traceback (most recent call last):
    ValueError: post got an unknown argument 'target_executr'; did you mean 'target_executor'? (valid: ...)
    """
    for key in kwargs:
        if key in JINA_POST_ONLY:
            raise ValueError(f'{where}({key}=...) is a Jina argument not supported here: {JINA_POST_ONLY[key]}')
        allowed = ('on', 'inputs') + arg_names(POST_ARGS)
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f'; did you mean {close[0]!r}?' if close else ''
        raise ValueError(f'{where} got an unknown argument {key!r}{hint} (valid: {", ".join(allowed)})')


#: keywords of Jina's ``Client(...)`` refused here, with why and what to use instead
JINA_CLIENT_ONLY: Dict[str, str] = {
    'asyncio': "there is one Client: await client.apost(...) from async code (or a notebook's top level)",
    'reuse_session': 'an HTTP client setting; the Client reuses its one connection (gRPC channel or HTTP session)',
    'grpc_channel_options': 'the channel uses fixed options (1 GiB messages)',
    'log_config': "Jina's logging YAML is not read",
    'suppress_root_logging': 'the root logger is never changed here',
    'proxy': 'the client never reads http_proxy for gRPC; nothing to turn off',
    'tracing': 'OpenTelemetry tracing is not supported',
    'traces_exporter_host': 'OpenTelemetry tracing is not supported',
    'traces_exporter_port': 'OpenTelemetry tracing is not supported',
    'metrics': 'OpenTelemetry metrics are not supported; monitoring=True serves Prometheus metrics',
    'metrics_exporter_host': 'OpenTelemetry metrics are not supported; monitoring=True serves Prometheus metrics',
    'metrics_exporter_port': 'OpenTelemetry metrics are not supported; monitoring=True serves Prometheus metrics',
}

#: the keywords of ``Client(...)`` (spelled out in runtime.client.Client.__init__)
CLIENT_KEYWORDS = ('host', 'port', 'prefetch', 'timeout', 'tls', 'ca', 'protocol')


def check_client_kwargs(kwargs: Dict[str, Any]) -> None:
    """Refuse ``Client(...)`` keywords it does not take: Jina's with the reason, others naming the closest.

    >>> check_client_kwargs({})
    """
    for key in kwargs:
        if key in JINA_CLIENT_ONLY:
            raise ValueError(f'Client({key}=...) is a Jina argument not supported here: {JINA_CLIENT_ONLY[key]}')
        close = difflib.get_close_matches(key, CLIENT_KEYWORDS, n=1)
        hint = f'; did you mean {close[0]!r}?' if close else ''
        raise ValueError(f'Client got an unknown argument {key!r}{hint} '
                         f'(valid: {", ".join(CLIENT_KEYWORDS)})')

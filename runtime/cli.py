"""The ``orchestra`` command line.

    orchestra deployment --uses deployment.yaml [--replicas 3 ...]   # serve until Ctrl-C / SIGTERM
    orchestra flow --uses flow.yaml [--port 5555]
    orchestra executor --uses pkg.mod:Class --port 12345 [--uses-with '{"dim": 128}']
    orchestra ping 127.0.0.1:5555                                     # exit 0 ready, 1 not
    orchestra bench --setups 1,3s                                     # runtime.bench
    orchestra export docker-compose flow.yml out/docker-compose.yml   # runtime.export
    orchestra export kubernetes flow.yml out/k8s [--k8s-namespace NS]
    orchestra migrate my_jina_project/ [--write]                      # runtime.migrate (libcst)
    orchestra replica|gateway ...                                     # what exported containers run

Every flag of ``deployment``/``flow`` is also a YAML key (``--uses-with`` is
``uses_with``); a flag given on the command line overrides the YAML's value.
Values that are mappings or lists are written as JSON (``--polling
'{"/search": "ALL", "*": "ANY"}'``); ``--env`` also takes ``KEY=VALUE``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence

from runtime import config
from runtime.args import (DEPLOYMENT_ARGS, FLOW_ARGS, StrictParser, add_flags, by_name, check_port, check_values,
                          flag_values, pick, without)
from runtime.deployment import Deployment
from runtime.flow import Flow, load
from runtime.uses import is_yaml_path, load_executor_class, resolve_uses
from runtime.yamlio import Where, read


# ----------------------------------------------------------------------------- deployment / flow

#: the flags of ``orchestra deployment`` (besides --uses, which also takes a config; needs is Flow only)
SERVE_DEPLOYMENT_ARGS = without(DEPLOYMENT_ARGS, 'uses', 'needs')
#: the flags of ``orchestra executor`` taken from the schema (its --port/--host are the replica's own)
EXECUTOR_ARGS = pick(DEPLOYMENT_ARGS, 'uses_with', 'py_modules', 'name', 'workspace', 'log_level')


def _deployment_spec(args: argparse.Namespace) -> Dict[str, Any]:
    uses = args.uses
    spec: Dict[str, Any]
    if is_yaml_path(uses):
        if not os.path.isfile(uses):
            raise FileNotFoundError(f'--uses {uses!r}: no such file')
        kind = _peek_jtype(uses)
        if kind == 'Flow':
            raise ValueError(f'--uses {uses!r} is a jtype: Flow config; run `orchestra flow --uses {uses}`')
        if kind == 'Deployment':
            spec = config.load_spec(uses)
        else:  # an Executor config (jtype: ClassName)
            spec = {'jtype': 'Deployment', 'with': {'uses': os.path.abspath(uses)}}
    else:
        spec = {'jtype': 'Deployment', 'with': {'uses': uses}}
    merged = dict(spec['with'])
    merged.update(flag_values(args, SERVE_DEPLOYMENT_ARGS))
    w = Where('command line')
    spec['with'] = config.normalize_deployment_args(merged, w, os.getcwd())
    return spec


def _flow_spec(args: argparse.Namespace) -> Dict[str, Any]:
    if not is_yaml_path(args.uses):
        raise ValueError(f'--uses {args.uses!r}: orchestra flow takes a jtype: Flow YAML file')
    spec = config.load_spec(args.uses)
    if spec['jtype'] != 'Flow':
        raise ValueError(f'--uses {args.uses!r} is a jtype: {spec["jtype"]} config; '
                         f'run `orchestra deployment --uses {args.uses}`')
    over = flag_values(args, FLOW_ARGS)
    if over:
        spec['with'] = dict(spec.get('with') or {}, **over)
    return spec


def _peek_jtype(path: str) -> Optional[str]:
    data, _, _ = read(path)
    return data.get('jtype') if isinstance(data, dict) else None


def _replica_table(obj: Any) -> str:
    st = obj.status(timeout=2.0)
    rows = [('REPLICA', 'PID', 'ADDRESS', 'STATE')]
    for r in st['replicas']:
        rows.append((r['name'], str(r.get('pid') or '-'), str(r.get('address') or '-'), r['state']))
    gw = st.get('gateway') or {}
    rows.append((f'{obj.name}/gateway', str(gw.get('pid') or '-'), ', '.join(obj.addresses.values()),
                 gw.get('state', '?')))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return '\n'.join('  '.join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _serve(obj: Any, kind: str) -> int:
    """Start ``obj``, print where it listens, serve until SIGINT/SIGTERM, stop everything."""
    stop = threading.Event()
    received: List[str] = []

    def on_signal(signum, _frame):
        received.append(signal.Signals(signum).name)
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    obj.stream_logs = True
    try:
        try:
            obj.start()
        except Exception as e:
            print(f'orchestra {kind}: failed to start: {e}', file=sys.stderr, flush=True)
            return 1
        try:
            n = sum(len(stage.replicas) for stage in obj.stages)
            print(f'{type(obj).__name__} {obj.name!r} ready at {", ".join(obj.addresses.values())} '
                  f'({n} replica process{"es" if n != 1 else ""}, started in {obj.startup_seconds:.1f} s)',
                  flush=True)
            print(_replica_table(obj), flush=True)
            print('Ctrl-C (SIGINT) or SIGTERM stops it.', flush=True)
            while not stop.wait(0.5):
                pass
            print(f'orchestra {kind}: {received[0] if received else "stop"} received; stopping',
                  file=sys.stderr, flush=True)
        finally:
            obj.close()
        print(f'{type(obj).__name__} {obj.name!r} stopped', flush=True)
        return 0
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _build_and_serve(kind: str, make_spec: Callable[[], Any], cls: Any) -> int:
    """Build a Deployment or Flow (``cls``) from its spec and serve it; a bad spec exits 2 with its error."""
    try:
        obj = cls.from_spec(make_spec())
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f'orchestra {kind}: {e}', file=sys.stderr)
        return 2
    return _serve(obj, kind)


def cmd_deployment(args: argparse.Namespace) -> int:
    return _build_and_serve('deployment', lambda: _deployment_spec(args), Deployment)


def cmd_flow(args: argparse.Namespace) -> int:
    return _build_and_serve('flow', lambda: _flow_spec(args), Flow)


# ----------------------------------------------------------------------------- executor

def cmd_executor(args: argparse.Namespace) -> int:
    """One replica server in this process (what external Executors and containers run)."""
    from runtime.server import PortInUseError
    from runtime.specs import ReplicaSpec
    from runtime.worker import ReplicaServer
    os.umask(0o077)   # its workspace and files are private (0700 / 0600); the secret: $ORCHESTRA_SECRET_FILE
    name = args.name or args.uses.rsplit(':', 1)[-1].rsplit('.', 1)[-1].rsplit('/', 1)[-1]
    log_level = args.log_level or by_name(EXECUTOR_ARGS)['log_level'].default
    logging.basicConfig(level=log_level, stream=sys.stderr,
                        format=f'{name}@{os.getpid()} %(asctime)s %(levelname)-7s %(message)s',
                        datefmt='%H:%M:%S')
    for noisy in ('grpc', 'asyncio'):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        port = check_port(args.port, '--port') or 0
        values = check_values(EXECUTOR_ARGS, flag_values(args, EXECUTOR_ARGS))
        uses, uses_with = resolve_uses(args.uses, values.get('uses_with'), values.get('py_modules'))
        if isinstance(uses, str):
            uses = load_executor_class(uses)
        server = ReplicaServer(ReplicaSpec(name=name, uses=uses, uses_with=dict(uses_with or {}), deployment=name,
                                           workspace=values.get('workspace')))
    except Exception as e:
        print(f'orchestra executor: {type(e).__name__}: {e}', file=sys.stderr, flush=True)
        return 1

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for s in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(s, stop.set)

        def ready(srv: ReplicaServer) -> None:
            print(f'executor {name!r} ({type(srv.executor).__name__}) ready at {args.host}:{srv.port} '
                  f'(pid {os.getpid()}); endpoints: {", ".join(srv.endpoints.names)}', flush=True)

        await server.serve(args.host, port, stop, on_ready=ready)

    try:
        asyncio.run(main())
    except PortInUseError as e:
        print(f'orchestra executor: {e}', file=sys.stderr, flush=True)
        return 1
    print(f'executor {name!r} stopped', flush=True)
    return 0


# ----------------------------------------------------------------------------- ping

def parse_address(text: str) -> str:
    """``HOST:PORT``, ``grpc://HOST:PORT`` or ``PORT`` -> ``HOST:PORT``."""
    t = text.strip()
    for prefix in ('grpc://', 'grpcs://', 'http://'):
        if t.startswith(prefix):
            t = t[len(prefix):]
    host, sep, port = t.rpartition(':')
    if not sep:
        host, port = '127.0.0.1', t
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f'{text!r}: expected HOST:PORT (e.g. 127.0.0.1:5555)')
    return f'{host or "127.0.0.1"}:{int(port)}'


def ping(address: str, timeout: float = 3.0) -> Dict[str, Any]:
    """The Info record of the server at ``address``; raises ConnectionError when it does not answer."""
    import grpc
    from runtime import protocol
    with grpc.insecure_channel(address, options=protocol.GRPC_OPTIONS) as ch:
        try:
            return json.loads(ch.unary_unary(protocol.INFO)(b'', timeout=timeout))
        except grpc.RpcError as e:
            raise ConnectionError(f'{address}: {e.code().name}: {e.details()}') from None
        except ValueError as e:
            raise ConnectionError(f'{address}: not an orchestra-nb server ({e})') from None


def cmd_ping(args: argparse.Namespace) -> int:
    try:
        address = parse_address(args.address)
    except ValueError as e:
        print(f'orchestra ping: {e}', file=sys.stderr)
        return 2
    last = ''
    for attempt in range(max(1, args.attempts)):
        if attempt:
            threading.Event().wait(args.interval)
        try:
            info = ping(address, args.timeout)
        except ConnectionError as e:
            last = str(e)
            continue
        if info.get('ready'):
            what = info.get('role') or 'executor'
            print(f'ready: {what} {info.get("name", "")} at {address}'.replace('  ', ' '), flush=True)
            return 0
        last = f'{address} answered but is not ready'
    print(f'not ready: {last}', file=sys.stderr, flush=True)
    return 1


# ----------------------------------------------------------------------------- bench / export

def _bench_module():
    """runtime.bench, imported only for ``orchestra bench`` (it pulls in more than the other commands)."""
    import runtime.bench as bench
    return bench


def cmd_export(args: argparse.Namespace) -> int:
    """``orchestra export docker-compose|kubernetes CONFIG OUT``: see runtime.export."""
    from runtime.export.plan import ExportError
    try:
        obj = load(args.config)
        app_dir = os.path.dirname(os.path.abspath(args.config))
        if args.target == 'docker-compose':
            from runtime.export.compose import write_compose
            out = write_compose(obj, args.output, network_name=args.network_name, image=args.image,
                                app_dir=app_dir, prometheus=args.prometheus)
            print(f'wrote {out}; start it with: docker-compose -f {out} up -d', flush=True)
        else:
            from runtime.export.kubernetes import write_kubernetes
            files = write_kubernetes(obj, args.output, k8s_namespace=args.k8s_namespace, image=args.image,
                                     app_dir=app_dir, service_monitor=args.service_monitor)
            print(f'wrote {len(files)} files to {args.output}; apply them with: kubectl apply -f {args.output}',
                  flush=True)
    except (ExportError, ValueError, FileNotFoundError, ImportError) as e:
        print(f'orchestra export: {e}', file=sys.stderr, flush=True)
        return 2
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from runtime.migrate import run
    return run(args.paths, write=args.write)


def cmd_replica(args: argparse.Namespace) -> int:
    from runtime.export.serve import run_replica
    return run_replica(args)


def cmd_gateway(args: argparse.Namespace) -> int:
    from runtime.export.serve import run_gateway
    return run_gateway(args)


# ----------------------------------------------------------------------------- the parser

def build_parser(with_bench: bool = False) -> argparse.ArgumentParser:
    """The ``orchestra`` parser; ``with_bench`` loads ``runtime.bench``'s flags (imports it)."""
    parser = StrictParser(prog='orchestra', description='Scale out docarray Executors: '
                          'Deployments, Flows, replicas, shards, RAFT.')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)

    p = sub.add_parser('deployment', help='serve a Deployment until Ctrl-C / SIGTERM',
                       description='Serve a Deployment until SIGINT/SIGTERM. Every flag is also a key of '
                                   'a jtype: Deployment YAML; flags override the YAML.')
    p.add_argument('--uses', required=True,
                   help='a jtype: Deployment YAML, an Executor YAML, or package.module:Class')
    add_flags(p, SERVE_DEPLOYMENT_ARGS)
    p.set_defaults(func=cmd_deployment)

    p = sub.add_parser('flow', help='serve a Flow until Ctrl-C / SIGTERM',
                       description='Serve a Flow until SIGINT/SIGTERM. Flags override the YAML\'s `with:`.')
    p.add_argument('--uses', required=True, help='a jtype: Flow YAML')
    add_flags(p, FLOW_ARGS)
    p.set_defaults(func=cmd_flow)

    p = sub.add_parser('executor', help='serve one Executor replica in this process',
                       description='One replica server in the foreground (external Executors, containers).')
    p.add_argument('--uses', required=True, help='package.module:Class, a class name with --py-modules, '
                                                 'or an Executor YAML')
    p.add_argument('--port', type=int, default=0, help='port to listen on (0: the OS picks)')
    p.add_argument('--host', default='127.0.0.1', help='address to listen on (default 127.0.0.1)')
    add_flags(p, EXECUTOR_ARGS)
    p.set_defaults(func=cmd_executor)

    p = sub.add_parser('ping', help='exit 0 when HOST:PORT answers ready, 1 otherwise',
                       description='Readiness probe: asks the Info RPC; exit 0 ready, 1 not.')
    p.add_argument('address', help='HOST:PORT of a gateway or replica')
    p.add_argument('--timeout', type=float, default=3.0, help='seconds per attempt (default 3)')
    p.add_argument('--attempts', type=int, default=1, help='tries before giving up (default 1)')
    p.add_argument('--interval', type=float, default=1.0, help='seconds between tries (default 1)')
    p.set_defaults(func=cmd_ping)

    p = sub.add_parser('bench', help='QPS comparison: one replica vs RAFT-replicated '
                                     '(`orchestra bench --help` for its flags)',
                       description='The QPS comparison of runtime.bench.')
    if with_bench:
        _bench_module().add_arguments(p)
    p.set_defaults(func=None)

    from runtime.export.plan import DEFAULT_IMAGE
    p = sub.add_parser('export', help='write Docker Compose or Kubernetes files for a Deployment/Flow YAML',
                       description='Export a jtype: Deployment/Flow YAML (docs/scaling-out.md).')
    ex = p.add_subparsers(dest='target', metavar='TARGET', required=True)
    for target, what, output, (flag, flag_help), (switch, switch_help) in (
            ('docker-compose', 'one service per replica, plus the gateway',
             'the compose file to write (e.g. deploy/docker-compose.yml)',
             ('--network-name', 'name of the Compose network (default: Compose picks)'),
             ('--prometheus', 'with monitoring: true, add a Prometheus service scraping every container')),
            ('kubernetes', 'manifests for kubectl apply -f OUT_DIR', 'the folder to write the manifests to',
             ('--k8s-namespace', 'namespace (default: the Deployment/Flow name)'),
             ('--service-monitor', "with monitoring: true, add a prometheus-operator ServiceMonitor"))):
        q = ex.add_parser(target, help=what)
        q.add_argument('config', help='a jtype: Deployment or Flow YAML')
        q.add_argument('output', help=output)
        q.add_argument(flag, help=flag_help)
        q.add_argument(switch, action='store_true', help=switch_help)
        q.add_argument('--image', default=DEFAULT_IMAGE, help=f'the runtime image (default {DEFAULT_IMAGE})')
        q.set_defaults(func=cmd_export)

    p = sub.add_parser('migrate', help="rewrite a Jina project's imports to orchestra_nb (a diff; --write to change)",
                       description="Rewrite a Jina project's Python imports (from jina import ... -> from "
                                   'orchestra_nb import ...) with libcst; YAML configs are kept (they are read as '
                                   'they are) and their hub references and refused keys reported. Prints a '
                                   'unified diff unless --write (docs/migrating-from-jina.md).')
    p.add_argument('paths', nargs='+', metavar='PATH', help='Python/YAML files or folders (walked)')
    p.add_argument('--write', action='store_true', help='change the files instead of printing the diff')
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser('replica', help='(in a container) serve one replica of an exported setup',
                       description='One replica of an exported Deployment/Flow, in the foreground.')
    p.add_argument('--config', required=True, help='the config the export wrote')
    p.add_argument('--executor', required=True, help='the Executor (Flow node or Deployment) name')
    p.add_argument('--shard', type=int, default=0, help='shard index (default 0)')
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument('--replica', type=int, help='replica index')
    g.add_argument('--replica-from-hostname', action='store_true',
                   help="the replica index is the host name's -<ordinal> (StatefulSet pods)")
    p.add_argument('--host', default='0.0.0.0', help='address to listen on (default 0.0.0.0)')
    p.add_argument('--port', type=int, required=True, help='gRPC port to listen on')
    p.add_argument('--peer-hosts', nargs='+', help='stateful: the host name of every replica of the shard')
    p.add_argument('--raft-password-from-secret', action='store_true',
                   help='derive the RAFT password from $ORCHESTRA_SECRET_FILE')
    p.add_argument('--log-level', default='INFO', help='DEBUG, INFO, WARNING, ...')
    p.set_defaults(func=cmd_replica)

    p = sub.add_parser('gateway', help='(in a container) serve the gateway of an exported setup',
                       description='The gateway of an exported Deployment/Flow, in the foreground.')
    p.add_argument('--graph', required=True, help='the graph as JSON (written by orchestra export)')
    p.add_argument('--host', default='0.0.0.0', help='address to listen on (default 0.0.0.0)')
    p.add_argument('--port', type=int, nargs='+', required=True, help='port to listen on (one per --protocol)')
    p.add_argument('--protocol', nargs='+', help='grpc (default), http, websocket: the doors, in --port order')
    p.add_argument('--log-level', default='INFO', help='DEBUG, INFO, WARNING, ...')
    p.set_defaults(func=cmd_gateway)
    return parser


def _command_of(argv: Sequence[str]) -> Optional[str]:
    for a in argv:
        if not a.startswith('-'):
            return a
    return None


def main(argv: Optional[Sequence[str]] = None, plotter: Optional[Callable[..., Any]] = None) -> int:
    """Run the CLI; returns the exit status. ``plotter`` goes to ``runtime.bench.run_from_args``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    with_bench = _command_of(argv) == 'bench'
    args = build_parser(with_bench).parse_args(argv)
    if args.command == 'bench':
        return int(_bench_module().run_from_args(args, plotter=plotter) or 0)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == '__main__':
    sys.exit(main())

"""Flow: a graph of Deployments behind one gateway.

    >>> f = (Flow(port=5555)
    ...      .add(name='encoder', uses=Encoder, replicas=2)
    ...      .add(name='indexer', uses=Indexer, shards=2, polling={'/search': 'ALL', '*': 'ANY'}))
    >>> with f:
    ...     f.post('/index', docs)

Each ``.add(...)`` takes a Deployment's arguments and returns the Flow, so calls
chain. ``needs`` says which Executors feed this one: by default the one added
just before (or the gateway for the first); ``needs='gateway'`` opens a parallel
branch; ``needs=['a', 'b']`` joins branches (their docs merged by id, in
``needs`` order, as shards are). ``.needs_all()`` joins every open branch.

An Executor added without ``uses`` echoes its docs (an Echo process, as in
Jina). A *join* -- ``.needs_all()``, ``.needs([...])``, or ``.add(name=...,
needs=[a, b])`` without ``uses`` or process arguments -- merges its inputs and
passes them on; the gateway does that itself, without a process.

In a Flow, an Executor that does not serve the requested endpoint passes the
docs on unchanged (as in Jina); a request that no Executor of the Flow serves
fails with an error naming the endpoint (unlike Jina, which returns the docs).
"""
from __future__ import annotations

import html
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Sequence, Union

from runtime import config
from runtime.args import (DEPLOYMENT_ARGS, FLOW_ADD_ARGS, FLOW_ARGS, FLOW_JINA_ONLY, FLOW_WIDE_ARGS, arg_names,
                          check_count, check_kwargs, check_port, check_values, protocol_ports)
from runtime.deployment import Deployment, ExecutorArgs, local_placement, plan_stage
from runtime.hosts import check_host
from runtime.limits import check_processes
from runtime.orchestration import Orchestration
from runtime.plan import Placement, StagePlan
from runtime.specs import GATEWAY
from runtime.yamlio import ConfigError, source_label

_DEPLOYMENT_NAMES = arg_names(DEPLOYMENT_ARGS)
_FLOW_NAMES = arg_names(FLOW_ARGS)
_FLOW_WIDE_NAMES = arg_names(FLOW_WIDE_ARGS)
#: arguments that make an Executor without ``uses`` a real (Echo) process rather than a join
_PROCESS_ARGS = frozenset(_DEPLOYMENT_NAMES) - {'name', 'needs'}


@dataclass
class FlowEntry:
    """One Executor of a Flow: its checked arguments (``args``, what the Flow plans from), or a join
    handled by the gateway (``args=None``). ``deployment`` is the Executor as a (never started)
    Deployment for ``flow[name]`` and the config/export writers; it checked the arguments, and the
    Flow never plans through it."""
    name: str
    needs: List[str]
    deployment: Optional[Deployment] = None
    replica_port: Optional[int] = None
    floating: bool = False   # Jina's: runs every request, its output goes nowhere (FLOW_ADD_ARGS)
    args: Optional[ExecutorArgs] = None
    metrics_port: Optional[int] = None   # .add(port_monitoring=P): its one replica's /metrics port

    @property
    def is_join(self) -> bool:
        return self.deployment is None


class Flow(Orchestration):
    """Executors chained (or branched) behind one gateway; see the module docstring."""

    #: what a YAML config of this class says in ``jtype:``
    jtype = 'Flow'

    # Spelled out for editors; runtime/args.py (FLOW_ARGS) declares defaults and checks, and
    # tests/test_args.py checks that this signature matches it.
    def __init__(self, name: str = 'flow', port: Union[int, List[int], None] = None, host: str = '127.0.0.1',
                 protocol: Union[str, List[str]] = 'grpc', timeout_ready: float = 60.0, log_dir: Optional[str] = None,
                 max_in_flight_per_replica: int = 4, stream_logs: bool = False, secret: Optional[str] = None,
                 tls_cert: Optional[str] = None, tls_key: Optional[str] = None, monitoring: bool = False,
                 port_monitoring: Optional[int] = None, **kwargs):
        for key in kwargs:
            if key in FLOW_JINA_ONLY:
                raise ValueError(f'Flow: {key}= is not an argument of a Flow here: {FLOW_JINA_ONLY[key]}')
        check_kwargs(kwargs, _FLOW_NAMES + _FLOW_WIDE_NAMES, 'Flow')
        #: Deployment arguments given to the Flow: the defaults of every .add() (as Jina passes them down)
        self.executor_defaults: Dict[str, Any] = check_values(
            FLOW_WIDE_ARGS, {k: v for k, v in kwargs.items() if k in _FLOW_WIDE_NAMES})
        given = dict(locals())
        checked = check_values(FLOW_ARGS, {k: given[k] for k in _FLOW_NAMES})
        if not isinstance(host, str):
            raise ValueError(f'host={host!r}: the Flow gateway listens on one host, e.g. "127.0.0.1"')
        check_host(host, 'host')
        self.entries: List[FlowEntry] = []
        super().__init__(name=checked['name'], doors=protocol_ports(checked['protocol'], port), host=host,
                         timeout_ready=checked['timeout_ready'],
                         log_dir=checked['log_dir'], max_in_flight_per_replica=checked['max_in_flight_per_replica'],
                         stream_logs=checked['stream_logs'], secret=checked['secret'], tls_cert=checked['tls_cert'],
                         tls_key=checked['tls_key'], monitoring=checked['monitoring'],
                         port_monitoring=checked['port_monitoring'])

    # -- building the graph ------------------------------------------------------------
    def add(self, name: Optional[str] = None, needs: Union[str, Sequence[str], None] = None,
            floating: bool = False, **kwargs) -> 'Flow':
        """Add an Executor (a Deployment's arguments) fed by ``needs``; returns the Flow.

        Without ``uses`` it echoes its input (an Echo process, as a Deployment without
        ``uses``) -- unless it only joins two or more branches: then the gateway does that.
        Arguments given to ``Flow(...)`` that are a Deployment's (``Flow(replicas=2)``) are the
        defaults here. ``floating=True`` (Jina's): it gets every request but its output goes
        nowhere, the reply does not wait for it, and the next ``.add()`` chains after the
        Executor before it.

        >>> Flow().add(name='a', uses=A).add(name='b', uses=B, needs='gateway').needs_all()
        """
        check_values(FLOW_ADD_ARGS, {'floating': floating})
        return self._add(name, needs, kwargs, join_if_bare=False, floating=floating)

    def _add(self, name: Optional[str], needs: Union[str, Sequence[str], None], kwargs: Dict[str, Any],
             join_if_bare: bool, floating: bool = False) -> 'Flow':
        if self._started:
            raise RuntimeError(f'Flow {self.name!r} is running; close it before adding Executors')
        check_kwargs(kwargs, _DEPLOYMENT_NAMES, 'Flow.add')
        for key in ('secret', 'tls_cert', 'tls_key'):   # one gateway, one secret: the Flow's
            if kwargs.get(key) is not None:
                raise ValueError(f'Flow.add({key}=...): a Flow has one gateway and one secret; '
                                 f'pass {key} to Flow(...) instead')
        if kwargs.get('protocol', 'grpc') != 'grpc':   # Executors always speak gRPC to the gateway
            raise ValueError(f'Flow.add(protocol={kwargs["protocol"]!r}): a Flow has one gateway, and its doors '
                             f'are the Flow\'s: pass protocol to Flow(...) instead')
        name = self._new_name(name)
        needs_list = self._resolve_needs(name, needs)
        bare = kwargs.get('uses') is None and not (set(kwargs) & (_PROCESS_ARGS - {'uses'}))
        if bare and (join_if_bare or len(needs_list) > 1):
            self.entries.append(FlowEntry(name, needs_list, None))
            return self
        for key, value in self.executor_defaults.items():   # Flow(replicas=...): Jina passes it down
            if key == 'env' and kwargs.get('env') is not None:
                kwargs['env'] = {**value, **kwargs['env']}
            else:
                kwargs.setdefault(key, value)
        replica_port = None
        port = kwargs.get('port')
        if port is not None and not kwargs.get('external'):
            # in a Flow, `port` of a local Executor fixes the port of its (single) replica
            replica_port = check_port(port)
            n = kwargs.get('replicas', 1) * kwargs.get('shards', 1) if all(
                isinstance(kwargs.get(k, 1), int) for k in ('replicas', 'shards')) else 1
            if n != 1:
                raise ValueError(f'Flow.add(name={name!r}, port={port!r}): a fixed port needs exactly one '
                                 f'replica and one shard (got {n} processes); omit port to let the OS pick')
            kwargs = {k: v for k, v in kwargs.items() if k != 'port'}
        metrics_port = None
        if kwargs.get('port_monitoring') is not None:
            # in a Flow, an Executor's port_monitoring fixes the /metrics port of its (single) replica
            metrics_port = check_port(kwargs['port_monitoring'], 'port_monitoring')
            n = kwargs.get('replicas', 1) * kwargs.get('shards', 1) if all(
                isinstance(kwargs.get(k, 1), int) for k in ('replicas', 'shards')) else 1
            if n != 1:
                raise ValueError(f'Flow.add(name={name!r}, port_monitoring={metrics_port!r}): a fixed metrics port '
                                 f'needs exactly one replica and one shard (got {n} processes); omit it to let the '
                                 'OS pick (status() reports each replica\'s metrics_port)')
            kwargs = {k: v for k, v in kwargs.items() if k != 'port_monitoring'}
        kwargs.setdefault('monitoring', self.monitoring)   # Flow(monitoring=True): every Executor too (Jina)
        dep = Deployment(name=name, needs=needs_list, **kwargs)
        if not dep.external:   # the Flow's total, as well as this Executor's
            check_processes(dep.replicas, dep.shards, f'Flow.add(name={name!r})', self._local_processes())
        self.entries.append(FlowEntry(name, needs_list, dep, replica_port, floating, dep.executor_args(),
                                      metrics_port))
        return self

    def needs(self, needs: Union[str, Sequence[str]], name: str = 'joiner', **kwargs) -> 'Flow':
        """Add an Executor (a join unless ``uses`` is given) that waits for every name in ``needs``."""
        if isinstance(needs, str) or len(list(needs)) < 2:
            raise ValueError(f'needs={needs!r}: joining needs at least two Executors; '
                             'for one, use .add(needs=...)')
        return self._add(name, list(needs), kwargs, join_if_bare=True)

    def needs_all(self, name: str = 'joiner', **kwargs) -> 'Flow':
        """Join every open branch (Executors nothing else needs) into one; returns the Flow."""
        open_ = self.open_branches()
        if not open_:
            raise ValueError('needs_all(): the Flow has no Executors to join; add some with .add(...)')
        return self._add(name, open_, kwargs, join_if_bare=True)

    def open_branches(self) -> List[str]:
        """Executors whose output nothing else needs (their docs go back to the client)."""
        needed = {n for e in self.entries for n in e.needs}
        return [e.name for e in self.entries if e.name not in needed and not e.floating]

    def _new_name(self, name: Optional[str]) -> str:
        taken = {e.name for e in self.entries}
        if name is None:
            i = len(self.entries)
            while f'executor{i}' in taken:
                i += 1
            return f'executor{i}'
        if not isinstance(name, str) or not name or '/' in name:
            raise ValueError(f'name={name!r}: must be a non-empty string without "/"')
        if name == GATEWAY:
            raise ValueError(f'name={name!r} is reserved for the Flow\'s gateway; choose another name')
        if name in taken:
            raise ValueError(f'name={name!r} is already used in Flow {self.name!r}; '
                             f'names so far: {", ".join(sorted(taken))}')
        return name

    def _resolve_needs(self, name: str, needs: Union[str, Sequence[str], None]) -> List[str]:
        if needs is None:   # the last Executor added that is not floating (Jina)
            last = [e.name for e in self.entries if not e.floating]
            return [last[-1] if last else GATEWAY]
        if isinstance(needs, str):
            needs = [needs]
        if not isinstance(needs, (list, tuple)) or not needs or not all(isinstance(n, str) for n in needs):
            raise ValueError(f'needs={needs!r} for {name!r}: must be a name or a non-empty list of names')
        known = [GATEWAY] + [e.name for e in self.entries]
        for n in needs:
            if n not in known:
                raise ValueError(f'needs={n!r} for {name!r}: no such Executor added before it; '
                                 f'known: {", ".join(repr(k) for k in known)}')
        if len(set(needs)) != len(needs):
            raise ValueError(f'needs={list(needs)!r} for {name!r}: a name appears twice')
        return list(needs)

    def __getitem__(self, name: str) -> Optional[Deployment]:
        """The Deployment of Executor ``name`` (None for a join)."""
        for e in self.entries:
            if e.name == name:
                return e.deployment
        raise KeyError(f'{name!r} is not an Executor of Flow {self.name!r}; '
                       f'known: {", ".join(e.name for e in self.entries)}')

    def scale(self, executor: str, replicas: int, drain_timeout: float = 30.0) -> 'Flow':
        """Run ``replicas`` replicas per shard of Executor ``executor`` from now on, dropping no request.

        >>> flow.scale('encoder', 4)  # doctest: +SKIP
        """
        dep = self[executor]
        if dep is None:
            raise ValueError(f'{executor!r} is a join inside the gateway; it has no replicas to scale')
        n = check_count(replicas, 'replicas')
        check_processes(n, dep.shards, f'Flow {self.name!r}.scale({executor!r})', self._local_processes(dep))
        self._require_started()
        dep.check_scalable()
        entry = next(e for e in self.entries if e.name == executor)
        target = plan_stage(entry.args, local_placement(entry.args, n), replicas=n)
        target.needs = list(entry.needs)
        self._scale_stage(target, drain_timeout)
        entry.args = replace(entry.args, replicas=n)
        dep.replicas = n
        return self

    def _local_processes(self, leave_out: Optional[Deployment] = None) -> int:
        """Replica processes the Flow's Executors start (``leave_out``'s not counted)."""
        return sum(e.deployment.replicas * e.deployment.shards for e in self.entries
                   if e.deployment is not None and e.deployment is not leave_out and not e.deployment.external)

    def start(self, progress: Any = None) -> 'Flow':
        """Start every process (see :meth:`Orchestration.start`), then check that chained Executors
        agree on their docs' schemas (as Jina does at start; :mod:`runtime.schemas`): a mismatch
        stops the Flow and raises ``ValueError`` naming the Executors, the endpoint and the fields."""
        was_running = self.running
        super().start(progress)
        if not was_running:
            try:
                self._check_schemas()
            except BaseException:
                self.close()
                raise
        return self

    def _check_schemas(self) -> None:
        from runtime.schemas import schema_errors
        first = {}
        for r in self.status()['replicas']:   # one replica per Executor says what its endpoints take
            if r.get('endpoints') is not None:
                first.setdefault(r['node'], r['endpoints'])
        errors = schema_errors({e.name: list(e.needs) for e in self.entries}, first)
        if errors:
            raise ValueError(f'Flow {self.name!r}: chained Executors disagree on their docs: ' + '; '.join(errors)
                             + ' (declare the same doc type, or one with the same fields)')

    # -- what the base class runs --------------------------------------------------------
    def _plan(self, placements: Optional[Dict[str, Placement]] = None) -> List[StagePlan]:
        if not self.entries:
            raise ValueError(f'Flow {self.name!r} has no Executors; add one with .add(uses=...)')
        plans = []
        for e in self.entries:
            if e.is_join:
                plans.append(StagePlan(e.name, [], needs=list(e.needs)))
                continue
            placement = (placements or {}).get(e.name)
            if placement is None:   # this machine's: a stateful Executor keeps its workspace for the next start
                placement = local_placement(e.args)
                if placement.raft is not None:
                    e.args = replace(e.args, workspace=placement.raft.workspace)
                    e.deployment.workspace = placement.raft.workspace
            plan = plan_stage(e.args, placement, replica_port=e.replica_port)
            plan.needs = list(e.needs)
            plan.floating = e.floating
            if plan.max_in_flight is None:
                plan.max_in_flight = e.args.max_in_flight_per_replica
            if e.metrics_port is not None:
                plan.shards = [[replace(r, spec=replace(r.spec, port_monitoring=e.metrics_port)) for r in shard]
                               for shard in plan.shards]
            plans.append(plan)
        return plans

    # -- configs -------------------------------------------------------------------------
    @classmethod
    def from_spec(cls, spec: Dict[str, Any]) -> 'Flow':
        """A (not started) Flow from a ``jtype: Flow`` spec (:func:`runtime.config.load_spec`)."""
        if spec.get('jtype') != cls.jtype:
            raise ValueError(f"expected a jtype: {cls.jtype} spec, got jtype: {spec.get('jtype')!r}")
        flow = cls(**spec.get('with', {}))
        for entry in spec.get('executors', []):
            try:
                flow.add(**entry)
            except ValueError as e:
                raise ConfigError(f'Executor {entry.get("name")!r}: {e}') from None
        return flow

    @classmethod
    def load_config(cls, source: str) -> 'Flow':
        """A Flow from a ``jtype: Flow`` YAML file (or YAML text)."""
        spec = config.load_spec(source)
        if spec['jtype'] != cls.jtype:
            raise ConfigError(f'{source_label(source)} is a jtype: {spec["jtype"]} config; '
                              'use Deployment.load_config')
        return _built(source, cls.from_spec, spec)

    def save_config(self, path: str) -> None:
        """Write this Flow as ``jtype: Flow`` YAML; :meth:`load_config` reads it back."""
        config.save(self, path)

    # -- reprs -----------------------------------------------------------------------------
    def _describe_entry(self, e: FlowEntry) -> str:
        if e.is_join:
            return 'join'
        d = e.deployment
        uses = d.uses
        label = uses.__name__ if isinstance(uses, type) else str(uses).rsplit(':', 1)[-1].rsplit('.', 1)[-1]
        parts = [f'external {", ".join(d.external_addresses)}'] if d.external else [label]
        if d.shards > 1:
            parts.append(f'shards={d.shards}')
        if d.replicas > 1 or d.shards > 1:
            parts.append(f'replicas={d.replicas}')
        if d.shards > 1:
            pol = d.polling.to_config()
            parts.append(f'polling={pol!r}' if pol is not None else "polling=default (/search ALL)")
        if d.stateful:
            parts.append('stateful')
        return ', '.join(parts)

    def _state(self) -> str:
        return f'running at {", ".join(self.addresses.values())}' if self._started else 'stopped'

    def __repr__(self) -> str:
        return self.graph_text()

    def graph_text(self) -> str:
        """The graph as text: a header line, then one ``needs -> name  [what]`` line per Executor."""
        lines = [f'<Flow {self.name!r} {self._state()}, {len(self.entries)} Executor(s)>']
        width = max([len(', '.join(e.needs)) for e in self.entries] + [7])
        for e in self.entries:
            lines.append(f'  {", ".join(e.needs):>{width}} -> {e.name}  [{self._describe_entry(e)}]')
        for leaf in self.open_branches():
            lines.append(f'  {leaf:>{width}} -> {GATEWAY}')
        return '\n'.join(lines)

    __str__ = __repr__

    def _repr_html_(self) -> str:
        """The graph, then the replica table while running."""
        return self.graph_html() + (super()._repr_html_() if self.running else '')

    def _layers(self) -> Dict[str, int]:
        depth = {GATEWAY: 0}
        for e in self.entries:  # needs always name earlier entries: one pass suffices
            depth[e.name] = 1 + max(depth[n] for n in e.needs)
        return depth

    def graph_html(self) -> str:
        """The graph as an inline SVG (no network needed), plus a table of Executors."""
        esc = html.escape
        depth = self._layers()
        last = max(depth.values()) + 1
        columns: Dict[int, List[str]] = {}
        for n, d in depth.items():
            columns.setdefault(d, []).append(n)
        columns[last] = ['gateway (out)']
        by_name = {e.name: e for e in self.entries}
        subs = {n: _wrap_label('gateway' if by_name.get(n) is None else self._describe_entry(by_name[n]), 24)
                for n in depth.keys() | {'gateway (out)'}}   # wrapped, never cut off
        box_w, gap_x, gap_y = max(150, 7 * max(len(x) for v in subs.values() for x in v) + 16), 50, 18
        box_h = 30 + 14 * max(len(v) for v in subs.values())
        rows = max(len(v) for v in columns.values())
        width = (last + 1) * (box_w + gap_x) - gap_x + 20
        height = rows * (box_h + gap_y) - gap_y + 20
        pos: Dict[str, tuple] = {}
        for d, names in columns.items():
            top = 10 + (height - 20 - (len(names) * (box_h + gap_y) - gap_y)) / 2
            for i, n in enumerate(names):
                pos[n] = (10 + d * (box_w + gap_x), top + i * (box_h + gap_y))
        svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
               f'font-family="sans-serif" font-size="12">',
               '<defs><marker id="arr" markerWidth="8" markerHeight="8" refX="8" refY="4" orient="auto">'
               '<path d="M0,0 L8,4 L0,8 z" fill="#555"/></marker></defs>']
        edges = [(n, e.name) for e in self.entries for n in e.needs]
        edges += [(leaf, 'gateway (out)') for leaf in self.open_branches()]
        for a, b in edges:
            (x1, y1), (x2, y2) = pos[a], pos[b]
            svg.append(f'<line x1="{x1 + box_w}" y1="{y1 + box_h / 2}" x2="{x2}" y2="{y2 + box_h / 2}" '
                       'stroke="#555" marker-end="url(#arr)"/>')
        for n, (x, y) in pos.items():
            e = by_name.get(n)
            fill = '#eee' if e is None else ('#fff8e1' if e.is_join else '#e3f2fd')
            svg.append(f'<rect x="{x}" y="{y}" width="{box_w}" height="{box_h}" rx="6" fill="{fill}" '
                       'stroke="#555"/>')
            svg.append(f'<text x="{x + box_w / 2}" y="{y + 18}" text-anchor="middle" '
                       f'font-weight="bold">{esc(n if e is not None else GATEWAY)}</text>')
            svg += [f'<text x="{x + box_w / 2}" y="{y + 34 + 14 * i}" text-anchor="middle" fill="#333">'
                    f'{esc(line)}</text>' for i, line in enumerate(subs[n])]
        svg.append('</svg>')
        rows_html = ''.join(
            f'<tr><td>{esc(e.name)}</td><td>{esc(", ".join(e.needs))}</td>'
            f'<td>{esc(self._describe_entry(e))}</td></tr>' for e in self.entries)
        return (f'<div class="orchestra-flow"><b>Flow {esc(self.name)!s}</b> — {esc(self._state())}<br>'
                + ''.join(svg)
                + '<table><tr><th>Executor</th><th>needs</th><th>what</th></tr>' + rows_html
                + '</table></div>')


def _wrap_label(text: str, width: int) -> List[str]:
    """'Tagger, shards=2, replicas=3' -> lines of at most ``width`` characters, split after commas."""
    lines: List[str] = []
    for part in text.split(', '):
        if lines and len(lines[-1]) + 2 + len(part) <= width:
            lines[-1] += ', ' + part
        else:
            lines.append(part)
    return lines or ['']


# -- either kind -----------------------------------------------------------------------------
def build(spec: Dict[str, Any]) -> Union[Deployment, Flow]:
    """A spec -> a (not started) Deployment or Flow, by its ``jtype``."""
    kinds = {Deployment.jtype: Deployment, Flow.jtype: Flow}
    kind = kinds.get(spec.get('jtype'))
    if kind is None:
        raise ValueError(f"spec jtype must be 'Deployment' or 'Flow', got {spec.get('jtype')!r}")
    return kind.from_spec(spec)


def load(source: str) -> Union[Deployment, Flow]:
    """A YAML path (or text) -> a Deployment or a Flow, by its ``jtype``.

    >>> load('jtype: Deployment\\nreplicas: 2\\n').replicas
    2
    """
    return _built(source, build, config.load_spec(source))


def _built(source: str, make: Any, spec: Dict[str, Any]) -> Any:
    """``make(spec)``, a ValueError becoming a ConfigError that names ``source``."""
    try:
        return make(spec)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f'{source_label(source)}: {e}') from None

"""``%orchestra`` line magic and ``%%orchestra up`` cell magic.

    %load_ext orchestra_nb
    dep = %orchestra up --name indexer --uses MyExecutor --replicas 3
    %orchestra status indexer
    %orchestra scale indexer 5
    %orchestra down --all

Bad arguments raise IPython's ``UsageError`` (one line and the usage, no
traceback); a failed start raises :class:`OrchestraError`, which IPython shows
as its message (the failing replica and its log tail) instead of a traceback.
Everything started here is kept in :data:`orchestra_nb.registry.REGISTRY` and
stopped at kernel exit. Run ``%orchestra`` alone for the help.
"""
from __future__ import annotations

import argparse
import ast
import os
import shlex
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Optional

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.display import display

from orchestra_nb.registry import REGISTRY, Entry, default_name, executor_classes
from runtime import reprs
from runtime.args import DEPLOYMENT_ARGS, StrictParser, add_flags, closest, flag_values, without
from runtime.flow import Flow
from runtime.orchestration import Orchestration
from runtime.uses import YAML_SUFFIXES, UsesError, resolve_name

HELP = """\
%orchestra: start and watch scaled-out Executors from this notebook.

  %orchestra up --uses EXEC [--name N] [--replicas 3] [--shards 2] [--polling ANY|ALL|JSON]
                [--stateful] [--peer-ports 12345,12346,12347] [--workspace DIR] [--port P]
                [--uses-with JSON] [--env KEY=VALUE ...] [--timeout-ready S] [--no-wait]
                (every Deployment argument is a flag: %orchestra up --help lists them)
      EXEC: a class defined in this notebook, 'package.module:Class', a built-in
      (echo, exact_nn), or a YAML file.
      Returns the Deployment once every replica answers (dep = %orchestra up ...);
      --no-wait returns at once and starts in the background.
  %orchestra up -f deployment_or_flow.yaml [--name N] [--no-wait]
  %%orchestra up [--no-wait]      (cell magic: the cell body is a YAML Deployment or Flow)
  %orchestra down NAME [NAME ...] | --all
  %orchestra status [NAME]        (a table of everything started here, or NAME's replicas)
  %orchestra logs NAME [--replica I|gateway] [-n 50]
  %orchestra scale NAME N [--executor E]  (stateless: add/remove replicas, no request dropped)
  %orchestra dashboard NAME       (live widgets: requests per replica, QPS, latency, RAFT, CPU, GPU)
  %orchestra bench [--key value ...]   (orchestra_nb.bench.compare with those arguments)
  %orchestra help

Everything started here stops when the kernel shuts down or restarts; the
interrupt button stops the running cell, not the services."""

#: the Deployment arguments that are ``%orchestra up`` flags (--uses resolves notebook classes first;
#: needs is for Flows)
UP_ARGS = without(DEPLOYMENT_ARGS, 'uses', 'needs')


class OrchestraError(Exception):
    """A magic failed for a reason other than its arguments; shown without a traceback."""

    def _render_traceback_(self) -> List[str]:
        return [f'OrchestraError: {line}' if i == 0 else line
                for i, line in enumerate(str(self).splitlines() or [''])]


class _ArgError(Exception):
    pass


class _HelpShown(Exception):
    pass


class _Parser(StrictParser):
    """argparse that raises instead of exiting the kernel; no abbreviations (``--replica`` is not
    ``--replicas``), and an unknown flag or value names the closest valid one."""

    def error(self, message: str):
        raise _ArgError(self.explain(message))

    def exit(self, status: int = 0, message: Optional[str] = None):
        if message:
            print(message)
        raise _HelpShown()


def _parsers() -> Dict[str, _Parser]:
    p: Dict[str, _Parser] = {}
    up = p['up'] = _Parser(prog='%orchestra up')
    up.add_argument('--uses', help="a class in this notebook, 'package.module:Class', or a YAML file")
    up.add_argument('-f', '--file', help='a YAML Deployment or Flow')
    add_flags(up, UP_ARGS)
    up.add_argument('--no-wait', action='store_true', help='return at once; start in the background')
    down = p['down'] = _Parser(prog='%orchestra down')
    down.add_argument('names', nargs='*')
    down.add_argument('--all', action='store_true')
    status = p['status'] = _Parser(prog='%orchestra status')
    status.add_argument('name', nargs='?')
    logs = p['logs'] = _Parser(prog='%orchestra logs')
    logs.add_argument('name')
    logs.add_argument('--replica', help="a replica index, a replica name, or 'gateway'")
    logs.add_argument('-n', '--lines', type=int, default=50)
    scale = p['scale'] = _Parser(prog='%orchestra scale')
    scale.add_argument('name')
    scale.add_argument('replicas', type=int)
    scale.add_argument('--drain-timeout', type=float, default=30.0)
    scale.add_argument('--executor', help='in a Flow: the Executor to scale')
    dash = p['dashboard'] = _Parser(prog='%orchestra dashboard')
    dash.add_argument('name')
    dash.add_argument('--interval', type=float, default=0.5)
    return p


PARSERS = _parsers()
USAGES = {
    'up': '%orchestra up --uses EXEC | -f FILE.yaml [--name N] [--replicas N] [--shards N] '
          '[--polling ANY|ALL|JSON] [--stateful] [--no-wait] ...',
    'down': '%orchestra down NAME [NAME ...] | --all',
    'status': '%orchestra status [NAME]',
    'logs': '%orchestra logs NAME [--replica I|NAME|gateway] [-n 50]',
    'scale': '%orchestra scale NAME N [--executor E] [--drain-timeout S]',
    'dashboard': '%orchestra dashboard NAME [--interval S]',
    'bench': '%orchestra bench [--key value ...]   (arguments of orchestra_nb.bench.compare)',
}


def usage_error(message: str, command: Optional[str] = None) -> UsageError:
    """One line of error, then the usage of ``command`` (or the command list)."""
    usage = USAGES.get(command, '%orchestra up|down|status|logs|scale|dashboard|bench|help ...')
    return UsageError(f'{message}\nusage: {usage}   (%orchestra help for more)')


# -- resolving --uses -------------------------------------------------------------------
def notebook_uses(spec: str, user_ns: Dict[str, Any]) -> Any:
    """``--uses`` -> a class (notebook namespace), a 'module:Class' string, or a YAML path.

    The notebook's Executor classes are tried first, then everything
    :func:`runtime.uses.resolve_name` takes (the built-ins by short name,
    ``'package.module:Class'``), the same table code, YAML and the CLI use.
    Raises ``ValueError`` (one line: what was tried, the closest matches).

    >>> notebook_uses('echo', {}) == BUILTIN_EXECUTORS['echo']
    True
    """
    if spec.lower().endswith(YAML_SUFFIXES):
        if not os.path.isfile(spec):
            raise ValueError(f'--uses {spec!r}: no such YAML file (from {os.getcwd()})')
        return os.path.abspath(spec)
    return resolve_name(spec, executor_classes(user_ns))


# -- YAML -----------------------------------------------------------------------------
def load_yaml(path: str, user_ns: Dict[str, Any]) -> Orchestration:
    """A Deployment or Flow from a YAML file (``jtype`` decides); ``uses: Name`` may name a class
    defined in the notebook (looked up before the Deployment resolves ``uses``)."""
    from runtime import config
    from runtime.deployment import Deployment
    from runtime.yamlio import source_label
    spec = config.load_spec(path)
    if spec['jtype'] not in ('Deployment', 'Flow'):
        raise ValueError(f"{path}: expected a mapping with 'jtype: Deployment' or 'jtype: Flow'")
    classes = executor_classes(user_ns)
    for section in [spec.get('with') or {}] + list(spec.get('executors') or []):
        uses = section.get('uses')
        if isinstance(uses, str) and uses in classes:
            section['uses'] = classes[uses]
    cls = Flow if spec['jtype'] == 'Flow' else Deployment
    try:
        return cls.from_spec(spec)
    except UsesError:
        raise
    except ValueError as e:
        raise ValueError(f'{source_label(path)}: {e}') from None


# -- progress while starting ------------------------------------------------------------
class ProgressView:
    """Per-process progress of a start: starting -> ready / failed (with the log tail).

    In a kernel it is an HTML view updated in place (a display handle when called
    from the cell's own thread, an ipywidgets.HTML for background starts); in a
    terminal shell it prints one line per change.
    """

    def __init__(self, entry: Entry, kernel: bool, background: bool, quiet: bool = False):
        self.entry = entry
        self.kernel = kernel
        self.background = background
        self.quiet = quiet
        self.t0 = time.monotonic()
        self.detail = ''
        self._handle = None
        self._widget = None
        if quiet:
            return
        if kernel and background:
            import ipywidgets
            self._widget = ipywidgets.HTML(self.render())
            display(self._widget)
        elif kernel:
            self._handle = display(_Rendered(self.render(), self.text()), display_id=True)

    def __call__(self, name: str, state: str, detail: Optional[str]) -> None:
        self.entry.progress[name] = state
        if detail and state == 'failed':
            self.detail = detail
        if self.quiet:
            return
        if not self.kernel:
            if not self.background:
                print(f'  {name}: {state}', flush=True)
            return
        self.refresh()

    def done(self, state: str) -> None:
        if self.quiet:
            return
        if not self.kernel:
            if not self.background:
                print(f'{self.entry.name}: {state} in {time.monotonic() - self.t0:.1f} s', flush=True)
            return
        self.refresh(state)

    def refresh(self, final: Optional[str] = None) -> None:
        html = self.render(final)
        if self._widget is not None:
            self._widget.value = html
        elif self._handle is not None:
            self._handle.update(_Rendered(html, self.text(final)))

    def text(self, final: Optional[str] = None) -> str:
        """The plain-text form (what a saved notebook shows outside a browser)."""
        lines = [f'{self.entry.name}: {final or "starting"} ({time.monotonic() - self.t0:.1f} s)']
        lines += [f'  {name}: {state}' for name, state in self.entry.progress.items()]
        return '\n'.join(lines)

    def render(self, final: Optional[str] = None) -> str:
        rows = [(name, reprs.badge(state)) for name, state in self.entry.progress.items()]
        table = reprs.html_table(['process', 'state'], rows, raw_columns=(1,)) if rows else ''
        state = reprs.badge(final or 'starting')   # 'indexer: ● starting (0.2 s)', then '● ready (1.3 s)'
        elapsed = f'{time.monotonic() - self.t0:.1f} s'
        detail = ''
        if self.detail and (self.background or final is None):
            detail = f'<pre style="color: #c62828; white-space: pre-wrap">{reprs.esc(self.detail)}</pre>'
        return reprs.template('progress.html').substitute(
            name=reprs.esc(self.entry.name), state=state, elapsed=reprs.esc(elapsed), table=table, detail=detail)


class _Rendered:
    """A display object with both an HTML and a plain-text form."""

    def __init__(self, html: str, text: str):
        self.html, self.text = html, text

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return self.text


# -- the magic ------------------------------------------------------------------------
@magics_class
class OrchestraMagics(Magics):
    """``%orchestra`` / ``%%orchestra``; see the module docstring and ``%orchestra help``."""

    @line_cell_magic
    def orchestra(self, line: str = '', cell: Optional[str] = None):
        try:
            argv = shlex.split(line)
        except ValueError as e:
            raise usage_error(f'cannot parse the arguments: {e}') from None
        if cell is not None:
            if not argv or argv[0] != 'up':
                raise usage_error('the cell magic is %%orchestra up [--name N] [--no-wait], '
                                  'with a YAML Deployment or Flow as the body', 'up')
            return self._up_cell(argv[1:], cell)
        if not argv or argv[0] in ('help', '-h', '--help'):
            print(HELP)
            return None
        command, rest = argv[0], argv[1:]
        handler: Optional[Callable] = getattr(self, f'_cmd_{command}', None)
        if handler is None:
            known = [n[len('_cmd_'):] for n in dir(self) if n.startswith('_cmd_')] + ['help']
            raise usage_error(f'unknown command {command!r}{closest(command, known)}')
        if command == 'bench':
            return handler(rest)
        try:
            args = PARSERS[command].parse_args(rest)
        except _ArgError as e:
            raise usage_error(str(e), command) from None
        except _HelpShown:
            return None
        return handler(args)

    orchestra.__doc__ = HELP   # `%orchestra?` shows the help

    # -- helpers --------------------------------------------------------------------
    @property
    def _kernel(self) -> bool:
        return getattr(self.shell, 'kernel', None) is not None

    def _entry(self, name: str, command: str) -> Entry:
        try:
            return REGISTRY.get(name)
        except KeyError as e:
            raise usage_error(e.args[0], command) from None

    def _start(self, obj: Orchestration, no_wait: bool) -> Orchestration:
        try:
            entry = REGISTRY.add(obj, source='magic')
        except ValueError as e:
            raise usage_error(str(e), 'up') from None
        view = ProgressView(entry, kernel=self._kernel, background=no_wait)
        if no_wait:
            def run():
                try:
                    obj.start(progress=view)
                    view.done('ready')
                except BaseException as e:  # kept for %orchestra status
                    entry.error = e
                    view.done('failed')
            entry.thread = threading.Thread(target=run, daemon=True, name=f'orchestra-up-{obj.name}')
            entry.thread.start()
            if not self._kernel:
                print(f'starting {obj.name!r} in the background; `%orchestra status {obj.name}` shows progress')
            return obj
        try:
            obj.start(progress=view)
        except KeyboardInterrupt:
            REGISTRY.remove(obj.name)  # start() already stopped what it had started
            raise
        except Exception as e:
            REGISTRY.remove(obj.name)
            view.done('failed')
            raise OrchestraError(f'{obj.name!r} failed to start: {e}') from None
        view.done('ready')
        return obj

    # -- up -----------------------------------------------------------------------------
    def _cmd_up(self, args: argparse.Namespace) -> Orchestration:
        user_ns = self.shell.user_ns
        if args.file and args.uses:
            raise usage_error('give --uses or -f, not both', 'up')
        source = args.file or args.uses
        if not source:
            raise usage_error('what should run? give --uses EXEC or -f file.yaml', 'up')
        try:
            uses = os.path.abspath(args.file) if args.file else notebook_uses(args.uses, user_ns)
            if isinstance(uses, str) and uses.lower().endswith(YAML_SUFFIXES):
                if args.file and not os.path.isfile(uses):
                    raise ValueError(f'-f {args.file!r}: no such file (from {os.getcwd()})')
                extra = [a.flag for a in UP_ARGS if a.name != 'name' and getattr(args, a.name) is not None]
                if extra:
                    raise ValueError(f'with a YAML file, set {", ".join(extra)} '
                                     'in the YAML (only --name and --no-wait apply)')
                obj = load_yaml(uses, user_ns)
                if args.name:
                    obj.name = args.name
            else:
                obj = self._deployment(uses, args)
        except (ValueError, TypeError) as e:
            raise usage_error(str(e), 'up') from None
        return self._start(obj, args.no_wait)

    def _deployment(self, uses: Any, args: argparse.Namespace):
        from runtime.deployment import Deployment
        kwargs: Dict[str, Any] = flag_values(args, UP_ARGS)
        kwargs['uses'] = uses
        kwargs.setdefault('name', default_name(uses))
        return Deployment(**kwargs)

    def _up_cell(self, argv: List[str], body: str) -> Orchestration:
        try:
            args = PARSERS['up'].parse_args(argv)
        except _ArgError as e:
            raise usage_error(str(e), 'up') from None
        except _HelpShown:
            return None
        if args.file or args.uses:
            raise usage_error('the cell body is the YAML: drop --uses/-f', 'up')
        fd, path = tempfile.mkstemp(suffix='.yaml', prefix='orchestra-cell-', dir=os.getcwd())
        try:
            with os.fdopen(fd, 'w') as f:
                f.write(body)
            args.file = path
            return self._cmd_up(args)
        finally:
            os.unlink(path)

    # -- down / status / logs / scale / dashboard / bench --------------------------
    def _cmd_down(self, args: argparse.Namespace) -> None:
        if args.all == bool(args.names):
            raise usage_error('give NAME(s) or --all', 'down')
        if args.all:
            names = REGISTRY.close_all()
        else:
            for name in args.names:
                self._entry(name, 'down')
            names = []
            for name in args.names:
                REGISTRY.close(name)
                names.append(name)
        print(f'stopped: {", ".join(names)}' if names else 'nothing was running')

    def _cmd_status(self, args: argparse.Namespace) -> None:
        if args.name is None:
            display(_Overview(REGISTRY.entries(), REGISTRY.stopped()))
            return
        display(_EntryView(self._entry(args.name, 'status')))

    def _cmd_logs(self, args: argparse.Namespace) -> None:
        entry = self._entry(args.name, 'logs')
        if args.lines < 1:
            raise usage_error(f'-n {args.lines}: must be >= 1', 'logs')
        from runtime.logfiles import tail
        obj = entry.obj
        procs = [(r.replica, r.name, r.process) for stage in obj.stages for r in stage.replicas if r.process]
        if obj.gateway is not None:
            procs.append(('gateway', obj.gateway.name, obj.gateway))
        if args.replica is not None:
            want = args.replica
            chosen = [p for p in procs if (want.isdigit() and p[0] == int(want)) or p[1] == want
                      or p[1].endswith('/' + want) or (want == 'gateway' and p[0] == 'gateway')]
            if not chosen:
                known = ', '.join(p[1] for p in procs) or 'none yet'
                raise usage_error(f'--replica {want!r} matches no process of {obj.name!r} (known: {known})', 'logs')
            procs = chosen
        for _, name, proc in procs:
            print(f'==> {name} (pid {proc.pid}, {proc.log_path}) <==')
            print(tail(proc.log_path, args.lines) or '(empty)')

    def _cmd_scale(self, args: argparse.Namespace) -> Orchestration:
        entry = self._entry(args.name, 'scale')
        if args.replicas < 1:
            raise usage_error(f'N={args.replicas}: must be >= 1 (use %orchestra down to stop)', 'scale')
        obj = entry.obj
        if entry.state != 'running':
            raise OrchestraError(f'{obj.name!r} is {entry.state}; scale needs it running')
        if isinstance(obj, Flow):
            if not args.executor:
                raise usage_error(f'{obj.name!r} is a Flow: name the Executor to scale with --executor E', 'scale')
            try:
                target = obj[args.executor]
            except KeyError as e:
                raise OrchestraError(str(e.args[0])) from None
            before, scale_args = getattr(target, 'replicas', '?'), (args.executor, args.replicas)
        else:
            before, scale_args = getattr(obj, 'replicas', '?'), (args.replicas,)
        t0 = time.monotonic()
        try:
            obj.scale(*scale_args, drain_timeout=args.drain_timeout)
        except ValueError as e:
            raise OrchestraError(str(e)) from None
        except Exception as e:
            raise OrchestraError(f'scaling {obj.name!r} failed: {e}') from None
        print(f'{obj.name}: {before} -> {args.replicas} replicas in {time.monotonic() - t0:.1f} s')
        return None

    def _cmd_dashboard(self, args: argparse.Namespace):
        entry = self._entry(args.name, 'dashboard')
        from orchestra_nb.dashboard import Dashboard
        return Dashboard(entry.obj, interval=args.interval)

    def _cmd_bench(self, argv: List[str]):
        from orchestra_nb import bench
        import inspect
        params = inspect.signature(bench.compare).parameters
        try:
            raw = _option_kwargs(argv)
            for key in raw:
                if key not in params:
                    raise TypeError(f"unexpected keyword argument '{key}'{closest(key, list(params))}")
            kwargs = {k: _coerce(v, params.get(k)) for k, v in raw.items()}
            if isinstance(kwargs.get('uses'), str):  # a class defined in the notebook, by name
                kwargs['uses'] = notebook_uses(kwargs['uses'], self.shell.user_ns)
            inspect.signature(bench.compare).bind(**kwargs)
        except (ValueError, TypeError) as e:
            raise usage_error(f'orchestra_nb.bench.compare: {e}', 'bench') from None
        try:
            return bench.compare(**kwargs)
        except (ValueError, TypeError) as e:
            raise OrchestraError(f'bench failed: {e}') from None


def _coerce(value: Any, param: Optional[Any]) -> Any:
    """A command-line string -> a Python value: kept as text where the parameter takes a str."""
    if not isinstance(value, str):
        return value
    annotation = getattr(param, 'annotation', None)
    text = annotation if isinstance(annotation, str) else repr(annotation)
    if param is not None and (annotation is str or 'str' in text or isinstance(param.default, str)):
        return value
    if value in ('None', 'True', 'False'):
        return {'None': None, 'True': True, 'False': False}[value]
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def _option_kwargs(argv: List[str]) -> Dict[str, Any]:
    """``--docs 1000 --stateful --name x`` -> {'docs': '1000', 'stateful': True, 'name': 'x'} (see _coerce)."""
    out: Dict[str, Any] = {}
    i = 0
    while i < len(argv):
        tok = argv[i]
        if not tok.startswith('--') or len(tok) < 3:
            raise ValueError(f'unexpected {tok!r}: options look like --key value')
        key, sep, value = tok[2:].partition('=')
        key = key.replace('-', '_')
        if not key.isidentifier():
            raise ValueError(f'{tok!r} is not an option name')
        if not sep:
            if i + 1 < len(argv) and not argv[i + 1].startswith('--'):
                value, i = argv[i + 1], i + 1
            else:
                value = True
        out[key] = value
        i += 1
    return out


class _EntryView:
    """``%orchestra status NAME``: the replica table (HTML in a notebook, text in a terminal)."""

    def __init__(self, entry: Entry):
        self.entry = entry
        obj = entry.obj
        self.status = None
        self.note = ''
        if entry.state == 'running':
            try:
                self.status = obj.status(timeout=1.5)
            except Exception as e:
                self.note = f'status unavailable: {type(e).__name__}: {e}'
        elif entry.state == 'starting':
            self.note = 'starting: ' + ', '.join(f'{k} {v}' for k, v in entry.progress.items())
        elif entry.state == 'failed':
            self.note = f'failed to start: {entry.error}'

    def _repr_html_(self) -> str:
        html = reprs.status_html(self.entry.obj, self.status, state=self.entry.state, note='')
        if self.note:
            html += f'<pre style="white-space: pre-wrap">{reprs.esc(self.note)}</pre>'
        return html

    def __repr__(self) -> str:
        text = reprs.status_text(self.entry.obj, self.status) if self.status else repr(self.entry.obj)
        if self.entry.state != 'running':
            text += f'\n  state: {self.entry.state}'
        return text + (f'\n  {self.note}' if self.note else '')


class _Overview:
    """``%orchestra status``: one row per Deployment/Flow running in this kernel, then what stopped."""

    HEAD = ['name', 'kind', 'state', 'replicas', 'address', 'runs', 'started by']
    SOURCES = {'magic': '%orchestra', 'panel': 'ControlPanel', 'code': 'code'}

    def __init__(self, entries: List[Entry], stopped: Optional[List[str]] = None):
        self.rows = []
        self.stopped = list(stopped or [])
        for e in entries:
            o = e.obj
            self.rows.append([e.name, type(o).__name__, e.state,
                              sum(len(stage.replicas) for stage in o.stages) or getattr(o, 'replicas', ''),
                              o.address if e.state == 'running' else '', reprs.summary_line(o),
                              self.SOURCES.get(e.source, e.source)])

    def summary(self) -> str:
        """The line under (or instead of) the table: what is true now."""
        stopped = f'stopped: {", ".join(self.stopped)}' if self.stopped else ''
        if not self.rows:
            if stopped:
                return f'nothing running; {stopped}'
            return 'nothing started in this kernel yet (%orchestra up ...)'
        return stopped

    def _repr_html_(self) -> str:
        note = f'<div style="color: #757575"><i>{reprs.esc(self.summary())}</i></div>' if self.summary() else ''
        if not self.rows:
            return note
        rows = [r[:2] + [reprs.badge(r[2])] + r[3:] for r in self.rows]
        return reprs.html_table(self.HEAD, rows, raw_columns=(2,)) + note

    def __repr__(self) -> str:
        if not self.rows:
            return self.summary()
        cells = [[str(c) for c in r] for r in self.rows]
        widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(self.HEAD)]
        lines = ['  '.join(h.ljust(w) for h, w in zip(self.HEAD, widths))]
        lines += ['  '.join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
        return '\n'.join(lines + ([self.summary()] if self.summary() else []))


def load_ipython_extension(ipython) -> None:
    """``%load_ext orchestra_nb``: register ``%orchestra`` / ``%%orchestra``."""
    ipython.register_magics(OrchestraMagics)


def unload_ipython_extension(ipython) -> None:
    """Remove the magics; what was started keeps running (``%orchestra down --all`` stops it)."""
    for kind in ('line', 'cell'):
        ipython.magics_manager.magics[kind].pop('orchestra', None)

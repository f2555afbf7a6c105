"""``ControlPanel()``: start, scale, stop and watch the Deployments and Flows of this kernel.

    from orchestra_nb import ControlPanel
    ControlPanel()        # Up a new Deployment; pick any running one: Scale / Down / Dashboard / logs

The *Running* list shows every Deployment and Flow running in the kernel, however it
was started (``%orchestra up``, this or another panel, or ``dep.start()``/``with dep:``
in code: :data:`orchestra_nb.registry.REGISTRY` hears of each start and close), and
follows starts and stops made elsewhere. Scale, Down, the log tail and the Dashboard act
on the one picked there. Up refuses a name already running, whoever started it.

Actions run in a background thread, so the kernel stays free while replicas
start; the controls are disabled meanwhile and errors (with the failing
replica's log tail) appear in the panel. A second thread refreshes the status
table and the log tail about once a second. Kernel exit stops what runs.
"""
from __future__ import annotations

import importlib.util
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple

import ipywidgets as widgets

from orchestra_nb.frames import replace_output, show
from orchestra_nb.registry import REGISTRY, default_name, executor_classes
from runtime import reprs
from runtime.args import DEPLOYMENT_ARGS, pick
from runtime.remote import RemoteGateway
from runtime.uses import BUILTIN_EXECUTORS

#: Executors that ship with the runtime: label -> the short name every entry point accepts (``uses='echo'``)
BUILTINS = {f'{short} (built-in)': short for short in BUILTIN_EXECUTORS}
#: the Deployment arguments the panel has a field for (the Executor dropdown is ``uses``)
PANEL_ARGS = pick(DEPLOYMENT_ARGS, 'uses', 'name', 'replicas', 'shards', 'polling', 'stateful', 'workspace',
                  'monitoring')


def builtin_executors() -> Dict[str, str]:
    """The built-ins whose module exists in this install."""
    out = {}
    for label, short in BUILTINS.items():
        try:
            if importlib.util.find_spec(BUILTIN_EXECUTORS[short].split(':')[0]) is not None:
                out[label] = short
        except (ImportError, ValueError):
            pass
    return out


def _user_namespace() -> Dict[str, Any]:
    """The IPython user namespace ({} outside IPython); ipywidgets already imported IPython."""
    from IPython import get_ipython
    shell = get_ipython()
    return shell.user_ns if shell is not None else {}


class ControlPanel(widgets.VBox):
    """Widgets over the kernel's running Deployments/Flows; see the module docstring.

    ``namespace`` is where notebook Executor classes are looked up (default: the
    IPython user namespace). ``deployment`` is the one picked in *Running* (or None);
    :meth:`select` picks one by name. :meth:`up`, :meth:`scale`, :meth:`down`,
    :meth:`toggle_dashboard` do what the buttons do and return at once;
    :meth:`wait_idle` waits for the action to finish.
    """

    def __init__(self, namespace: Optional[Dict[str, Any]] = None, refresh_interval: float = 1.0,
                 log_lines: int = 30):
        self.namespace = namespace if namespace is not None else _user_namespace()
        self.refresh_interval = refresh_interval
        self.log_lines = log_lines
        self.last_error: Optional[str] = None
        #: the static picture that replaced the live panel in the output (a mimebundle), once closed
        self.picture_bundle: Optional[Dict[str, str]] = None
        self._display_id = f'orchestra-control-panel-{uuid.uuid4().hex}'
        self._displayed = False
        self.dashboard = None
        self._action: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sync_lock = threading.RLock()
        style = {'description_width': '84px'}
        self.executor = widgets.Dropdown(description='Executor', style=style,
                                         layout=widgets.Layout(width='354px'))
        self.rescan_button = widgets.Button(icon='refresh', tooltip='look for Executor classes again',
                                            layout=widgets.Layout(width='36px'))
        self.name = widgets.Text(description='Name', placeholder='from the class', style=style,
                                 layout=widgets.Layout(width='260px'))
        self.replicas = widgets.BoundedIntText(value=2, min=1, max=64, description='Replicas', style=style,
                                               layout=widgets.Layout(width='164px'))
        self.shards = widgets.BoundedIntText(value=1, min=1, max=16, description='Shards', style=style,
                                             layout=widgets.Layout(width='164px'))
        self.polling = widgets.Dropdown(options=[('default', ''), ('ANY', 'ANY'), ('ALL', 'ALL')], value='',
                                        description='Polling', style=style, layout=widgets.Layout(width='194px'))
        self.stateful = widgets.Checkbox(description='stateful (RAFT)', indent=False,
                                         layout=widgets.Layout(width='140px'))
        self.workspace = widgets.Text(description='Workspace', placeholder='RAFT state dir (default: temporary)',
                                      style=style, layout=widgets.Layout(width='384px'))
        self.monitoring = widgets.Checkbox(description='metrics (Prometheus)', indent=False,
                                           layout=widgets.Layout(width='170px'))
        #: argument name -> its field; the fields' values are what Up passes to Deployment(...)
        self.fields = {'uses': self.executor, 'name': self.name, 'replicas': self.replicas,
                       'shards': self.shards, 'polling': self.polling, 'stateful': self.stateful,
                       'workspace': self.workspace, 'monitoring': self.monitoring}
        for arg in PANEL_ARGS:
            self.fields[arg.name].tooltip = arg.help
        self.up_button = widgets.Button(description='Up', button_style='success', icon='play',
                                        tooltip='start a new Deployment from these fields')
        self.target = widgets.Dropdown(description='Running', style=style, options=[('(nothing running)', None)],
                                       layout=widgets.Layout(width='354px'),
                                       tooltip='every Deployment/Flow running in this kernel')
        self.scale_button = widgets.Button(description='Scale', icon='arrows-v',
                                           tooltip='set the picked deployment to the Replicas value')
        self.down_button = widgets.Button(description='Down', button_style='danger', icon='stop',
                                          tooltip='stop the picked deployment')
        self.dashboard_button = widgets.Button(description='Dashboard', icon='line-chart',
                                               tooltip='show (or hide) the live Dashboard of the picked deployment')
        # a gateway running elsewhere (Compose, Kubernetes port-forward, another kernel): its Dashboard here
        self.attach_address = widgets.Text(description='Gateway', placeholder='host:port of a running gateway',
                                           style=style, layout=widgets.Layout(width='354px'))
        self.attach_secret = widgets.Password(placeholder="its Deployment's secret",
                                              layout=widgets.Layout(width='220px'))
        self.attach_button = widgets.Button(description='Attach', icon='link',
                                            tooltip="show the live Dashboard of the gateway at that address")
        self.message = widgets.HTML()
        self.status = widgets.HTML('<i>nothing running</i>')
        self.log_choice = widgets.Dropdown(description='Log of', style=style, layout=widgets.Layout(width='354px'))
        self.log_view = widgets.HTML()
        self.dashboard_box = widgets.VBox()
        self._inputs = [self.executor, self.rescan_button, self.name, self.replicas, self.shards,
                        self.polling, self.stateful, self.workspace, self.monitoring]
        for w, cls in ((self.target, 'running'), (self.replicas, 'replicas'), (self.up_button, 'up'),
                       (self.scale_button, 'scale'), (self.down_button, 'down'),
                       (self.dashboard_button, 'dashboard'), (self.status, 'status'), (self.message, 'message')):
            w.add_class(f'orchestra-panel-{cls}')
        super().__init__([
            widgets.HBox([self.executor, self.rescan_button, self.name]),
            widgets.HBox([self.replicas, self.shards, self.polling]),
            widgets.HBox([self.stateful, self.workspace]),
            widgets.HBox([self.up_button, self.monitoring]),
            widgets.HTML('<hr style="margin: 4px 0">'),
            widgets.HBox([self.target, self.scale_button, self.down_button, self.dashboard_button]),
            widgets.HBox([self.attach_address, self.attach_secret, self.attach_button]),
            self.message, self.status, self.log_choice, self.log_view, self.dashboard_box,
        ])
        self.add_class('orchestra-control-panel')
        self.rescan_button.on_click(lambda _: self.rescan())
        self.up_button.on_click(lambda _: self.up())
        self.scale_button.on_click(lambda _: self.scale())
        self.down_button.on_click(lambda _: self.down())
        self.dashboard_button.on_click(lambda _: self.toggle_dashboard())
        self.attach_button.on_click(lambda _: self.attach(self.attach_address.value, self.attach_secret.value))
        self.target.observe(self._on_pick, 'value')
        self.rescan()
        self._sync_targets()
        REGISTRY.subscribe(self._sync_targets)
        self._refresher = threading.Thread(target=self._refresh_loop, daemon=True, name='control-panel')
        self._refresher.start()

    # -- choices ------------------------------------------------------------------
    def rescan(self) -> List[Tuple[str, Any]]:
        """Offer the Executor classes now in the namespace, then the built-ins."""
        options: List[Tuple[str, Any]] = [(f'{k} (notebook)', v) for k, v in executor_classes(self.namespace).items()]
        options += list(builtin_executors().items())
        current = self.executor.value
        self.executor.options = options
        if any(v is current for _, v in options):
            self.executor.value = current
        elif options:
            self.executor.index = 0
        return options

    @property
    def deployment(self):
        """The Deployment/Flow picked in *Running* (None when nothing runs)."""
        name = self.target.value
        if name is None:
            return None
        try:
            return REGISTRY.get(name).obj
        except KeyError:
            return None

    def running_names(self) -> List[str]:
        """What *Running* offers: every Deployment/Flow running or starting in the kernel."""
        return [e.name for e in REGISTRY.entries() if e.state in ('running', 'starting')]

    def select(self, name: str) -> None:
        """Pick ``name`` in *Running*."""
        self._sync_targets()
        if name not in self.running_names():
            running = ', '.join(self.running_names()) or 'none'
            raise KeyError(f'{name!r} is not running in this kernel (running: {running})')
        self.target.value = name

    def _sync_targets(self) -> None:
        """Offer what runs now (called on every registry change and by the refresher)."""
        with self._sync_lock:
            entries = [e for e in REGISTRY.entries() if e.state in ('running', 'starting')]
            options = [(f'{e.name} ({type(e.obj).__name__}{", starting" if e.state == "starting" else ""})',
                        e.name) for e in entries] or [('(nothing running)', None)]
            if list(self.target.options) != options:
                keep = self.target.value
                self.target.options = options
                values = [v for _, v in options]
                self.target.value = keep if keep in values else values[-1]
            if not self.busy:
                self._sync_controls()

    def _on_pick(self, change: Dict[str, Any]) -> None:
        dep = self.deployment
        replicas = getattr(dep, 'replicas', None)
        if isinstance(replicas, int) and not self.busy:
            self.replicas.value = replicas      # Scale starts from what runs
        attached = isinstance(getattr(self.dashboard, 'obj', None), RemoteGateway)   # not a pick's: stays
        if self.dashboard is not None and not attached and (dep is None or self.dashboard.obj is not dep):
            self._close_dashboard()
        if not self.busy:
            self._sync_controls()

    # -- actions (each returns at once; the work runs in a thread) ------------------
    @property
    def busy(self) -> bool:
        return self._action is not None and self._action.is_alive()

    def up(self) -> None:
        """Start a Deployment from the current choices."""
        self._run('up', self._do_up)

    def scale(self, replicas: Optional[int] = None) -> None:
        """Scale the picked deployment to ``replicas`` (default: the Replicas box)."""
        if replicas is not None:
            self.replicas.value = replicas
        self._run('scale', self._do_scale)

    def down(self) -> None:
        """Stop the picked deployment."""
        self._run('down', self._do_down)

    def toggle_dashboard(self) -> None:
        """Show the live Dashboard of the picked deployment under the panel, or hide it."""
        if self.dashboard is not None:
            self._close_dashboard()
            return
        dep = self.deployment
        if dep is None:
            self._show_error('nothing picked: start one with Up, or with %orchestra up')
            return
        from orchestra_nb.dashboard import Dashboard
        self.dashboard = Dashboard(dep, replace=False)
        self.dashboard_box.children = [self.dashboard]
        self.dashboard_button.description = 'Hide dashboard'

    def attach(self, address: str, secret: Optional[str] = None) -> None:
        """Show the live Dashboard of the gateway at ``address`` (``'host:port'``, running anywhere)
        under the panel; ``secret``: its Deployment's (the per-replica records need it). A wrong
        address or secret is one line in the panel.

            >>> panel.attach('127.0.0.1:8080', secret=open('deploy/search-secret').read().strip())  # doctest: +SKIP
        """
        address = (address or '').strip()
        if not address:
            self._show_error('Attach needs the address of a running gateway, e.g. 127.0.0.1:8080')
            return
        from orchestra_nb.dashboard import Dashboard
        try:
            dash = Dashboard(address, secret=(secret or '').strip() or None, replace=False)
        except Exception as e:   # no gateway there, or a missing/wrong secret: one line
            self._show_error(f'could not attach to {address}: {e}')
            return
        self._close_dashboard()
        self.dashboard = dash
        self.dashboard_box.children = [dash]
        self.dashboard_button.description = 'Hide dashboard'
        self.last_error = None
        self.message.value = f'attached to the gateway at <code>{reprs.esc(address)}</code>'
        self._sync_controls()

    def _close_dashboard(self) -> None:
        dash, self.dashboard = self.dashboard, None
        self.dashboard_box.children = []
        self.dashboard_button.description = 'Dashboard'
        if dash is not None:
            dash.close()

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Wait for the running action; False if it is still running after ``timeout`` s."""
        t = self._action
        if t is not None:
            t.join(timeout)
            return not t.is_alive()
        return True

    # -- display: the live panel, then a static picture of it -----------------------------
    def _ipython_display_(self) -> None:
        """Show the widget under a display id, so that :meth:`close` can leave a picture of it."""
        show(self._repr_mimebundle_(), self.picture_bundle, self._display_id)
        self._displayed = self._displayed or self.picture_bundle is None

    def __repr__(self) -> str:
        """What a front end without the widget shows (text/plain), instead of the children's repr."""
        running = ', '.join(self.running_names()) if hasattr(self, 'target') else ''
        return f'ControlPanel (running: {running or "nothing"})'

    def picture(self) -> Dict[str, str]:
        """The panel as it is now, as static HTML and text: its fields, what runs, the last
        message and the status table (what a saved notebook keeps once it is closed)."""
        label = next((lbl for lbl, v in self.executor.options if v is self.executor.value
                      or (isinstance(v, str) and v == self.executor.value)), '')
        fields = [('Executor', label), ('Name', self.name.value or '(from the class)'),
                  ('Replicas', self.replicas.value), ('Shards', self.shards.value),
                  ('Polling', self.polling.value or 'default'),
                  ('stateful (RAFT)', 'yes' if self.stateful.value else 'no')]
        if self.stateful.value:
            fields.append(('Workspace', self.workspace.value or '(temporary)'))
        running = ', '.join(self.running_names()) or 'nothing'
        when = time.strftime('%H:%M:%S')
        cells = ''.join(f'<td style="padding: 2px 10px 2px 0"><span style="color: #757575">{reprs.esc(k)}</span> '
                        f'<b>{reprs.esc(v)}</b></td>' for k, v in fields)
        html = (f'<div class="orchestra-control-panel-picture" style="border: 1px solid #ddd; padding: 6px; '
                f'white-space: normal">'
                f'<div><b>ControlPanel</b> <span style="color: #757575">closed at {when}; '
                f'a picture of its last state</span></div>'
                f'<table style="margin: 4px 0"><tr>{cells}</tr></table>'
                f'<div>Running: <b>{reprs.esc(running)}</b></div>'
                f'<div>{self.message.value}</div><div style="margin-top: 4px">{self.status.value}</div></div>')
        text = [f'ControlPanel, closed at {when}', '  ' + ' · '.join(f'{k}: {v}' for k, v in fields),
                f'  running: {running}']
        message = _plain_text(self.message.value)
        status = _plain_text(self.status.value)
        text += [f'  {line}' for line in (message, status) if line]
        return {'text/html': html, 'text/plain': '\n'.join(text)}

    def close(self) -> None:
        """Stop refreshing and close the widgets (what runs keeps running); a displayed panel
        leaves a static picture of itself in the output (:meth:`picture`)."""
        if not hasattr(self, '_refresher'):  # __init__ failed early; Widget.__del__ still calls close()
            return super().close()
        if self._displayed and self.picture_bundle is None and self.comm is not None:
            try:
                self._refresh_status()          # a fresh reading, not the last refresh
                self.picture_bundle = self.picture()
            except Exception:   # nothing to leave behind
                pass
            else:
                replace_output(self.picture_bundle, self._display_id)
        self._stop.set()
        REGISTRY.unsubscribe(self._sync_targets)
        self._close_dashboard()
        for w in self._inputs + [self.up_button, self.target, self.scale_button, self.down_button,
                                 self.dashboard_button, self.attach_address, self.attach_secret,
                                 self.attach_button, self.message, self.status, self.log_choice,
                                 self.log_view, self.dashboard_box]:
            w.close()
        for child in self.children:
            child.close()
        super().close()

    def _run(self, what: str, fn: Callable[[], None]) -> None:
        with self._lock:
            if self.busy:
                self._show_error(f'{what}: another action is still running')
                return
            self.last_error = None
            self._set_busy(True)
            self._action = threading.Thread(target=self._guard, args=(what, fn), daemon=True,
                                            name=f'control-panel-{what}')
            self._action.start()

    def _guard(self, what: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as e:
            self._show_error(f'{what} failed: {e}')
        finally:
            self._set_busy(False)
            self._refresh_status()

    def _do_up(self) -> None:
        from runtime.deployment import Deployment
        kwargs = self.deployment_kwargs()
        uses = kwargs.get('uses')
        if uses is None:
            raise ValueError('no Executor to run: define an Executor class in the notebook and press ↻')
        name = kwargs.setdefault('name', default_name(uses))
        dep = Deployment(**kwargs)
        REGISTRY.add(dep, source='panel')   # refuses a name running here, whoever started it
        states: Dict[str, str] = {}
        t0 = time.monotonic()

        def progress(proc: str, state: str, detail: Optional[str]) -> None:
            states[proc] = state
            self.message.value = (f'starting <code>{reprs.esc(name)}</code> ({time.monotonic() - t0:.1f} s): '
                                  + ', '.join(f'{reprs.esc(k.rsplit("/", 1)[-1])} {reprs.badge(v)}'
                                              for k, v in states.items()))
        try:
            dep.start(progress=progress)
        except BaseException:
            REGISTRY.remove(name)
            raise
        self._sync_targets()
        self.target.value = name
        self.message.value = (f'<span style="color: #2e7d32">{reprs.esc(name)} is up at '
                              f'<code>{reprs.esc(dep.address)}</code> ({time.monotonic() - t0:.1f} s)</span>')

    def deployment_kwargs(self) -> Dict[str, Any]:
        """The Deployment arguments the fields say now (blank text and unset fields left out).

        >>> ControlPanel(namespace={}).deployment_kwargs()['replicas']  # doctest: +SKIP
        2
        """
        out: Dict[str, Any] = {}
        for arg in PANEL_ARGS:
            value = self.fields[arg.name].value
            if isinstance(value, str):
                value = value.strip() or None
            if value is not None:
                out[arg.name] = value
        return out

    def _do_scale(self) -> None:
        dep = self._running()
        n = self.replicas.value
        t0 = time.monotonic()
        self.message.value = f'scaling <code>{reprs.esc(dep.name)}</code> to {n} replicas…'
        executor = _only_executor(dep)
        dep.scale(*((executor, n) if executor else (n,)))
        self.message.value = f'{reprs.esc(dep.name)}: {n} replicas ({time.monotonic() - t0:.1f} s)'

    def _do_down(self) -> None:
        dep = self._running()
        name = self.target.value
        self.message.value = f'stopping <code>{reprs.esc(dep.name)}</code>…'
        if self.dashboard is not None and self.dashboard.obj is dep:
            self._close_dashboard()
        try:
            REGISTRY.close(name)
        except KeyError:
            dep.close()
        self.message.value = f'{reprs.esc(dep.name)} stopped'

    def _running(self):
        dep = self.deployment
        if dep is None or not dep.running:
            raise RuntimeError('nothing picked is running: press Up, or pick one under Running')
        return dep

    # -- display ------------------------------------------------------------------
    def _set_busy(self, busy: bool) -> None:
        for w in self._inputs:
            w.disabled = busy
        self._sync_controls(busy)

    def _sync_controls(self, busy: bool = False) -> None:
        dep = self.deployment
        running = dep is not None and dep.running
        self.up_button.disabled = busy
        self.target.disabled = busy
        self.down_button.disabled = busy or not running
        self.dashboard_button.disabled = busy or (not running and self.dashboard is None)
        from runtime.flow import Flow
        scalable = running and not getattr(dep, 'stateful', False) and (
            not isinstance(dep, Flow) or _only_executor(dep) is not None)
        self.scale_button.disabled = busy or not scalable

    def _show_error(self, text: str) -> None:
        self.last_error = text
        first, _, rest = text.partition('\n')
        more = f'<pre style="white-space: pre-wrap; max-height: 200px; overflow: auto">{reprs.esc(rest)}</pre>' \
            if rest else ''
        self.message.value = f'<div style="color: #c62828"><b>{reprs.esc(first)}</b>{more}</div>'

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.refresh_interval):
            try:
                self._sync_targets()
                self._refresh_status()
            except Exception as e:  # never let the refresher die
                self.status.value = f'<span style="color: #757575">status unavailable: {reprs.esc(e)}</span>'

    def _refresh_status(self) -> None:
        dep = self.deployment
        if dep is None or not dep.running:
            stopped = REGISTRY.stopped()
            self.status.value = ('<i>nothing running' + (f'; stopped: {reprs.esc(", ".join(stopped))}'
                                                         if stopped else '') + '</i>')
            if not self.busy:
                self._sync_controls()
            return
        status = dep.status(timeout=1.0)
        head, rows, raw = reprs.replica_rows(status)
        self.status.value = reprs.html_table(head, rows, raw)
        names = [r['name'] for r in status['replicas']] + [f'{dep.name}/gateway']
        if list(self.log_choice.options) != names:
            keep = self.log_choice.value if self.log_choice.value in names else names[0]
            self.log_choice.options = names
            self.log_choice.value = keep
        procs = {r.name: r.process for stage in dep.stages for r in stage.replicas if r.process}
        if dep.gateway is not None:
            procs[dep.gateway.name] = dep.gateway
        proc = procs.get(self.log_choice.value)
        text = proc.log_tail(self.log_lines) if proc is not None else ''
        html = (f'<pre style="max-height: 220px; overflow: auto; font-size: 11px; background: #f7f7f7">'
                f'{reprs.esc(text or "(empty log)")}</pre>')
        if self.log_view.value != html:
            self.log_view.value = html
        if not self.busy:
            self._sync_controls()


def _plain_text(markup: str) -> str:
    """The text of a bit of the panel's HTML (one line)."""
    import html
    import re
    return ' '.join(html.unescape(re.sub(r'<[^>]+>', ' ', markup or '')).replace('\u25cf', '').split())


def _only_executor(obj: Any) -> Optional[str]:
    """A Flow's Executor name when it has exactly one (what Scale scales); None for a Deployment
    or a Flow of several (scale those with ``%orchestra scale NAME N --executor E``)."""
    from runtime.flow import Flow
    if not isinstance(obj, Flow):
        return None
    nodes = [n.name for n in getattr(obj, 'nodes', [])]
    return nodes[0] if len(nodes) == 1 else None

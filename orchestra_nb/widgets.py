"""``ControlPanel()``: start, scale and stop a Deployment with widgets.

    from orchestra_nb import ControlPanel
    ControlPanel()        # pick an Executor, replicas, shards, polling, stateful; Up / Scale / Down

Actions run in a background thread, so the kernel stays free while replicas
start; the controls are disabled meanwhile and errors (with the failing
replica's log tail) appear in the panel. A second thread refreshes the status
table and the log tail about once a second. What the panel starts is in the
kernel's registry (``%orchestra status`` lists it; kernel exit stops it).
"""
from __future__ import annotations

import importlib.util
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import ipywidgets as widgets

from orchestra_nb import reprs
from orchestra_nb.registry import REGISTRY
from runtime.args import DEPLOYMENT_ARGS, pick
from runtime.uses import BUILTIN_EXECUTORS

#: Executors that ship with the runtime: label -> 'module:Class'
BUILTINS = {f'{spec.rsplit(":", 1)[-1]} (built-in)': spec for spec in BUILTIN_EXECUTORS.values()}
#: the Deployment arguments the panel has a field for (the Executor dropdown is ``uses``)
PANEL_ARGS = pick(DEPLOYMENT_ARGS, 'uses', 'name', 'replicas', 'shards', 'polling', 'stateful', 'workspace')


def builtin_executors() -> Dict[str, str]:
    """The built-ins whose module exists in this install."""
    out = {}
    for label, spec in BUILTINS.items():
        try:
            if importlib.util.find_spec(spec.split(':')[0]) is not None:
                out[label] = spec
        except (ImportError, ValueError):
            pass
    return out


def _user_namespace() -> Dict[str, Any]:
    try:
        from IPython import get_ipython
        shell = get_ipython()
    except ImportError:
        shell = None
    return shell.user_ns if shell is not None else {}


class ControlPanel(widgets.VBox):
    """Widgets to run one Deployment; see the module docstring.

    ``namespace`` is where notebook Executor classes are looked up (default: the
    IPython user namespace). ``deployment`` is the one running (or None);
    :meth:`up`, :meth:`scale`, :meth:`down` do what the buttons do and return at
    once; :meth:`wait_idle` waits for the action to finish.
    """

    def __init__(self, namespace: Optional[Dict[str, Any]] = None, refresh_interval: float = 1.0,
                 log_lines: int = 30):
        self.namespace = namespace if namespace is not None else _user_namespace()
        self.refresh_interval = refresh_interval
        self.log_lines = log_lines
        self.deployment = None
        self.last_error: Optional[str] = None
        self._action: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        style = {'description_width': '70px'}
        self.executor = widgets.Dropdown(description='Executor', style=style,
                                         layout=widgets.Layout(width='340px'))
        self.rescan_button = widgets.Button(icon='refresh', tooltip='look for Executor classes again',
                                            layout=widgets.Layout(width='36px'))
        self.name = widgets.Text(description='Name', placeholder='from the class', style=style,
                                 layout=widgets.Layout(width='240px'))
        self.replicas = widgets.BoundedIntText(value=2, min=1, max=64, description='Replicas', style=style,
                                               layout=widgets.Layout(width='150px'))
        self.shards = widgets.BoundedIntText(value=1, min=1, max=16, description='Shards', style=style,
                                             layout=widgets.Layout(width='150px'))
        self.polling = widgets.Dropdown(options=[('default', None), ('ANY', 'ANY'), ('ALL', 'ALL')],
                                        description='Polling', style=style, layout=widgets.Layout(width='180px'))
        self.stateful = widgets.Checkbox(description='stateful (RAFT)', indent=False)
        self.workspace = widgets.Text(description='Workspace', placeholder='RAFT state dir (default: temporary)',
                                      style=style, layout=widgets.Layout(width='340px'))
        #: argument name -> its field; the fields' values are what Up passes to Deployment(...)
        self.fields = {'uses': self.executor, 'name': self.name, 'replicas': self.replicas,
                       'shards': self.shards, 'polling': self.polling, 'stateful': self.stateful,
                       'workspace': self.workspace}
        for arg in PANEL_ARGS:
            self.fields[arg.name].tooltip = arg.help
        self.up_button = widgets.Button(description='Up', button_style='success', icon='play')
        self.scale_button = widgets.Button(description='Scale', icon='arrows-v',
                                           tooltip='set the running deployment to this many replicas')
        self.down_button = widgets.Button(description='Down', button_style='danger', icon='stop')
        self.message = widgets.HTML()
        self.status = widgets.HTML('<i>nothing running</i>')
        self.log_choice = widgets.Dropdown(description='Log of', style=style, layout=widgets.Layout(width='300px'))
        self.log_view = widgets.HTML()
        self._inputs = [self.executor, self.rescan_button, self.name, self.replicas, self.shards,
                        self.polling, self.stateful, self.workspace]
        super().__init__([
            widgets.HBox([self.executor, self.rescan_button, self.name]),
            widgets.HBox([self.replicas, self.shards, self.polling]),
            widgets.HBox([self.stateful, self.workspace]),
            widgets.HBox([self.up_button, self.scale_button, self.down_button]),
            self.message, self.status, self.log_choice, self.log_view,
        ])
        self.add_class('orchestra-control-panel')
        self.rescan_button.on_click(lambda _: self.rescan())
        self.up_button.on_click(lambda _: self.up())
        self.scale_button.on_click(lambda _: self.scale())
        self.down_button.on_click(lambda _: self.down())
        self.rescan()
        self._sync_controls()
        self._refresher = threading.Thread(target=self._refresh_loop, daemon=True, name='control-panel')
        self._refresher.start()

    # -- choices ------------------------------------------------------------------
    def rescan(self) -> List[Tuple[str, Any]]:
        """Offer the Executor classes now in the namespace, then the built-ins."""
        from orchestra_nb.magics import executor_classes
        options: List[Tuple[str, Any]] = [(f'{k} (notebook)', v) for k, v in executor_classes(self.namespace).items()]
        options += list(builtin_executors().items())
        current = self.executor.value
        self.executor.options = options
        if any(v is current for _, v in options):
            self.executor.value = current
        elif options:
            self.executor.index = 0
        return options

    # -- actions (each returns at once; the work runs in a thread) ------------------
    @property
    def busy(self) -> bool:
        return self._action is not None and self._action.is_alive()

    def up(self) -> None:
        """Start a Deployment from the current choices."""
        self._run('up', self._do_up)

    def scale(self, replicas: Optional[int] = None) -> None:
        """Scale the running deployment to ``replicas`` (default: the Replicas box)."""
        if replicas is not None:
            self.replicas.value = replicas
        self._run('scale', self._do_scale)

    def down(self) -> None:
        """Stop the running deployment."""
        self._run('down', self._do_down)

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Wait for the running action; False if it is still running after ``timeout`` s."""
        t = self._action
        if t is not None:
            t.join(timeout)
            return not t.is_alive()
        return True

    def close(self) -> None:
        """Stop refreshing and close the widgets (a running deployment keeps running)."""
        if not hasattr(self, '_refresher'):  # __init__ failed early; Widget.__del__ still calls close()
            return super().close()
        self._stop.set()
        for w in self._inputs + [self.up_button, self.scale_button, self.down_button, self.message,
                                 self.status, self.log_choice, self.log_view]:
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
        from orchestra_nb.magics import default_name
        from runtime.deployment import Deployment
        if self.deployment is not None and self.deployment._started:
            raise RuntimeError(f'{self.deployment.name!r} is running: Scale it, or Down first')
        kwargs = self.deployment_kwargs()
        uses = kwargs.get('uses')
        if uses is None:
            raise ValueError('no Executor to run: define an Executor class in the notebook and press ↻')
        name = kwargs.setdefault('name', default_name(uses))
        dep = Deployment(**kwargs)
        REGISTRY.add(dep)
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
        self.deployment = dep
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
        dep.scale(n)
        self.message.value = f'{reprs.esc(dep.name)}: {n} replicas ({time.monotonic() - t0:.1f} s)'

    def _do_down(self) -> None:
        dep = self._running()
        self.message.value = f'stopping <code>{reprs.esc(dep.name)}</code>…'
        try:
            REGISTRY.close(dep.name)
        except KeyError:
            dep.close()
        self.message.value = f'{reprs.esc(dep.name)} stopped'

    def _running(self):
        if self.deployment is None or not self.deployment._started:
            raise RuntimeError('nothing is running: press Up first')
        return self.deployment

    # -- display ------------------------------------------------------------------
    def _set_busy(self, busy: bool) -> None:
        for w in self._inputs:
            w.disabled = busy
        self._sync_controls(busy)

    def _sync_controls(self, busy: bool = False) -> None:
        running = self.deployment is not None and self.deployment._started
        self.up_button.disabled = busy or running
        self.down_button.disabled = busy or not running
        self.scale_button.disabled = busy or not running or bool(getattr(self.deployment, 'stateful', False))

    def _show_error(self, text: str) -> None:
        self.last_error = text
        first, _, rest = text.partition('\n')
        more = f'<pre style="white-space: pre-wrap; max-height: 200px; overflow: auto">{reprs.esc(rest)}</pre>' \
            if rest else ''
        self.message.value = f'<div style="color: #c62828"><b>{reprs.esc(first)}</b>{more}</div>'

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.refresh_interval):
            try:
                self._refresh_status()
            except Exception as e:  # never let the refresher die
                self.status.value = f'<span style="color: #757575">status unavailable: {reprs.esc(e)}</span>'

    def _refresh_status(self) -> None:
        dep = self.deployment
        if dep is None or not dep._started:
            self.status.value = '<i>nothing running</i>' if dep is None else reprs.status_html(dep)
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
        procs = {r.name: r.process for n in dep.nodes for r in n.replicas if r.process}
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

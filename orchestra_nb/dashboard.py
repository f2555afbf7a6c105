"""A live dashboard of a Deployment/Flow, made of widgets only.

    dash = Dashboard(dep)      # or %orchestra dashboard NAME
    dash = Dashboard('localhost:8080', secret=...)   # a gateway started elsewhere (Compose, Kubernetes)
    dash                       # show it; it refreshes about twice a second
    dash.close()               # stop refreshing

A gateway started elsewhere is read through :class:`runtime.remote.RemoteGateway` (its
``status()`` has the same shape; the replicas' records need the Deployment's secret).

A background thread reads ``dep.status()`` and *sets widget values*: PNG charts
(matplotlib's Agg canvas, no pyplot) on ``ipywidgets.Image`` and HTML tables on
``ipywidgets.HTML``. It never updates display handles from the thread: those stay
blank in Voila and lose updates under nbclient, while widget values sync
everywhere. The kernel is never blocked: the thread only waits on the network.

Panels: requests per replica by endpoint (for stateful deployments, reads each
replica served next to the writes it applied, so writes are seen reaching every
replica while a read reaches one); gateway QPS and p50/p99 latency over time;
RAFT (role, term, commit/applied index per replica); CPU % and RSS per process;
per-GPU utilization and memory with the replica -> GPU map, or a one-line note
where there is no GPU.

The thread runs until :meth:`close`/:meth:`stop`, or until a newer dashboard of
the same deployment takes over (re-running a cell does not pile up threads).
Closed, or once its deployment stops, a displayed dashboard leaves its last frame
behind: the output is replaced (``update_display``) by a PNG snapshot (header,
charts, per-process table) with a text twin, so a saved notebook -- Run All,
nbviewer, GitHub -- still shows it.
While the deployment is stopped it only checks every 2 s. Where the front end
reports its views (``_view_count``), a dashboard whose views are all gone
refreshes only every 3 s (JupyterLab 4 does not report them: there it keeps
refreshing; a PNG is re-rendered only when its data changed).
"""
from __future__ import annotations

import collections
import html
import io
import re
import threading
import time
import uuid
import weakref
from typing import Any, Deque, Dict, List, Optional, Tuple, Union

import ipywidgets as widgets

from orchestra_nb.frames import replace_output, show
from runtime import orchestration, reprs
from runtime.client import Client
from runtime.orchestration import Orchestration
from runtime.remote import RemoteGateway

HIDDEN_INTERVAL = 3.0     # seconds between refreshes while no view shows the dashboard
STOPPED_INTERVAL = 2.0    # ... while the deployment is not running
SETTLE_SECONDS = 3.0      # how long a freezing dashboard waits for every replica ready and one leader
#: id(orchestration) -> its dashboards (so a newer one can stop the older ones)
_LIVE: Dict[int, 'weakref.WeakSet[Dashboard]'] = {}
PALETTE = ['#1976d2', '#ef6c00', '#2e7d32', '#8e24aa', '#c62828', '#00838f', '#6d4c41', '#546e7a']


class Dashboard(widgets.VBox):
    """Live widgets for ``obj`` (a Deployment or Flow); see the module docstring.

    ``values`` holds the numbers last shown (``requests`` per replica, ``qps``,
    ``p50_ms``, ``p99_ms``, ``refreshes``; for stateful deployments ``reads`` and
    ``writes_applied`` per replica) for code that wants them.
    """

    def __init__(self, obj: Union[Orchestration, RemoteGateway, Client, str], interval: float = 0.5,
                 history_seconds: float = 120.0, autostart: bool = True, replace: bool = True,
                 secret: Optional[str] = None, tls: bool = False, ca: Any = None):
        if isinstance(obj, (str, Client)):   # a gateway started elsewhere: runtime.remote
            obj = RemoteGateway(obj, secret=secret, tls=tls, ca=ca)
            obj.status()   # a missing or wrong secret, or no gateway there: one line now, not a blank panel
        if not isinstance(obj, (Orchestration, RemoteGateway)):
            raise TypeError(f"Dashboard needs a Deployment, a Flow, a gateway address 'host:port' or a Client, "
                            f'got {type(obj).__name__}')
        if not isinstance(interval, (int, float)) or interval <= 0:
            raise ValueError(f'interval={interval!r}: must be a number of seconds > 0')
        self.obj = obj
        self.interval = float(interval)
        self.history_seconds = history_seconds
        self.header = widgets.HTML()
        self.distribution = widgets.Image(format='png', layout=widgets.Layout(max_width='48%'))
        self.latency = widgets.Image(format='png', layout=widgets.Layout(max_width='48%'))
        self.raft = widgets.HTML()
        self.processes = widgets.HTML()
        self.gpus = widgets.HTML()
        self.values: Dict[str, Any] = {'requests': {}, 'qps': 0.0, 'p50_ms': None, 'p99_ms': None,
                                       'refreshes': 0, 'error': None}
        self._series: Deque[Tuple[float, float, Optional[float], Optional[float]]] = collections.deque()
        self._last_total: Optional[Tuple[float, int]] = None
        self._signatures: Dict[str, Any] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._seen_view = False
        self._display_id = f'orchestra-dashboard-{uuid.uuid4().hex}'
        self._displayed = False
        self._last_status: Optional[Dict[str, Any]] = None
        #: the static frame that replaced the live widget in the output (a mimebundle), once frozen
        self.snapshot_bundle: Optional[Dict[str, Any]] = None
        super().__init__([
            self.header,
            widgets.HBox([self.distribution, self.latency]),
            widgets.HBox([self.raft, self.processes], layout=widgets.Layout(grid_gap='24px')),
            self.gpus,
        ], _view_count=0)
        self.add_class('orchestra-dashboard')
        self.header.value = self._header_html(None, 'waiting for the first refresh…')
        if replace:  # re-running a `Dashboard(dep)` cell must not pile up refresh threads
            for old in _LIVE.get(id(obj), []):
                if old is not self and old.obj is obj and old.running:
                    old.stop(f'a newer dashboard of {obj.name!r} took over')
        _LIVE.setdefault(id(obj), weakref.WeakSet()).add(self)
        if autostart:
            self.start()

    # -- display: live widget, then a static last frame ------------------------------
    def _ipython_display_(self) -> None:
        """Show the widget under a display id, so that :meth:`freeze` can replace it later."""
        show(self._repr_mimebundle_(), self.snapshot_bundle, self._display_id)
        self._displayed = self._displayed or self.snapshot_bundle is None

    def snapshot(self) -> Dict[str, Any]:
        """The current frame as a mimebundle: ``image/png`` (header, charts, RAFT and process
        tables) and ``text/plain`` (header and the same tables)."""
        header = _plain(self.header.value)
        tables = _text_tables(self._last_status) if self._last_status else []
        charts = [w.value for w in (self.distribution, self.latency) if w.value]
        text = '\n\n'.join([header] + [f'{title}\n{body}' for title, body in tables])
        return {'image/png': render_snapshot(header, charts, tables), 'text/plain': text}

    def freeze(self, state: Optional[str] = None) -> Optional[Dict[str, Any]]:
        """Stop refreshing, take one fresh, complete reading, and replace every displayed view
        by a static frame of it (what a saved notebook keeps). ``state`` is what the frame says
        (default: ``running``/``stopped`` from the deployment); nothing happens twice.

        The reading waits (up to ``SETTLE_SECONDS``) for every replica to be ready and, when
        stateful, for one RAFT leader per shard, so a frame never freezes mid-election."""
        if self.snapshot_bundle is not None:
            return self.snapshot_bundle
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(10)
        status = self._final_reading()
        state = state or ('running' if self.obj.running else 'stopped')
        self.header.value = self._header_html(status, None, frozen=f'{state} at {time.strftime("%H:%M:%S")}')
        bundle = self.snapshot()
        self.snapshot_bundle = bundle
        if self._displayed:
            replace_output(bundle, self._display_id)
        return bundle

    def _final_reading(self) -> Optional[Dict[str, Any]]:
        """A fresh status with every panel updated; retried briefly until it is settled."""
        deadline = time.monotonic() + SETTLE_SECONDS
        status = None
        while self.obj.running:
            try:
                status = self.refresh()
            except Exception as e:   # keep the last good reading
                self.values['error'] = f'{type(e).__name__}: {e}'
                break
            if status is None or settled(status) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        return status or self._last_status

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> 'Dashboard':
        """Start the refresh thread (done by the constructor unless ``autostart=False``)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name=f'dashboard-{self.obj.name}')
            self._thread.start()
        return self

    def stop(self, note: str = 'stopped refreshing') -> None:
        """Stop the refresh thread and say so in the header; the widgets stay (``start()`` resumes)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(10)
        self.header.value = self._header_html(None, note)

    def close(self) -> None:
        """Stop the refresh thread, leave the last frame as a static image (see :meth:`freeze`)
        and close the widgets."""
        if not hasattr(self, '_stop'):  # __init__ failed early; Widget.__del__ still calls close()
            return super().close()
        if self._displayed and self.snapshot_bundle is None and self.comm is not None:
            try:
                self.freeze()
            except Exception:
                pass
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(10)
        for w in (self.header, self.distribution, self.latency, self.raft, self.processes, self.gpus):
            w.close()
        for child in self.children:
            child.close()
        super().close()

    @property
    def running(self) -> bool:
        """Is the refresh thread alive?"""
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            views = self._view_count or 0
            self._seen_view = self._seen_view or views > 0
            hidden = self._seen_view and views == 0
            if not hidden:
                try:
                    self.refresh()
                except Exception as e:  # keep refreshing; show why this one failed
                    self.values['error'] = f'{type(e).__name__}: {e}'
                    try:
                        self.header.value = self._header_html(None, self.values['error'])
                    except Exception:
                        pass
            wait = self.interval
            if hidden:
                wait = HIDDEN_INTERVAL
            elif not self.obj.running:
                wait = max(self.interval, STOPPED_INTERVAL)
            self._stop.wait(wait)

    # -- one refresh --------------------------------------------------------------
    def refresh(self) -> Optional[Dict[str, Any]]:
        """Read the status once and update every panel; returns the status (None when stopped)."""
        with self._lock:
            if not self.obj.running:
                self.header.value = self._header_html(None, 'not running')
                return None
            status = self.obj.status(timeout=1.0)
            self._last_status = status
            now = time.monotonic()
            gw = status.get('gateway') or {}
            total = int(sum((gw.get('requests') or {}).values()))
            qps = 0.0
            if self._last_total is not None and now > self._last_total[0]:
                qps = max(0.0, (total - self._last_total[1]) / (now - self._last_total[0]))
            self._last_total = (now, total)
            self._series.append((now, qps, gw.get('p50_ms'), gw.get('p99_ms')))
            while self._series and now - self._series[0][0] > self.history_seconds:
                self._series.popleft()
            reps = status.get('replicas', [])
            self.values.update(requests={r['name']: reprs.total_requests(r) for r in reps},
                               qps=qps, p50_ms=gw.get('p50_ms'), p99_ms=gw.get('p99_ms'),
                               total=total, error=None, refreshes=self.values['refreshes'] + 1)
            self.header.value = self._header_html(status, None)
            dist = self._distribution_data(status)
            if not dist['stacked']:
                names = [r['name'] for r in reps]
                self.values['reads'] = dict(zip(names, dist['series']['reads served']))
                self.values['writes_applied'] = dict(zip(names, dist['series']['writes applied']))
            self._set_image('distribution', self.distribution, dist, render_distribution)
            series = list(self._series)
            self._set_image('latency', self.latency, series, render_series, force_every=5.0)
            self._set_html('raft', self.raft, raft_html(status))
            self._set_html('processes', self.processes, processes_html(status))
            self._set_html('gpus', self.gpus, gpus_html(status))
            return status

    def _set_image(self, key: str, widget: widgets.Image, data: Any, render, force_every: float = 0.0) -> None:
        """Re-render only when the data changed (or every ``force_every`` s): PNGs cost CPU."""
        sig = repr(data)
        last = self._signatures.get(key)
        now = time.monotonic()
        if last and last[0] == sig and not (force_every and now - last[1] > force_every):
            return
        widget.value = render(data)
        self._signatures[key] = (sig, now)

    def _set_html(self, key: str, widget: widgets.HTML, value: str) -> None:
        if widget.value != value:
            widget.value = value

    def _distribution_data(self, status: Dict[str, Any]) -> Dict[str, Any]:
        reps = status.get('replicas', [])
        stateful = any(r.get('raft') for r in reps)
        names = [short_name(r['name'], status.get('name', '')) for r in reps]
        if stateful:
            reads, writes = [], []
            for r in reps:
                eps = r.get('endpoints') or {}
                reads.append(sum(v for k, v in (r.get('requests') or {}).items()
                                 if not (eps.get(k) or {}).get('write')))
                raft = r.get('raft') or {}
                writes.append(raft.get('writes_applied', raft.get('applied_index', 0)) or 0)
            return {'names': names, 'series': {'reads served': reads, 'writes applied': writes},
                    'stacked': False}
        endpoints = sorted({k for r in reps for k in (r.get('requests') or {})})
        return {'names': names, 'stacked': True,
                'series': {ep: [(r.get('requests') or {}).get(ep, 0) for r in reps] for ep in endpoints}}

    def _header_html(self, status: Optional[Dict[str, Any]], note: Optional[str],
                     frozen: Optional[str] = None) -> str:
        """The header line; ``frozen`` ('stopped at 08:41:03') replaces the live state badge, so a
        static frame says one state and when it was taken."""
        obj = self.obj
        state = frozen.split(' ', 1)[0] if frozen else ('running' if obj.running else 'stopped')
        when = f' at {frozen.split(" at ", 1)[1]}' if frozen and ' at ' in frozen else ''
        parts = [f'<b>{reprs.esc(type(obj).__name__)}</b> <code>{reprs.esc(obj.name)}</code> '
                 f'{reprs.badge(state)}{reprs.esc(when)}']
        if status is not None:
            v = self.values
            lat = ''
            if v.get('p50_ms') is not None:
                lat = f' · p50 {v["p50_ms"]:.1f} ms · p99 {v["p99_ms"]:.1f} ms'
            n_ready = sum(1 for r in status.get('replicas', []) if r.get('state') == 'ready')
            parts.append(f'<code>{reprs.esc(obj.address)}</code> · {n_ready}/{len(status.get("replicas", []))} '
                         f'replicas ready · {v.get("total", 0)} requests · {v["qps"]:.1f} req/s{lat}')
        if note:
            parts.append(f'<span style="color: #757575">{reprs.esc(note)}</span>')
        return ('<div class="orchestra-dashboard-header" style="white-space: normal; overflow-wrap: anywhere">'
                + ' · '.join(parts) + '</div>')


def _on_orchestration_event(event: str, obj: Orchestration) -> None:
    """A deployment is stopping (still answering): its displayed dashboards take a final reading
    and leave that frame behind."""
    if event not in ('closing', 'closed'):
        return
    for dash in list(_LIVE.get(id(obj), [])):
        if dash.obj is obj and dash._displayed and dash.snapshot_bundle is None:
            dash.freeze('stopped')


def settled(status: Dict[str, Any]) -> bool:
    """Every replica ready and, for stateful ones, exactly one RAFT leader per shard."""
    reps = status.get('replicas', [])
    if any(r.get('state') != 'ready' for r in reps):
        return False
    leaders: Dict[Any, int] = {}
    for r in reps:
        if r.get('raft'):
            key = (r.get('node'), r.get('shard', 0))
            leaders[key] = leaders.get(key, 0) + (raft_role_of(r) == 'leader')
    return all(n == 1 for n in leaders.values())


def raft_role_of(replica: Dict[str, Any]) -> str:
    raft = replica.get('raft') or {}
    return str(raft.get('role') or raft.get('state') or '')


orchestration.OBSERVERS.append(_on_orchestration_event)


def _plain(markup: str) -> str:
    """The text of a bit of HTML (the header), for the snapshot."""
    text = html.unescape(re.sub(r'<[^>]+>', '', markup)).replace('\u25cf', '')
    return ' '.join(text.split())


def _aligned(head: List[str], rows: List[List[Any]]) -> str:
    cells = [[str('' if c is None else c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(head)]
    lines = ['  '.join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
    lines += ['  '.join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    return '\n'.join(lines)


def _text_tables(status: Dict[str, Any]) -> List[Tuple[str, str]]:
    """(title, aligned text) of every table panel: RAFT (stateful), processes, GPUs (when there are some)."""
    out = []
    raft = raft_rows(status)
    if raft:
        out.append(('RAFT', _aligned(RAFT_HEAD, raft)))
    head, rows, raw = reprs.replica_rows(status)
    state_col = raw[0]
    rows = [[_plain(str(c)) if i == state_col else c for i, c in enumerate(row)] for row in rows]
    out.append(('processes', _aligned(head, rows)))
    info = status.get('gpus') or {}
    if info.get('available') and info.get('gpus'):
        prefix = status.get('name', '')
        rows = [[g.get('index'), g.get('name') or '', g.get('utilization', ''),
                 ', '.join(short_name(n, prefix) for n in g.get('replicas') or [])] for g in info['gpus']]
        out.append(('GPUs', _aligned(['GPU', 'name', 'utilization %', 'replicas'], rows)))
    return out


def render_snapshot(header: str, charts: List[bytes], tables: List[Tuple[str, str]]) -> bytes:
    """One PNG: the header (wrapped), the chart PNGs side by side, then each table in monospace;
    every height is counted, so no band is left empty."""
    import textwrap
    import matplotlib.image as mpimg
    images = [mpimg.imread(io.BytesIO(png), format='png') for png in charts]
    pad, head_line, line_h, char_w, title_h = 10, 18, 15, 7, 20
    charts_w = sum(im.shape[1] for im in images) + pad * max(0, len(images) - 1)
    charts_h = max((im.shape[0] for im in images), default=0)
    table_w = max((len(line) for _, body in tables for line in body.splitlines()), default=0) * char_w
    width = max(640, charts_w + 2 * pad, table_w + 2 * pad)
    head_lines = textwrap.wrap(header, width=max(40, (width - 2 * pad) // 8)) or ['']
    tables_h = sum(title_h + line_h * len(body.splitlines()) + pad for _, body in tables)
    height = pad + head_line * len(head_lines) + pad + charts_h + pad + tables_h + pad
    dpi = 100
    fig = _figure(width / dpi, height / dpi)
    fig.set_dpi(dpi)
    fig.patch.set_facecolor('white')
    y = pad   # from the top, in pixels
    for line in head_lines:
        fig.text(pad / width, 1 - (y + head_line - 4) / height, line, fontsize=10, va='baseline', ha='left')
        y += head_line
    y += pad
    x = pad
    for im in images:   # figimage offsets are from the bottom left
        fig.figimage(im, xo=x, yo=height - y - im.shape[0], origin='upper')
        x += im.shape[1] + pad
    y += charts_h + pad
    for title, body in tables:
        fig.text(pad / width, 1 - (y + title_h - 6) / height, title, fontsize=9.5, weight='bold',
                 va='baseline', ha='left')
        y += title_h
        for line in body.splitlines():
            fig.text(pad / width, 1 - (y + line_h - 4) / height, line, fontsize=8.5, family='monospace',
                     va='baseline', ha='left')
            y += line_h
        y += pad
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=dpi)
    return buf.getvalue()


def short_name(name: str, prefix: str) -> str:
    """'indexer/rep-0' -> 'rep-0' when every replica shares the prefix."""
    return name[len(prefix) + 1:] if prefix and name.startswith(prefix + '/') else name


# -- charts (matplotlib Agg -> PNG bytes; no pyplot, so threads are fine) -------------------
def _figure(width: float = 4.8, height: float = 2.4):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=90)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format='png')
    return buf.getvalue()


def render_distribution(data: Dict[str, Any]) -> bytes:
    """Bars per replica: stacked by endpoint, or grouped reads/writes for stateful ones."""
    names: List[str] = data['names']
    series: Dict[str, List[float]] = data['series']
    fig = _figure(4.8, max(2.4, 0.9 + 0.35 * len(names)))   # as tall as the latency chart beside it
    ax = fig.add_subplot(111)
    ys = list(range(len(names)))
    if not series or not names:
        ax.text(0.5, 0.5, 'no requests yet', ha='center', va='center', transform=ax.transAxes)
    elif data['stacked']:
        left = [0.0] * len(names)
        for i, (label, values) in enumerate(series.items()):
            ax.barh(ys, values, left=left, label=label, color=PALETTE[i % len(PALETTE)])
            left = [a + b for a, b in zip(left, values)]
    else:
        h = 0.8 / max(1, len(series))
        for i, (label, values) in enumerate(series.items()):
            ax.barh([y - 0.4 + h * (i + 0.5) for y in ys], values, height=h, label=label,
                    color=PALETTE[i % len(PALETTE)])
    ax.set_yticks(ys, names)
    ax.invert_yaxis()
    ax.set_title('requests per replica', fontsize=10)
    ax.tick_params(labelsize=8)
    if series:  # beside the bars, never over the last replica's
        ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0), frameon=False, borderaxespad=0)
    return _png(fig)


def render_series(series: List[Tuple[float, float, Optional[float], Optional[float]]]) -> bytes:
    """Gateway QPS (left) and p50/p99 latency in ms (right) over the last minutes."""
    fig = _figure(4.8, 2.4)
    ax_q, ax_l = fig.add_subplot(121), fig.add_subplot(122)
    if series:
        t_end = series[-1][0]
        ts = [t - t_end for t, *_ in series]
        ax_q.plot(ts, [q for _, q, _, _ in series], color=PALETTE[0], marker='.', markersize=3)
        for idx, label, color in ((2, 'p50', PALETTE[2]), (3, 'p99', PALETTE[4])):
            pts = [(t, s[idx]) for t, s in zip(ts, series) if s[idx] is not None]
            if pts:
                ax_l.plot([p[0] for p in pts], [p[1] for p in pts], label=label, color=color,
                          marker='.', markersize=3)
        if any(s[2] is not None for s in series):
            ax_l.legend(fontsize=7)
    ax_q.set_title('req/s', fontsize=10)
    ax_l.set_title('latency (ms)', fontsize=10)
    for ax in (ax_q, ax_l):
        ax.set_xlabel('s', fontsize=8)
        ax.tick_params(labelsize=8)
        ax.set_ylim(bottom=0)
    return _png(fig)


# -- tables ---------------------------------------------------------------------------------
def _bar(fraction: Optional[float], color: str = PALETTE[0]) -> str:
    if fraction is None:
        return ''
    pct = max(0.0, min(1.0, fraction)) * 100
    return (f'<div style="display: inline-block; width: 60px; height: 8px; background: #eee; '
            f'vertical-align: middle"><div style="width: {pct:.0f}%; height: 8px; background: {color}">'
            f'</div></div>')


def _section(title: str, body: str) -> str:
    return f'<div><div style="font-weight: bold; margin: 6px 0 2px">{reprs.esc(title)}</div>{body}</div>'


RAFT_HEAD = ['replica', 'role', 'term', 'leader', 'commit', 'applied', 'writes applied']


def raft_rows(status: Dict[str, Any]) -> List[List[Any]]:
    """One row per stateful replica: role, term, leader, commit/applied index, writes applied."""
    rows = []
    for r in status.get('replicas', []):
        raft = r.get('raft')
        if not raft:
            continue
        leader = raft.get('leader', '')
        rows.append([short_name(r['name'], status.get('name', '')), raft_role_of(r), raft.get('term', ''),
                     short_name(str(leader), status.get('name', '')) if leader else '',
                     raft.get('commit_index', raft.get('commit_idx', '')),
                     raft.get('applied_index', raft.get('last_applied', '')),
                     raft.get('writes_applied', '')])
    return rows


def raft_html(status: Dict[str, Any]) -> str:
    """Role, term, commit/applied index per replica (stateful deployments)."""
    rows = raft_rows(status)
    if not rows:
        return _section('RAFT', '<span style="color: #757575">not stateful: replicas share no state</span>')
    return _section('RAFT', reprs.html_table(RAFT_HEAD, rows))


def processes_html(status: Dict[str, Any]) -> str:
    """CPU % and RSS per process (replicas and the gateway)."""
    procs = list(status.get('replicas', []))
    gw = status.get('gateway') or {}
    if gw:
        procs.append(dict(gw, name='gateway'))
    if not any(p.get('cpu_percent') is not None or p.get('rss_bytes') is not None for p in procs):
        return _section('processes', '<span style="color: #757575">CPU/RSS not reported by this runtime</span>')
    rows = []
    for p in procs:
        cpu = p.get('cpu_percent')
        rows.append([short_name(p['name'], status.get('name', '')), p.get('pid', ''),
                     '' if cpu is None else f'{_bar(cpu / 100.0)} {cpu:.0f}%',
                     reprs.human_bytes(p.get('rss_bytes'))])
    return _section('processes', reprs.html_table(['process', 'pid', 'CPU', 'RSS'], rows, raw_columns=(2,)))


def gpus_html(status: Dict[str, Any]) -> str:
    """Per-GPU utilization and memory with the replicas on it, or a one-line note."""
    info = status.get('gpus')
    if not info:
        return _section('GPUs', '<span style="color: #757575">no GPU data from this runtime</span>')
    if not info.get('available') or not info.get('gpus'):
        return _section('GPUs', f'<span style="color: #757575">{reprs.esc(info.get("note") or "no GPU")}'
                                '</span>')
    rows = []
    for g in info['gpus']:
        used, total = g.get('memory_used'), g.get('memory_total')
        util = g.get('utilization')
        mem = f'{reprs.human_bytes(used)} / {reprs.human_bytes(total)}' if used is not None else ''
        rows.append([g.get('index'), g.get('name') or '',
                     '' if util is None else f'{_bar(util / 100.0, PALETTE[2])} {util}%',
                     (_bar(used / total, PALETTE[1]) + ' ' if used is not None and total else '') + reprs.esc(mem),
                     ', '.join(short_name(n, status.get('name', '')) for n in g.get('replicas') or [])])
    return _section('GPUs', reprs.html_table(['GPU', 'name', 'utilization', 'memory', 'replicas'], rows,
                                             raw_columns=(2, 3)))

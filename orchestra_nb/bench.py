"""The QPS comparison in a notebook: a widget progress bar, an HTML table and plots.

    >>> from orchestra_nb.bench import compare
    >>> result = compare(docs=5000, queries=200)       # replicas=1 vs replicas=3 stateful (RAFT)
    >>> result                                         # an HTML table in a notebook
    >>> result.plot();                                 # QPS, index time, per-replica requests (shown once)

The measuring is :mod:`runtime.bench` (also ``orchestra bench``); this module adds the
notebook views. :func:`save_plot` writes a PNG without a display (Agg).
"""
from __future__ import annotations

import html
import threading
import time
import uuid
from typing import Any, Optional, Sequence, Union

from runtime.bench import (DEFAULT_CONCURRENCY, DEFAULT_DIM, DEFAULT_DOCS, DEFAULT_LIMIT, DEFAULT_QUERIES,
                           BenchResult, Setup, SetupResult, parse_setups)
from runtime.bench import compare as _compare

__all__ = ['compare', 'NotebookBenchResult', 'save_plot', 'Setup', 'parse_setups', 'BenchResult', 'SetupResult']

_COLORS = ['#4c72b0', '#dd8452', '#55a868', '#c44e52', '#8172b3', '#937860', '#da8bc3', '#8c8c8c']


class NotebookBenchResult(BenchResult):
    """A :class:`runtime.bench.BenchResult` with ``_repr_html_`` and :meth:`plot`."""

    @classmethod
    def wrap(cls, result: BenchResult) -> 'NotebookBenchResult':
        if isinstance(result, cls):
            return result
        return cls(result.setups, result.workload, result.machine)

    def _repr_html_(self) -> str:
        return result_html(self)

    def plot(self, figsize: Sequence[float] = (13, 4), show: Optional[bool] = None):
        """Search QPS, index seconds and requests per replica, by setup; returns the Figure.

        In a notebook the figure is shown right away, exactly once: ``result.plot();`` shows it
        (the ``;`` only hides the return value), and so does ``result.plot()`` as a cell's last
        line (the returned Figure does not show itself a second time in that cell; shown in a
        later cell, or with ``display(fig)`` later, it shows again). ``show=False`` only
        returns it; outside a notebook nothing is shown. The Figure is not managed by pyplot
        (no ``plt.close`` needed, nothing left open).
        """
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
        except ImportError as e:  # pragma: no cover - matplotlib is a dependency
            raise ImportError('plot() needs matplotlib: pip install matplotlib') from e
        fig = _plot_figure_class()(figsize=tuple(figsize))
        FigureCanvasAgg(fig)
        draw(self, fig)
        shell = _kernel_shell()
        if shell is not None and show is not False:
            _show_png(fig)
            fig._orchestra_shown_in = shell.execution_count
        return fig

    def save_plot(self, path: str) -> str:
        """Write the plot as a PNG; returns ``path``."""
        return save_plot(self, path)


def compare(docs: int = DEFAULT_DOCS, queries: int = DEFAULT_QUERIES, dim: int = DEFAULT_DIM,
            setups: Union[str, Sequence[Any], None] = None, uses: Any = None, progress: Any = True,
            limit: int = DEFAULT_LIMIT, concurrency: int = DEFAULT_CONCURRENCY, seed: int = 0) -> NotebookBenchResult:
    """:func:`runtime.bench.compare` with notebook progress bars (``tqdm.auto``) and views.

    ``setups``: ``'1,3s'`` (default: one replica vs three stateful), ``'1,3s,1b'`` adds one
    replica with dynamic batching; see :mod:`runtime.bench`.
    """
    if progress is True:
        if _kernel_shell() is not None:
            progress = ProgressLine
        else:
            from tqdm.auto import tqdm
            progress = tqdm
    return _compare(docs=docs, queries=queries, dim=dim, setups=setups, uses=uses, progress=progress,
                    limit=limit, concurrency=concurrency, seed=seed, result_cls=NotebookBenchResult)


class ProgressLine:
    """A tqdm-like progress bar for a notebook: live, a widget (values sync from any thread);
    closed, replaced by one finished line (``update_display`` from the thread that closes it,
    the cell's own), so a saved or reopened notebook never keeps a bar stuck at 0 %.

    >>> bar = ProgressLine(total=3, desc='1: index', unit='doc')   # doctest: +SKIP
    >>> bar.update(3); bar.close()      # the output now reads '✓ 1: index: 3/3 docs in 0.2 s'
    """

    def __init__(self, total: Optional[int] = None, desc: str = '', unit: str = 'it', leave: bool = True,
                 **_ignored: Any):
        import ipywidgets as widgets
        from IPython.display import display
        self.total, self.desc, self.unit = total, desc, unit
        self.n = 0
        self.postfix = ''
        self.t0 = time.monotonic()
        self._lock = threading.Lock()
        self._closed = False
        self._bar = widgets.IntProgress(value=0, min=0, max=max(1, total or 1),
                                        layout=widgets.Layout(width='240px'))
        self._label = widgets.Label(self.line())
        self.widget = widgets.HBox([widgets.Label(desc), self._bar, self._label])
        self._display_id = f'orchestra-progress-{uuid.uuid4().hex}'
        display(self.widget, display_id=self._display_id)

    def line(self, done: bool = False) -> str:
        total = f'/{self.total}' if self.total is not None else ''
        extra = f' ({self.postfix})' if self.postfix and not done else ''
        text = f'{self.n}{total} {self.unit}s in {time.monotonic() - self.t0:.1f} s{extra}'
        return f'✓ {self.desc}: {text}' if done else text

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.n += n
            self._bar.value = min(self.n, self._bar.max)
            self._label.value = self.line()

    def set_postfix_str(self, s: str) -> None:
        self.postfix = s
        self._label.value = self.line()

    def close(self) -> None:
        """Replace the bar by its finished line (once)."""
        if self._closed:
            return
        self._closed = True
        from IPython.display import update_display
        update_display({'text/plain': self.line(done=True)}, raw=True, display_id=self._display_id)
        self.widget.close()

    def __enter__(self) -> 'ProgressLine':
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --------------------------------------------------------------------------- views

def result_html(result: BenchResult) -> str:
    """An HTML table of the result (what a notebook shows)."""
    rows = result.rows()
    esc = html.escape
    cols = list(rows[0]) if rows else []
    head = ''.join(f'<th style="text-align:left;padding:2px 8px">{esc(c)}</th>' for c in cols)
    body = []
    for r, s in zip(rows, result.setups):
        color = '#c62828' if not s.ok else 'inherit'
        cells = ''.join(f'<td style="text-align:left;padding:2px 8px;color:{color if c == "checks" else "inherit"}">'
                        f'{esc(r[c])}</td>' for c in cols)
        body.append(f'<tr>{cells}</tr>')
    details = []
    for s in result.setups:
        if s.error:
            details.append(f'<div style="color:#c62828"><b>{esc(s.name)}</b>: {esc(s.error)}</div>')
    details.append(per_replica_html(result))
    w, m = result.workload, result.machine
    caption = (f"{w.get('docs')} docs &times; {w.get('dim')}-d, index request_size={w.get('index_request_size')}; "
               f"{w.get('queries')} queries, request_size=1, limit={w.get('limit')}, {w.get('concurrency')} in flight"
               f" &mdash; {m.get('cpus')} cores, {m.get('memory_gib')} GiB, GPU: {esc(str(m.get('gpu') or 'none'))}")
    return (f'<div class="orchestra-bench"><table style="border-collapse:collapse">'
            f'<caption style="caption-side:bottom;text-align:left;font-size:85%">{caption}</caption>'
            f'<thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
            f'<details style="font-size:85%"><summary>per replica</summary>{"".join(details)}</details></div>')


def per_replica_html(result: BenchResult) -> str:
    """One table row per replica of each setup (its counters as columns), not a run-on paragraph."""
    esc = html.escape
    keys = []
    for s in result.setups:
        for rec in s.per_replica.values():
            keys += [k for k in rec if k not in keys]
    rows = []
    for s in result.setups:
        for i, (name, rec) in enumerate(s.per_replica.items()):
            setup = esc(s.name) if i == 0 else ''
            cells = ''.join(f'<td style="text-align:right;padding:1px 8px">{esc(str(rec.get(k, "")))}</td>'
                            for k in keys)
            rows.append(f'<tr><td style="text-align:left;padding:1px 8px"><b>{setup}</b></td>'
                        f'<td style="text-align:left;padding:1px 8px">{esc(name)}</td>{cells}</tr>')
    if not rows:
        return ''
    head = ''.join(f'<th style="text-align:left;padding:1px 8px">{esc(c)}</th>' for c in ['setup', 'replica'] + keys)
    return (f'<table class="orchestra-bench-replicas" style="border-collapse:collapse">'
            f'<thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>')


def draw(result: BenchResult, fig) -> None:
    """Draw the three panels of the result onto matplotlib Figure ``fig``."""
    setups = result.setups
    names = [s.name for s in setups]
    x = list(range(len(setups)))
    colors = [_COLORS[i % len(_COLORS)] for i in x]
    ax_qps, ax_index, ax_rep = fig.subplots(1, 3)

    qps = [s.search_qps or 0.0 for s in setups]
    bars = ax_qps.bar(x, qps, color=colors)
    for b, v in zip(bars, qps):
        ax_qps.annotate(f'{v:.0f}', (b.get_x() + b.get_width() / 2, v), ha='center', va='bottom', fontsize=8)
    ax_qps.set_title('search QPS (higher is better)')
    ax_qps.set_ylabel('queries / s')

    idx = [s.index_seconds or 0.0 for s in setups]
    ax_index.bar(x, idx, color=colors, label='reply')
    extra = [max(0.0, (s.replicated_seconds or 0.0) - (s.index_seconds or 0.0)) if s.stateful else 0.0
             for s in setups]
    if any(extra):
        ax_index.bar(x, extra, bottom=idx, color=colors, alpha=0.35, hatch='//',
                     label='until every replica holds every doc')
        ax_index.legend(fontsize=7, loc='upper left')
    ax_index.set_title(f"index {result.workload.get('docs')} docs (lower is better)")
    ax_index.set_ylabel('seconds')

    for i, s in enumerate(setups):
        reads = [rec.get('reads', 0) or 0 for rec in s.per_replica.values()]
        width = 0.8 / max(1, len(reads))
        for j, v in enumerate(reads):        # one bar per replica, side by side around the setup
            ax_rep.bar(i - 0.4 + width * (j + 0.5), v, width=width * 0.9, color=colors[i],
                       alpha=1.0 - 0.5 * j / max(1, len(reads)))
    ax_rep.set_title('search requests served, per replica')
    ax_rep.set_ylabel('requests')

    for ax in (ax_qps, ax_index, ax_rep):
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=15, ha='right', fontsize=8)
        ax.grid(axis='y', alpha=0.3)
    m = result.machine
    fig.suptitle(f"{result.workload.get('docs')} docs x {result.workload.get('dim')}-d, "
                 f"{result.workload.get('queries')} queries  |  {m.get('cpus')} cores, "
                 f"GPU: {m.get('gpu') or 'none'}", fontsize=9)
    fig.tight_layout()


_PLOT_FIGURE = None


def _plot_figure_class():
    """A matplotlib ``Figure`` that a notebook shows once per cell (made on first use: lazy import)."""
    global _PLOT_FIGURE
    if _PLOT_FIGURE is None:
        from matplotlib.figure import Figure

        class BenchFigure(Figure):
            """The Figure :meth:`NotebookBenchResult.plot` returns.

            IPython asks ``_ipython_display_`` before any formatter, both for ``display(fig)``
            and for a cell's last value. ``plot()`` has shown the figure already in the cell
            it ran in, so the first such request in that same cell is the echo of
            ``result.plot()`` and is skipped; any other shows the PNG.
            """
            _orchestra_shown_in = None

            def _ipython_display_(self):
                shell = _kernel_shell()
                if shell is None:
                    print(repr(self))
                    return
                if self._orchestra_shown_in is not None and self._orchestra_shown_in == shell.execution_count:
                    self._orchestra_shown_in = None
                    return
                _show_png(self)

        _PLOT_FIGURE = BenchFigure
    return _PLOT_FIGURE


def _kernel_shell():
    """The IPython shell when running in a Jupyter kernel (something shows images), else None."""
    import sys
    if 'IPython' not in sys.modules:      # never imported: not in a notebook
        return None
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover
        return None
    shell = get_ipython()
    if shell is None or getattr(shell, 'kernel', None) is None:
        return None
    return shell


def _show_png(fig, dpi: int = 100) -> None:
    import io

    from IPython.display import Image, display
    buf = io.BytesIO()
    fig.savefig(buf, format='png', dpi=dpi)
    display(Image(data=buf.getvalue(), format='png'))


def save_plot(result: BenchResult, path: str, figsize: Sequence[float] = (13, 4), dpi: int = 110) -> str:
    """Write the plot of ``result`` (any BenchResult) as a PNG at ``path``, with no display (Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=tuple(figsize))
    FigureCanvasAgg(fig)
    draw(result, fig)
    fig.savefig(path, dpi=dpi)
    return path

"""Rich views of a Deployment/Flow: an HTML status table and a readable text form.

The markup lives in ``runtime/templates/*.html`` (``string.Template``); this
module only fills it and imports no notebook package. ``Orchestration``'s
``_repr_html_``/``_repr_pretty_`` call it; ``orchestra_nb`` (magics, widgets,
dashboard) reuses its pieces.

    >>> html = status_html(dep)          # the table `%orchestra status NAME` shows
"""
from __future__ import annotations

import html
import string
import time
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

if TYPE_CHECKING:
    from runtime.orchestration import Orchestration

STATE_COLORS = {'running': '#2e7d32', 'ready': '#2e7d32', 'starting': '#f9a825', 'stopped': '#757575',
                'failed': '#c62828', 'down': '#c62828', 'unreachable': '#ef6c00'}


@cache
def template(name: str) -> string.Template:
    """A template from ``runtime/templates``."""
    return string.Template(resources.files('runtime').joinpath('templates', name).read_text())


def esc(value: Any) -> str:
    """HTML-escaped ``str(value)``; None is ''."""
    return html.escape('' if value is None else str(value))


def html_table(head: Sequence[str], rows: Sequence[Sequence[Any]], raw_columns: Sequence[int] = ()) -> str:
    """An HTML table; cells are escaped except the columns in ``raw_columns`` (already HTML)."""
    th = ''.join(f'<th style="padding: 2px 8px">{esc(h)}</th>' for h in head)
    trs = []
    for row in rows:
        tds = ''.join(f'<td style="padding: 2px 8px">{c if i in raw_columns else esc(c)}</td>'
                      for i, c in enumerate(row))
        trs.append(f'<tr>{tds}</tr>')
    return template('table.html').substitute(head=th, rows='\n'.join(trs))


def badge(state: str) -> str:
    """A coloured dot and the state, as HTML."""
    color = STATE_COLORS.get(state, '#757575')
    return f'<span style="color: {color}">&#9679;</span> {esc(state)}'


def human_bytes(n: Optional[float]) -> str:
    """``1.5 MiB``; '' for None."""
    if n is None:
        return ''
    for unit in ('B', 'KiB', 'MiB', 'GiB'):
        if n < 1024 or unit == 'GiB':
            return f'{n:.0f} {unit}' if unit == 'B' else f'{n:.1f} {unit}'
        n /= 1024
    return ''


def raft_role(rec: Dict[str, Any]) -> str:
    """``leader (term 3)`` for a stateful replica's status record; '' otherwise."""
    raft = rec.get('raft') or {}
    role = raft.get('role')
    if not role:
        return ''
    term = raft.get('term')
    return f'{role} (term {term})' if term is not None else str(role)


def total_requests(rec: Dict[str, Any]) -> int:
    """Requests served, all endpoints together."""
    return int(sum((rec.get('requests') or {}).values()))


def replica_rows(status: Dict[str, Any]) -> Tuple[List[str], List[List[Any]], Tuple[int]]:
    """(head, rows, raw columns) of the per-replica table, with optional columns only when present."""
    reps: List[Dict[str, Any]] = status.get('replicas', [])
    show_node = len({r.get('node') for r in reps}) > 1
    show_raft = any(r.get('raft') for r in reps)
    show_cpu = any(r.get('cpu_percent') is not None for r in reps)
    show_rss = any(r.get('rss_bytes') is not None for r in reps)
    show_gpu = any(r.get('cuda_visible_devices') not in (None, '') for r in reps)
    head = (['executor'] if show_node else []) + ['replica', 'pid', 'state', 'port', 'requests']
    head += (['RAFT role'] if show_raft else []) + (['CPU %'] if show_cpu else [])
    head += (['RSS'] if show_rss else []) + (['GPU'] if show_gpu else [])
    state_col = head.index('state')
    rows = []
    for r in reps:
        reqs = r.get('requests') or {}
        by_ep = ', '.join(f'{k}: {v}' for k, v in sorted(reqs.items()))
        row = ([r.get('node')] if show_node else [])
        row += [r.get('name'), r.get('pid'), badge(r.get('state', '?')), r.get('port'),
                f'{total_requests(r)}' + (f' ({by_ep})' if len(reqs) > 1 else '')]
        row += ([raft_role(r)] if show_raft else [])
        row += ([f"{r['cpu_percent']:.0f}" if r.get('cpu_percent') is not None else ''] if show_cpu else [])
        row += ([human_bytes(r.get('rss_bytes'))] if show_rss else [])
        row += ([r.get('cuda_visible_devices') or ''] if show_gpu else [])
        rows.append(row)
    gw = status.get('gateway') or {}
    if gw:
        row = (['gateway'] if show_node else []) + [f"{status.get('name')}/gateway", gw.get('pid'),
                                                    badge(gw.get('state', '?')), gw.get('port') or '',
                                                    total_requests(gw)]
        row += [''] * (len(head) - len(row))
        rows.append(row)
    return head, rows, (state_col,)


def kind_of(obj: Orchestration) -> str:
    """'Deployment' or 'Flow'."""
    return type(obj).__name__


def uses_name(uses: Any) -> str:
    """What runs, in a few characters: ``echo`` for a built-in, a class's qualified name, else the spec."""
    from runtime.uses import uses_label
    return uses_label(uses)


def summary_line(obj: Orchestration) -> str:
    """Replicas/shards/uses in a few words (no network)."""
    parts = []
    if hasattr(obj, 'uses'):
        parts.append(f'uses {uses_name(obj.uses)}')
        parts.append(f'replicas={getattr(obj, "replicas", "?")}')
        if getattr(obj, 'shards', 1) != 1:
            parts.append(f'shards={obj.shards}')
        if getattr(obj, 'stateful', False):
            parts.append('stateful')
    elif obj.stages:
        parts.append('executors: ' + ' → '.join(stage.name for stage in obj.stages))
    return ', '.join(parts)


def metrics_line(status: Optional[Dict[str, Any]]) -> str:
    """Where Prometheus scrapes (``monitoring=True``), or '' when nothing serves metrics."""
    if not status:
        return ''
    gw = (status.get('gateway') or {}).get('metrics_port')
    reps = [str(r['metrics_port']) for r in status.get('replicas') or [] if r.get('metrics_port')]
    if not gw and not reps:
        return ''
    host = (status.get('address') or '127.0.0.1:0').rsplit(':', 1)[0]
    parts = [f'gateway http://{host}:{gw}/metrics'] if gw else []
    if reps:
        parts.append(f'replicas on ports {", ".join(reps)}')
    return 'metrics: ' + '; '.join(parts)


def status_html(obj: Orchestration, status: Optional[Dict[str, Any]] = None, state: Optional[str] = None,
                note: str = '') -> str:
    """The HTML view: header (the state and when it was read: a displayed card never changes), the
    per-replica table (when running) and an optional note."""
    running = obj.running
    state = state or ('running' if running else 'stopped')
    table = ''
    if running:
        if status is None:
            try:
                status = obj.status(timeout=1.0)
            except Exception as e:  # a view never raises
                note = note or f'status unavailable: {type(e).__name__}: {e}'
        if status is not None:
            head, rows, raw = replica_rows(status)
            table = html_table(head, rows, raw)
            if metrics_line(status):
                table += f'<div style="color: #555">{esc(metrics_line(status))}</div>'
    where = ('at ' + ', '.join(f'<code>{esc(a)}</code>' for a in obj.addresses.values())) if running else ''
    return template('orchestration.html').substitute(
        kind=esc(kind_of(obj)), name=esc(obj.name), state=esc(state), taken=time.strftime('%H:%M:%S'),
        state_color=STATE_COLORS.get(state, '#757575'), where=where,
        summary=f'<div style="color: #555">{esc(summary_line(obj))}</div>',
        table=table, note=f'<div style="color: #c62828">{esc(note)}</div>' if note else '')


def status_text(obj: Orchestration, status: Optional[Dict[str, Any]] = None) -> str:
    """The same as plain text: one line, then one line per replica when running."""
    lines = [repr(obj)]
    summary = summary_line(obj)
    if summary and '\n' not in lines[0]:  # a Flow's repr already draws its graph
        lines.append(f'  {summary}')
    if obj.running:
        try:
            status = status or obj.status(timeout=1.0)
        except Exception as e:
            lines.append(f'  status unavailable: {type(e).__name__}: {e}')
            return '\n'.join(lines)
        head, rows, raw = replica_rows(status)
        state_col = raw[0]
        text_rows = [[_strip_badge(c) if i == state_col else str('' if c is None else c)
                      for i, c in enumerate(row)] for row in rows]
        widths = [max(len(h), *(len(r[i]) for r in text_rows)) for i, h in enumerate(head)]
        lines.append('  ' + '  '.join(h.ljust(w) for h, w in zip(head, widths)))
        for r in text_rows:
            lines.append('  ' + '  '.join(c.ljust(w) for c, w in zip(r, widths)))
        if metrics_line(status):
            lines.append('  ' + metrics_line(status))
    return '\n'.join(lines)


def _strip_badge(cell: str) -> str:
    return html.unescape(cell.rsplit('</span> ', 1)[-1])

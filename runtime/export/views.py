"""What an export wrote, as a table: HTML in a notebook, aligned text in a terminal.

    >>> path = flow.to_docker_compose_yaml('deploy/docker-compose.yml')   # doctest: +SKIP
    >>> export_summary(path)          # one row per service: what it runs, RAFT peers, volumes, secrets
    >>> export_summary(flow.to_kubernetes_yaml('deploy/k8s'))   # one row per manifest  # doctest: +SKIP

Read back from the files written (what ``docker compose``/``kubectl`` will see), so a
notebook needs no table-formatting code of its own. Cells never wrap inside a word.
"""
from __future__ import annotations

import html
import os
import stat
from typing import Any, Dict, List, Sequence, Tuple, Union

import yaml

NOWRAP = 'style="white-space: nowrap; text-align: left; padding: 1px 10px 1px 0"'


def _mode(path: str) -> str:
    return f'{stat.S_IMODE(os.stat(path).st_mode):o}' if os.path.exists(path) else '?'


def _arg(cmd: Sequence[str], flag: str) -> Any:
    return cmd[cmd.index(flag) + 1] if flag in cmd else None


class _Table:
    """Rows under a header, then notes; ``_repr_html_`` and ``__repr__`` show the same."""

    head: List[str] = []

    def __init__(self) -> None:
        self.rows: List[List[str]] = []
        self.notes: List[str] = []

    def _repr_html_(self) -> str:
        esc = html.escape
        head = ''.join(f'<th {NOWRAP}>{esc(h)}</th>' for h in self.head)
        body = ''.join('<tr>' + ''.join(f'<td {NOWRAP}>{esc(c)}</td>' for c in r) + '</tr>' for r in self.rows)
        notes = ''.join(f'<div>{esc(n)}</div>' for n in self.notes)
        return (f'<div class="orchestra-export" style="overflow-x: auto"><table><thead><tr>{head}</tr></thead>'
                f'<tbody>{body}</tbody></table>{notes}</div>')

    def __repr__(self) -> str:
        widths = [max(len(h), *(len(r[i]) for r in self.rows)) if self.rows else len(h)
                  for i, h in enumerate(self.head)]
        lines = ['  '.join(h.ljust(w) for h, w in zip(self.head, widths)).rstrip()]
        lines += ['  '.join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in self.rows]
        return '\n'.join(lines + ([''] + self.notes if self.notes else []))


class ComposeSummary(_Table):
    """A Docker Compose file: one row per service (what it runs, its RAFT peers, volumes, secrets)."""

    head = ['service', 'runs', 'RAFT peers', 'volumes', 'secrets']

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        with open(path) as f:
            doc = yaml.safe_load(f)
        for svc, spec in doc.get('services', {}).items():
            cmd = spec.get('command') or []
            if cmd[:1] == ['gateway']:
                runs = f"gateway, publishes {(spec.get('ports') or ['-'])[0]}"
            else:
                runs = f"{_arg(cmd, '--executor')} shard {_arg(cmd, '--shard')} rep {_arg(cmd, '--replica')}"
            peers = ' '.join(cmd[cmd.index('--peer-hosts') + 1:][:3]) if '--peer-hosts' in cmd else '-'
            volumes = [v.split(':')[0] for v in spec.get('volumes', []) if not v.startswith('.')]
            self.rows.append([svc, runs, peers, ' '.join(volumes) or '-', ' '.join(spec.get('secrets') or []) or '-'])
        self.notes.append('volumes: ' + (' '.join(doc.get('volumes') or {}) or '-'))
        folder = os.path.dirname(path)
        for name, spec in (doc.get('secrets') or {}).items():
            self.notes.append(f"secrets: {name} (file {spec.get('file')}, "
                              f"mode {_mode(os.path.join(folder, name))})")


class KubernetesSummary(_Table):
    """Kubernetes manifests: one row per object (file, kind, name, what matters about it)."""

    head = ['file', 'kind', 'name', 'details']

    def __init__(self, files: Sequence[str]):
        super().__init__()
        self.files = list(files)
        manifests: List[Tuple[str, Dict[str, Any]]] = []
        for path in sorted(self.files):
            with open(path) as f:
                manifests += [(path, d) for d in yaml.safe_load_all(f) if d]
        # the ConfigMap's keys (orchestra.yml, app-0, ...) as the file names the pods see
        self._code_files = {i['key']: i['path'] for _, d in manifests if d['kind'] == 'StatefulSet'
                            for v in d['spec']['template']['spec']['volumes'] if v['name'] == 'app'
                            for i in v['configMap']['items']}
        for path, d in manifests:
            self.rows.append([os.path.basename(path), d['kind'], d['metadata']['name'], self._details(path, d)])

    def _details(self, path: str, doc: Dict[str, Any]) -> str:
        spec = doc.get('spec', {})
        kind = doc['kind']
        if kind == 'StatefulSet':
            return (f"replicas={spec['replicas']} podManagementPolicy={spec['podManagementPolicy']} "
                    f"serviceName={spec['serviceName']} "
                    f"volumeClaimTemplate={spec['volumeClaimTemplates'][0]['metadata']['name']}")
        if kind == 'Deployment':
            return f"replicas={spec['replicas']}"
        if kind == 'Service':
            what = 'headless (clusterIP=None)' if spec.get('clusterIP') == 'None' else spec.get('type', '')
            return what + (' publishNotReadyAddresses' if spec.get('publishNotReadyAddresses') else '')
        if kind == 'ConfigMap':
            return 'data: ' + ', '.join(self._code_files.get(k, k) for k in doc.get('data', {}))
        if kind == 'Secret':
            return f"type={doc.get('type')}, file mode {_mode(path)}"
        return ''


def export_summary(written: Union[str, Sequence[str]]) -> _Table:
    """What ``to_docker_compose_yaml`` (a path) or ``to_kubernetes_yaml`` (a list of files) wrote,
    as a table."""
    if isinstance(written, (str, os.PathLike)):
        return ComposeSummary(os.fspath(written))
    return KubernetesSummary(written)

"""The code's shape: no import cycles among the project's modules; import-linter contracts; ruff.

The cycle check reads the source with :mod:`ast`, so it sees every import statement:
module level, inside functions (lazy imports) and inside ``try``; only the bodies of
``if TYPE_CHECKING:`` are left out (they never run). ``from pkg import name`` counts as
importing ``pkg.name`` where that is a module of the project, else ``pkg`` itself.
"""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from collections import deque
from typing import Dict, Iterator, List, Optional, Set, Tuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ('runtime', 'orchestra_nb')

#: (importing module, imported module) -> where: 'path:line' (the first such statement)
Edges = Dict[Tuple[str, str], str]


def project_modules(root: str = ROOT) -> Dict[str, str]:
    """Dotted module name -> file path, for every ``.py`` file of the project's packages."""
    out = {}
    for pkg in PACKAGES:
        for folder, dirs, files in os.walk(os.path.join(root, pkg)):
            dirs[:] = sorted(d for d in dirs if d != '__pycache__')
            for f in sorted(files):
                if not f.endswith('.py'):
                    continue
                rel = os.path.relpath(os.path.join(folder, f), root)[:-3].split(os.sep)
                if rel[-1] == '__init__':
                    rel = rel[:-1]
                out['.'.join(rel)] = os.path.join(folder, f)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == 'TYPE_CHECKING') or \
        (isinstance(test, ast.Attribute) and test.attr == 'TYPE_CHECKING')


def _import_nodes(node: ast.AST) -> Iterator[ast.stmt]:
    """Every Import/ImportFrom under ``node``, skipping the bodies of ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.orelse:
                yield from _import_nodes(ast.Module(body=[stmt], type_ignores=[]))
        else:
            yield from _import_nodes(child)


def _resolve(name: str, modules: Dict[str, str]) -> Optional[str]:
    """The project module ``name`` is (or is inside), or None when it is not the project's."""
    while name and name not in modules:
        name = name.rpartition('.')[0]
    return name or None


def import_edges(modules: Dict[str, str]) -> Edges:
    """Every import of one project module by another (see the module docstring)."""
    edges: Edges = {}
    for mod, path in modules.items():
        with open(path, encoding='utf-8') as f:
            tree = ast.parse(f.read(), path)
        is_pkg = os.path.basename(path) == '__init__.py'
        for node in _import_nodes(tree):
            targets: List[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ''
                if node.level:
                    parts = mod.split('.')
                    anchor = parts[:len(parts) - node.level + (1 if is_pkg else 0)]
                    base = '.'.join(anchor + ([base] if base else []))
                for a in node.names:
                    sub = f'{base}.{a.name}' if base else a.name
                    targets.append(sub if sub in modules else base)
            for t in targets:
                target = _resolve(t, modules)
                if target and target != mod:
                    edges.setdefault((mod, target), f'{os.path.relpath(path, ROOT)}:{node.lineno}')
    return edges


def _components(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    out: List[List[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def _shortest_cycle(graph: Dict[str, Set[str]], start: str, within: Set[str]) -> List[str]:
    """The shortest ``start -> ... -> start`` path inside ``within`` (BFS)."""
    prev: Dict[str, str] = {}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for w in sorted(graph.get(v, ())):
            if w not in within:
                continue
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(prev[path[-1]])
                return path[::-1] + [start]
            if w not in prev:
                prev[w] = v
                queue.append(w)
    return []


def import_cycles(edges: Edges) -> List[List[str]]:
    """One shortest cycle through each module that is on a cycle, without repeats."""
    graph: Dict[str, Set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    cycles, seen = [], set()
    for comp in _components(graph):
        for start in comp:
            cycle = _shortest_cycle(graph, start, set(comp))
            key = frozenset(zip(cycle, cycle[1:]))
            if cycle and key not in seen:
                seen.add(key)
                cycles.append(cycle)
    return cycles


def describe(cycles: List[List[str]], edges: Edges) -> str:
    """``a -> b -> a`` per cycle, each hop with the line that imports."""
    lines = []
    for c in cycles:
        lines.append(' -> '.join(c))
        lines += [f'    {a} -> {b}  ({edges[a, b]})' for a, b in zip(c, c[1:])]
    return '\n'.join(lines)


# ------------------------------------------------------------------------------------ tests

def test_the_scanner_sees_lazy_imports_and_skips_type_checking_ones(tmp_path):
    pkg = tmp_path / 'runtime'
    pkg.mkdir()
    (pkg / '__init__.py').write_text('')
    (pkg / 'a.py').write_text('from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from runtime import c\n'
                              'def f():\n    from runtime import b\n')
    (pkg / 'b.py').write_text('from . import a\n')
    (pkg / 'c.py').write_text('import runtime.a\n')
    modules = project_modules(str(tmp_path))
    assert set(modules) == {'runtime', 'runtime.a', 'runtime.b', 'runtime.c'}
    edges = import_edges(modules)
    assert set(edges) == {('runtime.a', 'runtime.b'), ('runtime.b', 'runtime.a'), ('runtime.c', 'runtime.a')}
    assert import_cycles(edges) == [['runtime.a', 'runtime.b', 'runtime.a']]


def test_no_import_cycles_among_the_projects_modules():
    edges = import_edges(project_modules())
    cycles = import_cycles(edges)
    if cycles:
        print(describe(cycles, edges))
    assert not cycles, f'{len(cycles)} import cycle(s), lazy imports included:\n{describe(cycles, edges)}'


def _tool(name: str) -> str:
    """The console script ``name`` next to this Python, else on PATH; skips when absent."""
    here = os.path.join(os.path.dirname(sys.executable), name)
    path = here if os.path.exists(here) else shutil.which(name)
    if path is None:
        pytest.skip(f'{name} is not installed (pip install -e ".[test]")')
    return path


def test_import_contracts_hold():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
    proc = subprocess.run([_tool('lint-imports'), '--no-cache'], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_finds_nothing():
    proc = subprocess.run([_tool('ruff'), 'check', '.'], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr

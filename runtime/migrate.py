"""``orchestra migrate PATH...``: rewrite a Jina project's imports to ours, with libcst.

    $ orchestra migrate my_project/            # a unified diff of what would change, nothing written
    $ orchestra migrate my_project/ --write     # change the files

Python files are parsed and rewritten as syntax trees (libcst keeps comments and formatting),
never with regular expressions:

* ``from jina import Executor, requests, Flow, Deployment, Client`` (and Jina's own module paths,
  ``jina.serve.executors.decorators``, ``jina.orchestrate.deployments``, ...) becomes
  ``from orchestra_nb import ...``; a renamed name keeps the name the code uses
  (``from jina.serve.executors import BaseExecutor`` -> ``from orchestra_nb import Executor as
  BaseExecutor``);
* ``import jina`` (or ``import jina as j``) becomes ``import orchestra_nb`` (``as j``), and each
  ``jina.X`` (``jina.serve.executors.decorators.write``) becomes ``orchestra_nb.X``;
* names with no counterpart (``Document``, ``DocumentArray``: docarray v1; ``AsyncFlow``,
  ``monitor``, ...) are left in a ``from jina import`` line and reported, with what to do;
* a ``'jinahub://...'`` or ``'jinaai://...'`` string is reported (Jina Hub is not supported).

YAML files (``jtype: Flow`` / ``jtype: Deployment`` / Executor configs) are kept as they are: ours
read them. Each ``uses: jinahub://...`` and each key that is refused here (``install_requirements``,
``gpus``, ...: :data:`runtime.args.JINA_ONLY`) is reported with its line and the reason.

Reports go to standard error as ``path:line: message``; the exit status is 0 (1 when a path does
not exist or a Python file does not parse).
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple

import libcst as cst
from libcst.metadata import MetadataWrapper, ParentNodeProvider, PositionProvider

from runtime.args import JINA_ONLY
from runtime.uses import HUB_PREFIXES

OURS = 'orchestra_nb'
#: Jina's modules whose public names we provide (``from <module> import <name>``)
JINA_MODULES = ('jina', 'jina.serve.executors', 'jina.serve.executors.decorators', 'jina.orchestrate.deployments',
                'jina.orchestrate.flow.base', 'jina.orchestrate.flow', 'jina.clients', 'jina.excepts')
#: Jina name -> ours, for the names of :data:`JINA_MODULES`
RENAMES: Dict[str, str] = {
    'Executor': 'Executor', 'BaseExecutor': 'Executor', 'requests': 'requests', 'write': 'write',
    'dynamic_batching': 'dynamic_batching', 'Deployment': 'Deployment', 'Flow': 'Flow', 'Client': 'Client',
    'BadServerFlow': 'RemoteError',
}
#: Jina names with no counterpart here: what to do instead
NO_COUNTERPART: Dict[str, str] = {
    'Document': 'docarray v1; write docarray v2 docs: from docarray import BaseDoc (or docarray.documents.TextDoc)',
    'DocumentArray': 'docarray v1; write DocList[YourDoc] (from docarray import DocList)',
    'AsyncFlow': 'there is one Flow: await flow.apost(...)',
    'AsyncClient': 'there is one Client: await client.apost(...)',
    'monitor': 'the @monitor decorator (Prometheus) is not supported; dep.status() gives per-replica counters',
    'Gateway': "custom gateways are not supported",
}
PY_SUFFIXES = ('.py',)
YAML_SUFFIXES = ('.yml', '.yaml')
_SKIP_DIRS = {'.git', '__pycache__', 'node_modules', '.venv', 'venv', '.tox', '.mypy_cache'}


@dataclass
class Note:
    """Something the rewrite could not do, for the user to look at."""
    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f'{self.path}:{self.line}: {self.message}'


@dataclass
class FileResult:
    path: str
    old: str
    new: str
    notes: List[Note] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.old != self.new

    def diff(self) -> str:
        """The change as a unified diff (``a/PATH`` -> ``b/PATH``)."""
        return ''.join(difflib.unified_diff(self.old.splitlines(keepends=True), self.new.splitlines(keepends=True),
                                            f'a/{self.path}', f'b/{self.path}'))


def _dotted(node: cst.BaseExpression) -> Optional[str]:
    """``a.b.c`` (Name/Attribute) -> ``'a.b.c'``; anything else -> None."""
    if isinstance(node, cst.Name):
        return node.value
    if isinstance(node, cst.Attribute):
        base = _dotted(node.value)
        return f'{base}.{node.attr.value}' if base else None
    return None


def _is_jina(module: Optional[str]) -> bool:
    return module is not None and (module == 'jina' or module.startswith('jina.'))


class _Rewriter(cst.CSTTransformer):
    METADATA_DEPENDENCIES = (PositionProvider, ParentNodeProvider)

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.notes: List[Note] = []
        self.module_aliases: Set[str] = set()   # names bound to the jina module by `import jina [as x]`

    def _note(self, node: cst.CSTNode, message: str) -> None:
        self.notes.append(Note(self.path, self.get_metadata(PositionProvider, node).start.line, message))

    # from jina[...] import a, b
    def leave_ImportFrom(self, original: cst.ImportFrom, updated: cst.ImportFrom):
        module = _dotted(updated.module) if updated.module is not None and not updated.relative else None
        if not _is_jina(module):
            return updated
        if isinstance(updated.names, cst.ImportStar):
            self._note(original, f'from {module} import *: write the names: from {OURS} import '
                                 f'{", ".join(sorted(set(RENAMES.values())))}')
            return updated
        ours: List[cst.ImportAlias] = []
        left: List[cst.ImportAlias] = []
        for alias in updated.names:
            name = _dotted(alias.name) or ''
            if name in RENAMES and module in JINA_MODULES:
                new = RENAMES[name]
                asname = alias.asname
                if asname is None and new != name:   # keep the name the code uses
                    asname = cst.AsName(name=cst.Name(name))
                ours.append(alias.with_changes(name=cst.Name(new), asname=asname))
            else:
                why = NO_COUNTERPART.get(name, f'{module}.{name} has no counterpart in {OURS}')
                self._note(original, f'{name} (from {module}) is left as it was: {why}')
                left.append(alias.with_changes(comma=cst.MaybeSentinel.DEFAULT))
        if not ours:
            return updated
        if not left:   # every name moves: the statement keeps its layout
            return updated.with_changes(module=cst.Name(OURS), names=ours, relative=[])
        ours = [a.with_changes(comma=cst.MaybeSentinel.DEFAULT) for a in ours]
        new_import = updated.with_changes(module=cst.Name(OURS), names=ours, relative=[], lpar=None, rpar=None)
        self._split = True   # leave_SimpleStatementLine puts the two imports on lines of their own
        return cst.FlattenSentinel([new_import, updated.with_changes(names=left, lpar=None, rpar=None)])

    def leave_SimpleStatementLine(self, original: cst.SimpleStatementLine, updated: cst.SimpleStatementLine):
        if not getattr(self, '_split', False) or len(updated.body) < 2:
            return updated
        self._split = False
        last = len(updated.body) - 1
        return cst.FlattenSentinel([
            updated.with_changes(body=[stmt.with_changes(semicolon=cst.MaybeSentinel.DEFAULT)],
                                 leading_lines=updated.leading_lines if i == 0 else [],
                                 trailing_whitespace=(updated.trailing_whitespace if i == last
                                                      else cst.TrailingWhitespace()))
            for i, stmt in enumerate(updated.body)])

    # import jina / import jina as j / import jina.serve.executors
    def leave_Import(self, original: cst.Import, updated: cst.Import):
        names = []
        for alias in updated.names:
            dotted = _dotted(alias.name)
            if not _is_jina(dotted):
                names.append(alias)
                continue
            bound = alias.asname.name.value if alias.asname is not None else 'jina'
            self.module_aliases.add(bound)
            names.append(alias.with_changes(name=cst.Name(OURS)))
        unique, seen = [], set()
        for alias in names:   # `import jina, jina.serve` -> one `import orchestra_nb`
            key = (_dotted(alias.name), alias.asname.name.value if alias.asname else None)
            if key not in seen:
                seen.add(key)
                unique.append(alias.with_changes(comma=cst.MaybeSentinel.DEFAULT))
        return updated.with_changes(names=unique)

    # jina.X, jina.serve.executors.decorators.write
    def leave_Attribute(self, original: cst.Attribute, updated: cst.BaseExpression):
        dotted = _dotted(original)
        if dotted is None:
            return updated
        root = dotted.split('.', 1)[0]
        if root not in self.module_aliases:
            return updated
        parts = dotted.split('.')
        name = parts[-1]
        module = '.'.join(['jina'] + parts[1:-1])
        if name in RENAMES and module in JINA_MODULES:
            target = OURS if root == 'jina' else root   # `import jina as j` became `import orchestra_nb as j`
            return cst.Attribute(value=cst.Name(target), attr=cst.Name(RENAMES[name]))
        parent = self.get_metadata(ParentNodeProvider, original)
        if not (isinstance(parent, cst.Attribute) and parent.value is original):   # the whole chain: report it
            why = NO_COUNTERPART.get(name, f'{OURS} has no {name}')
            self._note(original, f'{dotted} is left as it was: {why}; rewrite it by hand')
        return updated

    def visit_SimpleString(self, node: cst.SimpleString) -> None:
        try:
            value = node.evaluated_value
        except Exception:
            return
        if isinstance(value, str) and value.strip().startswith(HUB_PREFIXES):
            self._note(node, f'{value!r} is a Jina Hub reference, not supported: install the Executor\'s package and '
                             "write uses='package.module:ClassName' (or pass the class)")


def migrate_python(source: str, path: str = '<string>') -> Tuple[str, List[Note]]:
    """Jina Python source -> (ours, notes). Raises ``libcst.ParserSyntaxError`` on a file that does not parse.

    >>> migrate_python('from jina import Flow, Executor\\n')[0]
    'from orchestra_nb import Flow, Executor\\n'
    """
    module = cst.parse_module(source)
    wrapper = MetadataWrapper(module)
    rewriter = _Rewriter(path)
    new = wrapper.visit(rewriter)
    return new.code, sorted(rewriter.notes, key=lambda n: n.line)


def check_yaml(source: str, path: str = '<yaml>') -> List[Note]:
    """A Jina YAML config is kept as it is; this reports its hub references and its refused keys (with lines).

    >>> [n.message[:20] for n in check_yaml('jtype: Flow\\nexecutors:\\n- uses: jinahub://X\\n')]
    ["uses: 'jinahub://X' "]
    """
    from runtime.yamlio import read
    notes: List[Note] = []
    try:
        data, _, _ = read(source)
    except Exception as e:   # a YAML error names its line
        return [Note(path, 0, f'not readable as YAML: {e}')]

    def walk(node, line: int) -> None:
        if isinstance(node, dict):
            lines = getattr(node, 'lines', {})
            for k, v in node.items():
                at = lines.get(k, line)
                if k == 'uses' and isinstance(v, str) and v.strip().startswith(HUB_PREFIXES):
                    notes.append(Note(path, at, f'uses: {v!r} is a Jina Hub reference, not supported: install the '
                                                "Executor's package and write uses: package.module:ClassName"))
                elif isinstance(k, str) and k in JINA_ONLY:
                    notes.append(Note(path, at, f'{k}: refused here: {JINA_ONLY[k]}'))
                walk(v, at)
        elif isinstance(node, list):
            for item in node:
                walk(item, getattr(item, 'line', line))

    walk(data, 1)
    return notes


def iter_files(paths: Sequence[str]) -> Iterator[str]:
    """The Python and YAML files under ``paths`` (files as given; folders walked, hidden ones skipped)."""
    for p in paths:
        if os.path.isfile(p):
            yield p
            continue
        for root, dirs, files in os.walk(p):
            dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith('.'))
            for f in sorted(files):
                if f.endswith(PY_SUFFIXES + YAML_SUFFIXES):
                    yield os.path.join(root, f)


def migrate_file(path: str) -> FileResult:
    """One file -> its result (Python rewritten, YAML checked); nothing is written."""
    with open(path, encoding='utf-8') as f:
        old = f.read()
    if path.endswith(YAML_SUFFIXES):
        return FileResult(path, old, old, check_yaml(old, path))
    new, notes = migrate_python(old, path)
    return FileResult(path, old, new, notes)


def run(paths: Sequence[str], write: bool = False, out=None, err=None) -> int:
    """``orchestra migrate``: print the diff (or write the files with ``write``) and the notes; the exit status."""
    import sys
    out = out or sys.stdout
    err = err or sys.stderr
    status = 0
    for p in paths:
        if not os.path.exists(p):
            print(f'orchestra migrate: {p}: no such file or folder', file=err)
            status = 1
    changed = 0
    for path in iter_files([p for p in paths if os.path.exists(p)]):
        try:
            result = migrate_file(path)
        except cst.ParserSyntaxError as e:
            print(f'{path}: not valid Python, left as it is: {str(e).splitlines()[0]}', file=err)
            status = 1
            continue
        except (OSError, UnicodeDecodeError) as e:
            print(f'{path}: not read: {e}', file=err)
            status = 1
            continue
        if result.changed:
            changed += 1
            if write:
                with open(path, 'w', encoding='utf-8') as f:
                    f.write(result.new)
            else:
                out.write(result.diff())
        for note in result.notes:
            print(note, file=err)
    verb = 'rewrote' if write else 'would rewrite'
    print(f'orchestra migrate: {verb} {changed} file(s)' + ('' if write else '; --write to change them'), file=err)
    return status

"""The per-Deployment secret, and the private files and folders it lives in.

One secret per Deployment (per Flow: one for the whole Flow) authenticates every
``Control`` call (gateway and replicas, gRPC metadata :data:`METADATA_KEY`, compared in
constant time) and, unless ``raft_password`` is given, is the password of pysyncobj's
encryption of RAFT traffic. Where it comes from, first match wins:

1. ``Deployment(secret=...)`` / ``Flow(secret=...)``;
2. the file named by ``$ORCHESTRA_SECRET_FILE`` (what exported Compose/Kubernetes setups
   mount; :func:`load_secret` is what every entry point calls);
3. a stateful Deployment's workspace (``<workspace>/<name>/.raft/secret``, mode 0600), so a
   restart from the same workspace rejoins the same RAFT cluster;
4. a new one (:func:`new_secret`), written to that workspace file for stateful Deployments.

Local child processes get it in their spec (the private stdin pipe), never in argv or in
the environment. See ``docs/security.md``.
"""
from __future__ import annotations

import hmac
import logging
import os
import secrets as _stdlib_secrets
import stat
import warnings
from typing import Any, Optional, Sequence, Tuple

log = logging.getLogger('orchestra.security')

#: the environment variable naming a file that holds the secret (exported setups)
SECRET_FILE_ENV = 'ORCHESTRA_SECRET_FILE'
#: the gRPC metadata key a ``Control`` call carries the secret in
METADATA_KEY = 'orchestra-secret'
#: the file name of a stateful Deployment's stored secret, in its RAFT folder
SECRET_FILE_NAME = 'secret'
#: a secret shorter than this is refused (the generated ones have 43 characters)
MIN_SECRET_CHARS = 16


class SecretError(ValueError):
    """A secret (or the file that should hold it) that cannot be used."""


def new_secret() -> str:
    """A fresh random secret: 32 bytes, URL-safe base64 (43 characters)."""
    return _stdlib_secrets.token_urlsafe(32)


def check_secret(value: Any, what: str = 'secret') -> str:
    """A usable secret (a string of at least 16 visible characters) or ``SecretError``.

    The message says what is wrong without repeating the value.
    """
    if not isinstance(value, str):
        raise SecretError(f'{what} must be a string, got {type(value).__name__}')
    if len(value) < MIN_SECRET_CHARS or not value.isprintable() or value != value.strip():
        raise SecretError(f'{what} must be at least {MIN_SECRET_CHARS} printable characters without '
                          f'leading or trailing spaces (got {len(value)} characters); '
                          'omit it to have one generated')
    return value


def read_secret_file(path: str) -> str:
    """The secret stored in ``path`` (surrounding whitespace ignored); warns when others may read it."""
    try:
        with open(path, encoding='utf-8') as f:
            text = f.read().strip()
        mode = os.stat(path).st_mode
    except OSError as e:
        raise SecretError(f'cannot read the secret file {path}: {e.strerror or e}') from None
    if mode & 0o077 and stat.S_ISREG(mode):
        _warn(f'the secret file {path} has mode {oct(mode & 0o777)}: other users may read it '
              f'(chmod 600 {path})')
    return check_secret(text, f'the secret in {path}')


def load_secret(given: Optional[str] = None) -> Optional[str]:
    """``given``, else the secret in the file named by ``$ORCHESTRA_SECRET_FILE``, else None.

    What every process entry point calls (the replica and gateway child processes, when their
    spec carries none, and ``orchestra executor``).
    """
    if given is not None:
        return check_secret(given)
    path = os.environ.get(SECRET_FILE_ENV)
    if path:
        return read_secret_file(path)
    return None


def write_secret_file(path: str, secret: str) -> None:
    """Store ``secret`` in ``path`` with mode 0600 (atomically; its folder made private)."""
    private_dir(os.path.dirname(path) or '.')
    tmp = f'{path}.{os.getpid()}.tmp'
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, 'w', encoding='utf-8') as f:
            f.write(secret + '\n')
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def resolve_secret(given: Optional[str], stores: Sequence[str] = ()) -> str:
    """The secret a Deployment or Flow uses (see the module docstring for the order).

    ``stores``: the secret files of its stateful Deployments; each is left holding the
    secret in use.
    """
    secret = load_secret(given)
    if secret is None:
        for path in stores:
            if os.path.exists(path):
                secret = read_secret_file(path)
                break
    if secret is None:
        secret = new_secret()
    for path in stores:
        try:
            current = read_secret_file(path) if os.path.exists(path) else None
        except SecretError:
            current = None
        if current is None or not hmac.compare_digest(current.encode(), secret.encode()):
            write_secret_file(path, secret)
    return secret


# ----------------------------------------------------------------------------- on the wire

def matches(presented: Any, secret: Optional[str]) -> bool:
    """Whether ``presented`` is ``secret`` (constant time); never true without a secret."""
    if not secret or not isinstance(presented, (str, bytes)) or not presented:
        return False
    if isinstance(presented, str):
        presented = presented.encode('utf-8', 'surrogateescape')
    return hmac.compare_digest(presented, secret.encode('utf-8'))


def call_metadata(secret: Optional[str]) -> Tuple[Tuple[str, str], ...]:
    """The gRPC metadata that authenticates a ``Control`` call."""
    return ((METADATA_KEY, secret),) if secret else ()


def presented_secret(context: Any) -> Optional[str]:
    """The secret a call carries in its metadata (None: none)."""
    for key, value in context.invocation_metadata() or ():
        if key == METADATA_KEY:
            return value
    return None


# ----------------------------------------------------------------------------- private files

def private_dir(path: str) -> str:
    """Create ``path`` and its missing parents with mode 0700; make ``path`` itself 0700 if we own it."""
    missing = []
    p = os.path.abspath(path)
    while not os.path.isdir(p):
        missing.append(p)
        p = os.path.dirname(p)
    for p in reversed(missing):
        try:
            os.mkdir(p, 0o700)
        except FileExistsError:
            pass
    st = os.stat(path)
    if st.st_uid == os.getuid() and st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def private_tree(root: str) -> None:
    """Folders under ``root`` 0700, files 0600 (what earlier versions left readable)."""
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            _tighten(os.path.join(folder, name), 0o700)
        for name in files:
            _tighten(os.path.join(folder, name), 0o600)
    _tighten(root, 0o700)


def _tighten(path: str, mode: int) -> None:
    try:
        st = os.lstat(path)
        if not stat.S_ISLNK(st.st_mode) and st.st_uid == os.getuid() and st.st_mode & 0o077:
            os.chmod(path, mode)
    except OSError:
        pass


def _warn(message: str) -> None:
    log.warning('%s', message)
    warnings.warn(message, stacklevel=3)

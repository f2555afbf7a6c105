"""Docker for the tests: an engine, the orchestra-nb image of this tree, containers that go away.

    from docker_support import docker_image, container        # in a test module
    image = docker_image()                # builds (or reuses) orchestra-nb:src-<hash>, or skips
    with container(image, 'executor', '--uses', ..., ports=[5000]) as c:
        port = c.ports[5000]              # the host port (127.0.0.1) that docker picked

`docker_image()` skips the calling test (``pytest.skip``) only when no Docker engine can be had;
a failing image build is a failure. The engine and the base image come from `.ci/docker.sh`
(installs docker.io, starts dockerd, debootstraps a Debian base with python3), unless
ORCHESTRA_DOCKER_BASE names a base image to build on (e.g. python:3.11-slim where a registry
is reachable): then only `docker info` has to answer.

The image is tagged by a hash of what the build copies (Dockerfile, .dockerignore,
pyproject.toml, README.md, runtime/, orchestra_nb/) and of the base image's id, so a rerun
on an unchanged tree builds nothing; it is also tagged orchestra-nb:latest. Older
orchestra-nb:src-* images beyond the newest few are removed (vfs storage keeps full copies).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import pytest

ROOT = Path(__file__).resolve().parent.parent
IMAGE = 'orchestra-nb'
LABEL = 'org.orchestra-nb.test'          # on every container started here
SESSION = uuid.uuid4().hex[:8]           # this pytest process's containers carry it
BUILD_TIMEOUT = float(os.environ.get('ORCHESTRA_DOCKER_BUILD_TIMEOUT', 1800))
KEEP_IMAGES = 3                          # orchestra-nb:src-* images kept (newest first)
_COPIED = ('Dockerfile', '.dockerignore', 'pyproject.toml', 'README.md', 'runtime', 'orchestra_nb')
# docker-compose's HTTP calls to the engine give up after 60 s by default; creating several containers
# on vfs storage while the machine is busy takes longer (seen here: every `up -d` call timed out at load 10)
os.environ.setdefault('COMPOSE_HTTP_TIMEOUT', '600')
os.environ.setdefault('DOCKER_CLIENT_TIMEOUT', '600')

_state: Dict[str, Optional[str]] = {}    # 'base' / 'skip' / 'image', once per session


def _docker(*args: str, timeout: float = 120, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(['docker', *args], capture_output=True, text=True, timeout=timeout,
                          check=check, **kw)


def _engine_answers() -> bool:
    if shutil.which('docker') is None:
        return False
    try:
        return _docker('info', timeout=30, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def ensure_engine() -> str:
    """The base image to build on; ``pytest.skip`` when no engine can be had."""
    if 'base' in _state or 'skip' in _state:
        if _state.get('skip'):
            pytest.skip(_state['skip'])
        return _state['base']
    base = os.environ.get('ORCHESTRA_DOCKER_BASE')
    if base:
        if not _engine_answers():
            _state['skip'] = f'no Docker engine answers `docker info` (ORCHESTRA_DOCKER_BASE={base})'
            pytest.skip(_state['skip'])
        _state['base'] = base
        return base
    script = ROOT / '.ci' / 'docker.sh'
    try:
        r = subprocess.run(['bash', str(script)], capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired:
        _state['skip'] = '.ci/docker.sh took more than 30 minutes'
        pytest.skip(_state['skip'])
    last = (r.stdout.strip().splitlines() or [''])[-1]
    if r.returncode != 0 or not last or last.startswith('no-docker:'):
        reason = last[len('no-docker:'):].strip() if last.startswith('no-docker:') else \
            f'.ci/docker.sh exited {r.returncode}: {r.stderr.strip()[-500:]}'
        _state['skip'] = f'no Docker engine: {reason}'
        pytest.skip(_state['skip'])
    _state['base'] = last
    return last


def source_hash(base_id: str = '') -> str:
    """A hash of the files the image build copies (and of the base image's id)."""
    h = hashlib.sha256(base_id.encode())
    for name in _COPIED:
        p = ROOT / name
        files = [p] if p.is_file() else sorted(
            f for f in p.rglob('*') if f.is_file() and '__pycache__' not in f.parts
            and not f.name.endswith('.pyc') and not any(s.endswith('.egg-info') for s in f.parts))
        for f in files:
            h.update(str(f.relative_to(ROOT)).encode() + b'\0' + f.read_bytes() + b'\0')
    return h.hexdigest()[:16]


def _build_env() -> Dict[str, str]:
    env = dict(os.environ)
    has_buildx = _docker('buildx', 'version', timeout=30, check=False).returncode == 0
    if not has_buildx:
        env['DOCKER_BUILDKIT'] = '0'   # the legacy builder; BuildKit would need the buildx plugin
    return env


def _prune_old() -> None:
    r = _docker('images', IMAGE, '--format', '{{.Tag}}', check=False)   # newest first
    tags = [t for t in r.stdout.split() if t.startswith('src-')]
    for tag in tags[KEEP_IMAGES:]:
        _docker('rmi', f'{IMAGE}:{tag}', check=False)   # fails (fine) while a container uses it
    _docker('image', 'prune', '-f', check=False)


def docker_image() -> str:
    """``orchestra-nb:src-<hash>`` built from this tree (reused when it exists)."""
    if _state.get('image'):
        return _state['image']
    base = ensure_engine()
    base_id = _docker('image', 'inspect', '--format', '{{.Id}}', base, check=False).stdout.strip()
    tag = f'{IMAGE}:src-{source_hash(base_id or base)}'
    with open('/tmp/orchestra-docker-build.lock', 'w') as lock:   # one build at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _docker('image', 'inspect', tag, check=False).returncode != 0:
            args = ['build', '--force-rm', '-q', '-t', tag, '--build-arg', f'BASE={base}']
            for var in ('PIP_INDEX_URL', 'PIP_EXTRA_INDEX_URL', 'PIP_TRUSTED_HOST'):
                # only what can work inside the image: http(s) indexes, not file:// ones
                urls = [u for u in os.environ.get(var, '').split() if not u.startswith('file:')]
                if urls:
                    args += ['--build-arg', f'{var}={" ".join(urls)}']
            t0 = time.monotonic()
            r = _docker(*args, '.', cwd=str(ROOT), timeout=BUILD_TIMEOUT, check=False, env=_build_env())
            if r.returncode != 0:
                pytest.fail(f'docker build of {tag} failed ({r.returncode}):\n{r.stdout[-3000:]}\n'
                            f'{r.stderr[-3000:]}', pytrace=False)
            print(f'built {tag} on {base} in {time.monotonic() - t0:.0f} s')
            _prune_old()
        _docker('tag', tag, f'{IMAGE}:latest', check=False)
    _state['image'] = tag
    return tag


def prometheus_image() -> str:
    """The image the export's ``prometheus`` service runs (``runtime.export.compose.PROMETHEUS_IMAGE``):
    Debian's prometheus package on the base image, built once (no registry serves one here)."""
    from runtime.export.compose import PROMETHEUS_IMAGE
    base = ensure_engine()
    with open('/tmp/orchestra-docker-build.lock', 'w') as lock:   # one build at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _docker('image', 'inspect', PROMETHEUS_IMAGE, check=False).returncode != 0:
            dockerfile = (f'FROM {base}\nENV DEBIAN_FRONTEND=noninteractive\n'
                          'RUN apt-get update && apt-get install -y --no-install-recommends prometheus '
                          '&& rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb\n')
            t0 = time.monotonic()
            r = _docker('build', '--force-rm', '-q', '-t', PROMETHEUS_IMAGE, '-', input=dockerfile,
                        timeout=BUILD_TIMEOUT, check=False, env=_build_env())
            if r.returncode != 0:
                pytest.fail(f'docker build of {PROMETHEUS_IMAGE} failed ({r.returncode}):\n{r.stdout[-3000:]}\n'
                            f'{r.stderr[-3000:]}', pytrace=False)
            print(f'built {PROMETHEUS_IMAGE} on {base} in {time.monotonic() - t0:.0f} s')
    return PROMETHEUS_IMAGE


class Container:
    def __init__(self, name: str, ports: Dict[int, int]):
        self.name = name
        self.ports = ports          # container port -> host port on 127.0.0.1

    def logs(self) -> str:
        r = _docker('logs', self.name, check=False)
        return r.stdout + r.stderr


@contextlib.contextmanager
def container(image: str, *args: str, ports: Sequence[int] = (), docker_args: Sequence[str] = (),
              ) -> Iterator[Container]:
    """``docker run -d`` ``image`` ``args``, publishing ``ports`` on 127.0.0.1 (host ports picked by
    docker); always removed on exit (``docker rm -f``)."""
    name = f'orchestra-test-{SESSION}-{uuid.uuid4().hex[:6]}'
    cmd: List[str] = ['run', '-d', '--name', name, '--label', f'{LABEL}={SESSION}']
    for p in ports:
        cmd += ['-p', f'127.0.0.1::{p}']
    try:
        r = _docker(*cmd, *docker_args, image, *args, check=False)
        if r.returncode != 0:
            pytest.fail(f'docker run {image} {" ".join(args)} failed: {r.stderr.strip()}', pytrace=False)
        mapped = {}
        for p in ports:
            out = _docker('port', name, f'{p}/tcp').stdout.split()[0]   # 127.0.0.1:49153
            mapped[p] = int(out.rsplit(':', 1)[1])
        yield Container(name, mapped)
    finally:
        _docker('rm', '-f', '-v', name, check=False)


def remove_session_containers() -> None:
    """Remove whatever container this session started and did not remove (a crash, say)."""
    if shutil.which('docker') is None or not _state.get('image'):
        return
    ids = _docker('ps', '-aq', '--filter', f'label={LABEL}={SESSION}', check=False).stdout.split()
    if ids:
        _docker('rm', '-f', '-v', *ids, check=False)


@pytest.fixture(scope='session')
def orchestra_image() -> Iterator[str]:
    """The orchestra-nb image of this tree (session-wide); skips when there is no Docker engine."""
    try:
        yield docker_image()
    finally:
        remove_session_containers()

"""The orchestra-nb image: its CLI, and an Executor in a container served to a Client on the host.

Skipped only where no Docker engine can be had (see tests/docker_support.py); the first run
on a machine builds the image (minutes), later runs on an unchanged tree reuse it.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

import docker_support
from docker_support import container

# the session fixture, under this module's name for it (a plain import would shadow the arguments)
orchestra_image = docker_support.orchestra_image

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

ECHO = ('executor', '--uses', 'runtime.executors.echo:Echo', '--host', '0.0.0.0', '--port', '5000')


def _ping(port: int, attempts: int = 120) -> subprocess.CompletedProcess:
    """The host's `orchestra ping` (the CLI of this tree), retrying while the container starts."""
    return subprocess.run([sys.executable, '-m', 'runtime.cli', 'ping', f'127.0.0.1:{port}',
                           '--attempts', str(attempts), '--interval', '0.5'],
                          capture_output=True, text=True, timeout=attempts * 5)


def test_image_answers_help(orchestra_image):
    r = subprocess.run(['docker', 'run', '--rm', orchestra_image, '--help'],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert 'usage: orchestra' in r.stdout
    for command in ('deployment', 'flow', 'executor', 'ping'):
        assert command in r.stdout


def test_echo_executor_in_a_container_answers_a_host_client(orchestra_image):
    from docarray import DocList
    from docarray.documents import TextDoc

    from orchestra_nb import Client

    with container(orchestra_image, *ECHO, ports=[5000]) as c:
        port = c.ports[5000]
        r = _ping(port)
        assert r.returncode == 0, f'{r.stdout}{r.stderr}\ncontainer log:\n{c.logs()}'
        assert 'ready' in r.stdout
        client = Client(port=port)
        try:
            docs = DocList[TextDoc]([TextDoc(text=f'hi {i}') for i in range(5)])
            out = client.post('/', docs, request_size=2)
            assert [d.text for d in out] == [f'hi {i}' for i in range(5)]
        finally:
            client.close()
        assert 'ready at 0.0.0.0:5000' in c.logs()

        # SIGTERM stops it cleanly (dumb-init passes it on; the Executor says goodbye)
        stop = subprocess.run(['docker', 'stop', '-t', '30', c.name], capture_output=True, text=True,
                              timeout=120)
        assert stop.returncode == 0, stop.stderr
        code = subprocess.run(['docker', 'inspect', '--format', '{{.State.ExitCode}}', c.name],
                              capture_output=True, text=True, timeout=60).stdout.strip()
        assert code == '0', f'exit code {code}; log:\n{c.logs()}'
        assert 'stopped' in c.logs()


def test_stop_during_start_up_is_prompt(orchestra_image):
    """A SIGTERM before the Executor installed its handler still stops the container at once
    (a Python PID 1 would ignore it, and `docker stop` would wait, then kill)."""
    with container(orchestra_image, *ECHO) as c:
        stop = subprocess.run(['docker', 'stop', '-t', '20', c.name], capture_output=True,
                              text=True, timeout=120)
        assert stop.returncode == 0, stop.stderr
        code = subprocess.run(['docker', 'inspect', '--format', '{{.State.ExitCode}}', c.name],
                              capture_output=True, text=True, timeout=60).stdout.strip()
        assert code in ('0', '143'), f'exit code {code} (137: killed after the timeout)'

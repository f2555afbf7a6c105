"""The `orchestra` CLI in real subprocesses: serve from YAML, use through Client, stop by signal."""
import os
import queue
import re
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from conftest import busy_port, free_port, pid_gone, wait_until
from orchestra_nb import Client, Deployment
from runtime.cli import main, parse_address

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, 'tests')


class Cli:
    """``python -m orchestra_nb.cli ...`` (the console script's entry) with its output read in a thread."""

    def __init__(self, *args: str, cwd: str):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS, REPO, os.environ.get('PYTHONPATH', '')]))
        self.proc = subprocess.Popen([sys.executable, '-m', 'orchestra_nb.cli', *args], cwd=cwd, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: 'queue.Queue[str]' = queue.Queue()
        self.out: list = []
        self.err: list = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.out, True), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.err, False), daemon=True).start()

    def _pump(self, stream, sink, lines):
        for line in stream:
            sink.append(line)
            if lines:
                self.lines.put(line)

    def wait_for(self, pattern: str, timeout: float = 60.0) -> 're.Match':
        """The first stdout line matching ``pattern``; fails with the output so far after ``timeout``."""
        rx = re.compile(pattern)

        def seen():
            for line in self.out:
                m = rx.search(line)
                if m:
                    return m
            if self.proc.poll() is not None:
                pytest.fail(f'the CLI exited ({self.proc.returncode}) before printing {pattern!r}:\n'
                            f'{"".join(self.out)}\n{"".join(self.err)[-3000:]}')
            return None
        return wait_until(seen, timeout=timeout, what=f'CLI output matching {pattern!r}')

    def stop(self, sig=signal.SIGINT, timeout: float = 20.0) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            pytest.fail(f'the CLI did not exit within {timeout} s of {sig!r}:\n{"".join(self.err)[-3000:]}')

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def table_pids(out: list) -> list:
    """PIDs from the replica table the CLI prints (rows: NAME PID ADDRESS STATE)."""
    pids = []
    for line in out:
        parts = line.split()
        if len(parts) == 4 and parts[1].isdigit() and parts[3] == 'ready':
            pids.append(int(parts[1]))
    return pids


def test_deployment_from_yaml_serves_until_sigint_and_leaves_nothing(tmp_path, monkeypatch):
    (tmp_path / 'dep.yaml').write_text(textwrap.dedent('''
        jtype: Deployment
        with:
          name: cli-dep
          uses: topology_executors:Append
          uses_with: {tag: '${{ ENV.CLI_TAG }}'}
          replicas: 1
        '''))
    monkeypatch.setenv('CLI_TAG', 'served')
    cli = Cli('deployment', '--uses', 'dep.yaml', '--replicas', '2', cwd=str(tmp_path))
    try:
        port = int(cli.wait_for(r"Deployment 'cli-dep' ready at 127\.0\.0\.1:(\d+)").group(1))
        cli.wait_for('Ctrl-C')
        pids = table_pids(cli.out)
        assert len(pids) == 3, cli.out                       # 2 replicas (the flag beats the YAML) + gateway
        assert any('cli-dep/rep-1' in line for line in cli.out)
        from topology_executors import Trail
        c = Client(port=port)
        assert c.post(on='/', inputs=Trail(text='x')).text == ['x-served']
        c.close()
        assert main(['ping', f'127.0.0.1:{port}']) == 0
        assert cli.stop(signal.SIGINT) == 0
        assert any('stopped' in line for line in cli.out)
        wait_until(lambda: all(pid_gone(p) for p in pids), timeout=10, what=f'replicas {pids} to exit')
        assert main(['ping', f'127.0.0.1:{port}', '--timeout', '0.5']) == 1
    finally:
        cli.kill()


def test_flow_from_yaml_stops_on_sigterm(tmp_path):
    (tmp_path / 'flow.yaml').write_text(textwrap.dedent('''
        jtype: Flow
        with: {name: cli-flow}
        executors:
          - {name: a, uses: topology_executors:Append, uses_with: {tag: a}}
          - {name: b, uses: topology_executors:Append, uses_with: {tag: b}}
        '''))
    cli = Cli('flow', '--uses', 'flow.yaml', cwd=str(tmp_path))
    try:
        port = int(cli.wait_for(r"Flow 'cli-flow' ready at 127\.0\.0\.1:(\d+)").group(1))
        cli.wait_for('Ctrl-C')
        pids = table_pids(cli.out)
        assert len(pids) == 3
        from topology_executors import Trail
        assert Client(port=port).post(on='/', inputs=Trail(text='x')).text == ['x-a-b']
        assert cli.stop(signal.SIGTERM) == 0
        wait_until(lambda: all(pid_gone(p) for p in pids), timeout=10, what=f'processes {pids} to exit')
    finally:
        cli.kill()


def test_executor_subcommand_serves_one_replica(tmp_path):
    cli = Cli('executor', '--uses', 'topology_executors:Append', '--uses-with', '{"tag": "ext"}',
              '--port', '0', '--name', 'solo', cwd=str(tmp_path))
    try:
        m = cli.wait_for(r"executor 'solo' \(Append\) ready at 127\.0\.0\.1:(\d+) \(pid (\d+)\)")
        port = int(m.group(1))
        assert main(['ping', f'127.0.0.1:{port}']) == 0
        from topology_executors import Trail
        assert Client(port=port).post(on='/', inputs=Trail(text='x')).text == ['x-ext']
        # what external Executors are for: a Deployment in front of it
        with Deployment(name='front', external=True, host=f'127.0.0.1:{port}') as dep:
            assert dep.post('/', Trail(text='y')).text == ['y-ext']
        assert cli.stop(signal.SIGTERM) == 0
    finally:
        cli.kill()


def test_executor_subcommand_reports_a_busy_port(tmp_path):
    with busy_port() as port:
        cli = Cli('executor', '--uses', 'topology_executors:Append', '--port', str(port), cwd=str(tmp_path))
        try:
            assert cli.proc.wait(60) == 1
            assert str(port) in ''.join(cli.err) and 'in use' in ''.join(cli.err)
        finally:
            cli.kill()


def test_ping_exit_codes(capsys):
    with Deployment(uses='topology_executors:Append') as dep:
        assert main(['ping', dep.address]) == 0
        assert main(['ping', f'grpc://127.0.0.1:{dep.port}']) == 0
        assert 'ready: gateway' in capsys.readouterr().out
    free = free_port()
    assert main(['ping', f'127.0.0.1:{free}', '--timeout', '0.5']) == 1
    assert 'not ready' in capsys.readouterr().err
    assert main(['ping', 'no-port-here']) == 2
    assert parse_address('5555') == '127.0.0.1:5555'


@pytest.mark.parametrize('command, flags', [
    ('deployment', ['--uses', '--replicas', '--shards', '--polling', '--uses-with', '--env', '--stateful',
                    '--peer-ports', '--workspace', '--py-modules', '--port', '--host', '--no-reduce']),
    ('flow', ['--uses', '--port', '--host', '--timeout-ready']),
    ('executor', ['--uses', '--port', '--host', '--uses-with', '--py-modules']),
    ('ping', ['--timeout', '--attempts']),
])
def test_help_lists_the_flags(capsys, command, flags):
    with pytest.raises(SystemExit) as info:
        main([command, '--help'])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in flags:
        assert flag in out, flag


def test_every_deployment_flag_is_a_yaml_key():
    from runtime.args import DEPLOYMENT_ARGS, arg_names
    from runtime.cli import SERVE_DEPLOYMENT_ARGS
    assert set(arg_names(SERVE_DEPLOYMENT_ARGS)) | {'uses', 'needs'} == set(arg_names(DEPLOYMENT_ARGS))
    assert all(a.types and a.say for a in DEPLOYMENT_ARGS)   # each is a YAML key with a type


def test_bad_cli_input(tmp_path, capsys):
    (tmp_path / 'f.yaml').write_text('jtype: Flow\nexecutors: []\n')
    assert main(['deployment', '--uses', str(tmp_path / 'f.yaml')]) == 2
    assert 'orchestra flow' in capsys.readouterr().err
    (tmp_path / 'd.yaml').write_text('jtype: Deployment\nreplicass: 2\n')
    assert main(['deployment', '--uses', str(tmp_path / 'd.yaml')]) == 2
    assert "did you mean 'replicas'" in capsys.readouterr().err
    assert main(['deployment', '--uses', 'topology_executors:Append', '--replicas', '0']) == 2
    assert 'replicas=0' in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:   # argparse: an unknown export target
        main(['export', 'k8s', '--path', 'x'])
    assert exc.value.code == 2
    assert "invalid choice: 'k8s'" in capsys.readouterr().err


def test_deployment_with_an_http_door_from_the_command_line(tmp_path):
    import httpx
    cli = Cli('deployment', '--uses', 'topology_executors:Append', '--protocol', 'grpc', 'http', cwd=str(tmp_path))
    try:
        m = cli.wait_for(r"Deployment 'executor' ready at 127\.0\.0\.1:(\d+), http://127\.0\.0\.1:(\d+)")
        r = httpx.post(f'http://127.0.0.1:{m.group(2)}/anything', json={'data': [{'text': 'x'}]}, timeout=30)
        assert r.status_code == 200 and r.json()['data'][0]['text'].startswith('x'), r.text
        assert main(['ping', f'127.0.0.1:{m.group(1)}']) == 0
        assert cli.stop(signal.SIGINT) == 0
    finally:
        cli.kill()

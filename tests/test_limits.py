"""Up-front refusals: too many processes, a host that is not one, a binary YAML file, a bind that fails."""
import asyncio

import grpc
import pytest

from conftest import busy_port
from runtime.deployment import Deployment
from runtime.flow import Flow
from runtime.limits import FLOOR, MAX_PROCESSES_ENV, check_processes, machine_default, max_processes
from runtime.server import PortInUseError, bind
from runtime.yamlio import ConfigError


# ----------------------------------------------------------------------------- process limits

def test_replicas_10000_is_refused_naming_the_limit_and_how_to_raise_it(monkeypatch):
    monkeypatch.delenv(MAX_PROCESSES_ENV, raising=False)
    limit, _ = max_processes()
    with pytest.raises(ValueError) as info:
        Deployment(replicas=10000)
    msg = str(info.value)
    assert 'replicas=10000' in msg and f'limit {limit}' in msg and MAX_PROCESSES_ENV in msg
    with pytest.raises(ValueError, match=r'shards=10000 '):
        Deployment(shards=10000)
    with pytest.raises(ValueError, match=rf'replicas=\d+ x shards=\d+ = \d+ replica processes.*limit {limit}'):
        Deployment(replicas=limit, shards=2)


def test_the_default_limit_has_a_floor_and_small_deployments_pass(monkeypatch):
    monkeypatch.delenv(MAX_PROCESSES_ENV, raising=False)
    limit, how = machine_default()
    assert limit >= FLOOR and 'CPUs' in how
    assert Deployment(replicas=5, shards=2).replicas == 5
    assert check_processes(5, 3, 'x') == 15


def test_the_limit_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(MAX_PROCESSES_ENV, '4')
    with pytest.raises(ValueError, match=r'replicas=5 .*limit 4, set by ORCHESTRA_MAX_PROCESSES'):
        Deployment(replicas=5)
    assert Deployment(replicas=2, shards=2).shards == 2
    monkeypatch.setenv(MAX_PROCESSES_ENV, '100000')
    assert Deployment(replicas=10000).replicas == 10000   # raised on purpose: accepted (nothing started)
    for bad in ('many', '0', '-3'):
        monkeypatch.setenv(MAX_PROCESSES_ENV, bad)
        with pytest.raises(ValueError, match=rf"{MAX_PROCESSES_ENV}='{bad}': must be a positive integer"):
            Deployment()


def test_a_flow_counts_the_processes_of_all_its_executors(monkeypatch):
    monkeypatch.setenv(MAX_PROCESSES_ENV, '6')
    f = Flow().add(name='a', replicas=3).add(name='b', replicas=2)
    with pytest.raises(ValueError, match=r"Flow.add\(name='c'\): 7 replica processes in the Flow \(5 before"):
        f.add(name='c', replicas=2)
    f.add(name='c', replicas=1)
    with pytest.raises(ValueError, match=r'replica processes in the Flow'):
        f.scale('a', 4)   # 4 + 2 + 1 > 6, refused before anything runs
    with pytest.raises(ValueError, match=r'replicas=7 .*limit 6'):
        Flow.load_config('jtype: Flow\nexecutors:\n  - name: a\n    replicas: 7\n')


def test_scaling_a_deployment_is_limited_too(monkeypatch):
    monkeypatch.setenv(MAX_PROCESSES_ENV, '4')
    with pytest.raises(ValueError, match=r"Deployment 'executor'.scale: replicas=5"):
        Deployment(replicas=2).scale(5)


# ----------------------------------------------------------------------------- hosts and binds

@pytest.mark.parametrize('host, message', [
    ('999.1.1.1', "host='999.1.1.1' is not a valid IPv4 address"),
    ('1.2.3', "host='1.2.3' is not a valid IPv4 address"),
    ('no-such-host.invalid', "host='no-such-host.invalid': the name cannot be resolved"),
    ('', "host='': must be an IP address"),
    (':::zz', "host=':::zz' is not a valid IPv6 address"),
])
def test_a_bad_host_is_refused_up_front(host, message):
    with pytest.raises(ValueError) as info:
        Deployment(host=host)
    assert message in str(info.value) and 'already in use' not in str(info.value)
    with pytest.raises(ValueError, match=message.replace('(', r'\(').replace('.', r'\.')):
        Flow(host=host)


@pytest.mark.parametrize('host', ['127.0.0.1', 'localhost', '0.0.0.0', '::1'])
def test_good_hosts_pass(host):
    assert Deployment(host=host).host == host


def try_bind(host, port):
    """bind() on a fresh grpc.aio server, inside an event loop of its own."""
    async def run():
        server = grpc.aio.server()
        try:
            return bind(server, host, port)
        finally:
            await server.stop(None)
    return asyncio.run(run())


def test_a_bind_failure_says_what_it_is():
    with busy_port() as port:
        with pytest.raises(PortInUseError, match=rf'127.0.0.1:{port}: the port is already in use'):
            try_bind('127.0.0.1', port)
    # a valid address that is not this machine's: not "in use"
    with pytest.raises(OSError) as info:
        try_bind('192.0.2.1', 0)   # TEST-NET-1, never assigned
    assert not isinstance(info.value, PortInUseError)
    assert "192.0.2.1:0: the address is not one of this machine's" in str(info.value)


def test_a_deployment_on_a_foreign_address_fails_saying_so():
    dep = Deployment(host='192.0.2.1', timeout_ready=30)
    with pytest.raises(Exception) as info:
        dep.start()
    dep.close()
    assert "not one of this machine's" in str(info.value), str(info.value)


# ----------------------------------------------------------------------------- YAML files

def test_a_binary_yaml_file_is_named_in_the_error(tmp_path):
    path = tmp_path / 'picture.yml'
    path.write_bytes(b'\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR')
    for load in (Deployment.load_config, Flow.load_config):
        with pytest.raises(ConfigError, match=rf'{path}: not a YAML text file: byte .* is not UTF-8'):
            load(str(path))
    ctrl = tmp_path / 'ctrl.yml'
    ctrl.write_bytes(b'jtype: Deployment\nwith:\n  name: "a\x07b"\n')
    with pytest.raises(ConfigError, match=rf"{ctrl}: not a YAML text file: character '\\x07'"):
        Deployment.load_config(str(ctrl))

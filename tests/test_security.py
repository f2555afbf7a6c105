"""Security: authenticated control, encrypted RAFT, TLS on the gateway, private files (docs/security.md)."""
from __future__ import annotations

import datetime
import ipaddress
import os
import pickle
import socket
import struct
import warnings
import zlib

import grpc
import pytest
from docarray import DocList
from docarray.documents import TextDoc

from runtime import protocol
from runtime.client import Client
from runtime.deployment import Deployment
from runtime.exposure import ExposedWarning, is_loopback
from runtime.flow import Flow
from runtime.secrets import (METADATA_KEY, SECRET_FILE_ENV, SecretError, check_secret, load_secret,
                             resolve_secret)
from sample_executors import KV, WhoAmI


def _control(port: int, header: dict, secret=None) -> bytes:
    """One raw ``Control`` call to 127.0.0.1:port (``secret``: put in the metadata as a client would)."""
    with grpc.insecure_channel(f'127.0.0.1:{port}') as ch:
        md = ((METADATA_KEY, secret),) if secret is not None else None
        return ch.unary_unary(protocol.CONTROL)(protocol.pack(header), timeout=10, metadata=md)


def _denied(port: int, header: dict, secret=None) -> str:
    with pytest.raises(grpc.RpcError) as e:
        _control(port, header, secret)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED, e.value
    return e.value.details()


def _replicas_used(dep, n: int = 8) -> set:
    docs = dep.post('/who', DocList[TextDoc]([TextDoc() for _ in range(n)]), request_size=1)
    return {d.text.split(':')[0] for d in docs}


# ----------------------------------------------------------------------------- 1. control

def test_forged_control_is_denied_and_routing_is_unchanged():
    with Deployment(name='sec', uses=WhoAmI, replicas=2) as dep:
        assert _replicas_used(dep) == {'0', '1'}
        attacker = socket.socket()   # where a forged set_replicas would send clients
        attacker.bind(('127.0.0.1', 0))
        attacker_port = attacker.getsockname()[1]
        forged = {'op': 'set_replicas', 'node': 'sec', 'shard': 0,
                  'addresses': [f'127.0.0.1:{attacker_port}']}
        try:
            # the public port serves no Control at all, secret or not
            assert 'not served on the public port' in _denied(dep.port, forged)
            assert 'not served on the public port' in _denied(dep.port, forged, dep._secret)
            # the gateway's loopback port: only with the secret
            local = dep.gateway.info['local_port']
            assert 'secret' in _denied(local, forged)
            assert 'secret' in _denied(local, forged, 'x' * 43)
            # a replica's Control too (RAFT peers' channel)
            replica_port = dep.stages[0].replicas[0].port
            _denied(replica_port, {'op': 'status'})
            _denied(replica_port, {'op': 'status'}, 'wrong-secret-wrong-secret')
        finally:
            attacker.close()
        # routing is unchanged: requests still reach both real replicas
        assert _replicas_used(dep) == {'0', '1'}
        c = Client(port=dep.port)
        gw = c.info()
        c.close()
        addrs = gw['nodes']['sec']['shards'][0]
        assert 'local_port' not in gw and str(attacker_port) not in str(addrs)
        # the owner's own control call (with the secret) still works
        h, _ = protocol.unpack(_control(local, {'op': 'set_replicas', 'node': 'sec', 'shard': 0,
                                                'addresses': [r.address for r in dep.stages[0].replicas]},
                                        dep._secret))
        assert h['ok'] is True
        # the secret travels in the spec (a private pipe), never in argv or the environment
        for r in dep.stages[0].replicas + [dep.gateway]:
            proc = getattr(r, 'process', r)
            for what in ('cmdline', 'environ'):
                with open(f'/proc/{proc.pid}/{what}', 'rb') as f:
                    assert dep._secret.encode() not in f.read(), what


# ----------------------------------------------------------------------------- 2 + 4. RAFT, files

class _CreatesFile:
    """Unpickling this creates the file ``path``."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, 'w'))


def _send_pysyncobj_message(address: str, message) -> None:
    """One message framed as pysyncobj frames them (plaintext), then wait for the peer to hang up."""
    host, port = address.rsplit(':', 1)
    data = zlib.compress(pickle.dumps(message), 3)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(struct.pack('i', len(data)) + data)
        s.settimeout(5)
        try:
            while s.recv(4096):   # pysyncobj drops (disconnects) a message it cannot decrypt
                pass
        except (TimeoutError, ConnectionResetError):
            pass


def test_raft_refuses_unauthenticated_pickles_and_files_are_private(tmp_path):
    ws, logs = str(tmp_path / 'ws'), str(tmp_path / 'logs')
    canary = tmp_path / 'pwned'
    with pytest.warns(ExposedWarning) as warned:
        dep = Deployment(name='kv', uses=KV, replicas=3, stateful=True, workspace=ws, log_dir=logs,
                         host='0.0.0.0')
        dep.start()
    try:
        text = ' '.join(str(w.message) for w in warned)
        raft = [f'0.0.0.0:{p}' for p in dep.peer_ports_used[0]]
        assert all(a in text for a in raft) and f'0.0.0.0:{dep.port}' in text, text
        assert 'RAFT ports' in text and 'gateway port' in text
        st = dep.status()['replicas']
        assert all(r['raft']['encrypted'] for r in st)
        for p in dep.peer_ports_used[0]:   # every RAFT port: not unpickled, connection dropped
            _send_pysyncobj_message(f'127.0.0.1:{p}', _CreatesFile(str(canary)))
            _send_pysyncobj_message(f'127.0.0.1:{p}', ['status', _CreatesFile(str(canary))])
        assert not canary.exists()
        dep.post('/index', DocList[TextDoc]([TextDoc(id='a', text='still writes')]))
        assert dep.post('/get', DocList[TextDoc]([TextDoc(id='a')]))[0].text == 'still writes'
        secret_file = os.path.join(ws, 'kv', '.raft', 'secret')
        with open(secret_file) as f:
            stored = f.read().strip()
        assert stored == dep._secret
    finally:
        dep.close()

    # 4. files: workspace folders 0700 and files 0600; logs likewise
    def modes(root):
        for folder, dirs, files in os.walk(root):
            for d in dirs:
                yield os.path.join(folder, d), os.stat(os.path.join(folder, d)).st_mode & 0o777, 0o700
            for f in files:
                yield os.path.join(folder, f), os.stat(os.path.join(folder, f)).st_mode & 0o777, 0o600
    for root in (ws, logs):
        assert os.stat(root).st_mode & 0o777 == 0o700, root
        seen = list(modes(root))
        assert len(seen) >= 5
        bad = [(p, oct(m)) for p, m, want in seen if m & 0o077]
        assert not bad, bad
    assert any(p.endswith('journal.bin') for p, _, _ in modes(ws))
    assert any(p.endswith('.log') for p, _, _ in modes(logs))

    # a restart from the same workspace uses the same secret (and rejoins its cluster)
    with Deployment(name='kv', uses=KV, replicas=3, stateful=True, workspace=ws, log_dir=logs) as again:
        assert again._secret == stored
        assert again.post('/get', DocList[TextDoc]([TextDoc(id='a')]))[0].text == 'still writes'


# ----------------------------------------------------------------------------- 3. TLS

def _self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, '127.0.0.1')])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName('localhost'),
                                                        x509.IPAddress(ipaddress.ip_address('127.0.0.1'))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / 'cert.pem', tmp_path / 'key.pem'
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    return str(cert_path), str(key_path)


def test_tls_on_the_gateway(tmp_path):
    cert, key = _self_signed(tmp_path)
    docs = DocList[TextDoc]([TextDoc(text='hi')])
    with Deployment(name='tls', uses=WhoAmI, replicas=1, tls_cert=cert, tls_key=key) as dep:
        assert dep.post('/who', docs)[0].text.startswith('0:')                  # the owner's client
        assert dep.status()['gateway']['state'] == 'ready'
        for host in ('127.0.0.1', 'localhost'):
            c = Client(host, dep.port, tls=True, ca=cert)
            assert c.post('/who', docs)[0].text.startswith('0:')
            c.close()
        c = Client(port=dep.port, tls=True, ca=open(cert, 'rb').read())
        assert c.is_ready()
        c.close()
        plain = Client(port=dep.port, timeout=5)   # plaintext to a TLS port: refused
        with pytest.raises(ConnectionError):
            plain.post('/who', docs)
        plain.close()
        untrusting = Client(port=dep.port, tls=True, timeout=5)   # system roots: the self-signed cert fails
        with pytest.raises(ConnectionError):
            untrusting.post('/who', docs)
        untrusting.close()
    flow = Flow(name='tlsflow', tls_cert=cert, tls_key=key).add(name='who', uses=WhoAmI)
    with flow:
        c = Client(port=flow.port, tls=True, ca=cert)
        assert c.post('/who', docs)[0].text.startswith('0:')
        c.close()
        assert flow.post('/who', docs)[0].text.startswith('0:')


def test_tls_arguments_are_checked(tmp_path):
    cert, key = _self_signed(tmp_path)
    with pytest.raises(ValueError, match='tls_cert is set but tls_key is not'):
        Deployment(tls_cert=cert)
    with pytest.raises(ValueError, match='tls_key=.*cert.pem: not a PEM file holding a private key'):
        Deployment(tls_cert=cert, tls_key=cert)
    with pytest.raises(ValueError, match='tls_cert=.*nope.pem: cannot read it'):
        Deployment(tls_cert=str(tmp_path / 'nope.pem'), tls_key=key)
    with pytest.raises(ValueError, match=r'Flow.add\(tls_cert=...\).*pass tls_cert to Flow'):
        Flow().add(uses=WhoAmI, tls_cert=cert, tls_key=key)
    with pytest.raises(ValueError, match='ca=.*holds no PEM certificate'):
        Client(port=1, tls=True, ca=key)


# ----------------------------------------------------------------------------- the secret

def test_where_the_secret_comes_from(tmp_path, monkeypatch):
    monkeypatch.delenv(SECRET_FILE_ENV, raising=False)
    store = str(tmp_path / 'a' / 'secret')
    first = resolve_secret(None, [store])
    assert len(first) >= 43 and resolve_secret(None, [store]) == first          # kept in the workspace
    assert os.stat(store).st_mode & 0o777 == 0o600
    assert os.stat(os.path.dirname(store)).st_mode & 0o777 == 0o700
    assert resolve_secret(None, []) != resolve_secret(None, [])                  # fresh when not stateful
    given = 'g' * 20
    assert resolve_secret(given, [store]) == given and open(store).read().strip() == given   # rotation
    f = tmp_path / 'mounted'
    f.write_text('m' * 30 + '\n')
    f.chmod(0o600)
    monkeypatch.setenv(SECRET_FILE_ENV, str(f))
    assert load_secret() == 'm' * 30 and resolve_secret(None, [store]) == 'm' * 30
    f.chmod(0o644)
    with pytest.warns(UserWarning, match='other users may read it'):
        load_secret()
    monkeypatch.setenv(SECRET_FILE_ENV, str(tmp_path / 'missing'))
    with pytest.raises(SecretError, match='cannot read the secret file .*missing'):
        load_secret()
    with pytest.raises(SecretError, match='at least 16') as e:
        check_secret('short')
    assert 'short' not in str(e.value)   # the message does not repeat the secret
    with pytest.raises(ValueError, match='secret must be at least 16'):
        Deployment(secret='short')
    with pytest.raises(ValueError, match=r'Flow.add\(secret=...\)'):
        Flow().add(secret='s' * 20)


def test_a_saved_config_never_holds_the_secret(tmp_path):
    dep = Deployment(name='keep', secret='do-not-write-me-anywhere')
    path = tmp_path / 'dep.yml'
    dep.save_config(str(path))
    assert 'do-not-write-me-anywhere' not in path.read_text()


def test_loopback_hosts():
    assert all(is_loopback(h) for h in ('127.0.0.1', '127.0.0.2', '::1', 'localhost', None))
    assert not any(is_loopback(h) for h in ('0.0.0.0', '', '::', '10.0.0.1', 'example.com'))


def test_no_warning_on_loopback():
    with warnings.catch_warnings():
        warnings.simplefilter('error', ExposedWarning)
        with Deployment(name='quiet', uses=WhoAmI) as dep:
            assert dep.post('/who', DocList[TextDoc]([TextDoc()]))

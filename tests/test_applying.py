"""The applying mark (runtime/applying.py): a replica marks the RAFT entry it applies; its owner reads
the mark once the replica has died -- including a replica killed in the middle of the call."""
import subprocess
import sys

from runtime.applying import SIZE, ApplyingMark, read_applying


def test_set_clear_and_read(tmp_path):
    path = str(tmp_path / 'applying')
    mark = ApplyingMark(path)
    assert read_applying(path) is None                        # nothing applied yet
    mark.set(12, '/index')
    assert read_applying(path) == {'index': 12, 'endpoint': '/index'}
    mark.set(13, 'é' * SIZE)                                   # a long name is cut to fit
    got = read_applying(path)
    assert got['index'] == 13 and got['endpoint'].startswith('é') and len(got['endpoint'].encode()) <= SIZE
    mark.clear()
    assert read_applying(path) is None
    mark.close()
    mark.set(14, '/x')                                         # closed: a no-op, not an error
    assert read_applying(path) is None
    assert read_applying(str(tmp_path / 'missing')) is None and read_applying(None) is None


def test_the_owner_reads_the_entry_a_killed_replica_was_applying(tmp_path):
    path = str(tmp_path / 'applying')
    code = ('import os, sys; from runtime.applying import ApplyingMark; '
            f'm = ApplyingMark({path!r}); m.set(7, "/ok"); m.clear(); m.set(41, "/index"); os._exit(1)')
    done = subprocess.run([sys.executable, '-c', code], timeout=60)
    assert done.returncode == 1
    assert read_applying(path) == {'index': 41, 'endpoint': '/index'}

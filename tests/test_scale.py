"""Deployment.scale(n): replicas come and go under load without a request failing."""
from __future__ import annotations

import collections
import threading

import pytest
from docarray import DocList
from docarray.documents import TextDoc

from conftest import pid_gone, wait_until
from orchestra_nb import Deployment


def test_scale_up_and_down_under_load_drops_no_request():
    with Deployment(name='sc', uses='sample_executors:WhoAmI', replicas=2,
                    uses_with={'slow_replicas': list(range(8)), 'delay': 0.02}) as dep:
        served = collections.Counter()
        sent, errors = [0], []
        stop = threading.Event()

        def load():
            while not stop.is_set():
                try:
                    out = dep.post('/x', DocList[TextDoc]([TextDoc() for _ in range(8)]), request_size=1, prefetch=8)
                    for text in out.text:
                        served[text.split(':')[0]] += 1
                    sent[0] += 8
                except Exception as e:  # noqa: BLE001 - every failure is a finding
                    errors.append(e)
        threads = [threading.Thread(target=load) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            wait_until(lambda: sent[0] >= 32, 30, 'traffic before scaling')
            dep.scale(4)
            assert [r['state'] for r in dep.status()['replicas']] == ['ready'] * 4
            before = sent[0]
            wait_until(lambda: served['2'] > 0 and served['3'] > 0, 30, 'the new replicas to get requests')
            assert sent[0] > before
            removed = [r.process for r in dep.stages[0].replicas[1:]]
            dep.scale(1)
            assert [r['name'] for r in dep.status()['replicas']] == ['sc/rep-0']
            wait_until(lambda: all(pid_gone(p.pid) for p in removed), 10, 'the removed replicas to exit')
            mark = served['0']
            wait_until(lambda: served['0'] > mark + 16, 30, 'traffic after scaling down')
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert not errors, errors[:3]
        assert sum(served.values()) == sent[0]
        assert dep.replicas == 1


def test_scale_refuses_bad_counts_and_a_stopped_deployment():
    dep = Deployment(name='sc2', uses='sample_executors:Upper')
    with pytest.raises(RuntimeError, match='not started'):
        dep.scale(2)
    with pytest.raises(ValueError, match='replicas=0'):
        dep.scale(0)


def test_flow_scales_one_executor_and_keeps_the_chain():
    from orchestra_nb import Flow
    flow = (Flow(name='fsc').add(name='upper', uses='sample_executors:Upper')
            .add(name='who', uses='sample_executors:WhoAmI'))
    with flow:
        flow.scale('who', 3)
        assert flow['who'].replicas == 3
        names = [r['name'] for r in flow.status()['replicas']]
        assert names == ['upper/rep-0', 'who/rep-0', 'who/rep-1', 'who/rep-2']
        out = flow.post('/upper', DocList[TextDoc]([TextDoc(text='a') for _ in range(30)]), request_size=1)
        assert {t.split(':')[0] for t in out.text} == {'0', '1', '2'}   # every who replica served
        flow.scale('who', 1)
        assert [r['name'] for r in flow.status()['replicas']] == ['upper/rep-0', 'who/rep-0']
        with pytest.raises(KeyError, match="'nobody' is not an Executor"):
            flow.scale('nobody', 2)

"""Deployment: replica processes behind a gateway, idle-first routing, errors, no orphans."""
import collections
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from docarray import DocList
from docarray.documents import TextDoc

from conftest import busy_port, pid_gone, wait_until
from orchestra_nb import Client, Deployment, Executor, RemoteError, requests


def test_issue_snippet_three_replicas(tmp_path):
    from sample_executors import Upper
    with Deployment(name='up', uses=Upper, replicas=3) as dep:
        out = dep.post('/upper', DocList[TextDoc]([TextDoc(text='hi')] * 10), request_size=2)
        assert out.text == ['HI'] * 10
        one = Client(port=dep.port).post(on='/upper', inputs=TextDoc(text='x'))
        assert one.text == ['X']
        st = dep.status()
        assert [r['name'] for r in st['replicas']] == ['up/rep-0', 'up/rep-1', 'up/rep-2']
        assert all(r['state'] == 'ready' for r in st['replicas'])
        assert sum(r['requests'].get('/upper', 0) for r in st['replicas']) == 6


def test_uses_as_module_string():
    with Deployment(uses='sample_executors:Upper') as dep:
        assert dep.post('/upper', TextDoc(text='abc')).text == ['ABC']


def test_class_defined_in_a_function_travels_by_value():
    prefix = 'local'

    class Local(Executor):
        @requests(on='/tag')
        def tag(self, docs, **kwargs):
            for d in docs:
                d.text = f'{prefix}-{self.runtime_args.replica_id}'

    with Deployment(uses=Local, replicas=2) as dep:
        out = dep.post('/tag', DocList[TextDoc]([TextDoc() for _ in range(4)]), request_size=1)
        assert set(out.text) <= {'local-0', 'local-1'}


def test_uses_with_and_parameters():
    class Param(Executor):
        def __init__(self, greeting='hello', **kwargs):
            super().__init__(**kwargs)
            self.greeting = greeting

        @requests(on='/greet')
        def greet(self, docs, parameters, **kwargs):
            for d in docs:
                d.text = f"{self.greeting} {parameters.get('who', '?')}"

    with Deployment(uses=Param, uses_with={'greeting': 'hi'}) as dep:
        assert dep.post('/greet', TextDoc(), parameters={'who': 'you'}).text == ['hi you']


def test_sequential_requests_spread_evenly_over_idle_replicas():
    with Deployment(uses='sample_executors:WhoAmI', replicas=3) as dep:
        served = collections.Counter()
        for _ in range(30):
            served[dep.post('/x', TextDoc()).text[0].split(':')[0]] += 1
        assert served == {'0': 10, '1': 10, '2': 10}


def test_slow_replica_gets_fewer_requests_under_concurrent_load():
    with Deployment(uses='sample_executors:WhoAmI', uses_with={'slow_replicas': [0], 'delay': 0.5},
                    replicas=3) as dep:
        docs = DocList[TextDoc]([TextDoc() for _ in range(90)])
        out = dep.post('/x', docs, request_size=1, prefetch=64)
        served = collections.Counter(t.split(':')[0] for t in out.text)
        assert sum(served.values()) == 90
        assert served['0'] < served['1'] and served['0'] < served['2'], served
        assert served['0'] < 90 / 3, served


def test_results_keep_input_order_with_many_in_flight():
    with Deployment(uses='sample_executors:Upper', replicas=2) as dep:
        docs = DocList[TextDoc]([TextDoc(text=f'd{i}') for i in range(500)])
        out = dep.post('/upper', docs, request_size=7, prefetch=32)
        assert out.text == [f'D{i}' for i in range(500)]
        assert [d.id for d in out] == [d.id for d in docs]


def test_generator_and_list_inputs():
    with Deployment(uses='sample_executors:Upper') as dep:
        gen = (TextDoc(text=str(i)) for i in range(25))
        assert len(dep.post('/upper', gen, request_size=10)) == 25
        assert dep.post('/upper', [TextDoc(text='a'), TextDoc(text='b')]).text == ['A', 'B']


def test_executor_exception_reaches_client_and_replica_keeps_serving():
    with Deployment(uses='sample_executors:Failing') as dep:
        with pytest.raises(RemoteError) as info:
            dep.post('/boom', TextDoc())
        err = info.value
        assert 'the executor exploded on purpose' in str(err)
        assert err.type == 'ValueError'
        tb = err.remote_traceback
        assert 'Traceback' in tb and 'def boom' in tb or 'boom' in tb
        assert dep.post('/ok', TextDoc(text='still here')).text == ['still here']


def test_unknown_endpoint_names_it_and_the_known_ones():
    with Deployment(uses='sample_executors:Failing') as dep:
        with pytest.raises(RemoteError, match=r"'/nope'.*'/boom', '/ok'"):
            dep.post('/nope', TextDoc())


def test_busy_port_is_named():
    with busy_port() as port:
        with pytest.raises(Exception, match=str(port)) as info:
            Deployment(uses='sample_executors:Upper', port=port).start()
        assert 'in use' in str(info.value)


def test_init_that_raises_fails_fast_naming_replica_and_log():
    t0 = time.monotonic()
    with pytest.raises(Exception) as info:
        Deployment(name='broken', uses='sample_executors:BrokenInit', replicas=2).start()
    msg = str(info.value)
    assert 'broken/rep-' in msg and 'init failed on purpose' in msg
    assert time.monotonic() - t0 < 20


def test_unimportable_class_fails_fast():
    with pytest.raises(Exception, match='no_such_module'):
        Deployment(uses='no_such_module:Thing', timeout_ready=30).start()


@pytest.mark.parametrize('kwargs, match', [
    ({'replicas': 0}, 'replicas=0'),
    ({'replicas': '3'}, "replicas='3'"),
    ({'shards': -1}, 'shards=-1'),
    ({'port': 70000}, 'port=70000'),
    ({'polling': 'SOME'}, "'SOME'"),
    ({'replicass': 2}, "did you mean 'replicas'"),
    ({'uses_with': [1]}, 'uses_with'),
])
def test_bad_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Deployment(uses='sample_executors:Upper', **kwargs)


def test_hub_reference_gets_a_clear_error():
    with pytest.raises(Exception, match='hub references are not supported'):
        Deployment(uses='jinaai://jina-ai/CLIPEncoder', timeout_ready=20).start()


def test_close_leaves_no_process():
    dep = Deployment(uses='sample_executors:Upper', replicas=3).start()
    pids = [r['pid'] for r in dep.status()['replicas']] + [dep.gateway.pid]
    dep.close()
    assert all(pid_gone(p) for p in pids)
    assert dep.status()['replicas'][0]['state'] == 'stopped'


def test_logs_are_prefixed_per_replica():
    class Talk(Executor):
        @requests
        def talk(self, docs, **kwargs):
            print('hello from the executor')
            self.logger.info('logged a line')

    with Deployment(name='talk', uses=Talk) as dep:
        dep.post('/', TextDoc())
        pid = dep.status()['replicas'][0]['pid']
        text = wait_until(lambda: 'logged a line' in dep.logs() and dep.logs(), what='log lines')
        assert f'talk/rep-0@{pid} hello from the executor' in text


def test_crashed_replica_is_retried_elsewhere_and_restarted():
    with Deployment(uses='sample_executors:WhoAmI', replicas=2) as dep:
        victim = dep.stages[0].replicas[0].process
        old_pid = victim.pid
        victim.kill()
        out = dep.post('/x', DocList[TextDoc]([TextDoc() for _ in range(20)]), request_size=1)
        assert len(out) == 20
        wait_until(lambda: dep.stages[0].replicas[0].process.pid != old_pid
                   and dep.status()['replicas'][0]['state'] == 'ready', timeout=20,
                   what='the supervisor to restart rep-0')


def test_children_die_when_owner_is_killed(tmp_path):
    script = tmp_path / 'owner.py'
    script.write_text(textwrap.dedent(f'''
        import sys, time
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from orchestra_nb import Deployment
        dep = Deployment(uses='sample_executors:Upper', replicas=2).start()
        print(' '.join(str(r['pid']) for r in dep.status()['replicas']), dep.gateway.pid, flush=True)
        time.sleep(600)
    '''))
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                             cwd=os.path.dirname(os.path.dirname(__file__)))
    try:
        pids = [int(p) for p in owner.stdout.readline().split()]
        assert len(pids) == 3
        owner.send_signal(signal.SIGKILL)
        owner.wait(5)
        wait_until(lambda: all(pid_gone(p) for p in pids), timeout=5, what=f'children {pids} to exit')
    finally:
        owner.kill()
        owner.wait()


def test_an_owner_exiting_with_a_deployment_open_stops_it_cleanly(tmp_path):
    """At exit the leftovers are stopped without a thread pool (concurrent.futures refuses new
    work then), also after a restart left a dead process's record behind."""
    script = tmp_path / 'owner.py'
    script.write_text(textwrap.dedent(f'''
        import sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from conftest import wait_until
        from orchestra_nb import Deployment
        dep = Deployment(uses='sample_executors:Upper', replicas=2).start()
        old = dep.stages[0].replicas[0].process
        old.kill()
        wait_until(lambda: dep.stages[0].replicas[0].process is not old
                   and dep.status()['replicas'][0]['state'] == 'ready', 30, 'the restart')
        print(' '.join(str(r['pid']) for r in dep.status()['replicas']), dep.gateway.pid, flush=True)
    '''))
    owner = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                           cwd=os.path.dirname(os.path.dirname(__file__)))
    assert owner.returncode == 0 and 'Traceback' not in owner.stderr, owner.stderr[-3000:]
    pids = [int(p) for p in owner.stdout.split()]
    assert len(pids) == 3
    wait_until(lambda: all(pid_gone(p) for p in pids), timeout=5, what=f'children {pids} to exit')


def test_async_post_from_a_running_loop():
    import asyncio

    async def main(dep):
        sync_inside_loop = dep.post('/upper', TextDoc(text='sync'))   # a notebook calls post like this
        awaited = await dep.apost('/upper', TextDoc(text='async'))
        return sync_inside_loop.text + awaited.text

    with Deployment(uses='sample_executors:Upper') as dep:
        assert asyncio.run(main(dep)) == ['SYNC', 'ASYNC']


def test_local_class_with_doclist_type_hints_travels_by_value():
    class Hinted(Executor):
        @requests(on='/x')
        def x(self, docs: DocList[TextDoc], **kwargs) -> DocList[TextDoc]:
            for d in docs:
                d.text = 'hinted'

    with Deployment(uses=Hinted) as dep:
        assert dep.post('/x', TextDoc()).text == ['hinted']

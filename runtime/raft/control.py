"""Replica-to-replica messages over gRPC (``Control``), authenticated by the Deployment's secret
(checked before the frame is read: :func:`runtime.server.authenticated`).

``_PeerMessages`` (a part of ``Consensus``) answers peers' ``control`` calls (``put_payloads``,
``get_payload``, ``get_snapshot``, ``status``), stores payloads here and on a majority, and
calls peers. Relies on the ``Consensus`` attributes (declared in :mod:`runtime.raft.state`),
the peers' channels and pushers (:mod:`runtime.raft.pushers`) and :mod:`runtime.protocol`.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from runtime import protocol
from runtime.raft.common import Outcome, RaftNotReady, _short
from runtime.raft.decisions import peer_acks_needed
from runtime.raft.pushers import _Peer, _PushResult
from runtime.raft.payloads import _check_rid
from runtime.raft.records import RECORD_FIELDS, Record
from runtime.secrets import call_metadata

if TYPE_CHECKING:   # a part of Consensus: its attributes (see runtime.raft.state for why not at run time)
    from runtime.raft.state import ConsensusState as _Base
else:
    _Base = object


class _PeerMessages(_Base):
    """``Consensus``'s side of replica-to-replica calls: answering peers, pushing payloads."""

    async def control(self, header: Dict[str, Any], body: bytes) -> bytes:
        """Requests from peer replicas (payloads, snapshots); the server checked their secret."""
        op = header.get('op')
        try:
            if op == 'put_payloads':   # a batch from one peer: [[rid, digest, size], ...] + the bodies
                items = header.get('items') or []
                view, offset, stores = memoryview(body), 0, []
                for rid, digest, size in items:
                    _check_rid(rid)
                    if not isinstance(size, int) or size < 0 or offset + size > len(view):
                        raise ValueError('put_payloads: the sizes do not match the body')
                    # the sender hashed the body it sends (the transport is reliable and authenticated):
                    # kept with the body, so nobody hashes it again
                    stores.append(self._store(rid, bytes(view[offset:offset + size]), str(digest)))
                    offset += size
                    arrived = self._arrivals.get(rid)
                    if arrived is not None:
                        arrived.set()
                results = await asyncio.gather(*stores, return_exceptions=True)
                errors = [None if not isinstance(r, BaseException) else _short(r) for r in results]
                outcomes = await self._propose_for_peer(items, header.get('records'), errors)
                return protocol.pack({'ok': True, 'errors': errors if any(errors) else None, 'outcomes': outcomes})
            if op == 'get_payload':
                rid = _check_rid(header.get('rid'))
                data = self.payloads.cached(rid)
                if data is None:
                    data = await asyncio.to_thread(self.payloads.get, rid)
                if data is None:
                    return protocol.pack({'ok': False, 'missing': True})
                data = bytes(data)
                return protocol.pack({'ok': True}, data)
            if op == 'get_snapshot':
                return await self._serve_snapshot(header)
            if op == 'status':
                return protocol.pack({'ok': True, 'status': self.status()})
            raise ValueError(f"unknown RAFT control op {op!r}; allowed: 'put_payloads', 'get_payload', "
                             "'get_snapshot', 'status'")
        except Exception as e:
            return protocol.pack(protocol.error_header(e, self.name))

    async def _propose_for_peer(self, items: List[Any], records: Optional[List[Any]],
                                errors: List[Optional[str]]) -> Optional[List[Optional[Outcome]]]:
        """A peer's payloads came with their records: if we lead, propose those stored here
        (payload on the peer and here: a majority) -> pysyncobj's outcome per record."""
        if not records:
            return None
        outcomes: List[Optional[Outcome]] = [None] * len(items)
        node = self.node
        leading = node is not None and self._proposer is not None and not self._closing and node.is_leader()
        proposals: Dict[int, asyncio.Future] = {}
        for k, wire in enumerate(records[:len(items)]):
            if wire is None:
                continue
            # a large write's record (no inline body), for the payload that came with it
            rec = Record.from_wire(wire) if isinstance(wire, list) and len(wire) == RECORD_FIELDS else None
            if errors[k] is not None or rec is None or rec.rid != items[k][0]:
                outcomes[k] = Outcome.REFUSED
            elif not leading:
                outcomes[k] = Outcome.NOT_LEADER   # the peer proposes it itself
            else:
                proposals[k] = self._proposer.submit(rec)
        if proposals:
            for k, err in zip(proposals, await asyncio.gather(*proposals.values())):
                outcomes[k] = err
        return outcomes

    def _leader_peer(self) -> Optional[_Peer]:
        """The peer that leads now, as our node sees it (None: we lead, or no leader)."""
        node = self.node
        try:
            addr = node.leader_address() if node is not None else None
        except Exception:
            return None
        return next((p for p in self.peers if p.raft == addr), None)

    async def _majority(self, pushes: Dict[str, asyncio.Task], deadline: float) -> None:
        """Return once a majority of replicas (us included) holds the payload ``pushes`` carry."""
        need = peer_acks_needed(len(self.peers))
        acks, errors, pending = 0, [], set(pushes.values())
        if need <= 0:
            return
        while pending:
            done, pending = await asyncio.wait(pending, timeout=max(0.0, deadline - self.loop.time()),
                                               return_when=asyncio.FIRST_COMPLETED)
            if not done:
                break
            for t in done:
                pushed: _PushResult = t.result()
                if pushed.stored:
                    acks += 1
                else:
                    errors.append(pushed.why)
            if acks >= need:
                return
        raise RaftNotReady(f'{self.name}: could not store the request on a majority of replicas '
                           f'({acks + 1} of {len(self.peers) + 1}): {"; ".join(errors) or "timed out"}')

    async def _push(self, peer: _Peer, rid: str, digest: str, body: bytes, deadline: float,
                    record: Optional[Record] = None) -> _PushResult:
        """Store a payload on ``peer`` (retried); the outcome of the peer's proposal of ``record``
        is asked on the first try only (None if that try failed)."""
        why: str = ''
        outcome: Optional[Outcome] = None
        for attempt in range(5):
            if deadline - self.loop.time() <= 0:
                break
            pushed = await self._pushers[peer.name].push(rid, digest, body, deadline,
                                                         record if attempt == 0 else None)
            if attempt == 0:
                outcome = pushed.outcome
            if pushed.stored:
                return _PushResult(True, '', outcome)
            why = pushed.why
            await asyncio.sleep(0.05 * (attempt + 1))
        return _PushResult(False, why, outcome)

    async def _store(self, rid: str, data: bytes, digest: str) -> None:
        """Keep a body in memory and return once the writer thread has put it in the workspace."""
        fut = self._disk.get(rid)
        if fut is None:
            fut = self.loop.create_future()
            self._disk[rid] = fut
            if not self.payloads.put_nowait(rid, data, digest):   # stored already
                del self._disk[rid]
                fut.set_result(None)
        await asyncio.shield(fut)

    def _on_written(self, rids: List[str], error: Optional[BaseException]) -> None:
        """The writer thread stored a batch of bodies (one wake-up of the loop per batch)."""
        try:
            self.loop.call_soon_threadsafe(self._written, rids, error)
        except RuntimeError:
            pass   # loop closed: shutting down

    def _written(self, rids: List[str], error: Optional[BaseException]) -> None:
        for rid in rids:
            fut = self._disk.pop(rid, None)
            if fut is not None and not fut.done():
                if error is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(OSError(f'{self.name}: cannot store request {rid}: {error}'))

    async def _call_peer(self, peer: _Peer, header: Dict[str, Any], body: bytes = b'',
                         timeout: float = 30.0) -> Tuple[Dict[str, Any], bytes]:
        header = dict(header, sender=self.name)
        reply = await peer.stub()(protocol.pack(header, body), timeout=timeout, metadata=call_metadata(self.secret))
        h, b = protocol.unpack(reply)
        return h, bytes(b)


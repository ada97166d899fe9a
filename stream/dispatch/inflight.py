"""Triggers decided concurrently: a bounded number at once, one key's in order, acks in order.

:class:`InFlight` runs each submitted piece of work as a task once a slot is
free (``limit`` slots, held from submission to the end of the work, so a key
waiting behind its own earlier trigger holds one too). Work of one key starts
only after that key's earlier work ended, so one customer's triggers are
decided in arrival order while other customers go on past a slow one.

Acks follow the offsets, not the finishing order: a submission's ``ack`` is
called once it and every earlier submission of the same partition are done.
The consumer therefore commits only below the oldest trigger not yet decided,
and a killed process re-reads everything from there (the Redis claim answers
the ones already decided ``deduplicated``). Work that raises is never acked:
its partition's acks stop there, the error is kept and raised by the next
:meth:`InFlight.submit`, which stops the agent as an error in its loop would.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Entry:
    ack: Callable[[], object]
    done: bool = False


#: More at once would only be a typo: each slot may hold an SMTP connection.
MAX_LIMIT = 10_000


class InFlight:
    def __init__(self, limit: int) -> None:
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"dispatch.max_in_flight must be from 1 to {MAX_LIMIT}, not {limit}")
        self.limit = limit
        self._slots = asyncio.Semaphore(limit)
        self._tails: dict[Hashable, asyncio.Task[None]] = {}
        self._pending: dict[Hashable, deque[_Entry]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.failure: BaseException | None = None

    @property
    def count(self) -> int:
        """Submissions not finished yet (running or waiting for their key)."""
        return len(self._tasks)

    def unacked(self, partition: Hashable) -> int:
        """Submissions of ``partition`` whose ack is still held back."""
        return len(self._pending.get(partition, ()))

    async def submit(
        self,
        key: Hashable,
        partition: Hashable | None,
        work: Callable[[], Awaitable[object]],
        ack: Callable[[], object] = lambda: None,
    ) -> None:
        """Start ``work`` once a slot is free and ``key``'s earlier work has ended.

        Returns as soon as it started (not finished); ``ack`` is called once it
        and every earlier submission of ``partition`` are done. Work of no
        partition (``None``) is acked by nobody, and its failure is only logged.
        """
        if self.failure is not None:
            raise self.failure
        await self._slots.acquire()
        entry = _Entry(ack)
        if partition is not None:
            self._pending.setdefault(partition, deque()).append(entry)
        task = asyncio.create_task(self._run(key, self._tails.get(key), work, partition, entry))
        self._tails[key] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(
        self,
        key: Hashable,
        before: asyncio.Task[None] | None,
        work: Callable[[], Awaitable[object]],
        partition: Hashable | None,
        entry: _Entry,
    ) -> None:
        try:
            if before is not None:
                await asyncio.wait([before])
            await work()
        except Exception as exc:
            if partition is None:
                log.exception("dispatching failed (%r)", key)
            else:
                log.exception("dispatching failed; %r stays uncommitted from here", partition)
                if self.failure is None:
                    self.failure = exc
        else:
            entry.done = True
            if partition is not None:
                self._ack_done(partition)
        finally:
            self._slots.release()
            if self._tails.get(key) is asyncio.current_task():
                del self._tails[key]

    def _ack_done(self, partition: Hashable) -> None:
        queue = self._pending[partition]
        while queue and queue[0].done:
            queue.popleft().ack()
        if not queue:
            del self._pending[partition]

    async def drain(self, timeout_s: float) -> bool:
        """Wait until nothing is in flight (at most ``timeout_s``); True if it got there."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._tasks:
            left = deadline - loop.time()
            if left <= 0:
                return False
            await asyncio.wait(set(self._tasks), timeout=left)
        return True

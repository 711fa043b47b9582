"""The RabbitMQ consumer's batched acks never go out on a channel that is closing.

Once a ``channel.close`` has arrived, aiormq answers it with close-ok and the broker frees
the channel number: an ack written after that is a connection error. aiormq marks that
moment with a private event a pass or two before ``is_closed``; these tests stand in a
channel whose event is set, which a live broker cannot be made to do on cue.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aio_pika.exceptions import ChannelInvalidStateError

from broker.rabbitmq import _Settlements


class FakeChannel:
    """What ``_Settlements`` uses of an aiormq channel."""

    def __init__(self) -> None:
        self.is_closed = False
        self._Channel__close_event = asyncio.Event()
        self.write_queue: asyncio.Queue[Any] = asyncio.Queue()

    def create_future(self) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    def written(self) -> list[bytes]:
        frames = []
        while not self.write_queue.empty():
            frame = self.write_queue.get_nowait()
            frames.append(frame.payload)
            frame.drain()  # as the connection's writer does once the bytes are sent
        return frames


def settlements(raw: FakeChannel) -> _Settlements:
    return _Settlements(raw)  # type: ignore[arg-type]


async def test_settlements_of_one_pass_are_one_write() -> None:
    raw = FakeChannel()
    acks = settlements(raw)
    pending = asyncio.gather(*(acks.write(bytes([i])) for i in range(5)))
    for _ in range(3):
        await asyncio.sleep(0)
    assert raw.written() == [bytes(range(5))]
    await asyncio.wait_for(pending, 1)


async def test_no_settlement_after_a_close_has_arrived() -> None:
    raw = FakeChannel()
    raw._Channel__close_event.set()  # close received, is_closed not yet true
    with pytest.raises(ChannelInvalidStateError):
        await settlements(raw).write(b"ack")
    assert raw.written() == []


async def test_settlements_issued_before_a_close_are_dropped_not_sent() -> None:
    raw = FakeChannel()
    acks = settlements(raw)
    pending = asyncio.gather(acks.write(b"a"), acks.write(b"b"), return_exceptions=True)
    await asyncio.sleep(0)  # both issued; the writer has not run yet
    raw._Channel__close_event.set()
    outcomes = await asyncio.wait_for(pending, 1)
    assert all(isinstance(o, ChannelInvalidStateError) for o in outcomes)
    assert raw.written() == []


async def test_a_writer_cancelled_before_it_ran_fails_its_batch_and_the_next_one_goes_out(
) -> None:
    raw = FakeChannel()
    acks = settlements(raw)
    first = asyncio.ensure_future(acks.write(b"lost"))
    await asyncio.sleep(0)  # issued; its writer is scheduled
    for writer in list(acks._writers):
        writer.cancel()
    with pytest.raises(ChannelInvalidStateError):
        await asyncio.wait_for(first, 1)
    second = asyncio.ensure_future(acks.write(b"next"))
    for _ in range(3):
        await asyncio.sleep(0)
    assert raw.written() == [b"next"]
    await asyncio.wait_for(second, 1)

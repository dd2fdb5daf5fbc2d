"""``service.connections.HeadWithBody``: a response's head goes out with its body, in one write."""

import asyncio

from service.connections import HeadWithBody

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class Recorded(asyncio.Transport):
    """An asyncio transport that keeps what is written to it, one entry per write call."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def _run(steps) -> Recorded:
    transport = Recorded()

    async def main() -> None:
        await steps(HeadWithBody(transport), transport)
        await asyncio.sleep(0)  # the loop turn on which a lone head goes out

    asyncio.run(main())
    return transport


def test_head_and_body_of_one_step_are_one_write():
    async def steps(held: HeadWithBody, transport: Recorded) -> None:
        held.write(HEAD)
        assert transport.writes == []
        held.write(b"ok")

    assert _run(steps).writes == [HEAD + b"ok"]


def test_a_head_without_a_body_goes_out_on_the_next_loop_turn():
    """HEAD requests: uvicorn writes no body at all."""

    async def steps(held: HeadWithBody, transport: Recorded) -> None:
        held.write(HEAD)

    assert _run(steps).writes == [HEAD]


def test_100_continue_is_written_at_once_and_the_final_head_still_waits_for_its_body():
    async def steps(held: HeadWithBody, transport: Recorded) -> None:
        held.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        assert transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
        held.write(HEAD)
        held.write(b"ok")

    assert _run(steps).writes == [b"HTTP/1.1 100 Continue\r\n\r\n", HEAD + b"ok"]


def test_close_writes_a_held_head_first_and_later_writes_pass_through():
    async def steps(held: HeadWithBody, transport: Recorded) -> None:
        held.write(HEAD)
        held.close()
        assert transport.closed and held.is_closing()

    assert _run(steps).writes == [HEAD]

    async def streamed(held: HeadWithBody, transport: Recorded) -> None:
        for chunk in (HEAD, b"a", b"b"):
            held.write(chunk)

    assert _run(streamed).writes == [HEAD + b"a", b"b"]

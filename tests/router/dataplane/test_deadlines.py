"""One loop timer for many deadlines (router.dataplane.deadlines): what expires, when, and what does not."""

from __future__ import annotations

import asyncio

from router.dataplane.deadlines import Deadlines


async def test_overdue_items_expire_in_time_and_forgotten_ones_never() -> None:
    loop = asyncio.get_running_loop()
    expired: list[tuple[str, float]] = []
    deadlines: Deadlines[str] = Deadlines(lambda item: expired.append((item, loop.time())))
    start = loop.time()
    deadlines.watch("late", start + 0.20)
    deadlines.watch("early", start + 0.05)  # earlier than the armed timer: re-arms it
    deadlines.watch("done", start + 0.10)
    deadlines.forget("done")  # finished in time
    assert len(deadlines) == 2
    await asyncio.sleep(0.30)
    assert [item for item, _ in expired] == ["early", "late"]
    (_, early_at), (_, late_at) = expired
    assert 0.04 <= early_at - start < 0.15 and 0.19 <= late_at - start < 0.28
    assert len(deadlines) == 0


async def test_close_stops_the_timer_until_the_next_watch() -> None:
    loop = asyncio.get_running_loop()
    expired: list[str] = []
    deadlines: Deadlines[str] = Deadlines(expired.append)
    deadlines.watch("a", loop.time() + 0.05)
    deadlines.close()
    await asyncio.sleep(0.1)
    assert expired == []  # no timer, so nothing was enforced
    deadlines.watch("b", loop.time() + 0.05)  # arms a new timer, which also finds "a" overdue
    await asyncio.sleep(0.1)
    assert sorted(expired) == ["a", "b"]

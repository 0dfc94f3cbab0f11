"""A local SMTP sink (aiosmtpd on loopback) that counts what it receives and keeps nothing.

It runs in a process of its own: in the sender's process every SMTP round
trip would wait for the GIL, and the bench would measure that, not sending.
"""

from __future__ import annotations

import multiprocessing
import socket
import time


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _CountingHandler:
    def __init__(self, counters) -> None:
        self.counters = counters  # shared: messages, recipients, bytes

    async def handle_DATA(self, server, session, envelope) -> str:
        with self.counters.get_lock():
            self.counters[0] += 1
            self.counters[1] += len(envelope.rcpt_tos)
            self.counters[2] += len(envelope.content or b"")
        return "250 Message accepted"


def _serve(port: int, counters, stop) -> None:
    from aiosmtpd.controller import Controller

    controller = Controller(_CountingHandler(counters), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        stop.wait()
    finally:
        controller.stop()


class SmtpSink:
    """Start with .start(); `url` goes to EMAIL_URL; `count()` and `reset()` between measures."""

    def __init__(self) -> None:
        self.port = free_port()
        context = multiprocessing.get_context("fork")
        self._counters = context.Array("q", 3)
        self._stop = context.Event()
        self._process = context.Process(target=_serve, args=(self.port, self._counters, self._stop), daemon=True)

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> SmtpSink:
        self._process.start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if time.monotonic() > deadline or not self._process.is_alive():
                    raise RuntimeError("the SMTP sink did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._process.join(timeout=10)

    def count(self) -> dict[str, int]:
        with self._counters.get_lock():
            messages, recipients, size = self._counters[:]
        return {"messages": messages, "recipients": recipients, "bytes": size}

    def reset(self) -> None:
        with self._counters.get_lock():
            self._counters[:] = [0, 0, 0]

"""The dependencies of the outage table, each on its own loopback port, each really stopped and started.

- RedisServer: a private redis-server process (the cache, or the broker);
  stop() shuts it down, start() starts it again on the same port.
- SmtpServer: aiosmtpd on its own port; stop() closes the port.
- WebhookReceiver: an HTTP receiver on its own port; stop() closes the port.
- TcpProxy: forwards a loopback port to a server that stays up (PostgreSQL,
  the fake CD2 gateway); cut() drops every open connection and refuses new
  ones, as a restarted or unreachable server does; restore() accepts again.

Each starts in a fraction of a second, so a module keeps one of each and a
test stops and starts it (tests/outage/conftest.py).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.controller import Controller


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition, *, timeout: float = 10.0, what: str = "the condition") -> None:
    """Poll `condition` until it is true (no fixed sleeps); fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


class RedisServer:
    """A redis-server of the test's own, with no persistence, on 127.0.0.1:<port>."""

    def __init__(self) -> None:
        self.binary = shutil.which("redis-server")
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def available(self) -> bool:
        return self.binary is not None

    def url(self, db: int = 0, scheme: str = "redis") -> str:
        return f"{scheme}://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        if self.process is not None:
            return
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: port_open(self.port), what=f"redis-server on port {self.port}")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        self.process.wait(timeout=10)
        self.process = None
        wait_until(lambda: not port_open(self.port), what=f"port {self.port} to close")


class Inbox:
    """The SMTP server's handler: keeps (recipients, text) of each accepted message."""

    def __init__(self) -> None:
        self.messages: list[tuple[tuple[str, ...], str]] = []

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd calls it by this name
        text = envelope.original_content.decode(errors="replace").replace("=\r\n", "").replace("=\n", "")
        self.messages.append((tuple(envelope.rcpt_tos), text))
        return "250 Message accepted for delivery"

    def recipients(self) -> list[str]:
        return [address for rcpt, _ in self.messages for address in rcpt]


class SmtpServer:
    """aiosmtpd on 127.0.0.1:<port>; stopped, the port refuses connections."""

    def __init__(self) -> None:
        self.port = free_port()
        self.inbox = Inbox()
        self.controller: Controller | None = None

    def start(self) -> None:
        if self.controller is None:
            self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port)
            self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


class WebhookReceiver:
    """An HTTP receiver that answers 200 to every POST and keeps its bodies; stopped, the port refuses."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hooks/cd2"
        self.bodies: list[bytes] = []
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        if self.server is not None:
            return
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # http.server calls it by this name
                receiver.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class TcpProxy:
    """127.0.0.1:<port> forwarded to (host, target_port), with a switch that cuts it.

    cut(): every open connection is closed at once (both ends) and the port
    refuses new ones: what a client sees when the server restarts or its
    host goes away. restore(): the port accepts again. Written for the tests
    because no library on hand does both halves with real sockets.
    """

    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (host, target_port)
        self.port = free_port()
        self.listener: socket.socket | None = None
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.lock = threading.Lock()

    def start(self) -> None:
        self.restore()

    def restore(self) -> None:
        if self.listener is not None:
            return
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        listener, self.listener = self.listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        wait_until(lambda: not port_open(self.port), what=f"proxy port {self.port} to close")

    stop = cut

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                self.pairs.append((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the other direction's pump
            for sock in (source, sink):
                sock.close()

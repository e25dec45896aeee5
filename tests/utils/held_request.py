"""A /predict request held open mid-body over a raw socket: in flight for as long as we like."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

from tests.utils.load import GOOD


class HeldRequest:
    """POST /predict with the headers and half the body sent; :meth:`finish` sends the rest.

    The server has started the request (it holds its headers) but cannot answer it until
    the body is complete, so it is in flight across whatever the test does meanwhile.
    """

    def __init__(self, url: str):
        parts = urlsplit(url)
        self.body = json.dumps(GOOD).encode()
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
        head = (
            f"POST /predict HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(self.body)}\r\n\r\n"
        ).encode()
        self.sock.sendall(head + self.body[: len(self.body) // 2])

    def finish(self) -> tuple[int, dict]:
        """Send the rest of the body; returns the status code and the JSON answer."""
        with self.sock:
            self.sock.sendall(self.body[len(self.body) // 2 :])
            data = b""
            while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        head, _, payload = data.partition(b"\r\n\r\n")
        if not head:
            return 0, {"error": "connection closed without an answer"}
        status = int(head.split(b" ", 2)[1])
        return status, json.loads(payload) if payload.strip() else {}

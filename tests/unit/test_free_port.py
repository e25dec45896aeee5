"""The tests' port picker: a server's two ports must never be drawn equal."""

from __future__ import annotations

import contextlib
import socket

from harness.processes import free_port


def test_ports_in_one_process_are_never_repeated_before_the_block_wraps():
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)


def test_a_taken_port_is_skipped():
    first = free_port()
    block = first - first % 2000  # blocks start at multiples of 2,000
    following = block + (first - block + 1) % 2000
    with socket.socket() as held:  # the walk's next candidate is busy: it is stepped over
        with contextlib.suppress(OSError):  # (or someone else holds it: stepped over too)
            held.bind(("127.0.0.1", following))
        second = free_port()
    assert second not in (first, following)

"""demo.ports: the loopback ports the demo, the tests and the benchmark start services on."""

from __future__ import annotations

import socket

import pytest

from demo import ports


class _KernelRepeating:
    """A socket whose kernel hands out these ports in turn, repeats included."""

    def __init__(self, given: list[int]) -> None:
        self._given = given

    def __call__(self) -> _KernelRepeating:
        return self

    def __enter__(self) -> _KernelRepeating:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    def bind(self, address: tuple[str, int]) -> None:
        assert address == ("127.0.0.1", 0)

    def getsockname(self) -> tuple[str, int]:
        return "127.0.0.1", self._given.pop(0)


def test_a_port_the_kernel_gives_twice_is_handed_out_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "_handed_out", set())
    monkeypatch.setattr(ports.socket, "socket", _KernelRepeating([41000, 41000, 41000, 41001]))
    assert (ports.free_port(), ports.free_port()) == (41000, 41001)


def test_handed_out_ports_are_free_and_distinct() -> None:
    handed = [ports.free_port() for _ in range(50)]
    assert len(set(handed)) == len(handed)
    for port in handed:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # nothing listens there

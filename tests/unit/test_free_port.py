"""free_port: the ports verify's services listen on, chosen where no outgoing connection can take them first."""

from __future__ import annotations

import socket

import pytest

from tokenlat_cli.verify import processes


def test_ports_are_free_below_the_ephemeral_range_and_not_handed_out_twice() -> None:
    low, _ = processes._ephemeral_range()
    ports = [processes.free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert all(processes._LOWEST_PORT <= port < low for port in ports)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[-1]))  # still free: nothing kept it


def test_a_port_in_use_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        in_use = taken.getsockname()[1]
        spare = processes.free_port()  # free now, and to be handed out again
        processes._RECENT_PORTS.remove(spare)
        picks = iter([in_use, spare])  # the random choice lands on the port in use first
        monkeypatch.setattr(processes.random, "randrange", lambda a, b: next(picks))
        assert processes.free_port() == spare

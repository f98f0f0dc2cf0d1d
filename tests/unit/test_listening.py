"""tokenlat.listening: one socket per server, its URL (IPv6 in brackets), and the listening line both ways."""

from __future__ import annotations

import socket

import pytest

from tokenlat import listening


def test_bind_gives_one_socket_with_a_port_of_its_own() -> None:
    with listening.bind("127.0.0.1", 0) as sock:
        host, port = sock.getsockname()[:2]
        assert host == "127.0.0.1" and port > 0
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1  # already listening
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass


def test_bind_names_an_address_that_is_taken() -> None:
    with listening.bind("127.0.0.1", 0) as taken, pytest.raises(OSError):
        listening.bind("127.0.0.1", taken.getsockname()[1])


@pytest.mark.parametrize(
    ("host", "url"),
    [("127.0.0.1", "http://127.0.0.1:9000"), ("::1", "http://[::1]:9000"), ("localhost", "http://localhost:9000")],
)
def test_url_puts_ipv6_addresses_in_brackets(host: str, url: str) -> None:
    assert listening.url(host, 9000) == url


def test_the_listening_line_and_its_parser_agree() -> None:
    line = listening.line("tokenlat sidecar", "::1", 9000, "http://127.0.0.1:8000")
    assert line == "tokenlat sidecar listening on http://[::1]:9000 -> http://127.0.0.1:8000"
    prefix = listening.prefix("tokenlat sidecar")
    assert listening.parse(f"a log line\n{line}\n", prefix) == "http://[::1]:9000"
    assert listening.parse(listening.line("tokenlat-synthetic", "127.0.0.1", 80), prefix) is None
    assert listening.parse(listening.line("x", "127.0.0.1", 80), listening.prefix("x")) == "http://127.0.0.1:80"

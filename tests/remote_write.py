"""A minimal Prometheus remote-write client (remote write 1.0: a snappy-compressed prompb.WriteRequest), protobuf and
snappy encoded here by hand so that no extra package is needed: for tests that write samples whose exact shape they
control (tests/e2e/test_thanos.py), or that no tokenlat component sends (the GPU power tests/e2e/test_dashboard.py
joins with token rates).

Several write_request() results concatenated are one WriteRequest with all their series: protobuf merges repeated
fields.
"""

from __future__ import annotations

import struct

import requests


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def write_request(name: str, labels: dict[str, str], value: float, timestamp_ms: int) -> bytes:
    """prompb.WriteRequest{timeseries: [{labels (sorted by name), samples: [{value, timestamp}]}]}."""
    all_labels = sorted({"__name__": name, **labels}.items())
    series = b"".join(_field(1, _field(1, k.encode()) + _field(2, v.encode())) for k, v in all_labels)
    sample = _varint(1 << 3 | 1) + struct.pack("<d", value) + _varint(2 << 3 | 0) + _varint(timestamp_ms)
    series += _field(2, sample)
    return _field(1, series)


def snappy_literal(data: bytes) -> bytes:
    """Snappy block format with literal elements only: valid snappy that any decoder reads, merely uncompressed."""
    out = bytearray(_varint(len(data)))
    for start in range(0, len(data), 1 << 16):
        chunk = data[start : start + (1 << 16)]
        out += bytes([61 << 2]) + struct.pack("<H", len(chunk) - 1) + chunk  # tag 61: 2-byte length - 1
    return bytes(out)


def remote_write(
    url: str,
    body: bytes,
    headers: dict[str, str],
    verify: str | bool = True,
    cert: tuple[str, str] | None = None,
) -> requests.Response:
    return requests.post(
        url,
        data=snappy_literal(body),
        headers={
            "Content-Encoding": "snappy",
            "Content-Type": "application/x-protobuf",
            "X-Prometheus-Remote-Write-Version": "0.1.0",
            **headers,
        },
        timeout=10,
        verify=verify,
        cert=cert,
    )

"""`render --what tlcp-gateway`: TLCP (Tongsuo NTLS) in, the Collector's own TLS out. What Debian's nginx can check
(everything outside the TLCP markers) runs in tests/e2e/test_deploy_tools.py; this checks the shape."""

from __future__ import annotations

import pytest

from tokenlat_cli.operate import runtime, tlcp
from tokenlat_cli.profiles import builtin_names, load_profile


def _tlcp_section(text: str) -> list[list[str]]:
    """The lines between each pair of markers."""
    sections, current = [], None
    for line in (raw.strip() for raw in text.splitlines()):
        if line == tlcp.TLCP_BEGIN:
            current = []
        elif line == tlcp.TLCP_END:
            sections.append(current)
            current = None
        elif current is not None:
            current.append(line)
    assert current is None, "a TLCP section is not closed"
    return sections


@pytest.mark.parametrize("name", builtin_names())
def test_each_receiver_is_fronted_by_a_tlcp_server(name: str) -> None:
    profile = load_profile(name)
    text = tlcp.render(profile)
    assert text.count("{") == text.count("}")
    sections = _tlcp_section(text)
    assert len(sections) == 2
    for section in sections:
        directives = {line.split()[0] for line in section}
        assert {"enable_ntls", "ssl_sign_certificate", "ssl_sign_certificate_key", "ssl_enc_certificate"} <= directives
        assert "ssl_enc_certificate_key" in directives
    host = tlcp.upstream_host(profile)
    for port in ("otlp-grpc", "otlp-http"):
        assert f"server {host}:{runtime.port(profile, port).port};" in text


def test_mutual_tls_to_the_collector_when_its_receiver_asks() -> None:
    text = tlcp.render(load_profile("aliyun"))
    assert "grpc_pass grpcs://" in text and "proxy_pass https://" in text
    for prefix in ("grpc", "proxy"):
        assert f"{prefix}_ssl_certificate {tlcp.FILES['collector_client_cert']};" in text
        assert f"{prefix}_ssl_verify on;" in text
    assert "tokenlat-agent.observability.svc" in text  # two tiers: the agents' Service


def test_plain_text_to_a_collector_without_tls_is_called_out() -> None:
    text = tlcp.render(load_profile("tencent"))
    assert "grpc_pass grpc://" in text and "proxy_pass http://" in text
    assert "_ssl_certificate " not in text.replace("ssl_sign_certificate", "").replace("ssl_enc_certificate", "")
    assert "WARNING" in text

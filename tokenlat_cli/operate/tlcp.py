"""A TLCP gateway in front of the Collector (`tokenlat render --what tlcp-gateway`): Tengine built with Tongsuo.

Finance and state-owned customers may be required to use national cryptography: TLCP (GB/T 38636-2020, SM2 sign and
encryption certificates, SM4, SM3). Go's crypto/tls has none of it, so neither has the Collector. Tengine's
ngx_openssl_ntls module, built against Tongsuo with enable-ntls, terminates TLCP (`enable_ntls on` and the
ssl_sign_*/ssl_enc_* certificate pairs) and forwards to the Collector's OTLP receivers over standard TLS, presenting
a client certificate when the profile's receiver asks for one (mutual TLS).

The output is an include for Tengine's http{} context. OTLP/gRPC goes through grpc_pass (HTTP/2 to the Collector,
negotiated with ALPN, which a plain TCP proxy would not do and the Collector's gRPC server requires); OTLP/HTTP
through proxy_pass. The TLCP directives sit between two marker comments (TLCP_BEGIN, TLCP_END): everything outside
them is standard nginx, which tests/e2e checks with Debian's nginx; the NTLS directives themselves need Tengine.
"""

from __future__ import annotations

from tokenlat_cli.operate import runtime
from tokenlat_cli.profiles import Profile

TLCP_BEGIN = "# TLCP (Tongsuo NTLS) begin"
TLCP_END = "# TLCP end"
#: Where the gateway's files are mounted; all PEM. The SM2 pairs are TLCP's two certificates (sign, encrypt).
GATEWAY_DIR = "/etc/tengine/tokenlat"
FILES = {
    "sign_cert": f"{GATEWAY_DIR}/tlcp/server_sign.crt",
    "sign_key": f"{GATEWAY_DIR}/tlcp/server_sign.key",
    "enc_cert": f"{GATEWAY_DIR}/tlcp/server_enc.crt",
    "enc_key": f"{GATEWAY_DIR}/tlcp/server_enc.key",
    "tlcp_client_ca": f"{GATEWAY_DIR}/tlcp/client_ca.crt",
    "collector_client_cert": f"{GATEWAY_DIR}/collector/client.crt",
    "collector_client_key": f"{GATEWAY_DIR}/collector/client.key",
    "collector_ca": f"{GATEWAY_DIR}/collector/ca.crt",
}
#: TLCP suites, strongest first: ECDHE (forward secrecy; the client needs its own sign/enc pair) before ECC, GCM
#: before CBC. Tongsuo's names.
CIPHERS = "ECDHE-SM2-SM4-GCM-SM3:ECC-SM2-SM4-GCM-SM3:ECDHE-SM2-SM4-CBC-SM3:ECC-SM2-SM4-CBC-SM3"


def upstream_host(profile: Profile) -> str:
    """The Collector Service the gateway forwards to (tokenlat_cli/operate/kubernetes.py names it): the single
    Collector, or in the two-tier layout the agents' Service (which routes to the agent on the gateway's node)."""
    return f"{runtime.tiers(profile)[0].name}.{profile.data['deploy']['namespace']}.svc"


def _tlcp(indent: str) -> list[str]:
    lines = [
        TLCP_BEGIN,
        "enable_ntls on;",
        f"ssl_sign_certificate {FILES['sign_cert']};",
        f"ssl_sign_certificate_key {FILES['sign_key']};",
        f"ssl_enc_certificate {FILES['enc_cert']};",
        f"ssl_enc_certificate_key {FILES['enc_key']};",
        f'ssl_ciphers "{CIPHERS}";',
        TLCP_END,
        "# Services authenticate with their TLCP client certificates, signed by this CA.",
        "ssl_verify_client on;",
        f"ssl_client_certificate {FILES['tlcp_client_ca']};",
    ]
    return [indent + line for line in lines]


def _upstream_tls(prefix: str, mutual: bool, host: str, indent: str) -> list[str]:
    """Standard TLS to the Collector (``prefix`` is grpc or proxy): verify its certificate, present ours."""
    if not mutual:
        return []
    lines = [
        f"{prefix}_ssl_protocols TLSv1.2 TLSv1.3;",
        f"{prefix}_ssl_verify on;",
        f"{prefix}_ssl_name {host};",
        f"{prefix}_ssl_trusted_certificate {FILES['collector_ca']};",
        f"{prefix}_ssl_certificate {FILES['collector_client_cert']};",
        f"{prefix}_ssl_certificate_key {FILES['collector_client_key']};",
    ]
    return [indent + line for line in lines]


def render(profile: Profile) -> str:
    tls = profile.data["receiver"]["tls"]
    secure = bool(tls["enabled"])
    mutual = secure and bool(tls["client_ca_file"])
    host = upstream_host(profile)
    grpc, http = runtime.port(profile, "otlp-grpc").port, runtime.port(profile, "otlp-http").port
    scheme = "s" if secure else ""
    lines = [
        f"# TLCP gateway for the tokenlat Collector, profile {profile.name} (`tokenlat render --what tlcp-gateway`).",
        "# For Tengine built with Tongsuo (--add-module=modules/ngx_openssl_ntls, Tongsuo with enable-ntls):",
        "# include it in the http{} context. Services speak TLCP (SM2/SM3/SM4) to this gateway on the Collector's",
        f"# ports ({grpc} OTLP/gRPC, {http} OTLP/HTTP); the gateway forwards to {host} over standard TLS.",
        "# Certificates (PEM) go under " + GATEWAY_DIR + "/ as named below; see docs/deploy.md.",
    ]
    if not secure:
        lines.append(
            "# WARNING: this profile's OTLP receiver has no TLS (receiver.tls): the gateway -> Collector hop is "
            "plain text; keep both on one host or enable receiver.tls."
        )
    elif not mutual:
        lines.append("# The profile's receiver asks for no client certificate: the gateway presents none.")
    for name, port, to in (("grpc", grpc, "OTLP/gRPC"), ("http", http, "OTLP/HTTP")):
        lines += ["", f"upstream tokenlat_otlp_{name} {{", f"    server {host}:{port};", "    keepalive 16;", "}"]
        if name == "grpc":
            pass_line = f"grpc_pass grpc{scheme}://tokenlat_otlp_grpc;"
            tls_lines = _upstream_tls("grpc", mutual, host, " " * 8)
        else:
            pass_line = f"proxy_pass http{scheme}://tokenlat_otlp_http;"
            # HTTP/1.1 and no Connection header: keep the upstream connections alive (keepalive above).
            keep_alive = ["        proxy_http_version 1.1;", '        proxy_set_header Connection "";']
            tls_lines = [*_upstream_tls("proxy", mutual, host, " " * 8), *keep_alive]
        lines += [
            "",
            "server {",
            f"    # {to}: TLCP in, {'mutual TLS' if mutual else 'TLS' if secure else 'plain text'} out.",
            f"    listen {port} ssl{' http2' if name == 'grpc' else ''};",
            *_tlcp(" " * 4),
            "    client_max_body_size 16m;",
            "    location / {",
            f"        {pass_line}",
            *tls_lines,
            "    }",
            "}",
        ]
    return "\n".join(lines) + "\n"

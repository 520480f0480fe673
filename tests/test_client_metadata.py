"""The client metadata fetcher over real TLS on loopback: the connection goes to the checked
address while the certificate is still verified for the URL's host name."""

from __future__ import annotations

import datetime
import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tenant_mcp.auth.client_metadata import ClientMetadataFetcher

pytestmark = pytest.mark.anyio


def _certificate(tmp: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp / f"{name}.pem", tmp / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, dict[str, Any], ssl.SSLContext, Path]]:
    documents: dict[str, Any] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(documents.get(self.path, {})).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    cert, key = _certificate(tmp_path, "localhost")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.socket = server_context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    trust = ssl.create_default_context(cafile=str(cert))
    yield httpd.server_address[1], documents, trust, tmp_path
    httpd.shutdown()


async def test_tls_document_is_fetched_from_the_pinned_address(
    tls_server: tuple[int, dict[str, Any], ssl.SSLContext, Path],
) -> None:
    port, documents, trust, tmp = tls_server
    url = f"https://localhost:{port}/client.json"
    documents["/client.json"] = {"client_id": url, "redirect_uris": ["https://app.example/cb"]}
    fetched = await ClientMetadataFetcher(allow_private=True, verify=trust).document(url)
    assert fetched == documents["/client.json"]
    # the same server, certificate checked against a name it does not hold: refused
    other, _ = _certificate(tmp, "elsewhere.example")
    refused = ClientMetadataFetcher(allow_private=True, verify=ssl.create_default_context(cafile=str(other)))
    assert await refused.document(url) is None
    # and without the test allowance, loopback is never contacted
    assert await ClientMetadataFetcher(verify=trust).document(url) is None

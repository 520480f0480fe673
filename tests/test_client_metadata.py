"""The client metadata fetcher over real TLS on loopback: the connection goes to the checked
address while the certificate is still verified for the URL's host name."""

from __future__ import annotations

import datetime
import json
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
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


@pytest.fixture
def counting_server() -> Iterator[tuple[str, list[str]]]:
    """Plain HTTP on loopback: `/good` answers a document (slowly), anything else 404; every
    request's path is recorded."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            if self.path != "/good":
                self.send_error(404)
                return
            time.sleep(0.2)  # long enough for concurrent first requests to overlap
            client_id = f"http://{self.headers['Host']}/good"  # a document names its own URL
            body = json.dumps({"client_id": client_id, "redirect_uris": ["https://app.example/cb"]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    httpd.shutdown()


async def test_concurrent_first_fetches_of_one_document_share_one_request(
    counting_server: tuple[str, list[str]],
) -> None:
    base, seen = counting_server
    fetcher = ClientMetadataFetcher(allow_private=True)
    results: list[Any] = []

    async def fetch() -> None:
        results.append(await fetcher.document(f"{base}/good"))

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(fetch)
    assert len(results) == 10 and all(r is not None and r["client_id"] == f"{base}/good" for r in results)
    assert seen == ["/good"]


async def test_a_flood_of_bad_client_ids_does_not_evict_a_good_document(
    counting_server: tuple[str, list[str]],
) -> None:
    base, seen = counting_server
    fetcher = ClientMetadataFetcher(allow_private=True, max_documents=8, max_failures=4)
    assert await fetcher.document(f"{base}/good") is not None
    for i in range(12):  # more than both caches hold together
        assert await fetcher.document(f"{base}/bad-{i}") is None
    assert await fetcher.document(f"{base}/good") is not None
    assert seen.count("/good") == 1  # still cached: the flood evicted only failures
    assert await fetcher.document(f"{base}/bad-11") is None
    assert seen.count("/bad-11") == 1  # a recent failure is remembered
    assert await fetcher.document(f"{base}/bad-0") is None
    assert seen.count("/bad-0") == 2  # the oldest failure was evicted, and fetched again

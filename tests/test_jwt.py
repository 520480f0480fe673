"""Bearer JWTs against real `tenant-mcp serve` processes: a static PEM key, a JWKS URL served from
a tiny local IdP, and tokens forged every way an attacker would try.

Every token here is real: RSA/EC/Ed25519 keys made with `cryptography`, signed with PyJWT (or by
hand where PyJWT refuses, e.g. HS256 with a public key as the secret). Every refusal must be the
same 401 with a `WWW-Authenticate` challenge pointing at the RFC 9728 metadata, and must never
name a tenant.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import RSAAlgorithm

from tests.helpers import INIT, LEGACY, MCP_HEADERS, ServerProcess, Tenants, mcp_client, standard_tenants

pytestmark = pytest.mark.anyio

ISS = "https://idp.test"
OTHER_ISS = "https://other-idp.test"
PRM = "/.well-known/oauth-protected-resource"
TENANT_NAMES = ("acme", "globex", "initech", "hooli")


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


IDP_KEY = _rsa()  # the IdP's signing key (the PEM file / kid "k1" in the JWKS)
ROTATED_KEY = _rsa()  # the IdP's next key, published later as kid "k2"
ATTACKER_KEY = _rsa()  # an attacker's own RSA key
ATTACKER_EC = ec.generate_private_key(ec.SECP256R1())
ATTACKER_ED = ed25519.Ed25519PrivateKey.generate()
PUBLIC_PEM = IDP_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)


# -- tokens --------------------------------------------------------------------------------------

DROP: Any = object()  # an override value meaning "leave this claim out"


def claims(aud: Any, /, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    c: dict[str, Any] = {
        "iss": ISS,
        "aud": aud,
        "sub": "alice",
        "exp": now + 600,
        "iat": now,
        "tenant": "acme",
        "scope": "notes:export",
    }
    for name, value in overrides.items():
        if value is DROP:
            c.pop(name, None)
        else:
            c[name] = value
    return c


def sign(c: dict[str, Any], key: Any = IDP_KEY, *, alg: str = "RS256", **headers: Any) -> str:
    return jwt.encode(c, key, algorithm=alg, headers=headers or None)


def sign_by_hand(c: dict[str, Any], key: rsa.RSAPrivateKey = IDP_KEY) -> str:
    """RS256 without PyJWT's encode-side checks, for claims PyJWT refuses to put in a token."""
    signing_input = f"{b64json({'alg': 'RS256', 'typ': 'JWT'})}.{b64json(c)}"
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64url(signature)}"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64json(obj: Any) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def public_jwk(key: Any, kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**jwk, "kid": kid, "alg": "RS256", "use": "sig"}


# -- raw HTTP ------------------------------------------------------------------------------------


def post(url: str, token: str | None, body: dict[str, Any] | None = None, **headers: str) -> httpx2.Response:
    h = dict(MCP_HEADERS)
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    h.update(headers)
    return httpx2.post(url, json=INIT if body is None else body, headers=h, timeout=15)


def rpc_message(response: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC response in a JSON or SSE (`data: {...}`) body."""
    if "text/event-stream" in response.headers.get("content-type", ""):
        for line in response.text.splitlines():
            if line.startswith("data:") and line[5:].strip():
                message = json.loads(line[5:].strip())
                if "result" in message or "error" in message:
                    return message  # type: ignore[no-any-return]
        raise AssertionError(f"no JSON-RPC response in SSE body: {response.text!r}")
    return response.json()  # type: ignore[no-any-return]


def assert_accepted(response: httpx2.Response, what: str) -> dict[str, Any]:
    assert response.status_code == 200, f"{what}: expected 200, got {response.status_code}: {response.text}"
    message = rpc_message(response)
    assert "result" in message, f"{what}: expected a JSON-RPC result, got {message}"
    return message


def assert_refused(server: ServerProcess, response: httpx2.Response, what: str) -> None:
    assert response.status_code == 401, f"{what}: expected 401, got {response.status_code}: {response.text}"
    challenge = response.headers.get("www-authenticate", "")
    assert challenge.startswith("Bearer "), f"{what}: bad WWW-Authenticate {challenge!r}"
    expected = f'resource_metadata="{server.base}{PRM}/mcp"'
    assert expected in challenge, f"{what}: WWW-Authenticate {challenge!r} lacks {expected}"
    for name in TENANT_NAMES:
        assert name not in response.text.lower(), f"{what}: 401 body names tenant {name!r}: {response.text}"
    # Every refusal looks exactly like "no credential at all": nothing tells the cases apart.
    baseline = post(server.url, None)
    assert (response.text, challenge) == (baseline.text, baseline.headers["www-authenticate"]), what


# -- a tiny IdP serving a JWKS -------------------------------------------------------------------


class JWKSHost:
    """Serves a mutable JWKS document on 127.0.0.1 and records when it was fetched."""

    def __init__(self, keys: list[dict[str, Any]]) -> None:
        self.keys = list(keys)
        self.fetches: list[float] = []
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                host.fetches.append(time.monotonic())
                body = json.dumps({"keys": host.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/jwks.json"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jwt_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('jwt')}/control.db"


@pytest.fixture(scope="module")
def jwt_tenants(jwt_db: str) -> Tenants:
    t = standard_tenants(jwt_db)  # acme, globex
    t.run(lambda admin: admin.create_tenant("initech", plan="free", metadata={"jwt_issuers": [OTHER_ISS]}))
    # A tenant whose metadata names an issuer the server does not trust: metadata may only narrow.
    t.run(
        lambda admin: admin.create_tenant(
            "hooli", plan="free", metadata={"jwt_issuers": ["https://rogue.test"]}
        )
    )
    return t


@pytest.fixture(scope="module")
def pem_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "idp.pem"
    path.write_bytes(PUBLIC_PEM)
    return path


@pytest.fixture(scope="module")
def attacker_host() -> Iterator[JWKSHost]:
    """The attacker's JWKS: the server must never fetch it, whatever a token's headers say."""
    host = JWKSHost([public_jwk(ATTACKER_KEY, "attacker")])
    yield host
    host.close()


@pytest.fixture(scope="module")
def idp_host() -> Iterator[JWKSHost]:
    host = JWKSHost([public_jwk(IDP_KEY, "k1")])
    yield host
    host.close()


@pytest.fixture(scope="module")
def burst_host() -> Iterator[JWKSHost]:
    """The IdP of the burst test only: its server must not see any other token first."""
    host = JWKSHost([public_jwk(IDP_KEY, "k1")])
    yield host
    host.close()


@pytest.fixture(scope="module")
def rotation_host() -> Iterator[JWKSHost]:
    """The IdP of the key-rotation test only (its server fetches the JWKS once at module start)."""
    host = JWKSHost([public_jwk(IDP_KEY, "k1")])
    yield host
    host.close()


@pytest.fixture(scope="module")
def servers(
    jwt_db: str,
    jwt_tenants: Tenants,
    pem_file: Path,
    idp_host: JWKSHost,
    burst_host: JWKSHost,
    rotation_host: JWKSHost,
) -> Iterator[dict[str, ServerProcess]]:
    """The module's servers, started three at a time (each takes ~2 s of CPU to come up)."""
    pem = ("--jwt-public-key", str(pem_file))
    specs: dict[str, tuple[str, ...]] = {
        # notes, static PEM key, one issuer
        "static": ("example_servers.notes:app", *pem, "--jwt-issuer", ISS),
        # the probe app (whoami with scopes), trusting two issuers
        "probe": ("tests.servers.probe:app", *pem, "--jwt-issuer", f"{ISS},{OTHER_ISS}"),
        # every credential needs the scope "mcp"
        "scoped": ("example_servers.notes:app", *pem, "--jwt-issuer", ISS, "--required-scopes", "mcp"),
        # keys from the local IdP's JWKS
        "jwks": ("example_servers.notes:app", "--jwt-jwks-url", idp_host.url, "--jwt-issuer", ISS),
        # each used by one test alone
        "burst": ("example_servers.notes:app", "--jwt-jwks-url", burst_host.url, "--jwt-issuer", ISS),
        "rotation": ("example_servers.notes:app", "--jwt-jwks-url", rotation_host.url, "--jwt-issuer", ISS),
    }
    with ThreadPoolExecutor(3) as pool:
        futures = {
            name: pool.submit(ServerProcess, app, jwt_db, *args) for name, (app, *args) in specs.items()
        }
        started: dict[str, ServerProcess] = {}
        errors: list[BaseException] = []
        for name, future in futures.items():
            try:
                started[name] = future.result()
            except Exception as exc:
                errors.append(exc)
    try:
        if errors:
            raise errors[0]
        # The rotation server caches k1 now, so the 10 s JWKS refetch interval that the rotation
        # test has to wait out mostly passes while the other tests run.
        rotation = started["rotation"]
        warm_up = post(rotation.url, sign(claims(rotation.url), kid="k1"))
        assert warm_up.status_code == 200 and len(rotation_host.fetches) == 1, warm_up.text
        yield started
    finally:
        with ThreadPoolExecutor(len(started) or 1) as pool:
            list(pool.map(ServerProcess.stop, started.values()))


@pytest.fixture(scope="module")
def static_server(servers: dict[str, ServerProcess]) -> ServerProcess:
    return servers["static"]


@pytest.fixture(scope="module")
def probe_server(servers: dict[str, ServerProcess]) -> ServerProcess:
    return servers["probe"]


@pytest.fixture(scope="module")
def scoped_server(servers: dict[str, ServerProcess]) -> ServerProcess:
    return servers["scoped"]


@pytest.fixture(scope="module")
def jwks_server(servers: dict[str, ServerProcess]) -> ServerProcess:
    return servers["jwks"]


# -- 1. static public key: valid tokens ----------------------------------------------------------


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_valid_token_authenticates_tenant_and_subject(static_server: ServerProcess, mode: str) -> None:
    token = sign(claims(static_server.url, sub="user-42@idp"))
    async with mcp_client(static_server.url, token, mode=mode) as c:
        result = await c.call_tool("whoami", {})
        assert not result.is_error, result
        assert result.structured_content == {"tenant": "acme", "subject": "user-42@idp"}
        # the scope claim reached the tool filter: notes:export unlocks export_notes
        tools = {t.name for t in (await c.list_tools()).tools}
        assert "export_notes" in tools, tools
    globex = sign(claims(static_server.url, sub="bob", tenant="globex", scope=DROP))
    async with mcp_client(static_server.url, globex, mode=mode) as c:
        result = await c.call_tool("whoami", {})
        assert result.structured_content == {"tenant": "globex", "subject": "bob"}
        assert "export_notes" not in {t.name for t in (await c.list_tools()).tools}


@pytest.mark.parametrize(
    ("scope_claims", "expected"),
    [
        ({"scope": "notes:export mcp  extra"}, ["extra", "mcp", "notes:export"]),
        ({"scope": DROP, "scp": ["read", "write"]}, ["read", "write"]),
        ({"scope": DROP, "scp": "a b"}, ["a", "b"]),
        ({"scope": DROP}, []),
    ],
    ids=["scope-string", "scp-list", "scp-string", "none"],
)
async def test_scopes_from_scope_and_scp(
    probe_server: ServerProcess, scope_claims: dict[str, Any], expected: list[str]
) -> None:
    token = sign(claims(probe_server.url, sub="carol", **scope_claims))
    async with mcp_client(probe_server.url, token) as c:
        result = await c.call_tool("whoami", {})
    assert not result.is_error, result
    assert result.structured_content == {"tenant": "acme", "subject": "carol", "scopes": expected}


def test_raw_initialize_with_valid_token_is_200(static_server: ServerProcess) -> None:
    """The control case for every refusal below: the same request with a good token works."""
    message = assert_accepted(post(static_server.url, sign(claims(static_server.url))), "valid token")
    assert message["result"]["protocolVersion"] == LEGACY


# -- 2. every failure mode is the same 401 -------------------------------------------------------


def _hs256_with_public_pem(aud: str) -> str:
    """Algorithm confusion: HMAC keyed with the server's own public PEM (PyJWT refuses to make it)."""
    signing_input = f"{b64json({'alg': 'HS256', 'typ': 'JWT'})}.{b64json(claims(aud))}"
    mac = hmac.new(PUBLIC_PEM, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


def _unsigned(aud: str, alg: str) -> str:
    return f"{b64json({'alg': alg, 'typ': 'JWT'})}.{b64json(claims(aud))}."


def _tampered_payload(aud: str) -> str:
    header, _, signature = sign(claims(aud)).split(".")
    return f"{header}.{b64json(claims(aud, tenant='globex'))}.{signature}"


def _tampered_signature(aud: str) -> str:
    header, payload, signature = sign(claims(aud)).split(".")
    raw = bytearray(b64url_decode(signature))
    raw[17] ^= 0x01
    return f"{header}.{payload}.{b64url(bytes(raw))}"


def _own_key_headers(aud: str, attacker_url: str, kid: str = "attacker") -> str:
    """The attacker signs with their own key and tells the server where to find it."""
    return sign(
        claims(aud),
        ATTACKER_KEY,
        kid=kid,
        jwk=public_jwk(ATTACKER_KEY, kid),
        jku=attacker_url,
        x5u=attacker_url,
    )


FAILURES: dict[str, Callable[[str, str], str]] = {
    "expired": lambda aud, _: sign(claims(aud, exp=int(time.time()) - 120, iat=int(time.time()) - 720)),
    "nbf-in-future": lambda aud, _: sign(claims(aud, nbf=int(time.time()) + 120)),
    "iat-in-future": lambda aud, _: sign(
        claims(aud, iat=int(time.time()) + 3600, exp=int(time.time()) + 7200)
    ),
    "missing-exp": lambda aud, _: sign(claims(aud, exp=DROP)),
    "missing-iss": lambda aud, _: sign(claims(aud, iss=DROP)),
    "missing-aud": lambda aud, _: sign(claims(aud, aud=DROP)),
    "missing-sub": lambda aud, _: sign(claims(aud, sub=DROP)),
    "non-string-sub": lambda aud, _: sign_by_hand(claims(aud, sub=42)),
    "wrong-issuer": lambda aud, _: sign(claims(aud, iss="https://evil.test")),
    "issuer-prefix": lambda aud, _: sign(claims(aud, iss=ISS + ".evil.test")),
    "issuer-list": lambda aud, _: sign_by_hand(claims(aud, iss=[ISS])),
    "other-resource": lambda aud, _: sign(claims("https://api.other.test/mcp")),
    "other-resource-list": lambda aud, _: sign(claims(["https://api.other.test/mcp"])),
    "audience-trailing-slash": lambda aud, _: sign(claims(aud + "/")),
    "audience-origin-only": lambda aud, _: sign(claims(aud.rsplit("/", 1)[0])),
    "openid-id-token": lambda aud, _: sign(
        claims("my-client-id", azp="my-client-id", nonce="n-0S6", auth_time=int(time.time()), scope=DROP)
    ),
    "alg-none": lambda aud, _: _unsigned(aud, "none"),
    "alg-None": lambda aud, _: _unsigned(aud, "None"),
    "hs256-public-key-as-secret": lambda aud, _: _hs256_with_public_pem(aud),
    "tampered-signature": lambda aud, _: _tampered_signature(aud),
    "tampered-payload": lambda aud, _: _tampered_payload(aud),
    "stripped-signature": lambda aud, _: sign(claims(aud)).rsplit(".", 1)[0] + ".",
    "embedded-jwk-and-jku": _own_key_headers,
    "other-rsa-key": lambda aud, _: sign(claims(aud), ATTACKER_KEY),
    "es256-attacker-key": lambda aud, _: sign(claims(aud), ATTACKER_EC, alg="ES256"),
    "eddsa-attacker-key": lambda aud, _: sign(claims(aud), ATTACKER_ED, alg="EdDSA"),
    "tenant-missing": lambda aud, _: sign(claims(aud, tenant=DROP)),
    "tenant-empty": lambda aud, _: sign(claims(aud, tenant="")),
    "tenant-list": lambda aud, _: sign(claims(aud, tenant=["acme"])),
    "tenant-in-other-claim": lambda aud, _: sign(claims(aud, tenant=DROP, tenant_id="acme", org="acme")),
    "tenant-unknown": lambda aud, _: sign(claims(aud, tenant="umbrella")),
    "garbage-three-parts": lambda aud, _: "a.b.c",
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_static_key_failure_modes_are_uniform_401(
    static_server: ServerProcess, attacker_host: JWKSHost, case: str
) -> None:
    token = FAILURES[case](static_server.url, attacker_host.url)
    assert_refused(static_server, post(static_server.url, token), case)
    assert attacker_host.fetches == [], f"{case}: the server fetched the attacker's jku/x5u URL"


def test_suspended_tenant_is_refused_then_readmitted(
    static_server: ServerProcess, jwt_tenants: Tenants
) -> None:
    url = static_server.url
    token = sign(claims(url, sub="suspend-me"))
    session_id = _open_session(url, token)  # a session opened while active
    jwt_tenants.run(lambda admin: admin.suspend("acme"))
    try:
        time.sleep(1.3)  # past the 1 s credential cache
        assert_refused(static_server, post(url, sign(claims(url))), "suspended tenant, new connection")
        assert_refused(static_server, _tools_list(url, token, session_id), "suspended tenant, open session")
        globex = post(url, sign(claims(url, tenant="globex")))
        assert_accepted(globex, "another tenant is unaffected by acme's suspension")
    finally:
        jwt_tenants.run(lambda admin: admin.activate("acme"))
    time.sleep(1.3)
    assert_accepted(post(url, sign(claims(url))), "after re-activation")
    assert_accepted(_tools_list(url, token, session_id), "the open session after re-activation")


# -- 3. JWKS -------------------------------------------------------------------------------------


async def test_jwks_valid_token_with_kid(jwks_server: ServerProcess, idp_host: JWKSHost) -> None:
    token = sign(claims(jwks_server.url, sub="dave"), kid="k1")
    async with mcp_client(jwks_server.url, token) as c:
        result = await c.call_tool("whoami", {})
    assert result.structured_content == {"tenant": "acme", "subject": "dave"}
    assert idp_host.fetches, "the JWKS was never fetched"


JWKS_FAILURES: dict[str, Callable[[str, str], str]] = {
    # signed by the trusted key itself, but naming a kid the IdP never published
    "unknown-kid": lambda aud, _: sign(claims(aud), kid=f"kid-{uuid.uuid4().hex}"),
    "other-rsa-key-trusted-kid": lambda aud, _: sign(claims(aud), ATTACKER_KEY, kid="k1"),
    "other-rsa-key-no-kid": lambda aud, _: sign(claims(aud), ATTACKER_KEY),
    "embedded-jwk-and-jku": _own_key_headers,
    "embedded-jwk-and-jku-trusted-kid": lambda aud, url: _own_key_headers(aud, url, kid="k1"),
    "alg-none-trusted-kid": lambda aud, _: f"{b64json({'alg': 'none', 'kid': 'k1'})}.{b64json(claims(aud))}.",
    "hs256-trusted-kid": lambda aud, _: sign(
        claims(aud), "k1-secret-guess-0123456789abcdef", alg="HS256", kid="k1"
    ),
    "ps256-trusted-kid-other-key": lambda aud, _: sign(claims(aud), ATTACKER_KEY, alg="PS256", kid="k1"),
    "expired-trusted-kid": lambda aud, _: sign(claims(aud, exp=int(time.time()) - 120), kid="k1"),
    "wrong-audience-trusted-kid": lambda aud, _: sign(claims("https://api.other.test/mcp"), kid="k1"),
}


@pytest.mark.parametrize("case", list(JWKS_FAILURES))
def test_jwks_failure_modes_are_uniform_401(
    jwks_server: ServerProcess, attacker_host: JWKSHost, case: str
) -> None:
    token = JWKS_FAILURES[case](jwks_server.url, attacker_host.url)
    assert_refused(jwks_server, post(jwks_server.url, token), case)
    assert attacker_host.fetches == [], f"{case}: the server fetched the attacker's jku/x5u URL"
    # the trusted kid still works on the same server, so the refusals above are about the token
    assert_accepted(post(jwks_server.url, sign(claims(jwks_server.url), kid="k1")), f"{case}: control")


def _burst(server: ServerProcess, n: int) -> list[int]:
    def one(_: int) -> int:
        token = sign(claims(server.url), kid=f"random-{uuid.uuid4().hex}")
        return post(server.url, token).status_code

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_jwks_burst_of_random_kids_is_rate_limited(
    servers: dict[str, ServerProcess], burst_host: JWKSHost
) -> None:
    """On a server whose key cache is empty, 20 concurrent tokens with random kids (signed by the
    trusted key) are all refused and cost one JWKS fetch, not 20; right after it, none."""
    server, idp = servers["burst"], burst_host
    assert idp.fetches == [], "the burst server must start with an empty key cache"
    statuses = _burst(server, 20)
    assert statuses == [401] * 20, statuses
    assert 1 <= len(idp.fetches) <= 2, f"a burst of random kids caused {len(idp.fetches)} JWKS fetches"
    after_first = len(idp.fetches)
    assert_accepted(post(server.url, sign(claims(server.url), kid="k1")), "k1 from the cache")
    statuses = _burst(server, 20)
    assert statuses == [401] * 20, statuses
    assert len(idp.fetches) == after_first, (
        f"a second burst caused {len(idp.fetches) - after_first} more fetches"
    )


# -- 4. protected resource metadata and required scopes ------------------------------------------


@pytest.mark.parametrize("path", [PRM, PRM + "/mcp"])
def test_protected_resource_metadata(
    static_server: ServerProcess, probe_server: ServerProcess, path: str
) -> None:
    for server, issuers in ((static_server, [ISS]), (probe_server, [ISS, OTHER_ISS])):
        response = httpx2.get(server.base + path, timeout=10)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/json")
        meta = response.json()
        assert meta["resource"] == server.url, meta
        assert meta["authorization_servers"] == issuers, meta
        assert "header" in meta.get("bearer_methods_supported", ["header"])


def test_challenge_points_at_metadata_for_this_resource(static_server: ServerProcess) -> None:
    challenge = post(static_server.url, None).headers["www-authenticate"]
    metadata_url = challenge.split('resource_metadata="', 1)[1].split('"', 1)[0]
    meta = httpx2.get(metadata_url, timeout=10).json()
    assert meta["resource"] == static_server.url
    assert meta["authorization_servers"] == [ISS]


def test_required_scope_missing_is_403_insufficient_scope(scoped_server: ServerProcess) -> None:
    url = scoped_server.url
    response = post(url, sign(claims(url, scope="notes:export")))
    assert response.status_code == 403, f"{response.status_code}: {response.text}"
    assert response.json()["error"] == "insufficient_scope", response.text
    challenge = response.headers.get("www-authenticate", "")
    assert 'error="insufficient_scope"' in challenge and 'scope="mcp"' in challenge, challenge
    for name in TENANT_NAMES:
        assert name not in response.text.lower(), response.text
    # scope via scp works the same way, and the right scope is admitted
    assert post(url, sign(claims(url, scope=DROP, scp=["notes:export"]))).status_code == 403
    assert_accepted(post(url, sign(claims(url, scope="notes:export mcp"))), "token with scope mcp")
    assert_accepted(post(url, sign(claims(url, scope=DROP, scp=["mcp"]))), "token with scp [mcp]")
    # authentication comes first: a bad token without the scope is 401, not 403
    assert_refused(scoped_server, post(url, sign(claims(url, scope=""), ATTACKER_KEY)), "bad token, no scope")
    meta = httpx2.get(scoped_server.base + PRM + "/mcp", timeout=10).json()
    assert meta.get("scopes_supported") == ["mcp"], meta


# -- 5. sessions are bound to the tenant, not just to (iss, sub, client) -------------------------


def _open_session(url: str, token: str) -> str:
    response = post(url, token)
    assert_accepted(response, "initialize")
    session_id = response.headers.get("mcp-session-id")
    assert session_id, f"no mcp-session-id header: {dict(response.headers)}"
    notified = post(
        url,
        token,
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        **{"mcp-session-id": session_id, "mcp-protocol-version": LEGACY},
    )
    assert notified.status_code == 202, f"{notified.status_code}: {notified.text}"
    return session_id


def _tools_list(url: str, token: str, session_id: str) -> httpx2.Response:
    body = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}
    return post(url, token, body, **{"mcp-session-id": session_id, "mcp-protocol-version": LEGACY})


def test_session_is_bound_to_tenant_with_same_sub_client_and_issuer(static_server: ServerProcess) -> None:
    url = static_server.url
    same = {"sub": "shared-user", "client_id": "shared-client", "azp": "shared-client"}
    acme = sign(claims(url, **same))
    globex = sign(claims(url, tenant="globex", **same))
    session_id = _open_session(url, acme)
    assert_accepted(_tools_list(url, acme, session_id), "acme on its own session")

    hijack = _tools_list(url, globex, session_id)
    unknown = _tools_list(url, globex, uuid.uuid4().hex)
    assert unknown.status_code == 404, f"unknown session: {unknown.status_code}: {unknown.text}"
    assert (hijack.status_code, hijack.text) == (unknown.status_code, unknown.text), (
        f"globex on acme's session: {hijack.status_code} {hijack.text!r}, "
        f"unknown session: {unknown.status_code} {unknown.text!r}"
    )
    for name in TENANT_NAMES:
        assert name not in hijack.text.lower()

    # the same tenant but another subject or another client is not the session's owner either
    for what, other in (
        ("other sub", sign(claims(url, **{**same, "sub": "mallory"}))),
        ("other client", sign(claims(url, **{**same, "client_id": "evil-client", "azp": "evil-client"}))),
    ):
        response = _tools_list(url, other, session_id)
        assert (response.status_code, response.text) == (unknown.status_code, unknown.text), what

    # a refreshed acme token (same iss/sub/client, new iat/exp/jti) keeps the session
    time.sleep(1.1)  # so iat/exp really differ
    refreshed = sign(claims(url, **same, exp=int(time.time()) + 900, jti=uuid.uuid4().hex))
    assert refreshed != acme
    message = assert_accepted(_tools_list(url, refreshed, session_id), "refreshed acme token")
    assert "whoami" in {t["name"] for t in message["result"]["tools"]}, message


# -- misconfiguration ---------------------------------------------------------------------------


def _certificate_pem(key: rsa.RSAPrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize("kind", ["private-key", "certificate"])
def test_unusable_public_key_file_is_a_startup_error(
    jwt_db: str, jwt_tenants: Tenants, tmp_path: Path, kind: str
) -> None:
    """A key file the server cannot verify with must stop `serve` (exit 2, one line); if the server
    starts anyway, it must at least verify correctly signed tokens and never answer 500."""
    key = _rsa()
    path = tmp_path / f"{kind}.pem"
    if kind == "private-key":
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    else:
        path.write_bytes(_certificate_pem(key))
    try:
        server = ServerProcess(
            "example_servers.notes:app", jwt_db, "--jwt-public-key", str(path), "--jwt-issuer", ISS
        )
    except RuntimeError as exc:  # refused to start: the message must say why
        assert "tenant-mcp: error:" in str(exc) and "key" in str(exc).lower(), str(exc)
        return
    try:
        url = server.url
        tokens = {
            "valid": sign(claims(url), key),
            "other-rsa-key": sign(claims(url), ATTACKER_KEY),
            "es256": sign(claims(url), ATTACKER_EC, alg="ES256"),
            "eddsa": sign(claims(url), ATTACKER_ED, alg="EdDSA"),
        }
        statuses = {name: post(url, token).status_code for name, token in tokens.items()}
    finally:
        server.stop()
    expected = {name: 200 if name == "valid" else 401 for name in tokens}
    assert statuses == expected, (
        f"server started with a {kind} PEM as --jwt-public-key and answered {statuses}"
    )


def test_per_tenant_issuers_given_as_a_string_are_not_substring_matched(
    jwt_db: str, jwt_tenants: Tenants, pem_file: Path
) -> None:
    realm_a = "https://kc.test/realms/a"
    realm_ab = "https://kc.test/realms/ab"
    jwt_tenants.run(
        lambda admin: admin.create_tenant("abco", plan="free", metadata={"jwt_issuers": realm_ab})
    )
    server = ServerProcess(
        "example_servers.notes:app",
        jwt_db,
        "--jwt-public-key",
        str(pem_file),
        "--jwt-issuer",
        f"{realm_a},{realm_ab}",
    )
    try:
        url = server.url
        # control: the server trusts realm a (for tenants without their own list)
        assert_accepted(post(url, sign(claims(url, tenant="acme", iss=realm_a))), "acme from realm a")
        intruder = post(url, sign(claims(url, tenant="abco", iss=realm_a)))
    finally:
        server.stop()
    assert intruder.status_code == 401, (
        f"a realm-a token was admitted to tenant abco, whose only issuer is {realm_ab}: "
        f"{intruder.status_code} {intruder.text[:200]}"
    )


# -- 6. per-tenant issuers -----------------------------------------------------------------------


def test_per_tenant_issuer_allow_list(probe_server: ServerProcess) -> None:
    url = probe_server.url
    from_idp = sign(claims(url, tenant="initech", iss=ISS))
    assert_refused(probe_server, post(url, from_idp), "initech token from an issuer it does not allow")
    from_other = sign(claims(url, tenant="initech", iss=OTHER_ISS))
    assert_accepted(post(url, from_other), "initech token from its own issuer")
    # control: the server does trust ISS, for a tenant without a per-tenant list
    assert_accepted(post(url, sign(claims(url, tenant="acme", iss=ISS))), "acme token from idp.test")
    # tenant metadata narrows the server's issuers, it never widens them
    rogue = sign(claims(url, tenant="hooli", iss="https://rogue.test"))
    assert_refused(probe_server, post(url, rogue), "hooli token from its metadata-only issuer")


async def test_per_tenant_issuer_whoami(probe_server: ServerProcess) -> None:
    token = sign(claims(probe_server.url, tenant="initech", iss=OTHER_ISS, sub="peter", scope=DROP))
    async with mcp_client(probe_server.url, token) as c:
        result = await c.call_tool("whoami", {})
    assert result.structured_content == {"tenant": "initech", "subject": "peter", "scopes": []}


# -- JWKS key rotation (last: its 10 s refetch interval has mostly passed by now) ------------------


def test_jwks_key_rotation_is_picked_up_by_refetch_on_unknown_kid(
    servers: dict[str, ServerProcess], rotation_host: JWKSHost
) -> None:
    """The server cached {k1} at module start; the IdP then publishes k2. Once the 10 s refetch
    interval has passed since that fetch, the first k2 token makes the server refetch, once."""
    idp, server = rotation_host, servers["rotation"]
    url = server.url
    assert len(idp.fetches) == 1, f"the rotation server fetched the JWKS {len(idp.fetches)} times"
    idp.keys.append(public_jwk(ROTATED_KEY, "k2"))
    time.sleep(max(0.0, idp.fetches[-1] + 10.5 - time.monotonic()))
    rotated = sign(claims(url, sub="rotated"), ROTATED_KEY, kid="k2")
    assert_accepted(post(url, rotated), "token with the rotated-in kid k2")
    assert len(idp.fetches) == 2, f"the unknown kid k2 caused {len(idp.fetches) - 1} refetches, expected 1"
    assert_accepted(post(url, sign(claims(url), kid="k1")), "k1 after rotation")
    assert_accepted(post(url, rotated), "k2 again, from the cache")
    # kid k2 on a token signed with the k1 key (kid/key mismatch) is refused
    assert_refused(server, post(url, sign(claims(url), IDP_KEY, kid="k2")), "kid k2, k1 signature")
    # right after the refetch, random kids do not reach the IdP
    assert _burst(server, 10) == [401] * 10
    assert len(idp.fetches) == 2, (
        f"random kids right after a refetch caused {len(idp.fetches) - 2} more fetches"
    )

"""HTTPS and WSS from ``edumatrix serve --ssl-certfile/--ssl-keyfile`` (or the
``EDUMATRIX_SSL_*`` settings), with a self-signed certificate made for the test."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.gqlws import TRANSPORT_WS, GraphQLWS
from tests.server import ServerProcess, base_env, token
from tests.services import free_port

SUBSCRIBE = """
subscription($name: String!) {
  channel(name: $name) { offset channel announcement { title } }
}"""
PUBLISH = """
mutation($channel: String!, $title: String!) {
  publishAnnouncement(input: {channel: $channel, title: $title, body: "b", priority: HIGH}) {
    id
  }
}"""
CHANNEL = "institution:northwood:classroom:nw-math-101"


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edumatrix test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    keyfile.chmod(0o600)
    return certfile, keyfile


class TLSServer(ServerProcess):
    """A ServerProcess serving HTTPS/WSS: extra ``serve`` flags, polled over TLS."""

    def __init__(self, workdir: Path, env: dict[str, str], certfile: Path, *flags: str) -> None:
        super().__init__(workdir, env)
        self.flags = flags
        self.tls = ssl.create_default_context(cafile=str(certfile))

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"wss://127.0.0.1:{self.port}/graphql"

    def start(self, *, timeout: float = 30.0) -> TLSServer:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "api", "serve", "--port", str(self.port), *self.flags],
                env=self.env,
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                response = httpx.get(f"{self.url}/readyz", timeout=1, verify=self.tls)
                if response.status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready after {timeout}s:\n{self.log()}")

    def post(self, query: str, variables: dict[str, object], user: str) -> dict[str, object]:
        response = httpx.post(
            f"{self.url}/graphql",
            json={"query": query, "variables": variables},
            headers={"Authorization": f"Bearer {token(user)}"},
            timeout=10,
            verify=self.tls,
        )
        response.raise_for_status()
        body: dict[str, object] = response.json()
        return body


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[Callable[..., TLSServer]]:
    servers: list[TLSServer] = []

    def make(certfile: Path, *flags: str, **settings: str) -> TLSServer:
        server = TLSServer(tmp_path, base_env(tmp_path, **settings), certfile, *flags)
        servers.append(server)
        server.cli("migrate")
        server.cli("seed-demo")
        return server.start()

    yield make
    for server in servers:
        server.stop()


async def _round_trip(server: TLSServer) -> None:
    """HTTPS query, then a WSS graphql-transport-ws subscription that receives an
    announcement published over HTTPS."""
    me = await asyncio.to_thread(server.post, "{ me { id } }", {}, "nw-cy")
    assert me == {"data": {"me": {"id": "nw-cy"}}}
    async with websockets.connect(
        server.ws_url,
        subprotocols=[TRANSPORT_WS],  # type: ignore[list-item]
        ssl=server.tls,
    ) as ws:
        client = GraphQLWS(ws, TRANSPORT_WS)
        assert (await client.init(token("nw-cy")))["type"] == "connection_ack"
        await client.subscribe(SUBSCRIBE, {"name": CHANNEL})
        await asyncio.sleep(0.3)  # the subscription is live before we publish
        published = await asyncio.to_thread(
            server.post, PUBLISH, {"channel": CHANNEL, "title": "over tls"}, "nw-ada"
        )
        assert "errors" not in published, published
        data = await client.next_data(wait=10)
        assert data["channel"]["channel"] == CHANNEL
        assert data["channel"]["announcement"] == {"title": "over tls"}


async def _plain_refused(server: TLSServer) -> None:
    """Plain HTTP and WS on the TLS port get no answer, and an unverified client
    (no trust in the self-signed certificate) fails the handshake."""
    plain = f"http://127.0.0.1:{server.port}/readyz"
    with pytest.raises(httpx.TransportError):
        await asyncio.to_thread(httpx.get, plain, timeout=5)
    with pytest.raises((websockets.InvalidHandshake, websockets.ConnectionClosed, OSError)):
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/graphql", open_timeout=5):
            pass
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        await asyncio.to_thread(httpx.get, f"{server.url}/readyz", timeout=5)


async def test_https_and_wss_with_cli_flags(
    tmp_path: Path, tls_server: Callable[..., TLSServer]
) -> None:
    certfile, keyfile = make_certificate(tmp_path)
    server = tls_server(certfile, "--ssl-certfile", str(certfile), "--ssl-keyfile", str(keyfile))
    await _round_trip(server)
    await _plain_refused(server)
    assert f"https://127.0.0.1:{server.port}" in server.log()  # the serving line says so


async def test_https_and_wss_with_settings(
    tmp_path: Path, tls_server: Callable[..., TLSServer]
) -> None:
    certfile, keyfile = make_certificate(tmp_path)
    server = tls_server(certfile, ssl_certfile=str(certfile), ssl_keyfile=str(keyfile))
    await _round_trip(server)
    await _plain_refused(server)


def _serve(env: dict[str, str], *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "api", "serve", "--port", str(free_port()), *flags],
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
    )


def test_bad_tls_files_stop_serve_with_one_line(tmp_path: Path) -> None:
    certfile, keyfile = make_certificate(tmp_path)
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    _, other_key = make_certificate(other_dir)
    env = base_env(tmp_path)
    cases = {
        "missing": ("--ssl-certfile", str(tmp_path / "nope.pem")),
        "mismatched-key": ("--ssl-certfile", str(certfile), "--ssl-keyfile", str(other_key)),
        "key-is-no-cert": ("--ssl-certfile", str(keyfile), "--ssl-keyfile", str(keyfile)),
    }
    for name, flags in cases.items():
        result = _serve(env, *flags)
        assert result.returncode != 0, name
        assert "cannot use TLS certificate" in result.stderr, (name, result.stderr)
        assert "Traceback" not in result.stderr, name
    result = _serve(env, "--ssl-keyfile", str(keyfile))
    assert result.returncode != 0 and "--ssl-keyfile needs --ssl-certfile" in result.stderr
    result = _serve(base_env(tmp_path, ssl_keyfile=str(keyfile)))
    assert result.returncode != 0 and "EDUMATRIX_SSL_KEYFILE needs" in result.stderr

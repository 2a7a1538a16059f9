"""The LAN set-up's TLS: with TLS__CERT_FILE and TLS__KEY_FILE set, the routing file makes
Traefik serve the public port over HTTPS with that certificate, and plain HTTP gets nothing."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx2 as httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.stack.conftest import config_dir_with
from tests.support.fake import FakeUpstream
from tests.support.stack import StackProc, launch_stack

MODEL = "claude-sonnet-4-6"
TOKEN = "cc-test-client-token-for-the-tls-stack"


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, as a LAN admin would make with their own CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ccproxy test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return cert_file, key_file


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory: pytest.TempPathFactory, fake_upstream: FakeUpstream
              ) -> Iterator[tuple[StackProc, Path]]:
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(tmp / "certs")
    stack = launch_stack(tmp / "run", fake_url=fake_upstream.url,
                         claude_config_dir=config_dir_with(tmp, fake_upstream.credentials()),
                         env={"TLS__CERT_FILE": str(cert), "TLS__KEY_FILE": str(key), "SECURITY__AUTH_TOKEN": TOKEN})
    try:
        yield stack, cert
    finally:
        stack.stop()


def test_https_with_the_configured_certificate(tls_stack: tuple[StackProc, Path]) -> None:
    stack, cert = tls_stack
    assert stack.url.startswith("https://")
    # The client verifies the server against the admin's certificate: it is the one Traefik serves.
    trusting = ssl.create_default_context(cafile=str(cert))
    http = httpx.Client(verify=trusting, timeout=30)
    client = anthropic.Anthropic(base_url=stack.url + "/api", api_key=TOKEN, max_retries=0, http_client=http)
    answer = client.messages.create(model=MODEL, max_tokens=20, messages=[{"role": "user", "content": "over tls"}])
    assert answer.content[0].text == "Echo: over tls"  # type: ignore[union-attr]
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=stack.url + "/api", api_key="wrong", max_retries=0,
                            http_client=httpx.Client(verify=trusting, timeout=30)).models.list()


def test_plain_http_is_not_served(tls_stack: tuple[StackProc, Path]) -> None:
    stack, _ = tls_stack
    resp = httpx.get(stack.url.replace("https://", "http://") + "/health", timeout=10)
    assert resp.status_code == 404  # Traefik: no plain-HTTP route, nothing of ccproxy's
    assert "ready" not in resp.text

"""TLS and mutual TLS between a real server and the client and CLI, with certificates made by openssl."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest
from capreg_client import CapregClient, CapregError
from click.testing import CliRunner

from registry.cli.main import cli
from registry.embedding.sentence import SentenceTransformerEmbedder
from tests.support import running_server


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate."""
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=capreg-test-ca",
            "-keyout", "ca.key", "-out", "ca.pem", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, extra in (("server", ["-extfile", "san.ext"]), ("client", [])):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                "-out", f"{name}.csr", cwd=d)  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-out", f"{name}.pem", *extra, cwd=d)  # fmt: skip
    return d


def test_tls_server_with_client_and_cli(
    pki: Path, tmp_path: Path, database_url: str, embedder: SentenceTransformerEmbedder
) -> None:
    settings: dict[str, Any] = {"tls_cert_file": pki / "server.pem", "tls_key_file": pki / "server.key"}
    with running_server(tmp_path / "d", database_url, embedder, **settings) as server:
        with CapregClient(server.target, root_certificates=(pki / "ca.pem").read_bytes(), timeout=5) as client:
            assert client.health()
        with CapregClient(server.target, timeout=2) as plaintext, pytest.raises(CapregError) as err:
            plaintext.health()
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        result = CliRunner().invoke(
            cli, ["agents", "list", "--json", "--target", server.target, "--tls-ca", str(pki / "ca.pem")]
        )
        assert result.exit_code == 0 and result.output.strip() == "[]", result.output


def test_mutual_tls_requires_a_client_certificate(
    pki: Path, tmp_path: Path, database_url: str, embedder: SentenceTransformerEmbedder
) -> None:
    settings: dict[str, Any] = {
        "tls_cert_file": pki / "server.pem",
        "tls_key_file": pki / "server.key",
        "tls_client_ca_file": pki / "ca.pem",
    }
    ca = (pki / "ca.pem").read_bytes()
    with running_server(tmp_path / "d", database_url, embedder, **settings) as server:
        with (
            CapregClient(server.target, root_certificates=ca, timeout=2) as anonymous,
            pytest.raises(CapregError) as err,
        ):
            anonymous.health()
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        with CapregClient(
            server.target,
            root_certificates=ca,
            certificate_chain=(pki / "client.pem").read_bytes(),
            private_key=(pki / "client.key").read_bytes(),
            timeout=5,
        ) as client:
            assert client.health()
        args = [
            "--tls-ca",
            str(pki / "ca.pem"),
            "--tls-cert",
            str(pki / "client.pem"),
            "--tls-key",
            str(pki / "client.key"),
        ]
        result = CliRunner().invoke(cli, ["agents", "list", "--json", "--target", server.target, *args])
        assert result.exit_code == 0, result.output

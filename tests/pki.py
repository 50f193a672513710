"""A throwaway PKI made in the test run: a CA, a server certificate for localhost and
127.0.0.1, a client certificate, and a rogue CA with its own client (for TLS and mutual TLS
tests of the gRPC and metrics ports); also the server's key in a certificate without an
extended key usage (any purpose), as the Helm chart's in-pod clients present it under mutual
TLS."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hardscore_client import TLSConfig


@dataclass
class Pki:
    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path
    rogue_client_cert: Path
    rogue_client_key: Path
    other_key: Path
    any_purpose_cert: Path

    def tls(self, *, client: str = "", ca: Path | None = None, name: str | None = None
            ) -> TLSConfig:
        cert, key = {"": (None, None), "good": (self.client_cert, self.client_key),
                     "rogue": (self.rogue_client_cert, self.rogue_client_key)}[client]
        return TLSConfig.from_files(str(ca or self.ca), None if cert is None else str(cert),
                                    None if key is None else str(key), name)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool = False,
          usage: x509.ObjectIdentifier | None = None, hosts: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, *items: x509.Certificate | ec.EllipticCurvePrivateKey) -> Path:
    chunks = []
    for item in items:
        if isinstance(item, x509.Certificate):
            chunks.append(item.public_bytes(serialization.Encoding.PEM))
        else:
            chunks.append(item.private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    path.write_bytes(b"".join(chunks))
    return path


def make_pki(d: Path) -> Pki:
    """Writes the certificates and keys into the directory ``d``."""
    ca_key, rogue_key = _key(), _key()
    ca = _cert("hardscore test CA", ca_key, None, ca_key, ca=True)
    rogue = _cert("rogue CA", rogue_key, None, rogue_key, ca=True)
    server_key, client_key, rogue_client_key = _key(), _key(), _key()
    server = _cert("localhost", server_key, ca, ca_key, usage=ExtendedKeyUsageOID.SERVER_AUTH,
                   hosts=True)
    client = _cert("labelling-sidecar", client_key, ca, ca_key,
                   usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    rogue_client = _cert("intruder", rogue_client_key, rogue, rogue_key,
                         usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    any_purpose = _cert("localhost", server_key, ca, ca_key, hosts=True)
    return Pki(
        dir=d, ca=_write(d / "ca.pem", ca),
        server_cert=_write(d / "server.pem", server),
        server_key=_write(d / "server.key", server_key),
        client_cert=_write(d / "client.pem", client),
        client_key=_write(d / "client.key", client_key),
        rogue_ca=_write(d / "rogue-ca.pem", rogue),
        rogue_client_cert=_write(d / "rogue-client.pem", rogue_client),
        rogue_client_key=_write(d / "rogue-client.key", rogue_client_key),
        other_key=_write(d / "other.key", _key()),
        any_purpose_cert=_write(d / "any-purpose.pem", any_purpose),
    )

"""A certificate authority, a rogue one, and client and server certificates made with
`cryptography`, for the TLS tests (module-scoped fixture: `pki = pki_fixture`)."""
from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
          *, ca: bool = False, sans: list[x509.GeneralName] | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    iname, ikey = issuer if issuer else (subject, key)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(iname))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(ikey, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate | None = None, key: ec.EllipticCurvePrivateKey | None = None) -> str:
    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    else:
        assert key is not None
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(path)


@pytest.fixture(scope="module")
def pki_fixture(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("pki")
    out: dict[str, str] = {}
    for ca_name in ("ca", "rogue"):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _cert(f"vigil test {ca_name}", ca_key, None, ca=True)
        out[f"{ca_name}.pem"] = _write(d / f"{ca_name}.pem", ca)
        client_key = ec.generate_private_key(ec.SECP256R1())
        out[f"{ca_name}-client.pem"] = _write(d / f"{ca_name}-client.pem",
                                              _cert("vigil-cli", client_key, (f"vigil test {ca_name}", ca_key)))
        out[f"{ca_name}-client.key"] = _write(d / f"{ca_name}-client.key", key=client_key)
        if ca_name == "ca":
            srv_key = ec.generate_private_key(ec.SECP256R1())
            sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            out["server.pem"] = _write(d / "server.pem", _cert("vigil-agent", srv_key, ("vigil test ca", ca_key),
                                                               sans=sans))
            out["server.key"] = _write(d / "server.key", key=srv_key)
    return out

"""A self-signed certificate authority and the certificates a test consortium needs.

Layout of the folder (what ``--certificates DIR`` reads):

- ``ca.crt`` - the consortium's CA; every site and every ``adamodal flower run`` trusts it;
- ``ca.key`` - the CA's private key; keep it off the sites (it signs new certificates);
- ``server.crt`` / ``server.key`` - the SuperLink's certificate, valid for the host names and
  IP addresses given (always ``localhost`` and ``127.0.0.1``);
- ``node_<i>/`` - one folder per site to copy to that site: ``ca.crt`` (to verify the
  SuperLink) and the site's node key pair ``node.key`` / ``node.pub`` (Flower's SuperNode
  authentication: the SuperNode signs its requests with ``node.key``; the SuperLink accepts
  only nodes whose ``node.pub`` was registered with it, ``adamodal flower register``).

A site can also make its own key pair (``adamodal flower keys DIR``, :func:`make_node_keys`)
and send only the public half to the SuperLink's operator: the private key never has to leave
the site. Key format: what Flower 1.41 reads, an ECDSA key on NIST P-384 in OpenSSH format
(``--auth-supernode-private-key`` loads it with ``load_ssh_private_key``; ``flwr supernode
register`` reads the public key with ``load_ssh_public_key``), the same as ``ssh-keygen -t
ecdsa -b 384`` writes.

For a real consortium use certificates from the institution's own PKI; this is for trying the
deployment and for tests.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from adamodal.errors import AdamodalError

DAYS = 365
#: a site's node key pair, inside its folder (``node_<i>/`` or the folder given to ``keys``)
NODE_KEY, NODE_PUB = "node.key", "node.pub"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "adamodal consortium"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, private: bool = False) -> None:
    if not private:
        path.write_bytes(data)
        return
    # created closed to others (not chmod-ed after writing, which leaves a window open)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def make_node_keys(folder: Path, *, force: bool = False) -> tuple[Path, Path]:
    """Write a SuperNode's key pair, ``node.key`` (private, mode 0600) and ``node.pub``, into
    ``folder``; returns their paths. An existing pair is kept unless ``force``: replacing a
    registered key locks the site out until the new public key is registered."""
    folder = Path(folder)
    private, public = folder / NODE_KEY, folder / NODE_PUB
    if private.exists() and not force:
        raise AdamodalError(f"{private} already exists; pass --force to replace the key pair "
                            "(the new public key must then be registered again)")
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    _write(private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                      serialization.NoEncryption()), private=True)
    _write(public, key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                 serialization.PublicFormat.OpenSSH) + b"\n")
    return private, public


def make_certificates(out: Path, hosts: list[str], nodes: int, *, force: bool = False) -> list[Path]:
    """Write a CA, a SuperLink certificate for ``hosts`` and ``nodes`` site folders (each with
    ``ca.crt`` and a node key pair) into ``out``."""
    out = Path(out)
    if (out / "ca.crt").exists() and not force:
        raise AdamodalError(f"{out} already holds certificates; pass --force to replace them")
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    until = now + dt.timedelta(days=DAYS)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("adamodal CA")).issuer_name(_name("adamodal CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(until)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))

    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(["localhost", "127.0.0.1", *hosts]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(hosts[0] if hosts else "localhost")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(until)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))

    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    _write(out / "ca.crt", ca_pem)
    _write(out / "ca.key", _key_pem(ca_key), private=True)
    _write(out / "server.crt", cert.public_bytes(serialization.Encoding.PEM))
    _write(out / "server.key", _key_pem(key), private=True)
    written = [out / n for n in ("ca.crt", "ca.key", "server.crt", "server.key")]
    for i in range(nodes):
        site = out / f"node_{i}"
        site.mkdir(exist_ok=True)
        _write(site / "ca.crt", ca_pem)
        written += [site / "ca.crt", *make_node_keys(site, force=True)]
    return written

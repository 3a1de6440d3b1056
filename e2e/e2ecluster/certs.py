"""The e2e cluster's PKI, generated with the ``openssl`` command line.

Design: one self-signed CA signs every TLS certificate (P-256 keys: fast to generate
on a 2-core machine); the service-account token signing key is a separate RSA pair.
Client certificates carry the identities Kubernetes' default RBAC expects:

- ``admin``: CN ``legacygpu-e2e-admin``, O ``system:masters`` (cluster-admin);
- ``controller-manager``: CN ``system:kube-controller-manager``;
- ``scheduler``: CN ``system:kube-scheduler``;
- ``apiserver``: the serving certificate for 127.0.0.1/localhost and the in-cluster
  names of the ``kubernetes`` service.

Everything is created once per directory and reused afterwards (so a second start
costs nothing here). ``openssl`` is used instead of the ``cryptography`` package so
that the PKI needs nothing beyond Debian's base system.
"""

from __future__ import annotations

import logging
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from e2ecluster.errors import PkiError

__all__ = ["Pki", "ensure_pki"]

log = logging.getLogger(__name__)

_DAYS = "3650"
_SERVER_SANS = (
    "IP:127.0.0.1",
    "IP:10.96.0.1",
    "DNS:localhost",
    "DNS:kubernetes",
    "DNS:kubernetes.default",
    "DNS:kubernetes.default.svc",
    "DNS:kubernetes.default.svc.cluster.local",
)
_CLIENTS = {
    "admin": "/O=system:masters/CN=legacygpu-e2e-admin",
    "controller-manager": "/CN=system:kube-controller-manager",
    "scheduler": "/CN=system:kube-scheduler",
}


@dataclass(frozen=True)
class Pki:
    """Paths of the generated PKI files inside one directory."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def sa_key(self) -> Path:
        return self.root / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.root / "sa.pub"

    def cert(self, name: str) -> Path:
        return self.root / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.root / f"{name}.key"


def _openssl(*args: str) -> None:
    try:
        subprocess.run(["openssl", *args], check=True, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise PkiError("openssl is not installed (apt-get install openssl)") from exc
    except subprocess.CalledProcessError as exc:
        raise PkiError(f"openssl {args[0]} failed: {exc.stderr.strip()}") from exc


def _ec_key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path))


def _signed(pki: Pki, name: str, subject: str, extensions: str) -> None:
    """Create ``name.key`` and a ``name.crt`` signed by the CA with ``extensions``."""
    _ec_key(pki.key(name))
    with tempfile.TemporaryDirectory() as tmp:
        csr = Path(tmp) / "req.csr"
        ext = Path(tmp) / "ext.cnf"
        ext.write_text(extensions)
        _openssl("req", "-new", "-key", str(pki.key(name)), "-subj", subject, "-out", str(csr))
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(pki.ca_cert), "-CAkey", str(pki.ca_key),
            "-CAcreateserial", "-days", _DAYS, "-sha256", "-extfile", str(ext), "-out", str(pki.cert(name)),
        )  # fmt: skip


def ensure_pki(root: Path) -> Pki:
    """Create (once) and return the CA, serving, client and service-account keys under ``root``."""
    pki = Pki(root)
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)
    if not pki.ca_cert.exists():
        log.info("generating the e2e CA in %s", root)
        _ec_key(pki.ca_key)
        _openssl(
            "req", "-x509", "-new", "-key", str(pki.ca_key), "-subj", "/CN=legacygpu-e2e-ca",
            "-days", _DAYS, "-sha256", "-out", str(pki.ca_cert),
        )  # fmt: skip
    if not pki.cert("apiserver").exists():
        _signed(
            pki,
            "apiserver",
            "/CN=kube-apiserver",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
            f"extendedKeyUsage=serverAuth\nsubjectAltName={','.join(_SERVER_SANS)}\n",
        )
    for name, subject in _CLIENTS.items():
        if not pki.cert(name).exists():
            _signed(
                pki,
                name,
                subject,
                "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=clientAuth\n",
            )
    if not pki.sa_pub.exists():
        _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(pki.sa_key))
        _openssl("pkey", "-in", str(pki.sa_key), "-pubout", "-out", str(pki.sa_pub))
    return pki

"""Throw-away PKI for the test control plane, made with the ``openssl`` command line.

The openssl CLI is used (rather than the ``cryptography`` package) because it is present on every
CI image and keeps the project's Python dependencies unchanged. ECDSA P-256 keys keep generation
to a few milliseconds per certificate.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CertPair:
    """A certificate and its private key on disk."""

    cert: Path
    key: Path


def _run(args: list[str], cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {proc.stderr.strip()}")


def _ec_key(path: Path) -> None:
    _run(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(path)], path.parent)
    path.chmod(0o600)


class Pki:
    """A CA plus helpers to issue serving and client certificates under one directory."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca = CertPair(self.dir / "ca.crt", self.dir / "ca.key")
        if not self.ca.cert.exists():
            _ec_key(self.ca.key)
            _run(
                [
                    "req",
                    "-x509",
                    "-new",
                    "-key",
                    str(self.ca.key),
                    "-days",
                    "3650",
                    "-subj",
                    "/CN=transferjob-test-ca",
                    "-out",
                    str(self.ca.cert),
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
                ],
                self.dir,
            )

    def issue(
        self,
        name: str,
        common_name: str,
        organizations: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
        dns: tuple[str, ...] = (),
        server: bool = False,
    ) -> CertPair:
        """Issue ``<name>.crt``/``<name>.key`` signed by the CA (idempotent: kept if present)."""
        pair = CertPair(self.dir / f"{name}.crt", self.dir / f"{name}.key")
        if pair.cert.exists() and pair.key.exists():
            return pair
        _ec_key(pair.key)
        subject = "".join(f"/O={o}" for o in organizations) + f"/CN={common_name}"
        csr = self.dir / f"{name}.csr"
        ext = self.dir / f"{name}.ext"
        lines = [
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature,keyEncipherment",
            "extendedKeyUsage=" + ("serverAuth,clientAuth" if server else "clientAuth"),
        ]
        sans = [f"IP:{ip}" for ip in ips] + [f"DNS:{d}" for d in dns]
        if sans:
            lines.append("subjectAltName=" + ",".join(sans))
        ext.write_text("\n".join(lines) + "\n")
        _run(["req", "-new", "-key", str(pair.key), "-subj", subject, "-out", str(csr)], self.dir)
        _run(
            [
                "x509",
                "-req",
                "-in",
                str(csr),
                "-CA",
                str(self.ca.cert),
                "-CAkey",
                str(self.ca.key),
                "-CAcreateserial",
                "-days",
                "3650",
                "-extfile",
                str(ext),
                "-out",
                str(pair.cert),
            ],
            self.dir,
        )
        csr.unlink()
        ext.unlink()
        return pair

    def service_account_keys(self) -> CertPair:
        """The service-account token signing key (``sa.key``) and its public half (``sa.pub``)."""
        pair = CertPair(self.dir / "sa.pub", self.dir / "sa.key")
        if not pair.key.exists():
            _ec_key(pair.key)
            _run(["ec", "-in", str(pair.key), "-pubout", "-out", str(pair.cert)], self.dir)
        return pair

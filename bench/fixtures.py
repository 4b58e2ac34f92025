"""The files every scenario serves, written once per run into the temporary document root."""

import gzip
import os
import random
import subprocess
from pathlib import Path

KIB = 1024
MIB = 1024 * KIB

_VOCABULARY = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut"
    " labore et dolore magna aliqua enim ad minim veniam quis nostrud exercitation ullamco"
    " laboris nisi aliquip ex ea commodo consequat duis aute irure in reprehenderit voluptate"
    " velit esse cillum fugiat nulla pariatur excepteur sint occaecat cupidatat non proident"
    " sunt culpa qui officia deserunt mollit anim id est laborum def return self conn sock recv"
    " buffer pipe session listener upstream request response header body status if else while"
    " for None True False int str bytes len append write read close open epoll timer xps_"
)
_WORDS = _VOCABULARY.split()


def _text(size: int) -> bytes:
    """Seeded random lines of lorem and source words: compresses about like real text."""
    rng = random.Random(6)
    lines: list[str] = []
    total = 0
    while total < size:
        indent = " " * 4 * rng.randrange(4)
        line = f"{indent}{' '.join(rng.choices(_WORDS, k=rng.randrange(3, 14)))}\n"
        lines.append(line)
        total += len(line)
    return "".join(lines).encode("ascii")[:size]


def write_fixtures(docroot: Path) -> None:
    """Write the files every case serves into docroot.

    ``1k.txt``, ``1m.bin`` (random), ``1m.txt`` (compressible text), and ``1m.txt.gz``: 1m.txt
    compressed at level 6, as xps is configured to, for the peers serving precompressed files.
    """
    text = _text(MIB)
    (docroot / "1k.txt").write_bytes(_text(KIB))
    (docroot / "1m.bin").write_bytes(os.urandom(MIB))
    (docroot / "1m.txt").write_bytes(text)
    (docroot / "1m.txt.gz").write_bytes(gzip.compress(text, compresslevel=6, mtime=0))


def write_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 certificate for localhost and 127.0.0.1, as (cert, key),
    made once per folder with the openssl tool; every server of the https cases uses it."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    if cert.exists() and key.exists():
        return cert, key
    folder.mkdir(parents=True, exist_ok=True)
    argv = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    argv += ["-nodes", "-keyout", str(key), "-out", str(cert), "-days", "7"]
    argv += ["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"]
    subprocess.run(argv, check=True, capture_output=True, timeout=60)
    return cert, key

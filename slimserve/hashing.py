"""Content hashes for artifacts: the manifest records them, loaders verify them."""

import hashlib
from pathlib import Path

from slimserve.errors import SlimserveError


def sha256_file(path: str | Path) -> str:
    """Stream the file so multi-hundred-MB artifacts do not need to fit in memory twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: str | Path, expected: str) -> None:
    """Refuse a file whose bytes differ from what was recorded when it was written."""
    actual = sha256_file(path)
    if actual != expected:
        raise SlimserveError(
            f"{path}: sha256 mismatch (expected {expected[:12]}…, found {actual[:12]}…); "
            "the file was modified or corrupted - re-create it instead of loading it"
        )

"""Reading and writing slimserve's JSON documents (checkpoint metadata, bundle manifests,
benchmark reports).

Readers share the same first checks - valid JSON, an object, required keys, a supported
schema version - and the same one-line errors naming the file; each caller adds its own.
Writers go through a temporary file and a rename, so a crash never leaves half a file.
"""

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slimserve.errors import SlimserveError


def parse_json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SlimserveError(f"{path} is malformed: not valid JSON ({exc})") from None


def check_document(data: Any, source: str, required: tuple[str, ...], schema_version: int) -> dict[str, Any]:
    """An object with every required key and the schema version this slimserve reads."""
    if not isinstance(data, dict):
        raise SlimserveError(f"{source} is malformed: expected a JSON object")
    missing = [key for key in required if key not in data]
    if missing:
        raise SlimserveError(f"{source} is malformed: missing {', '.join(missing)}")
    if data["schema_version"] != schema_version:
        raise SlimserveError(
            f"{source}: schema version {data['schema_version']} is not supported "
            f"(this slimserve reads version {schema_version})"
        )
    return data


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` then rename over ``path``: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; artifacts are meant to be shared
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data: dict[str, Any], *, allow_nan: bool = True) -> None:
    """Indented JSON, written atomically. ``allow_nan=False`` refuses NaN and infinities
    (they are not JSON): benchmark reports state a missing figure as null instead."""
    text = json.dumps(data, indent=2, allow_nan=allow_nan) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))

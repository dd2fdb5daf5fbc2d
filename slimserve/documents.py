"""Reading slimserve's versioned JSON documents (checkpoint metadata, bundle manifests).

Both share the same first checks - valid JSON, an object, required keys, a supported
schema version - and the same one-line errors naming the file; each caller adds its own.
"""

import json
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

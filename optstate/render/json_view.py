"""The JSON view: plain ``json.dumps`` of a report dict, nothing through rich."""

from __future__ import annotations

import json
from typing import Any


def dumps(report: dict[str, Any]) -> str:
    # allow_nan=False: a NaN that slipped through is a bug, not invalid JSON on stdout.
    return json.dumps(report, indent=2, allow_nan=False, sort_keys=False)

"""Per-export pseudonyms for annotators: exports and reports tell annotators apart without their ids.

An annotator's public id once acted as a credential, and an export is a file that travels; so exports
name annotators by a keyed hash of the id under a key made for that one export: the same annotator has the
same pseudonym throughout one file, a different one in the next, and no pseudonym means anything to the
API.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets

PREFIX = "annotator-"


class Pseudonyms:
    """Pseudonyms of one export (make a new one per export)."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    def __call__(self, public_id: str) -> str:
        return PREFIX + hmac.new(self._key, public_id.encode(), hashlib.sha256).hexdigest()[:12]

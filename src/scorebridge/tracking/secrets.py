"""No secret is logged: values of secret-named env vars and config keys, the CDS API key
(env or `~/.cdsapirc`) and credentials in URLs are masked in params, tags and text artifacts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

from ..provenance import is_secret_key
from .uri import CRED_RE, strip_credentials

__all__ = ["Scrubber", "secret_values"]


def _cdsapirc_secrets() -> list[str]:
    path = Path(os.environ.get("CDSAPI_RC", "~/.cdsapirc")).expanduser()
    out = []
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            if key.strip().lower() == "key" and value.strip():
                out.append(value.strip())
    return out


class Scrubber:
    """Masks secrets in text: values of secret-named env vars, the CDS key, credentials in
    URLs, and any extra values given (e.g. the redacted values of the config)."""

    def __init__(self, extra: list[str] | tuple[str, ...] = ()):
        values = set(extra)
        for name, value in os.environ.items():
            if is_secret_key(name) and value:
                values.add(value)
        values.update(_cdsapirc_secrets())
        for v in list(values):
            # a CDS key "uid:apikey" also leaks if only its second half is logged
            if ":" in v:
                values.update(p for p in v.split(":") if len(p) >= 8)
        # too short to be a real secret and would mask ordinary text
        self.values = sorted((v for v in values if len(v) >= 6), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        text = strip_credentials(text)
        for v in self.values:
            if v in text:
                text = text.replace(v, "***")
        return text

    def leaks(self, data: bytes) -> bool:
        if CRED_RE.search(data.decode("utf-8", "replace")):
            return True
        return any(v.encode() in data for v in self.values)


def secret_values(obj: Any) -> list[str]:
    """String values stored under secret-named keys (anywhere in a nested config)."""
    out: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if is_secret_key(k):
                out += [str(x) for x in _leaves(v) if x not in (None, "")]
            else:
                out += secret_values(v)
    elif isinstance(obj, list):
        for v in obj:
            out += secret_values(v)
    return out


def _leaves(obj: Any) -> Iterator[Any]:
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _leaves(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _leaves(v)
    else:
        yield obj

"""Secrets: which environment variables hold them, and masking their values in what we write.

The first line of defence is that runs never get them: the sandbox passes an allowlist of
variables (harness.sandbox), and `is_secret_name` refuses a secret even when a user lists it in
`[session] env`. The second line is `scrub`: the ledger, the logs and the report replace any
known secret value with `[redacted NAME]`, in case one reached a run some other way (a file, a
command-line argument) and was printed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

# Names whose values are credentials (README "The sandbox"): API keys, tokens, secrets, passwords and the
# cloud providers' credential variables. Matched on the upper-cased name.
_SECRET_NAME = re.compile(
    r"(?:^|_)(?:API_?KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?|PRIVATE_KEY|ACCESS_KEY(?:_ID)?|AUTH)(?:_|$)"
    r"|^(?:AWS|AZURE|GOOGLE|GCLOUD|GCP|CLOUDSDK)_|^SSH_AUTH_SOCK$|^GH_|^GITHUB_TOKEN$|^NETRC$"
)
MIN_SECRET_LEN = 8  # shorter values ("1", "true") would mask ordinary text everywhere


def is_secret_name(name: str) -> bool:
    """Whether an environment variable of this name holds a credential."""
    return bool(_SECRET_NAME.search(name.upper()))


def secret_values(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """{value: name} of the secrets in `environ` (default: ours), longest value first."""
    env = os.environ if environ is None else environ
    found = {v: k for k, v in env.items() if is_secret_name(k) and len(v) >= MIN_SECRET_LEN}
    return dict(sorted(found.items(), key=lambda kv: -len(kv[0])))


def scrub(text: str, secrets: Mapping[str, str] | None = None) -> str:
    """`text` with every known secret value replaced by `[redacted NAME]`."""
    values = secret_values() if secrets is None else secrets
    for value, name in values.items():
        if value in text:
            text = text.replace(value, f"[redacted {name}]")
    return text


def scrub_obj(obj: object, secrets: Mapping[str, str] | None = None) -> object:
    """`scrub` applied to every string inside a JSON-like value (dicts, lists, strings)."""
    values = secret_values() if secrets is None else secrets
    if not values:
        return obj
    if isinstance(obj, str):
        return scrub(obj, values)
    if isinstance(obj, dict):
        return {k: scrub_obj(v, values) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [scrub_obj(v, values) for v in obj]
    return obj


class StreamScrubber:
    """`scrub` over a byte stream that arrives in chunks: a secret split across two chunks is still
    masked, because the last `longest - 1` bytes wait for the next chunk (or `flush`)."""

    def __init__(self, secrets: Sequence[tuple[str, str]] | Mapping[str, str]):
        pairs = secrets.items() if isinstance(secrets, Mapping) else secrets
        self._pairs = [(v.encode(), f"[redacted {k}]".encode()) for v, k in pairs if v]
        self._keep = max((len(v) for v, _ in self._pairs), default=1) - 1
        self._pending = b""

    def feed(self, data: bytes) -> bytes:
        if not self._pairs:
            return data
        buf = self._pending + data
        for value, mask in self._pairs:
            buf = buf.replace(value, mask)
        cut = max(0, len(buf) - self._keep)
        # never hold back a newline's worth of finished text behind a partial match: keep only a tail
        # that could be the start of a secret
        while cut < len(buf) and not any(v.startswith(buf[cut:]) for v, _ in self._pairs):
            cut += 1
        self._pending = buf[cut:]
        return buf[:cut]

    def flush(self) -> bytes:
        out, self._pending = self._pending, b""
        return out

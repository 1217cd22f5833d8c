"""Optional bundle signing: an HMAC-SHA256 over the exact bytes of ``manifest.json``.

The manifest lists every other file of the bundle with its sha256 and size, and :meth:`Bundle.load`
checks them, so a valid signature over the manifest vouches for the whole bundle.

* **The key** comes from the environment variable ``LINEWATCH_BUNDLE_KEY``: ``hex:`` followed by
  hex digits is decoded (``hex:$(openssl rand -hex 32)``); any other value is used as its UTF-8 bytes.
  It must be at least 16 bytes. A variable that is set but empty, malformed or too short is an
  error, never "no key" (a missing secret must not turn verification off silently).
* **Signing**: ``write_bundle`` writes ``BUNDLE/manifest.sig`` (64 hex digits and a newline) when
  the key is set; ``linewatch sign --bundle B`` signs an existing bundle after verifying it.
* **Verifying** (in :meth:`Bundle.load`, before the manifest is parsed): with the key set, a bundle
  without ``manifest.sig``, or whose signature does not match, is refused. Without the key a
  signature is not checked (there is nothing to check it with) and the bundle loads as before;
  ``Bundle.signature`` says which of these happened.

Only the standard library is used (``hmac``, ``hashlib``); signatures are compared in constant time.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import tempfile
from pathlib import Path
from typing import Mapping

KEY_ENV = "LINEWATCH_BUNDLE_KEY"
SIGNATURE_NAME = "manifest.sig"
MIN_KEY_BYTES = 16

VERIFIED = "verified"
NOT_CHECKED = f"present, not checked ({KEY_ENV} is not set)"
UNSIGNED = "none"


class SigningError(ValueError):
    """A bad key, or a bundle whose signature is missing or wrong; the message says what to do."""


def key_from_env(environ: Mapping[str, str] | None = None) -> bytes | None:
    """The signing key from ``LINEWATCH_BUNDLE_KEY``, or ``None`` when the variable is not set."""
    env = os.environ if environ is None else environ
    value = env.get(KEY_ENV)
    if value is None:
        return None
    if value.startswith("hex:"):
        try:
            key = bytes.fromhex(value[4:])
        except ValueError as exc:
            raise SigningError(f"{KEY_ENV} starts with 'hex:' but the rest is not hex digits; "
                               "fix the variable (e.g. hex:$(openssl rand -hex 32))") from exc
    else:
        key = value.encode("utf-8")
    if len(key) < MIN_KEY_BYTES:
        raise SigningError(f"{KEY_ENV} is set but holds {len(key)} bytes, fewer than {MIN_KEY_BYTES}; use a longer "
                           f"key (e.g. hex:$(openssl rand -hex 32)), or unset it to accept unsigned bundles")
    return key


def manifest_signature(key: bytes, manifest_bytes: bytes) -> str:
    """HMAC-SHA256 of the manifest bytes under ``key``: 64 lowercase hex digits."""
    return hmac.new(key, manifest_bytes, hashlib.sha256).hexdigest()


def write_signature(root: str | os.PathLike, key: bytes, manifest_name: str = "manifest.json") -> Path:
    """Sign ``root/manifest.json`` into ``root/manifest.sig`` (written to a temporary file, then renamed)."""
    root = Path(root)
    sig = manifest_signature(key, (root / manifest_name).read_bytes())
    fd, tmp = tempfile.mkstemp(prefix=f".{SIGNATURE_NAME}.", dir=root)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(sig + "\n")
            f.flush()
            os.fsync(f.fileno())
        mask = os.umask(0o022)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, root / SIGNATURE_NAME)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return root / SIGNATURE_NAME


def check_signature(root: str | os.PathLike, manifest_bytes: bytes, key: bytes | None) -> str:
    """Check ``root/manifest.sig`` against the manifest bytes -> ``VERIFIED``, ``NOT_CHECKED`` or ``UNSIGNED``.

    Raises :class:`SigningError` when ``key`` is given and the signature is missing or does not match.
    """
    root = Path(root)
    sig_path = root / SIGNATURE_NAME
    if key is None:
        return NOT_CHECKED if sig_path.exists() else UNSIGNED
    if not sig_path.is_file():
        raise SigningError(f"{root}: the bundle is not signed ({SIGNATURE_NAME} is missing) and {KEY_ENV} is set, so "
                           f"only signed bundles are accepted; sign it with `linewatch sign --bundle {root}` using "
                           f"the same key where the bundle was made, or unset {KEY_ENV} to accept unsigned bundles")
    given = sig_path.read_bytes().strip().lower()
    want = manifest_signature(key, manifest_bytes).encode("ascii")
    if not hmac.compare_digest(given, want):
        raise SigningError(f"{sig_path}: the signature does not match manifest.json under the key in {KEY_ENV}: the "
                           "manifest was changed after signing, or the bundle was signed with another key; do not "
                           "use it: copy the bundle again from its source (or re-sign it if you trust its origin)")
    return VERIFIED


def sign_bundle(path: str | os.PathLike, key: bytes | None = None) -> Path:
    """Verify a bundle's files against its manifest, then sign the manifest; returns ``manifest.sig``.

    ``key`` defaults to ``LINEWATCH_BUNDLE_KEY``; without either, :class:`SigningError`.
    """
    from .bundle import MANIFEST_NAME, Bundle     # bundle.py imports this module

    key = key if key is not None else key_from_env()
    if key is None:
        raise SigningError(f"no signing key: set {KEY_ENV} (e.g. hex:$(openssl rand -hex 32)) and sign again")
    bundle = Bundle.load(path, check_signature=False)     # never sign a damaged bundle
    return write_signature(bundle.path, key, MANIFEST_NAME)


__all__ = ["KEY_ENV", "SIGNATURE_NAME", "MIN_KEY_BYTES", "VERIFIED", "NOT_CHECKED", "UNSIGNED", "SigningError",
           "key_from_env", "manifest_signature", "write_signature", "check_signature", "sign_bundle"]

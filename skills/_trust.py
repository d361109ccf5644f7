"""Signed skill boxes and explicit trust.

A box's manifest is signed with Ed25519. The signature covers the manifest's canonical JSON: its
name, provenance, the sha256 of every file and the self-check result; other validation sections
(the dev-set validation) are recorded later and stay outside it. A box is trusted when

- a trusted key signed it: this machine's own key (made on first use in the user config dir),
  a key in the config dir's `trusted-keys` file, or one given as `--trust ed25519:...`; or
- its manifest digest is pinned: `--trust sha256:...` (or that line in `trusted-keys`).

Anything else is refused with one line that says how to trust it; `--allow-unsigned` is for
development, and then no recorded self-check is shown as if it were vouched for.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from trajdistill.envs import ConfigError

SIGNATURE = "signature"  # the manifest field that holds the signature, outside what it signs
SIGNED_SECTIONS = ("self_check",)  # validation sections the signature covers
KEY_FILE = "signing-key.pem"
TRUST_FILE = "trusted-keys"
KEY_PREFIX, DIGEST_PREFIX = "ed25519:", "sha256:"
DOMAIN = b"trajdistill skill box manifest v1\n"  # a box signature can never pass for another message


def config_dir() -> Path:
    """$TRAJDISTILL_CONFIG_DIR, else $XDG_CONFIG_HOME/trajdistill, else ~/.config/trajdistill."""
    explicit = os.environ.get("TRAJDISTILL_CONFIG_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base).expanduser() / "trajdistill"


# --------------------------------------------------------------------------- keys


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return KEY_PREFIX + base64.b64encode(raw).decode()


def public_key(kid: str) -> Ed25519PublicKey:
    """The key a `ed25519:<base64>` id names; ValueError when it is not one."""
    try:
        raw = base64.b64decode(kid.removeprefix(KEY_PREFIX), validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{kid!r} is not an Ed25519 key id (ed25519:<base64 of 32 bytes>)") from None


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """An Ed25519 private key from a PEM file; ValueError with one line otherwise."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"cannot read a signing key from {path}: {str(e).splitlines()[0] if str(e) else e}") \
            from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def local_key_path() -> Path:
    return config_dir() / KEY_FILE


def local_key() -> Ed25519PrivateKey:
    """This machine's signing key, made on first use (readable by its owner only)."""
    path = local_key_path()
    if path.exists():
        return load_private_key(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    try:
        os.link(tmp, path)  # never replace a key another process made meanwhile
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return load_private_key(path)


def local_key_id() -> str | None:
    """The id of this machine's key, without making one."""
    return key_id(load_private_key(local_key_path()).public_key()) if local_key_path().exists() else None


# --------------------------------------------------------------------------- what is signed


def signed_payload(manifest: dict[str, Any]) -> bytes:
    """The canonical bytes a signature and a pinned digest cover."""
    body = {k: copy.deepcopy(v) for k, v in manifest.items() if k != SIGNATURE}
    validation = body.get("validation") or {}
    body["validation"] = {k: v for k, v in validation.items() if k in SIGNED_SECTIONS}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def manifest_digest(manifest: dict[str, Any]) -> str:
    return DIGEST_PREFIX + hashlib.sha256(signed_payload(manifest)).hexdigest()


def sign_manifest(manifest: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, str]:
    """The signature block for `manifest`."""
    value = key.sign(DOMAIN + signed_payload(manifest))
    return {"algorithm": "ed25519", "key": key_id(key.public_key()), "value": base64.b64encode(value).decode()}


def signature_valid(manifest: dict[str, Any]) -> bool:
    sig = manifest.get(SIGNATURE)
    if not isinstance(sig, dict) or not isinstance(sig.get("key"), str) or not isinstance(sig.get("value"), str):
        return False
    try:
        public_key(sig["key"]).verify(base64.b64decode(sig["value"], validate=True), DOMAIN + signed_payload(manifest))
    except (ValueError, binascii.Error, InvalidSignature):
        return False
    return True


# --------------------------------------------------------------------------- trust


def normalize(value: str) -> str:
    """A `--trust` value as a key id or a digest: `ed25519:...`, `sha256:...`, or a PEM key file."""
    value = value.strip()
    if value.startswith(KEY_PREFIX):
        public_key(value)
        return value
    if value.startswith(DIGEST_PREFIX):
        hexpart = value.removeprefix(DIGEST_PREFIX)
        if len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
            raise ConfigError(f"{value!r} is not a manifest digest (sha256:<64 hex digits>)")
        return value
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(f"--trust {value!r} is not ed25519:KEY, sha256:DIGEST or a key file")
    data = path.read_bytes()
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        return key_id(load_private_key(path).public_key())
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key_id(key)


def trust_file_entries() -> list[str]:
    path = config_dir() / TRUST_FILE
    if not path.is_file():
        return []
    lines = (ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines())
    return [ln for ln in lines if ln]


def add_trusted(value: str) -> str:
    """Append a key id or digest to the trust file; returns the normalized entry."""
    entry = normalize(value)
    if entry not in trust_file_entries():
        path = config_dir() / TRUST_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(entry + "\n")
    return entry


@dataclass(frozen=True)
class Trust:
    """What a box must match to be used: extra `--trust` values on top of the local key and the trust file."""

    extra: tuple[str, ...] = ()
    allow_unsigned: bool = False

    @classmethod
    def of(cls, values: Iterable[str] = (), allow_unsigned: bool = False) -> "Trust":
        return cls(tuple(normalize(v) for v in values), allow_unsigned)

    def entries(self) -> set[str]:
        local = local_key_id()
        return {*self.extra, *trust_file_entries(), *([local] if local else [])}


@dataclass(frozen=True)
class Verdict:
    """How a box came to be trusted. `vouched`: its recorded self-check is covered by a signature or pin."""

    how: str
    vouched: bool


def check_trust(path: Path, manifest: dict[str, Any], trust: Trust) -> Verdict:
    """The verdict for a box, or ValueError with one line that says how to trust it."""
    entries = trust.entries()
    digest = manifest_digest(manifest)
    if digest in entries:
        return Verdict(f"pinned by its manifest digest {digest}", True)
    sig = manifest.get(SIGNATURE)
    if sig is None:
        problem = (f"skill box {path} is unsigned; sign it with `trajdistill skills sign {path}`, "
                   f"pin it with --trust {digest}")
    elif not signature_valid(manifest):
        problem = (f"skill box {path}: its signature does not match the manifest (it changed after signing); "
                   f"if you made the change, re-sign it with `trajdistill skills sign {path}`")
    elif sig["key"] not in entries:
        problem = (f"skill box {path} is signed by {sig['key']}, which is not trusted; pass --trust {sig['key']}, "
                   f"or trust it everywhere with `trajdistill skills trust {sig['key']}`")
    else:
        mine = " (this machine's key)" if sig["key"] == local_key_id() else ""
        return Verdict(f"signed by {sig['key']}{mine}", True)
    if trust.allow_unsigned:
        return Verdict(f"NOT VERIFIED, allowed for development: {problem.split(';')[0]}", False)
    raise ConfigError(f"{problem}, or pass --allow-unsigned for development")

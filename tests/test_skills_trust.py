"""Signed skill boxes and explicit trust: mine and sign, then serve, --skills and inspect verify against
trusted keys (the local key, --trust, the trust file) or a pinned manifest digest. Real Ed25519 keys, real
`skills serve` subprocesses and a real MCP client."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters
from test_skills_serve import make_box

from trajdistill.envs import make_env
from trajdistill.skills import BoxError, SkillBox, mount_skills

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # the `none` sandbox warns that it is unconfined


def cli(*args: str | Path) -> subprocess.CompletedProcess:
    # COLUMNS: rich would wrap a long path at the 80 columns of a pipe; the messages themselves are one line
    return subprocess.run([sys.executable, "-m", "trajdistill", *map(str, args)], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "2000"})


def one_error_line(res: subprocess.CompletedProcess) -> str:
    assert res.returncode != 0, res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def other_key(tmp_path: Path) -> tuple[Path, str]:
    """A signing key that is not this machine's: its PEM file and its public key id."""
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "other.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return path, "ed25519:" + base64.b64encode(raw).decode()


def forge_tool(box_path: Path) -> None:
    """The attack from issue 17: edit a tool, then write its new sha256 into the manifest."""
    tool = box_path / "tools" / "add_numbers.py"
    tool.write_text(tool.read_text().replace("return a + b", "return a - b"))
    manifest = json.loads((box_path / "skillbox.json").read_text())
    manifest["files"]["tools/add_numbers.py"] = hashlib.sha256(tool.read_bytes()).hexdigest()
    (box_path / "skillbox.json").write_text(json.dumps(manifest, indent=2))


async def served_tools(box_path: Path, *extra: str) -> list[str]:
    params = StdioServerParameters(command=sys.executable, args=["-m", "trajdistill", "skills", "serve",
                                                                 str(box_path), "--sandbox", "none", *extra],
                                   env={"TRAJDISTILL_CONFIG_DIR": os.environ["TRAJDISTILL_CONFIG_DIR"]})
    async with Client(params) as client:
        return sorted(t.name for t in (await client.list_tools()).tools)


@pytest.fixture
def box(tmp_path) -> SkillBox:
    return make_box(tmp_path / "box", tools=("add_numbers",))


@pytest.fixture
def unsigned(tmp_path) -> SkillBox:
    return make_box(tmp_path / "unsigned", tools=("add_numbers",), sign=False)


def test_a_written_box_is_signed_by_the_local_key_kept_in_the_config_dir(box):
    config = Path(os.environ["TRAJDISTILL_CONFIG_DIR"])
    key_file = config / "signing-key.pem"
    assert key_file.is_file() and key_file.stat().st_mode & 0o077 == 0  # private to its owner
    signature = json.loads((box.path / "skillbox.json").read_text())["signature"]
    assert signature["key"].startswith("ed25519:") and signature["value"]
    res = cli("skills", "inspect", box.path)
    assert res.returncode == 0, res.stderr
    assert f"signed by {signature['key']}" in res.stdout and "this machine's key" in res.stdout


def test_a_forged_tool_with_a_rewritten_hash_is_refused_by_inspect_serve_and_mount(box):
    forge_tool(box.path)
    SkillBox.load(box.path)  # the hashes match again: only the signature can tell
    line = one_error_line(cli("skills", "inspect", box.path))
    assert "signature does not match" in line
    assert "signature does not match" in one_error_line(cli("skills", "serve", box.path, "--sandbox", "none"))
    with pytest.raises(ValueError, match="signature does not match"):
        mount_skills(make_env("math"), [str(box.path)], sandbox="none")


def test_an_unsigned_box_is_refused_with_one_line_saying_how_to_trust_it(unsigned):
    digest = SkillBox.load(unsigned.path).digest
    for res in (cli("skills", "inspect", unsigned.path), cli("skills", "serve", unsigned.path, "--sandbox", "none")):
        line = one_error_line(res)
        assert "is unsigned" in line and f"--trust {digest}" in line and "--allow-unsigned" in line
        assert res.stdout == ""  # nothing was shown or served
    with pytest.raises(BoxError, match="is unsigned"):
        mount_skills(make_env("math"), [str(unsigned.path)], sandbox="none")


async def test_allow_unsigned_and_a_pinned_digest_serve_it_to_a_real_client(unsigned):
    digest = SkillBox.load(unsigned.path).digest
    assert await served_tools(unsigned.path, "--allow-unsigned") == ["add_numbers"]
    assert await served_tools(unsigned.path, "--trust", digest) == ["add_numbers"]
    forge_tool(unsigned.path)  # a pin covers the content: a changed box no longer matches it
    assert "is unsigned" in one_error_line(cli("skills", "serve", unsigned.path, "--trust", digest))


async def test_a_box_signed_by_another_key_needs_that_key_trusted(box, tmp_path):
    key_file, key_id = other_key(tmp_path)
    res = cli("skills", "sign", box.path, "--key", key_file, "--sandbox", "none")
    assert res.returncode == 0, res.stderr
    line = one_error_line(cli("skills", "serve", box.path, "--sandbox", "none"))
    assert f"signed by {key_id}, which is not trusted" in line and f"--trust {key_id}" in line
    assert await served_tools(box.path, "--trust", key_id) == ["add_numbers"]
    with pytest.raises(BoxError, match="not trusted"):
        mount_skills(make_env("math"), [str(box.path)], sandbox="none")
    env = mount_skills(make_env("math"), [str(box.path)], sandbox="none", trust=[key_id])
    try:
        assert "add_numbers" in [t.name for t in env.tools()]  # the serve subprocess got the trust too
    finally:
        await env.close()
    # the trust file in the user config trusts it everywhere, without a flag
    assert cli("skills", "trust", key_id).returncode == 0
    assert key_id in (Path(os.environ["TRAJDISTILL_CONFIG_DIR"]) / "trusted-keys").read_text()
    assert await served_tools(box.path) == ["add_numbers"]


def test_collect_refuses_an_unsigned_box_and_allow_unsigned_mounts_it(unsigned, tmp_path):
    base = ("collect", "--env", "math", "--teacher", "expert:reasoner", "--tasks", "1", "--split", "train",
            "--sandbox", "none", "--skills", unsigned.path)
    assert "is unsigned" in one_error_line(cli(*base, "--out", tmp_path / "run"))
    res = cli(*base, "--out", tmp_path / "run2", "--allow-unsigned")
    assert res.returncode == 0, res.stderr[-2000:]


def test_eval_refuses_an_unsigned_box_and_allow_unsigned_mounts_it(unsigned, tmp_path):
    base = ("eval", "--env", "math", "--agent", "expert:reasoner", "--tasks", "1", "--max-steps", "2",
            "--sandbox", "none", "--skills", unsigned.path)
    assert "is unsigned" in one_error_line(cli(*base, "--out", tmp_path / "ev"))
    res = cli(*base, "--out", tmp_path / "ev2", "--allow-unsigned")
    assert res.returncode == 0, res.stderr[-2000:]


def test_inspect_never_shows_an_unsigned_self_check_claim(unsigned):
    manifest = json.loads((unsigned.path / "skillbox.json").read_text())
    manifest["validation"]["self_check"] = {"ok": True, "checked_at": "2026-01-01T00:00:00Z", "sandbox": "docker",
                                            "tools": {"add_numbers": {"passed": 99, "failed": 0}}}
    (unsigned.path / "skillbox.json").write_text(json.dumps(manifest))
    res = cli("skills", "inspect", unsigned.path, "--allow-unsigned")
    assert res.returncode == 0, res.stderr
    assert "99 tool tests passed" not in res.stdout and "not signed" in res.stdout
    fresh = cli("skills", "inspect", unsigned.path, "--allow-unsigned", "--check", "--sandbox", "none")
    assert fresh.returncode == 0, fresh.stderr
    assert "self-check passed (fresh run" in fresh.stdout and "1 tool tests passed" in fresh.stdout


def test_sign_reruns_the_self_check_and_the_signature_covers_it(unsigned):
    manifest = json.loads((unsigned.path / "skillbox.json").read_text())
    manifest["validation"]["self_check"] = {"ok": True, "tools": {"add_numbers": {"passed": 99, "failed": 0}}}
    (unsigned.path / "skillbox.json").write_text(json.dumps(manifest))
    assert cli("skills", "sign", unsigned.path, "--sandbox", "none").returncode == 0
    box = SkillBox.load(unsigned.path)
    assert box.validation["self_check"]["tools"]["add_numbers"]["passed"] == 1  # a fresh run, not the claim
    out = cli("skills", "inspect", unsigned.path).stdout
    assert "self-check passed" in out and "signed" in out
    # editing the signed self-check breaks the signature; a dev_eval section is outside it
    box.record_validation("dev_eval", {"delta": 0.1})
    assert cli("skills", "inspect", unsigned.path).returncode == 0
    signed = json.loads((unsigned.path / "skillbox.json").read_text())
    signed["validation"]["self_check"]["ok"] = False
    (unsigned.path / "skillbox.json").write_text(json.dumps(signed))
    assert "signature does not match" in one_error_line(cli("skills", "inspect", unsigned.path))


@pytest.mark.parametrize("plant, what", [
    (lambda p: os.mkfifo(p / "tools" / "pipe"), "tools/pipe"),
    (lambda p: (p / "tools" / "hidden").mkdir(), "tools/hidden"),
    (lambda p: (p / "extra-dir").mkdir(), "extra-dir"),
])
def test_extra_fifos_and_directories_are_refused(box, plant, what):
    plant(box.path)
    with pytest.raises(BoxError, match=f"extra .*{what}"):
        SkillBox.load(box.path)


def test_a_manifest_that_is_a_fifo_is_refused_without_blocking(box):
    fifo = box.path / "skillbox.json"
    fifo.unlink()
    os.mkfifo(fifo)
    errors: list[BaseException] = []

    def load() -> None:
        try:
            SkillBox.load(box.path)
        except BaseException as e:  # noqa: BLE001 - the main thread checks what it was
            errors.append(e)

    reader = threading.Thread(target=load, daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # let the stuck reader go
        reader.join(5)
        pytest.fail("loading the box blocked on a FIFO manifest")
    assert len(errors) == 1 and isinstance(errors[0], BoxError) and "not a regular file" in str(errors[0])

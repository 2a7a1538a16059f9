"""Claude Code under a user of its own (``CLAUDE__RUN_AS_USER``): what it may not reach of the worker.

The process test runs the worker's real start-up step (:func:`identity.prepare`) in a root process
and starts a child the way claude-agent-sdk starts the CLI (``user=``); the kernel then decides.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ccproxy_core.server import StartupError
from ccproxy_core.settings import SECRETS_DIR_ENV, Settings
from ccproxy_sdk_worker.identity import RunAs, exposed_secrets, parse_run_as, readable_by

NOBODY = 65534


def test_settings_read_secret_files_nested_like_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "security__internal_secret").write_text("from-a-file-0123456789\n")
    (tmp_path / "redis__url").write_text("redis://:pw@redis:6379/0")
    monkeypatch.chdir(tmp_path.parent)
    monkeypatch.setenv(SECRETS_DIR_ENV, str(tmp_path))
    monkeypatch.delenv("REDIS__URL", raising=False)
    monkeypatch.delenv("SECURITY__INTERNAL_SECRET", raising=False)
    settings = Settings()
    assert settings.security.internal_secret is not None
    assert settings.security.internal_secret.get_secret_value() == "from-a-file-0123456789"
    assert settings.redis.url == "redis://:pw@redis:6379/0"
    monkeypatch.setenv("REDIS__URL", "redis://elsewhere:6379/1")  # the environment wins
    assert Settings().redis.url == "redis://elsewhere:6379/1"
    monkeypatch.setenv(SECRETS_DIR_ENV, str(tmp_path / "missing"))
    with pytest.raises(Exception, match="does not exist"):
        Settings()


def test_parse_run_as() -> None:
    assert parse_run_as("4242:4243") == RunAs(4242, 4243)
    assert parse_run_as(f"nobody:{NOBODY}").uid == NOBODY
    for root in ("0:1000", "1000:0", "root"):
        with pytest.raises(StartupError, match="root"):
            parse_run_as(root)
    with pytest.raises(StartupError, match="no user"):
        parse_run_as("no-such-user-here")


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user may enter (pytest's tmp_path lies in one only its owner may)."""
    path = Path(tempfile.mkdtemp(dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_readable_by_follows_the_directories_above(open_dir: Path) -> None:
    tmp_path = open_dir
    stranger = RunAs(os.getuid() + 4242, os.getgid() + 4242)
    owner = RunAs(os.getuid(), os.getgid() + 4242)
    box = tmp_path / "box"
    box.mkdir()
    secret = box / "s"
    secret.write_text("x")
    box.chmod(0o755)
    secret.chmod(0o644)
    assert readable_by(secret, stranger) and exposed_secrets(box, stranger) == [secret]
    secret.chmod(0o600)
    assert not readable_by(secret, stranger) and readable_by(secret, owner)
    secret.chmod(0o644)
    box.chmod(0o700)  # the file is readable, the directory closed: out of reach
    assert not readable_by(secret, stranger) and exposed_secrets(box, stranger) == []
    assert readable_by(secret, owner)  # its owner may enter


CHILD = r"""
import json, os, signal, subprocess, sys, time
from ccproxy_core.settings import Settings
from ccproxy_sdk_worker.identity import prepare
settings = Settings()
secret = settings.security.internal_secret.get_secret_value()
who = prepare(settings)
# What claude-agent-sdk does: the CLI started with user=<uid>, our environment plus a marker.
probe = ("id -u; id -g; id -G; cat /proc/$PPID/environ; kill -0 $PPID; cat %s/security__internal_secret; "
         "echo probe-done; sleep 30") % os.environ["CCPROXY_SECRETS_DIR"]
child = subprocess.Popen(["sh", "-c", probe], user=who.uid, cwd="/", stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env={"PATH": os.environ["PATH"], "RUN_MARK": "job-1"})
lines = []
for line in child.stdout:
    lines.append(line.rstrip("\n"))
    if line.startswith("probe-done"):
        break
# The worker still reaches the CLI: its /proc entries (leftover search) and signals (stopping a run).
marker_seen = b"RUN_MARK=job-1" in open(f"/proc/{child.pid}/environ", "rb").read().split(b"\0")
os.kill(child.pid, signal.SIGKILL)
child.wait(10)
print(json.dumps({"uids": os.getresuid(), "gids": os.getresgid(), "groups": os.getgroups(), "probe": lines,
                  "marker_seen": marker_seen, "killed": child.returncode, "secret": secret}))
"""


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="changing user needs root")
def test_the_cli_user_cannot_reach_the_worker_and_the_worker_reaches_it(tmp_path: Path) -> None:
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir(mode=0o700)
    secret = "internal-" + os.urandom(8).hex()
    path = secrets_dir / "security__internal_secret"
    path.write_text(secret)
    # Owned by the CLI's own user, as a .env made by the host user leaves it: only the directory
    # (root's, 0700) keeps the CLI out.
    os.chown(path, NOBODY, NOBODY)
    path.chmod(0o400)
    env = {**os.environ, SECRETS_DIR_ENV: str(secrets_dir), "CLAUDE__RUN_AS_USER": f"{NOBODY}:{NOBODY}"}
    env.pop("SECURITY__INTERNAL_SECRET", None)
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["secret"] == secret  # read before the switch
    assert result["uids"] == [0, NOBODY, 0] and result["gids"] == [NOBODY] * 3 and result["groups"] == []
    probe = "\n".join(result["probe"])
    assert result["probe"][:3] == [str(NOBODY), str(NOBODY), str(NOBODY)], probe  # no root group left
    assert "environ: Permission denied" in probe and "Operation not permitted" in probe, probe
    assert "security__internal_secret: Permission denied" in probe, probe
    assert secret not in probe and "CLAUDE__RUN_AS_USER" not in probe
    assert result["marker_seen"] is True and result["killed"] == -9


def test_prepare_refuses_secrets_the_cli_user_could_read(open_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ccproxy_sdk_worker.identity import prepare

    tmp_path = open_dir
    secrets_dir = tmp_path / "open"
    secrets_dir.mkdir()
    (secrets_dir / "security__internal_secret").write_text("x" * 20)
    secrets_dir.chmod(0o755)
    (secrets_dir / "security__internal_secret").chmod(0o644)
    monkeypatch.setenv(SECRETS_DIR_ENV, str(secrets_dir))
    monkeypatch.chdir(tmp_path)
    settings = Settings(claude={"run_as_user": f"{os.geteuid() + 4242}:{os.getegid() + 4242}"})
    with pytest.raises(StartupError, match="security__internal_secret can be read"):
        prepare(settings)

"""Claude Code under a user of its own (``CLAUDE__RUN_AS_USER``), out of the worker's reach: under the
worker's user the agent's commands could read its environ, memory and secret files, then approve
their own permissions or rewrite budgets in Redis. The worker starts as root with only CAP_SETUID,
CAP_SETGID and CAP_DAC_READ_SEARCH (compose), reads its settings and secrets, then :func:`prepare`.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from ccproxy_core.server import StartupError
from ccproxy_core.settings import SECRETS_DIR_ENV, Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunAs:
    uid: int
    gid: int


def parse_run_as(value: str) -> RunAs:
    """``UID[:GID]`` or ``user[:group]``; without a group, the user's own (from /etc/passwd)."""
    user, _, group = value.strip().partition(":")
    try:
        uid = int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid
    except KeyError:
        raise StartupError(f"CLAUDE__RUN_AS_USER: no user {user!r} here; give a numeric UID:GID") from None
    try:
        if group:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        else:
            gid = pwd.getpwuid(uid).pw_gid
    except KeyError:
        what = f"no group {group!r} here; give a numeric GID" if group else f"uid {uid} has no entry here; give UID:GID"
        raise StartupError(f"CLAUDE__RUN_AS_USER: {what}") from None
    if uid == 0 or gid == 0:
        raise StartupError("CLAUDE__RUN_AS_USER must not be root (uid or gid 0): Claude Code runs the agent's commands")
    return RunAs(uid, gid)


def _allows(st: os.stat_result, who: RunAs, bit: int) -> bool:
    """Whether ``who`` (one group only) gets ``bit`` (4 read, 1 search) on a file of this mode."""
    if st.st_uid == who.uid:
        return bool(st.st_mode & (bit << 6))
    if st.st_gid == who.gid:
        return bool(st.st_mode & (bit << 3))
    return bool(st.st_mode & bit)


def readable_by(path: Path, who: RunAs) -> bool:
    """Whether ``who`` could open ``path`` for reading, by the mode bits of it and of every
    directory above it (ACLs are not looked at; compose uses none)."""
    path = Path(os.path.abspath(path))
    for directory in reversed(path.parents):
        if not _allows(directory.stat(), who, 1):
            return False
    return _allows(path.stat(), who, 4)


def exposed_secrets(secrets_dir: Path, who: RunAs) -> list[Path]:
    return [entry for entry in sorted(secrets_dir.iterdir()) if entry.is_file() and readable_by(entry, who)]


def prepare(settings: Settings) -> RunAs | None:
    """Become what runs Claude Code as ``CLAUDE__RUN_AS_USER``; None when it is unset or is this
    process's own user (then nothing changes)."""
    value = settings.claude.run_as_user
    if not value:
        return None
    who = parse_run_as(value)
    if who.uid == os.geteuid():
        log.warning("CLAUDE__RUN_AS_USER is the worker's own user: Claude Code can read the worker's memory")
        return None
    secrets_dir = os.environ.get(SECRETS_DIR_ENV)
    exposed = exposed_secrets(Path(secrets_dir), who) if secrets_dir else []
    if exposed:
        names = ", ".join(p.name for p in exposed)
        raise StartupError(
            f"{SECRETS_DIR_ENV}: {names} can be read by CLAUDE__RUN_AS_USER ({who.uid}), so Claude Code could "
            "read them: mount the secret files in a directory only root may enter (compose: /etc/ccproxy/secrets)"
        )
    try:
        os.setgroups([])  # the CLI's group as the only one: claude-agent-sdk's ``user`` sets no group
        os.setresgid(who.gid, who.gid, who.gid)
        # Effective uid the CLI's (its file access, no capability in effect), real and saved root's: we
        # may signal the CLI and read its /proc (stopping a run), while the kernel lets it trace, read
        # or signal us only if our real/saved uids were its own. The CLI starts with ``user=who.uid``:
        # setreuid sets all its uids, so it cannot become root again (no-new-privileges: no setuid).
        os.setresuid(0, who.uid, 0)
    except PermissionError:
        raise StartupError(
            "CLAUDE__RUN_AS_USER needs a worker that may change its user: start it as root with CAP_SETUID and "
            "CAP_SETGID (compose.yaml does), or leave it unset"
        ) from None
    log.info("Claude Code runs as uid %d gid %d; the worker keeps real uid %d", who.uid, who.gid, os.getuid())
    return who

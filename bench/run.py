"""The benchmark: every path measured in one run, on one machine, against one fake upstream.

For each target: added latency at concurrency 1, throughput and p99 at concurrency 50 and 200
(wrk, non-streaming), time to the first streamed byte (sequential streams), and peak resident
memory per process while 500 streams are open, once with short and once with long streams (the
memory must not grow with a stream's length). Figures are printed as a table with ratios to the
direct path and written as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench import targets as targets_mod
from bench import wrk
from bench.procs import RssSampler, Service, Skip, tree_cpu, tree_rss
from bench.targets import Context, Target, request_body

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Plan:
    seconds: float = 8.0
    concurrencies: tuple[int, ...] = (50, 200)
    sequential: int = 2000
    ttfb_count: int = 500
    streams: int = 500
    short_events: int = 40
    long_events: int = 400
    stream_delay_ms: int = 25
    warmup: int = 300

    @classmethod
    def quick(cls) -> Plan:
        return cls(seconds=1.0, concurrencies=(50, 200), sequential=200, ttfb_count=50, streams=50,
                   short_events=5, long_events=40, stream_delay_ms=10, warmup=50)


def cpu_layout(pin: bool) -> tuple[set[int] | None, int | None]:
    """Servers on every core but the last; the load generator alone on the last."""
    if not pin or not hasattr(os, "sched_getaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return set(cpus[:-1]), cpus[-1]


def python_client(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.client", orjson.dumps(spec).decode()]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                          cwd=Path(__file__).resolve().parent.parent)
    if done.returncode != 0:
        raise RuntimeError(f"bench.client failed: {done.stderr.strip()[-500:]}")
    result: dict[str, Any] = orjson.loads(done.stdout.strip().splitlines()[-1])
    return result


def upstream_stats(upstream: str) -> dict[str, int]:
    with urllib.request.urlopen(upstream + "/_stats", timeout=5) as resp:  # noqa: S310
        stats: dict[str, int] = orjson.loads(resp.read())
        return stats


class Runner:
    def __init__(self, plan: Plan, client_cpu: int | None, use_wrk: bool, log: Any) -> None:
        self.plan = plan
        self.client_cpu = client_cpu
        self.use_wrk = use_wrk
        self.log = log

    def spec(self, target: Target, body: bytes, **extra: Any) -> dict[str, Any]:
        return {"host": target.host, "port": target.port, "path": target.path, "headers": target.headers,
                "body": body.decode(), "cpu": self.client_cpu, **extra}

    def load(self, target: Target, connections: int) -> dict[str, Any]:
        body = request_body(False, identity=target.identity_in_body)
        before = self.cpu(target)
        if self.use_wrk:
            result = wrk.run(target.url, body, target.headers, connections, self.plan.seconds, self.client_cpu)
        else:
            spec = self.spec(target, body, mode="load", concurrency=connections, seconds=self.plan.seconds)
            result = python_client(spec, self.plan.seconds + 60)
        self.add_cpu(result, target, before, "cpu_us_per_request", result["requests"])
        return result

    @staticmethod
    def cpu(target: Target) -> dict[str, float]:
        return {role: tree_cpu(pid) for role, pid in target.processes.items()}

    def add_cpu(self, result: dict[str, Any], target: Target, before: dict[str, float], key: str, n: int) -> None:
        """CPU time the servers spent, per unit of work: a figure that contention barely moves
        (unlike latency), so it is the one to compare between changes."""
        if not target.processes or not n:
            return
        after = self.cpu(target)
        result[key] = {role: round((after[role] - before[role]) / n * 1e6, 1) for role in before}

    def measure(self, target: Target, upstream: str) -> dict[str, Any]:
        p = self.plan
        out: dict[str, Any] = {"version": target.version}
        before = upstream_stats(upstream)
        plain = request_body(False, identity=target.identity_in_body)
        self.log(f"  warm-up ({p.warmup} requests)")
        warm = python_client(self.spec(target, plain, mode="sequential", count=p.warmup, warmup=0), 300)
        if warm["requests"] == 0 or warm["errors"]:
            raise RuntimeError(f"warm-up failed: {warm['errors']} errors in {p.warmup} requests")
        rss_before = {role: tree_rss(pid) for role, pid in target.processes.items()}
        self.log("  concurrency 1")
        out["c1"] = self.load(target, 1)
        for c in p.concurrencies:
            self.log(f"  concurrency {c}")
            out[f"c{c}"] = self.load(target, c)
        served = sum(out[k]["requests"] for k in ("c1", *(f"c{c}" for c in p.concurrencies)))
        if target.processes and served:
            # Memory kept after the answers went out: should be ~0 for a proxy.
            out["retained_kb_per_1k_requests"] = {
                role: round((tree_rss(pid) - rss_before[role]) / 1024 / served * 1000, 1)
                for role, pid in target.processes.items()
            }
        self.log(f"  first streamed byte ({p.ttfb_count} sequential streams)")
        stream = request_body(True, events=5, delay_ms=0, identity=target.identity_in_body)
        out["ttfb"] = python_client(self.spec(target, stream, mode="sequential", count=p.ttfb_count,
                                              warmup=min(50, p.ttfb_count)), 300)
        out["memory"] = self.memory(target)
        after = upstream_stats(upstream)
        seen = {k: after[k] - before[k] for k in ("requests", "bearer", "oauth_beta", "identity")}
        out["upstream_saw"] = seen
        if target.injects_oauth and not seen["requests"] == seen["bearer"] == seen["oauth_beta"] == seen["identity"]:
            out["warning"] = f"the upstream did not see bearer+betas+identity on every request: {seen}"
        return out

    def memory(self, target: Target) -> dict[str, Any]:
        p = self.plan
        baseline = {role: tree_rss(pid) for role, pid in target.processes.items()}
        result: dict[str, Any] = {"baseline_mb": {r: v / 2**20 for r, v in baseline.items()}, "streams": p.streams}
        for label, events in (("short", p.short_events), ("long", p.long_events)):
            self.log(f"  {p.streams} concurrent {label} streams ({events} events, {p.stream_delay_ms} ms apart)")
            body = request_body(True, events=events, delay_ms=p.stream_delay_ms, identity=target.identity_in_body)
            spec = self.spec(target, body, mode="streams", count=p.streams, timeout=600)
            before = self.cpu(target)
            with RssSampler(target.processes).running() as sampler:
                run = python_client(spec, 900)
            self.add_cpu(run, target, before, "cpu_us_per_event", run["completed"] * (events + 6))
            result[label] = {
                "events": events,
                "completed": run["completed"],
                "errors": run["errors"],
                "seconds": run["seconds"],
                "bytes": run["bytes"],
                "peak_mb": {r: v / 2**20 for r, v in sampler.peak.items()},
                "cpu_us_per_event": run.get("cpu_us_per_event"),
            }
        return result


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError, ValueError):
        mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_mb": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": wrk.available(),
    }


# -- the table -------------------------------------------------------------------------


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(results: dict[str, Any], concurrencies: tuple[int, ...]) -> str:
    direct = results["targets"].get("direct", {})
    d_c1 = direct.get("c1", {}).get("latency", {})
    d_ttfb = direct.get("ttfb", {}).get("first_byte", {})
    head = ["path", "c=1 p50 ms (added)", "c=1 p99 ms (added)"]
    for c in concurrencies:
        head += [f"c={c} req/s (x direct)", f"c={c} p99 ms"]
    head += ["1st byte p50 ms (added)", "peak RSS MB short→long", "KB/stream", "CPU µs/req", "CPU µs/event",
             "KB kept/1k req"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results["targets"].items():
        label = r.get("label", name)
        if "skipped" in r or "failed" in r:
            why = (r.get("skipped") or "failed: " + r["failed"]).splitlines()[0].replace("|", "/")[:160]
            rows.append(f"| {label} | {why} |" + " |" * (len(head) - 2))
            continue
        c1 = r["c1"]["latency"]
        cells = [label]
        for key in ("p50_ms", "p99_ms"):
            added = None if name == "direct" or key not in d_c1 else c1[key] - d_c1[key]
            cells.append(f"{_f(c1[key])}" + ("" if added is None else f" ({added:+.2f})"))
        for c in concurrencies:
            cr = r[f"c{c}"]
            dr = direct.get(f"c{c}", {}).get("rps")
            ratio = f" ({cr['rps'] / dr:.3f}x)" if dr and name != "direct" else ""
            cells += [f"{cr['rps']:.0f}{ratio}", _f(cr["latency"]["p99_ms"])]
        t = r["ttfb"]["first_byte"]["p50_ms"]
        added_t = None if name == "direct" or "p50_ms" not in d_ttfb else t - d_ttfb["p50_ms"]
        cells.append(_f(t) + ("" if added_t is None else f" ({added_t:+.2f})"))
        mem = r.get("memory", {})
        if name == "direct" or not mem:
            cells += ["-", "-", "-", "-", "-"]
        else:
            parts, per_stream = [], []
            for role, base in mem["baseline_mb"].items():
                short, long = mem["short"]["peak_mb"][role], mem["long"]["peak_mb"][role]
                parts.append(f"{role} {short:.0f}→{long:.0f}")
                per_stream.append(max(short, long) - base)
            cells.append(", ".join(parts))
            cells.append(f"{sum(per_stream) * 1024 / mem['streams']:.0f}")
            per_req = r[f"c{concurrencies[0]}"].get("cpu_us_per_request")
            per_event = mem["long"].get("cpu_us_per_event")
            cells.append(f"{sum(per_req.values()):.0f}" if per_req else "-")
            cells.append(f"{sum(per_event.values()):.1f}" if per_event else "-")
            kept = r.get("retained_kb_per_1k_requests")
            cells.append(f"{sum(kept.values()):.0f}" if kept else "-")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def checks(results: dict[str, Any], concurrency: int = 50) -> list[dict[str, Any]]:
    """The targets of issue 9, evaluated on this run's figures (ratios within one run)."""
    t = results["targets"]

    def ok(name: str) -> bool:
        return name in t and "c1" in t[name]

    out: list[dict[str, Any]] = []
    if not ok("direct"):
        return out
    d = t["direct"]
    for name, budget in (("serve", 1.0), ("stack", 2.0)):
        if not ok(name):
            continue
        r = t[name]
        added = r["c1"]["latency"]["p50_ms"] - d["c1"]["latency"]["p50_ms"]
        out.append({"check": f"{name}: added p50 at c=1 <= {budget} ms", "value": round(added, 3),
                    "pass": added <= budget})
        ttfb = r["ttfb"]["first_byte"]["p50_ms"] - d["ttfb"]["first_byte"]["p50_ms"]
        out.append({"check": f"{name}: first streamed byte added <= 1 ms", "value": round(ttfb, 3),
                    "pass": ttfb <= 1.0})
        for peer, factor in (("litellm", 10), ("ccproxy-api", 5)):
            if ok(peer):
                ratio = r[f"c{concurrency}"]["rps"] / max(t[peer][f"c{concurrency}"]["rps"], 1e-9)
                out.append({"check": f"{name}: c={concurrency} throughput >= {factor}x {peer}",
                            "value": round(ratio, 1), "pass": ratio >= factor})
        mem = r.get("memory")
        if mem and mem["short"]["completed"] and mem["long"]["completed"]:
            for role, base in mem["baseline_mb"].items():
                short = mem["short"]["peak_mb"][role] - base
                growth = mem["long"]["peak_mb"][role] - mem["short"]["peak_mb"][role]
                # Flat: streams 20x longer may not cost more than a quarter more memory (+2 MB slack).
                out.append({"check": f"{name}: {role} memory flat in stream length (MB growth short->long)",
                            "value": round(growth, 1), "pass": growth <= max(2.0, 0.25 * short)})
    return out


# -- main ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny run to check the harness works (no peers)")
    parser.add_argument("--targets", default=",".join(targets_mod.TARGETS),
                        help="comma-separated: " + ",".join(targets_mod.TARGETS))
    parser.add_argument("--no-peers", action="store_true", help="skip LiteLLM and ccproxy-api")
    parser.add_argument("--seconds", type=float, help="duration of each wrk run")
    parser.add_argument("--streams", type=int, help="concurrent streams in the memory test")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the load generator to its own core")
    parser.add_argument("--python-client", action="store_true", help="use the Python load client, not wrk")
    parser.add_argument("--upstream-workers", type=int, default=1, help="fake upstream processes")
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args(argv)

    plan = Plan.quick() if args.quick else Plan()
    if args.seconds:
        plan.seconds = args.seconds
    if args.streams:
        plan.streams = args.streams
    chosen = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(chosen) - set(targets_mod.TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    if args.no_peers or (args.quick and args.targets == parser.get_default("targets")):
        chosen = [t for t in chosen if t not in targets_mod.PEERS]
    if "direct" not in chosen:
        chosen.insert(0, "direct")

    use_wrk = wrk.available() and not args.python_client
    server_cpus, client_cpu = cpu_layout(not args.no_pin)
    if server_cpus:
        os.sched_setaffinity(0, server_cpus)  # every server started from here inherits it

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    results: dict[str, Any] = {
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "plan": plan.__dict__ | {"concurrencies": list(plan.concurrencies)},
        "load_generator": "wrk" if use_wrk else "python",
        "pinning": {"servers": sorted(server_cpus) if server_cpus else None, "client": client_cpu},
        "targets": {},
    }
    runner = Runner(plan, client_cpu, use_wrk, log)
    with tempfile.TemporaryDirectory(prefix="ccproxy-bench-") as tmp:
        workdir = Path(tmp)
        log_dir = args.output.parent / "logs"  # kept after the run, for a target that failed
        log_dir.mkdir(parents=True, exist_ok=True)
        upstream_argv = [sys.executable, "-m", "bench.fake_upstream", "--port", "0",
                         "--workers", str(args.upstream_workers)]
        upstream = Service("fake-upstream", upstream_argv, dict(os.environ), Path(__file__).resolve().parent.parent,
                           log_dir)
        try:
            upstream_url = wait_for_upstream(upstream)
            for name in chosen:
                ctx = Context(upstream_url, workdir, log_dir)
                log(f"{name}:")
                entry: dict[str, Any] = {}
                started = time.monotonic()
                try:
                    with targets_mod.TARGETS[name](ctx) as target:
                        entry["label"] = target.name
                        entry.update(runner.measure(target, upstream_url))
                except Skip as exc:
                    entry["skipped"] = str(exc)
                    log(f"  skipped: {exc}")
                except Exception as exc:  # one broken target must not lose the others' figures
                    entry["failed"] = f"{type(exc).__name__}: {exc}"[:600]
                    log(f"  failed: {entry['failed']}")
                finally:
                    for service in reversed(ctx.services):
                        service.stop()
                entry["wall_seconds"] = round(time.monotonic() - started, 1)
                if "warning" in entry:
                    log(f"  WARNING: {entry['warning']}")
                results["targets"][name] = entry
        finally:
            upstream.stop()

    results["checks"] = checks(results)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(table(results, plan.concurrencies))
    for check in results["checks"]:
        print(f"{'PASS' if check['pass'] else 'FAIL'}  {check['check']}: {check['value']}")
    m = results["machine"]
    print(f"\n{m['cpu']}, {m['cores']} cores, load generator: {results['load_generator']}, "
          f"pinning: {results['pinning']}; JSON: {args.output}")
    return 0


def wait_for_upstream(upstream: Service) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = upstream.log_tail()
        if "listening on " in text:
            url = text.split("listening on ", 1)[1].split()[0]
            upstream.wait_http(url + "/health")
            return url
        if upstream.proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"the fake upstream did not start: {upstream.log_tail()}")

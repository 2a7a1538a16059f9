"""The benchmark harness runs end to end (``python -m bench --quick``).

No timing is asserted: only that every stage produced figures, that the streams all completed,
and that requests through ``ccproxy serve`` reached the upstream with the OAuth bearer, the
betas and the Claude Code identity (so the harness measures the real path, not an error page).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_quick_bench_runs(tmp_path: Path) -> None:
    output = tmp_path / "latest.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--targets", "direct,serve,stack", "--streams", "20",
         "--output", str(output)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=240, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(output.read_text())
    assert set(results["targets"]) == {"direct", "serve", "stack"}
    for name, entry in results["targets"].items():
        assert "failed" not in entry and "skipped" not in entry, (name, entry)
        for stage in ("c1", "c50", "c200"):
            assert entry[stage]["requests"] > 0 and entry[stage]["errors"] == 0, (name, stage, entry[stage])
        assert entry["ttfb"]["requests"] == 50 and entry["ttfb"]["errors"] == 0
    for name, roles in (("serve", ["serve"]), ("stack", ["gateway", "api-forwarder", "auth"])):
        entry = results["targets"][name]
        memory = entry["memory"]
        for label in ("short", "long"):
            assert memory[label]["completed"] == 20 and not memory[label]["errors"], memory[label]
            assert all(memory[label]["peak_mb"][role] > 10 for role in roles), memory[label]
        assert memory["long"]["bytes"] > memory["short"]["bytes"]
        assert set(entry["c50"]["cpu_us_per_request"]) == set(roles)
        seen = entry["upstream_saw"]
        assert seen["requests"] > 0
        assert seen["requests"] == seen["bearer"] == seen["oauth_beta"] == seen["identity"]
        assert "warning" not in entry
    assert "| ccproxy serve |" in done.stdout and "| ccproxy stack |" in done.stdout

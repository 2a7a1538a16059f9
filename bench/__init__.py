"""The performance harness: what ccproxy adds to a request, next to the direct path and to
other proxies. ``make bench`` (or ``uv run python -m bench``); ``--quick`` for a smoke run."""

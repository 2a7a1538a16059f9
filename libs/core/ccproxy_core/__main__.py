"""``python -m ccproxy_core`` is ``ccproxy`` (how ``ccproxy up`` starts its services)."""

from ccproxy_core.cli import main

main()

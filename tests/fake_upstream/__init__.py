"""A fake Anthropic API (Messages, count_tokens, models, OAuth) owned by the test suite.

It runs as its own process (``python -m tests.fake_upstream --port N``) and enforces the
"Upstream facts" of DESIGN.md the way api.anthropic.com does, so a proxy that breaks one of them
fails a test instead of failing in production. Behaviour is chosen in-band, by markers in the
last user message (see README.md), so concurrent tests never interfere.
"""

from tests.fake_upstream.app import create_app
from tests.fake_upstream.state import FakeState, fingerprint

__all__ = ["FakeState", "create_app", "fingerprint"]

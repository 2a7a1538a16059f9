"""Helpers shared by the integration and end-to-end tests: ports, processes, the fake upstream."""

from tests.support.fake import FakeUpstream
from tests.support.ports import free_port
from tests.support.process import Proc, start_process, wait_until

__all__ = ["FakeUpstream", "Proc", "free_port", "start_process", "wait_until"]

"""Moved to ``trainguard.testing`` (the JVM launcher is for tests, examples and local runs)."""
from .testing import Sidecar, default_jar, find_jar, free_port  # noqa: F401

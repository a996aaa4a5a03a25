"""Whether the suite runs against a native build (scripts/build-native)."""

from __future__ import annotations

import pytest

import ringkv.core.node

NATIVE = not ringkv.core.node.__file__.endswith(".py")
# A few tests replace methods of core objects, which compiled classes do not allow.
pure_python_only = pytest.mark.skipif(NATIVE, reason="replaces methods of a compiled class")

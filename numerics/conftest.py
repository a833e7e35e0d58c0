"""The numerics claims compare reduced precisions against float32 references at tight
tolerances: those references must be true float32, so TF32 is off for every test here."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _float32_references_without_tf32(no_tf32) -> None:
    """Requests the root conftest's ``no_tf32`` for every numerics test."""

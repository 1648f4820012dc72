"""Fixtures shared by the data tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def ray_session():
    """A local 2-CPU Ray session for the module's in-process ``vla curate`` runs."""
    from tests.support.ray_session import ray_session as local_ray

    with local_ray():
        yield

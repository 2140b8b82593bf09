"""Fixtures of the media tests: a server with a short publisher grace and its own data dir."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.app import create_app
from gateway.services import Services
from tests.support import ApiClient


@pytest.fixture
async def media_api(make_services: Any, tmp_path: Path) -> AsyncIterator[ApiClient]:
    """A served app whose streams end 0.5 s after their publisher leaves; HLS files under
    ``tmp_path``."""
    services: Services = make_services(media_grace_s=0.5, data_dir=str(tmp_path))
    async with ApiClient.serving(create_app(services)) as api:
        yield api

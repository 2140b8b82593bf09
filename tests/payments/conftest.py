"""Fixtures for the payment tests: localstripe in a subprocess, the Stripe fake in front of it.

Stripe's servers are unreachable, so the real ``stripe`` SDK talks to :class:`FakeStripe`
(``tests/stripe_fake.py``), which forwards what it does not fake to localstripe. localstripe is
started once per session from the virtualenv (``localstripe`` is in the ``test`` extras); if it
cannot start, the tests fail with its log: they never skip, with or without ``CI=true``.
(localstripe pickles its whole store to the fixed path /tmp/localstripe.pickle after every
write; ``--from-scratch`` means it never reads it back, so concurrent runs do not share state.)
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO

import pytest
import stripe

from tests.stripe_fake import FakeStripe, WebhookRecorder

LOCALSTRIPE_START_TIMEOUT_S = 15.0
LOCALSTRIPE_START_ATTEMPTS = 3  # a free port found by binding can be taken before use


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(url: str) -> bool:
    request = urllib.request.Request(
        f"{url}/v1/balance", headers={"Authorization": "Bearer sk_test_probe"}
    )
    try:
        with urllib.request.urlopen(request, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _start_localstripe(
    executable: Path, log: IO[bytes], log_path: Path
) -> tuple[subprocess.Popen[bytes], str]:
    for _ in range(LOCALSTRIPE_START_ATTEMPTS):
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        process = subprocess.Popen(
            [str(executable), "--port", str(port), "--from-scratch"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + LOCALSTRIPE_START_TIMEOUT_S
        while process.poll() is None and time.monotonic() < deadline:
            if _answers(url):
                return process, url
            time.sleep(0.1)
        if process.poll() is None:
            process.kill()
            process.wait()
            break
        if b"Address already in use" not in log_path.read_bytes():
            break
    pytest.fail(
        f"localstripe did not start ({executable}); its log ({log_path}):\n"
        + log_path.read_text(errors="replace")[-4000:],
        pytrace=False,
    )


@pytest.fixture(scope="session")
def localstripe_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a localstripe started for the session (``--from-scratch``)."""
    executable = Path(sys.executable).parent / "localstripe"
    if not executable.exists():
        pytest.fail(f"{executable} is missing: pip install -e '.[test]'", pytrace=False)
    log_path = tmp_path_factory.mktemp("localstripe") / "localstripe.log"
    with log_path.open("wb") as log:
        process, url = _start_localstripe(executable, log, log_path)
        try:
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
async def stripe_fake(localstripe_url: str) -> AsyncIterator[FakeStripe]:
    """A started :class:`FakeStripe` in front of the session's localstripe."""
    async with FakeStripe(localstripe_url) as fake:
        yield fake


@pytest.fixture
async def stripe_client(stripe_fake: FakeStripe) -> AsyncIterator[stripe.StripeClient]:
    """The real SDK pointed at the fake, without automatic retries (so that an injected fault
    reaches the caller; the code under test chooses its own retries)."""
    http_client = stripe.AIOHTTPClient()
    client = stripe.StripeClient(
        stripe_fake.secret_key,
        base_addresses={"api": stripe_fake.api_base},
        http_client=http_client,
        max_network_retries=0,
    )
    try:
        yield client
    finally:
        await http_client.close_async()


@pytest.fixture
async def webhook(stripe_fake: FakeStripe) -> AsyncIterator[WebhookRecorder]:
    """A recording webhook endpoint registered with the fake (secret ``fake.webhook_secret``)."""
    async with WebhookRecorder() as recorder:
        await stripe_fake.add_webhook(recorder.url)
        yield recorder

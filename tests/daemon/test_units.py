"""Small parts of the daemon on their own: suspension, webhook checks, backoff, flapping."""

from __future__ import annotations

import hashlib
import hmac
import time
from pathlib import Path

import pytest

from reconciler.daemon import suspend
from reconciler.daemon.agent import BACKOFF_MAX, Backoff
from reconciler.daemon.metrics import flapping
from reconciler.daemon.webhook import DEDUPE_WINDOW, WebhookVerifier
from reconciler.errors import ReconcilerError


class TestSuspend:
    def test_until_lifts_itself(self, tmp_path: Path) -> None:
        now = time.time()
        s = suspend.suspend(tmp_path, "maintenance", suspend.parse_until("2h", now))
        assert suspend.current(tmp_path, now + 3600) == s
        assert "maintenance" in s.describe()
        assert suspend.current(tmp_path, now + 7300) is None
        assert not (tmp_path / suspend.FILE).exists()

    def test_until_in_the_past_or_unreadable_is_refused(self) -> None:
        with pytest.raises(ReconcilerError, match="in the past"):
            suspend.parse_until("2000-01-01T00:00Z")
        with pytest.raises(ReconcilerError, match="give a time"):
            suspend.parse_until("next tuesday")

    def test_resume_and_a_reason_is_required(self, tmp_path: Path) -> None:
        with pytest.raises(ReconcilerError, match="reason"):
            suspend.suspend(tmp_path, "  ", None)
        suspend.suspend(tmp_path, "why", None)
        assert suspend.resume(tmp_path) is True
        assert suspend.current(tmp_path) is None
        assert suspend.resume(tmp_path) is False


class TestWebhookVerifier:
    SECRET = b"It's a Secret to Everybody"
    BODY = b"Hello, World!"

    def test_githubs_published_test_vector(self) -> None:
        # From GitHub's documentation on validating webhook deliveries.
        signature = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        verifier = WebhookVerifier(self.SECRET)
        assert verifier.check({"X-Hub-Signature-256": signature}, self.BODY) == "accepted"
        assert (
            verifier.check({"X-Hub-Signature-256": signature}, self.BODY + b" ") == "unauthorized"
        )

    def test_no_secret_means_off_and_replays_are_ignored(self) -> None:
        assert WebhookVerifier(None).check({}, b"") == "disabled"
        verifier = WebhookVerifier(b"k")
        sig = "sha256=" + hmac.new(b"k", b"{}", hashlib.sha256).hexdigest()
        headers = {"X-Reconciler-Signature": sig, "X-Reconciler-Delivery": "1"}
        assert verifier.check(headers, b"{}") == "accepted"
        assert verifier.check(headers, b"{}") == "duplicate"
        assert verifier.check({"X-Gitlab-Token": "k"}, b"") == "accepted"
        assert verifier.check({"X-Gitlab-Token": "K"}, b"") == "unauthorized"

    def test_a_replay_under_a_fresh_delivery_id_is_a_duplicate(self) -> None:
        """The delivery id is not signed: a captured delivery resent with another id is still
        the same delivery, until the window has passed."""
        now = [1000.0]
        verifier = WebhookVerifier(b"k", clock=lambda: now[0])
        body = b'{"after": "1111111"}'
        sig = "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()
        sent = [
            verifier.check({"X-Hub-Signature-256": sig, "X-GitHub-Delivery": delivery}, body)
            for delivery in ("a", "b", "c")
        ]
        assert sent == ["accepted", "duplicate", "duplicate"]
        assert verifier.check({"X-Hub-Signature-256": sig}, body) == "duplicate"
        other = b'{"after": "2222222"}'
        other_sig = "sha256=" + hmac.new(b"k", other, hashlib.sha256).hexdigest()
        assert verifier.check({"X-Hub-Signature-256": other_sig}, other) == "accepted"
        now[0] += DEDUPE_WINDOW + 1
        assert verifier.check({"X-Hub-Signature-256": sig}, body) == "accepted"


def test_backoff_grows_to_its_cap_with_jitter_and_resets() -> None:
    backoff = Backoff()
    delays = [backoff.next_delay() for _ in range(20)]
    assert 0.5 <= delays[0] <= 1.0
    assert all(d <= BACKOFF_MAX for d in delays)
    assert delays[-1] >= BACKOFF_MAX / 2
    backoff.reset()
    assert backoff.next_delay() <= 1.0


def test_flapping_needs_most_of_the_recent_runs() -> None:
    runs = [{"file:/a"}, {"file:/a", "file:/b"}, set(), {"file:/a"}, {"file:/b"}]
    assert flapping(runs) == {"file:/a"}
    assert flapping([{"file:/a"}] * 2) == set()


def test_notify_never_blocks_when_the_manager_reads_nothing(tmp_path: Path) -> None:
    """A full notify socket loses messages instead of stalling the daemon's loop."""
    import signal
    import socket

    from reconciler.daemon.notify import Notifier

    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(str(path))
        notifier = Notifier({"NOTIFY_SOCKET": str(path)})

        def hung(*_: object) -> None:
            raise AssertionError("Notifier.send blocked on a socket nobody reads")

        previous = signal.signal(signal.SIGALRM, hung)
        signal.alarm(30)  # a blocking send would hang here: end the test instead
        try:
            sent = [notifier.send("STATUS=" + "x" * 200) for _ in range(2000)]
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
        assert sent[0] is True
        assert sent[-1] is False  # the queue filled up; the message was dropped
        assert manager.recv(4096) == b"STATUS=" + b"x" * 200

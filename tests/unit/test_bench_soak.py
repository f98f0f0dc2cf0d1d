"""The soak's judgement (bench/soak.py) on made-up samples: flat passes, a leak of memory or descriptors fails, and
the warm-up is left out. The soak itself runs in tests/e2e/test_soak.py."""

from __future__ import annotations

import asyncio
import threading

import pytest

from bench import soak


def _samples(rss: list[float], fds: list[int], step: float = 10.0) -> list[soak.Sample]:
    return [soak.Sample(i * step, {"p": i}, {"p": r}, {"p": f}) for i, (r, f) in enumerate(zip(rss, fds, strict=True))]


def test_flat_after_warmup_passes_whatever_the_warmup_did() -> None:
    rss = [10.0, 30.0, 50.0] + [52.0 + 0.1 * (i % 3) for i in range(60)]  # grows in the warm-up, then wobbles
    fds = [3, 20, 28] + [27 + i % 4 for i in range(60)]
    flatness = soak.judge("p", _samples(rss, fds), warmup=30.0)
    assert flatness.rss_flat and flatness.fds_flat
    assert (flatness.rss_start, flatness.rss_after_warmup, flatness.fds_start) == (10.0, 52.0, 3)
    assert abs(flatness.rss_slope_mib_per_hour) < 1


def test_a_memory_leak_fails() -> None:
    # 40 requests a second keeping 500 bytes each: about 69 MiB an hour, over a 10-minute window.
    per_sample = 40 * 500 * 10 / 2**20
    flatness = soak.judge("p", _samples([50 + per_sample * i for i in range(60)], [30] * 60), warmup=0.0)
    assert not flatness.rss_flat
    assert flatness.rss_slope_mib_per_hour == pytest.approx(40 * 500 * 3600 / 2**20)


def test_a_descriptor_leak_fails_and_noise_does_not() -> None:
    leaking = soak.judge("p", _samples([50.0] * 60, [30 + i // 5 for i in range(60)]), warmup=0.0)
    assert not leaking.fds_flat
    noisy = soak.judge("p", _samples([50.0] * 60, [30 + (i * 7) % 6 for i in range(60)]), warmup=0.0)
    assert noisy.fds_flat


def test_too_few_samples_after_warmup_is_an_error() -> None:
    with pytest.raises(ValueError, match="samples after the warm-up"):
        soak.judge("p", _samples([1.0] * 5, [1] * 5), warmup=35.0)


def test_a_workers_unexpected_error_ends_the_load(monkeypatch: pytest.MonkeyPatch) -> None:
    # A bug in a request (here a TypeError) must end the soak with it. Gathered, the other workers went on against
    # the closed session and one spun on its error without yielding: the soak hung with a core busy.
    async def broken(*args: object, **kwargs: object) -> None:
        raise TypeError("a bug in the request")

    monkeypatch.setattr(soak.load, "_one_request", broken)
    work = soak.Load("http://127.0.0.1:9", concurrency=2, metrics=None)  # port 9: refused, a ClientError
    raised: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(work.run())
        except BaseException as exc:  # whatever ended it is the outcome
            raised.append(exc)

    # In a thread, so that a load that spins fails this test instead of hanging it.
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive(), "the load did not end"
    assert [type(exc) for exc in raised] == [TypeError] and "a bug in the request" in str(raised[0])

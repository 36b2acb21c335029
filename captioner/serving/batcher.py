"""A bounded queue in front of the model, for the server: one worker thread runs the model; requests that wait
together with the same decoding settings are captioned as one batch.

The queue holds at most ``max_queue`` requests; :meth:`Batcher.submit` raises :class:`QueueFull` beyond that, which
the server answers with 503, so a burst of clients gets a quick refusal instead of an ever longer wait.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """The request queue is full: the caller should answer 503 and the client retry later."""


@dataclass
class _Job:
    images: list
    config: object
    future: Future = field(default_factory=Future)


class Batcher:
    """Runs ``caption(images, config) -> results`` (one result per image) on a worker thread.

    Args:
        caption: the model call (e.g. ``Captioner.caption_images``).
        max_queue: requests allowed to wait (more are refused with :class:`QueueFull`).
        max_batch: images captioned in one call at most (one request's images are never split).
    """

    def __init__(self, caption: Callable[[Sequence, object], list], max_queue: int = 16, max_batch: int = 32) -> None:
        if max_queue < 1 or max_batch < 1:
            raise ValueError("max_queue and max_batch must be at least 1")
        self._caption, self.max_batch = caption, max_batch
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._work, name="captioner-batcher", daemon=True)
        self.batches = 0  # model calls made (for tests and logs)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the queued requests, then end the worker; wait ``timeout`` seconds at most (the worker is a daemon
        thread: what is left then ends with the process)."""
        if self._thread.is_alive():
            deadline = time.monotonic() + timeout
            try:
                self._queue.put(None, timeout=timeout)
            except queue.Full:
                return
            self._thread.join(max(deadline - time.monotonic(), 0.0))

    def submit(self, images: list, config) -> Future:
        """Queue a request; its future gives ``(results, seconds)`` (the model call's wall time).

        Raises:
            QueueFull: ``max_queue`` requests are already waiting.
        """
        job = _Job(list(images), config)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"the server is busy ({self._queue.maxsize} requests waiting); retry shortly") from None
        return job.future

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            jobs, stop = self._gather(job)
            for group in _by_config(jobs):
                self._run(group)
            if stop:
                return

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        """The first job and those waiting behind it, up to ``max_batch`` images; True when a stop came."""
        jobs, size = [first], len(first.images)
        while size < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
            size += len(job.images)
        return jobs, False

    def _run(self, jobs: list[_Job]) -> None:
        images = [image for job in jobs for image in job.images]
        t0 = time.perf_counter()
        try:
            results = self._caption(images, jobs[0].config)
        except Exception as err:  # the requests fail, the worker stays up
            logger.exception("captioning a batch of %d images failed", len(images))
            for job in jobs:
                job.future.set_exception(err)
            return
        seconds = time.perf_counter() - t0
        self.batches += 1
        start = 0
        for job in jobs:
            job.future.set_result((results[start : start + len(job.images)], seconds * len(job.images) / len(images)))
            start += len(job.images)


def _by_config(jobs: list[_Job]) -> list[list[_Job]]:
    """Jobs grouped by decoding settings (first-come order kept within and across groups)."""
    groups: dict[str, list[_Job]] = {}
    for job in jobs:
        groups.setdefault(repr(job.config), []).append(job)  # dataclass configs are not hashable
    return list(groups.values())

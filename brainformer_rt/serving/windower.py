"""Windower: decide when the newest complete window goes to the engine, and what it publishes.

The windower works on sample counts only (the ring buffer's ``total_written``, an absolute index
of preprocessed samples); it never touches data, so it costs a few integer operations per call.

Policy
------
- A window is *due* when at least ``hop_samples`` new samples arrived since the end of the last
  served window and at least ``window_samples`` samples were written since the last reset (a gap
  or the start: a window never spans a reset).
- The served window always ends at the newest sample (``total_written``). When more than one hop
  accumulated (the daemon or the source fell behind, or the source pushes chunks larger than a
  hop), the older windows are never computed: only the newest one is served, and the windows it
  replaced are counted in ``windows_skipped``. Nothing is ever queued.
- Publish range: each served window publishes the samples that have not been published yet —
  exactly the samples since the last published one — capped at ``max_publish`` (default
  ``window_samples``: older samples are not in the window any more; a server whose engine
  predicts only the newest ``S`` samples of a window sets it to ``S``). So in steady state a
  window publishes its newest ``hop`` samples, a window that arrives after a chunk of
  ``hop < n <= max_publish`` samples publishes all ``n`` (no hole in the output), and only when
  more accumulated do samples go without a prediction; those are counted in
  ``samples_unpublished``. The first window after a reset publishes its newest ``hop`` samples,
  like every steady-state window.

State (all of it): ``origin`` (total_written at the last reset), ``last_window_end`` (end of the
last served window), ``last_published_end`` (end of the last published sample range) and the
three counters (:class:`WindowCounts`, never reset).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["Windower", "WindowCounts"]


@dataclass
class WindowCounts:
    """The windower's counters (they only grow); the one place they are kept."""

    windows_served: int = 0
    windows_skipped: int = 0
    samples_unpublished: int = 0

    def copy_to(self, target: object) -> None:
        """Write each counter onto ``target``'s attribute of the same name (a ``StreamCounters``)."""
        for f in fields(self):
            setattr(target, f.name, getattr(self, f.name))


class Windower:
    """Newest-window scheduler for one stream.

    Args:
        window_samples: samples per model window (the model's ``window_samples``).
        hop_samples: new samples between two served windows, ``1 <= hop_samples <= window_samples``.
        max_publish: most samples one window publishes, ``hop_samples <= max_publish <=
            window_samples`` (default ``window_samples``).
    """

    def __init__(self, window_samples: int, hop_samples: int, max_publish: int | None = None) -> None:
        if not isinstance(window_samples, int) or window_samples < 1:
            raise ValueError(f"window_samples must be a positive integer, got {window_samples!r}")
        if not isinstance(hop_samples, int) or not 1 <= hop_samples <= window_samples:
            raise ValueError(
                f"hop_samples must be an integer in [1, window_samples={window_samples}], got {hop_samples!r}"
            )
        if max_publish is None:
            max_publish = window_samples
        if not isinstance(max_publish, int) or not hop_samples <= max_publish <= window_samples:
            raise ValueError(f"max_publish must be an integer in [hop_samples={hop_samples}, "
                             f"window_samples={window_samples}], got {max_publish!r}")
        self.window_samples = window_samples
        self.hop_samples = hop_samples
        self.max_publish = max_publish
        self.counts = WindowCounts()
        self.reset(0)

    @property
    def windows_served(self) -> int:
        return self.counts.windows_served

    @property
    def windows_skipped(self) -> int:
        return self.counts.windows_skipped

    @property
    def samples_unpublished(self) -> int:
        return self.counts.samples_unpublished

    def reset(self, total_written: int) -> None:
        """Forget the history: the next window needs ``window_samples`` samples written after
        ``total_written`` (used at start and after a gap in the input)."""
        self.origin = total_written
        # The first window ends at origin + window_samples and publishes its newest hop samples.
        self.last_window_end = total_written + self.window_samples - self.hop_samples
        self.last_published_end = self.last_window_end

    def poll(self, total_written: int) -> int:
        """Number of newest samples the window ending at ``total_written`` publishes, or 0.

        A non-zero return means a window is due and is now counted as served: the caller runs the
        window of the ``window_samples`` samples ending at ``total_written`` and publishes the
        newest ``n`` of its predictions.
        """
        if total_written - self.origin < self.window_samples:
            return 0
        new_samples = total_written - self.last_window_end
        if new_samples < self.hop_samples:
            return 0
        # Windows that ended every hop between the last served one and this one were never run.
        self.counts.windows_skipped += new_samples // self.hop_samples - 1
        self.counts.windows_served += 1
        self.last_window_end = total_written
        unpublished = total_written - self.last_published_end
        self.last_published_end = total_written
        return self._capped(unpublished)

    def _capped(self, n_samples: int) -> int:
        """``n_samples`` to publish, at most ``max_publish``; the excess counted as unpublished."""
        if n_samples > self.max_publish:
            self.counts.samples_unpublished += n_samples - self.max_publish
            return self.max_publish
        return n_samples

    def samples_until_due(self, total_written: int) -> int:
        """New samples (>= 1) after ``total_written`` before :meth:`poll` can return a window."""
        return max(1, self.origin + self.window_samples - total_written,
                   self.last_window_end + self.hop_samples - total_written)

    def drop(self, n_samples: int) -> None:
        """The window just returned by :meth:`poll` was not served after all (it was stale, or
        its forward failed): count it as skipped and its ``n_samples`` as unpublished."""
        self.counts.windows_served -= 1
        self.counts.windows_skipped += 1
        self.counts.samples_unpublished += n_samples

    def supersede(self, pending_samples: int, n_samples: int) -> int:
        """A served window that still waits to be run (publishing ``pending_samples``) is
        replaced by the newer one just returned by :meth:`poll` (publishing ``n_samples``).

        The older one counts as skipped; the newer one publishes both ranges, capped at
        ``max_publish`` (the excess counted as unpublished). Returns the newer window's
        publish count.
        """
        self.counts.windows_served -= 1
        self.counts.windows_skipped += 1
        return self._capped(pending_samples + n_samples)

"""A small time-limited cache of rendered explanation pages, one per app (issue 25).

Each explanation page is drawn again from its audit record (a prediction and an SVG waterfall,
1-3 s under load), and the page is unauthenticated beyond its signed link: a reload, or a crowd
on one link, must not draw it again and again. A page depends only on the card (its audit record)
and the model version serving it, so that pair is the key; the link's token is still checked on
every request before the cache is consulted.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any


class PageCache:
    """Least-recently-used pages, each kept at most `ttl_s` seconds; thread-safe."""

    def __init__(self, ttl_s: float, size: int) -> None:
        self.ttl_s = ttl_s
        self.size = size
        self._pages: OrderedDict[Hashable, tuple[float, str]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> str | None:
        with self._lock:
            hit = self._pages.get(key)
            if hit is None:
                return None
            if time.monotonic() - hit[0] > self.ttl_s:
                del self._pages[key]
                return None
            self._pages.move_to_end(key)
            return hit[1]

    def put(self, key: Hashable, page: str) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            self._pages[key] = (time.monotonic(), page)
            self._pages.move_to_end(key)
            while len(self._pages) > self.size:
                self._pages.popitem(last=False)


_lock = threading.Lock()


def of(app: Any) -> PageCache:
    """The app's page cache, made on first use from its settings."""
    cache = getattr(app.state, "explanation_cache", None)
    if cache is None:
        with _lock:
            cache = getattr(app.state, "explanation_cache", None)
            if cache is None:
                s = app.state.settings
                cache = PageCache(s.explanation_cache_s, s.explanation_cache_size)
                app.state.explanation_cache = cache
    return cache

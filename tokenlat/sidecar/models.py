"""The model names the sidecar records: bounded, because clients choose them.

gen_ai.request.model comes from the request body and gen_ai.response.model from the stream, so any client can
send a new name with every request. Each new name is a new attribute set in all five histograms (memory here,
series in the backend). The library caps attribute sets per metric (2,000), but one client could fill that cap
and push every legitimate model into the overflow set. So the sidecar bounds the names first: an allowlist
(``--model``), or else the first ``--max-models`` distinct names it sees; any other name is recorded as
``OTHER_VALUE``, counted, and warned about once. Names longer than ``MAX_MODEL_CHARS`` are not model names.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from tokenlat.attributes import OTHER_VALUE
from tokenlat.recorder import Count

log = logging.getLogger("tokenlat.sidecar")

# Distinct model names recorded without an allowlist: a model server serves a handful (LoRA adapters included);
# 50 leaves room for many and keeps five histograms x 50 names far below the library's cap of 2,000 sets.
MAX_MODELS = 50
# Longer than any real model or adapter name (Hugging Face repo ids are at most 96 characters).
MAX_MODEL_CHARS = 256
# The counter of requests whose model name was recorded as OTHER_VALUE.
OTHER_MODELS = "tokenlat.sidecar.other_models"


class ModelNames:
    """Admits a model name as itself or as ``OTHER_VALUE``. One per sidecar, used from its event loop only."""

    def __init__(self, others: Count, allowed: Iterable[str] = (), max_models: int = MAX_MODELS) -> None:
        if isinstance(allowed, str):
            raise TypeError("allowed must be an iterable of model names, not a single str")
        if max_models < 0:
            raise ValueError(f"max_models must be at least 0, got {max_models}")
        self.allowed = frozenset(allowed)
        self.max_models = max_models
        self.others = others
        self._seen: set[str] = set(self.allowed)
        self._warned = False

    def admit(self, name: str) -> str:
        if name in self._seen:
            return name
        if not self.allowed and len(self._seen) < self.max_models and len(name) <= MAX_MODEL_CHARS:
            self._seen.add(name)
            return name
        self.others.add()
        if not self._warned:
            self._warned = True
            why = "not in --model" if self.allowed else f"beyond --max-models {self.max_models} distinct names"
            # Never the name itself: it comes from a client and could be anything.
            log.warning(
                "tokenlat sidecar: a model name %s (or longer than %d characters) is recorded as %r; further ones "
                "are counted in %s, not logged",
                why, MAX_MODEL_CHARS, OTHER_VALUE, OTHER_MODELS,
            )  # fmt: skip
        return OTHER_VALUE

"""Drop the third-party notices every gendistill run would print and that say nothing to its users.

Filters go on the exact loggers that emit them, match their exact wording, and drop nothing else: a real
warning from the same library still shows. Installing them imports nothing (``logging.getLogger`` makes the
logger the library will use later), so :func:`~gendistill.compat.prepare_process` can do it before any import.
"""

from __future__ import annotations

import logging
import re

# logger name -> the notices it emits that we drop
KNOWN_NOTICES: dict[str, tuple[re.Pattern, ...]] = {
    # transformers >= 5 without torchvision: "`CLIPImageProcessor` requires torchvision (not installed); falling
    # back to `CLIPImageProcessorPil` ...", once per processor class diffusers imports, on every run
    "transformers.utils.import_utils": (re.compile(r"requires torchvision \(not installed\); falling back to"),),
}


class _DropKnownNotices(logging.Filter):
    def __init__(self, patterns: tuple[re.Pattern, ...]):
        super().__init__()
        self.patterns = patterns

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to judge
            return True
        return not any(p.search(message) for p in self.patterns)


def silence_known_notices() -> None:
    """Attach the filters (once; safe to call again)."""
    for name, patterns in KNOWN_NOTICES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnownNotices) for f in logger.filters):
            logger.addFilter(_DropKnownNotices(patterns))

"""Log lines leave the event loop through a queue; one thread writes them out.

A `StreamHandler` on the event loop writes to stderr synchronously: when stderr is a
pipe whose reader is slow (journald, `docker logs`, a terminal scrolled back), every
request stalls behind the write. `QueuedStderrHandler` formats the record where it
is logged (so the request id and the message are fixed there) and hands the text to
a `QueueListener` thread, which does the blocking write.
"""

from __future__ import annotations

import atexit
import logging
import queue
from logging.handlers import QueueHandler, QueueListener


class QueuedStderrHandler(QueueHandler):
    def __init__(self) -> None:
        super().__init__(queue.SimpleQueue())
        # The record arrives formatted (QueueHandler.prepare): the writer adds nothing.
        self.listener = QueueListener(self.queue, logging.StreamHandler())
        self.listener.start()
        atexit.register(self.listener.stop)  # drain what is queued before the process exits

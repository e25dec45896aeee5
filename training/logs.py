"""Logging: the setup each entry point calls once (CLI command, service worker), one way to
put an exception in one line, and one way to log a recurring failure once."""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)-7s [%(process)d] %(name)s: %(message)s"
OUR_LOGGERS = ("training", "serving", "service")


def configure_logging(
    level: str, log_dir: Path, filename: str, file_only: tuple[str, ...] = ()
) -> Path:
    """Send our loggers to the console and to ``log_dir/filename``.

    Several processes (service workers, a retrain subprocess) may append to one file:
    ``WatchedFileHandler`` opens it in append mode, writes each record with one flush, and
    reopens it if logrotate moves it away. Safe to call more than once.

    Args:
        level: Level for our loggers.
        log_dir: Folder for the file (created).
        filename: Log file name.
        file_only: Other loggers (already printed by their owner) to copy into the file.

    Returns:
        The path of the log file.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / filename
    file_handler = logging.handlers.WatchedFileHandler(path, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(FORMAT))
    console = logging.StreamHandler()
    console.setFormatter(_ConsoleFormatter(FORMAT, verbose=level == "DEBUG"))
    for handler in (file_handler, console):
        handler._iris = True  # type: ignore[attr-defined]  # marks handlers we own
    for name in OUR_LOGGERS:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if getattr(h, "_iris", False)]:
            logger.removeHandler(old)
            old.close()
        logger.addHandler(file_handler)
        logger.addHandler(console)
        logger.setLevel(level)
        logger.propagate = False
    for name in file_only:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if getattr(h, "_iris", False)]:
            logger.removeHandler(old)
        logger.addHandler(file_handler)
    # MLflow and friends are chatty at INFO; keep their warnings.
    logging.getLogger("mlflow").setLevel(max(logging.WARNING, logging.getLevelName(level)))
    return path


class _ConsoleFormatter(logging.Formatter):
    """Tracebacks go to the log file always, to the console only at DEBUG."""

    def __init__(self, fmt: str, *, verbose: bool):
        super().__init__(fmt)
        self.verbose = verbose

    def formatException(self, ei) -> str:  # noqa: N802 - logging's API name
        return super().formatException(ei) if self.verbose else ""

    def format(self, record: logging.LogRecord) -> str:
        if self.verbose or not record.exc_info:
            return super().format(record)
        saved, record.exc_info, record.exc_text = record.exc_info, None, None
        try:
            return super().format(record)
        finally:
            record.exc_info = saved


def one_line(exc: BaseException) -> str:
    """``Type: first line of its message``: how every failure is reported in one line
    (logs, job records, a subprocess's last words to its parent)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class DistinctErrors:
    """A recurring failure (a database down, a registry unreachable) logged once per distinct
    message instead of at every retry, and its recovery logged once."""

    def __init__(self, logger: logging.Logger, recovered: str):
        self.logger = logger
        self.recovered = recovered
        self.last: str | None = None

    def failed(self, level: int, what: str, exc: BaseException) -> bool:
        """Log ``what: <one line>`` unless it is the failure logged last; True if logged."""
        message = one_line(exc)
        new = message != self.last
        if new:
            self.logger.log(level, "%s: %s", what, message)
            self.logger.debug("%s", what, exc_info=exc)
        self.last = message
        return new

    def ok(self) -> None:
        """The operation worked: say so once if it had been failing."""
        if self.last is not None:
            self.logger.info(self.recovered)
            self.last = None

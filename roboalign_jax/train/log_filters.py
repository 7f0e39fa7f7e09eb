"""Keeps launcher output readable: Orbax logs dozens of INFO lines per checkpoint."""

import logging


class _QuietOrbax(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or "/orbax/" not in record.pathname


def quiet_library_logs() -> None:
  """Drops Orbax INFO records from every root handler (absl's included); warnings still show."""
  for handler in logging.getLogger().handlers:
    handler.addFilter(_QuietOrbax())

"""Errors of raindrops-exporter, split by who is at fault."""

from __future__ import annotations

__all__ = ["ConfigError", "ExporterError"]


class ExporterError(Exception):
    """Base of every raindrops-exporter error (never raised directly)."""


class ConfigError(ExporterError, ValueError):
    """A bad argument or option: the message names the value and what is allowed."""

"""The hook driver moved into the core's one hook runner
(:mod:`sipsuite.proxy.core.hookrun`); this name stays for routing code that
imported it."""

from sipsuite.proxy.core.hookrun import drive

__all__ = ["drive"]

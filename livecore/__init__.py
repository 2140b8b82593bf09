"""Livecore's pure core: domain types and rules, with no I/O, no clock and no randomness.

Time and ids are passed in by the callers in ``gateway/`` and ``ledger/``; a test walks the
imports of this package to keep it so.
"""

__version__ = "0.1.0"

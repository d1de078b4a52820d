"""Argument types shared by the management commands: one duration grammar, one whole-number rule.

Every command that takes a duration (``fleet --since/--stale/--wait``, ``deadletters --older-than``)
reads it here, so ``2w``, ``1h30m`` and ``3600`` mean the same to each of them.
"""

from __future__ import annotations

import argparse
import re
from datetime import timedelta

#: ``<n>w<n>d<n>h<n>m<n>s``, each part optional but in this order; a bare number is seconds.
_DURATION = re.compile(r"^(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
#: The longest duration any command accepts (it also keeps datetime arithmetic in range).
MAX_DURATION = timedelta(days=100 * 365)
DURATION_EXAMPLES = "seconds (3600) or numbers with w, d, h, m or s (90s, 30m, 1h30m, 7d, 2w)"


def parse_duration(text: str) -> timedelta:
    """``3600``, ``90s``, ``30m``, ``1h30m``, ``7d``, ``2w``, ``1w2d`` as a timedelta; ValueError says why not."""
    compact = re.sub(r"\s+", "", text).lower()
    match = _DURATION.match(f"{compact}s" if compact.isdigit() else compact)
    if not compact or match is None or not any(match.groups()):
        raise ValueError(f"use {DURATION_EXAMPLES}")
    weeks, days, hours, minutes, seconds = (int(group or 0) for group in match.groups())
    if weeks * 7 + days > MAX_DURATION.days:
        raise ValueError("more than 100 years")
    duration = timedelta(weeks=weeks, days=days, hours=hours, minutes=minutes, seconds=seconds)
    if duration > MAX_DURATION:
        raise ValueError("more than 100 years")
    return duration


def duration(value: str) -> timedelta:
    """An argparse ``type=``: a duration (see parse_duration); argparse names the option in its error."""
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"invalid duration {value!r}: {exc}") from None


def positive_int(value: str) -> int:
    """An argparse ``type=``: a whole number of 1 or more."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more (got {number})")
    return number

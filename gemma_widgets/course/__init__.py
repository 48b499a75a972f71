"""Helpers for the course notebooks: claims a learner sees checked on the machine at hand.

>>> check("bf16 keeps fp32's exponent range", 2.0**127 < float("inf"))
✓ bf16 keeps fp32's exponent range
>>> check("1 + 1 == 3", 1 + 1 == 3, "1 + 1 is 2")
Traceback (most recent call last):
...
AssertionError: ✗ 1 + 1 == 3: 1 + 1 is 2
"""

from __future__ import annotations


def check(claim: str, condition: object, detail: str = "") -> None:
    """Print ``✓ claim`` (and ``detail``) when ``condition`` holds; fail the cell with ``✗ claim`` when not.

    For what a lesson claims and the learner should see verified; plumbing checks belong in ``tests/``.
    """
    line = f"{claim}: {detail}" if detail else claim
    if not condition:
        raise AssertionError(f"✗ {line}")
    print(f"✓ {line}")

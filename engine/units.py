"""How sizes and counts read to a person: one byte-size and one count formatter (light)."""

from __future__ import annotations

from rich.filesize import decimal


def byte_size(n: int | float | None) -> str:
    """Bytes on disk or over the wire, decimal units: 241 B, 3.4 MB, 13.5 GB; ? unknown."""
    if n is None:
        return "?"
    return f"{int(n)} B" if n < 1000 else decimal(int(n))


def count(n: int | None) -> str:
    """A parameter or row count: 135.0M, 7.2B, 512; ? unknown."""
    if not n:
        return "?"
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)

"""A GGUF file's header walked once with every count and length checked against the file's
size, before any reader trusts it.

gguf-py's reader builds each declared array element by element, so a crafted file of a few
bytes that declares 2^61 elements keeps it busy for ever. Here each string length, array count
and tensor count is first checked to fit in the bytes that are left; the walk then takes time in
proportion to the file's real header (a vocabulary of 150k tokens: a fraction of a second).
Light module: the struct module only.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

from loradeck.engine.errors import LoradeckError

MAGIC = b"GGUF"
VERSIONS = (2, 3)
FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # type -> bytes
STRING, ARRAY = 8, 9
MAX_DIMS = 8
MAX_KEY = 65_535


class _Walk:
    def __init__(self, fh: BinaryIO, size: int, path: Path) -> None:
        self.fh, self.size, self.path, self.order = fh, size, path, "<"

    @property
    def left(self) -> int:
        return self.size - self.fh.tell()

    def bad(self, what: str) -> LoradeckError:
        return LoradeckError(f"not a valid GGUF file: {what}", kind="model", where=str(self.path),
                             hint="the file is damaged or was not written as GGUF; download or "
                                  "export it again")

    def need(self, nbytes: int, what: str) -> None:
        if nbytes > self.left:
            raise self.bad(f"{what} needs {nbytes:,} bytes but the file has {self.left:,} left")

    def read(self, fmt: str, what: str) -> int:
        n = struct.calcsize(fmt)
        self.need(n, what)
        return struct.unpack(self.order + fmt, self.fh.read(n))[0]

    def skip(self, nbytes: int, what: str) -> None:
        self.need(nbytes, what)
        self.fh.seek(nbytes, 1)

    def string(self, what: str, keep: bool = False) -> str:
        n = self.read("Q", what)
        if keep:
            if n > MAX_KEY:
                raise self.bad(f"{what} is {n:,} bytes long")
            self.need(n, what)
            return self.fh.read(n).decode("utf-8", errors="replace")
        self.skip(n, what)
        return ""

    def value(self, kind: int, what: str, depth: int = 0) -> None:
        if kind in FIXED:
            self.skip(FIXED[kind], what)
        elif kind == STRING:
            self.string(what)
        elif kind == ARRAY:
            if depth > 1:
                raise self.bad(f"{what} nests arrays too deeply")
            inner = self.read("I", what)
            count = self.read("Q", what)
            if inner in FIXED:
                self.skip(count * FIXED[inner], f"{what} ({count:,} elements)")
            elif inner in (STRING, ARRAY):
                self.need(count * (8 if inner == STRING else 12), f"{what} ({count:,} elements)")
                for _ in range(count):
                    self.value(inner, what, depth + 1)
            else:
                raise self.bad(f"{what} has elements of unknown type {inner}")
        else:
            raise self.bad(f"{what} has a value of unknown type {kind}")


def check_header(path: str | Path) -> None:
    """Raise one line (LoradeckError) unless ``path``'s GGUF header fits in the file."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        walk = _Walk(fh, size, path)
        walk.need(4, "the magic number")
        if fh.read(4) != MAGIC:
            raise walk.bad("it does not start with GGUF")
        version = walk.read("I", "the version")
        if version not in VERSIONS:
            walk.order = ">"
            fh.seek(4)
            version = walk.read("I", "the version")
            if version not in VERSIONS:
                raise walk.bad("its version is not 2 or 3")
        tensors = walk.read("Q", "the tensor count")
        keys = walk.read("Q", "the key count")
        # a key/value takes at least 13 bytes, a tensor's description at least 24
        walk.need(keys * 13 + tensors * 24, f"{keys:,} keys and {tensors:,} tensors")
        for i in range(keys):
            key = walk.string(f"key {i + 1}", keep=True)
            walk.value(walk.read("I", f"the type of {key!r}"), repr(key))
        for i in range(tensors):
            walk.string(f"tensor {i + 1}'s name")
            dims = walk.read("I", f"tensor {i + 1}'s dimensions")
            if dims > MAX_DIMS:
                raise walk.bad(f"tensor {i + 1} has {dims:,} dimensions")
            walk.skip(8 * dims + 4 + 8, f"tensor {i + 1}'s shape")

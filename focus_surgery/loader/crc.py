"""The CRC-32 of zip records: ISA-L's where ``isal`` is installed (``pip install focus-surgery[fast]``), else zlib's.

Both compute the same IEEE CRC-32 (what zip records carry) and release the GIL; ISA-L's is about 4x faster (11.8 vs
2.7 GB/s on a 64 MiB buffer, this project's 2-core machine; ``focus-surgery bench`` times the loads, not the two
CRCs): the checksum is most of a memory-mapped load's time (mode ``mmap`` vs ``mmap-nocrc``), whose only read of
the weights it is.
"""

from __future__ import annotations

try:
    from isal.isal_zlib import crc32

    CRC32_IMPLEMENTATION = "isal"
except ImportError:  # the optional accelerator is not installed
    from zlib import crc32

    CRC32_IMPLEMENTATION = "zlib"

__all__ = ["CRC32_IMPLEMENTATION", "crc32"]

"""The CRC-32 of zip records: ISA-L's where ``isal`` is installed (``pip install focus-surgery[fast]``), else zlib's.

Both compute the same IEEE CRC-32 (what zip records carry) and release the GIL; ISA-L's is about 4x faster (measured
in ``focus-surgery bench``), which is most of the time of a memory-mapped load, whose only read of the weights is
their checksum.
"""

from __future__ import annotations

try:
    from isal.isal_zlib import crc32

    CRC32_IMPLEMENTATION = "isal"
except ImportError:  # the optional accelerator is not installed
    from zlib import crc32

    CRC32_IMPLEMENTATION = "zlib"

__all__ = ["CRC32_IMPLEMENTATION", "crc32"]

"""Whole-file checks of GRIB inputs before cfgrib reads them.

cfgrib skips a truncated or corrupt message with an ERROR in the log and fills its field
with NaN (or leaves out a time, a level, a variable), so a damaged file would be ingested
as if complete. `scan_grib` walks the file's messages from their headers alone (a few
bytes read per message, nothing decoded): each message starts with `GRIB`, states its
total length in section 0 (edition 1: 3 bytes at offset 4; edition 2: 8 bytes at offset
8) and ends with `7777`; zero bytes may pad the space between messages and the end of the
file, anything else is corruption. The last message must end inside the file.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import InputError

__all__ = ["scan_grib", "field_count"]

_PAD_READ = 1 << 16
_GRIB1_LARGE = 0x800000  # ECMWF's flag for GRIB1 messages longer than 2**23 bytes


def scan_grib(path: str | Path) -> int:
    """The number of GRIB messages in `path`, after checking that every one is whole.

    Raises InputError naming the file and the byte offset of the first truncated or
    corrupt message (or of the bytes that are not a message)."""
    path = Path(path)
    size = path.stat().st_size
    count = 0
    with open(path, "rb") as f:
        offset = _skip_padding(f, path, 0, size)
        while offset < size:
            f.seek(offset)
            head = f.read(16)
            if len(head) < 8:
                raise _truncated(path, offset, None, size - offset)
            if head[:4] != b"GRIB":
                raise InputError(
                    f"byte offset {offset}: {head[:8]!r} is not the start of a GRIB message (corrupt or not GRIB)", path
                )
            edition = head[7]
            if edition == 1:
                length = int.from_bytes(head[4:7], "big")
                if length & _GRIB1_LARGE:
                    length = _large_grib1_length(path, offset, size)
            elif edition == 2:
                if len(head) < 16:
                    raise _truncated(path, offset, None, size - offset)
                length = int.from_bytes(head[8:16], "big")
            else:
                raise InputError(f"byte offset {offset}: GRIB edition {edition} (only editions 1 and 2 are read)", path)
            if length < 12:
                raise InputError(f"corrupt GRIB message at byte offset {offset}: declared length {length} bytes", path)
            end = offset + length
            if end > size:
                raise _truncated(path, offset, length, size - offset)
            f.seek(end - 4)
            if f.read(4) != b"7777":
                raise InputError(
                    f"corrupt GRIB message at byte offset {offset}: no end marker '7777' at byte offset {end - 4} "
                    f"(the message declares {length} bytes)",
                    path,
                )
            count += 1
            offset = _skip_padding(f, path, end, size)
    if count == 0:
        raise InputError("no GRIB message in the file", path)
    return count


def _truncated(path: Path, offset: int, length: int | None, left: int, header: bool = True) -> InputError:
    if length is not None:
        where = f"after {left} of its {length} bytes"
    else:
        where = f"{left} bytes into its header" if header else f"{left} bytes into it (eccodes cannot read it whole)"
    return InputError(
        f"truncated GRIB message at byte offset {offset}: the file ends {where} (an interrupted download or copy? fetch it again)",
        path,
    )


def _skip_padding(f, path: Path, offset: int, size: int) -> int:
    """The offset of the next non-zero byte at or after `offset` (or `size`)."""
    f.seek(offset)
    while offset < size:
        block = f.read(min(_PAD_READ, size - offset))
        stripped = block.lstrip(b"\0")
        if stripped:
            return offset + len(block) - len(stripped)
        offset += len(block)
    return size


def _large_grib1_length(path: Path, offset: int, size: int) -> int:
    """The length of an ECMWF large GRIB1 message (its 3-byte length has the top bit set
    and may count in units of 120 bytes), as eccodes reads it."""
    import eccodes

    with open(path, "rb") as g:  # a fresh handle: eccodes reads the descriptor, not Python's buffer
        g.seek(offset)
        try:
            handle = eccodes.codes_grib_new_from_file(g)
        except Exception:  # noqa: BLE001 - eccodes reports a short read as several error types
            handle = None
    if handle is None:
        raise _truncated(path, offset, None, size - offset, header=False)
    try:
        if int(eccodes.codes_get(handle, "offset")) != offset:  # eccodes skipped bytes to find a message
            raise InputError(f"corrupt GRIB message at byte offset {offset}: eccodes cannot read it", path)
        return int(eccodes.codes_get_message_size(handle))
    finally:
        eccodes.codes_release(handle)


def field_count(ds, horizontal: tuple[str, ...] = ("latitude", "longitude", "values", "x", "y")) -> int:
    """The number of 2-D fields (one GRIB message each) that the dataset cfgrib built holds."""
    total = 0
    for var in ds.data_vars.values():
        n = 1
        for dim, length in var.sizes.items():
            if dim not in horizontal:
                n *= int(length)
        total += n
    return total

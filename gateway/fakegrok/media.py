"""Bytes for generated media and the multipart reader for upload-v2.

Every generated file is tiny but real: a 1x1 baseline JPEG, a 1x1 PNG, or an MP4
`ftyp` header. Each one embeds its own asset path, so two assets never share bytes
and a test can tell which one it downloaded.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass

CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".mp4": "video/mp4"}


def content_type_for(path: str) -> str:
    suffix = path[path.rfind(".") :].lower() if "." in path.rsplit("/", 1)[-1] else ""
    return CONTENT_TYPES.get(suffix, "application/octet-stream")


def payload_for(path: str) -> bytes:
    kind = content_type_for(path)
    if kind == "image/png":
        return png(path)
    if kind == "video/mp4":
        return mp4(path)
    return jpeg(path)


def _segment(marker: int, data: bytes) -> bytes:
    return struct.pack(">BBH", 0xFF, marker, len(data) + 2) + data


def jpeg(comment: str) -> bytes:
    """A 1x1 grey baseline JPEG: one 8x8 block whose DC and AC are both 'nothing'."""
    one_code = bytes([1] + [0] * 15)  # a Huffman table with a single 1-bit code ("0")
    return b"".join(
        [
            b"\xff\xd8",
            _segment(0xFE, comment.encode()),
            _segment(0xDB, b"\x00" + b"\x01" * 64),  # quantisation table 0, all ones
            _segment(0xC0, struct.pack(">BHHB", 8, 1, 1, 1) + b"\x01\x11\x00"),  # 1x1, one component
            _segment(0xC4, b"\x00" + one_code + b"\x00"),  # DC table: category 0 only
            _segment(0xC4, b"\x10" + one_code + b"\x00"),  # AC table: end-of-block only
            _segment(0xDA, b"\x01\x01\x00\x00\x3f\x00"),
            b"\x3f",  # DC "0" + EOB "0", padded with ones
            b"\xff\xd9",
        ]
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(comment: str) -> bytes:
    colour = zlib.crc32(comment.encode()).to_bytes(4, "big")[:3]
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)),
            _png_chunk(b"tEXt", b"Comment\x00" + comment.encode()),
            _png_chunk(b"IDAT", zlib.compress(b"\x00" + colour)),
            _png_chunk(b"IEND", b""),
        ]
    )


def _box(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data) + 8) + kind + data


def mp4(comment: str) -> bytes:
    """Enough of an MP4 for sniffers (`ftyp` first); no player will show it."""
    return _box(b"ftyp", b"isom\x00\x00\x02\x00isomiso2mp41") + _box(b"free", comment.encode()) + _box(b"mdat", b"")


@dataclass(frozen=True)
class Part:
    filename: str | None
    content_type: str
    data: bytes


def _param(header: str, name: str) -> str | None:
    match = re.search(rf'(?:^|;)\s*{name}="?([^";]*)"?', header, re.IGNORECASE)
    return match.group(1) if match else None


def parse_multipart(content_type: str, body: bytes) -> dict[str, Part]:
    """The named parts of a multipart/form-data body; {} when it is not one."""
    boundary = _param(content_type, "boundary")
    if not content_type.lower().startswith("multipart/form-data") or not boundary:
        return {}
    parts: dict[str, Part] = {}
    for chunk in body.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, sep, data = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not sep:
            continue
        headers = {}
        for line in head.decode("utf-8", "replace").split("\r\n"):
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        disposition = headers.get("content-disposition", "")
        name = _param(disposition, "name")
        if name is not None:
            part_type = headers.get("content-type", "application/octet-stream")
            parts[name] = Part(_param(disposition, "filename"), part_type, data.removesuffix(b"\r\n"))
    return parts

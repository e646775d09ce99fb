"""A video's record, serialised without TensorFlow: the DMVR-layout `tf.train.SequenceExample`
of `tadax.data.record_format`.

The record is written in protobuf's wire format directly: the very bytes of
protobuf's deterministic serialisation (context map entries sorted by key; tested
against TensorFlow's), so preparation's worker processes make records without
importing TensorFlow, and the frames are copied once.
"""

import struct
from typing import Dict, Sequence

from tadax.data.record_format import (END_KEY, FILENAME_KEY, FPS_KEY, FRAMES_KEY, LABEL_KEY,
                                      NUM_FRAMES_KEY, START_KEY, TEXT_KEY)

# tf.train.Feature's fields: bytes_list = 1, float_list = 2, int64_list = 3.
_BYTES, _FLOAT, _INT64 = 1, 2, 3


def _varint(value: int) -> bytes:
    """Base-128 varint of `value` as a uint64 (a negative int64 takes ten bytes)."""
    value &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field_header(field: int, length: int) -> bytes:
    """Wire header of a length-delimited field (wire type 2): tag, then length."""
    return _varint((field << 3) | 2) + _varint(length)


def _field(field: int, payload: bytes) -> bytes:
    """A length-delimited field holding `payload`."""
    return _field_header(field, len(payload)) + payload


def _feature(kind: int, value) -> bytes:
    """A `tf.train.Feature` with one value: its list's `value` field, packed for numbers."""
    if kind == _BYTES:
        payload = _field(1, value)
    elif kind == _FLOAT:
        payload = _field(1, struct.pack("<f", value))
    else:
        payload = _field(1, _varint(value))
    return _field(kind, payload)


def _context(features: Dict[str, bytes]) -> bytes:
    """SequenceExample field 1, `context`: a `Features` map, entries in key order."""
    entries = b"".join(_field(1, _field(1, key.encode()) + _field(2, features[key]))
                       for key in sorted(features))
    return _field(1, entries)


def _frames_field(frames_jpeg: Sequence[bytes]) -> bytes:
    """SequenceExample field 2 (`feature_lists`) holding `{FRAMES_KEY: one BytesList per
    frame}`, joined once from headers and the frames themselves."""
    pieces = []
    for jpeg in frames_jpeg:
        value = _field_header(1, len(jpeg))                             # BytesList.value
        bytes_list = _field_header(1, len(value) + len(jpeg)) + value   # Feature.bytes_list
        pieces += [_field_header(1, len(bytes_list) + len(jpeg)) + bytes_list, jpeg]
    key = _field(1, FRAMES_KEY.encode())                                # map entry's key
    feature_list_len = sum(map(len, pieces))
    entry = key + _field_header(2, feature_list_len)                    # map entry's value
    feature_lists = _field_header(1, len(entry) + feature_list_len) + entry
    head = _field_header(2, len(feature_lists) + feature_list_len) + feature_lists
    return b"".join([head] + pieces)


def sequence_example(frames_jpeg: Sequence[bytes], *, label: int, text: str, filename: str,
                     start_us: int, end_us: int, fps: float) -> bytes:
    """One serialized SequenceExample holding a video's JPEG frames and its context; the same
    bytes in every process."""
    context = {LABEL_KEY: _feature(_INT64, int(label)),
               TEXT_KEY: _feature(_BYTES, text.encode()),
               FILENAME_KEY: _feature(_BYTES, filename.encode()),
               START_KEY: _feature(_INT64, int(start_us)),
               END_KEY: _feature(_INT64, int(end_us)),
               FPS_KEY: _feature(_FLOAT, float(fps)),
               NUM_FRAMES_KEY: _feature(_INT64, len(frames_jpeg))}
    return _context(context) + _frames_field(frames_jpeg)

"""The sans-IO codec: round trips, every chunking, and malformed input."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fcgi_asgi.protocol.records import (
    BEGIN_REQUEST,
    HEADER_LEN,
    MAX_CONTENT,
    PARAMS,
    STDIN,
    STDOUT,
    MalformedPairs,
    MalformedRecord,
    ProtocolError,
    Record,
    RecordReader,
    UnsupportedVersion,
    decode_pairs,
    encode_begin_request,
    encode_end_request,
    encode_pairs,
    encode_record,
    encode_stream,
    parse_begin_request,
    parse_end_request,
)

records_st = st.builds(
    Record,
    type=st.integers(1, 255),
    request_id=st.integers(0, 0xFFFF),
    content=st.binary(max_size=300),
)
pairs_st = st.lists(st.tuples(st.binary(max_size=300), st.binary(max_size=300)), max_size=20)


def with_padding(record: Record, padding: int) -> bytes:
    header = struct.pack(">BBHHBx", 1, record.type, record.request_id, len(record.content), padding)
    return header + record.content + b"\0" * padding


def feed_in_chunks(data: bytes, cuts: list[int]) -> list[Record]:
    reader = RecordReader()
    out: list[Record] = []
    last = 0
    for cut in sorted(set(cuts)):
        out += reader.feed(data[last:cut])
        last = cut
    out += reader.feed(data[last:])
    assert reader.buffered == 0
    return out


@given(st.lists(records_st, max_size=10), st.lists(st.integers(0, 255), max_size=10))
def test_record_stream_round_trip(records, paddings):
    data = b"".join(
        with_padding(r, paddings[i] if i < len(paddings) else 0) for i, r in enumerate(records)
    )
    assert RecordReader().feed(data) == records


@given(st.lists(records_st, min_size=1, max_size=6), st.data())
def test_random_chunkings_parse_the_same(records, data):
    stream = b"".join(encode_record(r.type, r.request_id, r.content) for r in records)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    assert feed_in_chunks(stream, cuts) == records


def test_every_split_point_parses_the_same():
    records = [
        Record(BEGIN_REQUEST, 1, encode_begin_request(1)[HEADER_LEN:]),
        Record(PARAMS, 1, encode_pairs({b"REQUEST_METHOD": b"GET", b"X" * 200: b"y" * 300})),
        Record(PARAMS, 1, b""),
        Record(STDIN, 1, b"body" * 50),
        Record(STDIN, 1, b""),
    ]
    stream = b"".join(with_padding(r, 5) for r in records)
    for cut in range(len(stream) + 1):
        assert feed_in_chunks(stream, [cut]) == records
    # byte by byte, the worst case for re-buffering
    assert feed_in_chunks(stream, list(range(len(stream)))) == records


@given(pairs_st)
def test_pairs_round_trip(pairs):
    assert decode_pairs(encode_pairs(pairs)) == pairs


@given(pairs_st, st.data())
def test_pairs_split_across_records(pairs, data):
    """A pair may be split across PARAMS records: the reader reassembles the stream."""
    encoded = encode_pairs(pairs)
    size = data.draw(st.integers(1, 64))
    stream = b"".join(
        encode_record(PARAMS, 1, encoded[i : i + size]) for i in range(0, len(encoded), size)
    )
    params = b"".join(r.content for r in RecordReader().feed(stream))
    assert decode_pairs(params) == pairs


def test_four_byte_lengths():
    name, value = b"N" * 127, b"V" * 128
    encoded = encode_pairs([(name, value)])
    assert encoded[0] == 127  # fits in one byte
    assert encoded[1:5] == struct.pack(">I", 128 | 0x80000000)
    assert decode_pairs(encoded) == [(name, value)]


@given(pairs_st.filter(bool), st.data())
def test_truncated_pairs_raise(pairs, data):
    encoded = encode_pairs(pairs)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    truncated = encoded[:cut]
    try:
        decoded = decode_pairs(truncated)
    except MalformedPairs:
        return
    # A cut that falls exactly between pairs is a valid, shorter run.
    assert decoded == pairs[: len(decoded)]
    assert encode_pairs(decoded) == truncated


@pytest.mark.parametrize(
    "data",
    [b"\x80", b"\x80\x00\x00", b"\x05", b"\x05\x01abc", b"\x01\x80\x00\x00\x10a", b"\xff" * 8],
)
def test_malformed_pairs(data):
    with pytest.raises(MalformedPairs):
        decode_pairs(data)


def test_bad_version_raises():
    with pytest.raises(UnsupportedVersion, match="version 2"):
        RecordReader().feed(b"\x02\x01\x00\x01\x00\x00\x00\x00")


@settings(max_examples=200)
@given(st.binary(min_size=8, max_size=2000))
def test_garbage_raises_or_buffers_boundedly(data):
    """Garbage either parses as records, raises ProtocolError, or waits for more: never more
    than one record (64 KiB + padding + header) is held back."""
    reader = RecordReader()
    try:
        reader.feed(data)
    except ProtocolError:
        return
    assert reader.buffered <= MAX_CONTENT + 255 + HEADER_LEN


def test_reader_buffer_bounded_for_huge_stream():
    reader = RecordReader()
    record = encode_record(STDIN, 1, os.urandom(MAX_CONTENT))
    stream = record * 20
    seen = 0
    for i in range(0, len(stream), 1000):
        seen += len(reader.feed(stream[i : i + 1000]))
        assert reader.buffered <= len(record)
    assert seen == 20


def test_encode_stream_frames_without_copy():
    body = os.urandom(MAX_CONTENT * 3 + 10)
    pieces = encode_stream(STDOUT, 3, body)
    assert len(pieces) == 8
    assert all(isinstance(p, memoryview) for p in pieces[1::2])
    records = RecordReader().feed(b"".join(pieces))
    assert [len(r.content) for r in records] == [MAX_CONTENT] * 3 + [10]
    assert b"".join(r.content for r in records) == body
    assert encode_stream(STDOUT, 3, b"") == []


def test_fixed_bodies():
    assert parse_begin_request(encode_begin_request(9, 1, 1)[HEADER_LEN:]) == (1, 1)
    assert parse_end_request(encode_end_request(9, 7, 2)[HEADER_LEN:]) == (7, 2)
    with pytest.raises(MalformedRecord):
        parse_begin_request(b"\0\1")
    with pytest.raises(ValueError):
        encode_record(STDOUT, 1, b"x" * (MAX_CONTENT + 1))

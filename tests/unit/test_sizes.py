"""Byte sizes: every accepted form and the errors for the rest."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cellnet.errors import ConfigError
from cellnet.sizes import GiB, KiB, MiB, TiB, format_size, parse_size


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (100, 100),
        (8 * GiB, 8 * GiB),
        (1e9, 1_000_000_000),  # a whole float, as TOML/JSON may give for 1e9
        ("0", 0),
        ("100", 100),
        ("100B", 100),
        ("100 b", 100),
        # powers of 1024
        ("64KiB", 64 * KiB),
        ("64kib", 64 * KiB),
        ("64 KIB", 64 * KiB),
        ("8GiB", 8 * GiB),
        ("2MiB", 2 * MiB),
        ("1TiB", TiB),
        ("1PiB", 1024 * TiB),
        ("1.5MiB", 3 * MiB // 2),
        ("0.5KiB", 512),
        (".5KiB", 512),
        ("2.KiB", 2 * KiB),
        # bare letters are powers of 1024 too
        ("1k", KiB),
        ("1K", KiB),
        ("512m", 512 * MiB),
        ("8G", 8 * GiB),
        ("1T", TiB),
        # powers of 1000
        ("10MB", 10_000_000),
        ("1kb", 1000),
        ("1KB", 1000),
        ("3GB", 3_000_000_000),
        ("2TB", 2 * 10**12),
        ("1PB", 10**15),
        ("1EB", 10**18),
        ("1EiB", 1024**6),
        ("1.5KB", 1500),
        # whitespace
        ("64 KiB", 64 * KiB),
        ("  64KiB  ", 64 * KiB),
        ("64\tKiB", 64 * KiB),
    ],
)
def test_parse_size(value: int | str, expected: int) -> None:
    assert parse_size(value) == expected


def test_fractions_of_a_byte_round_down() -> None:
    assert parse_size("0.1KiB") == 102  # 102.4
    assert parse_size("1.0001KB") == 1000  # 1000.1


def test_large_values_are_exact() -> None:
    assert parse_size("123456789012345678901234567890") == 123456789012345678901234567890
    assert parse_size("1.000000000000000000001TB") == 10**12


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (-1, "cannot be negative"),
        ("-1", "cannot be negative"),
        ("-1KiB", "cannot be negative"),
        (True, ""),
        (False, ""),
        ("", ""),
        ("   ", ""),
        ("KiB", ""),
        ("12XB", 'unknown unit "XB"'),
        ("12 bytes", 'unknown unit "bytes"'),
        ("1.5", "whole number"),
        ("1.5B", "whole number"),
        (1.5, "whole number"),
        (float("inf"), "whole number"),
        (float("nan"), "whole number"),
        (-1.0, "whole number"),
        ("1e9", ""),
        ("1,000", ""),
        ("0x10", ""),
        ("1 2", ""),
        ("٣", ""),  # a non-ASCII digit
        (None, ""),
        ([1], ""),
        ({"size": 1}, ""),
    ],
)
def test_bad_sizes(value: object, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_size(value, key="limits.max_message")  # type: ignore[arg-type]
    message = str(info.value)
    assert message.startswith("limits.max_message: expected a size")
    assert '"64KiB"' in message  # shows the accepted forms
    assert "got " in message
    assert reason in message


def test_error_message_spells_the_value_as_written() -> None:
    with pytest.raises(ConfigError, match=r'got "12XB"'):
        parse_size("12XB")
    with pytest.raises(ConfigError, match=r"got true"):
        parse_size(True)
    with pytest.raises(ConfigError, match=r"got -5 "):
        parse_size(-5)


def test_default_key_is_size() -> None:
    with pytest.raises(ConfigError, match=r"^size: "):
        parse_size("nope")


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1, "1 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (64 * KiB, "64.0 KiB"),
        (64 * MiB, "64.0 MiB"),
        (MiB - 1, "1.0 MiB"),  # not "1024.0 KiB"
        (8 * GiB, "8.0 GiB"),
        (3 * TiB, "3.0 TiB"),
        (2**70, "1024.0 EiB"),  # the largest unit grows without bound
        (-2048, "-2.0 KiB"),
    ],
)
def test_format_size(n: int, text: str) -> None:
    assert format_size(n) == text


@given(st.integers(min_value=0, max_value=2**62))
def test_format_then_parse_is_close(n: int) -> None:
    text = format_size(n).replace(" ", "")
    assert abs(parse_size(text) - n) <= max(n * 0.05, 1)

"""Cell names: the validation rules and the tree helpers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cellnet.errors import ConfigError, InvalidCellName
from cellnet.names import (
    MAX_NAME,
    MAX_SEGMENT,
    child_toward,
    is_ancestor,
    is_valid_name,
    match_pattern,
    parent_name,
    root_name,
    validate_name,
)

# -- validate_name -----------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "server",
        "site-1",
        "site-1.job-7",
        "server.job-a",
        "a",
        "A_b-C.9",
        "a.b.c.d.e",
        "x" * MAX_SEGMENT,
        ".".join(["y" * 63] * 4),  # 255 characters
        "Site-1",
        "0",
        "-",
        "_._",
    ],
)
def test_valid_names_are_returned_unchanged(name: str) -> None:
    assert validate_name(name) == name
    assert is_valid_name(name)


def test_longest_valid_name_is_255() -> None:
    name = ".".join(["y" * 63] * 4)
    assert len(name) == MAX_NAME
    assert validate_name(name) == name


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("", "must not be empty"),
        (".site", "starts with '.'"),
        ("site.", "ends with '.'"),
        ("site..job", "empty segment"),
        (".", "starts with '.'"),
        ("site 1", "character ' ' is not allowed"),
        ("site/1", "character '/' is not allowed"),
        ("site:1", "character ':' is not allowed"),
        ("sité", "character 'é' is not allowed"),
        ("site-１", "not allowed"),  # a full-width digit is not ASCII
        ("site\n", "character '\\n' is not allowed"),
        ("site*", "character '*' is not allowed"),
        ("x" * (MAX_SEGMENT + 1), "65 characters long; the limit is 64"),
        ("ok." + "x" * 70, "70 characters long; the limit is 64"),
        (".".join(["y" * 64] * 4), "259 characters long; the limit is 255"),
    ],
)
def test_invalid_names_say_which_rule_they_break(name: str, rule: str) -> None:
    with pytest.raises(InvalidCellName) as info:
        validate_name(name)
    message = str(info.value)
    assert rule in message
    assert message.startswith("invalid cell name '")
    assert not is_valid_name(name)


def test_message_quotes_the_bad_name() -> None:
    with pytest.raises(InvalidCellName, match=r"'site\.\.1'"):
        validate_name("site..1")


def test_very_long_names_are_shortened_in_the_message() -> None:
    with pytest.raises(InvalidCellName) as info:
        validate_name("z" * 10_000)
    assert len(str(info.value)) < 300


@pytest.mark.parametrize("value", [None, 1, 1.5, b"site-1", ["site-1"], True])
def test_non_str_is_invalid(value: object) -> None:
    with pytest.raises(InvalidCellName, match=f"got {type(value).__name__}"):
        validate_name(value)
    assert not is_valid_name(value)


def test_invalid_cell_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        validate_name("bad name")


def test_str_subclass_is_checked() -> None:
    class Name(str):
        pass

    assert validate_name(Name("site-1")) == "site-1"
    with pytest.raises(InvalidCellName):
        validate_name(Name("bad..name"))


def test_repeated_invalid_name_raises_every_time() -> None:
    for _ in range(3):
        with pytest.raises(InvalidCellName):
            validate_name("a..b")


_segment = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_",
    min_size=1,
    max_size=MAX_SEGMENT,
)


@given(st.lists(_segment, min_size=1, max_size=5))
def test_any_name_built_by_the_rules_is_valid(segments: list[str]) -> None:
    name = ".".join(segments)
    assert is_valid_name(name) == (len(name) <= MAX_NAME)


@given(st.text(max_size=300))
def test_validation_never_raises_anything_else(text: str) -> None:
    try:
        assert validate_name(text) == text
    except InvalidCellName:
        pass


# -- tree helpers --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "parent"),
    [
        ("site-1.job-7", "site-1"),
        ("site-1.job-7.x", "site-1.job-7"),
        ("site-1", None),
        ("server", None),
    ],
)
def test_parent_name(name: str, parent: str | None) -> None:
    assert parent_name(name) == parent


@pytest.mark.parametrize(
    ("name", "root"),
    [("site-1.job-7.x", "site-1"), ("site-1", "site-1"), ("server.job-a", "server")],
)
def test_root_name(name: str, root: str) -> None:
    assert root_name(name) == root


@pytest.mark.parametrize(
    ("ancestor", "name", "expected"),
    [
        ("site-1", "site-1.job-7", True),
        ("site-1", "site-1.job-7.x", True),
        ("site-1.job-7", "site-1.job-7.x", True),
        ("site-1", "site-1", False),  # strict
        ("site-1", "site-10", False),  # prefix of the text, not of the tree
        ("site-1", "site-10.job", False),
        ("site-1.job-7", "site-1", False),  # descendant, not ancestor
        ("site-1", "site-2.job-7", False),
        ("site", "site-1.job", False),
        ("server", "site-1", False),
    ],
)
def test_is_ancestor(ancestor: str, name: str, expected: bool) -> None:
    assert is_ancestor(ancestor, name) is expected


@pytest.mark.parametrize(
    ("name", "dest", "child"),
    [
        ("site-1", "site-1.job-7.x", "site-1.job-7"),
        ("site-1", "site-1.job-7", "site-1.job-7"),
        ("site-1.job-7", "site-1.job-7.x.y", "site-1.job-7.x"),
        ("server", "server.job-a", "server.job-a"),
        ("site-1", "site-1", None),
        ("site-1", "site-10.job", None),
        ("site-1", "site-2", None),
        ("site-1.job-7", "site-1", None),
        ("server", "site-1", None),
    ],
)
def test_child_toward(name: str, dest: str, child: str | None) -> None:
    assert child_toward(name, dest) == child


@given(st.lists(_segment, min_size=2, max_size=5), st.integers(min_value=1, max_value=4))
def test_child_toward_agrees_with_parent_name(segments: list[str], depth: int) -> None:
    dest = ".".join(segments)
    depth = min(depth, len(segments) - 1)
    name = ".".join(segments[:depth])
    child = child_toward(name, dest)
    assert child is not None
    assert parent_name(child) == name
    assert child == dest or is_ancestor(child, dest)


# -- patterns ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "pattern", "expected"),
    [
        ("site-1", "site-*", True),
        ("site-", "site-*", True),
        ("site-10", "site-*", True),
        ("site-1.job-7", "site-*", True),  # * crosses dots
        ("server", "site-*", False),
        ("Site-1", "site-*", False),  # case-sensitive
        ("site-1", "site-?", True),
        ("site-10", "site-?", False),
        ("site-1", "site-1", True),
        ("site-1", "site-", False),  # the whole name must match
        ("xsite-1", "site-*", False),
        ("anything.at.all", "*", True),
        ("site-1.job-7", "*.job-7", True),
        ("site-1.job-8", "*.job-7", False),
        ("site-1", "s*-?", True),
        ("sitex1", "site.1", False),  # '.' is literal, not a regex wildcard
        ("site-[1]", "site-[1]", True),  # brackets are literal too
        ("site-1", "site-[1]", False),
    ],
)
def test_match_pattern(name: str, pattern: str, expected: bool) -> None:
    assert match_pattern(name, pattern) is expected

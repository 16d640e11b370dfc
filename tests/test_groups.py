"""Group paths: what is accepted, what tidings mints, and what a subtree holds."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings import groups
from tidings.errors import BadRequest

SEGMENT = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,63}", fullmatch=True)
HEX40 = re.compile(r"[0-9a-f]{40}")
HEX16 = re.compile(r"[0-9a-f]{16}")


@pytest.mark.parametrize(
    "path",
    [
        "a",
        "0",
        "acme",
        "acme/team-1/prod_eu",
        "a" + "b" * 63,
        "/".join(["s"] * 16),
        "0123456789abcdef0123456789abcdef01234567/0123456789abcdef",
    ],
)
def test_well_formed_paths_are_accepted(path: str) -> None:
    """Lowercase segments of 1 to 64 characters, up to 16 deep, are groups."""
    assert groups.is_group(path)
    assert groups.parse_group(path) == path


@pytest.mark.parametrize(
    "path",
    [
        "",
        "Acme",
        "acme/Team",
        "a//b",
        "a/../b",
        "..",
        "/a",
        "a/",
        "a%2Fb",
        "a%20b",
        "grüppe",
        "\uff41",
        "a b",
        " a",
        "a\n",
        "a\tb",
        "_a",
        "-a",
        "a.b",
        "/".join(["s"] * 17),
        "a" * 65,
        "ok/" + "a" * 65,
    ],
)
def test_malformed_paths_are_refused(path: str) -> None:
    """Upper case, empty or dot segments, stray slashes, escapes, non-ASCII, oversize: refused."""
    assert not groups.is_group(path)
    with pytest.raises(BadRequest, match="parent"):
        groups.parse_group(path, "parent")


def test_non_strings_are_refused() -> None:
    """A group given as a number or null is a BadRequest, not a crash."""
    for value in (None, 7, ["a"]):
        with pytest.raises(BadRequest):
            groups.parse_group(value)


@given(st.lists(SEGMENT, min_size=1, max_size=16))
def test_any_path_of_valid_segments_is_accepted(segments: list[str]) -> None:
    """Every path built from 1 to 16 valid segments is a group."""
    assert groups.is_group("/".join(segments))


def test_minted_root_is_forty_lowercase_hex() -> None:
    """A root is a UID: 20 random bytes as 40 lowercase hex characters, fresh each time."""
    roots = {groups.new_root() for _ in range(50)}
    assert len(roots) == 50
    assert all(HEX40.fullmatch(root) for root in roots)
    assert all(groups.is_group(root) for root in roots)


def test_minted_child_is_parent_slash_sixteen_hex() -> None:
    """A child is its parent, '/', and an SUID of 16 lowercase hex characters."""
    parent = groups.new_root()
    child = groups.new_child(parent)
    head, _, tail = child.rpartition("/")
    assert head == parent
    assert HEX16.fullmatch(tail)
    assert groups.is_group(child)
    assert groups.new_child(parent) != child


def test_no_child_below_the_deepest_level() -> None:
    """A group 16 deep has no room for a child."""
    deepest = "/".join(["s"] * 16)
    assert groups.depth(groups.new_child("/".join(["s"] * 15))) == 16
    with pytest.raises(BadRequest, match="16"):
        groups.new_child(deepest)


@pytest.mark.parametrize(
    ("ancestor", "path", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/b", "a/b/c", True),
        ("a/b", "a/b/c/d", True),
        ("a", "a/b/c", True),
        ("a/b", "a/b2", False),
        ("a/b", "a/bc", False),
        ("a/b", "a/b_c", False),
        ("a/b", "a/b-c", False),
        ("a/b", "a", False),
        ("a/b", "b", False),
        ("a/b/c", "a/b", False),
    ],
)
def test_contains_compares_whole_segments(ancestor: str, path: str, expected: bool) -> None:
    """A group contains itself and its descendants, never a sibling sharing a prefix or a parent."""
    assert groups.contains(ancestor, path) is expected


def test_root_ancestors_and_depth() -> None:
    """A path knows its tenant, its chain of ancestors and its depth."""
    assert groups.root_of("a/b/c") == "a"
    assert groups.ancestors("a/b/c") == ("a", "a/b", "a/b/c")
    assert groups.depth("a/b/c") == 3


def _in_bounds(parent: str, path: str) -> bool:
    low, high = groups.subtree_bounds(parent)
    return low <= path < high


@pytest.mark.parametrize("suffix", ["_", "-", ".", "0", "z", "_x/y", "-x/y", ".x/y"])
def test_subtree_bounds_exclude_siblings_sharing_a_prefix(suffix: str) -> None:
    """Siblings such as a/b_, a/b- and a/b. fall outside a/b's range; its children fall inside."""
    assert not _in_bounds("a/b", "a/b" + suffix)
    assert _in_bounds("a/b", "a/b/c")
    assert not _in_bounds("a/b", "a/b")


@given(
    st.lists(SEGMENT, min_size=1, max_size=4),
    st.lists(SEGMENT, min_size=1, max_size=4),
    st.text(alphabet="abc_-.0/", max_size=6),
)
def test_subtree_bounds_agree_with_contains(
    parent_segments: list[str], below: list[str], tail: str
) -> None:
    """A path lies in a group's range exactly when it is a strict descendant of the group."""
    parent = "/".join(parent_segments)
    descendant = parent + "/" + "/".join(below)
    assert _in_bounds(parent, descendant)
    other = parent + tail
    assert _in_bounds(parent, other) == (other != parent and groups.contains(parent, other)), other

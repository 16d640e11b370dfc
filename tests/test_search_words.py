"""The words of an event's search text: the fast path for ASCII finds what the regex finds."""

from __future__ import annotations

import string

from hypothesis import given
from hypothesis import strategies as st

from tidings.storage.indexing import SEARCH_TEXT_LIMIT, WORD, search_text, words


@given(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=127)))
def test_ascii_text_gives_the_regex_words(text: str) -> None:
    assert words(text) == " ".join(WORD.findall(text))


@given(st.text())
def test_any_text_gives_the_regex_words(text: str) -> None:
    assert words(text) == " ".join(WORD.findall(text))


def test_punctuation_separates_words_and_underscores_join_them() -> None:
    assert words("cgr.dev/chainguard/nginx:latest user@example.com a_b") == (
        "cgr dev chainguard nginx latest user example com a_b"
    )
    assert words(string.punctuation.replace("_", "")) == ""
    assert words("\tÉtat  naïve-café\n") == "État naïve café"


def test_the_body_gives_its_strings_and_numbers_depth_first_and_not_its_keys() -> None:
    body = {
        "name": "w1",
        "tags": ["blue", {"size": 12, "ok": True, "none": None}, 2.5],
        "owner": {"team": "core"},
    }
    assert search_text("dev.x.v1", "s/1", None, None, body) == "dev x v1 s 1 w1 blue 12 2 5 core"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
)


@given(json_values)
def test_the_body_walk_matches_a_recursive_one(body: object) -> None:
    def walk(value: object) -> list[str]:
        if isinstance(value, dict):
            return [text for item in value.values() for text in walk(item)]
        if isinstance(value, list):
            return [text for item in value for text in walk(item)]
        if isinstance(value, bool) or value is None:
            return []
        return [str(value)]

    expected = words(" ".join(["t", "", "", "", *walk(body)]))
    assert search_text("t", None, None, None, body) == expected


@given(st.text())
def test_distinct_words_are_the_words_each_once_in_their_first_order(text: str) -> None:
    found = WORD.findall(text)
    assert words(text, distinct=True) == " ".join(dict.fromkeys(found))


def test_distinct_words_keep_the_first_of_each_and_tell_case_apart() -> None:
    assert words("a b a c b a", distinct=True) == "a b c"
    assert words("", distinct=True) == ""
    assert words("Walrus walrus WALRUS walrus", distinct=True) == "Walrus walrus WALRUS"
    assert words("été-été x été", distinct=True) == "été x"
    assert search_text("t", "t/1", None, "t 1", {"again": "t"}, distinct=True) == "t 1"


def test_the_words_stop_at_the_limit_between_two_words() -> None:
    many = " ".join(f"wörd{n}" for n in range(60_000))  # 6 or 7 bytes a word, past the limit
    kept = words(many)
    assert len(kept.encode()) <= SEARCH_TEXT_LIMIT
    assert len(kept.encode()) > SEARCH_TEXT_LIMIT - 8
    assert kept.split() == many.split()[: len(kept.split())]
    assert words("x" * (SEARCH_TEXT_LIMIT + 5)) == ""
    assert words("a " + "é" * SEARCH_TEXT_LIMIT) == "a"

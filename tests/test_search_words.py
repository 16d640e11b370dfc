"""The words of an event's search text: the fast path for ASCII finds what the regex finds."""

from __future__ import annotations

import string

from hypothesis import given
from hypothesis import strategies as st

from tidings.storage.indexing import WORD, words


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

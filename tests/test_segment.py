import pytest
from hypothesis import given
from hypothesis import strategies as st

from stepforge.segment import (
    UnknownSegmenterError,
    available_segmenters,
    register_segmenter,
    segment,
    split_steps,
)
from stepforge.worlds.arith.tokenizer import build_tokenizer

texts = st.lists(st.sampled_from([*"ab 1=\n\t:", "Step 2:", "\n\n", "user:", "ки"]), max_size=30).map("".join)


@pytest.mark.parametrize("name", ["line", "blank_line", "step_marker", "turns", "token_chunks"])
@given(text=texts)
def test_join_of_segments_is_the_text(name, text):
    assert "".join(segment(text, name)) == text


@given(text=st.text(alphabet="0123456789a+-*=\n :Answer", max_size=60), size=st.integers(1, 7))
def test_token_chunks_with_a_tokenizer_round_trip(text, size):
    pieces = segment(text, "token_chunks", size=size, tokenizer=build_tokenizer())
    assert "".join(pieces) == text


def test_line_steps():
    assert split_steps("a-6=34\nb*2=68\n\nAnswer: 68\n", "line") == ["a-6=34", "b*2=68", "Answer: 68"]


def test_blank_line_steps_keep_inner_newlines():
    text = "First we add.\n3+4=7\n\nThen double.\n7*2=14\n\n\nAnswer: 14"
    assert split_steps(text, "blank_line") == ["First we add.\n3+4=7", "Then double.\n7*2=14", "Answer: 14"]


def test_step_marker_steps():
    text = "Let's solve.\nStep 1: add 3.\nStep 2: double it\n## Step 3. done"
    assert split_steps(text, "step_marker") == ["Let's solve.", "Step 1: add 3.", "Step 2: double it",
                                                "## Step 3. done"]


def test_token_chunks_by_words():
    assert segment("a b c d e", "token_chunks", size=2) == ["a b ", "c d ", "e"]


def test_unknown_segmenter_lists_the_known_ones():
    with pytest.raises(UnknownSegmenterError, match=r"unknown segmenter 'sentences'; available: .*line"):
        segment("x", "sentences")


def test_register_a_new_strategy():
    @register_segmenter("semicolon")
    def by_semicolon(text):
        parts = text.split(";")
        return [p + ";" for p in parts[:-1]] + [parts[-1]]

    assert "semicolon" in available_segmenters()
    assert split_steps("a;b;c", "semicolon") == ["a;", "b;", "c"]

"""Pure logic: UTF-8 reassembly and stop strings across token boundaries."""

from runner.engine.textstream import TextStream


def feed(stream: TextStream, pieces: list[bytes]) -> str:
    return "".join(stream.push(p) for p in pieces)


def test_multibyte_character_split_across_tokens_is_held_until_complete():
    stream = TextStream()
    euro = "€".encode()
    assert stream.push(b"a" + euro[:1]) == "a"
    assert stream.push(euro[1:2]) == ""
    assert stream.push(euro[2:] + b"b") == "€b"


def test_stop_string_spanning_tokens_is_never_emitted():
    stream = TextStream(["STOP"])
    out = feed(stream, [b"hello S", b"TO", b"P and more"])
    assert out == "hello "
    assert stream.stopped and stream.stop_word == "STOP"
    assert stream.push(b"ignored") == ""


def test_partial_stop_prefix_is_released_when_it_turns_out_not_to_be_a_stop():
    stream = TextStream(["###"])
    assert stream.push(b"a #") == "a "
    assert stream.push(b"# b") == "## b"
    assert not stream.stopped


def test_flush_releases_a_held_back_partial_stop():
    stream = TextStream(["</end>"])
    assert stream.push(b"x </e") == "x "
    assert stream.flush() == "</e"
    assert not stream.stopped and stream.stop_word is None


def test_earliest_of_several_stops_wins():
    stream = TextStream(["b", "a"])
    assert stream.push(b"xxab") == "xx"
    assert stream.stop_word == "a"


def test_invalid_utf8_becomes_replacement_character():
    stream = TextStream()
    assert stream.push(b"\xff") == "\ufffd"

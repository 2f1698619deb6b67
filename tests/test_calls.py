"""`name(a, key=value)`: the one reader of spec layers and teaching steps."""

from __future__ import annotations

import pytest

from cnnlab.errors import UsageError
from cnnlab.teach.calls import Arg, Call, parse_call


def test_names_keys_and_values_as_written():
    call = parse_call(" MaxPool ( 2 , Stride = -3 , ceil_mode=TRUE ) ")
    assert call == Call("maxpool", (Arg(None, "2", "2"), Arg("stride", "-3", "Stride = -3"),
                                    Arg("ceil_mode", "TRUE", "ceil_mode=TRUE")))
    assert parse_call("relu") == parse_call("relu()") == parse_call("relu( )") == Call("relu")


@pytest.mark.parametrize(("text", "value"), [
    ("-3", -3), ("+2", 2), ("0.25", 0.25), ("-1e-3", -0.001), ("3x5", (3, 5)), ("TRUE", True), ("false", False),
    ("SAME", "same"),
])
def test_values_read_as_the_spec_language_writes_them(text, value):
    (arg,) = parse_call(f"layer(k={text})").args
    assert arg.value == value and type(arg.value) is type(value)


def test_commas_always_split_and_a_bad_value_is_named():
    # Neither language quotes or nests values, so a comma inside one splits it, and the
    # pieces are named when read.
    call = parse_call('f("a,b", (1,2))')
    assert [a.text for a in call.args] == ['"a', 'b"', "(1", "2)"]
    with pytest.raises(UsageError, match=r"cannot read the value '\(1': use a number, true/false, a word"):
        call.args[2].value
    with pytest.raises(UsageError, match="cannot read the value '': use a number"):
        parse_call("f(1,)").args[1].value
    with pytest.raises(UsageError, match="the number 99999999999999999999... has 5,000 characters"):
        parse_call(f"conv({'9' * 5000},3)").args[0].value  # a ValueError from int() before


@pytest.mark.parametrize("text", ["conv(64,3", "64conv", "conv(3) relu", "conv[3]", ""])
def test_text_that_is_no_call_is_quoted_with_an_example(text):
    with pytest.raises(UsageError) as caught:
        parse_call(text, "layer", "conv(64,3)")
    assert str(caught.value) == f"cannot read the layer {text!r}: write it as name or name(arguments), e.g. conv(64,3)"

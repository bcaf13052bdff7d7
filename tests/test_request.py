import pytest

from modeledit import Request, RequestError


def test_a_good_request_fills_the_subject_in():
    r = Request("{} is located in the city of", "The Eiffel Tower", " Rome")
    assert r.text == "The Eiffel Tower is located in the city of"
    assert Request.from_dict(r.to_dict()) == r


@pytest.mark.parametrize(
    "kwargs, field, words",
    [
        (dict(prompt="The Eiffel Tower is in", subject="The Eiffel Tower", target=" Rome"), "prompt", "Request.from_text"),
        (dict(prompt="Paris is nice", subject="The Eiffel Tower", target=" Rome"), "prompt", "no '{}'"),
        (dict(prompt="{} and {} are in", subject="X", target=" Rome"), "prompt", "exactly one"),
        (dict(prompt="{} is in", subject="  ", target=" Rome"), "subject", "is empty"),
        (dict(prompt="{} is in", subject="The Eiffel Tower", target=""), "target", "is empty"),
        (dict(prompt="{} is in", subject="The Eiffel Tower", target="   "), "target", "is empty"),
        (dict(prompt="{} is in", subject="X", target=" Rome", target_true=" Rome"), "target", "equals target_true"),
    ],
)
def test_bad_requests_name_the_field_and_the_fix(kwargs, field, words):
    with pytest.raises(RequestError) as exc:
        Request(**kwargs)
    assert exc.value.field == field
    assert words in str(exc.value)


def test_from_text_needs_the_subject_in_the_prompt():
    r = Request.from_text("BBC One, by", "BBC One", " Sega")
    assert r.prompt == "{}, by"
    with pytest.raises(RequestError, match="does not occur in the prompt"):
        Request.from_text("The Eiffel Tower is in", "Louvre", " Rome")

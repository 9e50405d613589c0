import pytest

from ablate.data.taxonomy import BUILTIN_DOMAINS, Taxonomy, is_under
from ablate.errors import AblateError


def test_builtin_domains_cover_the_research_splits():
    for tag in (
        "code.exec",
        "code.nl",
        "code.text",
        "math.text",
        "math.structured",
        "math.code",
        "general",
    ):
        assert tag in Taxonomy()
        assert tag in BUILTIN_DOMAINS


def test_selector_is_a_prefix_on_dot_boundaries():
    tags = ["math.text", "math.structured", "math.structured.socratic", "mathematics", "code.exec"]
    assert Taxonomy().select("math", ["math.text", "math.structured", "code.exec"], "x") == [
        "math.text",
        "math.structured",
    ]
    assert is_under("math.structured.socratic", "math.structured")
    assert not is_under("mathematics", "math")  # a prefix of the string is not a parent
    assert [t for t in tags if is_under(t, "math.structured")] == [
        "math.structured",
        "math.structured.socratic",
    ]


def test_unknown_domain_error_names_the_place_and_the_allowed_tags():
    with pytest.raises(AblateError) as e:
        Taxonomy().validate("maths", "corpora.yaml: sources[0].domain")
    msg = str(e.value)
    assert msg.startswith("corpora.yaml: sources[0].domain: 'maths' is not a known domain")
    assert "math.structured" in msg and "declare new ones" in msg


def test_user_extension_declares_ancestors_too():
    tax = Taxonomy(["science.physics.mechanics"])
    assert "science" in tax and "science.physics" in tax and "science.physics.mechanics" in tax
    assert tax.extra == ["science.physics.mechanics"]
    with pytest.raises(AblateError, match="not a valid domain tag"):
        Taxonomy(["Science Physics"])

"""Copy-constrained decoding (``quote_sources``): the constraint on its own, then through the server."""
from __future__ import annotations

import re

import openai
import pytest

from core.serving.quotes import QuoteConstraint, TokenBytes

SOURCE_ZH = "本院认为：《中华人民共和国劳动法》第八十七条规定：“县级以上各级人民政府有关部门在各自职责范围内进行监督。"
SOURCE_EN = 'The Board shall act independently when performing its tasks.'


@pytest.fixture(scope="module")
def table(tiny_tokenizer):
    return TokenBytes(tiny_tokenizer)


def _texts(table, ids):
    return {table.bytes[i].decode("utf-8", errors="replace") for i in ids}


def test_token_bytes_spell_every_text_back(tiny_tokenizer, table):
    for text in (SOURCE_ZH, SOURCE_EN, "依据“x”和《y》"):
        ids = tiny_tokenizer(text, add_special_tokens=False).input_ids
        assert b"".join(table.bytes[i] for i in ids).decode("utf-8") == text
    assert table.bytes[tiny_tokenizer.eos_token_id] is None  # a special token never continues a quote


def test_inside_a_quote_only_source_continuations_are_allowed(table):
    quotes = QuoteConstraint([SOURCE_ZH, SOURCE_EN], table)
    # Outside quotes the model is free, but for a closing mark with no quote open.
    closers = ("”".encode(), "》".encode())
    outside = set(quotes.allowed("依据".encode()))
    assert {t for t, data in enumerate(table.bytes) if data and not any(c in data for c in closers)} <= outside
    assert not any(table.bytes[t] and any(c in table.bytes[t] for c in closers) for t in outside)
    allowed = quotes.allowed("依据第八十七条：“县级以上".encode())
    assert allowed
    for tid in allowed:  # each keeps the quote a substring of a source
        assert ("县级以上".encode() + table.bytes[tid]) in SOURCE_ZH.encode()
    english = _texts(table, quotes.allowed(b'It applies: "The Board sh'))
    assert english and all(("The Board sh" + t) in SOURCE_EN for t in english)


def test_a_quote_starts_and_closes_on_word_edges_after_six_characters(table):
    quotes = QuoteConstraint([SOURCE_EN], table)

    def can_close(text: str) -> bool:
        return any(table.bytes[t].startswith(b'"') for t in quotes.allowed(text.encode()) or [])

    assert not can_close('applies: "The')            # 3 characters: too short to check
    assert not can_close('applies: "The Board sh')   # would cut "shall"
    assert can_close('applies: "The Board shall')
    assert quotes.copies(b'applies: "The Board shall" [1].') and not quotes.copies(b'applies: "he Board shall"')
    openings = _texts(table, quotes.allowed(b'applies: "'))
    assert openings and all(not t[:1].isalnum() or re.search(r"(?<![A-Za-z0-9])" + re.escape(t), SOURCE_EN)
                            for t in openings)
    assert "he" not in openings and "oard" not in openings  # no quote starts inside a word


def test_titles_are_anchored_and_a_quote_never_holds_its_own_opener(table):
    quotes = QuoteConstraint([SOURCE_ZH], table)
    titles = quotes.allowed("依据《".encode())
    assert titles and all(("《".encode() + table.bytes[t]) in SOURCE_ZH.encode() for t in titles)
    assert quotes.copies("依据《中华人民共和国劳动法》第八十七条".encode())
    assert not quotes.copies("依据第六岁、个人实施”[1]".encode())  # closes a quote it never opened
    assert not quotes.copies("依据《劳动法》".encode())  # half a title names no law
    # The source quotes inside its own text; a copy that ran into that “ has left the quote it opened.
    inner = quotes.allowed("依据：“第八十七条规定：".encode())
    assert inner and all("“".encode() not in table.bytes[t] for t in inner)
    assert all(table.bytes[t].startswith("”".encode()[:len(table.bytes[t])]) for t in inner)  # it can only close


def test_a_closer_split_over_tokens_can_close_where_the_source_has_none(tiny_tokenizer, table):
    """This vocabulary spells ” as three one-byte tokens; the source has no ” after "各级人民"."""
    quotes = QuoteConstraint([SOURCE_ZH], table)
    text = "依据：“县级以上各级人民".encode()
    closer = tiny_tokenizer("”", add_special_tokens=False).input_ids
    assert len(closer) > 1
    for tid in closer:
        assert tid in (quotes.allowed(text) or []), text
        text += table.bytes[tid]
    assert quotes.copies(text) and len(quotes.allowed(text)) > len(table.bytes) / 2  # closed: free again
    assert not quotes.copies("依据：“县级以上”".encode())  # ... but not before six characters


def test_served_quotes_are_copies_of_the_sources(model_server, tiny_tokenizer):
    """logit_bias makes the untrained model open and close quotes whenever it may: without
    quote_sources its quotes are empty, with them each is a copy of a source, on word edges."""
    client = openai.OpenAI(base_url=model_server.base_url, api_key=model_server.api_keys["legal"], max_retries=0)
    quote_mark = tiny_tokenizer.convert_tokens_to_ids('"')

    def ask(sources):
        return client.chat.completions.create(
            model="deepseek-tiny", messages=[{"role": "user", "content": "Which article applies?"}], max_tokens=48,
            temperature=0, logit_bias={str(quote_mark): 100},
            extra_body={"quote_sources": sources} if sources else None).choices[0].message.content

    assert '""' in ask(None)
    text = ask([SOURCE_EN, SOURCE_ZH])
    closed = re.findall(r'"([^"]*)"', text)
    assert closed, text
    for quote in closed:
        assert len(quote) >= 6 and (quote in SOURCE_EN or quote in SOURCE_ZH), text
        assert re.search(r"(?<![A-Za-z0-9])" + re.escape(quote) + r"(?![A-Za-z0-9])", SOURCE_EN + SOURCE_ZH), text


def test_logit_bias_and_quote_sources_are_checked(model_server):
    client = openai.OpenAI(base_url=model_server.base_url, api_key=model_server.api_keys["legal"], max_retries=0)
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.UnprocessableEntityError, match="quote_sources"):
        client.chat.completions.create(model="deepseek-tiny", messages=messages, max_tokens=4,
                                       extra_body={"quote_sources": ["x" * 20_001]})
    with pytest.raises(openai.BadRequestError, match="outside the vocabulary"):
        client.chat.completions.create(model="deepseek-tiny", messages=messages, max_tokens=4,
                                       logit_bias={"99999999": 5})
    with pytest.raises(openai.UnprocessableEntityError, match="from -100 to 100"):
        client.chat.completions.create(model="deepseek-tiny", messages=messages, max_tokens=4, logit_bias={"5": 500})


def test_a_marker_right_after_a_quote_names_a_source_that_holds_it(table):
    """Sources are numbered as the [n] that cite them; the trained adapter writes [1] by habit
    (73 % of its training answers), whichever window it copied from."""
    quotes = QuoteConstraint(["The Board shall act independently.", SOURCE_ZH], table)
    quote = "依据《中华人民共和国劳动法》第八十七条：“县级以上各级人民政府”"
    numbers = _texts(table, quotes.allowed((quote + "[").encode()))
    assert numbers and all(t.startswith("2") for t in numbers)
    assert quotes.copies((quote + "[2]。").encode()) and not quotes.copies((quote + "[1]。").encode())
    assert not quotes.copies((quote + " [1]").encode())
    assert quotes.copies((quote + "，见[1]").encode())  # a marker apart from the quote is the model's own

"""bridge.redact: passwords in URLs, bearer tokens and given secrets are hidden in text."""

from __future__ import annotations

import pytest

from bridge.redact import redact_text, redact_url


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("amqp://guest:guest@127.0.0.1:5672/%2F", "amqp://guest:***@127.0.0.1:5672/%2F"),
        ("amqps://user:s3cr3t@mq.example/vhost", "amqps://user:***@mq.example/vhost"),
        ("http://u:p%40ss@host:8080/path?q=1#f", "http://u:***@host:8080/path?q=1#f"),
        ("http://u:p@ss@host/", "http://u:***@host/"),
        ("http://:onlypass@host/", "http://:***@host/"),
        ("http://user@host/", "http://user@host/"),
        ("http://host:8080/", "http://host:8080/"),
        ("http://127.0.0.1:8081/", "http://127.0.0.1:8081/"),
        ("not a url", "not a url"),
        ("", ""),
    ],
)
def test_redact_url(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


def test_redact_url_that_cannot_be_parsed_still_hides_the_password() -> None:
    # urlsplit refuses an unclosed IPv6 bracket: the text rules apply instead
    assert redact_url("amqp://u:secret@[::1/") == "amqp://u:***@[::1/"


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        (
            "cannot connect to amqp://guest:hunter2@mq:5672/: refused",
            "cannot connect to amqp://guest:***@mq:5672/: refused",
        ),
        ("Authorization: Bearer abc.def-123", "Authorization: Bearer ***"),
        ("authorization: bearer abc; next", "authorization: bearer ***; next"),
        ('{"auth": "Bearer tok"}', '{"auth": "Bearer ***"}'),
        (
            "a http://x:1@h/ and https://y:2@k/",
            "a http://x:***@h/ and https://y:***@k/",
        ),
        ("nothing secret here: http://host:8080/", "nothing secret here: http://host:8080/"),
    ],
)
def test_redact_text(text: str, redacted: str) -> None:
    assert redact_text(text) == redacted


def test_redact_text_removes_given_secrets() -> None:
    text = "token tok-123 was refused; tok-123 again; other stays"
    assert redact_text(text, ("tok-123", "")) == "token *** was refused; *** again; other stays"
    assert redact_text("abc", ("",)) == "abc"  # an empty secret redacts nothing

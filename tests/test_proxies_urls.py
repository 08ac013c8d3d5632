"""Proxy URLs: four schemes, socks5 stored as socks5h, everything else refused with a reason."""

from __future__ import annotations

import pytest

from pools.proxies import normalize_proxy_url, parse_pool_answer


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("socks5://127.0.0.2:9", "socks5h://127.0.0.2:9"),
        ("SOCKS5://user:pa:ss@proxy.example:1080/", "socks5h://user:pa:ss@proxy.example:1080"),
        ("socks5h://proxy.example:1080", "socks5h://proxy.example:1080"),
        ("  http://proxy.example:3128 ", "http://proxy.example:3128"),
        ("https://user:pw@proxy.example:443", "https://user:pw@proxy.example:443"),
        ("http://[::1]:8080", "http://[::1]:8080"),
    ],
)
def test_it_normalises_supported_proxy_urls(given, stored):
    assert normalize_proxy_url(given) == stored


@pytest.mark.parametrize(
    ("given", "reason"),
    [
        ("ftp://proxy.example:21", "unsupported proxy scheme ftp://"),
        ("socks4://proxy.example:1080", "unsupported proxy scheme socks4://"),
        ("proxy.example:3128", "has no scheme"),
        ("http://proxy.example:99999", "invalid port"),
        ("http://:3128", "has no host"),
        ("http://proxy.example:3128/path", "nothing after"),
    ],
)
def test_it_refuses_other_urls_saying_why(given, reason):
    with pytest.raises(ValueError, match=reason):
        normalize_proxy_url(given)


def test_it_never_shows_the_password_in_a_refusal():
    with pytest.raises(ValueError) as info:
        normalize_proxy_url("ftp://user:hunter2@proxy.example:21")
    assert "hunter2" not in str(info.value) and "user:****@" in str(info.value)


@pytest.mark.parametrize(
    ("answer", "url"),
    [
        ("socks5://127.0.0.2:9\n", "socks5h://127.0.0.2:9"),
        ("127.0.0.2:9\n127.0.0.3:9\n", "http://127.0.0.2:9"),
        ('{"proxy": "socks5://u:p@127.0.0.2:9"}', "socks5h://u:p@127.0.0.2:9"),
        ('"http://127.0.0.2:9"', "http://127.0.0.2:9"),
    ],
)
def test_it_reads_a_proxy_pool_answer_as_text_or_json(answer, url):
    assert parse_pool_answer(answer) == url


@pytest.mark.parametrize("answer", ["", "  \n", '{"ip": "127.0.0.2"}', "{not json", "ftp://127.0.0.2:9"])
def test_it_refuses_a_proxy_pool_answer_without_a_usable_proxy(answer):
    with pytest.raises(ValueError):
        parse_pool_answer(answer)

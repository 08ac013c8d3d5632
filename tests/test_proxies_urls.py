"""Proxy URLs: four schemes, socks5 stored as socks5h, everything else refused with a reason."""

from __future__ import annotations

import pytest

from pools.proxies import normalize_proxy_url, parse_pool_answer


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("socks5://10.0.0.1:1080", "socks5h://10.0.0.1:1080"),
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
        ("socks5://10.0.0.1:1080\n", "socks5h://10.0.0.1:1080"),
        ("10.0.0.1:3128\n10.0.0.2:3128\n", "http://10.0.0.1:3128"),
        ('{"proxy": "socks5://u:p@10.0.0.1:1080"}', "socks5h://u:p@10.0.0.1:1080"),
        ('"http://10.0.0.1:3128"', "http://10.0.0.1:3128"),
    ],
)
def test_it_reads_a_proxy_pool_answer_as_text_or_json(answer, url):
    assert parse_pool_answer(answer) == url


@pytest.mark.parametrize("answer", ["", "  \n", '{"ip": "10.0.0.1"}', "{not json", "ftp://10.0.0.1:21"])
def test_it_refuses_a_proxy_pool_answer_without_a_usable_proxy(answer):
    with pytest.raises(ValueError):
        parse_pool_answer(answer)

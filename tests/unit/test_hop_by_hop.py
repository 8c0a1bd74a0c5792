from reference.hop_by_hop import connection_options, strip_hop_by_hop


def test_fixed_hop_by_hop_fields_are_removed_whatever_their_case():
    headers = [
        ("Host", "reviews"),
        ("Keep-Alive", "timeout=5"),
        ("TRANSFER-ENCODING", "chunked"),
        ("te", "trailers"),
        ("Upgrade", "websocket"),
        ("Proxy-Connection", "keep-alive"),
        ("Accept", "*/*"),
    ]
    assert strip_hop_by_hop(headers) == [("Host", "reviews"), ("Accept", "*/*")]


def test_fields_named_in_connection_are_removed_with_connection_itself():
    headers = [
        ("Connection", "X-Foo, close"),
        ("X-Foo", "secret"),
        ("connection", " x-bar "),
        ("X-Bar", "1"),
        ("X-Baz", "kept"),
    ]
    assert strip_hop_by_hop(headers) == [("X-Baz", "kept")]


def test_end_to_end_fields_keep_their_order_and_repeats():
    headers = [("Set-Cookie", "a=1"), ("Vary", "Accept"), ("Set-Cookie", "b=2")]
    assert strip_hop_by_hop(headers) == headers


def test_connection_options_ignore_empty_tokens():
    assert connection_options([("Connection", " , Keep-Alive,,X-A ")]) == {"keep-alive", "x-a"}

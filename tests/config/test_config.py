"""sipsuite.config: defaults, the documented file, validation and its messages."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from pathlib import Path

import pytest

from sipsuite.config import (
    PACKAGED_CONFIG,
    Config,
    ConfigError,
    ControlSpec,
    ListenSpec,
    default_config_path,
    load_config,
    parse_control,
    parse_listen,
)
from sipsuite.config import loader as config_module

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTED = ROOT / "conf" / "sipsuite.toml"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "x.toml"
    path.write_text(text)
    return str(path)


def error_of(tmp_path: Path, text: str, **kwargs: object) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(path + ": ")
    return message[len(path) + 2 :]


# --- defaults and the documented file ---------------------------------------


def test_defaults() -> None:
    c = load_config(None)
    assert c.path is None
    assert c.proxy.listen == [
        ListenSpec("udp", "0.0.0.0", 5060),
        ListenSpec("tcp", "0.0.0.0", 5060),
    ]
    assert c.proxy.domains == []
    assert c.proxy.advertise == ""
    assert c.proxy.trusted == []
    assert c.proxy.routing == "sipsuite.proxy.routing:DefaultRouting"
    assert c.proxy.record_route is True
    assert c.proxy.tcp_idle_timeout == 600.0
    assert c.proxy.tcp_message_timeout == 20.0
    assert (c.proxy.tcp_max_connections, c.proxy.tcp_max_per_source) == (2048, 64)
    assert c.proxy.dns_timeout == 3.0
    assert c.proxy.dns_servers == []
    assert c.proxy.server_header == "sipsuite"
    assert (c.timers.t1, c.timers.t2, c.timers.t4, c.timers.timer_c) == (0.5, 4.0, 5.0, 180.0)
    assert c.location_static == {}
    assert c.log.level == "info"


def test_documented_file_is_the_defaults() -> None:
    c = load_config(str(DOCUMENTED))
    assert c.path == str(DOCUMENTED)
    assert dataclasses.replace(c, path=None) == load_config(None)


def schema_keys() -> list[tuple[str, str]]:
    keys = []
    for f in dataclasses.fields(Config):
        if "cls" in f.metadata:
            keys += [(f.metadata["section"], k.name) for k in dataclasses.fields(f.metadata["cls"])]
    return keys


@pytest.mark.parametrize(("section", "key"), schema_keys())
def test_documented_file_sets_every_key_with_a_comment(section: str, key: str) -> None:
    """Each key is written out (not commented) in its section, after a comment."""
    text = DOCUMENTED.read_text()
    doc = tomllib.loads(text)
    assert key in doc[section], f"{section}.{key} missing from {DOCUMENTED}"
    body = text.split(f"[{section}]\n", 1)[1].split("\n[", 1)[0]
    m = re.search(rf"((?:^#.*\n)+)^{key} = ", body, re.MULTILINE)
    assert m, f"{section}.{key} has no comment above it"


def test_documented_file_shows_the_examples() -> None:
    text = DOCUMENTED.read_text()
    assert '#   bob = ["sip:bob@192.0.2.10:5060"]' in text
    assert 'domains = ["example.com"' in text


def test_default_config_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert default_config_path() == str(PACKAGED_CONFIG)  # source checkout
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "sipsuite.toml").write_text("")
    assert default_config_path() == os.path.join("conf", "sipsuite.toml")
    monkeypatch.setattr(config_module, "PACKAGED_CONFIG", tmp_path / "absent.toml")
    monkeypatch.chdir(ROOT / "tests")
    assert default_config_path() is None  # an installed wheel: built-in defaults


def test_overrides(tmp_path: Path) -> None:
    c = load_config(
        write(
            tmp_path,
            """
[proxy]
listen = ["udp:127.0.0.1:5070", "TCP:[::1]:0"]
domains = ["Example.COM", "192.0.2.1", "2001:DB8::1", "[::1]"]
advertise = "[2001:db8::2]:5080"
trusted = ["192.0.2.0/24", "10.1.2.3/8", "2001:db8::/32", "198.51.100.7"]
routing = "mypkg.routes:MyRouting"
record_route = false
tcp_idle_timeout = 30
dns_timeout = 0.5
server_header = ""

[timers]
t1 = 1
t2 = 8
t4 = 2.5
timer_c = 60

[location.static]
bob = ["sip:bob@192.0.2.10:5060"]
"+4930123" = ["sip:+4930123@gw.example.net;transport=tcp", "sips:x@[2001:db8::1]:5061"]

[log]
level = "debug"
""",
        )
    )
    assert c.proxy.listen == [ListenSpec("udp", "127.0.0.1", 5070), ListenSpec("tcp", "::1", 0)]
    assert c.proxy.domains == ["example.com", "192.0.2.1", "2001:db8::1", "::1"]
    assert c.proxy.advertise == "[2001:db8::2]:5080"
    assert c.proxy.trusted == [
        ipaddress.ip_network("192.0.2.0/24"),
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("2001:db8::/32"),
        ipaddress.ip_network("198.51.100.7/32"),
    ]
    assert ipaddress.ip_address("192.0.2.77") in c.proxy.trusted[0]
    assert c.proxy.routing == "mypkg.routes:MyRouting"
    assert c.proxy.record_route is False
    assert c.proxy.tcp_idle_timeout == 30.0 and isinstance(c.proxy.tcp_idle_timeout, float)
    assert c.proxy.dns_timeout == 0.5
    assert c.proxy.server_header == ""
    assert (c.timers.t1, c.timers.t2, c.timers.t4, c.timers.timer_c) == (1.0, 8.0, 2.5, 60.0)
    assert c.location_static == {
        "bob": ["sip:bob@192.0.2.10:5060"],
        "+4930123": ["sip:+4930123@gw.example.net;transport=tcp", "sips:x@[2001:db8::1]:5061"],
    }
    assert c.log.level == "debug"


def test_partial_file_keeps_other_defaults(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, '[proxy]\ndomains = ["example.com"]\n'))
    assert c.proxy.domains == ["example.com"]
    assert dataclasses.replace(c, path=None, proxy=load_config(None).proxy) == load_config(None)


def test_dotted_keys_at_top_level(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, 'proxy.domains = ["a.example"]\nlog.level = "warn"\n'))
    assert c.proxy.domains == ["a.example"] and c.log.level == "warn"


def test_config_is_frozen() -> None:
    c = load_config(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.proxy.record_route = False  # type: ignore[misc]


# --- listen URIs ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "spec", "canonical"),
    [
        ("udp:0.0.0.0:5060", ListenSpec("udp", "0.0.0.0", 5060), "udp:0.0.0.0:5060"),
        ("tcp:127.0.0.1:0", ListenSpec("tcp", "127.0.0.1", 0), "tcp:127.0.0.1:0"),
        ("tcp:[::1]:5060", ListenSpec("tcp", "::1", 5060), "tcp:[::1]:5060"),
        ("udp:[::]:5062", ListenSpec("udp", "::", 5062), "udp:[::]:5062"),
        ("TLS:0.0.0.0:5061", ListenSpec("tls", "0.0.0.0", 5061), "tls:0.0.0.0:5061"),
        (
            "UDP:[2001:DB8:0::1]:65535",
            ListenSpec("udp", "2001:db8::1", 65535),
            "udp:[2001:db8::1]:65535",
        ),
    ],
)
def test_parse_listen(text: str, spec: ListenSpec, canonical: str) -> None:
    assert parse_listen(text) == spec
    assert str(spec) == canonical
    assert parse_listen(str(spec)) == spec


@pytest.mark.parametrize(
    "text",
    [
        "foo",
        "udp:0.0.0.0",  # no port
        "sctp:0.0.0.0:5060",
        "tls:0.0.0.0",  # no port
        "udp:0.0.0.0:65536",
        "udp:0.0.0.0:-1",
        "tcp:::1:5060",  # IPv6 needs brackets
        "tcp:[127.0.0.1]:5060",
        "udp:localhost:5060",  # an address is needed to bind
        "udp:300.1.1.1:5060",
        "udp: 0.0.0.0:5060",
        "",
    ],
)
def test_parse_listen_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="expected 'udp:HOST:PORT' or 'tcp:HOST:PORT'"):
        parse_listen(text)


def test_listen_error_names_the_item(tmp_path: Path) -> None:
    message = error_of(tmp_path, '[proxy]\nlisten = ["udp:0.0.0.0:5060", "foo"]\n')
    assert message.startswith("proxy.listen[1]: expected 'udp:HOST:PORT' or 'tcp:HOST:PORT'")
    assert message.endswith(", got 'foo'")


def test_listen_must_not_be_empty_or_repeat(tmp_path: Path) -> None:
    assert error_of(tmp_path, "[proxy]\nlisten = []\n") == (
        "proxy.listen: expected a list with at least one entry, got []"
    )
    assert error_of(tmp_path, '[proxy]\nlisten = ["udp:[::1]:5060", "udp:[0::1]:5060"]\n') == (
        "proxy.listen[1]: expected each entry only once, got 'udp:[0::1]:5060'"
    )


def test_listen_override(tmp_path: Path) -> None:
    path = write(tmp_path, '[proxy]\nlisten = ["udp:0.0.0.0:5060"]\ndomains = ["a.example"]\n')
    c = load_config(path, listen=["tcp:[::1]:5070", "udp:127.0.0.1:0"])
    assert c.proxy.listen == [ListenSpec("tcp", "::1", 5070), ListenSpec("udp", "127.0.0.1", 0)]
    assert c.proxy.domains == ["a.example"]
    assert load_config(None, listen=["udp:127.0.0.1:5999"]).proxy.listen == [
        ListenSpec("udp", "127.0.0.1", 5999)
    ]
    assert load_config(path, listen=None).proxy.listen == [ListenSpec("udp", "0.0.0.0", 5060)]


def test_listen_override_error() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, listen=["udp:127.0.0.1:5060", "bogus"])
    assert str(info.value).startswith("--listen: expected 'udp:HOST:PORT' or 'tcp:HOST:PORT'")
    assert str(info.value).endswith("got 'bogus'")


# --- each key is type-checked, and the message names it ------------------------------

BAD_VALUES = [
    ("proxy", "listen", '"udp:0.0.0.0:5060"', "a list [...]"),
    ("proxy", "listen", "[5060]", "'udp:HOST:PORT'"),
    ("proxy", "domains", '"example.com"', "a list [...]"),
    ("proxy", "domains", '["exa mple.com"]', "a domain name or IP address"),
    ("proxy", "domains", '["sip:example.com"]', "a domain name or IP address"),
    ("proxy", "domains", "[1]", "a domain name or IP address"),
    ("proxy", "advertise", "5060", "'' or 'HOST' or 'HOST:PORT'"),
    ("proxy", "advertise", '"2001:db8::1"', "'' or 'HOST' or 'HOST:PORT'"),
    ("proxy", "advertise", '"proxy.example.com:70000"', "'' or 'HOST' or 'HOST:PORT'"),
    ("proxy", "trusted", '"192.0.2.0/24"', "a list [...]"),
    ("proxy", "trusted", '["192.0.2.0/33"]', "an IP address or network"),
    ("proxy", "trusted", '["example.com"]', "an IP address or network"),
    ("proxy", "routing", '"DefaultRouting"', "'package.module:ClassName'"),
    ("proxy", "routing", "1", "'package.module:ClassName'"),
    ("proxy", "record_route", '"yes"', "true or false"),
    ("proxy", "record_route", "1", "true or false"),
    ("proxy", "tcp_idle_timeout", "0", "a number of seconds above 0"),
    ("proxy", "tcp_idle_timeout", '"600"', "a number of seconds above 0"),
    ("proxy", "tcp_message_timeout", "0", "a number of seconds above 0"),
    ("proxy", "tcp_message_timeout", "inf", "a number of seconds above 0"),
    ("proxy", "tcp_max_connections", "0", "a whole number from 1 to 1000000"),
    ("proxy", "tcp_max_connections", "2048.0", "a whole number from 1 to 1000000"),
    ("proxy", "tcp_max_per_source", "0", "a whole number from 1 to 1000000"),
    ("proxy", "tcp_max_per_source", '"64"', "a whole number from 1 to 1000000"),
    ("proxy", "tcp_write_queue_max", "4095", "a whole number from 4096 to 1073741824"),
    ("proxy", "tcp_write_queue_max", '"256k"', "a whole number from 4096 to 1073741824"),
    ("proxy", "workers", "0", "a whole number from 1 to 64"),
    ("proxy", "workers", "65", "a whole number from 1 to 64"),
    ("proxy", "workers", '"2"', "a whole number from 1 to 64"),
    ("proxy", "dns_timeout", "-1.0", "a number of seconds above 0"),
    ("proxy", "dns_timeout", "true", "a number of seconds above 0"),
    ("proxy", "dns_servers", '["ns.example.com"]', "a DNS server 'IP' or 'IP:PORT'"),
    ("proxy", "dns_servers", '["127.0.0.1:0"]', "a DNS server 'IP' or 'IP:PORT'"),
    ("proxy", "server_header", "1", "printable ASCII text on one line"),
    ("proxy", "server_header", '"a\\r\\nX-Evil: 1"', "printable ASCII text on one line"),
    ("proxy", "drop_user_agents", '"friendly-scanner"', "a list [...]"),
    ("proxy", "drop_user_agents", '[""]', "a non-empty string of printable ASCII on one line"),
    ("proxy", "drop_user_agents", '["  "]', "a non-empty string of printable ASCII on one line"),
    ("proxy", "drop_user_agents", "[1]", "a non-empty string of printable ASCII on one line"),
    ("proxy", "drop_user_agents", '["sipcli", "sipcli"]', "each entry only once"),
    ("timers", "t1", "0", "a number of seconds above 0"),
    ("timers", "t2", '"4s"', "a number of seconds above 0"),
    ("timers", "t4", "[]", "a number of seconds above 0"),
    ("timers", "timer_c", "nan", "a number of seconds above 0"),
    ("features", "auth", '"on"', "true or false"),
    ("features", "nat", "1", "true or false"),
    ("features", "debug", '"yes"', "true or false"),
    ("features", "ipauth", "1", "true or false"),
    ("features", "natsipping", '"options"', "true or false"),
    ("features", "pstn", "0", "true or false"),
    ("features", "voicemail", '"on"', "true or false"),
    ("features", "block3xx", "[]", "true or false"),
    ("features", "block401407", '"true"', "true or false"),
    ("features", "antiflood", '"on"', "true or false"),
    ("features", "accounting", "1", "true or false"),
    ("antiflood", "requests", "0", "a whole number from 1 to 1000000"),
    ("antiflood", "requests", "2.5", "a whole number from 1 to 1000000"),
    ("antiflood", "window", "0", "a number of seconds above 0"),
    ("antiflood", "window", '"2s"', "a number of seconds above 0"),
    ("antiflood", "ban_time", "-300", "a number of seconds above 0"),
    ("antiflood", "max_sources", "10", "a whole number from 100 to 10000000"),
    ("accounting", "file", '""', "a file path"),
    ("accounting", "file", "5", "a file path"),
    ("accounting", "file", '"acc\\n.log"', "a file path"),
    ("accounting", "max_duration", "0", "a number of seconds above 0"),
    ("accounting", "max_calls", "0", "a whole number from 1 to 10000000"),
    ("pstn", "gw_ip", '"gw example"', "'' or an IP address or host name"),
    ("pstn", "gw_ip", '"10.0.0.1:5060"', "'' or an IP address or host name"),
    ("pstn", "gw_ip", "1", "'' or an IP address or host name"),
    ("pstn", "gw_port", "0", "a whole number from 1 to 65535"),
    ("pstn", "gw_port", "65536", "a whole number from 1 to 65535"),
    ("pstn", "pattern", '"^(\\\\+|00"', "a regular expression"),
    ("pstn", "pattern", "5", "a regular expression"),
    ("voicemail", "srv_ip", '"sip:vm@example.com"', "'' or an IP address or host name"),
    ("voicemail", "srv_port", '"5060"', "a whole number from 1 to 65535"),
    ("uac", "secret", '"short"', "\"\" or a secret of 16 characters or more"),
    ("auth", "realm", '"my realm"', "a non-empty realm"),
    ("auth", "realm", '""', "a non-empty realm"),
    ("auth", "secret", '"a\\nb"', "printable ASCII text on one line"),
    ("auth", "nonce_expires", "0", "a number of seconds above 0"),
    ("auth", "algorithms", '["SHA-1"]', "'MD5' or 'SHA-256'"),
    ("auth", "algorithms", "[]", "a list with at least one entry"),
    ("registrar", "default_expires", "0", "a whole number from 1 to"),
    ("registrar", "min_expires", "-1", "a whole number from 0 to"),
    ("registrar", "max_expires", "1.5", "a whole number from 1 to"),
    ("registrar", "max_contacts", "-1", "a whole number from 0 to 10000"),
    ("registrar", "max_contacts_policy", '"drop"', "one of 'reject', 'drop_oldest'"),
    ("registrar", "max_contacts_per_request", "0", "a whole number from 1 to 1000"),
    ("registrar", "serial_forking", '"no"', "true or false"),
    ("registrar", "retry_after", "0", "a whole number from 1 to 3600"),
    ("registrar", "outbound", "1", "true or false"),
    ("nat", "keepalive_interval", "-5", "a number of seconds, 0 or more"),
    ("nat", "keepalive_timeout", "0", "a number of seconds above 0"),
    ("redis", "url", '"http://127.0.0.1:6379"', "'' or 'redis://"),
    ("redis", "url", '"redis://127.0.0.1:6379/x"', "'' or 'redis://"),
    ("redis", "timeout", "0", "a number of seconds above 0"),
    ("redis", "prefix", "1", "printable ASCII text on one line"),
    ("redis", "subscriber_cache", "-1", "a whole number from 0 to 100000000"),
    ("redis", "subscriber_cache", '"big"', "a whole number from 0 to 100000000"),
    ("management", "listen", '"udp:127.0.0.1:7060"', "'' or 'tcp:HOST:PORT'"),
    ("management", "listen", '"tcp:localhost:7060"', "'' or 'tcp:HOST:PORT'"),
    ("management", "relay_listen", '"udp:127.0.0.1:7061"', "'' or 'tcp:HOST:PORT'"),
    ("management", "token", '"short"', "'' or 16+ characters of letters, digits and -._~+/="),
    ("management", "token", '"has spaces in it, sixteen+"', "'' or 16+ characters"),
    ("management", "token", "12345678901234567", "'' or 16+ characters"),
    ("relay", "control", '"udp:127.0.0.1:7722"', "a list [...]"),
    ("relay", "control", "[]", "a list with at least one entry"),
    ("relay", "control", '["udp:0.0.0.0:7722"]', "'udp:HOST:PORT' with HOST a specific IP"),
    ("relay", "control", '["tcp:127.0.0.1:7722"]', "'udp:HOST:PORT' with HOST a specific IP"),
    ("relay", "control", '["unix:"]', "'udp:HOST:PORT' with HOST a specific IP"),
    ("relay", "media_addresses", '"10.0.0.1"', "a list [...]"),
    ("relay", "media_addresses", '["relay.example.com"]', "an IP address such as"),
    ("relay", "media_addresses", '["10.0.0.1", "10.0.0.2", "10.0.0.3"]',
     "one address, or two (internal, external) for bridging"),
    ("relay", "media_addresses", '["10.0.0.1", "0.0.0.0"]', "a specific address when bridging"),
    ("relay", "ports", '"35000"', "'LOW-HIGH' with 1 <= LOW < HIGH <= 65535"),
    ("relay", "ports", '"40000-30000"', "'LOW-HIGH' with 1 <= LOW < HIGH <= 65535"),
    ("relay", "ports", '"35001-35002"', "'LOW-HIGH' with 1 <= LOW < HIGH <= 65535"),
    ("relay", "ports", '"60000-70000"', "'LOW-HIGH' with 1 <= LOW < HIGH <= 65535"),
    ("relay", "ports", "[35000, 65000]", "'LOW-HIGH' with 1 <= LOW < HIGH <= 65535"),
    ("relay", "learn_window", "0", "a number of seconds above 0"),
    ("relay", "media_timeout", '"60"', "a number of seconds above 0"),
    ("relay", "hold_timeout", "-1", "a number of seconds above 0"),
    ("relay", "drain_time", "-1", "a number of seconds, 0 or more"),
    ("media", "relay", '"sometimes"', "one of 'nat', 'always'"),
    ("media", "relays", '"udp:127.0.0.1:7722"', "a list [...]"),
    ("media", "relays", '["udp:relay.example.com:7722"]', "'udp:HOST[:PORT]'"),
    ("media", "relays", '["tcp:127.0.0.1:7722"]', "'udp:HOST[:PORT]'"),
    ("media", "relays", '["udp:127.0.0.1:7722;weight=-1"]', "'udp:HOST[:PORT]'"),
    ("media", "relays", '["udp:127.0.0.1:7722", "udp:127.0.0.1:7722;weight=2"]',
     "each relay only once"),
    ("media", "command_timeout", "0", "a number of seconds above 0"),
    ("media", "disable_time", '"60"', "a number of seconds above 0"),
    ("media", "max_streams", "0", "a whole number from 1 to 1000"),
    ("relay", "max_sessions_per_call", "0", "a whole number from 1 to 100000"),
    ("relay", "kernel", '"yes"', "one of 'auto', 'on', 'off'"),
    ("relay", "workers", "0", "a whole number from 1 to 64"),
    ("media", "max_sessions_per_source", "-1", "a whole number from 0 to 10000000"),
    ("media", "internal_networks", '["10.0.0.0/33"]', "an IP address or network"),
    ("media", "internal_networks", '"10.0.0.0/8"', "a list [...]"),
    ("dispatcher", "list_file", "1", "'' or the path of a dispatcher list file"),
    ("dispatcher", "sets", '"1 sip:192.0.2.1"', "a table of SETID = [destinations]"),
    ("dispatcher", "sets", '{ 1 = "sip:192.0.2.1" }', "a non-empty list of destinations"),
    ("dispatcher", "sets", '{ 1 = ["sip:192.0.2.1 8x"] }', "'URI [FLAGS [PRIORITY [ATTRS]]]'"),
    ("dispatcher", "probe_interval", "-1", "a number of seconds, 0 or more"),
    ("dispatcher", "probe_timeout", "0", "a number of seconds above 0"),
    ("dispatcher", "probe_failures", "0", "a whole number from 1 to 1000"),
    ("dispatcher", "probe_successes", "1.5", "a whole number from 1 to 1000"),
    ("dispatcher", "probe_mode", "1", "one of 'all', 'inactive'"),
    ("dispatcher", "probe_reply_codes", "[99]", "a SIP status code from 100 to 699"),
    ("dispatcher", "probe_reply_codes", "[404, 404]", "each entry only once"),
    ("dispatcher", "probe_from", '"dispatcher@localhost"', "a 'sip:' or 'sips:' URI"),
    ("dispatcher", "call_timeout", "0", "a number of seconds above 0"),
    ("log", "level", '"trace"', "one of 'debug', 'info', 'warn', 'error'"),
    ("trace", "enabled", '"yes"', "true or false"),
    ("trace", "memory", '"64 parsecs"', 'a size in bytes, e.g. 67108864 or "64MB"'),
    ("trace", "memory", "-1", 'a size in bytes, e.g. 67108864 or "64MB"'),
    ("trace", "show_credentials", "1", "true or false"),
    ("trace", "hep", '"udp:homer.example.com:9060"', "'' or 'udp:IP:PORT'"),
    ("trace", "hep", '"tcp:10.0.0.5:9060"', "'' or 'udp:IP:PORT'"),
    ("trace", "hep", '"udp:10.0.0.5:70000"', "'' or 'udp:IP:PORT'"),
    ("trace", "hep_capture_id", "4294967296", "a whole number from 0 to 4294967295"),
    ("trace", "hep_capture_id", '"2001"', "a whole number from 0 to 4294967295"),
    ("trace", "hep_password", "1234", "a string"),
    ("log", "level", "3", "one of 'debug', 'info', 'warn', 'error'"),
    ("services", "load", '["nocolon"]', "'package.module:ClassName'"),
    ("tls", "certificate", "1", "'' or the path of a PEM file"),
    ("tls", "private_key", '"a\\nb"', "'' or the path of a PEM file"),
    ("tls", "ca_list", "[]", "'' or the path of a PEM file"),
    ("tls", "verify_server", '"yes"', "true or false"),
    ("tls", "require_client_cert", '["tcp:127.0.0.1:5061"]', "'tls:HOST:PORT' naming a tls"),
    ("tls", "require_client_cert", '"tls:127.0.0.1:5061"', "a list [...]"),
]


@pytest.mark.parametrize(("section", "key", "value", "expected"), BAD_VALUES)
def test_bad_value_names_key(
    tmp_path: Path, section: str, key: str, value: str, expected: str
) -> None:
    message = error_of(tmp_path, f"[{section}]\n{key} = {value}\n")
    assert message.startswith(f"{section}.{key}")
    assert f": expected {expected}" in message
    assert ", got " in message


@pytest.mark.parametrize(("section", "key", "value", "expected"), [
    ("nat", "keepalive_interval", "nan", "a number of seconds, 0 or more"),
    ("nat", "keepalive_interval", "inf", "a number of seconds, 0 or more"),
    ("timers", "t1", "inf", "a number of seconds above 0"),
    ("timers", "t1", "nan", "a number of seconds above 0"),
])
def test_nan_and_inf_are_not_seconds(
    tmp_path: Path, section: str, key: str, value: str, expected: str
) -> None:
    """TOML has nan and inf; as a timer either would stop it (callLater
    refuses nan) or never fire."""
    message = error_of(tmp_path, f"[{section}]\n{key} = {value}\n")
    assert message.startswith(f"{section}.{key}: expected {expected}")


def test_every_key_has_a_bad_value_test() -> None:
    assert {(s, k) for s, k, _, _ in BAD_VALUES} == set(schema_keys())


def test_bad_value_message_exact(tmp_path: Path) -> None:
    assert error_of(tmp_path, '[proxy]\nrecord_route = "yes"\n') == (
        "proxy.record_route: expected true or false, got 'yes'"
    )
    assert error_of(tmp_path, "[timers]\nt1 = -2\n") == (
        "timers.t1: expected a number of seconds above 0, got -2"
    )


def test_registrar_expiry_bounds_consistent(tmp_path: Path) -> None:
    assert error_of(tmp_path, "[registrar]\nmin_expires = 100\nmax_expires = 50\n") == (
        "registrar.max_expires: expected a value not below registrar.min_expires (100), got 50"
    )
    assert error_of(tmp_path, "[registrar]\ndefault_expires = 10\n") == (
        "registrar.default_expires: expected a value from registrar.min_expires (60) to"
        " registrar.max_expires (7200), got 10"
    )


def test_redis_option_overrides_url(tmp_path: Path) -> None:
    path = write(tmp_path, '[redis]\nurl = "redis://10.0.0.1:6379/0"\n')
    assert load_config(path, redis="redis://127.0.0.1:7000/2").redis.url == "redis://127.0.0.1:7000/2"
    with pytest.raises(ConfigError) as info:
        load_config(path, redis="127.0.0.1:7000")
    assert str(info.value) == (
        "--redis: expected '' or 'redis://[:PASSWORD@]HOST[:PORT][/DB]', got '127.0.0.1:7000'"
    )


def test_t2_not_below_t1(tmp_path: Path) -> None:
    assert error_of(tmp_path, "[timers]\nt1 = 5\n") == (
        "timers.t2: expected a value not below timers.t1 (5), got 4"
    )


def test_location_static(tmp_path: Path) -> None:
    assert error_of(tmp_path, '[location.static]\nbob = "sip:bob@192.0.2.10"\n') == (
        "location.static.bob: expected a list [...], got 'sip:bob@192.0.2.10'"
    )
    assert error_of(tmp_path, "[location.static]\nbob = []\n") == (
        "location.static.bob: expected a list with at least one entry, got []"
    )
    message = error_of(tmp_path, '[location.static]\nbob = ["sip:bob@a.example", "http://x"]\n')
    assert message.startswith("location.static.bob[1]: expected a 'sip:' or 'sips:' URI")
    for bad in ["bob@192.0.2.10", "sip:bob@", "sip:bob@[::1", "sip:bob@host:99999", "tel:+1555"]:
        message = error_of(tmp_path, f'[location.static]\nbob = ["{bad}"]\n')
        assert message.startswith("location.static.bob[0]: expected a 'sip:' or 'sips:' URI")
    assert error_of(tmp_path, '[location.static]\n"bob smith" = ["sip:b@h"]\n') == (
        "location.static.\"bob smith\": expected a SIP user part such as 'bob' or '+4930123'"
        " as the key"
    )


# --- unknown names, wrong shapes, unreadable files ------------------------------


def test_unknown_key_names_the_key(tmp_path: Path) -> None:
    assert error_of(tmp_path, '[proxy]\nlisten = ["udp:0.0.0.0:5060"]\nlisen = []\n') == (
        "proxy.lisen: unknown key; did you mean 'listen'?"
    )
    message = error_of(tmp_path, "[timers]\nfoo = 1\n")
    assert message == "timers.foo: unknown key; expected one of t1, t2, t4, timer_c"


def test_unknown_section(tmp_path: Path) -> None:
    assert error_of(tmp_path, "[proxxy]\n") == "proxxy: unknown section; did you mean 'proxy'?"
    assert error_of(tmp_path, "[location.dynamic]\n") == (
        "location.dynamic: unknown section; did you mean 'location.static'?"
    )
    assert error_of(tmp_path, "[zzz]\n").startswith("zzz: unknown section; expected one of ")


def test_section_must_be_a_table(tmp_path: Path) -> None:
    assert error_of(tmp_path, "proxy = 1\n") == "proxy: expected a table [proxy], got 1"
    assert error_of(tmp_path, "location = 1\n") == "location: expected a table, got 1"


def test_not_toml(tmp_path: Path) -> None:
    assert error_of(tmp_path, "[proxy\n").startswith("not valid TOML: ")


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: cannot read: No such file")):
        load_config(path)


# --- [relay] ---------------------------------------------------------------------------


def test_relay_defaults() -> None:
    r = load_config(None).relay
    assert r.control == [ControlSpec("udp", "127.0.0.1", 7722)]
    assert r.media_addresses == ["0.0.0.0"]
    assert r.ports == (35000, 65000)
    assert (r.learn_window, r.media_timeout, r.hold_timeout, r.drain_time) == (
        3.0, 60.0, 3600.0, 30.0)


def test_relay_values(tmp_path: Path) -> None:
    r = load_config(write(tmp_path, """
[relay]
control = ["udp:[::1]:7722", "UDP:127.0.0.2:0", "unix:/run/sipsuite/relay.sock"]
media_addresses = ["10.0.0.5", "2001:DB8::5"]
ports = "35001-35003"
drain_time = 0
""")).relay
    assert r.control == [
        ControlSpec("udp", "::1", 7722),
        ControlSpec("udp", "127.0.0.2", 0),
        ControlSpec("unix", path="/run/sipsuite/relay.sock"),
    ]
    assert [str(c) for c in r.control] == [
        "udp:[::1]:7722", "udp:127.0.0.2:0", "unix:/run/sipsuite/relay.sock"]
    assert r.media_addresses == ["10.0.0.5", "2001:db8::5"]
    assert r.ports == (35001, 35003)  # one pair: 35002/35003
    assert r.drain_time == 0.0


@pytest.mark.parametrize("text", ["udp:[::]:7722", "udp:127.0.0.1", "unix:", "udp6:[::1]:1",
                                  "udp:localhost:7722", "unix:" + "x" * 120, 7722])
def test_parse_control_rejects(text: object) -> None:
    with pytest.raises(ValueError, match="expected 'udp:HOST:PORT' with HOST a specific IP"):
        parse_control(text)


def test_relay_option_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, '[relay]\nports = "40000-40099"\n')
    r = load_config(path, control=["udp:127.0.0.1:9000", "unix:/tmp/r.sock"],
                    media_addresses=["192.0.2.1", "192.0.2.2"], ports="50000-50999").relay
    assert r.control == [ControlSpec("udp", "127.0.0.1", 9000),
                         ControlSpec("unix", path="/tmp/r.sock")]
    assert r.media_addresses == ["192.0.2.1", "192.0.2.2"]
    assert r.ports == (50000, 50999)
    assert load_config(path).relay.ports == (40000, 40099)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"ports": "1-2-3"}, "--ports: expected 'LOW-HIGH' with 1 <= LOW < HIGH <= 65535"),
    ({"control": ["udp:0.0.0.0:7722"]}, "--control: expected 'udp:HOST:PORT' with HOST a"),
    ({"control": []}, "--control: expected a list with at least one entry"),
    ({"media_addresses": ["nope"]}, "--media-address: expected an IP address"),
])
def test_relay_option_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, **kwargs)  # type: ignore[arg-type]
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_relay_consistency(tmp_path: Path) -> None:
    assert error_of(tmp_path, "[relay]\nmedia_timeout = 100\nhold_timeout = 50\n") == (
        "relay.hold_timeout: expected a value not below relay.media_timeout (100), got 50"
    )
    # A control port inside the media range is allowed: the relay skips the
    # pair it falls in, as it skips any port another program holds.
    c = load_config(write(tmp_path, '[relay]\ncontrol = ["udp:127.0.0.1:40000"]\n'))
    assert c.relay.control[0].port == 40000


def test_media_relays_and_override() -> None:
    from sipsuite.config import RelaySpec

    config = load_config(None)
    assert config.features.nat is False
    assert config.media.relay == "nat" and config.media.relays == []
    config = load_config(None, relays=["udp:10.0.0.5:7722;weight=2", "unix:/run/r.sock"])
    assert config.media.relays == [RelaySpec("udp:10.0.0.5:7722", 2), RelaySpec("unix:/run/r.sock")]
    with pytest.raises(ConfigError) as info:
        load_config(None, relays=["udp:nowhere"])
    assert str(info.value).startswith("--relay: expected 'udp:HOST[:PORT]'")


@pytest.mark.parametrize(("text", "size"), [('"64MB"', 64 * 1024 ** 2), ('"512kB"', 512 * 1024),
                                            ('"1GiB"', 1024 ** 3), ("1000", 1000), ('"2 mb"', 2 * 1024 ** 2)])
def test_trace_memory_sizes(tmp_path: Path, text: str, size: int) -> None:
    path = tmp_path / "t.toml"
    path.write_text(f"[trace]\nmemory = {text}\n")
    assert load_config(str(path)).trace.memory == size

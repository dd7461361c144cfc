"""Loading and validating cell configuration files."""

from __future__ import annotations

import dataclasses
import json
import re
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest

import cellnet.config
from cellnet.config import (
    CellSection,
    Config,
    FlowerSection,
    Limits,
    Policy,
    Timeouts,
    TlsSection,
    _Ctx,
    _path,
    _resolve_path,
    config_from_mapping,
    load_config,
)
from cellnet.errors import ConfigError, InvalidCellName
from cellnet.sizes import GiB, KiB, MiB

SERVER = """
[cell]
name = "server"
listen = ["tcp://0.0.0.0:8002"]
"""

CLIENT = """
[cell]
name = "site-1"
parent = "tcp://127.0.0.1:8002"
"""


def write(tmp_path: Path, text: str, name: str = "cell.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def mapping(**tables: Any) -> dict[str, Any]:
    """A valid client config with *tables* merged in."""
    data: dict[str, Any] = {"cell": {"name": "site-1", "parent": "tcp://server:8002"}}
    data.update(tables)
    return data


def config_error(data: Any, key: str, *, cls: type[ConfigError] = ConfigError) -> str:
    """Validate *data* and return the error message, checking file and key."""
    with pytest.raises(cls) as info:
        config_from_mapping(data, source="cell.toml")
    message = str(info.value)
    assert message.startswith(f"cell.toml: {key}: "), message
    return message


# -- loading valid files -------------------------------------------------------


def test_minimal_server(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, SERVER))
    assert config.cell == CellSection(name="server", listen=("tcp://0.0.0.0:8002",))
    assert config.cell.parent == ()
    assert config.cell.advertise == ()
    assert config.cell.is_server
    assert config.name == "server"
    assert config.flower is None
    assert config.source == str(tmp_path / "cell.toml")


def test_minimal_client(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, CLIENT))
    assert config.cell.name == "site-1"
    assert config.cell.parent == ("tcp://127.0.0.1:8002",)
    assert config.cell.listen == ()
    assert not config.cell.is_server


def test_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, CLIENT))
    assert config.limits == Limits(
        max_message=8 * GiB, max_header=64 * KiB, send_queue=64, chunk=1 * MiB, window=16 * MiB
    )
    assert config.timeouts == Timeouts(
        connect=5.0,
        handshake=5.0,
        heartbeat_interval=5.0,
        heartbeat_timeout=15.0,
        request=30.0,
        backoff_initial=0.1,
        backoff_max=5.0,
    )
    assert config.policy == Policy(direct=())
    assert config.flower is None


def test_source_is_the_path_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, CLIENT)
    monkeypatch.chdir(tmp_path)
    assert load_config("cell.toml").source == "cell.toml"
    assert load_config(Path("cell.toml")).source == "cell.toml"


def test_parent_list_keeps_its_order() -> None:
    config = config_from_mapping(
        {
            "cell": {
                "name": "site-1",
                "parent": ["grpc://s:8002", "wss://s:443/bus", "redis://r:6379/0?ns=x"],
            }
        }
    )
    assert config.cell.parent == ("grpc://s:8002", "wss://s:443/bus", "redis://r:6379/0?ns=x")


def test_listen_and_advertise_accept_str_or_list() -> None:
    one = config_from_mapping(
        {"cell": {"name": "server", "listen": "tcp://0.0.0.0:0", "advertise": "tcp://h:1"}}
    )
    many = config_from_mapping(
        {
            "cell": {
                "name": "server",
                "listen": ["tcp://0.0.0.0:0", "ws://0.0.0.0:80"],
                "advertise": ["tcp://h:1"],
            }
        }
    )
    assert one.cell.listen == ("tcp://0.0.0.0:0",)
    assert many.cell.listen == ("tcp://0.0.0.0:0", "ws://0.0.0.0:80")
    assert one.cell.advertise == many.cell.advertise == ("tcp://h:1",)


def test_cell_with_parent_and_listen() -> None:
    config = config_from_mapping(
        mapping(cell={"name": "site-1", "parent": "tcp://s:1", "listen": ["tcp://0.0.0.0:2"]})
    )
    assert config.cell.parent and config.cell.listen
    assert not config.cell.is_server


def test_url_scheme_is_lowercased_and_the_rest_kept() -> None:
    url = "HTTP://Host.Example:8002/X"
    config = config_from_mapping(mapping(cell={"name": "a", "parent": url}))
    assert config.cell.parent == ("http://Host.Example:8002/X",)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("tcp://127.0.0.1", "expected tcp://HOST:PORT"),
        ("tcp://127.0.0.1:8002/path", "takes no path or query"),
        ("grpc://127.0.0.1", "grpc://HOST:PORT"),
        ("redis://127.0.0.1:6379/0?nss=fl", "unknown query parameter 'nss'"),
        ("grcp://127.0.0.1:8002", "did you mean 'grpc'"),
    ],
)
def test_urls_are_checked_by_their_driver(url: str, reason: str) -> None:
    with pytest.raises(ConfigError, match="cell.parent") as info:
        config_from_mapping(mapping(cell={"name": "a", "parent": ["tcp://127.0.0.1:1", url]}))
    assert reason in str(info.value)
    with pytest.raises(ConfigError, match=r"cell.listen\[0\]"):
        config_from_mapping(mapping(cell={"name": "server", "listen": [url]}))


@pytest.mark.parametrize(
    "url",
    [
        "tcp://127.0.0.1:8002",
        "tcp://[::1]:8002",
        "grpcs://server.example.org:443",
        "https://proxy.example.org/fl/cellnet",
        "redis://localhost:6379/0?ns=fl&cell=server",
    ],
)
def test_good_urls(url: str) -> None:
    assert config_from_mapping(mapping(cell={"name": "a", "parent": url})).cell.parent == (url,)


@pytest.mark.parametrize("url", ["unix:///run/cellnet.sock", "inproc://server", "ws+tls://h:1"])
def test_unknown_schemes_name_the_known_ones(url: str) -> None:
    with pytest.raises(ConfigError, match="known schemes: .*tcp"):
        config_from_mapping(mapping(cell={"name": "a", "parent": url}))


def test_all_sections(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """
            [cell]
            name = "site-1.job-7"
            parent = ["tcp://127.0.0.1:8002"]
            listen = ["tcp://0.0.0.0:0"]
            advertise = ["tcp://10.0.0.5:8003"]

            [limits]
            max_message = "8GiB"
            max_header = 4096
            send_queue = 8

            [timeouts]
            connect = 1
            handshake = 2.5
            heartbeat_interval = 0.5
            heartbeat_timeout = 1.5
            request = 60
            backoff_initial = 0.05
            backoff_max = 0.05

            [policy]
            direct = ["site-*", "server"]

            [flower]
            listen = "127.0.0.1:9201"
            superlink = "[::1]:9092"
            max_body = "1.5GiB"
            """,
        )
    )
    assert config.cell.name == "site-1.job-7"
    assert config.limits == Limits(max_message=8 * GiB, max_header=4096, send_queue=8)
    assert config.timeouts.connect == 1.0 and isinstance(config.timeouts.connect, float)
    assert config.timeouts.heartbeat_timeout == 1.5
    assert config.timeouts.backoff_max == config.timeouts.backoff_initial == 0.05
    assert config.policy.direct == ("site-*", "server")
    assert config.flower == FlowerSection(
        listen="127.0.0.1:9201", superlink="[::1]:9092", max_body=3 * GiB // 2
    )


def test_json_file(tmp_path: Path) -> None:
    path = tmp_path / "cell.json"
    path.write_text(
        json.dumps(
            {
                "cell": {"name": "site-2", "parent": ["tcp://s:8002"]},
                "limits": {"max_message": "1MiB"},
                "timeouts": {"request": 10},
                "policy": {"direct": ["site-*"]},
            }
        )
    )
    config = load_config(path)
    assert config.cell.name == "site-2"
    assert config.limits.max_message == MiB
    assert config.timeouts.request == 10.0
    assert config.policy.direct == ("site-*",)


def test_json_extension_is_case_insensitive(tmp_path: Path) -> None:
    path = tmp_path / "CELL.JSON"
    path.write_text('{"cell": {"name": "a", "parent": "tcp://s:1"}}')
    assert load_config(path).cell.name == "a"


def test_other_extensions_are_read_as_toml(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, CLIENT, name="cell.conf")).cell.name == "site-1"
    assert load_config(write(tmp_path, CLIENT, name="cell")).cell.name == "site-1"


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "cell.toml"
    path.write_bytes(b"\xef\xbb\xbf" + CLIENT.encode())
    assert load_config(path).cell.name == "site-1"


def test_config_is_frozen() -> None:
    config = config_from_mapping(mapping())
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.cell = CellSection(name="x")  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.limits.max_message = 1  # type: ignore[misc]


def test_with_name() -> None:
    config = config_from_mapping(mapping(limits={"send_queue": 3}), source="cell.toml")
    cli = config.with_name("site-1-cli-4242")
    assert cli.name == "site-1-cli-4242"
    assert cli.cell.parent == config.cell.parent
    assert cli.limits == config.limits
    assert cli.source == config.source
    assert config.name == "site-1"  # the original is unchanged
    with pytest.raises(InvalidCellName):
        config.with_name("bad name")


def test_policy_allows_direct() -> None:
    policy = config_from_mapping(mapping(policy={"direct": ["site-*"]})).policy
    assert policy.allows_direct("site-2")
    assert not policy.allows_direct("server")
    assert not Policy().allows_direct("site-2")


def test_single_pattern_string_is_accepted() -> None:
    assert config_from_mapping(mapping(policy={"direct": "site-?"})).policy.direct == ("site-?",)


def test_empty_flower_table_gives_defaults() -> None:
    flower = config_from_mapping(mapping(flower={})).flower
    assert flower == FlowerSection(listen=None, superlink=None, max_body=64 * MiB)


# -- the documentation matches the code -----------------------------------------


def _reference_toml() -> str:
    doc = cellnet.config.__doc__
    assert doc is not None
    start = doc.index("    [cell]")
    end = doc.index("\nRules\n")
    return textwrap.dedent(doc[start:end])


def test_docstring_reference_is_valid_and_shows_the_defaults() -> None:
    data = tomllib.loads(_reference_toml())
    config = config_from_mapping(data, source="reference")
    assert config.limits == Limits()
    assert config.timeouts == Timeouts()
    assert config.policy == Policy()
    assert config.flower is not None
    assert config.flower.max_body == FlowerSection().max_body


def test_docstring_reference_lists_every_key() -> None:
    data = tomllib.loads(_reference_toml())
    sections = {
        "cell": CellSection,
        "limits": Limits,
        "timeouts": Timeouts,
        "policy": Policy,
        "tls": TlsSection,
        "flower": FlowerSection,
    }
    assert set(data) == set(sections) == {f.name for f in dataclasses.fields(Config)} - {
        "source"
    }
    for table, cls in sections.items():
        assert set(data[table]) == {f.name for f in dataclasses.fields(cls)}, table


# -- errors ---------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=re.escape(f"{path}: config file not found")):
        load_config(path)


def test_unreadable_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path}: cannot read config file")):
        load_config(tmp_path)  # a directory


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[cell]\nname = "site-1"\nparent = \n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: invalid TOML: ")
    assert "line 3" in message


def test_json_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "cell.json"
    path.write_text('{\n  "cell": {"name": "a",}\n}')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: invalid JSON: ")
    assert "line 2" in message


def test_json_top_level_must_be_an_object(tmp_path: Path) -> None:
    path = tmp_path / "cell.json"
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: expected an object")):
        load_config(path)


def test_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "cell.toml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: not UTF-8 text")):
        load_config(path)


def test_error_from_a_file_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, CLIENT + "[timeouts]\nheartbeat_timeout = \"abc\"\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f'{path}: timeouts.heartbeat_timeout: expected a number of seconds > 0, got "abc"'
    )


def test_unknown_table_with_suggestion() -> None:
    message = config_error(mapping(timeout={"request": 1}), "timeout")
    assert "unknown table" in message
    assert 'did you mean "timeouts"?' in message


def test_unknown_key_with_suggestion() -> None:
    message = config_error(
        mapping(timeouts={"heartbeat_intervall": 1}), "timeouts.heartbeat_intervall"
    )
    assert "unknown key" in message
    assert 'did you mean "heartbeat_interval"?' in message
    assert "expected one of: connect, handshake," in message


def test_unknown_key_without_suggestion() -> None:
    message = config_error(mapping(limits={"zzz": 1}), "limits.zzz")
    assert "did you mean" not in message
    assert "expected one of: max_message, max_header, send_queue" in message


def test_key_in_the_wrong_table_points_to_its_table() -> None:
    message = config_error(
        {"cell": {"name": "a", "parent": "tcp://s:1", "max_message": 5}}, "cell.max_message"
    )
    assert 'did you mean "limits.max_message"?' in message
    message = config_error({"name": "a"}, "name")
    assert 'did you mean "cell.name"?' in message


def test_missing_cell_table() -> None:
    message = config_error({"limits": {}}, "cell")
    assert "expected a [cell] table" in message


def test_missing_name() -> None:
    message = config_error({"cell": {"parent": "tcp://s:1"}}, "cell.name")
    assert 'expected a cell name like "site-1"' in message
    assert "missing" in message


@pytest.mark.parametrize(
    ("name", "rule"),
    [("site..1", "empty segment"), ("a b", "not allowed"), (7, "expected a str"), ("", "empty")],
)
def test_bad_name(name: object, rule: str) -> None:
    message = config_error(
        {"cell": {"name": name, "parent": "tcp://s:1"}}, "cell.name", cls=InvalidCellName
    )
    assert rule in message


def test_neither_parent_nor_listen() -> None:
    message = config_error({"cell": {"name": "a"}}, "cell")
    assert "cell.parent" in message and "cell.listen" in message
    message = config_error({"cell": {"name": "a", "parent": [], "listen": []}}, "cell")
    assert "got neither" in message


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("127.0.0.1:8002", "no scheme://"),
        ("localhost:8002", "no scheme://"),
        ("://host:1", "no scheme://"),
        ("tcp://", "nothing after scheme://"),
        ("tcp:/host:1", "no scheme://"),
        ("tcp://host:99999", "port out of range"),
        ("tcp://host:abc", "port could not be cast"),
        ("tcp://[::1:8002", "invalid ipv6"),
        ("1tcp://host:1", 'invalid scheme "1tcp"'),
        ("t_p://host:1", 'invalid scheme "t_p"'),
        ("tcp://host :1", "no spaces"),
        ("tcp://host:1\n", "no spaces"),
    ],
)
def test_bad_url(url: str, reason: str) -> None:
    message = config_error(mapping(cell={"name": "a", "parent": url}), "cell.parent")
    assert 'expected a URL like "tcp://host:port"' in message
    assert reason in message


def test_bad_url_in_a_list_names_its_index() -> None:
    message = config_error(
        {"cell": {"name": "server", "listen": ["tcp://0.0.0.0:1", "nope"]}}, "cell.listen[1]"
    )
    assert 'got "nope"' in message


@pytest.mark.parametrize(
    ("table", "key", "value", "expected"),
    [
        ("cell", "parent", 8002, 'a URL like "tcp://host:port" or a list of URLs'),
        ("cell", "listen", {"url": "tcp://a:1"}, "or a list of URLs"),
        ("cell", "advertise", 5.0, "or a list of URLs"),
        ("limits", "max_message", "lots", "a size"),
        ("limits", "max_message", 0, "a size > 0"),
        ("limits", "max_message", -1, "cannot be negative"),
        ("limits", "max_header", True, "a size"),
        ("limits", "send_queue", "64", "an integer >= 1"),
        ("limits", "send_queue", 0, "an integer >= 1"),
        ("limits", "send_queue", 1.0, "an integer >= 1"),
        ("limits", "send_queue", True, "an integer >= 1"),
        ("timeouts", "connect", "5s", "a number of seconds > 0"),
        ("timeouts", "connect", 0, "a number of seconds > 0"),
        ("timeouts", "request", -1.0, "a number of seconds > 0"),
        ("timeouts", "request", True, "a number of seconds > 0"),
        ("timeouts", "request", float("nan"), "a number of seconds > 0"),
        ("timeouts", "request", float("inf"), "a number of seconds > 0"),
        ("timeouts", "request", None, "a number of seconds > 0"),
        ("policy", "direct", 5, "a list of a cell name pattern"),
        ("flower", "listen", 9201, 'an address "host:port"'),
        ("flower", "max_body", "1.5", "a size"),
    ],
)
def test_wrong_types_and_values(table: str, key: str, value: object, expected: str) -> None:
    data = mapping()
    if table == "cell":
        data["cell"] = {"name": "a", "parent": "tcp://s:1", key: value}
    else:
        data[table] = {key: value}
    message = config_error(data, f"{table}.{key}")
    assert expected in message
    assert "got " in message


def test_table_that_is_not_a_table() -> None:
    message = config_error(mapping(limits=5), "limits")
    assert "expected a table [limits], got 5" in message


def test_top_level_not_a_mapping() -> None:
    with pytest.raises(ConfigError, match=r"^cell\.toml: expected a mapping"):
        config_from_mapping([], source="cell.toml")  # type: ignore[arg-type]


@pytest.mark.parametrize("pattern", ["site-[1]", "", "site 1", "site/*", 5])
def test_bad_direct_pattern(pattern: object) -> None:
    message = config_error(mapping(policy={"direct": ["site-*", pattern]}), "policy.direct[1]")
    assert 'a cell name pattern like "site-*"' in message


def test_heartbeat_timeout_must_exceed_interval() -> None:
    for timeout in (5.0, 4):
        message = config_error(
            mapping(timeouts={"heartbeat_interval": 5, "heartbeat_timeout": timeout}),
            "timeouts.heartbeat_timeout",
        )
        assert "expected a number of seconds > timeouts.heartbeat_interval (5.0)" in message
    # against the default interval, too
    message = config_error(
        mapping(timeouts={"heartbeat_timeout": 2}), "timeouts.heartbeat_timeout"
    )
    assert "got 2.0" in message


def test_backoff_max_must_not_be_below_initial() -> None:
    message = config_error(
        mapping(timeouts={"backoff_initial": 2, "backoff_max": 1}), "timeouts.backoff_max"
    )
    assert "expected a number of seconds >= timeouts.backoff_initial (2.0)" in message


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("localhost", "no host:port"),
        (":9201", "no host:port"),
        ("localhost:", "bad port"),
        ("localhost:0", "bad port"),
        ("localhost:65536", "bad port"),
        ("localhost:http", "bad port"),
        ("localhost:+80", "bad port"),
        ("::1:9201", "IPv6 host in brackets"),
        ("[::1:9201", "unbalanced brackets"),
        ("[]:9201", "unbalanced brackets"),
        ("http://localhost:9201", "no scheme://"),
        ("local host:1", "no spaces"),
    ],
)
def test_bad_host_port(address: str, reason: str) -> None:
    message = config_error(mapping(flower={"superlink": address}), "flower.superlink")
    assert 'expected an address "host:port" with a port 1..65535' in message
    assert reason in message


@pytest.mark.parametrize(
    "address", ["127.0.0.1:9201", "localhost:1", "[::1]:65535", "h.example:9092"]
)
def test_good_host_port(address: str) -> None:
    flower = config_from_mapping(mapping(flower={"listen": address})).flower
    assert flower is not None and flower.listen == address


# -- relative paths -------------------------------------------------------------


def test_resolve_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _resolve_path("kit/ca.pem", tmp_path) == tmp_path / "kit" / "ca.pem"
    assert _resolve_path("/etc/ca.pem", tmp_path) == Path("/etc/ca.pem")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert _resolve_path("~/ca.pem", Path("/elsewhere")) == tmp_path / "ca.pem"
    monkeypatch.chdir(tmp_path)
    resolved = _resolve_path("ca.pem", None)
    assert resolved.is_absolute() and resolved == tmp_path / "ca.pem"


def test_path_keys_resolve_from_the_config_folder(tmp_path: Path) -> None:
    ctx = _Ctx("cell.toml", tmp_path)
    assert _path("kit/site-1.pem", "tls.cert", ctx) == tmp_path / "kit" / "site-1.pem"
    with pytest.raises(ConfigError, match=r"^cell\.toml: tls\.cert: expected a file path"):
        _path("", "tls.cert", ctx)


# -- tls ------------------------------------------------------------------------


def test_tls_paths_resolve_from_the_config_folder(tmp_path: Path) -> None:
    path = tmp_path / "cell.toml"
    path.write_text(
        '[cell]\nname = "server"\nlisten = ["tls://127.0.0.1:0"]\n'
        '[tls]\nca = "kit/ca.pem"\ncert = "kit/server.pem"\nkey = "/abs/server.key"\n'
    )
    config = load_config(path)
    assert config.tls == TlsSection(
        tmp_path / "kit" / "ca.pem", tmp_path / "kit" / "server.pem", Path("/abs/server.key")
    )
    assert config.tls.settings().mutual


def test_tls_listener_without_certificate_is_an_error() -> None:
    data = {"cell": {"name": "server", "listen": ["tls://127.0.0.1:0"]}}
    with pytest.raises(ConfigError, match=r"cell.listen: tls://127.0.0.1:0 is a TLS listener and needs \[tls\] cert and key"):
        config_from_mapping(data)


def test_tls_cert_without_key_is_an_error() -> None:
    data = {"cell": {"name": "site-1", "parent": "tls://h:1"}, "tls": {"cert": "a.pem"}}
    with pytest.raises(ConfigError, match=r"tls.key: expected a file path, but it is missing"):
        config_from_mapping(data)


def test_tls_unknown_key_suggests_the_right_one() -> None:
    data = {"cell": {"name": "site-1", "parent": "tls://h:1"}, "tls": {"crt": "a.pem"}}
    with pytest.raises(ConfigError, match=r'tls.crt: unknown key \(did you mean "cert"\?\)'):
        config_from_mapping(data)


def test_a_header_limit_too_small_for_routing_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cell.toml"
    path.write_text(CLIENT + '\n[limits]\nmax_header = "10"\n')
    with pytest.raises(ConfigError, match=r"limits.max_header: expected a size >= 1024"):
        load_config(path)

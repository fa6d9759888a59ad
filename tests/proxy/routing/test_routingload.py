"""Where [proxy] routing modules are found, and what a bad one says."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipsuite.proxy.routing.default import DefaultRouting
from sipsuite.proxy.routing.loader import RoutingError, load_routing

SOURCE = "from sipsuite.proxy.routing import DefaultRouting\n\nclass R(DefaultRouting):\n    WHERE = {where!r}\n"


@pytest.fixture
def clean_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """sys.path and the test's modules as they were, afterwards."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("rl_site"):
            del sys.modules[name]


def _module(directory: Path, name: str, where: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.py").write_text(SOURCE.format(where=where))


def test_beside_the_config_comes_before_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_path: None) -> None:
    _module(tmp_path / "etc", "rl_site_a", "config")
    _module(tmp_path / "run", "rl_site_a", "cwd")
    monkeypatch.chdir(tmp_path / "run")
    cls = load_routing("rl_site_a:R", str(tmp_path / "etc" / "sipsuite.toml"))
    assert issubclass(cls, DefaultRouting) and cls.WHERE == "config"  # type: ignore[attr-defined]


def test_the_working_directory_when_not_beside_the_config(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_path: None) -> None:
    _module(tmp_path / "run", "rl_site_b", "cwd")
    (tmp_path / "etc").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    cls = load_routing("rl_site_b:R", str(tmp_path / "etc" / "sipsuite.toml"))
    assert cls.WHERE == "cwd"  # type: ignore[attr-defined]


def test_missing_module_names_where_it_looked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_path: None) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RoutingError) as info:
        load_routing("rl_site_none.routing:R", str(tmp_path / "etc" / "c.toml"))
    assert str(info.value) == (f"no module rl_site_none.routing (looked in {tmp_path / 'etc'},"
                               f" {tmp_path} and the Python path)")


def test_sipsuite_routing_leaves_sys_path_alone(tmp_path: Path, clean_path: None) -> None:
    before = list(sys.path)
    assert load_routing("sipsuite.proxy.routing:DefaultRouting",
                        str(tmp_path / "c.toml")) is DefaultRouting
    assert sys.path == before

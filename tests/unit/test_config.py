from __future__ import annotations

from pathlib import Path

import pytest

from insession.clock import MINUTE_MS
from insession.config import Settings, SurfaceConfig
from insession.errors import ValidationError


def test_defaults() -> None:
    settings = Settings.load({})
    assert settings.session.timeout_ms == 30 * MINUTE_MS and settings.store == "memory"
    assert "home" in settings.surfaces


def test_env_overrides_toml_and_overrides_win(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text("port = 9000\n[session]\ntimeout_minutes = 10\n[surfaces.strip]\nexclude_seen = true\n")
    settings = Settings.load({"INSESSION_PORT": "9100", "INSESSION_CONFIG": str(toml)}, host="0.0.0.0")
    assert settings.port == 9100 and settings.host == "0.0.0.0"
    assert settings.session.timeout_ms == 10 * MINUTE_MS
    assert settings.surfaces["strip"].exclude_seen and "home" in settings.surfaces


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"INSESSION_PORT": "eighty"}, "INSESSION_PORT"),
        ({"INSESSION_STORE": "mongo://x"}, "store"),
        ({"INSESSION_SESSION_TIMEOUT_MIN": "soon"}, "INSESSION_SESSION_TIMEOUT_MIN"),
    ],
)
def test_bad_env_names_the_field(env: dict[str, str], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings.load(env)
    assert info.value.errors[0].field == field


def test_unknown_surface_key_is_named(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text("[surfaces.home]\nfreshnes = 'session'\n")
    with pytest.raises(ValidationError) as info:
        Settings.load({}, toml)
    assert info.value.errors[0].field == "surfaces.home.freshnes"


def test_surface_validation() -> None:
    with pytest.raises(ValidationError) as info:
        SurfaceConfig("x", freshness="hourly")  # type: ignore[arg-type]
    assert info.value.errors[0].field == "surfaces.x.freshness"

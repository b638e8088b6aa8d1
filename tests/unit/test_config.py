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


@pytest.mark.parametrize(
    ("text", "field", "hint"),
    [
        ("max_inflght = 8\n", "max_inflght", "max_inflight"),
        ("[sesion]\ntimeout_minutes = 5\n", "sesion", "session"),
        ("[session]\ntimeout_minute = 5\n", "session.timeout_minute", "session.timeout_minutes"),
        ("[data]\ncolums = {}\n", "data.colums", "data.columns"),
        ("[surfaces.home]\nmax_nwe = 2\n", "surfaces.home.max_nwe", "surfaces.home.max_new"),
    ],
)
def test_unknown_keys_are_refused_at_every_level_naming_the_nearest(
    tmp_path: Path, text: str, field: str, hint: str
) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text(text)
    with pytest.raises(ValidationError) as info:
        Settings.load({}, toml)
    assert info.value.errors[0].field == field and f"'{hint}'" in info.value.errors[0].expected


@pytest.mark.parametrize("text", ["port = 'eighty'\n", "max_queue_ms = true\n", "[session]\ntimeout_minutes = 'x'\n"])
def test_a_value_of_the_wrong_type_is_named(tmp_path: Path, text: str) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text(text)
    with pytest.raises(ValidationError) as info:
        Settings.load({}, toml)
    assert info.value.errors[0].field.split(".")[-1] in text


def test_the_data_mapping_lives_in_the_config(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text(
        '[data]\ncolumns = { user_id = "customer", item_id = "sku" }\nevent_types = { basket = "add_to_cart" }\n'
        'properties = ["colour"]\nmax_skipped = "5%"\n'
    )
    data = Settings.load({}, toml).data
    assert data.columns == {"user_id": "customer", "item_id": "sku"} and data.max_skipped == 0.05
    assert data.event_types == {"basket": "add_to_cart"} and data.properties == ("colour",)
    toml.write_text('[data]\nevent_types = { basket = "cart_add" }\n')
    with pytest.raises(ValidationError) as info:
        Settings.load({}, toml)
    assert info.value.errors[0].field == "event_types.basket" and "add_to_cart" in info.value.errors[0].expected


def test_every_setting_is_documented() -> None:
    """docs/configuration.md lists every key a user can set, so a new setting cannot go undocumented."""
    from insession.config import _DATA_KEYS, _SESSION_KEYS, _TOP_KEYS

    doc = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    surface_keys = set(SurfaceConfig.__dataclass_fields__) - {"name"}
    for key in (*_TOP_KEYS, *_SESSION_KEYS, *_DATA_KEYS, *surface_keys):
        assert f"`{key}`" in doc, f"{key} is not in docs/configuration.md"

import pytest

from livecore.errors import SettingsError
from livecore.settings import Secret, Settings, ice_servers, redact_url


def test_defaults_need_no_environment():
    settings = Settings.from_env({})
    assert settings.port == 8080
    assert settings.host == "127.0.0.1"
    assert settings.database_url is None and settings.redis_url is None
    assert settings.data_dir == ".livecore"


def test_values_are_cast_strictly():
    settings = Settings.from_env(
        {
            "PORT": "9000",
            "DATABASE_URL": "postgresql://app:hunter2@db/live",
            "REDIS_URL": "redis://cache:6379/0",
            "LIVECORE_TRUST_PROXY_HEADERS": "yes",
            "LIVECORE_LOG_LEVEL": "debug",
            "LIVECORE_DATA_DIR": "",  # empty means unset
            "LIVECORE_MEDIA_GRACE_S": "2.5",
            "LIVECORE_ICE_SERVERS": " stun:stun.example.net:3478, turns:turn.example.net ",
        }
    )
    assert settings.port == 9000
    assert settings.media_grace_s == 2.5
    assert ice_servers(settings.ice_servers) == ["stun:stun.example.net:3478",
                                                 "turns:turn.example.net"]
    assert settings.trust_proxy_headers is True
    assert settings.database_url == Secret("postgresql://app:hunter2@db/live")
    assert settings.data_dir == ".livecore"


def test_every_problem_is_reported_at_once_naming_the_variable():
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"PORT": "eighty", "LIVECORE_TRUST_PROXY_HEADERS": "maybe"})
    assert "PORT" in caught.value.message
    assert "LIVECORE_TRUST_PROXY_HEADERS" in caught.value.message


@pytest.mark.parametrize(
    "environ",
    [
        {"PORT": "70000"},
        {"LIVECORE_LOG_LEVEL": "LOUD"},
        {"LIVECORE_MAX_BODY_BYTES": "0"},
        {"LIVECORE_MIN_SIGNUP_AGE": "-1"},
        {"LIVECORE_PUBLIC_URL": "live.example.com"},
        {"DATABASE_URL": "mysql://db/x"},
        {"REDIS_URL": "http://cache"},
        {"LIVECORE_MEDIA_GRACE_S": "soon"},
        {"LIVECORE_MEDIA_GRACE_S": "nan"},
        {"LIVECORE_MEDIA_GRACE_S": "0"},
        {"LIVECORE_ICE_SERVERS": "stun.example.net:3478"},
        {"LIVECORE_ICE_SERVERS": "stun:a.example, http://b.example"},
    ],
)
def test_out_of_range_values_fail_at_start_up(environ):
    with pytest.raises(SettingsError):
        Settings.from_env(environ)


def test_secrets_never_print():
    settings = Settings.from_env({"DATABASE_URL": "postgresql://app:hunter2@db/live"})
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings.database_url)
    assert settings.database_url is not None
    assert settings.database_url.reveal().endswith("@db/live")


def test_redact_url_hides_only_the_password():
    assert redact_url("postgresql://app:hunter2@db:5432/live") == "postgresql://app:***@db:5432/live"
    assert redact_url("redis://cache:6379/0") == "redis://cache:6379/0"


def test_every_setting_is_documented(tmp_path):
    from pathlib import Path

    docs = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    for name, _default, description in Settings.documented():
        assert f"`{name}`" in docs, name
        assert len(description.split()) >= 3, (name, description)  # says something

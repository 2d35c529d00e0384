"""Settings from the environment: defaults, and one clear error naming a bad variable."""

from __future__ import annotations

import pytest

from keyturn.config import load_settings
from keyturn.errors import ConfigError


def test_defaults_match_the_contract() -> None:
    settings = load_settings({}, host="127.0.0.1", port=8000)
    assert settings.database_url == "sqlite+aiosqlite:///./keyturn.db"
    assert settings.issuer == "http://127.0.0.1:8000"
    assert (settings.access_token_ttl, settings.session_idle_ttl, settings.session_max_ttl) == (
        900,
        604_800,
        2_592_000,
    )
    assert (settings.refresh_reuse_grace, settings.fresh_age) == (10, 600)
    assert (settings.login_failure_limit, settings.login_failure_window) == (5, 300)
    assert settings.rate_limit == "30/minute"
    assert settings.cleanup_interval == 3600
    assert settings.trusted_proxies == ()
    assert settings.metrics == "local"
    assert settings.cookie_secure is False  # plain http on localhost only


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("KEYTURN_ACCESS_TOKEN_TTL", "-1"),
        ("KEYTURN_SESSION_IDLE_TTL", "ten"),
        ("KEYTURN_DATABASE_URL", "not a url"),
        ("KEYTURN_DATABASE_URL", "mysql://localhost/db"),
        ("KEYTURN_REDIS_URL", "http://localhost"),
        ("KEYTURN_RATE_LIMIT", "lots"),
        ("KEYTURN_TRUSTED_PROXIES", "10.0.0.1,nonsense"),
        ("KEYTURN_METRICS", "sometimes"),
        ("KEYTURN_ISSUER", "ftp://example"),
    ],
)
def test_invalid_values_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings({variable: value})
    assert raised.value.variable == variable
    assert variable in str(raised.value)


def test_contradicting_ttls_are_refused() -> None:
    with pytest.raises(ConfigError, match="KEYTURN_SESSION_IDLE_TTL"):
        load_settings({"KEYTURN_SESSION_IDLE_TTL": "100", "KEYTURN_SESSION_MAX_TTL": "50"})
    with pytest.raises(ConfigError, match="KEYTURN_ACCESS_TOKEN_TTL"):
        load_settings(
            {
                "KEYTURN_ACCESS_TOKEN_TTL": "100",
                "KEYTURN_SESSION_IDLE_TTL": "50",
                "KEYTURN_SESSION_MAX_TTL": "50",
            }
        )


def test_values_are_parsed() -> None:
    settings = load_settings(
        {
            "KEYTURN_DATABASE_URL": "postgresql://u@db:5432/keyturn",
            "KEYTURN_RATE_LIMIT": "off",
            "KEYTURN_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1",
            "KEYTURN_ISSUER": "https://auth.example",
        }
    )
    assert settings.database_url.startswith("postgresql+asyncpg://")
    assert settings.rate_limit is None
    assert len(settings.trusted_proxies) == 2
    assert settings.cookie_secure is True


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("sqlite:///./kt.db", "sqlite+aiosqlite:///./kt.db"),
        ("postgres://u:pw@db:5432/keyturn", "postgresql+asyncpg://u:pw@db:5432/keyturn"),
        ("postgresql+asyncpg://u@db/keyturn", "postgresql+asyncpg://u@db/keyturn"),
    ],
)
def test_common_database_url_schemes_run_on_keyturns_drivers(given: str, used: str) -> None:
    assert load_settings({"KEYTURN_DATABASE_URL": given}).database_url == used

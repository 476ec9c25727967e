"""Settings are read once, and bad ones stop the gateway at start with a message naming the variable."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from gateway.settings import Settings, SettingsError, load_settings
from tests.conftest import gateway_env
from tests.support.processes import CONSOLE_SCRIPT

BASE = {"pacs_service_url": "http://127.0.0.1:8042/dicom-web", "auth_mode": "none"}


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"pacs_service_url": "not a url"}, "PACS_SERVICE_URL:"),
        ({"pacs_profile": "pacsy"}, "PACS_PROFILE:"),
        ({"log_format": "xml"}, "LOG_FORMAT:"),
        ({"pacs_read_timeout_s": "-1"}, "PACS_READ_TIMEOUT_S:"),
        ({"callback_poll_s": "0"}, "CALLBACK_POLL_S:"),  # every duration is above zero (settings.Seconds)
        ({"pacs_max_connections": "0"}, "PACS_MAX_CONNECTIONS:"),  # every count is at least one (settings.Count)
        ({"callback_max_attempts": "0"}, "CALLBACK_MAX_ATTEMPTS:"),
        ({"audit_syslog_url": "udp://repo:514"}, "AUDIT_SYSLOG_URL must be tcp://host:port or tls://host[:port]"),
        ({"audit_syslog_url": "tcp://repo"}, "AUDIT_SYSLOG_URL must be"),  # plain TCP syslog has no assigned port
        ({"audit_syslog_url": "tcp://repo:601", "audit_syslog_ca_file": "/etc/ca.pem"}, "for a tls://"),
        ({"audit_retention_days": "0"}, "AUDIT_RETENTION_DAYS:"),
        ({"dicom_uid_root": "1.2.03"}, "DICOM_UID_ROOT:"),
        ({"pacs_requester_aet": "A" * 17}, "PACS_REQUESTER_AET:"),
        ({"pacs_requester_aet": "   "}, "PACS_REQUESTER_AET:"),
        ({"worklist_priority": "URGENT"}, "WORKLIST_PRIORITY:"),
        ({"worklist_input_readiness": "SOON"}, "WORKLIST_INPUT_READINESS:"),
        ({"pacs_username": "gw"}, "PACS_USERNAME and PACS_PASSWORD"),
        ({"pacs_oauth_token_url": "http://idp/token"}, "PACS_OAUTH_TOKEN_URL, PACS_OAUTH_CLIENT_ID"),
        ({"pacs_authorization_token": "t", "pacs_username": "u", "pacs_password": "p"}, "PACS_AUTHORIZATION_TOKEN"),
        ({"auth_mode": "jwt"}, "AUTH_JWKS_URL or AUTH_JWT_SECRET"),
        ({"auth_mode": "jwt", "auth_jwt_secret": "short"}, "AUTH_JWT_SECRET must be at least 32 bytes"),
        ({"auth_mode": "jwt", "auth_jwks_url": "http://idp/jwks", "auth_algorithms": "RS256,HS256"},
         "AUTH_ALGORITHMS: HS256 not allowed"),
        ({"auth_mode": "jwt", "auth_jwks_url": "http://idp/jwks", "auth_algorithms": "none"},
         "AUTH_ALGORITHMS: none not allowed"),
    ],
)
def test_bad_settings_name_the_variable(overrides: dict[str, str], names: str) -> None:
    with pytest.raises(SettingsError, match="invalid settings") as caught:
        load_settings(None, **{**BASE, **overrides})
    assert names in str(caught.value)


def test_missing_upstream_url_is_named() -> None:
    with pytest.raises(SettingsError, match="PACS_SERVICE_URL: Field required"):
        load_settings(auth_mode="none")


def test_settings_come_from_the_environment_and_an_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / "gateway.env"
    env_file.write_text("PACS_SERVICE_URL=http://pacs.internal/dicom-web\nPACS_PROFILE=Orthanc\nAUTH_MODE=none\n")
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    settings = load_settings(env_file)
    assert str(settings.pacs_service_url) == "http://pacs.internal/dicom-web"
    assert settings.pacs_profile == "orthanc"
    assert settings.log_level == "debug"


def test_a_missing_env_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="no such file"):
        load_settings(tmp_path / "absent.env")


def test_cli_exits_2_with_the_variable_named(tmp_path: Path) -> None:
    env = gateway_env(pacs_service_url="http://127.0.0.1:8042/dicom-web", auth_mode="jwt")
    result = subprocess.run([str(CONSOLE_SCRIPT), "serve", "--port", "1"], env=env, capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == 2
    assert "AUTH_MODE=jwt needs exactly one of AUTH_JWKS_URL or AUTH_JWT_SECRET" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "config").glob("*.env")),
                         ids=lambda p: p.name)
def test_the_example_settings_load(path: Path) -> None:
    settings = load_settings(path)
    assert settings.pacs_profile.value == path.stem
    assert settings.subscribers


def test_every_setting_is_explained_in_the_configuration_page() -> None:
    """docs/configuration.md has one table row per setting, named by its environment variable, and no stale row."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    names = re.findall(r"^\| (`[A-Z0-9_]+`(?:, `[A-Z0-9_]+`)*) \|", page, flags=re.M)  # a row may name a pair
    rows = {name.strip("`") for cell in names for name in cell.split(", ")}
    fields = {name.upper() for name in Settings.model_fields}
    assert fields - rows == set(), "settings without a row"
    assert rows - fields == set(), "rows without a setting"

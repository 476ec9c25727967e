"""The gateway's settings: read once from the environment (and an optional env file) into one object.

Every field is named after its environment variable (case-insensitive match); `docs/configuration.md` has the table.
No other module reads the environment: `create_app(settings)` receives this object and passes typed values down.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AnyHttpUrl, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from gateway.audit.syslog import syslog_address
from gateway.dicom.uid import UidRootError, validate_uid_root
from gateway.dicom.vr import VrError, ae
from gateway.store.db import async_url

# The constrained types most settings share: a duration in seconds (above zero) and a count (at least one).
Seconds = Annotated[float, Field(gt=0)]
Count = Annotated[int, Field(ge=1)]


def _refused_as_value_error(check: Callable[[str], str], value: str, prefix: str = "") -> str:
    """A DICOM check's refusal, as the ValueError that pydantic reports under the setting's name."""
    try:
        return check(value)
    except (VrError, UidRootError) as exc:
        raise ValueError(f"{prefix}{exc}") from None


class PacsProfileName(StrEnum):
    ORTHANC = "orthanc"
    AZURE = "azure"
    DCM4CHEE = "dcm4chee"
    STANDARD = "standard"


class AuthMode(StrEnum):
    JWT = "jwt"
    NONE = "none"


# Asymmetric algorithms only for keys from a JWKS: accepting HS256 there would let anyone sign with the public key.
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
SYMMETRIC_ALGORITHMS = ("HS256", "HS384", "HS512")


class SettingsError(Exception):
    """Settings that cannot start the gateway; the message names the environment variable(s)."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    # --- upstream PACS ---------------------------------------------------------------------------------------------
    pacs_service_url: AnyHttpUrl
    pacs_profile: PacsProfileName = PacsProfileName.STANDARD
    # Orthanc's native REST API (next to its DICOMweb root); derived from PACS_SERVICE_URL when not given.
    pacs_native_url: AnyHttpUrl | None = None
    pacs_authorization_token: SecretStr | None = None
    pacs_username: str | None = None
    pacs_password: SecretStr | None = None
    pacs_oauth_token_url: AnyHttpUrl | None = None
    pacs_oauth_client_id: str | None = None
    pacs_oauth_client_secret: SecretStr | None = None
    pacs_oauth_scope: str | None = None
    pacs_connect_timeout_s: Seconds = 5.0
    pacs_read_timeout_s: Seconds = 60.0
    pacs_pool_timeout_s: Seconds = 10.0
    pacs_max_connections: Count = 100
    # Orthanc closes idle keep-alive connections after 1 s (`Keep-Alive: timeout=1`): stay below it.
    pacs_keepalive_expiry_s: float = Field(default=0.8, ge=0)
    ready_timeout_s: Seconds = 2.0

    # --- identity of the organisation -----------------------------------------------------------------------------
    dicom_uid_root: str = "2.25"
    public_base_url: AnyHttpUrl = AnyHttpUrl("http://127.0.0.1:8080")

    # --- worklist (UPS-RS) ---------------------------------------------------------------------------------------
    # The AE title the gateway names as requester in cancel requests (dcm4chee requires one).
    pacs_requester_aet: str = "DICOMGATEWAY"
    worklist_priority: Literal["HIGH", "MEDIUM", "LOW"] = "MEDIUM"
    worklist_input_readiness: Literal["INCOMPLETE", "UNAVAILABLE", "READY"] = "READY"
    worklist_label: str = Field(default="WORKLIST", min_length=1, max_length=64)

    # --- new-exam callbacks ----------------------------------------------------------------------------------------
    database_url: str = "sqlite:///./data/gateway.db"
    callback_urls: str = ""  # comma-separated subscriber URLs
    callback_auth_token: SecretStr | None = None
    callback_signing_secret: SecretStr | None = None
    callback_timeout_s: Seconds = 5.0
    callback_max_attempts: Count = 10
    callback_backoff_base_s: Seconds = 1.0
    callback_max_backoff_s: Seconds = 300.0
    callback_lease_s: Seconds = 60.0
    callback_poll_s: Seconds = 0.5
    callback_concurrency: int = Field(default=4, ge=1, le=100)
    new_exam_detection: Literal["none", "orthanc-changes", "azure-changefeed", "auto"] = "none"
    new_exam_poll_s: Seconds = 1.0
    new_exam_quiet_s: Seconds = 60.0  # azure-changefeed: a study with no entry for this long is complete

    @property
    def subscribers(self) -> list[str]:
        return [url.strip() for url in self.callback_urls.split(",") if url.strip()]

    # --- the audit trail (issue 13; off by default: docs/api/audit.md, "What it costs") -------------------------
    audit_trail: Literal["off", "on"] = "off"
    # SQLite: "process" commits a record into the write-ahead log (it survives the gateway's crash or kill, not a
    # power cut of the host); "power" also syncs it to the disk before the answer (slower). PostgreSQL: its own.
    audit_durability: Literal["process", "power"] = "process"
    audit_source_id: str = Field(default="dicom-gateway", min_length=1, max_length=64)  # PS3.15 AuditSourceID
    audit_syslog_url: str | None = None  # tcp://host:port or tls://host[:port]: the audit record repository
    audit_syslog_ca_file: Path | None = None
    audit_syslog_cert_file: Path | None = None
    audit_syslog_key_file: Path | None = None
    audit_retention_days: float | None = Field(default=None, gt=0)

    # --- viewer tokens and /dicomweb ------------------------------------------------------------------------------
    viewer_token_secret: SecretStr | None = None  # HS256, at least 32 bytes
    viewer_token_key: str | None = None  # a PEM private key (or a path to one): RS256, ES256 or Ed25519
    viewer_token_ttl_s: int = Field(default=3600, ge=30, le=86400)
    viewer_get_token_endpoint: AnyHttpUrl | None = None  # an external viewer's token service, asked instead
    viewer_authorization_token: SecretStr | None = None  # sent to that service as a bearer token
    cors_allow_origins: str = ""  # comma-separated origins of browser viewers allowed to call the gateway
    trusted_proxies: str = ""  # comma-separated IP addresses whose Forwarded / X-Forwarded-* headers are believed

    @property
    def trusted_proxy_list(self) -> list[str]:
        return [ip.strip() for ip in self.trusted_proxies.split(",") if ip.strip()]

    @property
    def cors_origins(self) -> list[str]:
        return [origin.strip() for origin in self.cors_allow_origins.split(",") if origin.strip()]

    # --- exams ------------------------------------------------------------------------------------------------------
    exams_max_upload_bytes: int = Field(default=4 * 1024**3, ge=1)
    exams_max_files: Count = 1000

    # --- the HTTP edge (gateway.edge.http): limits on request heads, as servers facing the internet set -------------
    http_max_field_bytes: int = Field(default=16 * 1024, ge=1024, le=1024 * 1024)  # one header field, name and value
    http_max_head_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)  # request line and fields
    http_max_fields: int = Field(default=100, ge=1, le=10_000)
    http_head_timeout_s: float = Field(default=5.0, gt=0, le=300)  # the whole head, from the connection or 1st byte
    http_max_query_bytes: int = Field(default=8 * 1024, ge=256, le=16 * 1024 * 1024)
    http_max_query_params: int = Field(default=200, ge=1, le=100_000)

    # --- logging --------------------------------------------------------------------------------------------------
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"

    # --- inbound authentication -----------------------------------------------------------------------------------
    auth_mode: AuthMode = AuthMode.JWT
    auth_jwks_url: AnyHttpUrl | None = None
    auth_jwt_secret: SecretStr | None = None
    auth_issuer: str | None = None
    auth_audience: str | None = None
    auth_algorithms: Annotated[tuple[str, ...], NoDecode] = ()
    auth_roles_claim: str = "roles"
    auth_patient_id_claim: str = "patient_id"
    auth_clock_skew_s: int = Field(default=30, ge=0, le=300)
    auth_jwks_cache_s: float = Field(default=300.0, ge=0)
    auth_jwks_min_refetch_s: float = Field(default=10.0, ge=0)

    @field_validator("callback_urls")
    @classmethod
    def _urls(cls, value: str) -> str:
        for url in (part.strip() for part in value.split(",")):
            if url and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s]*)?", url):
                raise ValueError(f"{url!r} is not an http(s) URL")
        return value

    @field_validator("pacs_service_url")
    @classmethod
    def _no_credentials_in_url(cls, value: AnyHttpUrl) -> AnyHttpUrl:
        if value.username is not None or value.password is not None:
            raise ValueError("no credentials in the URL: give them as PACS_USERNAME and PACS_PASSWORD")
        return value

    @field_validator("database_url")
    @classmethod
    def _database(cls, value: str) -> str:
        try:
            async_url(value)
        except Exception as exc:  # noqa: BLE001 - any parse failure is a bad setting
            raise ValueError(f"a sqlite:///... or postgresql://... URL ({exc})") from None
        return value

    @field_validator("pacs_requester_aet")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        return _refused_as_value_error(ae, value, "an AE title: ")

    @field_validator("log_level", "log_format", "pacs_profile", "auth_mode", mode="before")
    @classmethod
    def _lowercase(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("auth_algorithms", mode="before")
    @classmethod
    def _split_algorithms(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("dicom_uid_root")
    @classmethod
    def _valid_uid_root(cls, value: str) -> str:
        return _refused_as_value_error(validate_uid_root, value)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        self._check_upstream_auth()
        self._check_inbound_auth()
        self._check_callbacks()
        self._check_audit()
        self._check_viewer()
        self._check_edge()
        return self

    def _check_edge(self) -> None:
        if self.http_max_head_bytes < max(self.http_max_field_bytes, self.http_max_query_bytes):
            raise ValueError("HTTP_MAX_HEAD_BYTES must be at least HTTP_MAX_FIELD_BYTES and HTTP_MAX_QUERY_BYTES "
                             "(the head holds them)")

    def _check_viewer(self) -> None:
        secret = self.viewer_token_secret
        if secret is not None and len(secret.get_secret_value().encode()) < 32:
            raise ValueError("VIEWER_TOKEN_SECRET must be at least 32 bytes")
        if secret is not None and self.viewer_token_key:
            raise ValueError("set VIEWER_TOKEN_SECRET or VIEWER_TOKEN_KEY, not both")

    def _check_audit(self) -> None:
        url = self.audit_syslog_url
        if url is not None:
            syslog_address(url)
        files = (self.audit_syslog_ca_file, self.audit_syslog_cert_file, self.audit_syslog_key_file)
        if any(files) and not (url or "").startswith("tls://"):
            raise ValueError("AUDIT_SYSLOG_CA_FILE, _CERT_FILE and _KEY_FILE are for a tls:// AUDIT_SYSLOG_URL")

    def _check_callbacks(self) -> None:
        if self.callback_lease_s <= self.callback_timeout_s:
            raise ValueError("CALLBACK_LEASE_S must be longer than CALLBACK_TIMEOUT_S (a lease covers one attempt)")
        token = self.callback_auth_token
        if token is not None and len(token.get_secret_value()) < 16:
            raise ValueError("CALLBACK_AUTH_TOKEN must be at least 16 characters")
        if self.new_exam_detection == "orthanc-changes" and self.pacs_profile is not PacsProfileName.ORTHANC:
            raise ValueError("NEW_EXAM_DETECTION=orthanc-changes needs PACS_PROFILE=orthanc")
        if self.new_exam_detection == "azure-changefeed" and self.pacs_profile is not PacsProfileName.AZURE:
            raise ValueError("NEW_EXAM_DETECTION=azure-changefeed needs PACS_PROFILE=azure")

    @property
    def new_exam_feed(self) -> str:
        """The change feed followed: `auto` picks the profile's (Orthanc's changes, Microsoft's change feed), and
        none for a PACS without one (it posts callbacks)."""
        if self.new_exam_detection != "auto":
            return self.new_exam_detection
        return {PacsProfileName.ORTHANC: "orthanc-changes",
                PacsProfileName.AZURE: "azure-changefeed"}.get(self.pacs_profile, "none")

    def _check_upstream_auth(self) -> None:
        if (self.pacs_username is None) != (self.pacs_password is None):
            raise ValueError("PACS_USERNAME and PACS_PASSWORD must be set together")
        oauth = (self.pacs_oauth_token_url, self.pacs_oauth_client_id, self.pacs_oauth_client_secret)
        if any(v is not None for v in oauth) and not all(v is not None for v in oauth):
            raise ValueError(
                "PACS_OAUTH_TOKEN_URL, PACS_OAUTH_CLIENT_ID and PACS_OAUTH_CLIENT_SECRET must be set together"
            )
        chosen = [
            name
            for name, on in (
                ("PACS_AUTHORIZATION_TOKEN", self.pacs_authorization_token is not None),
                ("PACS_USERNAME/PACS_PASSWORD", self.pacs_username is not None),
                ("PACS_OAUTH_*", self.pacs_oauth_token_url is not None),
            )
            if on
        ]
        if len(chosen) > 1:
            raise ValueError(f"choose one upstream authentication method, not {' and '.join(chosen)}")

    def _check_inbound_auth(self) -> None:
        if self.auth_mode is AuthMode.NONE:
            return
        if (self.auth_jwks_url is None) == (self.auth_jwt_secret is None):
            raise ValueError("AUTH_MODE=jwt needs exactly one of AUTH_JWKS_URL or AUTH_JWT_SECRET")
        if self.auth_jwt_secret is not None and len(self.auth_jwt_secret.get_secret_value().encode()) < 32:
            raise ValueError("AUTH_JWT_SECRET must be at least 32 bytes (RFC 7518 §3.2: a key as long as the hash)")
        allowed = SYMMETRIC_ALGORITHMS if self.auth_jwt_secret is not None else ASYMMETRIC_ALGORITHMS
        bad = [alg for alg in self.auth_algorithms if alg not in allowed]
        if bad:
            raise ValueError(f"AUTH_ALGORITHMS: {', '.join(bad)} not allowed here; choose from {', '.join(allowed)}")

    @property
    def jwt_algorithms(self) -> tuple[str, ...]:
        """The allow-list of JWS algorithms: as configured, or the safe default for the key source."""
        if self.auth_algorithms:
            return self.auth_algorithms
        if self.auth_jwt_secret is not None:
            return ("HS256",)
        return ("RS256", "PS256", "ES256", "EdDSA")


def load_settings(env_file: Path | None = None, **overrides: Any) -> Settings:
    """Read the settings once; raise `SettingsError` naming the offending variables."""
    if env_file is not None and not env_file.is_file():
        raise SettingsError(f"--env-file {env_file}: no such file")
    try:
        return Settings(_env_file=env_file, **overrides)
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        location = error["loc"]
        message = error["msg"].removeprefix("Value error, ")
        if location:
            lines.append(f"{str(location[0]).upper()}: {message}")
        else:
            lines.append(message)
    return "invalid settings:\n  " + "\n  ".join(lines)

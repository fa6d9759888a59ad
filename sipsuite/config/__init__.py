"""sipsuite's configuration: one TOML file, checked against one schema.

``schema`` declares every section and key (with its default and validator),
``loader`` reads a file into it, ``values`` and ``specs`` are the validators
(plain values, and addresses/listen specs).  The names the rest of sipsuite
imports are re-exported here: ``from sipsuite.config import Config, load_config``.
"""

from sipsuite.config.loader import (
    PACKAGED_CONFIG,
    config_from_dict,
    default_config_path,
    load_config,
)
from sipsuite.config.schema import (
    AccountingConfig,
    AntifloodConfig,
    AuthConfig,
    Config,
    ConfigError,
    DispatcherConfig,
    FeaturesConfig,
    LogConfig,
    ManagementConfig,
    MediaConfig,
    NatConfig,
    ProxyConfig,
    PstnConfig,
    RedisConfig,
    RegistrarConfig,
    RelayConfig,
    TimersConfig,
    TLSConfig,
    VoicemailConfig,
)
from sipsuite.config.specs import ControlSpec, ListenSpec, RelaySpec, parse_control, parse_listen

__all__ = [
    "AccountingConfig",
    "AntifloodConfig",
    "AuthConfig",
    "Config",
    "ConfigError",
    "ControlSpec",
    "DispatcherConfig",
    "FeaturesConfig",
    "ListenSpec",
    "LogConfig",
    "ManagementConfig",
    "MediaConfig",
    "NatConfig",
    "PACKAGED_CONFIG",
    "ProxyConfig",
    "PstnConfig",
    "RedisConfig",
    "RegistrarConfig",
    "RelayConfig",
    "RelaySpec",
    "TLSConfig",
    "TimersConfig",
    "VoicemailConfig",
    "config_from_dict",
    "default_config_path",
    "load_config",
    "parse_control",
    "parse_listen",
]

"""The agent's YAML config: frozen dataclasses, validation that reports every problem at
once ("<key path>: <problem and fix>"), and the redacted view `show-config` prints.

parse_config is pure except that static connections read their PSK files.
"""

from agent.config.loading import load_config
from agent.config.schema import (
    AgentConfig,
    ApiConfig,
    ConfigError,
    ConnectionConfig,
    HaConfig,
    MetricsConfig,
    ProbeConfig,
    StaticConfig,
    StaticTunnelConfig,
    StrongswanConfig,
    split_listen,
)
from agent.config.validation import parse_config
from agent.config.views import redacted, static_vpn_connection

__all__ = [
    "AgentConfig",
    "ApiConfig",
    "ConfigError",
    "ConnectionConfig",
    "HaConfig",
    "MetricsConfig",
    "ProbeConfig",
    "StaticConfig",
    "StaticTunnelConfig",
    "StrongswanConfig",
    "load_config",
    "parse_config",
    "redacted",
    "split_listen",
    "static_vpn_connection",
]

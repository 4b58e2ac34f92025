"""Configuration: the JSON config file's model, its loader/validator, and route lookup."""

from .load import ConfigError, config_from, load_config, parse_config, read_config
from .model import Config, Fleet, Limits, Listener, Route, Server, Timeouts, Tls, Upstream
from .routes import find_route, find_server, route_key

__all__ = [
    "Config",
    "ConfigError",
    "Fleet",
    "Limits",
    "Listener",
    "Route",
    "Server",
    "Timeouts",
    "Tls",
    "Upstream",
    "config_from",
    "find_route",
    "find_server",
    "load_config",
    "parse_config",
    "read_config",
    "route_key",
]

"""Which ``Host`` and ``Origin`` headers ``/mcp`` answers: protection against DNS rebinding.

A web page can make a browser send requests to a name that its attacker later points at the gateway's
address (DNS rebinding); the browser then sends the attacker's name in ``Host``. Answering only the
names the gateway is really reached under stops that. The names come from the gateway's
``allowed_hosts`` setting (``ZEROSERVE_ALLOWED_HOSTS``); without it, the loopback names, the address
the gateway listens on and this machine's host name. ``*`` turns the check off (a proxy in front
already checks ``Host``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
_WILDCARD_BINDS = ("0.0.0.0", "::", "")


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """``Host`` values (``name:*`` is the name on any port) and the ``Origin``s that go with them;
    ``check`` False accepts any."""

    check: bool
    hosts: tuple[str, ...] = ()
    origins: tuple[str, ...] = ()


def host_policy(allowed_hosts: Iterable[str], listen_host: str, hostname: str | None = None) -> HostPolicy:
    configured = [host.strip() for host in allowed_hosts if host.strip()]
    if "*" in configured:
        return HostPolicy(check=False)
    names = configured or _default_names(listen_host, hostname)
    hosts: list[str] = []
    for name in names:
        # "name" alone is the name on any port (and on the scheme's default port, where Host has none);
        # "name:port" is that port only.
        hosts += [name] if _has_port(name) else [name, f"{name}:*"]
    hosts = list(dict.fromkeys(hosts))
    origins = [f"{scheme}://{host}" for host in hosts for scheme in ("http", "https")]
    return HostPolicy(True, tuple(hosts), tuple(origins))


def _default_names(listen_host: str, hostname: str | None) -> list[str]:
    names = list(LOOPBACK_NAMES)
    if listen_host not in _WILDCARD_BINDS:
        names.append(_bracketed(listen_host))
    elif hostname:
        names.append(hostname)
    return names


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _has_port(name: str) -> bool:
    if name.startswith("["):  # [v6]:port
        return "]:" in name
    return ":" in name

"""One Prometheus exposition for the whole fleet (``GET /metrics?scope=fleet``): every gateway's series,
each sample labelled with the gateway it came from, one ``HELP``/``TYPE`` per family.

Each gateway's own ``/metrics`` stays its own (scraped per gateway, Prometheus adds the instance); this
view is for one scrape, or one look, through a load balancer that lands on any gateway. Sum over the
``gateway`` label for fleet totals (``sum without (gateway) (rate(...))``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?(\s.*)$")


@dataclass
class _Family:
    help: str | None = None
    type: str | None = None
    samples: list[str] = field(default_factory=list)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def label_samples(line: str, gateway: str) -> str:
    """A sample line with ``gateway="..."`` added as its first label."""
    match = _SAMPLE.match(line)
    if match is None:
        return line
    name, labels, rest = match.groups()
    label = f'gateway="{_escape(gateway)}"'
    if labels and labels != "{}":
        return f"{name}{{{label},{labels[1:]}{rest}"
    return f"{name}{{{label}}}{rest}"


def merge_expositions(parts: list[tuple[str, bytes]]) -> bytes:
    """``parts``: (gateway id, its exposition in the Prometheus text format), merged family by family."""
    families: dict[str, _Family] = {}
    for gateway, text in parts:
        current: _Family | None = None
        for line in text.decode().splitlines():
            if not line.strip():
                continue
            if line.startswith("# HELP ") or line.startswith("# TYPE "):
                kind, name = line[2:6], line[7:].split(" ", 1)[0]
                current = families.setdefault(name, _Family())
                if kind == "HELP" and current.help is None:
                    current.help = line
                elif kind == "TYPE" and current.type is None:
                    current.type = line
                continue
            if line.startswith("#"):
                continue
            if current is None:
                match = _SAMPLE.match(line)
                current = families.setdefault(match.group(1) if match else line, _Family())
            current.samples.append(label_samples(line, gateway))
    out: list[str] = []
    for family in families.values():
        out += [line for line in (family.help, family.type) if line is not None]
        out += family.samples
    return ("\n".join(out) + "\n").encode()

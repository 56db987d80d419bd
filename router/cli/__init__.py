"""The ``zeroserve`` command line.

Each group of commands lives in its own module and registers itself on ``cli``; this module only
wires them together, so that importing the CLI stays cheap (heavy imports happen inside commands).
"""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="zeroserve")
def cli() -> None:
    """zeroserve: self-hosted, serverless model serving."""


def _register() -> None:
    # Imported for their side effect of adding commands to ``cli``.
    from router.cli import (  # noqa: F401
        apply,
        batch,
        cost,
        db,
        endpoints,
        models,
        replica,
        serve,
        shares,
        terraform,
        tokens,
    )


def main() -> None:
    _register()
    cli()

"""``zeroserve terraform mirror DIR``: the Terraform provider as a filesystem mirror that ``terraform
init -plugin-dir DIR`` (or a ``filesystem_mirror`` in the CLI configuration) installs offline."""

from __future__ import annotations

from pathlib import Path

import click

from router.cli import cli
from router.cli._render import console


@cli.group()
def terraform() -> None:
    """The zeroserve Terraform provider."""


@terraform.command("mirror")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--python", "python", default=None, envvar="ZEROSERVE_TERRAFORM_PYTHON",
              help="The provider's interpreter, with the `tf` package [env ZEROSERVE_TERRAFORM_PYTHON;"
                   " default: this one if it has `tf`, else DIRECTORY/python, made with pip].")
def mirror(directory: Path, python: str | None) -> None:
    """Write the provider into DIRECTORY, with the lock entry to commit beside a configuration."""
    from router.terraform.mirror import SOURCE, write_mirror

    try:
        made = write_mirror(directory, python)
    except RuntimeError as error:
        raise click.ClickException(str(error)) from None
    console.print(f"provider {SOURCE} {made.version} written to {made.package_dir}")
    console.print(f"interpreter: {made.python}")
    console.print(f"hash: {made.hash}")
    console.print("use it with:")
    console.print(f'  terraform {{ required_providers {{ zeroserve = {{ source = "{SOURCE}",'
                  f' version = "{made.version}" }} }} }}', markup=False)
    console.print(f"  cp {made.root / '.terraform.lock.hcl'} . && terraform init -plugin-dir {made.root}",
                  markup=False)

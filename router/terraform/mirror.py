"""A filesystem mirror of the provider that ``terraform init`` installs from, offline.

Layout (Terraform's "unpacked" mirror)::

    DIR/zeroserve.local/zeroserve/zeroserve/VERSION/OS_ARCH/
        terraform-provider-zeroserve_vVERSION   the launcher Terraform runs
        provider_main.py                        starts the provider
        zeroserve_terraform/                    this package's api.py and provider.py
    DIR/.terraform.lock.hcl                     the lock entry, to commit beside a configuration
    DIR/python/                                 the provider's interpreter, when the mirror made one

The provider runs on the ``tf`` framework, whose pins (protobuf < 6) conflict with the gateway's own
dependencies, so it gets an interpreter of its own: the one given, else this one if it has ``tf``,
else a virtual environment made here with ``tf`` from the package index.
"""

from __future__ import annotations

import base64
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import sys
import venv
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

HOSTNAME, NAMESPACE, TYPE = "zeroserve.local", "zeroserve", "zeroserve"
SOURCE = f"{HOSTNAME}/{NAMESPACE}/{TYPE}"
# The framework release the provider is written and tested against.
TF_REQUIREMENT = "tf==1.2.0"
_SHIPPED = ("__init__.py", "api.py", "provider.py")


@dataclass(frozen=True)
class Mirror:
    root: Path
    package_dir: Path
    version: str
    python: str
    hash: str

    def lock_file(self) -> str:
        return lock_entry(self.version, self.hash)


def provider_version() -> str:
    try:
        return version("zeroserve")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0"


def target() -> str:
    """Terraform's name for this machine's platform, e.g. ``linux_amd64``."""
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)
    return f"{platform.system().lower()}_{arch}"


def has_tf(python: str) -> bool:
    probe = subprocess.run([python, "-c", "import tf.runner, tf.provider"], capture_output=True, check=False)
    return probe.returncode == 0


def provider_python(root: Path, python: str | None) -> str:
    """The interpreter the launcher names: ``python`` (which must have ``tf``), else this one when it
    has ``tf``, else ``root/python`` (made with ``tf`` installed by pip on first use)."""
    if python:
        if not has_tf(python):
            raise RuntimeError(f"{python} cannot import the `tf` framework: install {TF_REQUIREMENT!r}"
                               " into it")
        return python
    if has_tf(sys.executable):
        return sys.executable
    env_dir = root / "python"
    bin_dir = "Scripts" if os.name == "nt" else "bin"
    made = str(env_dir / bin_dir / "python")
    if Path(made).exists() and has_tf(made):
        return made
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    install = subprocess.run(
        [made, "-m", "pip", "install", "-q", "--disable-pip-version-check", TF_REQUIREMENT],
        capture_output=True, text=True, check=False,
    )
    if install.returncode != 0 or not has_tf(made):
        said = install.stderr.strip()[-2000:]
        raise RuntimeError(f"could not install {TF_REQUIREMENT} into {env_dir}: {said}")
    return made


def write_mirror(root: Path, python: str | None = None) -> Mirror:
    """Write (or rewrite) the mirror under ``root``; the package's hash is what Terraform will check."""
    root = root.resolve()
    interpreter = provider_python(root, python)
    release = provider_version()
    package_dir = root / HOSTNAME / NAMESPACE / TYPE / release / target()
    if package_dir.exists():
        shutil.rmtree(package_dir)
    (package_dir / "zeroserve_terraform").mkdir(parents=True)
    here = Path(__file__).parent
    for name in _SHIPPED:
        shutil.copyfile(here / name, package_dir / "zeroserve_terraform" / name)
    (package_dir / "provider_main.py").write_text(
        "import sys\n"
        "from pathlib import Path\n\n"
        "sys.path.insert(0, str(Path(__file__).resolve().parent))\n"
        "from zeroserve_terraform.provider import main  # noqa: E402\n\n"
        "main()\n"
    )
    launcher = package_dir / f"terraform-provider-{TYPE}_v{release}"
    # -I: nothing from the caller's environment (PYTHONPATH, user site) reaches the provider.
    # -B: no __pycache__ beside the sources, which would change the package's hash after its first run.
    launcher.write_text(
        "#!/bin/sh\n"
        f'exec "{interpreter}" -I -B "$(dirname "$0")/provider_main.py" "$@"\n'
    )
    launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    digest = package_hash(package_dir)
    mirror = Mirror(root, package_dir, release, interpreter, digest)
    (root / ".terraform.lock.hcl").write_text(mirror.lock_file())
    return mirror


def package_hash(package_dir: Path) -> str:
    """Terraform's ``h1:`` hash of an unpacked provider package (Go's dirhash "Hash1"): the SHA-256 of
    the lines ``"<sha256 hex>  <relative path>\\n"`` of every file, in path order."""
    files = sorted(p.relative_to(package_dir).as_posix() for p in package_dir.rglob("*") if p.is_file())
    summary = hashlib.sha256()
    for name in files:
        if "\n" in name:
            raise ValueError(f"file name with a newline in the provider package: {name!r}")
        content = hashlib.sha256((package_dir / name).read_bytes()).hexdigest()
        summary.update(f"{content}  {name}\n".encode())
    return "h1:" + base64.b64encode(summary.digest()).decode()


def lock_entry(release: str, digest: str) -> str:
    return (
        "# This file is maintained automatically by \"terraform init\".\n"
        "# Manual edits may be lost in future updates.\n\n"
        f'provider "{SOURCE}" {{\n'
        f'  version     = "{release}"\n'
        f'  constraints = "{release}"\n'
        "  hashes = [\n"
        f'    "{digest}",\n'
        "  ]\n"
        "}\n"
    )

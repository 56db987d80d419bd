"""The zeroserve Terraform provider (``zeroserve_serving_endpoint``, ``zeroserve_permissions``,
``zeroserve_token`` and the ``zeroserve_serving_endpoint`` data source) and the filesystem mirror that
``terraform init`` installs it from.

``api`` and ``provider`` run inside the provider's own interpreter — the one ``zeroserve terraform
mirror`` names in the mirror's launcher, which has the ``tf`` framework but none of the gateway's
dependencies — so they import only the standard library, ``tf`` and each other (relatively: the mirror
ships this folder as a package of its own). ``mirror`` runs in the CLI.
"""

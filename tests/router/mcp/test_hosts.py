"""The Host and Origin names /mcp answers (DNS-rebinding protection)."""

from __future__ import annotations

from router.mcp.hosts import host_policy


def test_configured_names_on_any_port_unless_one_is_given() -> None:
    policy = host_policy(["models.example.com", "internal:8443"], "0.0.0.0", "node-7")
    assert policy.check
    assert policy.hosts == ("models.example.com", "models.example.com:*", "internal:8443")
    assert "https://models.example.com:*" in policy.origins and "http://internal:8443" in policy.origins
    assert "localhost:*" not in policy.hosts  # configured names replace the defaults


def test_a_star_turns_the_check_off() -> None:
    assert not host_policy(["*"], "127.0.0.1").check


def test_defaults_are_loopback_plus_the_listen_address() -> None:
    policy = host_policy([], "10.1.2.3", "node-7")
    assert {"127.0.0.1:*", "localhost:*", "[::1]:*", "10.1.2.3", "10.1.2.3:*"} <= set(policy.hosts)
    assert "node-7" not in policy.hosts


def test_defaults_on_a_wildcard_listen_address_add_the_machine_name() -> None:
    policy = host_policy([" ", ""], "0.0.0.0", "node-7")
    assert {"localhost", "node-7", "node-7:*"} <= set(policy.hosts)


def test_ipv6_listen_addresses_are_bracketed() -> None:
    policy = host_policy([], "fd00::5", None)
    assert "[fd00::5]:*" in policy.hosts
    assert host_policy(["[fd00::5]:8484"], "::", None).hosts == ("[fd00::5]:8484",)

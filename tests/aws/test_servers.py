"""The test servers' own set-up (tests/aws/servers.py)."""
from tests.aws.servers import free_port


def test_free_ports_are_never_handed_out_twice():
    # Emulators start together; a port offered twice made one die at start
    # ("bind: address already in use") while the other answered for both.
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)

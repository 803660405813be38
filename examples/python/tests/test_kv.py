"""The kv example's store from Python, through the class #[replicated] generates.

Three `kv member` processes (the binary in $KV_BIN) form a group on loopback, every connection
mutual TLS with certificates `kv certs` writes; the store has two shards, and each key goes to
the shard `kv_client.shard_of` names, as the members place it.
"""

import os
import socket
import subprocess
import tempfile
import time

import pytest

import kv_client
from kv_client import ClientError, KvStore, shard_of

KV = os.environ.get("KV_BIN", "target/release/kv")
GROUP = "kv-demo"
SHARDS = 2
# The members' and the client's certificates, written by `kv certs` (in the fixture).
CERTS = tempfile.mkdtemp(prefix="kv-python-tls-")
TLS = dict(
    ca=os.path.join(CERTS, "ca.pem"),
    cert=os.path.join(CERTS, "client.pem"),
    key=os.path.join(CERTS, "client.key"),
)


def free_address():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return "127.0.0.1:%d" % s.getsockname()[1]


def store(addresses, key, timeout=10.0):
    """A client of the shard that holds `key`."""
    return KvStore.connect(addresses, group=GROUP, shard=shard_of(key, SHARDS), timeout=timeout, **TLS)


@pytest.fixture(scope="module")
def group():
    addresses = [free_address() for _ in range(3)]
    members = []
    env = dict(os.environ, RUST_LOG="warn")
    subprocess.run([KV, "certs", CERTS, "--members", "3"], check=True, stdout=subprocess.DEVNULL)
    for i, address in enumerate(addresses):
        args = [KV, "member", "--tls-dir", CERTS, "--set", "me=%d" % i, "--set", 'listen="%s"' % address]
        if i > 0:
            args += ["--set", 'contact="%s"' % addresses[0]]
        members.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, env=env))
    deadline = time.time() + 60
    while True:
        try:
            c = KvStore.connect(addresses, group=GROUP, timeout=2.0, **TLS)
            if len(c.members()) == 3:
                break
        except ClientError:
            pass
        assert time.time() < deadline, "the three members did not form a group"
        time.sleep(0.1)
    yield members, addresses
    for m in members:
        m.kill()
        m.wait()
    for f in os.listdir(CERTS):
        os.remove(os.path.join(CERTS, f))
    os.rmdir(CERTS)


def test_puts_and_gets_return_python_values(group):
    _, addresses = group
    for key, value in [("apple", b"red"), ("pear", b"green"), ("plum", b"\x00\xff")]:
        s = store(addresses, key)
        version, stored_at = s.put(key, value)
        assert isinstance(version, int) and version > 0
        assert stored_at == version
        got = s.get(key)
        assert got == (version, value)
        # Asked of each member of the shard: the same.
        for member, _ in s.members():
            shard_members = dict(s.shards())[shard_of(key, SHARDS)]
            if member in shard_members:
                assert s.get(key, to=member) == (version, value)
    assert store(addresses, "nothing here").get("nothing here") is None


def test_reads_at_a_version(group):
    _, addresses = group
    s = store(addresses, "fig")
    first, _ = s.put("fig", b"one")
    s.put("fig", b"two")
    assert s.get_at("fig", first) == b"one"
    assert s.get("fig")[1] == b"two"
    assert s.get_at("fig", 1) is None  # before any put of it


def test_errors_are_python_exceptions_with_their_kind(group):
    _, addresses = group
    s = store(addresses, "big")
    with pytest.raises(ClientError) as e:
        s.put("big", b"x" * (20 << 10))
    message, kind = e.value.args
    assert kind == "too large"
    assert "payload_len_max" in message
    # A method returning Result raises ValueError for its Err.
    with pytest.raises(ValueError):
        s.get_at_time("big", 2**63)
    with pytest.raises(ClientError) as e:
        KvStore.connect([free_address()], group=GROUP, timeout=0.5)
    assert e.value.args[1] == "unreachable"
    assert issubclass(kv_client.ClientError, Exception)


def test_tls_is_required_and_its_files_are_checked(group):
    _, addresses = group
    # The members run TLS: a plaintext client gets nowhere.
    with pytest.raises(ClientError) as e:
        KvStore.connect(addresses, group=GROUP, timeout=2.0)
    assert e.value.args[1] == "unreachable"
    # Some of the files but not all, or a file that is not there: ValueError naming it.
    with pytest.raises(ValueError, match="all three"):
        KvStore.connect(addresses, group=GROUP, ca=TLS["ca"])
    with pytest.raises(ValueError, match="nowhere.pem"):
        KvStore.connect(addresses, group=GROUP, ca=TLS["ca"], cert="/nowhere.pem", key=TLS["key"])


def test_a_member_failure_is_notified_and_calls_go_on(group):
    members, addresses = group
    keys = ["k%d" % i for i in range(20)]
    for k in keys:
        store(addresses, k).put(k, k.encode())
    watcher = KvStore.connect(addresses, group=GROUP, **TLS)
    assert watcher.subscribe("view") == 3
    # A member that shares its shard with another (a shard left with none stops the store) and
    # is not member 0 (the others' contact).
    shards = dict(watcher.shards())
    pair = next(m for m in shards.values() if len(m) == 2)
    victim = next(n for n in pair if n != 0)
    members[victim].kill()
    members[victim].wait()
    deadline = time.time() + 30
    while True:
        note = watcher.next_notification(timeout=1.0)
        if note is not None:
            topic, body = note
            assert topic == "view"
            if str(victim) not in body.decode().split("members ")[1]:
                break
        assert time.time() < deadline, "no view without member %d was notified" % victim
    for k in keys:
        assert store(addresses, k).get(k)[1] == k.encode()
    version, _ = store(addresses, "after").put("after", b"the failure")
    assert version > 0

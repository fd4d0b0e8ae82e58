#!/usr/bin/env python3
"""Debian's python3-etcd3gw (the grpc-gateway JSON client of tooz and oslo) against the proxy's
HTTP face. argv: host port prefix. Shards split inside the prefix at <prefix>i and <prefix>s.
Every step asserts; the last line is "etcd3gw ok"."""
import sys
import threading
import time

from etcd3gw.client import Etcd3Client
from etcd3gw.utils import _encode

host, port, p = sys.argv[1], int(sys.argv[2]), sys.argv[3]


def step(name):
    print(name + ": ok", flush=True)


def wait_for(condition, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def kv_and_leases(c, tag):
    keys = [p + "a" + tag, p + "m" + tag, p + "z" + tag]  # one per shard
    for k in keys:
        assert c.put(k, "v-" + k), k
        assert c.get(k) == [b"v-" + k.encode()], c.get(k)
    got = [m["key"] for _, m in c.get_prefix(p)]
    assert [k.encode() for k in keys] == [g for g in got if g.decode().endswith(tag)], got
    step("putGetPrefixAcrossShards" + tag)
    assert c.create(p + "c" + tag, "first") is True
    assert c.create(p + "c" + tag, "second") is False
    assert c.replace(p + "c" + tag, "first", "third") is True
    assert c.get(p + "c" + tag) == [b"third"]
    step("txn" + tag)
    lease = c.lease(ttl=3)
    assert c.put(p + "l" + tag, "leased", lease=lease)
    assert lease.refresh() > 0
    assert 0 < lease.ttl() <= 3
    assert p.encode() + b"l" + tag.encode() in lease.keys()
    short = c.lease(ttl=1)
    c.put(p + "x" + tag, "expires", lease=short)
    assert wait_for(lambda: c.get(p + "x" + tag) == [], 10), "key of an expired lease still there"
    assert lease.revoke()
    assert c.get(p + "l" + tag) == []
    step("leases" + tag)
    events, cancel = c.watch(p + "m" + tag)
    time.sleep(0.5)  # etcd3gw's watcher thread has no "created" hook to wait on
    c.put(p + "m" + tag, "changed")
    event = next(events)
    assert event["kv"]["key"] == (p + "m" + tag).encode() or event["kv"]["key"] == _encode(p + "m" + tag), event
    cancel()
    step("watchOneShard" + tag)
    # The whole prefix: one piece per shard.
    events, cancel = c.watch_prefix(p)
    time.sleep(0.5)
    wanted = {(k + "w").encode() for k in keys}
    for k in keys:
        c.put(k + "w", "w")
    seen = set()
    while not wanted <= seen:
        seen.add(next(events)["kv"]["key"])
    cancel()
    step("watchPrefix" + tag)
    for k in keys:
        assert c.delete(k)
        assert c.get(k) == []
        c.delete(k + "w")
    step("delete" + tag)


c = Etcd3Client(host=host, port=port, api_path="/v3/")
assert c.status()["version"]
kv_and_leases(c, "1")
# Auth on: root with the root role, then every call with the token in Authorization.
c.post(c.get_url("/auth/role/add"), json={"name": "root"})
c.post(c.get_url("/auth/user/add"), json={"name": "root", "password": "pw"})
c.post(c.get_url("/auth/user/grant"), json={"user": "root", "role": "root"})
c.post(c.get_url("/auth/enable"), json={})
try:
    try:
        c.get(p + "a1")
        raise AssertionError("a read without a token passed with auth on")
    except AssertionError:
        raise
    except Exception:
        pass
    token = c.post(c.get_url("/auth/authenticate"), json={"name": "root", "password": "pw"})["token"]
    c.session.headers["Authorization"] = token
    step("authenticate")
    kv_and_leases(c, "2")
finally:
    c.post(c.get_url("/auth/disable"), json={})
    c.session.headers.pop("Authorization", None)
c.post(c.get_url("/auth/user/delete"), json={"name": "root"})
assert c.put(p + "after", "auth off")
step("authOff")
print("etcd3gw ok", flush=True)

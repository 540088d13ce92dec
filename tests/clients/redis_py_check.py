#!/usr/bin/env python3
"""redis-py against the proxy: plain redis.Redis (default settings, which in
redis-py 8 means HELLO 3; then protocol=3 and protocol=2 explicitly) and
redis.cluster.RedisCluster (which discovers the proxy as a one-node cluster).

Usage: redis_py_check.py HOST PORT
Prints one line per check and "OK" last when everything passed; exits 1 with
the failing check otherwise. Run by tests/clients.rs.
"""
import sys
import traceback

import redis
from redis.cluster import RedisCluster


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def exercise(r, label, cluster=False):
    p = f"py:{label}:"
    keys = [f"{p}{i}" for i in range(60)]

    # set / get
    for k in keys:
        check(r.set(k, f"v-{k}") is True, f"set {k}")
    for k in keys[:10]:
        check(r.get(k) == f"v-{k}".encode(), f"get {k} -> {r.get(k)!r}")
    check(r.get(f"{p}missing") is None, "get missing is None")

    # mget across slots (RedisCluster: mget_nonatomic splits per slot;
    # its plain mget needs one slot, so use a hash tag there)
    want = [f"v-{k}".encode() for k in keys[:20]] + [None]
    got = (r.mget_nonatomic if cluster else r.mget)(keys[:20] + [f"{p}missing"])
    check(got == want, f"mget across slots -> {got!r}")
    r.mset({f"{p}{{t-{label}}}a": "1", f"{p}{{t-{label}}}b": "2"})
    got = r.mget([f"{p}{{t-{label}}}a", f"{p}{{t-{label}}}b", f"{p}{{t-{label}}}c"])
    check(got == [b"1", b"2", None], f"same-slot mget -> {got!r}")

    # pipeline without MULTI: these keys span slots, and a transaction through
    # the proxy must keep to one slot
    pipe = r.pipeline(transaction=False) if not cluster else r.pipeline()
    for k in keys[:30]:
        pipe.get(k)
    pipe.incr(f"{p}counter")
    pipe.incr(f"{p}counter")
    pipe.set(f"{p}piped", "yes")
    res = pipe.execute()
    check(res[:30] == [f"v-{k}".encode() for k in keys[:30]], f"pipeline gets -> {res[:5]!r}...")
    check(res[30:] == [1, 2, True], f"pipeline incr/set -> {res[30:]!r}")
    check(r.get(f"{p}piped") == b"yes", "pipelined set applied")

    # hashes
    h = f"{p}hash"
    check(r.hset(h, mapping={"f1": "v1", "f2": "v2", "n": "5"}) == 3, "hset mapping")
    check(r.hgetall(h) == {b"f1": b"v1", b"f2": b"v2", b"n": b"5"}, f"hgetall -> {r.hgetall(h)!r}")
    check(r.hgetall(f"{p}nohash") == {}, "hgetall of a missing key")
    check(r.hincrby(h, "n", 3) == 8, "hincrby")

    # other types, RESP3-sensitive replies (sets, doubles, nulls)
    s = f"{p}set"
    r.sadd(s, "a", "b", "c")
    check(r.smembers(s) == {b"a", b"b", b"c"}, f"smembers -> {r.smembers(s)!r}")
    z = f"{p}zset"
    r.zadd(z, {"m1": 1.5, "m2": 2})
    check(r.zscore(z, "m1") == 1.5, f"zscore -> {r.zscore(z, 'm1')!r}")
    # (redis-py gives pairs as lists with protocol=3, tuples otherwise)
    zr = [tuple(x) for x in r.zrange(z, 0, -1, withscores=True)]
    check(zr == [(b"m1", 1.5), (b"m2", 2.0)], f"zrange withscores -> {zr!r}")
    check(r.exists(*keys[:5]) == 5, "exists across slots")

    # scan_iter sees every key exactly once (and only ours with MATCH)
    seen = list(r.scan_iter(match=f"{p}*", count=25))
    want_keys = set(keys) | {f"{p}{{t-{label}}}a", f"{p}{{t-{label}}}b", f"{p}counter", f"{p}piped", h, s, z}
    got_keys = {k.decode() for k in seen}
    check(len(seen) == len(got_keys), f"scan_iter returned duplicates ({len(seen)} vs {len(got_keys)})")
    check(got_keys == want_keys, f"scan_iter: missing {sorted(want_keys - got_keys)[:5]}, extra {sorted(got_keys - want_keys)[:5]}")

    # delete across slots
    check(r.delete(*keys) == len(keys), "delete across slots")
    check(r.exists(*keys) == 0, "deleted")
    print(f"{label}: ok", flush=True)


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    common = dict(host=host, port=port, socket_timeout=10, socket_connect_timeout=10)
    print(f"redis-py {redis.__version__}", flush=True)
    failed = []

    def run(label, fn):
        try:
            fn()
        except Exception:
            print(f"{label}: FAILED", flush=True)
            traceback.print_exc()
            failed.append(label)

    def plain_default():
        r = redis.Redis(**common)  # defaults (HELLO 3 in redis-py 8)
        check(r.ping() is True, "ping")
        print(f"default redis.Redis negotiated resp={r.client_info().get('resp')}", flush=True)
        exercise(r, "Redis-default")

    def cluster(label, **kw):
        rc = RedisCluster(**common, **kw)
        nodes = rc.get_nodes()
        check(len(nodes) == 1 and nodes[0].port == port, f"RedisCluster nodes: {nodes!r}")
        exercise(rc, label, cluster=True)

    run("Redis-default", plain_default)
    run("Redis-protocol3", lambda: exercise(redis.Redis(protocol=3, **common), "Redis-protocol3"))
    run("Redis-protocol2", lambda: exercise(redis.Redis(protocol=2, **common), "Redis-protocol2"))
    run("RedisCluster-default", lambda: cluster("RedisCluster-default"))
    run("RedisCluster-protocol2", lambda: cluster("RedisCluster-protocol2", protocol=2))
    if failed:
        print("FAILED: " + ", ".join(failed), flush=True)
        sys.exit(1)
    print("OK", flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception:
        traceback.print_exc()
        print("FAILED", flush=True)
        sys.exit(1)

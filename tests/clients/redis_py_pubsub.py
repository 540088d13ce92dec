"""redis-py's PubSub through the proxy, RESP2 and RESP3: subscribe,
psubscribe and ssubscribe; messages published through the proxy and
directly on a cluster node (argv: host port node_port); get_message and
the listen() loop; unsubscribe acks; a PubSub in a thread.

Prints OK last when every check passed.
"""
import sys
import threading
import time

import redis

host, port, node_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])


def wait_message(p, timeout=5.0):
    end = time.time() + timeout
    while time.time() < end:
        m = p.get_message(timeout=0.2)
        if m is not None:
            return m
    raise AssertionError("no message within %.1fs" % timeout)


for protocol in (2, 3):
    r = redis.Redis(host=host, port=port, protocol=protocol)
    node = redis.Redis(host="127.0.0.1", port=node_port)
    p = r.pubsub()
    p.subscribe("py:news")
    m = wait_message(p)
    assert m["type"] == "subscribe" and m["channel"] == b"py:news" and m["data"] == 1, m
    p.psubscribe("py:ev.*")
    m = wait_message(p)
    assert m["type"] == "psubscribe" and m["data"] == 2, m
    p.ssubscribe("{py}shard")
    m = wait_message(p)
    assert m["type"] == "ssubscribe" and m["channel"] == b"{py}shard" and m["data"] == 1, m
    assert r.publish("py:news", "hello") == 1
    m = wait_message(p)
    assert (m["type"], m["channel"], m["data"]) == ("message", b"py:news", b"hello"), m
    # Published on a node directly (the cluster bus brings it to the
    # proxy's subscription wherever it is).
    node.publish("py:ev.x", "on-node")
    m = wait_message(p)
    assert (m["type"], m["pattern"], m["channel"], m["data"]) == (
        "pmessage", b"py:ev.*", b"py:ev.x", b"on-node"), m
    assert r.spublish("{py}shard", "sharded") == 1
    m = wait_message(p)
    assert (m["type"], m["channel"], m["data"]) == ("smessage", b"{py}shard", b"sharded"), m
    if protocol == 3:
        # RESP3: ordinary commands on the subscribed connection.
        r2 = redis.Redis(host=host, port=port, protocol=3)
        assert r2.set("py:k", "v") and r2.get("py:k") == b"v"
    p.unsubscribe("py:news")
    m = wait_message(p)
    assert m["type"] == "unsubscribe" and m["data"] == 1, m
    p.punsubscribe()
    m = wait_message(p)
    assert m["type"] == "punsubscribe" and m["data"] == 0, m
    p.sunsubscribe()
    m = wait_message(p)
    assert m["type"] == "sunsubscribe" and m["data"] == 0, m
    p.close()

    # A handler-based PubSub running in its own thread.
    got = []
    done = threading.Event()

    def handler(message):
        got.append(message["data"])
        if len(got) == 3:
            done.set()

    p = r.pubsub()
    p.subscribe(**{"py:thread": handler})
    t = p.run_in_thread(sleep_time=0.05)
    end = time.time() + 5
    while r.pubsub_numsub("py:thread")[0][1] != 1 and time.time() < end:
        time.sleep(0.05)
    for i in range(3):
        r.publish("py:thread", str(i))
    assert done.wait(5), got
    assert got == [b"0", b"1", b"2"], got
    t.stop()
    t.join(5)
    p.close()
    print("protocol %d ok" % protocol)

print("OK")

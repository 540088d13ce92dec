"""Celery through the proxy: workers started by tests/clients.rs (module
celery_app, `--pool=solo`) block in BRPOP on the queue; this sends tasks
and collects their results with .get(timeout).

Usage: celery_check.py HOST PORT ADMIN_PORT WORKERS
Prints OK last on success.
"""

import os
import sys
import time
import urllib.request

import redis
from kombu import Connection

HOST, PORT, ADMIN, WORKERS = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
URL = f"redis://{HOST}:{PORT}/0"
TASKS = 100

# celery_app reads the broker URL when imported.
os.environ["CELERY_CHECK_BROKER"] = URL
from celery_app import add, flaky  # noqa: E402


def blocked_in_proxy():
    url = f"http://{HOST}:{ADMIN}/stats?filter=blocked_rq_active$"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return int(text.split(":")[1])


def wait_blocked(n, what):
    until = time.time() + 60
    while blocked_in_proxy() < n:
        assert time.time() < until, f"timed out waiting for {what}"
        time.sleep(0.05)


def main():
    r = redis.Redis(host=HOST, port=PORT)
    r.delete("{check}runs", "{check}workers")

    # Without a common hash tag kombu's keys are in different slots: its
    # MULTI over a queue's priority lists gets CROSSSLOT, as on any Redis
    # Cluster. That is why celery_app sets global_keyprefix.
    # (redis-py turns a -CROSSSLOT reply into ClusterCrossSlotError.)
    with Connection(URL) as conn:
        try:
            conn.default_channel.queue_declare("untagged")
            raise AssertionError("an untagged kombu queue declared fine")
        except redis.exceptions.ClusterCrossSlotError:
            pass
    print("untagged kombu queue: CROSSSLOT (its priority lists span slots)")

    # Every worker is blocked in BRPOP before the first task.
    wait_blocked(WORKERS, f"{WORKERS} workers blocked in BRPOP")
    print(f"{blocked_in_proxy()} commands blocked in the proxy before the first task")

    results = [add.delay(i, i) for i in range(TASKS)]
    got = [res.get(timeout=60) for res in results]
    assert got == [2 * i for i in range(TASKS)], got
    print(f"{TASKS} tasks, results collected with .get(timeout)")

    retried = flaky.delay(7)
    assert retried.get(timeout=60) == 70
    print("a task that fails its first attempt is retried and succeeds")

    runs = sorted(x.decode() for x in r.lrange("{check}runs", 0, -1))
    expect = sorted([f"add:{i}" for i in range(TASKS)] + ["flaky:0", "flaky:1"])
    assert runs == expect, f"{len(runs)} runs recorded, expected {len(expect)}"
    print("each task ran exactly once (the flaky one twice: fail, retry)")
    # Redis wakes the longest-blocked BRPOP first: the workers take turns.
    workers = r.scard("{check}workers")
    assert workers == WORKERS, f"tasks ran on {workers} of {WORKERS} workers"
    print(f"tasks ran on all {WORKERS} workers")

    # Drained: nothing waiting, nothing delivered but unacknowledged, and
    # the workers are back in BRPOP.
    # (A worker acknowledges a message just after it sent the result.)
    t0 = time.time()
    until = t0 + 30
    while True:
        left = (r.llen("{celery}celery"), r.hkeys("{celery}unacked"), r.zrange("{celery}unacked_index", 0, -1))
        if left == (0, [], []):
            break
        assert time.time() < until, f"not drained: waiting, unacked, unacked_index = {left}"
        time.sleep(0.1)
    wait_blocked(WORKERS, "workers blocked again on the empty queue")
    late = add.delay(20, 22)
    assert late.get(timeout=60) == 42
    print(f"queue drained ({time.time() - t0:.2f} s after the last result); a task sent while workers wait on an empty queue completes")
    print("OK")


if __name__ == "__main__":
    main()

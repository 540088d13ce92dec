"""A job queue with redis-py's blocking calls, through the proxy.

Usage: redis_py_queue.py HOST PORT

Workers (threads, each with its own connection) sit in `brpop` / `blmove`
(a reliable queue) / `bzpopmin` / `xreadgroup(block=…)` loops while a
producer adds jobs; every job must be processed exactly once. Runs with
RESP2 and RESP3 clients. Prints OK last on success.
"""

import sys
import threading
import time

import redis

HOST, PORT = sys.argv[1], int(sys.argv[2])
JOBS = 300
WORKERS = 4


def client(protocol):
    return redis.Redis(host=HOST, port=PORT, protocol=protocol, socket_timeout=30)


def run_workers(name, protocol, work, produce):
    """Start WORKERS threads running work(r, seen) until it returns False,
    then produce(r); returns every job the workers saw."""
    seen = []
    lock = threading.Lock()
    errors = []

    def loop():
        r = client(protocol)
        try:
            while True:
                job = work(r)
                if job is None:
                    return
                with lock:
                    seen.append(job)
        except Exception as e:  # reported below, fails the run
            errors.append(repr(e))

    threads = [threading.Thread(target=loop) for _ in range(WORKERS)]
    for t in threads:
        t.start()
    time.sleep(0.3)  # workers are blocked before the first job
    produce(client(protocol))
    for t in threads:
        t.join(60)
        assert not t.is_alive(), f"{name}: a worker is stuck"
    assert not errors, f"{name}: worker errors {errors}"
    return seen


def check(name, seen):
    expect = [str(i).encode() for i in range(JOBS)]
    assert sorted(seen, key=int) == expect, (
        f"{name}: {len(seen)} jobs seen, {len(set(seen))} distinct of {JOBS}"
    )
    print(f"{name}: {JOBS} jobs, each processed once by {WORKERS} workers")


def main():
    for protocol in (2, 3):
        r = client(protocol)
        r.delete("{jobs}q", "{jobs}busy", "{jobs}z", "{jobs}s")

        # BRPOP worker loop; a worker stops on its "stop" job.
        def brpop_work(r):
            item = r.brpop("{jobs}q", timeout=5)
            assert item is not None, "brpop timed out with jobs left"
            return None if item[1] == b"stop" else item[1]

        def brpop_produce(r):
            for i in range(JOBS):
                r.lpush("{jobs}q", i)
            for _ in range(WORKERS):
                r.lpush("{jobs}q", "stop")

        check(f"brpop RESP{protocol}", run_workers("brpop", protocol, brpop_work, brpop_produce))

        # Reliable queue: BLMOVE into a processing list, LREM when done.
        def blmove_work(r):
            item = r.blmove("{jobs}q", "{jobs}busy", 5, "RIGHT", "LEFT")
            assert item is not None, "blmove timed out with jobs left"
            r.lrem("{jobs}busy", 1, item)
            return None if item == b"stop" else item

        check(f"blmove RESP{protocol}", run_workers("blmove", protocol, blmove_work, brpop_produce))
        assert r.llen("{jobs}busy") == 0, "processing list not empty"

        # Priority queue: BZPOPMIN.
        def bzpop_work(r):
            item = r.bzpopmin("{jobs}z", timeout=5)
            assert item is not None, "bzpopmin timed out with jobs left"
            return None if item[1].startswith(b"stop") else item[1]

        def bzpop_produce(r):
            for i in range(JOBS):
                r.zadd("{jobs}z", {str(i): i})
            for w in range(WORKERS):
                r.zadd("{jobs}z", {f"stop{w}": JOBS + w})

        check(f"bzpopmin RESP{protocol}", run_workers("bzpopmin", protocol, bzpop_work, bzpop_produce))

        # Stream consumer group: XREADGROUP BLOCK, XACK.
        r.xgroup_create("{jobs}s", "g", id="0", mkstream=True)
        counter = iter(range(1_000_000))

        def xread_work(r):
            name = f"c{next(counter)}"
            got = r.xreadgroup("g", name, {"{jobs}s": ">"}, count=1, block=5000)
            assert got, "xreadgroup timed out with jobs left"
            if isinstance(got, dict):  # RESP3
                entries = list(got.values())[0][0]
            else:
                entries = got[0][1]
            entry_id, fields = entries[0]
            r.xack("{jobs}s", "g", entry_id)
            job = fields[b"job"]
            return None if job == b"stop" else job

        def xread_produce(r):
            for i in range(JOBS):
                r.xadd("{jobs}s", {"job": i})
            for _ in range(WORKERS):
                r.xadd("{jobs}s", {"job": "stop"})

        check(f"xreadgroup RESP{protocol}", run_workers("xreadgroup", protocol, xread_work, xread_produce))
        pending = r.xpending("{jobs}s", "g")
        assert pending["pending"] == 0, f"unacknowledged entries: {pending}"
    print("OK")


if __name__ == "__main__":
    main()

"""The Celery app of tests/clients/celery/celery_check.py: broker and
result backend through the proxy, with the settings a Redis Cluster needs.

CELERY_CHECK_BROKER is the proxy's URL (redis://HOST:PORT/0).
"""

import os

import redis
from celery import Celery

BROKER = os.environ["CELERY_CHECK_BROKER"]

# Celery's Redis result backend through the proxy: each result is stored
# with SET and announced with PUBLISH inside MULTI, and the caller waits for
# it on SUBSCRIBE (the proxy's pub/sub).
app = Celery("celery_app", broker=BROKER, backend=BROKER)
app.conf.update(
    # One hash tag before every key kombu uses (queue lists and their
    # priority lists, bindings, the unacked hash and index, the restore
    # mutex): kombu puts several of them in one MULTI or one BRPOP, which a
    # Redis Cluster only accepts when they share a slot.
    broker_transport_options={"global_keyprefix": "{celery}"},
    # The result keys under the same hash tag, as the broker's.
    result_backend_transport_options={"global_keyprefix": "{celery}"},
    # Remote control (the pidbox) is a fanout exchange, i.e. pub/sub.
    worker_enable_remote_control=False,
)

# Where tasks record each run, to count them (through the proxy too).
runs = redis.Redis.from_url(BROKER)


@app.task(bind=True)
def add(self, x, y):
    runs.rpush("{check}runs", f"add:{x}")
    runs.sadd("{check}workers", self.request.hostname)
    return x + y


@app.task(bind=True, max_retries=3)
def flaky(self, x):
    """Fails its first attempt, then succeeds on a retry."""
    runs.rpush("{check}runs", f"flaky:{self.request.retries}")
    if self.request.retries == 0:
        raise self.retry(countdown=0.3)
    return x * 10

// BullMQ through the proxy: a Queue adds jobs, Workers (each on its own
// blocking connection, waiting in BZPOPMIN on the queue's marker key) process
// them. Checks that every job completes exactly once with its result, that a
// delayed job waits its delay, that a failing job is retried and then
// completes, and that the queue drains; with RESP2 and RESP3 connections.
//
// Usage: node bullmq_check.js HOST PORT ADMIN_PORT
// ADMIN_PORT is Envoy's admin port: its blocked_rq_active gauge shows the
// workers really blocked in the proxy.
// The queue prefix is hash-tagged ('{bull}') so that all of a queue's keys
// share a slot, as BullMQ needs on any Redis Cluster: its Lua scripts touch
// several keys at once. Prints OK last on success.
'use strict';

const assert = require('node:assert/strict');
const { Queue, Worker, QueueEvents } = require('bullmq');

const [host, portArg, adminArg] = process.argv.slice(2);
const port = Number(portArg);
const prefix = '{bull}';
const JOBS = 200;
const WORKERS = 3;
const DELAY_MS = 1500;

// The proxy's gauge of commands blocked on a node right now.
async function blockedInProxy() {
    const res = await fetch(`http://${host}:${adminArg}/stats?filter=blocked_rq_active$`);
    const m = /blocked_rq_active: (\d+)/.exec(await res.text());
    assert.ok(m, 'no blocked_rq_active stat');
    return Number(m[1]);
}

async function waitFor(what, ms, f) {
    const until = Date.now() + ms;
    while (!(await f())) {
        if (Date.now() > until) throw new Error(`timed out: ${what}`);
        await new Promise((r) => setTimeout(r, 50));
    }
}

function withTimeout(promise, ms, what) {
    let timer;
    const timeout = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), ms);
    });
    return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function check(protocol) {
    const connection = { host, port, protocol, maxRetriesPerRequest: null };
    const name = `check-${process.pid}-${protocol}`;
    const queue = new Queue(name, { connection, prefix });
    const events = new QueueEvents(name, { connection, prefix });
    await events.waitUntilReady();
    // BullMQ hands the connection options to ioredis: check the protocol.
    const hello = await (await queue.getBackend().client).call('HELLO');
    assert.equal(hello[hello.indexOf('proto') + 1], protocol, 'negotiated protocol');
    // One waitUntilFinished listener per job; not a leak.
    queue.setMaxListeners(0);
    events.setMaxListeners(0);
    await queue.obliterate({ force: true });

    // jobId -> how often a worker ran it; failing job attempts.
    const runs = new Map();
    let flakyAttempts = 0;
    let delayedStartedAt = null;
    const processor = async (job) => {
        runs.set(job.id, (runs.get(job.id) || 0) + 1);
        if (job.name === 'flaky') {
            flakyAttempts += 1;
            if (job.attemptsMade === 0) throw new Error('first attempt fails');
        }
        if (job.name === 'delayed') delayedStartedAt = Date.now();
        return { doubled: job.data.n * 2 };
    };
    // Workers start first and block before any job exists.
    const workers = [];
    for (let i = 0; i < WORKERS; i++) {
        const w = new Worker(name, processor, { connection, prefix, concurrency: 4 });
        w.on('error', (e) => console.error(`worker error: ${e}`));
        workers.push(w);
    }
    await Promise.all(workers.map((w) => w.waitUntilReady()));
    // Each worker in BZPOPMIN, QueueEvents in XREAD BLOCK.
    await waitFor('workers blocked in the proxy', 10000, async () => (await blockedInProxy()) >= WORKERS + 1);
    console.log(`${await blockedInProxy()} commands blocked in the proxy before the first job`);

    // Plain jobs, half added singly, half in one addBulk.
    const jobs = [];
    for (let n = 0; n < JOBS / 2; n++) jobs.push(await queue.add('double', { n }));
    jobs.push(
        ...(await queue.addBulk(
            Array.from({ length: JOBS / 2 }, (_, i) => ({ name: 'double', data: { n: JOBS / 2 + i } })),
        )),
    );
    const delayedAddedAt = Date.now();
    const delayed = await queue.add('delayed', { n: 1000 }, { delay: DELAY_MS });
    const flaky = await queue.add('flaky', { n: 2000 }, { attempts: 3, backoff: { type: 'fixed', delay: 200 } });

    const results = await withTimeout(
        Promise.all([...jobs, delayed, flaky].map((j) => j.waitUntilFinished(events, 60000))),
        90000,
        'jobs to finish',
    );
    for (let n = 0; n < JOBS; n++) assert.deepEqual(results[n], { doubled: n * 2 }, `job ${n}`);
    assert.deepEqual(results[JOBS], { doubled: 2000 }, 'delayed job result');
    assert.deepEqual(results[JOBS + 1], { doubled: 4000 }, 'flaky job result');
    console.log(`${JOBS} jobs completed with their results by ${WORKERS} workers`);

    for (const j of jobs) assert.equal(runs.get(j.id), 1, `job ${j.id} ran ${runs.get(j.id)} times`);
    assert.equal(runs.get(delayed.id), 1, 'delayed job ran once');
    assert.equal(runs.size, JOBS + 2, 'no other job ran');
    console.log('each job ran exactly once');

    const waited = delayedStartedAt - delayedAddedAt;
    assert.ok(waited >= DELAY_MS - 50, `delayed job started after ${waited} ms, before its ${DELAY_MS} ms delay`);
    console.log(`delayed job started after ${waited} ms (delay ${DELAY_MS} ms)`);

    assert.equal(flakyAttempts, 2, 'flaky job: failed once, then succeeded');
    const flakyState = await queue.getJob(flaky.id);
    assert.equal(flakyState.attemptsMade, 2, 'flaky job attemptsMade');
    assert.equal(await flakyState.getState(), 'completed');
    console.log('failing job retried and completed on its second attempt');

    const counts = await queue.getJobCounts('waiting', 'active', 'delayed', 'completed', 'failed', 'prioritized');
    assert.deepEqual(
        counts,
        { waiting: 0, active: 0, delayed: 0, completed: JOBS + 2, failed: 0, prioritized: 0 },
        'queue drained',
    );
    console.log(`queue drained: ${JSON.stringify(counts)}`);

    // Workers block again on an empty queue; a job added now is picked up.
    await waitFor('workers blocked again', 10000, async () => (await blockedInProxy()) >= WORKERS + 1);
    const late = await queue.add('double', { n: 7 });
    assert.deepEqual(await withTimeout(late.waitUntilFinished(events, 20000), 25000, 'late job'), { doubled: 14 });
    console.log('a job added while workers wait on an empty queue completes');

    await withTimeout(Promise.all(workers.map((w) => w.close())), 30000, 'workers to close');
    await queue.obliterate({ force: true });
    await events.close();
    await queue.close();
}

async function main() {
    // ioredis speaks RESP3 by default; RESP2 clients are common too.
    for (const protocol of [2, 3]) {
        console.log(`RESP${protocol}:`);
        await check(protocol);
    }
    console.log('OK');
}

main().then(
    () => process.exit(0),
    (e) => {
        console.error(e && e.stack ? e.stack : e);
        process.exit(1);
    },
);

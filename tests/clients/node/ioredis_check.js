// ioredis (a plain, non-cluster `Redis` client) through the proxy, RESP2 and
// RESP3: pipelines over keys of every master, auto-pipelining, MULTI/EXEC and
// an aborted WATCH, and blocking commands — BLPOP timing out, clients blocked
// while another pushes, BRPOP/BLMOVE/BZPOPMIN/XREAD BLOCK, -CROSSSLOT for
// keys of different slots with the connection still usable afterwards.
//
// Usage: node ioredis_check.js HOST PORT ADMIN_PORT
// ADMIN_PORT is Envoy's admin port: its blocked_rq_active gauge tells when a
// client is really blocked in the proxy before another pushes. Prints OK last.
'use strict';

const assert = require('node:assert/strict');
const Redis = require('ioredis');

const [host, portArg, adminArg] = process.argv.slice(2);
const port = Number(portArg);

async function blockedInProxy() {
    const res = await fetch(`http://${host}:${adminArg}/stats?filter=blocked_rq_active$`);
    const m = /blocked_rq_active: (\d+)/.exec(await res.text());
    assert.ok(m, 'no blocked_rq_active stat');
    return Number(m[1]);
}

async function waitBlocked(n) {
    const until = Date.now() + 10000;
    while ((await blockedInProxy()) < n) {
        if (Date.now() > until) throw new Error(`timed out waiting for ${n} blocked commands`);
        await new Promise((r) => setTimeout(r, 20));
    }
}

function client(protocol, extra = {}) {
    return new Redis({ host, port, protocol, maxRetriesPerRequest: 1, ...extra });
}

async function check(protocol) {
    const tag = `io${protocol}`;
    const a = client(protocol);
    const b = client(protocol);
    const info = await a.hello();
    assert.equal(info[info.indexOf('proto') + 1], protocol, 'negotiated protocol');

    // Pipeline: 300 keys without hash tags land on every master; replies
    // come back in order.
    const keys = Array.from({ length: 300 }, (_, i) => `${tag}:k${i}`);
    let p = a.pipeline();
    keys.forEach((k, i) => p.set(k, i).incr(k).get(k));
    let res = await p.exec();
    assert.equal(res.length, keys.length * 3);
    keys.forEach((k, i) => {
        assert.deepEqual(res[3 * i], [null, 'OK']);
        assert.deepEqual(res[3 * i + 1], [null, i + 1]);
        assert.deepEqual(res[3 * i + 2], [null, String(i + 1)]);
    });
    assert.deepEqual(await a.mget(keys), keys.map((_, i) => String(i + 1)), 'MGET across slots');
    // An error inside a pipeline stays with its own command.
    res = await a.pipeline().set(`${tag}:str`, 'x').lpush(`${tag}:str`, 'y').get(`${tag}:str`).exec();
    assert.deepEqual(res[0], [null, 'OK']);
    assert.match(String(res[1][0]), /WRONGTYPE/);
    assert.deepEqual(res[2], [null, 'x']);
    console.log(`RESP${protocol}: pipeline of ${keys.length * 3} commands over every master, replies in order`);

    // Auto-pipelining: concurrent commands are batched into one write.
    const auto = client(protocol, { enableAutoPipelining: true });
    const got = await Promise.all(keys.map((k) => auto.get(k)));
    assert.deepEqual(got, keys.map((_, i) => String(i + 1)));
    auto.disconnect();
    console.log(`RESP${protocol}: ${keys.length} auto-pipelined GETs`);

    // MULTI/EXEC on one slot; WATCH aborted by another client's write.
    res = await a.multi().set(`{${tag}}:t`, 1).incr(`{${tag}}:t`).rpush(`{${tag}}:tl`, 'a', 'b').exec();
    assert.deepEqual(res, [[null, 'OK'], [null, 2], [null, 2]]);
    await a.watch(`{${tag}}:t`);
    await b.set(`{${tag}}:t`, 100);
    assert.equal(await a.multi().incr(`{${tag}}:t`).exec(), null, 'EXEC after a WATCHed key changed');
    assert.equal(await a.get(`{${tag}}:t`), '100');
    console.log(`RESP${protocol}: MULTI/EXEC, and WATCH aborting EXEC`);

    // BLPOP on an empty list times out after its own timeout.
    const q = `{${tag}}:q`;
    await a.del(q, `{${tag}}:q2`, `{${tag}}:done`, `{${tag}}:z`, `{${tag}}:s`);
    let t0 = Date.now();
    assert.equal(await a.blpop(q, 0.5), null);
    const took = Date.now() - t0;
    assert.ok(took >= 450 && took < 3000, `BLPOP 0.5 s timeout took ${took} ms`);
    console.log(`RESP${protocol}: BLPOP timed out after ${took} ms (timeout 0.5 s)`);

    // A blocked client is served by another client's push.
    const base = await blockedInProxy();
    const popped = b.blpop(q, 10);
    await waitBlocked(base + 1);
    await a.rpush(q, 'hello');
    assert.deepEqual(await popped, [q, 'hello']);
    console.log(`RESP${protocol}: BLPOP served by another client's RPUSH`);

    // Five blocked clients, five pushes: each value to exactly one client.
    const waiters = Array.from({ length: 5 }, () => client(protocol));
    const pops = waiters.map((w) => w.brpop(`{${tag}}:q2`, q, 10));
    await waitBlocked(base + 5);
    await a.lpush(q, 'v0', 'v1', 'v2', 'v3', 'v4');
    const values = (await Promise.all(pops)).map(([key, v]) => {
        assert.equal(key, q);
        return v;
    });
    assert.deepEqual(values.sort(), ['v0', 'v1', 'v2', 'v3', 'v4']);
    waiters.forEach((w) => w.disconnect());
    console.log(`RESP${protocol}: 5 clients in BRPOP on two keys, 5 values, each once`);

    // BLMOVE, BZPOPMIN, XREAD BLOCK, each woken by the other client.
    let pending = b.blmove(q, `{${tag}}:done`, 'RIGHT', 'LEFT', 10);
    await waitBlocked(base + 1);
    await a.lpush(q, 'job');
    assert.equal(await pending, 'job');
    assert.deepEqual(await a.lrange(`{${tag}}:done`, 0, -1), ['job']);
    pending = b.bzpopmin(`{${tag}}:z`, 10);
    await waitBlocked(base + 1);
    await a.zadd(`{${tag}}:z`, 3, 'three', 1, 'one');
    assert.deepEqual(await pending, [`{${tag}}:z`, 'one', '1']);
    pending = b.xread('BLOCK', 10000, 'STREAMS', `{${tag}}:s`, '$');
    await waitBlocked(base + 1);
    const id = await a.xadd(`{${tag}}:s`, '*', 'field', 'value');
    assert.deepEqual(await pending, [[`{${tag}}:s`, [[id, ['field', 'value']]]]]);
    console.log(`RESP${protocol}: BLMOVE, BZPOPMIN, XREAD BLOCK woken by another client`);

    // Keys of different slots in one blocking command: -CROSSSLOT, as on a
    // Redis Cluster; the connection keeps working.
    await assert.rejects(a.blpop(`${tag}:x`, `${tag}:y`, 1), /CROSSSLOT/);
    assert.equal(await a.ping(), 'PONG');
    console.log(`RESP${protocol}: BLPOP on keys of two slots gets CROSSSLOT, connection still usable`);

    await a.del(...keys);
    a.disconnect();
    b.disconnect();
}

async function main() {
    for (const protocol of [2, 3]) await check(protocol);
    console.log('OK');
}

main().then(
    () => process.exit(0),
    (e) => {
        console.error(e && e.stack ? e.stack : e);
        process.exit(1);
    },
);

// ioredis subscribers through the proxy (RESP2, which ioredis speaks):
// subscribe / psubscribe / ssubscribe, the 'message' / 'pmessage' /
// 'smessage' events, messages published through the proxy and on a node,
// unsubscribe. argv: host port node_port. Prints OK last.
const Redis = require('ioredis');

const [host, port, nodePort] = process.argv.slice(2);

function next(emitter, event, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no ${event} in ${timeoutMs} ms`)), timeoutMs);
    emitter.once(event, (...args) => {
      clearTimeout(t);
      resolve(args);
    });
  });
}

function eq(a, b, what) {
  const x = JSON.stringify(a), y = JSON.stringify(b);
  if (x !== y) throw new Error(`${what}: got ${x}, want ${y}`);
}

(async () => {
  const sub = new Redis({ host, port: Number(port) });
  const pub = new Redis({ host, port: Number(port) });
  const node = new Redis({ host: '127.0.0.1', port: Number(nodePort) });
  eq(await sub.subscribe('io:a', 'io:b'), 2, 'subscribe count');
  eq(await sub.psubscribe('io:p.*'), 3, 'psubscribe count');
  let m = next(sub, 'message');
  eq(await pub.publish('io:a', 'one'), 1, 'publish receivers');
  eq(await m, ['io:a', 'one'], 'message');
  m = next(sub, 'pmessage');
  await node.publish('io:p.x', 'two');
  eq(await m, ['io:p.*', 'io:p.x', 'two'], 'pmessage from a node');
  eq(await sub.ssubscribe('{io}s'), 1, 'ssubscribe count');
  m = next(sub, 'smessage');
  eq(await pub.spublish('{io}s', 'three'), 1, 'spublish receivers');
  eq(await m, ['{io}s', 'three'], 'smessage');
  eq(await sub.unsubscribe('io:a'), 2, 'unsubscribe count (io:b and io:p.* left)');
  m = next(sub, 'message');
  await pub.publish('io:a', 'gone');
  await pub.publish('io:b', 'four');
  eq(await m, ['io:b', 'four'], 'only the channel still subscribed');
  // By name: ioredis 6 waits on an argument-less unsubscribe that ends
  // with subscriptions of another kind left (against Redis itself too).
  eq(await sub.punsubscribe('io:p.*'), 1, 'punsubscribe count');
  eq(await sub.sunsubscribe('{io}s'), 0, 'sunsubscribe count');
  eq(await sub.unsubscribe('io:b'), 0, 'unsubscribe count');
  eq(await sub.ping(), 'PONG', 'out of subscribed mode');
  sub.disconnect(); pub.disconnect(); node.disconnect();
  console.log('OK');
})().catch((e) => {
  console.error(e);
  process.exit(1);
});

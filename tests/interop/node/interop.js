// The Node etcd3 client (grpc-js underneath) against the proxy: node interop.js HOST:PORT PREFIX
// The proxy's shards are split inside PREFIX (at PREFIX+"i" and PREFIX+"s"), so a prefix range or a
// watch on PREFIX spans all three shards. Exits non-zero with the first mismatch; prints
// "node-etcd3 ok" when every step answered as etcd would.
'use strict';
const assert = require('node:assert/strict');
const { Etcd3 } = require('etcd3');

const [address, prefix] = process.argv.slice(2);
if (!address || !prefix) {
  console.error('usage: node interop.js HOST:PORT PREFIX');
  process.exit(2);
}
const client = new Etcd3({ hosts: `http://${address}` });
const key = (suffix) => prefix + suffix;

// Resolves once `count` events have arrived, rejects after `ms` with what did arrive.
function collect(emitter, event, count, ms, map) {
  const seen = [];
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${event}: ${seen.length} of ${count} in ${ms} ms: ${JSON.stringify(seen)}`)), ms);
    emitter.on(event, (value) => {
      seen.push(map(value));
      if (seen.length === count) {
        clearTimeout(timer);
        resolve(seen);
      }
    });
  });
}

async function putGetAcrossShards() {
  // One key per shard.
  await client.put(key('a')).value('on-shard-0');
  await client.put(key('m')).value('on-shard-1');
  await client.put(key('z')).value('on-shard-2');
  assert.equal(await client.get(key('a')).string(), 'on-shard-0');
  assert.equal(await client.get(key('m')).string(), 'on-shard-1');
  assert.equal(await client.get(key('z')).string(), 'on-shard-2');
  assert.equal(await client.get(key('missing')).string(), null);
}

async function prefixRangeSpanningShards() {
  const all = await client.getAll().prefix(prefix).sort('Key', 'Ascend').strings();
  assert.deepEqual(all, { [key('a')]: 'on-shard-0', [key('m')]: 'on-shard-1', [key('z')]: 'on-shard-2' });
  assert.equal(await client.getAll().prefix(prefix).count(), 3);
  // A limit cuts the merged answer in key order, whichever shard the keys live on.
  assert.deepEqual(await client.getAll().prefix(prefix).sort('Key', 'Ascend').limit(2).keys(), [key('a'), key('m')]);
  const deleted = await client.delete().prefix(key('t')).exec();
  assert.equal(Number(deleted.deleted), 0);
}

async function txn() {
  const yes = await client.if(key('m'), 'Value', '==', 'on-shard-1')
    .then(client.put(key('n')).value('then'))
    .else(client.put(key('n')).value('else'))
    .commit();
  assert.equal(yes.succeeded, true);
  assert.equal(await client.get(key('n')).string(), 'then');
  const no = await client.if(key('m'), 'Value', '==', 'something else')
    .then(client.put(key('n')).value('then again'))
    .else(client.get(key('n')))
    .commit();
  assert.equal(no.succeeded, false);
  assert.equal(no.responses[0].response_range.kvs[0].value.toString(), 'then');
  assert.equal(await client.get(key('n')).string(), 'then');
}

async function watch() {
  // A watch on the whole prefix (all three shards) and one on a single key.
  const all = await client.watch().prefix(prefix).create();
  const one = await client.watch().key(key('mw')).create();
  const allEvents = collect(all, 'put', 3, 10000, (kv) => `${kv.key}=${kv.value}`);
  const oneEvents = collect(one, 'put', 1, 10000, (kv) => `${kv.key}=${kv.value}`);
  // One key per shard. The shards have revisions of their own: no order across keys is asserted.
  await client.put(key('aw')).value('1');
  await client.put(key('mw')).value('2');
  await client.put(key('zw')).value('3');
  assert.deepEqual((await allEvents).sort(), [`${key('aw')}=1`, `${key('mw')}=2`, `${key('zw')}=3`]);
  assert.deepEqual(await oneEvents, [`${key('mw')}=2`]);
  const deletes = collect(one, 'delete', 1, 10000, (kv) => `${kv.key}`);
  await client.delete().key(key('mw')).exec();
  assert.deepEqual(await deletes, [key('mw')]);
  await all.cancel();
  await one.cancel();
}

async function lease() {
  // TTL 3 s: the client keeps it alive every second. After more than the TTL the key must still
  // be there; after revoke it must be gone.
  const lease = client.lease(3);
  const id = await lease.grant();
  const grantedAt = Date.now();
  assert.match(id, /^[0-9]+$/);
  await lease.put(key('leased')).value('alive');
  const once = await lease.keepaliveOnce();
  assert.equal(String(once.ID), id);
  assert.ok(Number(once.TTL) > 0 && Number(once.TTL) <= 3, `TTL ${once.TTL}`);
  const kept = collect(lease, 'keepaliveSucceeded', 3, 10000, (res) => Number(res.TTL));
  for (const ttl of await kept) assert.ok(ttl > 0 && ttl <= 3, `TTL ${ttl}`);
  const granted = await client.get(key('leased')).exec();
  assert.equal(granted.kvs[0].lease.toString(), id);
  // Past the TTL since the grant: only the keep-alives can have kept the key.
  await new Promise((resolve) => setTimeout(resolve, Math.max(0, grantedAt + 3500 - Date.now())));
  assert.equal(await client.get(key('leased')).string(), 'alive');
  assert.equal(lease.revoked(), false);
  await lease.revoke();
  assert.equal(await client.get(key('leased')).string(), null);
}

async function keepaliveTooOften() {
  // A client misconfigured to ping every 100 ms even without calls: the proxy sends it away with
  // GOAWAY too_many_pings (the test reads that in the proxy's log); grpc-js then doubles its
  // keepalive time and reconnects, so its calls keep working.
  const eager = new Etcd3({
    hosts: `http://${address}`,
    grpcOptions: { 'grpc.keepalive_time_ms': 100, 'grpc.keepalive_permit_without_calls': 1 },
  });
  try {
    assert.equal(await eager.get(key('a')).string(), 'on-shard-0');
    await new Promise((resolve) => setTimeout(resolve, 1000));
    assert.equal(await eager.get(key('z')).string(), 'on-shard-2');
  } finally {
    eager.close();
  }
}

async function main() {
  const steps = { putGetAcrossShards, prefixRangeSpanningShards, txn, watch, lease, keepaliveTooOften };
  for (const [name, step] of Object.entries(steps)) {
    const started = Date.now();
    await step();
    console.log(`${name}: ok (${Date.now() - started} ms)`);
  }
  console.log('node-etcd3 ok');
}

main()
  .then(() => client.close())
  .catch((err) => {
    console.error('FAILED:', err && err.stack ? err.stack : err);
    client.close();
    process.exit(1);
  });

'use strict';
// Named-query load for node-postgres, driven by test/drivers_node_test.go.
//
// CLIENTS pg.Client connections run ITERATIONS rounds each, concurrently,
// of named queries ({name, text, values}): node-postgres sends Parse for a
// name once per connection and afterwards only Bind, so behind a
// transaction-mode pooler every round after the first depends on the proxy
// preparing the statement on whatever backend it picked. Every result is
// checked here against a value computed in JavaScript.
//
// Environment: PG_URL (required), CLIENTS (default 20), ITERATIONS (default
// 50), TIMEOUT_MS (default 120000), REQUIRE_TLS (1: fail a client whose
// connection is not encrypted).
// Output: one JSON line on stdout:
//   {"clients":N,"queries":N,"expectedErrors":N,"failures":["..."]}
// Exit status 0 when there are no failures, 1 otherwise.

const crypto = require('crypto');
const { Client } = require('pg');

const url = process.env.PG_URL;
const clients = parseInt(process.env.CLIENTS || '20', 10);
const iterations = parseInt(process.env.ITERATIONS || '50', 10);
const timeoutMs = parseInt(process.env.TIMEOUT_MS || '120000', 10);

const failures = [];
let queries = 0;
let expectedErrors = 0;

function fail(msg) {
  if (failures.length < 50) failures.push(msg);
}

function check(cond, msg) {
  if (!cond) throw new Error(msg);
}

function md5(s) {
  return crypto.createHash('md5').update(s).digest('hex');
}

// One round of client c: each query is named, so each is prepared once per
// connection and then executed by name.
async function round(client, c, i) {
  const a = c * 1000 + i;
  const b = i % 13;
  let r = await client.query({ name: 'add', text: 'SELECT $1::int + $2::int AS s', values: [a, b] });
  check(r.rows.length === 1 && r.rows[0].s === a + b, `add(${a},${b}) = ${JSON.stringify(r.rows)}`);
  queries++;

  const s1 = `c${c}-i${i}-ünï`;
  r = await client.query({
    name: 'echo',
    text: "SELECT $1::text || '/' || $2::text AS t, length($1::text) AS n",
    values: [s1, String(i)],
  });
  check(r.rows[0].t === `${s1}/${i}` && r.rows[0].n === [...s1].length, `echo = ${JSON.stringify(r.rows)}`);
  queries++;

  const n = 1 + ((c + i) % 25);
  r = await client.query({
    name: 'series',
    text: 'SELECT g, md5(g::text) AS h FROM generate_series(1, $1::int) AS s(g)',
    values: [n],
  });
  check(r.rows.length === n, `series(${n}) returned ${r.rows.length} rows`);
  r.rows.forEach((row, k) => {
    check(row.g === k + 1 && row.h === md5(String(k + 1)), `series row ${k}: ${JSON.stringify(row)}`);
  });
  queries++;

  const base = Date.UTC(2024, 0, 1, 12, 0, 0) + c * 3600 * 1000;
  r = await client.query({
    name: 'epoch',
    text: "SELECT extract(epoch FROM $1::timestamptz + make_interval(hours => $2::int))::bigint::text AS e",
    values: [new Date(base), i % 24],
  });
  const wantEpoch = String((base + (i % 24) * 3600 * 1000) / 1000);
  check(r.rows[0].e === wantEpoch, `epoch = ${r.rows[0].e}, want ${wantEpoch}`);
  queries++;

  const bytes = Buffer.from([c & 0xff, i & 0xff, 0, 255, 92, 120]);
  r = await client.query({
    name: 'bytes',
    text: 'SELECT $1::bytea AS b, length($1::bytea) AS n',
    values: [bytes],
  });
  check(Buffer.isBuffer(r.rows[0].b) && r.rows[0].b.equals(bytes) && r.rows[0].n === bytes.length,
    `bytes = ${JSON.stringify(r.rows)}`);
  queries++;

  if (i % 5 === 2) {
    // A named statement whose execution fails must leave the connection,
    // and the name, usable.
    let err = null;
    try {
      await client.query({ name: 'div', text: 'SELECT 10 / $1::int AS q', values: [0] });
    } catch (e) {
      err = e;
    }
    check(err && err.code === '22012', `div by zero: want 22012, got ${err ? err.code + ' ' + err.message : 'no error'}`);
    expectedErrors++;
    queries++;
    r = await client.query({ name: 'div', text: 'SELECT 10 / $1::int AS q', values: [5] });
    check(r.rows[0].q === 2, `div(5) = ${JSON.stringify(r.rows)}`);
    queries++;
  }

  if (i % 7 === 4) {
    // A transaction stays on one backend between named queries.
    await client.query('BEGIN');
    const p1 = await client.query({ name: 'pid', text: 'SELECT pg_backend_pid() AS p, txid_current()::text AS x' });
    r = await client.query({ name: 'add', text: 'SELECT $1::int + $2::int AS s', values: [a, 1] });
    check(r.rows[0].s === a + 1, `add in tx = ${JSON.stringify(r.rows)}`);
    const p2 = await client.query({ name: 'pid', text: 'SELECT pg_backend_pid() AS p, txid_current()::text AS x' });
    await client.query('COMMIT');
    check(p1.rows[0].p === p2.rows[0].p && p1.rows[0].x === p2.rows[0].x,
      `transaction moved: ${JSON.stringify(p1.rows)} then ${JSON.stringify(p2.rows)}`);
    queries += 3;
  }
}

async function runClient(c) {
  const client = new Client({ connectionString: url, application_name: `node-named-${c}` });
  client.on('error', (e) => fail(`client ${c}: connection error: ${e.message}`));
  try {
    await client.connect();
  } catch (e) {
    fail(`client ${c}: connect: ${e.message}`);
    return;
  }
  // REQUIRE_TLS=1 (the TLS test): the connection must really be encrypted.
  if (process.env.REQUIRE_TLS === '1' && !(client.connection.stream && client.connection.stream.encrypted)) {
    fail(`client ${c}: connected without TLS`);
  }
  let errors = 0;
  try {
    for (let i = 0; i < iterations; i++) {
      try {
        await round(client, c, i);
      } catch (e) {
        fail(`client ${c} round ${i}: ${e.code ? e.code + ' ' : ''}${e.message}`);
        if (++errors >= 3) return;
      }
    }
  } finally {
    await client.end().catch(() => {});
  }
}

// MODE=ddl: DDL between executions of named queries, compared by the Go
// test with the same run against PostgreSQL directly (the steps' outcomes
// must be equal), then unnamed queries of CLIENTS concurrent clients, each
// with its own text and types, each checking every row is its own.
const mode = process.env.MODE || 'load';
const table = process.env.TABLE || 'tx_node_ddl';

function outcome(r) {
  const v = r.rows[0][Object.keys(r.rows[0])[0]];
  return `${JSON.stringify(v)} (${typeof v})`;
}

async function ddlScenario(steps) {
  const mk = async (name) => {
    const c = new Client({ connectionString: url, application_name: `node-ddl-${name}` });
    c.on('error', (e) => fail(`${name}: connection error: ${e.message}`));
    await c.connect();
    return c;
  };
  const step = async (what, f) => {
    try {
      steps.push(`${what}: ${await f()}`);
    } catch (e) {
      steps.push(`${what}: ERROR ${e.code || e.message}`);
    }
    queries++;
  };
  const admin = await mk('admin');
  await admin.query(`DROP TABLE IF EXISTS ${table}; CREATE TABLE ${table} (id int, c int); INSERT INTO ${table} VALUES (1, 10), (2, 20)`);
  const q = { name: 'q', text: `SELECT c FROM ${table} WHERE id = $1`, values: [2] };
  const a = await mk('a');
  const b = await mk('b');
  await step('A runs q', async () => outcome(await a.query(q)));
  await step('B runs q', async () => outcome(await b.query(q)));
  await admin.query(`ALTER TABLE ${table} ALTER COLUMN c TYPE bigint`);
  const n = await mk('new');
  await step('new client runs q', async () => outcome(await n.query(q)));
  await step('A runs q after the ALTER', async () => outcome(await a.query(q)));
  await step('A runs q again', async () => outcome(await a.query(q)));
  await step('A runs q under a new name', async () => outcome(await a.query({ ...q, name: 'q2' })));
  await step('B runs q after the ALTER', async () => outcome(await b.query(q)));
  await admin.query(`DROP TABLE ${table}; CREATE TABLE ${table} (id int, c text); INSERT INTO ${table} VALUES (2, 'twenty')`);
  const n2 = await mk('new2');
  await step('another new client runs q after the table was re-created', async () => outcome(await n2.query(q)));
  await step('new client runs q after the table was re-created', async () => outcome(await n.query(q)));
  await step('new client runs an unnamed query', async () => outcome(await n.query({ text: q.text, values: [2] })));
  for (const c of [a, b, n, n2, admin]) await c.end().catch(() => {});
}

async function unnamedClient(c) {
  const client = new Client({ connectionString: url, application_name: `node-unnamed-${c}` });
  client.on('error', (e) => fail(`client ${c}: connection error: ${e.message}`));
  await client.connect();
  try {
    for (let i = 0; i < iterations; i++) {
      // Text and parameter types differ per client: an execution of
      // another client's unnamed statement shows in the row.
      const text = c % 2 === 0
        ? `SELECT 'client ${c}: ' || $1::text AS s, $2::int + ${c} AS n`
        : `SELECT 'client ${c}: ' || $2::text AS s, $1::bigint + ${c} AS n`;
      const values = c % 2 === 0 ? [String(i), i] : [i, String(i)];
      const r = await client.query({ text, values });
      const n = Number(r.rows[0].n);
      check(r.rows[0].s === `client ${c}: ${i}` && n === i + c, `client ${c} round ${i}: ${JSON.stringify(r.rows)}`);
      queries++;
    }
  } catch (e) {
    fail(`client ${c}: ${e.code ? e.code + ' ' : ''}${e.message}`);
  } finally {
    await client.end().catch(() => {});
  }
}

async function main() {
  if (mode === 'ddl') {
    const steps = [];
    await ddlScenario(steps);
    await Promise.all(Array.from({ length: clients }, (_, c) => unnamedClient(c)));
    console.log(JSON.stringify({ clients, queries, expectedErrors, failures, steps }));
    process.exit(failures.length === 0 ? 0 : 1);
  }
  if (!url) {
    console.log(JSON.stringify({ clients, queries, expectedErrors, failures: ['PG_URL is not set'] }));
    process.exit(1);
  }
  const timer = setTimeout(() => {
    fail(`timed out after ${timeoutMs} ms`);
    console.log(JSON.stringify({ clients, queries, expectedErrors, failures }));
    process.exit(1);
  }, timeoutMs);
  await Promise.all(Array.from({ length: clients }, (_, c) => runClient(c)));
  clearTimeout(timer);
  console.log(JSON.stringify({ clients, queries, expectedErrors, failures }));
  process.exit(failures.length === 0 ? 0 : 1);
}

main().catch((e) => {
  fail(`main: ${e.stack || e}`);
  console.log(JSON.stringify({ clients, queries, expectedErrors, failures }));
  process.exit(1);
});

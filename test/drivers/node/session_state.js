'use strict';
// Session state through node-postgres, driven by test/drivers_node_state_test.go
// (issue 6, points 4-6). It runs the same scenario against PG_URL and prints
// one JSON line of observations; the Go test runs it through the proxy and
// directly and compares the lines. Nothing here depends on which backend
// serves a query, so both runs must print the same.
//
// Environment: PG_URL (required). Exit status 0 unless a query fails
// unexpectedly (then {"error": "..."} is printed).

const { Client } = require('pg');

const url = process.env.PG_URL;
const out = [];
const note = (k, v) => out.push([k, v]);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function connect(app) {
  const c = new Client({ connectionString: url, application_name: app });
  await c.connect();
  return c;
}

async function one(c, sql, values) {
  const r = await c.query(sql, values);
  return r.rows.length ? Object.values(r.rows[0])[0] : null;
}

async function main() {
  const listener = await connect('node-state-listener');
  const sender = await connect('node-state-sender');
  const a = await connect('node-state-a');
  const b = await connect('node-state-b');
  const got = [];
  listener.on('notification', (m) => got.push(m));

  // LISTEN / NOTIFY: channel, payload and the sender's real backend PID.
  await listener.query('LISTEN node_chan; LISTEN "Node Chan"');
  const pids = [];
  pids.push(await one(sender, "SELECT pg_backend_pid() FROM (SELECT pg_notify('node_chan', 'n1')) s"));
  pids.push(await one(sender, "SELECT pg_backend_pid() FROM (SELECT pg_notify('Node Chan', 'n2')) s"));
  await sleep(700);
  note('notifications', got.map((m) => m.channel + '|' + m.payload));
  note('sender pids match', got.map((m, i) => m.processId === pids[i]));
  got.length = 0;
  await listener.query('UNLISTEN node_chan');
  await sender.query("NOTIFY node_chan, 'n3'; NOTIFY \"Node Chan\", 'n4'");
  await sleep(700);
  note('after UNLISTEN', got.map((m) => m.channel + '|' + m.payload));
  await listener.query('UNLISTEN *');

  // A temp table lives across a's transactions and is never b's.
  await a.query('CREATE TEMP TABLE node_tmp (x int)');
  await a.query('INSERT INTO node_tmp VALUES ($1)', [5]);
  for (let i = 0; i < 3; i++) {
    note('a temp sum ' + i, await one(a, 'SELECT sum(x)::int FROM node_tmp'));
    note('b temp ' + i, await one(b, "SELECT to_regclass('pg_temp.node_tmp')::text"));
  }
  await a.query('DROP TABLE node_tmp');

  // A session advisory lock held by a across transactions.
  note('a lock', await one(a, 'SELECT pg_advisory_lock(4711)::text'));
  note('b try while a holds', await one(b, 'SELECT pg_try_advisory_lock(4711)'));
  note('a unlock', await one(a, 'SELECT pg_advisory_unlock(4711)'));
  note('b try after', await one(b, 'SELECT pg_try_advisory_lock(4711)'));
  note('b unlock', await one(b, 'SELECT pg_advisory_unlock(4711)'));

  // SETs the statement alone does not reveal.
  await a.query("SELECT 1; SET work_mem = '7MB'");
  await a.query("SELECT set_config('search_path', 'node_nowhere, public', false)");
  await a.query('BEGIN');
  await a.query("SET work_mem = '9MB'");
  await a.query('SAVEPOINT s');
  await a.query("SET statement_timeout = '8s'");
  await a.query('ROLLBACK TO SAVEPOINT s');
  await a.query('COMMIT');
  await a.query('BEGIN');
  await a.query("SET work_mem = '11MB'");
  await a.query('ROLLBACK');
  for (let i = 0; i < 3; i++) {
    note('a settings ' + i, [await one(a, 'SHOW work_mem'), await one(a, 'SHOW search_path'), await one(a, 'SHOW statement_timeout')]);
    note('b settings ' + i, [await one(b, 'SHOW work_mem'), await one(b, 'SHOW search_path'), await one(b, 'SHOW statement_timeout')]);
  }

  for (const c of [listener, sender, a, b]) await c.end();
  console.log(JSON.stringify(out));
}

main().catch((e) => {
  console.log(JSON.stringify({ error: String(e && e.stack ? e.stack : e) }));
  process.exit(1);
});

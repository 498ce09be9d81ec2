package e2e

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
)

// The pgx workload: queries of several shapes (SQL texts, parameter and
// result types, row counts), a batch with a failing query in the middle and
// a raw pipeline with an error before a Sync, each result checked against a
// value computed here.

// txPgxTripleStmt is a statement every client prepares explicitly by name,
// in every exec mode, and then only ever Binds.
const txPgxTripleStmt = "tx_triple"

// txPgxBaseMinQueries is the least number of checked queries one iteration
// runs (txPgxIteration counts them exactly).
const txPgxBaseMinQueries = 8

// txPgxPrepareExplicit prepares the statements the client later uses by name.
func txPgxPrepareExplicit(ctx context.Context, conn *pgx.Conn) error {
	if _, err := conn.Prepare(ctx, txPgxTripleStmt, "SELECT $1::int4 * 3"); err != nil {
		return fmt.Errorf("prepare %s: %w", txPgxTripleStmt, err)
	}
	return nil
}

// txPgxIteration runs one iteration of client g's workload and returns how
// many queries it checked. Any wrong value or unexpected error is an error.
func txPgxIteration(ctx context.Context, conn *pgx.Conn, g, i int) (int, error) {
	steps := []func(context.Context, *pgx.Conn, int, int) error{
		txPgxInts, txPgxTexts, txPgxTimestamptz, txPgxNumeric, txPgxBytea,
		txPgxManyRows, txPgxOwnStatement, txPgxNull,
	}
	n := 0
	for _, step := range steps {
		if err := step(ctx, conn, g, i); err != nil {
			return n, err
		}
		n++
	}
	if i%7 == 3 {
		if err := txPgxTransaction(ctx, conn, g, i); err != nil {
			return n, err
		}
		n += 3
	}
	if i%10 == 0 {
		if err := txPgxBatchWithError(ctx, conn, g, i); err != nil {
			return n, err
		}
		n += 3
	}
	if i%10 == 5 {
		if err := txPgxPipelineWithError(ctx, conn, g, i); err != nil {
			return n, err
		}
		n += 5
	}
	return n, nil
}

func txPgxInts(ctx context.Context, conn *pgx.Conn, g, i int) error {
	a := int64(g)*1_000_000_007 + int64(i)
	b := int32(i%7 - 3)
	var got int64
	if err := conn.QueryRow(ctx, "SELECT $1::int8 * 2 + $2::int4", a, b).Scan(&got); err != nil {
		return fmt.Errorf("ints: %w", err)
	}
	if want := a*2 + int64(b); got != want {
		return fmt.Errorf("ints: got %d, want %d", got, want)
	}
	return nil
}

func txPgxTexts(ctx context.Context, conn *pgx.Conn, g, i int) error {
	// Non-ASCII text makes a client_encoding mix-up visible.
	s1 := fmt.Sprintf("g%d-i%d-ünïcødé-€", g, i)
	s2 := strconv.Itoa(g * i)
	var cat string
	var length int32
	if err := conn.QueryRow(ctx, "SELECT $1::text || ':' || $2::text, length($1::text)", s1, s2).Scan(&cat, &length); err != nil {
		return fmt.Errorf("texts: %w", err)
	}
	if want := s1 + ":" + s2; cat != want {
		return fmt.Errorf("texts: got %q, want %q", cat, want)
	}
	if want := int32(utf8.RuneCountInString(s1)); length != want {
		return fmt.Errorf("texts: length %d, want %d", length, want)
	}
	return nil
}

func txPgxTimestamptz(ctx context.Context, conn *pgx.Conn, g, i int) error {
	base := time.Date(2024, 1, 1, 12, 0, 0, 123456000, time.UTC).Add(time.Duration(g) * time.Hour)
	hours := int32(i % 30)
	var got time.Time
	if err := conn.QueryRow(ctx, "SELECT $1::timestamptz + make_interval(hours => $2::int4)", base, hours).Scan(&got); err != nil {
		return fmt.Errorf("timestamptz: %w", err)
	}
	if want := base.Add(time.Duration(hours) * time.Hour); !got.Equal(want) {
		return fmt.Errorf("timestamptz: got %v, want %v", got, want)
	}
	return nil
}

func txPgxNumeric(ctx context.Context, conn *pgx.Conn, g, i int) error {
	cents := int64(g)*100_003 + int64(i)*37 + 1
	k := int32(i%9 + 1)
	in := pgtype.Numeric{Int: big.NewInt(cents), Exp: -2, Valid: true}
	var text string
	var num pgtype.Numeric
	if err := conn.QueryRow(ctx, "SELECT ($1::numeric * $2::int4)::text, $1::numeric * $2::int4", in, k).Scan(&text, &num); err != nil {
		return fmt.Errorf("numeric: %w", err)
	}
	product := cents * int64(k)
	if want := fmt.Sprintf("%d.%02d", product/100, product%100); text != want {
		return fmt.Errorf("numeric: text %q, want %q", text, want)
	}
	f, err := num.Float64Value()
	if err != nil {
		return fmt.Errorf("numeric: %w", err)
	}
	if want := float64(product) / 100; math.Abs(f.Float64-want) > 1e-6*math.Max(1, want) {
		return fmt.Errorf("numeric: value %v, want %v", f.Float64, want)
	}
	return nil
}

func txPgxBytea(ctx context.Context, conn *pgx.Conn, g, i int) error {
	p1 := make([]byte, 16+(g+i)%48)
	for j := range p1 {
		p1[j] = byte(g*31 + i*7 + j)
	}
	p2 := []byte{0, 0xff, byte(i), '\\', 'x'}
	var cat []byte
	var sum string
	if err := conn.QueryRow(ctx, "SELECT $1::bytea || $2::bytea, md5($1::bytea)", p1, p2).Scan(&cat, &sum); err != nil {
		return fmt.Errorf("bytea: %w", err)
	}
	if want := append(append([]byte{}, p1...), p2...); !bytes.Equal(cat, want) {
		return fmt.Errorf("bytea: got %x, want %x", cat, want)
	}
	if want := md5.Sum(p1); sum != hex.EncodeToString(want[:]) {
		return fmt.Errorf("bytea: md5 %s, want %x", sum, want)
	}
	return nil
}

func txPgxManyRows(ctx context.Context, conn *pgx.Conn, g, i int) error {
	n := 1 + (g+i)%40
	prefix := fmt.Sprintf("c%d-", g)
	rows, err := conn.Query(ctx, "SELECT s.g, $2::text || s.g::text FROM generate_series(1, $1::int4) AS s(g)", n, prefix)
	if err != nil {
		return fmt.Errorf("rows: %w", err)
	}
	defer rows.Close()
	seen := 0
	for rows.Next() {
		var k int32
		var s string
		if err := rows.Scan(&k, &s); err != nil {
			return fmt.Errorf("rows: scan: %w", err)
		}
		seen++
		if int(k) != seen || s != prefix+strconv.Itoa(seen) {
			return fmt.Errorf("rows: row %d is (%d, %q)", seen, k, s)
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("rows: %w", err)
	}
	if seen != n {
		return fmt.Errorf("rows: got %d rows, want %d", seen, n)
	}
	return nil
}

// txPgxOwnStatement uses a SQL text no other client uses, so the proxy
// holds many distinct statements and backends see different sets.
func txPgxOwnStatement(ctx context.Context, conn *pgx.Conn, g, i int) error {
	sql := fmt.Sprintf("SELECT $1::int4 + %d AS v /* client %d */", g, g)
	var got int32
	if err := conn.QueryRow(ctx, sql, int32(i)).Scan(&got); err != nil {
		return fmt.Errorf("own statement: %w", err)
	}
	if want := int32(i + g); got != want {
		return fmt.Errorf("own statement: got %d, want %d", got, want)
	}
	return nil
}

func txPgxNull(ctx context.Context, conn *pgx.Conn, g, i int) error {
	var in *string
	if i%2 == 1 {
		s := fmt.Sprintf("v%d", g)
		in = &s
	}
	var isNull bool
	var got string
	if err := conn.QueryRow(ctx, "SELECT $1::text IS NULL, coalesce($1::text, 'none')", in).Scan(&isNull, &got); err != nil {
		return fmt.Errorf("null: %w", err)
	}
	want := "none"
	if in != nil {
		want = *in
	}
	if isNull != (in == nil) || got != want {
		return fmt.Errorf("null: got (%v, %q), want (%v, %q)", isNull, got, in == nil, want)
	}
	return nil
}

// txPgxTransaction checks that an explicit transaction stays on one backend
// and in one transaction while other clients come and go.
func txPgxTransaction(ctx context.Context, conn *pgx.Conn, g, i int) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("tx: begin: %w", err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	var xid1, xid2 int64
	var pid1, pid2 int32
	if err := tx.QueryRow(ctx, "SELECT txid_current(), pg_backend_pid()").Scan(&xid1, &pid1); err != nil {
		return fmt.Errorf("tx: first: %w", err)
	}
	var sum int32
	if err := tx.QueryRow(ctx, "SELECT $1::int4 + $2::int4", int32(g), int32(i)).Scan(&sum); err != nil {
		return fmt.Errorf("tx: middle: %w", err)
	}
	if sum != int32(g+i) {
		return fmt.Errorf("tx: middle: got %d, want %d", sum, g+i)
	}
	if err := tx.QueryRow(ctx, "SELECT txid_current(), pg_backend_pid()").Scan(&xid2, &pid2); err != nil {
		return fmt.Errorf("tx: last: %w", err)
	}
	if xid1 != xid2 || pid1 != pid2 {
		return fmt.Errorf("tx: one transaction saw txid %d then %d, backend %d then %d", xid1, xid2, pid1, pid2)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("tx: commit: %w", err)
	}
	return nil
}

// txPgxBatchWithError sends a pgx Batch (one pipeline, one Sync) whose
// second query fails: the first result must be right, the second must be
// the division error, the third is skipped by the server and must be an
// error too, and the connection must work afterwards.
func txPgxBatchWithError(ctx context.Context, conn *pgx.Conn, g, i int) error {
	b := &pgx.Batch{}
	x := int32(g*1000 + i)
	b.Queue("SELECT $1::int4 + 1", x)
	b.Queue("SELECT 10 / $1::int4", int32(0))
	b.Queue("SELECT $1::text || '-after'", "batch")
	br := conn.SendBatch(ctx, b)
	var first int32
	if err := br.QueryRow().Scan(&first); err != nil {
		_ = br.Close()
		return fmt.Errorf("batch: first: %w", err)
	}
	if first != x+1 {
		_ = br.Close()
		return fmt.Errorf("batch: first: got %d, want %d", first, x+1)
	}
	var q int32
	err := br.QueryRow().Scan(&q)
	if code := sqlState(err); code != "22012" {
		_ = br.Close()
		return fmt.Errorf("batch: second: want division_by_zero (22012), got value %d err %v", q, err)
	}
	var third string
	if err := br.QueryRow().Scan(&third); err == nil {
		_ = br.Close()
		return fmt.Errorf("batch: third ran after an error in the same pipeline and returned %q", third)
	}
	if err := br.Close(); sqlState(err) != "22012" {
		return fmt.Errorf("batch: close: want the batch's division_by_zero, got %v", err)
	}
	var after int32
	if err := conn.QueryRow(ctx, "SELECT $1::int4 * 2", x).Scan(&after); err != nil {
		return fmt.Errorf("batch: query after the batch: %w", err)
	}
	if after != 2*x {
		return fmt.Errorf("batch: query after the batch: got %d, want %d", after, 2*x)
	}
	return nil
}

// txPgxPipelineWithError sends, in one flush, four Sync-delimited
// segments using a statement this client prepared by name, possibly on
// another backend, so the proxy may have to prepare it on this one first:
//
//	[failing query, named Bind (skipped)] Sync   the first use follows an error
//	[named Bind] Sync
//	[named Bind, failing query, named Bind (skipped)] Sync
//	[named Bind] Sync
//
// Inside a failed segment the server skips everything up to the Sync,
// including anything the proxy added there, and the proxy's accounting must
// still line up for the segments after it.
func txPgxPipelineWithError(ctx context.Context, conn *pgx.Conn, g, i int) error {
	x := func(k int) int { return g*100 + i + k }
	param := func(v int) [][]byte { return [][]byte{[]byte(strconv.Itoa(v))} }
	const failing = "SELECT 10 / $1::int4"

	pipe := conn.PgConn().StartPipeline(ctx)
	pipe.SendQueryParams(failing, param(0), nil, nil, nil)
	pipe.SendQueryPrepared(txPgxTripleStmt, param(x(1)), nil, nil)
	pipe.SendPipelineSync()
	pipe.SendQueryPrepared(txPgxTripleStmt, param(x(2)), nil, nil)
	pipe.SendPipelineSync()
	pipe.SendQueryPrepared(txPgxTripleStmt, param(x(3)), nil, nil)
	pipe.SendQueryParams(failing, param(0), nil, nil, nil)
	pipe.SendQueryPrepared(txPgxTripleStmt, param(x(4)), nil, nil)
	pipe.SendPipelineSync()
	pipe.SendQueryPrepared(txPgxTripleStmt, param(x(5)), nil, nil)
	pipe.SendPipelineSync()
	if err := pipe.Flush(); err != nil {
		_ = pipe.Close()
		return fmt.Errorf("pipeline: flush: %w", err)
	}

	expect := func(what string, want int) error {
		res, err := pipe.GetResults()
		if err != nil {
			return fmt.Errorf("pipeline: %s: %w", what, err)
		}
		rr, ok := res.(*pgconn.ResultReader)
		if !ok {
			return fmt.Errorf("pipeline: %s: got %T, want a result", what, res)
		}
		r := rr.Read()
		if r.Err != nil {
			return fmt.Errorf("pipeline: %s: %w", what, r.Err)
		}
		if len(r.Rows) != 1 || string(r.Rows[0][0]) != strconv.Itoa(want) {
			return fmt.Errorf("pipeline: %s: got %q, want %d", what, r.Rows, want)
		}
		return nil
	}
	expectSync := func(what string) error {
		res, err := pipe.GetResults()
		if err != nil {
			return fmt.Errorf("pipeline: %s: %w", what, err)
		}
		if _, ok := res.(*pgconn.PipelineSync); !ok {
			return fmt.Errorf("pipeline: %s: got %T, want the Sync", what, res)
		}
		return nil
	}

	expectError := func(what string) error {
		if _, err := pipe.GetResults(); sqlState(err) != "22012" {
			return fmt.Errorf("pipeline: %s: want division_by_zero (22012), got %v", what, err)
		}
		return nil
	}
	err := func() error {
		steps := []func() error{
			func() error { return expectError("segment 1, failing query") },
			func() error { return expectSync("end of segment 1") },
			func() error { return expect("segment 2", 3*x(2)) },
			func() error { return expectSync("end of segment 2") },
			func() error { return expect("segment 3, first query", 3*x(3)) },
			func() error { return expectError("segment 3, failing query") },
			func() error { return expectSync("end of segment 3") },
			func() error { return expect("segment 4", 3*x(5)) },
			func() error { return expectSync("end of segment 4") },
		}
		for _, step := range steps {
			if err := step(); err != nil {
				return err
			}
		}
		res, err := pipe.GetResults()
		if res != nil || err != nil {
			return fmt.Errorf("pipeline: trailing result %T %v", res, err)
		}
		return nil
	}()
	if closeErr := pipe.Close(); err == nil && closeErr != nil {
		err = fmt.Errorf("pipeline: close: %w", closeErr)
	}
	return err
}

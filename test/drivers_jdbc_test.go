package e2e

import (
	"context"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	// txJDBCJar is where Debian's libpostgresql-jdbc-java puts the driver.
	txJDBCJar     = "/usr/share/java/postgresql.jar"
	txJDBCSource  = "drivers/java/JdbcNamedStatements.java"
	txJDBCThreads = 12
	txJDBCPool    = 3
	// txJDBCIterations is well past the default prepareThreshold (5), so
	// every statement ends up server-prepared under a name.
	txJDBCIterations = 100
	txJDBCTimeout    = 3 * time.Minute
	txJDBCInstall    = "apt-get install -y default-jdk-headless libpostgresql-jdbc-java"
)

// TestDriverJDBCNamedStatements runs pgjdbc with reused PreparedStatements
// (prepareThreshold=1 on half the threads, the default 5 on the other half)
// from 12 threads, each with its own Connection, over a transaction-mode
// pool of 3, including executeBatch (one pipeline of Bind/Execute and a
// single Sync), one of them failing on a duplicate key. The Java source is compiled with javac into a temporary
// directory at test time.
func TestDriverJDBCNamedStatements(t *testing.T) {
	javac := txRequireTool(t, "javac", txJDBCInstall)
	java := txRequireTool(t, "java", txJDBCInstall)
	if _, err := os.Stat(txJDBCJar); err != nil {
		t.Fatalf("the PostgreSQL JDBC driver is not installed (%v): install it with %q (.ci/run does this)", err, txJDBCInstall)
	}
	classes := t.TempDir()
	src, err := filepath.Abs(txJDBCSource)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, javac, "-d", classes, "-cp", txJDBCJar, src).CombinedOutput(); err != nil {
		t.Fatalf("javac %s: %v\n%s", src, err, out)
	}

	// The batch steps insert into this table; each (thread, round) is its own key range.
	admin := txConnect(ctx, t, txDirectURL(), nil)
	txMustExec(ctx, t, admin, "DROP TABLE IF EXISTS tx_jdbc_batch; CREATE TABLE tx_jdbc_batch (thread int, round int, k int, PRIMARY KEY (thread, round, k))")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _ = admin.Exec(ctx, "DROP TABLE IF EXISTS tx_jdbc_batch").ReadAll()
	})

	p := txStartProxy(t, "transaction", txJDBCPool)
	jdbcURL, user, password := txJDBCURL(t, txProxyURL(p))
	rep := txRunDriver(t, txJDBCTimeout, classes, nil, java,
		"-cp", classes+string(os.PathListSeparator)+txJDBCJar, "JdbcNamedStatements",
		jdbcURL, user, password,
		strconv.Itoa(txJDBCThreads), strconv.Itoa(txJDBCIterations),
		strconv.Itoa(int((txJDBCTimeout - 10*time.Second).Seconds())))

	// Five statements every round, two more on every fifth round (one is
	// the deliberate division by zero), a batch of five inserts and a count
	// on rounds 6 and 8 of every ten (round 8's batch fails on purpose),
	// three in every seventh round's transaction.
	var perThread, deliberate int64
	for i := range txJDBCIterations {
		perThread += 5
		if i%5 == 2 {
			perThread += 2
			deliberate++
		}
		if i%10 == 6 || i%10 == 8 {
			perThread += 6
		}
		if i%10 == 8 {
			deliberate++
		}
		if i%7 == 4 {
			perThread += 3
		}
	}
	txCheckReport(t, "JDBC", rep, txJDBCThreads*perThread, txJDBCThreads*deliberate)
	// Nine statements per thread; all must have gone server-side (named),
	// or this test proved nothing about named statements.
	if want := txJDBCThreads * 9; rep.ServerPrepared != want {
		t.Errorf("JDBC: %d of %d statements were server-prepared", rep.ServerPrepared, want)
	}
}

// TestDriverJDBCDDLAndDescribeExec: pgjdbc's server-prepared statements
// across DDL (ALTER COLUMN TYPE, a re-created table), and unnamed
// statements described in one round trip (getParameterMetaData) and run in
// the next, interleaved between two connections, give the same outcomes
// step by step through a transaction-mode pool of 1 as directly.
func TestDriverJDBCDDLAndDescribeExec(t *testing.T) {
	javac := txRequireTool(t, "javac", txJDBCInstall)
	java := txRequireTool(t, "java", txJDBCInstall)
	if _, err := os.Stat(txJDBCJar); err != nil {
		t.Fatalf("pgjdbc jar %s missing (%v): install it with %q", txJDBCJar, err, txJDBCInstall)
	}
	classes := t.TempDir()
	src, err := filepath.Abs(txJDBCSource)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, javac, "-d", classes, "-cp", txJDBCJar, src).CombinedOutput(); err != nil {
		t.Fatalf("javac: %v\n%s", err, out)
	}
	p := txStartProxy(t, "transaction", 1)
	run := func(pgURL, table string) txDriverReport {
		jdbcURL, user, password := txJDBCURL(t, pgURL)
		return txRunDriver(t, txJDBCTimeout, classes, nil, java,
			"-cp", classes+string(os.PathListSeparator)+txJDBCJar, "JdbcNamedStatements",
			jdbcURL, user, password, "ddl", table)
	}
	direct, proxied := run(txDirectURL(), "tx_jdbc_ddl_direct"), run(txProxyURL(p), "tx_jdbc_ddl_proxy")
	txCompareSteps(t, "JDBC", direct, proxied)
}

// txJDBCURL turns a postgres:// URL into a JDBC URL plus user and password.
func txJDBCURL(t *testing.T, pgURL string) (jdbcURL, user, password string) {
	t.Helper()
	u, err := url.Parse(pgURL)
	if err != nil {
		t.Fatalf("parse %s: %v", pgURL, err)
	}
	password, _ = u.User.Password()
	db := strings.TrimPrefix(u.Path, "/")
	return "jdbc:postgresql://" + u.Host + "/" + db + "?sslmode=disable", u.User.Username(), password
}

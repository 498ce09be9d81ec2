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
// pool of 3. The Java source is compiled with javac into a temporary
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

	p := txStartProxy(t, "transaction", txJDBCPool)
	jdbcURL, user, password := txJDBCURL(t, txProxyURL(p))
	rep := txRunDriver(t, txJDBCTimeout, classes, nil, java,
		"-cp", classes+string(os.PathListSeparator)+txJDBCJar, "JdbcNamedStatements",
		jdbcURL, user, password,
		strconv.Itoa(txJDBCThreads), strconv.Itoa(txJDBCIterations),
		strconv.Itoa(int((txJDBCTimeout - 10*time.Second).Seconds())))

	// Five statements every round, two more on every fifth round (one is
	// the deliberate division by zero), three in every seventh round's
	// transaction.
	var perThread, divRounds int64
	for i := range txJDBCIterations {
		perThread += 5
		if i%5 == 2 {
			perThread += 2
			divRounds++
		}
		if i%7 == 4 {
			perThread += 3
		}
	}
	txCheckReport(t, "JDBC", rep, txJDBCThreads*perThread, txJDBCThreads*divRounds)
	// Seven statements per thread; all must have gone server-side (named),
	// or this test proved nothing about named statements.
	if want := txJDBCThreads * 7; rep.ServerPrepared != want {
		t.Errorf("JDBC: %d of %d statements were server-prepared", rep.ServerPrepared, want)
	}
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

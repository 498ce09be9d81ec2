import java.math.BigDecimal;
import java.security.MessageDigest;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;

import org.postgresql.PGStatement;

/**
 * JDBC load for the pgsidecar end-to-end tests (test/drivers_jdbc_test.go).
 *
 * <p>THREADS threads each open their own Connection and run ITERATIONS rounds
 * of PreparedStatements that are reused across rounds. pgjdbc switches a
 * PreparedStatement to a server-side named statement (S_1, S_2, ...) after
 * prepareThreshold executions and from then on only Binds it; half the
 * threads use prepareThreshold=1, the other half the driver's default (5).
 * Behind a transaction-mode pooler every Bind may land on a backend that never
 * saw the Parse. Rounds 6 and 8 of every ten also run executeBatch on an
 * INSERT into tx_jdbc_batch (which the Go test creates): all Binds and
 * Executes of a batch go out with one Sync, and round 8's batch fails on a
 * duplicate key. Every result is checked against a value computed here.
 *
 * <p>Usage: java JdbcNamedStatements JDBC_URL USER PASSWORD THREADS ITERATIONS
 * TIMEOUT_SECONDS, or JDBC_URL USER PASSWORD ddl TABLE for the DDL and
 * describe-then-execute scenario (see runDdl). Output: one JSON line on stdout with threads, queries,
 * expectedErrors, serverPrepared (statements that were server-prepared when
 * their thread finished) and failures. Exit status 0 when there are no
 * failures.
 */
public final class JdbcNamedStatements {
    private static final List<String> failures = new ArrayList<>();
    private static final AtomicLong queries = new AtomicLong();
    private static final AtomicLong expectedErrors = new AtomicLong();
    private static final AtomicInteger serverPrepared = new AtomicInteger();

    private JdbcNamedStatements() {}

    private static void fail(String msg) {
        synchronized (failures) {
            if (failures.size() < 50) {
                failures.add(msg);
            }
        }
    }

    private static void check(boolean cond, String msg) {
        if (!cond) {
            throw new IllegalStateException(msg);
        }
    }

    private static String md5(String s) throws Exception {
        byte[] d = MessageDigest.getInstance("MD5").digest(s.getBytes("UTF-8"));
        StringBuilder sb = new StringBuilder();
        for (byte b : d) {
            sb.append(String.format("%02x", b));
        }
        return sb.toString();
    }

    private static String quote(String s) {
        StringBuilder sb = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') {
                sb.append('\\').append(c);
            } else if (c < 0x20) {
                sb.append(String.format("\\u%04x", (int) c));
            } else {
                sb.append(c);
            }
        }
        return sb.append('"').toString();
    }

    /** The statements one thread reuses for all of its rounds. */
    private static final class Statements implements AutoCloseable {
        final PreparedStatement add;
        final PreparedStatement text;
        final PreparedStatement series;
        final PreparedStatement ts;
        final PreparedStatement numeric;
        final PreparedStatement div;
        final PreparedStatement pid;
        final PreparedStatement insert;
        final PreparedStatement count;

        Statements(Connection c) throws SQLException {
            add = c.prepareStatement("SELECT ?::int + ?::int");
            text = c.prepareStatement("SELECT ?::text || '/' || ?::text, length(?::text)");
            series = c.prepareStatement("SELECT g, md5(g::text) FROM generate_series(1, ?::int) AS s(g)");
            ts = c.prepareStatement("SELECT ?::timestamptz + make_interval(hours => ?::int)");
            numeric = c.prepareStatement("SELECT ?::numeric * ?::int");
            div = c.prepareStatement("SELECT 10 / ?::int");
            pid = c.prepareStatement("SELECT pg_backend_pid(), txid_current()");
            insert = c.prepareStatement("INSERT INTO tx_jdbc_batch (thread, round, k) VALUES (?, ?, ?)");
            count = c.prepareStatement("SELECT count(*) FROM tx_jdbc_batch WHERE thread = ? AND round = ?");
        }

        PreparedStatement[] all() {
            return new PreparedStatement[] {add, text, series, ts, numeric, div, pid, insert, count};
        }

        @Override
        public void close() throws SQLException {
            for (PreparedStatement ps : all()) {
                ps.close();
            }
        }
    }

    private static void round(Connection conn, Statements st, int t, int i) throws Exception {
        int a = t * 1000 + i;
        int b = i % 13;
        st.add.setInt(1, a);
        st.add.setInt(2, b);
        try (ResultSet rs = st.add.executeQuery()) {
            check(rs.next() && rs.getInt(1) == a + b && !rs.next(), "add(" + a + "," + b + ")");
        }
        queries.incrementAndGet();

        String s1 = "t" + t + "-i" + i + "-ünï";
        st.text.setString(1, s1);
        st.text.setString(2, Integer.toString(i));
        st.text.setString(3, s1);
        try (ResultSet rs = st.text.executeQuery()) {
            check(rs.next(), "text: no row");
            check(rs.getString(1).equals(s1 + "/" + i), "text: got " + rs.getString(1));
            check(rs.getInt(2) == s1.codePointCount(0, s1.length()), "text: length " + rs.getInt(2));
        }
        queries.incrementAndGet();

        int n = 1 + (t + i) % 25;
        st.series.setInt(1, n);
        try (ResultSet rs = st.series.executeQuery()) {
            int k = 0;
            while (rs.next()) {
                k++;
                check(rs.getInt(1) == k && rs.getString(2).equals(md5(Integer.toString(k))),
                    "series row " + k + ": " + rs.getInt(1) + " " + rs.getString(2));
            }
            check(k == n, "series(" + n + ") returned " + k + " rows");
        }
        queries.incrementAndGet();

        OffsetDateTime base = OffsetDateTime.of(2024, 1, 1, 12, 0, 0, 0, ZoneOffset.UTC).plusHours(t);
        st.ts.setObject(1, base);
        st.ts.setInt(2, i % 24);
        try (ResultSet rs = st.ts.executeQuery()) {
            check(rs.next(), "ts: no row");
            OffsetDateTime got = rs.getObject(1, OffsetDateTime.class);
            OffsetDateTime want = base.plusHours(i % 24);
            check(got.toInstant().equals(want.toInstant()), "ts: got " + got + ", want " + want);
        }
        queries.incrementAndGet();

        BigDecimal dec = new BigDecimal(a).movePointLeft(2).add(new BigDecimal("0.07"));
        int k = i % 9 + 1;
        st.numeric.setBigDecimal(1, dec);
        st.numeric.setInt(2, k);
        try (ResultSet rs = st.numeric.executeQuery()) {
            check(rs.next(), "numeric: no row");
            BigDecimal want = dec.multiply(BigDecimal.valueOf(k));
            check(rs.getBigDecimal(1).compareTo(want) == 0, "numeric: got " + rs.getBigDecimal(1) + ", want " + want);
        }
        queries.incrementAndGet();

        if (i % 5 == 2) {
            // A server-prepared statement whose execution fails must leave the
            // connection and the statement usable.
            st.div.setInt(1, 0);
            String state = null;
            try {
                st.div.executeQuery().close();
                state = "no error";
            } catch (SQLException e) {
                state = e.getSQLState();
            }
            check("22012".equals(state), "div by zero: want 22012, got " + state);
            expectedErrors.incrementAndGet();
            queries.incrementAndGet();
            st.div.setInt(1, 5);
            try (ResultSet rs = st.div.executeQuery()) {
                check(rs.next() && rs.getInt(1) == 2, "div(5)");
            }
            queries.incrementAndGet();
        }

        if (i % 10 == 6) {
            batch(st, t, i, false);
        }
        if (i % 10 == 8) {
            batch(st, t, i, true);
        }

        if (i % 7 == 4) {
            // A transaction stays on one backend between statements.
            conn.setAutoCommit(false);
            long pid1;
            long xid1;
            try (ResultSet rs = st.pid.executeQuery()) {
                check(rs.next(), "pid: no row");
                pid1 = rs.getLong(1);
                xid1 = rs.getLong(2);
            }
            st.add.setInt(1, a);
            st.add.setInt(2, 1);
            try (ResultSet rs = st.add.executeQuery()) {
                check(rs.next() && rs.getInt(1) == a + 1, "add in tx");
            }
            try (ResultSet rs = st.pid.executeQuery()) {
                check(rs.next(), "pid: no row");
                check(rs.getLong(1) == pid1 && rs.getLong(2) == xid1,
                    "transaction moved: backend " + pid1 + " then " + rs.getLong(1) + ", txid " + xid1 + " then " + rs.getLong(2));
            }
            conn.commit();
            conn.setAutoCommit(true);
            queries.addAndGet(3);
        }
    }

    /** Rows of (thread t, round i) in tx_jdbc_batch. */
    private static int countRows(Statements st, int t, int i) throws SQLException {
        st.count.setInt(1, t);
        st.count.setInt(2, i);
        try (ResultSet rs = st.count.executeQuery()) {
            check(rs.next(), "count: no row");
            return rs.getInt(1);
        }
    }

    /**
     * executeBatch sends every Bind/Execute of the batch and one Sync: a
     * pipeline of a server-prepared statement. A batch whose third row
     * violates the primary key fails as a whole (one implicit transaction),
     * and the connection carries on.
     */
    private static void batch(Statements st, int t, int i, boolean failing) throws Exception {
        for (int k = 0; k < 5; k++) {
            st.insert.setInt(1, t);
            st.insert.setInt(2, i);
            st.insert.setInt(3, (failing && k == 3) ? 1 : k);
            st.insert.addBatch();
        }
        if (!failing) {
            int[] counts = st.insert.executeBatch();
            check(counts.length == 5, "batch: " + counts.length + " update counts");
            for (int c : counts) {
                check(c == 1, "batch: update count " + c);
            }
            check(countRows(st, t, i) == 5, "batch: rows after the batch: " + countRows(st, t, i));
            queries.addAndGet(6);
            return;
        }
        String state = "no error";
        try {
            st.insert.executeBatch();
        } catch (java.sql.BatchUpdateException e) {
            SQLException next = e.getNextException();
            state = (next != null) ? next.getSQLState() : e.getSQLState();
        }
        check("23505".equals(state), "failing batch: want 23505, got " + state);
        check(countRows(st, t, i) == 0, "failing batch: rows left behind: " + countRows(st, t, i));
        expectedErrors.incrementAndGet();
        queries.addAndGet(6);
    }

    private static void runThread(String url, String user, String password, int t, int iterations) {
        String threshold = (t % 2 == 0) ? "&prepareThreshold=1" : "";
        String full = url + (url.contains("?") ? "&" : "?") + "ApplicationName=jdbc-" + t + threshold;
        java.util.Properties props = new java.util.Properties();
        props.setProperty("user", user);
        props.setProperty("password", password);
        try (Connection conn = DriverManager.getConnection(full, props); Statements st = new Statements(conn)) {
            int errors = 0;
            for (int i = 0; i < iterations; i++) {
                try {
                    round(conn, st, t, i);
                } catch (Exception e) {
                    String state = (e instanceof SQLException) ? ((SQLException) e).getSQLState() + " " : "";
                    fail("thread " + t + " round " + i + ": " + state + e);
                    if (++errors >= 3) {
                        return;
                    }
                    if (!conn.getAutoCommit()) {
                        conn.rollback();
                        conn.setAutoCommit(true);
                    }
                }
            }
            for (PreparedStatement ps : st.all()) {
                if (ps.unwrap(PGStatement.class).isUseServerPrepare()) {
                    serverPrepared.incrementAndGet();
                }
            }
        } catch (Exception e) {
            fail("thread " + t + ": " + e);
        }
    }

    private static String json(int threads) {
        StringBuilder sb = new StringBuilder();
        sb.append("{\"threads\":").append(threads)
            .append(",\"queries\":").append(queries.get())
            .append(",\"expectedErrors\":").append(expectedErrors.get())
            .append(",\"serverPrepared\":").append(serverPrepared.get())
            .append(",\"failures\":[");
        synchronized (failures) {
            for (int k = 0; k < failures.size(); k++) {
                if (k > 0) {
                    sb.append(',');
                }
                sb.append(quote(failures.get(k)));
            }
        }
        return sb.append("]}").toString();
    }

    private static final List<String> steps = new ArrayList<>();

    /** Runs one step of the DDL scenario and records its outcome. */
    private interface Step {
        String run() throws Exception;
    }

    private static void step(String what, Step f) {
        String res;
        try {
            res = f.run();
        } catch (SQLException e) {
            res = "ERROR " + e.getSQLState();
        } catch (Exception e) {
            res = "ERROR " + e;
        }
        steps.add(what + ": " + res);
        queries.incrementAndGet();
    }

    private static String value(PreparedStatement ps) throws SQLException {
        try (ResultSet rs = ps.executeQuery()) {
            check2(rs.next());
            Object v = rs.getObject(1);
            return v + " (" + (v == null ? "null" : v.getClass().getSimpleName()) + ")";
        }
    }

    private static void check2(boolean ok) throws SQLException {
        if (!ok) {
            throw new SQLException("no row", "NOROW");
        }
    }

    /**
     * MODE ddl: server-prepared statements (prepareThreshold=1) across DDL,
     * and describe-then-execute of unnamed statements (getParameterMetaData,
     * which parses and describes in a round trip of its own, then the
     * execution) interleaved between two connections. The Go test compares
     * the steps' outcomes with the same run against PostgreSQL directly.
     */
    private static void runDdl(String url, String user, String password, String table) throws Exception {
        java.util.Properties named = new java.util.Properties();
        named.setProperty("user", user);
        named.setProperty("password", password);
        named.setProperty("prepareThreshold", "1");
        try (Connection admin = DriverManager.getConnection(url, named);
             Connection a = DriverManager.getConnection(url, named);
             Connection b = DriverManager.getConnection(url, named)) {
            admin.createStatement().execute("DROP TABLE IF EXISTS " + table + "; CREATE TABLE " + table
                + " (id int, c int); INSERT INTO " + table + " VALUES (1, 10), (2, 20)");
            String sql = "SELECT c FROM " + table + " WHERE id = ?";
            PreparedStatement pa = a.prepareStatement(sql);
            PreparedStatement pb = b.prepareStatement(sql);
            pa.setInt(1, 2);
            pb.setInt(1, 2);
            step("A runs", () -> value(pa));
            step("B runs", () -> value(pb));
            step("A runs again", () -> value(pa));
            admin.createStatement().execute("ALTER TABLE " + table + " ALTER COLUMN c TYPE bigint");
            try (Connection n = DriverManager.getConnection(url, named)) {
                PreparedStatement pn = n.prepareStatement(sql);
                pn.setInt(1, 2);
                step("new connection runs", () -> value(pn));
                step("A runs after the ALTER", () -> value(pa));
                step("A runs again", () -> value(pa));
                step("B runs after the ALTER", () -> value(pb));
                admin.createStatement().execute("DROP TABLE " + table + "; CREATE TABLE " + table
                    + " (id int, c text); INSERT INTO " + table + " VALUES (2, 'twenty')");
                step("new connection runs after the table was re-created", () -> value(pn));
                step("new connection runs it again", () -> value(pn));
                step("A runs a new statement", () -> {
                    PreparedStatement p2 = a.prepareStatement(sql);
                    p2.setInt(1, 2);
                    return value(p2);
                });
            }
            // Unnamed statements, described in one round trip and run in the
            // next, interleaved between two connections.
            java.util.Properties unnamed = new java.util.Properties();
            unnamed.setProperty("user", user);
            unnamed.setProperty("password", password);
            unnamed.setProperty("prepareThreshold", "0");
            try (Connection x = DriverManager.getConnection(url, unnamed);
                 Connection y = DriverManager.getConnection(url, unnamed)) {
                PreparedStatement px = x.prepareStatement("SELECT 'x private: ' || ?::text");
                PreparedStatement py = y.prepareStatement("SELECT 'y private: ' || (?::int + 1)");
                step("x describes", () -> px.getParameterMetaData().getParameterTypeName(1));
                step("y describes", () -> py.getParameterMetaData().getParameterTypeName(1));
                px.setString(1, "40");
                py.setInt(1, 40);
                step("x runs", () -> value(px));
                step("y runs", () -> value(py));
            }
        }
    }

    public static void main(String[] args) throws Exception {
        if (args.length == 5 && args[3].equals("ddl")) {
            runDdl(args[0], args[1], args[2], args[4]);
            StringBuilder sb = new StringBuilder(json(0));
            sb.setLength(sb.length() - 1);
            sb.append(",\"steps\":[");
            for (int k = 0; k < steps.size(); k++) {
                if (k > 0) {
                    sb.append(',');
                }
                sb.append(quote(steps.get(k)));
            }
            System.out.println(sb.append("]}"));
            System.exit(0);
        }
        if (args.length != 6) {
            System.err.println("usage: JdbcNamedStatements JDBC_URL USER PASSWORD THREADS ITERATIONS TIMEOUT_SECONDS"
                + "\n   or: JdbcNamedStatements JDBC_URL USER PASSWORD ddl TABLE");
            System.exit(2);
        }
        String url = args[0];
        String user = args[1];
        String password = args[2];
        int threads = Integer.parseInt(args[3]);
        int iterations = Integer.parseInt(args[4]);
        long timeoutSeconds = Long.parseLong(args[5]);

        List<Thread> workers = new ArrayList<>();
        for (int t = 0; t < threads; t++) {
            final int id = t;
            Thread w = new Thread(() -> runThread(url, user, password, id, iterations), "jdbc-" + t);
            w.setDaemon(true); // a hung worker must not keep the JVM alive past the timeout
            workers.add(w);
            w.start();
        }
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(timeoutSeconds);
        for (Thread w : workers) {
            long left = TimeUnit.NANOSECONDS.toMillis(deadline - System.nanoTime());
            if (left > 0) {
                w.join(left);
            }
            if (w.isAlive()) {
                fail("timed out after " + timeoutSeconds + "s with " + w.getName() + " still running");
                break;
            }
        }
        System.out.println(json(threads));
        boolean ok;
        synchronized (failures) {
            ok = failures.isEmpty();
        }
        System.exit(ok ? 0 : 1);
    }
}

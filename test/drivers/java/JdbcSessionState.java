// Session state through pgjdbc, driven by test/drivers_jdbc_state_test.go
// (issue 6, points 4-6). It runs one scenario against the given URL and
// prints one line of observations; the Go test runs it through the proxy
// and directly and compares the lines. Nothing printed depends on which
// backend serves a statement.
//
// Arguments: jdbcURL user password.

import java.sql.*;
import java.util.*;
import org.postgresql.PGConnection;
import org.postgresql.PGNotification;

public class JdbcSessionState {
    static List<String> out = new ArrayList<>();

    static String one(Connection c, String sql) throws SQLException {
        try (Statement st = c.createStatement(); ResultSet rs = st.executeQuery(sql)) {
            return rs.next() ? String.valueOf(rs.getString(1)) : "<none>";
        }
    }

    static void exec(Connection c, String sql) throws SQLException {
        try (Statement st = c.createStatement()) {
            st.execute(sql);
        }
    }

    static List<String> notes(Connection c, int waitMs) throws SQLException {
        List<String> got = new ArrayList<>();
        PGNotification[] ns = c.unwrap(PGConnection.class).getNotifications(waitMs);
        if (ns != null) {
            for (PGNotification n : ns) got.add(n.getName() + "|" + n.getParameter());
        }
        return got;
    }

    public static void main(String[] args) throws Exception {
        String url = args[0];
        Properties p = new Properties();
        p.setProperty("user", args[1]);
        p.setProperty("password", args[2]);
        Connection listener = DriverManager.getConnection(url, p);
        Connection sender = DriverManager.getConnection(url, p);
        Connection a = DriverManager.getConnection(url, p);
        Connection b = DriverManager.getConnection(url, p);

        exec(listener, "LISTEN jdbc_chan");
        exec(sender, "NOTIFY jdbc_chan, 'j1'");
        // A PreparedStatement (extended protocol) NOTIFY too.
        try (PreparedStatement ps = sender.prepareStatement("SELECT pg_notify(?, ?)")) {
            ps.setString(1, "jdbc_chan");
            ps.setString(2, "j2");
            ps.executeQuery().close();
        }
        List<String> got = new ArrayList<>();
        for (int i = 0; i < 20 && got.size() < 2; i++) got.addAll(notes(listener, 250));
        out.add("notifications " + got);
        exec(listener, "UNLISTEN jdbc_chan");
        exec(sender, "NOTIFY jdbc_chan, 'j3'");
        out.add("after UNLISTEN " + notes(listener, 500));

        exec(a, "CREATE TEMP TABLE jdbc_tmp (x int)");
        exec(a, "INSERT INTO jdbc_tmp VALUES (3)");
        for (int i = 0; i < 3; i++) {
            out.add("a temp " + one(a, "SELECT sum(x) FROM jdbc_tmp"));
            out.add("b temp " + one(b, "SELECT to_regclass('pg_temp.jdbc_tmp')"));
        }
        exec(a, "DROP TABLE jdbc_tmp");

        one(a, "SELECT pg_advisory_lock(4712)");
        out.add("b try while a holds " + one(b, "SELECT pg_try_advisory_lock(4712)"));
        out.add("a unlock " + one(a, "SELECT pg_advisory_unlock(4712)"));
        out.add("b try after " + one(b, "SELECT pg_try_advisory_lock(4712)"));
        out.add("b unlock " + one(b, "SELECT pg_advisory_unlock(4712)"));

        exec(a, "SELECT set_config('work_mem', '6MB', false)");
        a.setAutoCommit(false);
        exec(a, "SET work_mem = '12MB'");
        exec(a, "SET search_path = jdbc_nowhere, public");
        a.rollback();
        exec(a, "SET statement_timeout = '9s'");
        a.commit();
        a.setAutoCommit(true);
        for (int i = 0; i < 3; i++) {
            out.add("a " + one(a, "SHOW work_mem") + " " + one(a, "SHOW search_path") + " " + one(a, "SHOW statement_timeout"));
            out.add("b " + one(b, "SHOW work_mem") + " " + one(b, "SHOW search_path") + " " + one(b, "SHOW statement_timeout"));
        }
        for (Connection c : new Connection[] {listener, sender, a, b}) c.close();
        System.out.println(String.join("; ", out));
    }
}

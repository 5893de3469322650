import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The dolt part of {@link TownState}: what one database holds, read with the embedded engine
 * (`dolt sql` in .dolt-data/<db>), so the sql-server must be STOPPED.
 *
 * <p>Three dolt runs per database (each costs ~0.1 s of process start): refs and working-set
 * summary; the table list of every branch and of the staged and working sets; then every table's
 * rows. Results of several statements are told apart by marker rows. Rows come in primary-key order
 * (dolt scans by key), so the dumps are deterministic.
 */
final class DoltFacts {
    private static final String MARK = "section_marker";

    private DoltFacts() {}

    static void capture(Path dbDir, Map<String, String> facts) {
        String db = dbDir.getFileName().toString();
        String key = "dolt:" + db + ":";

        Map<String, String> summary = sections(dbDir, List.of(
                "branches", "SELECT name, hash FROM dolt_branches ORDER BY name",
                "tags", "SELECT tag_name, tag_hash FROM dolt_tags ORDER BY tag_name",
                // root hashes: any difference in HEAD, staged or working data changes them
                "roots", "SELECT @@`" + db + "_head` AS head, @@`" + db + "_staged` AS staged, @@`" + db + "_working` AS working",
                "status", "SELECT table_name, staged, status FROM dolt_status ORDER BY table_name, staged"));
        summary.forEach((name, csv) -> facts.put(key + name, csv));

        // Revisions to dump: every branch, plus the staged and working sets of the checked-out branch.
        List<String> revisions = new ArrayList<>();
        for (String line : rows(summary.get("branches"))) revisions.add(line.substring(0, line.indexOf(',')));
        revisions.add("STAGED");
        revisions.add("WORKING");

        List<String> tableQueries = new ArrayList<>();
        for (String rev : revisions) {
            tableQueries.add(rev);
            tableQueries.add(rev.equals("WORKING") ? "SHOW TABLES" : "SHOW TABLES AS OF '" + rev + "'");
        }
        Map<String, String> tables = sections(dbDir, tableQueries);

        List<String> dumps = new ArrayList<>();
        for (String rev : revisions) {
            for (String table : rows(tables.get(rev))) {
                dumps.add(rev + ":" + table);
                dumps.add("SELECT * FROM `" + table + "`" + (rev.equals("WORKING") ? "" : " AS OF '" + rev + "'"));
            }
        }
        if (!dumps.isEmpty()) {
            sections(dbDir, dumps).forEach((name, csv) -> facts.put(key + "rows:" + name, csv));
        }
    }

    /** Runs (name, query) pairs in one dolt process; returns name -> CSV result (header included). */
    private static Map<String, String> sections(Path dbDir, List<String> namesAndQueries) {
        StringBuilder sql = new StringBuilder();
        for (int i = 0; i < namesAndQueries.size(); i += 2) {
            sql.append("SELECT '").append(namesAndQueries.get(i)).append("' AS ").append(MARK).append(";\n");
            sql.append(namesAndQueries.get(i + 1)).append(";\n");
        }
        String out = TestTools.dolt(dbDir, "sql", "-r", "csv", "-q", sql.toString());
        Map<String, String> result = new LinkedHashMap<>();
        String current = null;
        StringBuilder body = new StringBuilder();
        String[] lines = out.split("\n", -1);
        for (int i = 0; i < lines.length; i++) {
            if (lines[i].equals(MARK) && i + 1 < lines.length) {
                if (current != null) result.put(current, body.toString());
                current = lines[++i];
                body.setLength(0);
            } else if (current != null && !lines[i].isEmpty()) {
                body.append(lines[i]).append('\n');
            }
        }
        if (current != null) result.put(current, body.toString());
        return result;
    }

    /** The data lines of a CSV result (the header dropped). */
    private static List<String> rows(String csv) {
        if (csv == null || csv.isEmpty()) return List.of();
        List<String> lines = List.of(csv.split("\n"));
        return lines.subList(1, lines.size());
    }
}

// Dolt: backups of the town's databases through the dolt CLI (part of R2Common, included with //SOURCES).
//   DoltHome     the dolt config this tool's dolt commands run with: an identity of their own, so a
//                restore on a new machine (HOME empty, no `dolt config --global`) works
//   DoltServer   whether the town's sql-server runs, branch heads, backup roots, backup and restore

import java.io.IOException;
import java.nio.file.*;
import java.time.Duration;
import java.time.Instant;
import java.util.*;

/**
 * HOME is not on the volume, and gt sets dolt's identity only at `gt install`, which a restored town never
 * runs again: `dolt backup restore` then aborts with "empty committer name". Every dolt command this tool
 * runs gets DOLT_ROOT_PATH pointing at a config of its own instead (in the state dir).
 */
final class DoltHome {
    static final String NAME = "gastown-r2";
    static final String EMAIL = "gastown-r2@localhost";

    private DoltHome() {}

    static void use(Path stateDir) {
        Path home = stateDir.resolve("dolt-home");
        try {
            FileTrees.writeAtomically(home.resolve(".dolt").resolve("config_global.json"), R2Common.toJson(Map.of(
                    "user.name", NAME, "user.email", EMAIL, "metrics.disabled", "true")));
        } catch (IOException e) {
            throw new R2Exception(R2Common.EXIT_FAILED, "cannot write dolt's config into " + home + ": " + e.getMessage(), e);
        }
        Proc.setEnv("DOLT_ROOT_PATH", home.toString());
    }
}

/** Facts about the town's Dolt server and databases, and backup/restore of one database, through the CLI. */
final class DoltServer {
    private DoltServer() {}

    /** True when a dolt sql-server serves .dolt-data (it leaves sql-server.info with its pid there). */
    static boolean running(Path townRoot) {
        Path info = townRoot.resolve(".dolt-data").resolve(".dolt").resolve("sql-server.info");
        try {
            String pid = Files.readString(info).split(":", 2)[0].trim();
            return ProcessHandle.of(Long.parseLong(pid)).map(ProcessHandle::isAlive).orElse(false);
        } catch (IOException | RuntimeException e) {
            return false;
        }
    }

    /** Branch name -> commit hash, through the running server when there is one (the CLI finds it). */
    static Map<String, String> branches(Path dbDir) throws IOException {
        ProcResult r = Proc.check(dbDir, "dolt", "sql", "-r", "json", "-q", "select name, hash from dolt_branches");
        Map<String, String> branches = new TreeMap<>();
        for (var row : R2Common.JSON.readTree(r.stdout()).path("rows"))
            branches.put(row.path("name").asText(), row.path("hash").asText());
        return branches;
    }

    /** The root hash in a file:// backup's manifest ("5:__DOLT__:<lock>:<root>:..."). */
    static String backupRoot(Path backupDir) throws IOException {
        String[] fields = Files.readString(backupDir.resolve("manifest")).trim().split(":");
        if (fields.length < 4) throw new IOException("unexpected dolt backup manifest in " + backupDir);
        return fields[3];
    }

    /**
     * The files a backup consists of: its manifest, and the table files the manifest names
     * ("5:__DOLT__:<lock>:<root>:<gc gen>:<name>:<chunks>:<name>:<chunks>..."; a name may be stored as
     * <name>.darc). Everything else in the directory is left over from earlier syncs into it.
     */
    static List<String> backupFiles(Path backupDir) throws IOException {
        String[] fields = Files.readString(backupDir.resolve("manifest")).trim().split(":");
        if (fields.length < 5 || fields.length % 2 == 0) throw new IOException("unexpected dolt backup manifest in " + backupDir);
        List<String> files = new ArrayList<>(List.of("manifest"));
        for (int i = 5; i + 1 < fields.length; i += 2) {
            String name = Town.requireSafeName(fields[i], "dolt table file");
            if (Files.isRegularFile(backupDir.resolve(name))) files.add(name);
            else if (Files.isRegularFile(backupDir.resolve(name + ".darc"))) files.add(name + ".darc");
            else throw new IOException("the dolt backup in " + backupDir + " lacks table file " + name);
        }
        return files;
    }

    /** Removes what earlier syncs left in a backup directory and its manifest no longer names. */
    static void prune(Path backupDir, List<String> live) throws IOException {
        for (Path p : Town.sortedChildren(backupDir))
            if (Files.isRegularFile(p) && !live.contains(p.getFileName().toString()) && !p.getFileName().toString().equals("LOCK"))
                Files.delete(p);
    }

    /**
     * dolt backup sync-url into a directory that persists between syncs, so dolt writes only the table files
     * it lacks. Retried: a GC running at the same time can fail it ("please try again"); a retry starts the
     * directory afresh, in case the failure left it inconsistent.
     */
    static void backup(Path dbDir, Path backupDir) {
        String url = "file://" + backupDir.toAbsolutePath();
        R2Exception last = null;
        for (int attempt = 1; attempt <= 3; attempt++) {
            ProcResult r = Proc.run(dbDir, Proc.DEFAULT_TIMEOUT, List.of("dolt", "backup", "sync-url", url));
            if (r.ok() && Files.isRegularFile(backupDir.resolve("manifest"))) return;
            last = new R2Exception(R2Common.EXIT_FAILED, "dolt backup sync-url: exit " + r.exitCode() + ": " + r.tail());
            Log.warn("sync: " + dbDir.getFileName() + ": attempt " + attempt + " failed: " + last.getMessage());
            FileTrees.deleteQuietly(backupDir);
        }
        throw last;
    }

    /**
     * Restores a backup as parent/name, then proves it: fsck, constraints, and the branch heads the
     * manifest recorded. The server must be stopped (restore runs before `gt up`).
     */
    static void restore(Path backupDir, Path parent, DatabaseFacts db) throws IOException {
        Instant t = Instant.now();
        if (!Files.isRegularFile(backupDir.resolve("manifest")))
            throw new R2Exception(R2Common.EXIT_FAILED, db.backup() + " holds no dolt backup (no manifest)");
        Files.createDirectories(parent);
        dolt(parent, "dolt backup restore " + db.name(), "backup", "restore", "file://" + backupDir.toAbsolutePath(), db.name());
        Path dbDir = parent.resolve(db.name());
        dolt(dbDir, "dolt fsck " + db.name(), "fsck", "--quiet");
        dolt(dbDir, "constraint check of " + db.name(), "constraints", "verify", "--all", "--output-only");
        Map<String, String> branches = branches(dbDir);
        if (!db.branches().isEmpty() && !branches.equals(db.branches()))
            throw new R2Exception(R2Common.EXIT_FAILED, "database " + db.path() + " restored with branches " + branches
                    + " but the manifest recorded " + db.branches());
        Log.info("restore: dolt " + db.path() + " restored, fsck and constraints clean, " + branches.size()
                + " branches in " + Log.seconds(Duration.between(t, Instant.now())));
    }

    private static void dolt(Path cwd, String what, String... args) {
        List<String> cmd = new ArrayList<>(List.of("dolt"));
        cmd.addAll(List.of(args));
        ProcResult r = Proc.run(cwd, Proc.DEFAULT_TIMEOUT, cmd);
        if (!r.ok()) throw new R2Exception(R2Common.EXIT_FAILED, what + " failed: " + r.tail());
    }
}

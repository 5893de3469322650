// Dolt: backups of the town's databases through the dolt CLI (part of R2Common, included with //SOURCES).
//   DoltHome     the dolt config this tool's dolt commands run with: an identity of their own, so a
//                restore on a new machine (HOME empty, no `dolt config --global`) works
//   DoltServer   whether the town's sql-server runs, a database's state (refs and working sets), backups
//                that skip an unchanged database, and restore

import java.io.IOException;
import java.nio.file.*;
import java.time.Duration;
import java.time.Instant;
import java.util.*;
import java.util.stream.Collectors;

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
        // With metrics disabled dolt still starts a `dolt send-metrics` process after every command, which finds
        // nothing to send: a second dolt start each time, for nothing.
        Proc.setEnv("DOLT_DISABLE_EVENT_FLUSH", "1");
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
        return collect(sql(dbDir, REFS), List.of()).branches();
    }

    /**
     * What a backup of the database holds, less the working set's timestamp that every dolt command rewrites
     * (so the backup's root moves each cycle while nothing changed): branch heads, tags, remote branches,
     * stashes, and the working and staged roots of every branch. Equal states back up to the same data.
     */
    record State(Map<String, String> branches, List<String> lines) {
        /** As recorded beside a backup directory: one line per ref or working set. */
        String text() {
            return String.join("\n", lines);
        }
    }

    // One row per ref; dolt_hashof_db() is the working root's hash, dolt-ignored tables included.
    private static final String REFS = "select 'branch' kind, name, hash from dolt_branches"
            + " union all select 'tag', tag_name, tag_hash from dolt_tags"
            + " union all select 'remote branch', name, hash from dolt_remote_branches"
            + " union all select 'stash', stash_id, hash from dolt_stashes"
            + " union all select 'database', database(), ''"
            + " union all select 'working', active_branch(), dolt_hashof_db()"
            + " union all select 'staged', active_branch(), dolt_hashof_db('STAGED')";
    private static final String WORKING_SETS = "select 'working' kind, active_branch() name, dolt_hashof_db() hash"
            + " union all select 'staged', active_branch(), dolt_hashof_db('STAGED')";

    /** The refs and every branch's working set: a second dolt run when there are branches besides the checked-out one. */
    static State state(Path dbDir) throws IOException {
        return stateFrom(dbDir, sql(dbDir, REFS));
    }

    /** The state of which refs (rows of REFS) are a part, the working sets of other branches read in another dolt run. */
    private static State stateFrom(Path dbDir, List<String[]> refs) throws IOException {
        Set<String> checkedOut = names(refs, "working");
        StringBuilder otherBranches = new StringBuilder();
        for (String database : names(refs, "database"))
            for (String branch : names(refs, "branch"))
                if (!checkedOut.contains(branch))
                    otherBranches.append("use `").append((database + "/" + branch).replace("`", "``")).append("`; ")
                            .append(WORKING_SETS).append(";\n");
        return collect(refs, otherBranches.length() == 0 ? List.of() : sql(dbDir, otherBranches.toString()));
    }

    private static State collect(List<String[]> refs, List<String[]> workingSets) {
        Map<String, String> branches = new TreeMap<>();
        for (String[] row : refs) if (row[0].equals("branch")) branches.put(row[1], row[2]);
        List<String> lines = new ArrayList<>();
        for (String[] row : refs) lines.add(String.join(" ", row));
        for (String[] row : workingSets) lines.add(String.join(" ", row));
        Collections.sort(lines);
        return new State(branches, List.copyOf(lines));
    }

    private static Set<String> names(List<String[]> rows, String kind) {
        Set<String> names = new TreeSet<>();
        for (String[] row : rows) if (row[0].equals(kind)) names.add(row[1]);
        return names;
    }

    /** (kind, name, hash) rows of one or more statements (`dolt sql -r json` prints one document per result). */
    private static List<String[]> sql(Path dbDir, String query) throws IOException {
        return rows(dbDir, Proc.check(dbDir, "dolt", "sql", "-r", "json", "-q", query), 0);
    }

    /** The (kind, name, hash) rows dolt sql printed, less its first `skip` documents (a procedure's status). */
    private static List<String[]> rows(Path dbDir, ProcResult r, int skip) throws IOException {
        List<String[]> rows = new ArrayList<>();
        try (var documents = R2Common.JSON.readerFor(com.fasterxml.jackson.databind.JsonNode.class).readValues(r.stdout())) {
            for (int i = 0; i < skip && documents.hasNext(); i++) documents.next();
            while (documents.hasNext())
                for (var row : ((com.fasterxml.jackson.databind.JsonNode) documents.next()).path("rows"))
                    rows.add(new String[] {row.path("kind").asText(), row.path("name").asText(), row.path("hash").asText()});
        } catch (RuntimeException e) {
            throw new IOException("dolt sql in " + dbDir + " printed what is not JSON: " + r.tail(), e);
        }
        return rows;
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
            String name = SafePath.requireName(fields[i], "dolt table file");
            if (Files.isRegularFile(backupDir.resolve(name))) files.add(name);
            else if (Files.isRegularFile(backupDir.resolve(name + ".darc"))) files.add(name + ".darc");
            else throw new IOException("the dolt backup in " + backupDir + " lacks table file " + name);
        }
        return files;
    }

    /** Removes what earlier syncs left in a backup directory and its manifest no longer names. */
    private static void prune(Path backupDir, List<String> live) throws IOException {
        for (Path p : FileTrees.sortedChildren(backupDir))
            if (Files.isRegularFile(p) && !live.contains(p.getFileName().toString()) && !p.getFileName().toString().equals("LOCK"))
                Files.delete(p);
    }

    /** What bringing a database's backup up to date did: the state and files it holds, and whether dolt wrote to it. */
    record Backup(State state, List<String> files, boolean synced) {}

    /**
     * Brings the backup directory of a database up to its state. The directory persists between syncs, so dolt
     * writes only the table files it lacks; the state it was last synced at is kept in syncedAt, and a database
     * still in that state is not synced at all (dolt would add a table file for the new timestamp alone). A
     * state that moved while dolt ran is synced again, so the branch heads recorded are the ones the backup
     * holds; a database that never holds still for three runs is backed up without them.
     */
    static Backup backup(Path dbDir, Path backupDir, Path syncedAt) throws IOException {
        State state = state(dbDir);
        Optional<List<String>> held = filesSyncedAt(backupDir, syncedAt, state);
        if (held.isPresent()) return new Backup(state, held.get(), false);
        Files.deleteIfExists(syncedAt);
        for (int run = 1; run <= 3; run++) {
            State after = syncUrl(dbDir, backupDir);
            if (after.equals(state)) {
                FileTrees.writeAtomically(syncedAt, state.text().getBytes(java.nio.charset.StandardCharsets.UTF_8));
                return new Backup(state, liveFiles(backupDir), true);
            }
            state = after;
        }
        Log.warn("sync: " + dbDir.getFileName() + " changed during each of 3 backups; this one is kept without its "
                + "branch heads, so its restore checks fsck and constraints but not the heads");
        return new Backup(new State(Map.of(), state.lines()), liveFiles(backupDir), true);
    }

    /** The backup's files when the directory holds a whole backup synced at this state. */
    private static Optional<List<String>> filesSyncedAt(Path backupDir, Path syncedAt, State state) {
        try {
            List<String> files = backupFiles(backupDir);
            return Files.readString(syncedAt).equals(state.text()) ? Optional.of(files) : Optional.empty();
        } catch (IOException | R2Exception e) {
            return Optional.empty();
        }
    }

    /** The files the backup's manifest names, once what earlier syncs left beside them is removed. */
    private static List<String> liveFiles(Path backupDir) throws IOException {
        List<String> files = backupFiles(backupDir);
        prune(backupDir, files);
        return files;
    }

    /**
     * dolt backup sync-url into the backup directory, and the state after it: the procedure `dolt backup` calls,
     * followed by the query of the refs in the same dolt run (one dolt start less). Retried after a wait (1 s,
     * then 2 s): a GC running at the same time can fail it ("please try again"), and another dolt process holding
     * the database (another machine's sync of the same volume, `bd`) makes dolt open it read-only until that
     * process is done. A retry starts the directory afresh, in case the failure left it inconsistent.
     */
    private static State syncUrl(Path dbDir, Path backupDir) throws IOException {
        String url = "file://" + backupDir.toAbsolutePath();
        String query = "call dolt_backup('sync-url', '" + url.replace("\\", "\\\\").replace("'", "''") + "'); " + REFS;
        R2Exception last = null;
        for (int attempt = 1; attempt <= 3; attempt++) {
            ProcResult r = Proc.run(dbDir, Proc.DEFAULT_TIMEOUT, List.of("dolt", "sql", "-r", "json", "-q", query));
            if (r.ok() && Files.isRegularFile(backupDir.resolve("manifest"))) return stateFrom(dbDir, rows(dbDir, r, 1));
            last = new R2Exception(R2Common.EXIT_FAILED, "dolt backup sync-url: exit " + r.exitCode() + ": " + r.tail());
            Log.warn("sync: " + dbDir.getFileName() + ": attempt " + attempt + " failed: " + last.getMessage());
            FileTrees.deleteQuietly(backupDir);
            if (attempt < 3) {
                try {
                    Thread.sleep(1000L << (attempt - 1));
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    break;
                }
            }
        }
        throw last;
    }

    /**
     * Restores a backup as parent/name, then proves it: the branch heads the manifest recorded; deep (--verify, the
     * daemon's verification), also `dolt fsck` (every chunk hashed again: the restore already checked every table
     * file's sha256 as it downloaded) and the constraints. The server must be stopped (restore runs before `gt up`).
     */
    static void restore(Path backupDir, Path parent, DatabaseFacts db, boolean deep) throws IOException {
        Instant t = Instant.now();
        if (!Files.isRegularFile(backupDir.resolve("manifest")))
            throw new SnapshotDamaged(db.backup() + " holds no dolt backup (no manifest)");
        Files.createDirectories(parent);
        dolt(parent, "dolt backup restore " + db.name(), "backup", "restore", "file://" + backupDir.toAbsolutePath(), db.name());
        Path dbDir = parent.resolve(db.name());
        if (deep) {
            dolt(dbDir, "dolt fsck " + db.name(), "fsck", "--quiet");
            dolt(dbDir, "constraint check of " + db.name(), "constraints", "verify", "--all", "--output-only");
        }
        Map<String, String> branches = branches(dbDir);
        if (!db.branches().isEmpty() && !branches.equals(db.branches()))
            throw new SnapshotDamaged("database " + db.path() + " restored with branches " + branches
                    + " but the manifest recorded " + db.branches());
        Log.info("restore: dolt " + db.path() + " restored" + (deep ? ", fsck and constraints clean, " : ", ") + branches.size()
                + " branches as the manifest recorded, in " + Log.seconds(Duration.between(t, Instant.now())));
    }

    private static void dolt(Path cwd, String what, String... args) {
        List<String> cmd = new ArrayList<>(List.of("dolt"));
        cmd.addAll(List.of(args));
        ProcResult r = Proc.run(cwd, Proc.DEFAULT_TIMEOUT, cmd);
        if (!r.ok()) throw new R2Exception(R2Common.EXIT_FAILED, what + " failed: " + r.tail());
    }
}

/**
 * How the town's Dolt databases get into a snapshot: each through `dolt backup` into a directory of the state dir
 * that persists between syncs, then the backup's files (table files named by their content) added to the snapshot.
 */
final class DoltCapture {
    private DoltCapture() {}

    /**
     * Each database through `dolt backup` into a directory that persists between syncs (dolt then writes only
     * the table files it lacks); maps each database's path to its DoltBackup or its failure. The dolt
     * commands of two databases run at once: each is mostly a process starting.
     */
    static Map<String, Object> runDoltBackups(Config config, Town town) throws IOException {
        Map<String, Object> done = new java.util.concurrent.ConcurrentHashMap<>();
        Parallel.run(2, town.databases().stream().<Parallel.Task>map(db -> () -> {
            try {
                done.put(db.path(), doltBackup(config, town, db));
            } catch (IOException | RuntimeException e) {
                done.put(db.path(), e);
            }
        }).collect(Collectors.toList()));
        return done;
    }

    /**
     * The files each database's backup manifest names, or its failure as a problem; table files are named by
     * their content, so one the previous snapshot holds is not read again.
     */
    static void addDatabases(Town town, Snapshot snapshot, Manifest base, Map<String, Object> done) throws IOException {
        boolean serverRunning = DoltServer.running(town.root());
        for (Town.DoltDatabase db : town.databases()) {
            String dir = Keys.doltBackup(db.name(), db.path());
            snapshot.attempt("database " + db.path(), base == null ? List.of() : base.filesUnder(dir),
                    base == null ? null : base.database(db.path()).orElse(null), null, () -> {
                Object result = done.get(db.path());
                if (result instanceof IOException e) throw e;
                if (result instanceof RuntimeException e) throw e;
                DoltBackup backup = (DoltBackup) result;
                long newBytes = 0;
                int newFiles = 0;
                for (String name : backup.files()) {
                    String path = dir + "/" + name;
                    Path local = backup.dir().resolve(name);
                    Optional<FileEntry> before = base == null ? Optional.empty() : base.file(path);
                    if (!name.equals("manifest") && before.isPresent() && before.get().size() == Files.size(local) && snapshot.stored(before.get())) {
                        snapshot.reuse(before.get());
                    } else {
                        FileEntry entry = Sha256.ofFile(local, path);
                        snapshot.add(entry, local);
                        if (!snapshot.stored(entry)) {
                            newBytes += entry.size();
                            newFiles++;
                        }
                    }
                }
                snapshot.databases().add(new DatabaseFacts(db.name(), db.path(), dir, serverRunning, backup.branches(), backup.root()));
                Log.info("sync " + snapshot.timestamp() + ": dolt " + db.path() + ": " + (backup.synced() ? "" : "unchanged since its last backup, ")
                        + newFiles + " new of " + backup.files().size() + " backup files (" + Log.bytes(newBytes) + ") in "
                        + Log.seconds(backup.took()));
            });
        }
    }

    record DoltBackup(Path dir, List<String> files, Map<String, String> branches, String root, boolean synced, Duration took) {}

    /** One database's backup directory brought up to date (`dolt backup sync-url`, skipped when nothing changed). */
    private static DoltBackup doltBackup(Config config, Town town, Town.DoltDatabase db) throws IOException {
        Instant t = Instant.now();
        Path dbDir = town.root().resolve(db.path());
        Path backupDir = config.stateDir().resolve("dolt-backups").resolve(config.townId()).resolve(db.path());
        Path syncedAt = config.stateDir().resolve("dolt-backup-states").resolve(config.townId()).resolve(db.path());
        Files.createDirectories(backupDir.getParent());
        DoltServer.Backup backup = DoltServer.backup(dbDir, backupDir, syncedAt);
        return new DoltBackup(backupDir, backup.files(), backup.state().branches(), DoltServer.backupRoot(backupDir), backup.synced(),
                Duration.between(t, Instant.now()));
    }
}

///usr/bin/env jbang "$0" "$@" ; exit $?
//JAVA 17+
//SOURCES R2Common.java

import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Option;

import java.io.IOException;
import java.net.InetAddress;
import java.nio.channels.FileChannel;
import java.nio.channels.FileLock;
import java.nio.channels.OverlappingFileLockException;
import java.nio.charset.StandardCharsets;
import java.nio.file.*;
import java.time.Duration;
import java.time.Instant;
import java.util.*;
import java.util.concurrent.Callable;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.stream.Collectors;
import java.util.stream.Stream;

@Command(name = "r2-sync", mixinStandardHelpOptions = true, version = R2Common.VERSION, sortOptions = false,
        description = {
                "Backs up a Gas Town to R2: the whole town root but a short skip list (README). Every Dolt "
                        + "database goes up as a `dolt backup`, every git directory's objects and refs as a bundle, "
                        + "and every other path (work trees with their uncommitted work, git config, hooks, index, "
                        + "reflogs, runtime state, empty dirs, symlinks) in config.tar and runtime.tar, as one "
                        + "snapshot under gastown/<town_id>/snapshots/<timestamp>/; then latest.json names it.",
                "GT_TOWN_ROOT must be a town (it holds mayor/town.json): any other directory is refused.",
                "Without --immediate it runs as a daemon: a sync every --interval, the first at start."},
        exitCodeListHeading = "%nExit codes:%n",
        exitCodeList = {
                "0:a snapshot was published",
                "1:the sync failed; latest.json still names the previous snapshot",
                "2:usage or configuration error, or GT_TOWN_ROOT is not a town; nothing was read or written",
                "3:a snapshot was published, but some part of the town could not be backed up "
                        + "(the log, the heartbeat and the manifest's problems list say which)"})
public class R2Sync implements Callable<Integer> {

    @Mixin
    R2Options r2 = new R2Options();

    @Option(names = "--immediate", description = "Run one sync now and exit (the SIGTERM flush).")
    boolean immediate;

    @Option(names = "--interval", defaultValue = "${env:R2_SYNC_INTERVAL:-5m}", converter = DurationConverter.class,
            paramLabel = "DURATION", description = "Time between daemon syncs, e.g. 5m, 30s (env R2_SYNC_INTERVAL, default ${DEFAULT-VALUE}).")
    Duration interval;

    @Option(names = "--lock-file", defaultValue = "${env:R2_SYNC_LOCK:-/tmp/r2-sync.lock}", paramLabel = "FILE",
            description = "Lock that serializes syncs on this machine (env R2_SYNC_LOCK, default ${DEFAULT-VALUE}).")
    Path lockFile;

    @Option(names = "--lock-wait", defaultValue = "${env:R2_SYNC_LOCK_WAIT:-10m}", converter = DurationConverter.class,
            paramLabel = "DURATION", description = "How long to wait for a running sync to finish before giving up "
            + "(env R2_SYNC_LOCK_WAIT, default ${DEFAULT-VALUE}).")
    Duration lockWait;

    @Option(names = "--work-dir", defaultValue = "${env:R2_WORK_DIR:-/tmp/r2-sync-work}", paramLabel = "DIR",
            description = "Where snapshots are built before upload; needs room for one snapshot. Cleaned after "
                    + "every sync (env R2_WORK_DIR, default ${DEFAULT-VALUE}).")
    Path workDir;

    @Option(names = "--keep", defaultValue = "${env:R2_KEEP_SNAPSHOTS:-3}", paramLabel = "N",
            description = "Complete snapshots to keep (env R2_KEEP_SNAPSHOTS, default ${DEFAULT-VALUE}).")
    int keep;

    private Config config;
    private ObjectStore store;
    private Heartbeat heartbeat;
    /** The last published manifest, kept at hand so the next cycle can skip what did not change. */
    private Manifest lastManifest;
    /** Manifest format of each snapshot retention has looked at (a snapshot's format never changes). */
    private final Map<String, Integer> formats = new HashMap<>();

    public static void main(String... args) {
        System.exit(R2Cli.run(new R2Sync(), args));
    }

    @Override
    public Integer call() {
        config = r2.toConfig();
        if (keep < 1) throw R2Options.usage("--keep must be at least 1");
        if (interval.isZero() || interval.isNegative()) throw R2Options.usage("--interval must be positive");
        if (immediate) Town.requireTown(config.townRoot());
        heartbeat = new Heartbeat(config);
        // However the JVM ends (SIGTERM, SIGINT), no dolt or git child outlives it.
        Runtime.getRuntime().addShutdownHook(new Thread(Proc::killAll, "r2-sync-kill-children"));
        try (ObjectStore opened = ObjectStore.open(config)) {
            store = opened;
            return immediate ? syncOnce().exitCode() : runDaemon();
        }
    }

    // ---------------------------------------------------------------------------------------------
    // The daemon: a sync every interval; a failed cycle is reported and retried at the next one.
    // ---------------------------------------------------------------------------------------------

    private int runDaemon() {
        CountDownLatch stop = new CountDownLatch(1);
        CountDownLatch stopped = new CountDownLatch(1);
        Thread loop = Thread.currentThread();
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            // The pointer only ever moves to a fully uploaded snapshot, so ending mid-cycle is safe:
            // the next sync removes what this one leaves.
            Log.info("daemon: stopping");
            Proc.shuttingDown = true;
            stop.countDown();
            loop.interrupt();
            awaitQuietly(stopped, Duration.ofSeconds(10));
        }, "r2-sync-shutdown"));
        Log.info("daemon: syncing " + config.townRoot() + " every " + DurationConverter.format(interval));
        int consecutiveFailures = 0;
        boolean notATownLogged = false;
        try {
            while (stop.getCount() > 0) {
                try {
                    // A first boot may create the town after the daemon starts: look again every cycle.
                    if (!Town.isTown(config.townRoot())) {
                        if (!notATownLogged) Log.error("daemon: " + Town.notATown(config.townRoot()) + " Checking again every "
                                + DurationConverter.format(interval) + ".");
                        notATownLogged = true;
                    } else {
                        if (notATownLogged) Log.info("daemon: " + config.townRoot() + " is a town now; syncing it");
                        notATownLogged = false;
                        syncOnce();
                        if (consecutiveFailures > 0) Log.info("daemon: recovered after " + consecutiveFailures + " failed cycle(s)");
                        consecutiveFailures = 0;
                    }
                } catch (R2Exception e) {
                    if (stop.getCount() == 0) break;
                    consecutiveFailures++;
                    Log.error("daemon: cycle failed (" + consecutiveFailures + " in a row), retrying in "
                            + DurationConverter.format(interval) + ": " + R2Cli.messageChain(e));
                } catch (RuntimeException e) {
                    if (stop.getCount() == 0) break;
                    consecutiveFailures++;
                    Log.error("daemon: cycle failed unexpectedly (" + consecutiveFailures + " in a row): " + R2Cli.messageChain(e));
                }
                try {
                    if (stop.await(interval.toMillis(), TimeUnit.MILLISECONDS)) break;
                } catch (InterruptedException e) {
                    break;
                }
            }
        } finally {
            Log.info("daemon: stopped");
            stopped.countDown();
        }
        return R2Common.EXIT_OK;
    }

    // ---------------------------------------------------------------------------------------------
    // One sync, in the order it runs.
    // ---------------------------------------------------------------------------------------------

    /** Takes the lock, builds, uploads and publishes one snapshot, prunes old ones, and reports. */
    SyncResult syncOnce() {
        Instant start = Instant.now();
        String timestamp = null;
        try (SyncLock lock = SyncLock.acquire(lockFile, lockWait)) {
            Town.requireTown(config.townRoot());
            refuseAfterFailedRestore();
            removeLeftoverWorkDirs();
            DoltHome.use(config.stateDir());
            PointerState previous = readPointer();
            Manifest base = previousManifest(previous);
            Town town = Town.scan(config.townRoot());
            refuseEmptyTownOverBackup(town, base);
            timestamp = claimSnapshot(previous);
            Path work = Files.createDirectories(workDir.resolve("r2-sync-" + timestamp + "-" + ProcessHandle.current().pid()));
            try {
                Snapshot snapshot = new Snapshot(timestamp, work);
                backupDatabases(town, snapshot, base);
                Map<Path, List<WorkTreeFacts>> workTrees = inspectWorkTrees(town, snapshot);
                archiveFiles(town, snapshot);
                bundleRepos(town, workTrees, snapshot, base);
                snapshot.requireSomethingBackedUp();
                Manifest manifest = snapshot.manifest(config.townId(), config.townRoot().toString(), versions());
                Transfer transfer = upload(snapshot, manifest, base);
                movePointer(previous, manifest);
                lastManifest = manifest;
                formats.put(timestamp, Manifest.FORMAT);
                try {
                    applyRetention(timestamp);
                } catch (R2Exception e) {
                    // The snapshot is published; old objects left behind are the next sync's to remove.
                    Log.warn("sync " + timestamp + ": retention failed, the next sync retries it: " + R2Cli.messageChain(e));
                }
                SyncResult result = new SyncResult(timestamp, manifest.problems(), transfer, Duration.between(start, Instant.now()));
                report(result, null);
                recordLastSync(result, null);
                return result;
            } finally {
                FileTrees.delete(work);
            }
        } catch (IOException e) {
            throw fail(timestamp, start, new R2Exception(R2Common.EXIT_FAILED, "sync: " + e, e));
        } catch (R2Exception e) {
            throw fail(timestamp, start, e);
        }
    }

    /** Reports a failed sync, unless the JVM is shutting down: then the cycle is abandoned, not failed. */
    private R2Exception fail(String timestamp, Instant start, R2Exception failure) {
        if (Proc.shuttingDown) {
            Log.info("sync " + timestamp + ": abandoned (shutting down); the next sync removes what it left");
            return failure;
        }
        SyncResult result = new SyncResult(timestamp, List.of(), Transfer.NONE, Duration.between(start, Instant.now()));
        report(result, failure);
        recordLastSync(result, failure);
        return failure;
    }

    /** After a failed restore the town on this volume is empty or stale: backing it up would bury the good snapshots. */
    private void refuseAfterFailedRestore() {
        RestoreState.failure(config).ifPresent(marker -> {
            throw new R2Exception(R2Common.EXIT_FAILED, "sync: the restore on this machine failed (" + marker
                    + "); a sync now would replace the good backups with this incomplete town. Fix the restore "
                    + "(r2-restore --list / --snapshot), or delete " + marker + " to back up the town as it is.");
        });
    }

    /** A town that lost every database and repo since the last snapshot is far likelier a wiped volume than intent. */
    private void refuseEmptyTownOverBackup(Town town, Manifest base) {
        boolean baseHadData = base != null && (!base.databases().isEmpty() || !base.repos().isEmpty());
        if (baseHadData && town.databases().isEmpty() && town.gitDirs().isEmpty())
            throw new R2Exception(R2Common.EXIT_FAILED, "sync: " + config.townRoot() + " holds no database and no git repository, but "
                    + "snapshot " + base.timestamp() + " holds " + base.databases().size() + " databases and " + base.repos().size()
                    + " repos; refusing to publish an empty town over it. Restore it with r2-restore, or remove latest.json "
                    + "by hand if the town was emptied on purpose.");
    }

    /** A sync that died (kill -9, power loss) leaves its work dir; we hold the lock, so none is in use. */
    private void removeLeftoverWorkDirs() throws IOException {
        if (!Files.isDirectory(workDir)) return;
        try (Stream<Path> s = Files.list(workDir)) {
            for (Path p : s.filter(p -> p.getFileName().toString().startsWith("r2-sync-")).collect(Collectors.toList())) {
                Log.info("sync: removing the work dir of an interrupted sync: " + p);
                FileTrees.delete(p);
            }
        }
    }

    private PointerState readPointer() {
        Optional<Versioned> latest = store.get(config.keys().latest());
        if (latest.isEmpty()) return new PointerState(null, null);
        try {
            return new PointerState(R2Common.fromJson(latest.get().data(), Pointer.class, "latest.json"), latest.get().etag());
        } catch (R2Exception e) {
            // A damaged pointer must not stop new backups; the conditional write below still guards it.
            Log.warn("sync: " + e.getMessage() + "; it will be replaced by this snapshot");
            return new PointerState(null, latest.get().etag());
        }
    }

    private Manifest previousManifest(PointerState previous) {
        if (previous.pointer() == null) return null;
        String ts = previous.pointer().timestamp();
        if (lastManifest != null && lastManifest.timestamp().equals(ts)) return lastManifest;
        try {
            Optional<Versioned> json = store.get(config.keys().object(ts, Keys.MANIFEST));
            if (json.isEmpty()) return null;
            int format = Manifest.formatOf(json.get().data());
            formats.put(ts, format);
            if (format != Manifest.FORMAT) {
                Log.info("sync: the previous snapshot " + ts + " is in manifest format " + format + "; this one is written in "
                        + "format " + Manifest.FORMAT + " from scratch, and format " + format + " snapshots are kept until "
                        + keep + " of format " + Manifest.FORMAT + " exist");
                return null;
            }
            return R2Common.fromJson(json.get().data(), Manifest.class, "manifest of " + ts);
        } catch (R2Exception e) {
            formats.putIfAbsent(ts, -1);   // retention keeps what it cannot read
            Log.warn("sync: previous manifest unusable, uploading everything: " + e.getMessage());
            return null;
        }
    }

    /** Picks a timestamp newer than the current one and claims its prefix, so no two writers share it. */
    private String claimSnapshot(PointerState previous) {
        Instant candidate = Instant.now();
        if (previous.pointer() != null) {
            Instant latest = Keys.parse(previous.pointer().timestamp());
            if (!candidate.isAfter(latest.plusSeconds(1))) candidate = latest.plusSeconds(1);
        }
        byte[] claim = R2Common.toJson(Map.of("host", hostname(), "pid", ProcessHandle.current().pid(),
                "started", Instant.now().toString(), "tool", R2Common.VERSION));
        for (int attempt = 0; attempt < 30; attempt++, candidate = candidate.plusSeconds(1)) {
            String timestamp = Keys.format(candidate);
            try {
                store.putIfMatch(config.keys().object(timestamp, Keys.CLAIM), claim, null);
                Log.info("sync " + timestamp + ": started for town " + config.townId());
                return timestamp;
            } catch (PreconditionFailed e) {
                // another writer holds this second; take the next one
            }
        }
        throw new R2Exception(R2Common.EXIT_FAILED, "sync: could not claim a snapshot prefix after 30 tries");
    }

    private void backupDatabases(Town town, Snapshot snapshot, Manifest base) {
        boolean serverRunning = DoltServer.running(town.root());
        for (Town.DoltDatabase db : town.databases()) {
            String path = Keys.doltBackup(db.name(), db.path());
            snapshot.attempt("database " + db.path(), path, base, () -> {
                Instant t = Instant.now();
                Path dbDir = town.root().resolve(db.path());
                Path backupDir = snapshot.dir().resolve("dolt-work").resolve(db.path());
                Files.createDirectories(backupDir.getParent());
                DoltServer.backup(dbDir, backupDir);
                String root = DoltServer.backupRoot(backupDir);
                DatabaseFacts facts = new DatabaseFacts(db.name(), db.path(), path, serverRunning, DoltServer.branches(dbDir), root);
                DatabaseFacts before = base == null ? null : base.database(db.path()).orElse(null);
                if (before != null && root.equals(before.root()) && base.file(path).isPresent()) {
                    snapshot.reuse(base.file(path).get(), base.timestamp());
                    Log.info("sync " + snapshot.timestamp() + ": dolt " + db.path() + " unchanged since " + base.timestamp());
                } else {
                    Path tar = snapshot.dir().resolve(path);
                    Files.createDirectories(tar.getParent());
                    FileEntry entry = Tars.write(backupDir, listFiles(backupDir), tar, path, true);
                    snapshot.add(entry, tar);
                    Log.info("sync " + snapshot.timestamp() + ": dolt " + db.path() + " " + Log.bytes(entry.size()) + " in "
                            + Log.seconds(Duration.between(t, Instant.now())));
                }
                FileTrees.delete(backupDir);
                snapshot.databases().add(facts);
            });
        }
    }

    /**
     * What each work tree holds that no commit does (staged, modified, untracked files), by the git directory
     * its .git leads to. Read just before the files are archived, so the counts describe the archive.
     */
    private Map<Path, List<WorkTreeFacts>> inspectWorkTrees(Town town, Snapshot snapshot) {
        Map<Path, List<WorkTreeFacts>> byRepo = new HashMap<>();
        for (Town.WorkTree wt : town.workTrees()) {
            Path dir = town.root().resolve(wt.path());
            try {
                if (wt.gitDir() == null || !Files.isDirectory(wt.gitDir()))
                    throw new IOException("its .git leads to " + (wt.gitDir() == null ? "nothing readable" : wt.gitDir()) + ", which is missing");
                Path common = commonDir(wt.gitDir());
                byRepo.computeIfAbsent(common, k -> new ArrayList<>()).add(GitRepo.inspect(wt.path(), town.named(wt.gitDir()), dir, List.of()));
            } catch (IOException | R2Exception e) {
                // Its files are archived all the same; only the record of its git state is missing.
                Log.warn("sync " + snapshot.timestamp() + ": work tree " + Town.shown(wt.path()) + ": git state not recorded: " + R2Cli.messageChain(e));
            }
        }
        return byRepo;
    }

    /** A linked worktree's git directory names the repository it belongs to in commondir. */
    private static Path commonDir(Path gitDir) throws IOException {
        Path commondir = gitDir.resolve("commondir");
        if (!Files.isRegularFile(commondir)) return gitDir.toRealPath();
        return gitDir.resolve(Files.readString(commondir).strip()).normalize().toRealPath();
    }

    /** Every path of the town outside the skip list: .runtime/ trees into runtime.tar, all else into config.tar. */
    private void archiveFiles(Town town, Snapshot snapshot) throws IOException {
        Map<Boolean, List<String>> byTar = town.files().stream()
                .collect(Collectors.partitioningBy(p -> ("/" + p + "/").contains("/.runtime/")));
        for (boolean runtime : List.of(false, true)) {
            String path = runtime ? Keys.RUNTIME_TAR : Keys.CONFIG_TAR;
            List<String> paths = byTar.get(runtime);
            // The scan lists every directory, so each tar holds exactly its own paths.
            FileEntry entry = Tars.write(town.root(), paths, town.redacted(), snapshot.dir().resolve(path), path, false, false);
            snapshot.add(entry, snapshot.dir().resolve(path));
            Log.info("sync " + snapshot.timestamp() + ": " + path + " " + paths.size() + " paths, " + Log.bytes(entry.size()));
        }
        if (!town.skipped().isEmpty())
            Log.info("sync " + snapshot.timestamp() + ": left out by the skip list: " + town.skipped().entrySet().stream()
                    .map(e -> e.getValue() + " x " + e.getKey()).collect(Collectors.joining("; ")));
    }

    /** Every git directory's objects and refs as a bundle; one whose fingerprint did not change is copied. */
    private void bundleRepos(Town town, Map<Path, List<WorkTreeFacts>> workTrees, Snapshot snapshot, Manifest base) {
        for (Town.GitDir gitDir : town.gitDirs()) {
            String repoPath = gitDir.path();
            String path = Keys.bundle(repoPath);
            snapshot.attempt("repo " + repoPath, path, base, () -> {
                Instant t = Instant.now();
                Path dir = town.root().resolve(repoPath);
                GitRepo.Refs refs = GitRepo.refs(dir);
                String fingerprint = GitRepo.fingerprint(dir, refs);
                List<WorkTreeFacts> trees = workTrees.getOrDefault(dir.toRealPath(), List.of());
                RepoFacts before = base == null ? null : base.repo(repoPath).orElse(null);
                String file = path;
                if (!hasObjects(dir)) {
                    file = null;
                    Log.info("sync " + snapshot.timestamp() + ": git " + repoPath + " has no objects yet; recorded");
                } else if (before != null && fingerprint.equals(before.fingerprint()) && base.file(path).isPresent()) {
                    snapshot.reuse(base.file(path).get(), base.timestamp());
                    Log.info("sync " + snapshot.timestamp() + ": git " + repoPath + " unchanged since " + base.timestamp());
                } else {
                    FileEntry entry = GitRepo.writeBundle(dir, refs.refs(), snapshot.dir().resolve(path), path);
                    snapshot.add(entry, snapshot.dir().resolve(path));
                    Log.info("sync " + snapshot.timestamp() + ": git " + repoPath + " " + refs.refs().size() + " refs, "
                            + Log.bytes(entry.size()) + " in " + Log.seconds(Duration.between(t, Instant.now())));
                }
                snapshot.repos().add(new RepoFacts(repoPath, file, refs.refs(), refs.symrefs(), GitRepo.promisor(dir),
                        fingerprint, trees, null));
            });
        }
    }

    /** False for a git directory that holds no object yet (`git init` and nothing since). */
    private static boolean hasObjects(Path gitDir) throws IOException {
        try (Stream<Path> s = Files.walk(gitDir.resolve("objects"), 2)) {
            return s.anyMatch(p -> Files.isRegularFile(p) && !p.getParent().getFileName().toString().equals("info"));
        }
    }

    private Versions versions() {
        String gt = Proc.versionOf("gt", "version");
        String dolt = Proc.versionOf("dolt", "version").replaceFirst("^dolt version ", "");
        String git = Proc.versionOf("git", "--version").replaceFirst("^git version ", "");
        return new Versions(gt, dolt, git);
    }

    /** Uploads every file (an unchanged one is copied server-side from the previous snapshot), manifest last. */
    private Transfer upload(Snapshot snapshot, Manifest manifest, Manifest base) {
        Instant t = Instant.now();
        Keys keys = config.keys();
        long bytes = 0;
        int uploaded = 0;
        int copied = 0;
        Progress progress = new Progress("upload", snapshot.files().stream()
                .filter(a -> a.local() != null).mapToLong(a -> a.entry().size()).sum());
        for (Snapshot.Artifact a : snapshot.files()) {
            String key = keys.object(snapshot.timestamp(), a.entry().path());
            String copyFrom = a.copyFrom();
            if (copyFrom == null && base != null && base.file(a.entry().path()).filter(a.entry()::equals).isPresent())
                copyFrom = base.timestamp();
            if (copyFrom != null) {
                store.copy(keys.object(copyFrom, a.entry().path()), key);
                copied++;
            } else {
                store.putFile(key, a.local(), a.entry(), progress);
                bytes += a.entry().size();
                uploaded++;
            }
        }
        progress.finish();
        byte[] manifestJson = R2Common.toJson(manifest);
        store.putBytes(keys.object(snapshot.timestamp(), Keys.MANIFEST), manifestJson);
        Log.info("sync " + snapshot.timestamp() + ": uploaded " + uploaded + " files (" + Log.bytes(bytes) + "), copied "
                + copied + " unchanged, manifest last, in " + Log.seconds(Duration.between(t, Instant.now())));
        return new Transfer(bytes + manifestJson.length, uploaded + 1, copied);
    }

    /**
     * Moves latest.json with a conditional write on the ETag read at the start: if another writer moved it
     * meanwhile, a newer snapshot of theirs is never replaced, and ours is discarded.
     */
    private void movePointer(PointerState previous, Manifest manifest) {
        String timestamp = manifest.timestamp();
        byte[] pointer = R2Common.toJson(new Pointer(timestamp, Sha256.of(R2Common.toJson(manifest))));
        String expected = previous.etag();
        for (int attempt = 0; attempt < 3; attempt++) {
            try {
                store.putIfMatch(config.keys().latest(), pointer, expected);
                Log.info("sync " + timestamp + ": latest.json now names " + timestamp);
                return;
            } catch (PreconditionFailed e) {
                PointerState now = readPointer();
                String theirs = now.pointer() == null ? null : now.pointer().timestamp();
                if (timestamp.equals(theirs)) return;   // our write landed; only its answer was lost
                if (theirs != null && theirs.compareTo(timestamp) > 0) {
                    discard(timestamp);
                    throw new R2Exception(R2Common.EXIT_FAILED, "sync " + timestamp + ": conflict: latest.json was moved to "
                            + theirs + " by another writer while this sync ran; this snapshot was discarded. "
                            + "Is a second container backing up town " + config.townId() + "?");
                }
                Log.warn("sync " + timestamp + ": latest.json changed to " + theirs + " (older than ours) while this sync ran; replacing it");
                expected = now.etag();
            }
        }
        throw new R2Exception(R2Common.EXIT_FAILED, "sync " + timestamp + ": latest.json keeps changing; gave up");
    }

    private void discard(String timestamp) {
        store.delete(store.list(config.keys().snapshot(timestamp)).stream().map(StoredObject::key).collect(Collectors.toList()));
    }

    /**
     * Keeps the newest complete snapshots; removes older ones and the leftovers of syncs that died (a prefix
     * older than ours without a manifest can never be published: its writer's conditional write would fail).
     * Never touches ours (the one latest.json names) or anything newer (a sync still uploading).
     */
    private void applyRetention(String current) {
        Keys keys = config.keys();
        Map<String, List<StoredObject>> byTimestamp = new TreeMap<>(Comparator.reverseOrder());
        for (StoredObject o : store.list(keys.snapshots())) {
            String ts = keys.timestampOf(o.key());
            if (ts != null) byTimestamp.computeIfAbsent(ts, k -> new ArrayList<>()).add(o);
        }
        List<String> doomed = new ArrayList<>();
        List<String> removed = new ArrayList<>();
        int completeKept = 0;
        List<String> olderFormat = new ArrayList<>();
        for (Map.Entry<String, List<StoredObject>> e : byTimestamp.entrySet()) {
            String ts = e.getKey();
            boolean complete = e.getValue().stream().anyMatch(o -> o.key().equals(keys.object(ts, Keys.MANIFEST)));
            if (ts.compareTo(current) > 0) continue;
            if (complete && !ts.equals(current) && formatOf(ts) != Manifest.FORMAT) {
                olderFormat.add(ts);   // this tool cannot restore it, so it never counts toward --keep
                continue;
            }
            if (ts.equals(current) || (complete && completeKept < keep)) {
                if (complete) completeKept++;
                continue;
            }
            removed.add(ts + (complete ? "" : " (unfinished)"));
            e.getValue().forEach(o -> doomed.add(o.key()));
        }
        // Snapshots of an older format stay until --keep snapshots of this one exist: until then they may be
        // the only copy of the town that the previous version of this tool can restore.
        if (completeKept >= keep)
            for (String ts : olderFormat) {
                removed.add(ts + " (format " + formatOf(ts) + ")");
                byTimestamp.get(ts).forEach(o -> doomed.add(o.key()));
            }
        if (!doomed.isEmpty()) store.delete(doomed);
        int aborted = 0;
        for (PendingUpload u : store.pendingUploads(keys.snapshots())) {
            String ts = keys.timestampOf(u.key());
            if (ts == null || ts.compareTo(current) < 0) {
                store.abort(u);
                aborted++;
            }
        }
        if (!removed.isEmpty() || aborted > 0)
            Log.info("sync " + current + ": retention removed " + removed.size() + " snapshot(s) " + removed
                    + (aborted > 0 ? " and aborted " + aborted + " unfinished upload(s)" : ""));
    }

    /**
     * The manifest format of a complete snapshot, read once and remembered; -1 when it cannot be read, which
     * retention treats like an older format (kept until --keep snapshots of this format exist).
     */
    private int formatOf(String timestamp) {
        return formats.computeIfAbsent(timestamp, ts -> {
            try {
                return store.get(config.keys().object(ts, Keys.MANIFEST)).map(v -> Manifest.formatOf(v.data())).orElse(-1);
            } catch (R2Exception e) {
                return -1;
            }
        });
    }

    private void report(SyncResult result, R2Exception failure) {
        Map<String, Object> body = new LinkedHashMap<>();
        body.put("townId", config.townId());
        body.put("event", "sync");
        body.put("status", failure != null ? "failed" : result.problems().isEmpty() ? "ok" : "partial");
        body.put("snapshot", result.timestamp());
        body.put("durationMs", result.took().toMillis());
        body.put("bytesUploaded", result.transfer().bytes());
        body.put("filesUploaded", result.transfer().uploaded());
        body.put("filesCopied", result.transfer().copied());
        if (!result.problems().isEmpty())
            body.put("problems", result.problems().stream().map(p -> p.part() + ": " + Log.redact(p.error())).collect(Collectors.toList()));
        if (failure != null) body.put("error", Log.redact(R2Cli.messageChain(failure)));
        if (failure == null)
            Log.info("sync " + result.timestamp() + ": " + body.get("status") + " in " + Log.seconds(result.took())
                    + (result.problems().isEmpty() ? "" : "; NOT backed up: " + body.get("problems")));
        heartbeat.send(body);
    }

    /** The outcome of the last sync on this machine, for the status view. */
    private void recordLastSync(SyncResult result, R2Exception failure) {
        Map<String, Object> state = new LinkedHashMap<>();
        state.put("townId", config.townId());
        state.put("finishedAt", Instant.now().toString());
        state.put("status", failure != null ? "failed" : result.problems().isEmpty() ? "ok" : "partial");
        state.put("snapshot", result.timestamp());
        state.put("durationMs", result.took().toMillis());
        if (failure != null) state.put("error", Log.redact(R2Cli.messageChain(failure)));
        try {
            FileTrees.writeAtomically(config.stateDir().resolve(RestoreState.LAST_SYNC), R2Common.toJson(state));
        } catch (IOException e) {
            Log.warn("sync: cannot record the outcome in " + config.stateDir() + ": " + e.getMessage());
        }
    }

    // ---------------------------------------------------------------------------------------------
    // Helpers
    // ---------------------------------------------------------------------------------------------

    record PointerState(Pointer pointer, String etag) {}

    record Transfer(long bytes, int uploaded, int copied) {
        static final Transfer NONE = new Transfer(0, 0, 0);
    }

    record SyncResult(String timestamp, List<Problem> problems, Transfer transfer, Duration took) {
        int exitCode() {
            return problems.isEmpty() ? R2Common.EXIT_OK : R2Common.EXIT_PARTIAL;
        }
    }

    /** What one sync has built so far: files to upload (or to carry over), facts, and problems. */
    static final class Snapshot {
        record Artifact(FileEntry entry, Path local, String copyFrom) {}

        interface Step {
            void run() throws IOException;
        }

        private final String timestamp;
        private final Path dir;
        private final List<Artifact> files = new ArrayList<>();
        private final List<DatabaseFacts> databases = new ArrayList<>();
        private final List<RepoFacts> repos = new ArrayList<>();
        private final List<Problem> problems = new ArrayList<>();
        private int succeeded;
        private int attempted;

        Snapshot(String timestamp, Path dir) {
            this.timestamp = timestamp;
            this.dir = dir;
        }

        String timestamp() { return timestamp; }
        Path dir() { return dir; }
        List<Artifact> files() { return files; }
        List<DatabaseFacts> databases() { return databases; }
        List<RepoFacts> repos() { return repos; }

        void add(FileEntry entry, Path local) {
            files.add(new Artifact(entry, local, null));
        }

        void reuse(FileEntry entry, String fromTimestamp) {
            files.add(new Artifact(entry, null, fromTimestamp));
        }

        /**
         * Runs one part of the backup. A part whose source fails (a locked database, a corrupt repo) is
         * recorded as a problem and, where the previous snapshot has it, carried over from there, marked.
         * A local disk failure (no space) fails the whole sync instead: nothing would be trustworthy.
         */
        void attempt(String part, String path, Manifest base, Step step) {
            attempted++;
            try {
                step.run();
                succeeded++;
            } catch (IOException | R2Exception | IllegalArgumentException | java.io.UncheckedIOException e) {
                if (Proc.shuttingDown)   // its dolt or git was killed by the shutdown: the source is fine
                    throw new R2Exception(R2Common.EXIT_FAILED, "sync " + timestamp + ": stopped by shutdown", e);
                String error = R2Cli.messageChain(e);
                if (error.toLowerCase(Locale.ROOT).contains("no space left"))
                    throw new R2Exception(R2Common.EXIT_FAILED, "sync: " + part + ": " + error, e);
                String carried = null;
                if (base != null && base.file(path).isPresent()) {
                    reuse(base.file(path).get(), base.timestamp());
                    base.databases().stream().filter(d -> part.equals("database " + d.path())).findFirst().ifPresent(databases::add);
                    base.repos().stream().filter(r -> part.equals("repo " + r.path())).findFirst()
                            .ifPresent(r -> repos.add(r.carriedFrom(base.timestamp())));
                    carried = base.timestamp();
                }
                problems.add(new Problem(part, Log.redact(error), carried));
                Log.error("sync " + timestamp + ": " + part + " NOT backed up" + (carried != null
                        ? " (its copy from " + carried + " is carried over)" : "") + ": " + error);
            }
        }

        /** A snapshot in which every database and repo failed is no backup; refuse to publish it. */
        void requireSomethingBackedUp() {
            if (attempted > 0 && succeeded == 0)
                throw new R2Exception(R2Common.EXIT_FAILED, "sync " + timestamp + ": no database or repo could be backed up: "
                        + problems.stream().map(p -> p.part() + ": " + p.error()).collect(Collectors.joining("; ")));
        }

        Manifest manifest(String townId, String townRoot, Versions versions) {
            return new Manifest(Manifest.FORMAT, R2Common.VERSION, townId, timestamp, Instant.now().toString(), townRoot, versions,
                    files.stream().map(Artifact::entry).collect(Collectors.toList()), databases, repos, problems);
        }
    }

    /**
     * The machine-wide sync lock: an OS file lock, so a dead holder releases it with its death and a stale
     * lock file is harmless. A second sync waits (bounded) rather than skipping: a shutdown flush must run.
     */
    static final class SyncLock implements AutoCloseable {
        private final FileChannel channel;
        private final FileLock lock;

        private SyncLock(FileChannel channel, FileLock lock) {
            this.channel = channel;
            this.lock = lock;
        }

        static SyncLock acquire(Path file, Duration wait) throws IOException {
            if (file.getParent() != null) Files.createDirectories(file.getParent());
            FileChannel channel = FileChannel.open(file, StandardOpenOption.CREATE, StandardOpenOption.WRITE, StandardOpenOption.READ);
            long deadline = System.nanoTime() + wait.toNanos();
            boolean announced = false;
            try {
                while (true) {
                    FileLock lock = tryLock(channel);
                    if (lock != null) {
                        channel.truncate(0).write(java.nio.ByteBuffer.wrap((ProcessHandle.current().pid() + "\n").getBytes(StandardCharsets.UTF_8)), 0);
                        return new SyncLock(channel, lock);
                    }
                    if (!announced) {
                        Log.info("sync: another sync holds " + file + "; waiting up to " + DurationConverter.format(wait));
                        announced = true;
                    }
                    if (System.nanoTime() > deadline)
                        throw new R2Exception(R2Common.EXIT_FAILED, "sync: another sync still holds " + file + " after "
                                + DurationConverter.format(wait) + " (see --lock-wait)");
                    Thread.sleep(100);   // polling an OS lock: there is no event to wait on
                }
            } catch (InterruptedException e) {
                channel.close();
                Thread.currentThread().interrupt();
                throw new R2Exception(R2Common.EXIT_FAILED, "sync: interrupted while waiting for " + file);
            } catch (IOException | RuntimeException e) {
                channel.close();
                throw e;
            }
        }

        private static FileLock tryLock(FileChannel channel) throws IOException {
            try {
                return channel.tryLock();
            } catch (OverlappingFileLockException e) {
                return null;   // held by another thread of this JVM
            }
        }

        @Override
        public void close() throws IOException {
            lock.release();
            channel.close();
        }
    }

    static String hostname() {
        try {
            return InetAddress.getLocalHost().getHostName();
        } catch (IOException e) {
            return "unknown";
        }
    }

    private static List<String> listFiles(Path dir) throws IOException {
        try (Stream<Path> s = Files.walk(dir)) {
            return s.filter(Files::isRegularFile).map(p -> dir.relativize(p).toString()).sorted().collect(Collectors.toList());
        }
    }

    private static void awaitQuietly(CountDownLatch latch, Duration max) {
        try {
            latch.await(max.toMillis(), TimeUnit.MILLISECONDS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }
}

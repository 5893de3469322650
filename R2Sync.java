///usr/bin/env jbang "$0" "$@" ; exit $?
//JAVA 17+
// A heap sized for a sandbox whose agents need the memory: everything large is streamed (tools/soak.sh).
// Compile thresholds 4x the JVM's: most of a run is code that runs a few times, which the JIT compiled for
// nothing (a 31 MiB first backup: 0.7 s less CPU, 0.2 s sooner); loops that run long are compiled all the same.
//JAVA_OPTIONS -Xmx128m -XX:CompileThresholdScaling=4
// No //CDS: its archive is written as the first JVM exits (~1.4 s), beside the jar in JBang's cache, which in the
// sandbox is new on every machine or baked read-only into the image: each restore and each final sync would
// pay for it, and no JVM would start from it.
//SOURCES R2Common.java

import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Option;

import java.io.IOException;
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
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.stream.Collectors;
import java.util.stream.Stream;

@Command(name = "r2-sync", mixinStandardHelpOptions = true, version = R2Common.VERSION, sortOptions = false,
        description = {
                "Backs up a Gas Town to R2: the whole town root but a short skip list (docs/sync.md), as one snapshot "
                        + "(gastown/<town_id>/snapshots/<timestamp>/manifest.json) made of immutable objects under "
                        + "gastown/<town_id>/incremental/ that snapshots share: each Dolt database's `dolt backup` files, "
                        + "each git directory's chain of git packs, and file packs (tars) of every other path (work trees "
                        + "with their uncommitted work, git config, hooks, index, reflogs, runtime state, empty dirs, symlinks). "
                        + "A cycle uploads only what changed; then latest.json names the snapshot, and the history policy "
                        + "and garbage collection remove what no kept snapshot needs.",
                "GT_TOWN_ROOT must be a town (it holds mayor/town.json): any other directory is refused.",
                "Without --immediate it runs as a daemon: a sync every --interval, the first at start. SIGTERM stops it "
                        + "(a cycle in flight is abandoned, never published half); SIGUSR1 makes it abandon a cycle in flight, "
                        + "sync the town as it is then, and exit with that sync's code (startup.sh's flush on SIGTERM)."},
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

    @Mixin
    HistoryOptions history = new HistoryOptions();

    @Option(names = "--verify-every", defaultValue = "${env:R2_VERIFY_EVERY:-24h}", converter = DurationConverter.class,
            paramLabel = "DURATION", description = "How often the daemon checks, beside its syncs, that the latest snapshot "
            + "restores (a trial restore, as r2-restore --verify) and reads back a seventh of every stored object (each is "
            + "read again within a week); 0 turns it off (env R2_VERIFY_EVERY, default ${DEFAULT-VALUE}).")
    Duration verifyEvery;

    @Option(names = "--take-over", description = "Make this volume the town's writer although latest.json was written by "
            + "another (after moving the town to a new machine by hand); without it such a sync refuses.")
    boolean takeOver;

    private Config config;
    private ObjectStore store;
    private Heartbeat heartbeat;
    /** The last published manifest, kept at hand so the next cycle can skip what did not change. */
    private Manifest lastManifest;
    /** Manifests of the snapshots the history policy keeps, and the format of each snapshot looked at (both never change). */
    private final Map<String, Manifest> manifests = new java.util.concurrent.ConcurrentHashMap<>();
    private final Map<String, Integer> formats = new java.util.concurrent.ConcurrentHashMap<>();
    /** Set when the daemon is told to stop or to make its final sync: the cycle in flight then ends as abandoned, not failed. */
    private volatile boolean abandoning;

    public static void main(String... args) {
        System.exit(R2Cli.run(new R2Sync(), args));
    }

    @Override
    public Integer call() {
        config = r2.toConfig();
        history.policy();
        if (interval.isZero() || interval.isNegative()) throw R2Options.usage("--interval must be positive");
        if (verifyEvery.isNegative()) throw R2Options.usage("--verify-every must not be negative (0 turns verification off)");
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
    // SIGTERM ends it; SIGUSR1 ends it with a final sync, whose exit code is the daemon's.
    // ---------------------------------------------------------------------------------------------

    private int runDaemon() {
        CountDownLatch stop = new CountDownLatch(1);
        CountDownLatch stopped = new CountDownLatch(1);
        AtomicBoolean finalSyncAsked = new AtomicBoolean();
        Thread loop = Thread.currentThread();
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            if (stopped.getCount() == 0) return;   // ended on its own, after a final sync
            // The pointer only ever moves to a fully uploaded snapshot, so ending mid-cycle is safe:
            // the next sync removes what this one leaves.
            Log.info("daemon: stopping");
            Proc.shuttingDown = true;
            abandonCycle(stop, loop);
            awaitQuietly(stopped, Duration.ofSeconds(10));
        }, "r2-sync-shutdown"));
        // The SIGTERM flush of startup.sh, done by this warm JVM: no second JVM to start, the last manifest at hand.
        Proc.onSignal("USR1", () -> {
            if (!finalSyncAsked.compareAndSet(false, true)) return;
            Log.info("daemon: SIGUSR1: a final sync of the town as it is now, then exit (a cycle in flight is abandoned)");
            abandonCycle(stop, loop);
        });
        Log.info("daemon: syncing " + config.townRoot() + " every " + DurationConverter.format(interval)
                + "; SIGUSR1 asks for a final sync and exit");
        try {
            runCycles(stop);
            if (!finalSyncAsked.get() || Proc.shuttingDown) return R2Common.EXIT_OK;
            synchronized (this) {   // abandonCycle has run to its end: its interrupt is cleared, not left for this sync
                Thread.interrupted();
                abandoning = false;
            }
            return syncOnce().exitCode();
        } finally {
            verifier.shutdownNow();
            Log.info("daemon: stopped");
            stopped.countDown();
        }
    }

    /** The daemon's scheduled verification: one at a time, beside the syncs (a trial restore of a large town takes minutes). */
    private final java.util.concurrent.ExecutorService verifier = java.util.concurrent.Executors.newSingleThreadExecutor(r -> {
        Thread t = new Thread(r, "r2-verify");
        t.setDaemon(true);
        return t;
    });
    private java.util.concurrent.Future<?> verifying;
    private Instant lastVerify;

    /** Starts a verification when one is due: verifyEvery after the last one (recorded in the state dir) or the daemon's start. */
    private void verifyIfDue() {
        if (verifyEvery.isZero() || (verifying != null && !verifying.isDone())) return;
        if (lastVerify == null) lastVerify = lastVerification().orElse(Instant.now());
        if (Instant.now().isBefore(lastVerify.plus(verifyEvery))) return;
        lastVerify = Instant.now();
        verifying = verifier.submit(this::verify);
    }

    private Optional<Instant> lastVerification() {
        return Verification.last(config.stateDir()).map(r -> Instant.parse(r.at()));
    }

    /** One verification, reported loudly when it fails: in the log, the heartbeat and last-verify.json (R2Status reads it). */
    private void verify() {
        Log.info("verify: checking that the latest snapshot restores and reading back today's share of the stored objects");
        Verification.Result r = Verification.run(store, config, workDir.resolve("verify"));
        if (r.failed())
            Log.error("verify: FAILED: the backup of town " + config.townId() + " is damaged or cannot be checked (" + r.snapshot() + "): "
                    + r.error() + ". Run r2-restore --verify, and look at r2-restore --list");
        else
            Log.info("verify: " + r.status() + (r.snapshot() == null ? "" : ": snapshot " + r.snapshot() + " restores") + "; "
                    + r.objectsRead() + " stored objects read back (" + Log.bytes(r.bytesRead()) + ") in " + Log.seconds(Duration.ofMillis(r.durationMs())));
        Map<String, Object> body = new LinkedHashMap<>();
        body.put("townId", config.townId());
        body.put("event", "verify");
        body.put("status", r.status());
        body.put("snapshot", r.snapshot());
        body.put("objectsRead", r.objectsRead());
        body.put("bytesRead", r.bytesRead());
        body.put("durationMs", r.durationMs());
        if (r.error() != null) body.put("error", r.error());
        heartbeat.send(body);
        try {
            FileTrees.writeAtomically(config.stateDir().resolve(Verification.LAST), R2Common.toJson(r));
        } catch (IOException e) {
            Log.warn("verify: cannot record the outcome in " + config.stateDir() + ": " + e.getMessage());
        }
    }

    /** A sync every interval until stop is counted down; a failed cycle is reported and retried at the next one. */
    private void runCycles(CountDownLatch stop) {
        int consecutiveFailures = 0;
        boolean notATownLogged = false;
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
                    verifyIfDue();
                    if (consecutiveFailures > 0) Log.info("daemon: recovered after " + consecutiveFailures + " failed cycle(s)");
                    consecutiveFailures = 0;
                }
            } catch (R2Exception e) {
                if (stop.getCount() == 0) break;
                consecutiveFailures++;
                Log.error("daemon: cycle failed (" + consecutiveFailures + " in a row), retrying in "
                        + DurationConverter.format(interval) + ": " + R2Cli.messageChain(e));
            } catch (RuntimeException | Error e) {
                if (stop.getCount() == 0) break;
                consecutiveFailures++;
                Log.error("daemon: cycle failed unexpectedly (" + consecutiveFailures + " in a row): "
                        + e.getClass().getSimpleName() + ": " + R2Cli.messageChain(e));
            }
            try {
                if (stop.await(interval.toMillis(), TimeUnit.MILLISECONDS)) break;
            } catch (InterruptedException e) {
                break;
            }
        }
    }

    /** Ends the loop; a cycle in flight is interrupted (its dolt and git children killed) and reported as abandoned. */
    private synchronized void abandonCycle(CountDownLatch stop, Thread loop) {
        abandoning = true;
        stop.countDown();
        loop.interrupt();
    }

    // ---------------------------------------------------------------------------------------------
    // One sync, in the order it runs.
    // ---------------------------------------------------------------------------------------------

    /** Takes the lock, builds and uploads what changed, publishes one snapshot, applies the history policy, and reports. */
    SyncResult syncOnce() {
        Instant start = Instant.now();
        String timestamp = Keys.format(start);
        try (SyncLock lock = SyncLock.acquire(lockFile, lockWait)) {
            timestamp = Keys.format(Instant.now());   // what the snapshot holds is read from now on
            Town.requireTown(config.townRoot());
            refuseAfterFailedRestore(null);
            removeLeftoverWorkDirs();
            DoltHome.use(config.stateDir());
            Path work = Files.createDirectories(workDir.resolve("r2-sync-" + timestamp + "-" + ProcessHandle.current().pid()));
            try {
                return sync(timestamp, start, work);
            } finally {
                FileTrees.delete(work);
            }
        } catch (IOException e) {
            throw fail(timestamp, start, new R2Exception(R2Common.EXIT_FAILED, "sync: " + e, e));
        } catch (R2Exception e) {
            throw fail(timestamp, start, e);
        } catch (RuntimeException | Error e) {
            // A bug, or the JVM out of memory: a failed sync all the same, reported as one; the caller says what it was.
            fail(timestamp, start, new R2Exception(R2Common.EXIT_FAILED, "sync: " + e, e));
            throw e;
        }
    }

    /**
     * One snapshot, built in work. What the bucket holds is read while the town is scanned (in a new JVM the S3
     * client's build and first requests take longer than the scan of a small town), and what the history policy
     * looks at while the snapshot is built and uploaded. The dolt backups and the tools' versions need nothing
     * from the bucket: they run beside all that follows (on a first backup each backup takes seconds). A
     * background task not joined is stopped, its processes killed.
     */
    private SyncResult sync(String timestamp, Instant start, Path work) throws IOException {
        try (Background<BucketState> bucketRead = Background.start(this::readBucket);
             Background<HistoryState> historyRead = Background.start(() -> {
                 bucketRead.join();   // not to slow down the reads the packing waits for
                 return readHistory();
             })) {
            Town town;
            try (Background<Void> zstd = Background.start(PackWriter::loadZstd)) {   // beside the scan, which does not need it
                town = Town.scan(config.townRoot(), work.resolve("scan"));
                zstd.join();
            }
            try (Background<Map<String, Object>> doltBackups = Background.start(() -> runDoltBackups(town));
                 Background<Versions> versions = Background.start(() -> versions(work.resolve("version-probe")))) {
                BucketState bucket = bucketRead.join();
                refuseAfterFailedRestore(bucket);
                String writer = writer(bucket.pointer());
                Manifest base = bucket.base();
                refuseEmptyTownOverBackup(town, base);
                Log.info("sync " + timestamp + ": started for town " + config.townId());
                Snapshot snapshot = new Snapshot(timestamp, work, config.keys(), bucket.stored(), base == null ? null : base.timestamp());
                Map<Path, List<WorkTreeFacts>> workTrees = inspectWorkTrees(town, snapshot);
                packFiles(town, snapshot, base);
                packRepos(town, workTrees, snapshot, base);
                addDatabases(town, snapshot, base, doltBackups.join());
                snapshot.requireSomethingBackedUp();
                Transfer transfer = upload(snapshot, base);
                Manifest manifest = publish(bucket.pointer(), snapshot, versions.join(), writer);
                lastManifest = manifest;
                keepFileState(snapshot);
                try {
                    applyHistory(manifest.timestamp(), historyRead.join(), bucket.stored().values());
                } catch (R2Exception | IOException e) {
                    // The snapshot is published; what is left behind is the next sync's to remove.
                    Log.warn("sync " + manifest.timestamp() + ": history policy or garbage collection failed, the next sync "
                            + "retries it: " + R2Cli.messageChain(e));
                }
                SyncResult result = new SyncResult(manifest.timestamp(), manifest.problems(), transfer, Duration.between(start, Instant.now()));
                report(result, null);
                recordLastSync(result, null);
                return result;
            }
        }
    }

    /** Reports a failed sync, unless the JVM is shutting down: then the cycle is abandoned, not failed. */
    private R2Exception fail(String timestamp, Instant start, R2Exception failure) {
        if (Proc.shuttingDown || abandoning) {
            Log.info("sync " + timestamp + ": abandoned (" + (Proc.shuttingDown ? "shutting down" : "a final sync follows")
                    + "); what it uploaded is collected later");
            return failure;
        }
        SyncResult result = new SyncResult(timestamp, List.of(), Transfer.NONE, Duration.between(start, Instant.now()));
        report(result, failure);
        recordLastSync(result, failure);
        return failure;
    }

    /**
     * After a failed restore the town on this volume is empty or stale: backing it up would bury the good snapshots.
     * Checked before anything is read (this machine's marker, the volume's) and once the bucket is read (its marker,
     * which any machine of the town may have left).
     */
    private void refuseAfterFailedRestore(BucketState bucket) {
        Optional<String> marker = bucket == null ? RestoreState.failure(config).map(Path::toString)
                : bucket.restoreFailed() ? Optional.of(config.keys().restoreFailed() + " in the bucket") : Optional.empty();
        marker.ifPresent(where -> {
            throw new R2Exception(R2Common.EXIT_FAILED, "sync: a restore of town " + config.townId() + " failed (" + where
                    + "); a sync now would replace the good backups with this incomplete town. Fix the restore "
                    + "(r2-restore --list / --snapshot), or run r2-restore --forget-failure to back up the town as it is.");
        });
    }

    /**
     * This machine's writer id. A latest.json written under another id means a second machine backs up this town
     * (or TOWN_ID names another town): refused, unless --take-over. A pointer that names no writer (written before
     * 0.6), or none at all, is adopted.
     */
    private String writer(PointerState pointer) {
        String mine = Writer.of(config.townRoot());
        String theirs = pointer.pointer() == null ? null : pointer.pointer().writer();
        if (theirs != null && !theirs.equals(mine) && !takeOver)
            throw new R2Exception(R2Common.EXIT_FAILED, "sync: latest.json of town " + config.townId() + " was written by another "
                    + "machine (writer " + theirs + "; this one is " + mine + "): is a second machine backing up this town, or "
                    + "does TOWN_ID name another town? Nothing was published. If this machine is the town's now, run "
                    + "r2-sync --immediate --take-over once.");
        if (theirs != null && !theirs.equals(mine)) Log.warn("sync: --take-over: this machine (" + mine + ") is the writer of town "
                + config.townId() + " from now on, in place of " + theirs);
        return mine;
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

    /** What a sync needs from the bucket before it packs: the pointer, the snapshot it names, and every stored object. */
    record BucketState(PointerState pointer, Manifest base, Map<String, StoredObject> stored, boolean restoreFailed) {}

    /** The listing runs beside the two reads that depend on each other: a round trip or more less on R2. */
    private BucketState readBucket() throws IOException {
        try (Background<Map<String, StoredObject>> listing = Background.start(this::storedObjects)) {
            PointerState pointer = readPointer();
            Manifest base = previousManifest(pointer);
            boolean restoreFailed = store.get(config.keys().restoreFailed()).isPresent();
            return new BucketState(pointer, base, listing.join(), restoreFailed);
        }
    }

    /**
     * What the history policy and garbage collection look at: every snapshot (by timestamp), each complete one's
     * manifest (read four at a time into the cache, so that the policy, once the snapshot is published, waits for
     * no request), and what multipart uploads older versions left. Read at the start, it misses only snapshots
     * published meanwhile, by another writer: those are left to the next sync.
     */
    record HistoryState(Map<String, List<StoredObject>> snapshots, List<PendingUpload> pendingUploads, Held held) {}

    private HistoryState readHistory() throws IOException {
        Keys keys = config.keys();
        Map<String, List<StoredObject>> byTimestamp = new TreeMap<>(Comparator.reverseOrder());
        for (StoredObject o : store.list(keys.snapshots())) {
            String ts = keys.timestampOf(o.key());
            if (ts != null) byTimestamp.computeIfAbsent(ts, k -> new ArrayList<>()).add(o);
        }
        Parallel.run(TRANSFERS, byTimestamp.entrySet().stream()
                .filter(e -> hasManifest(e.getKey(), e.getValue()))
                .<Parallel.Task>map(e -> () -> formatOf(e.getKey())).collect(Collectors.toList()));
        return new HistoryState(byTimestamp, store.pendingUploads(keys.objects()), Held.read(store, keys));
    }

    /** A snapshot is complete once its manifest exists; a prefix without one is an older version's leftover. */
    private boolean hasManifest(String timestamp, List<StoredObject> listed) {
        String manifest = config.keys().object(timestamp, Keys.MANIFEST);
        return listed.stream().anyMatch(o -> o.key().equals(manifest));
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

    /** The snapshot latest.json names, whose objects this one reuses; null means everything is uploaded. */
    private Manifest previousManifest(PointerState previous) {
        if (previous.pointer() == null) return null;
        String ts = previous.pointer().timestamp();
        if (lastManifest != null && lastManifest.timestamp().equals(ts)) return lastManifest;
        try {
            Manifest manifest = manifest(ts);
            if (manifest == null)
                Log.info("sync: the previous snapshot " + ts + " is in manifest format " + formatOf(ts) + "; this one is written in "
                        + "format " + Manifest.FORMAT + " from scratch, and the older snapshots are kept until "
                        + history.last + " of format " + Manifest.FORMAT + " exist");
            return manifest;
        } catch (R2Exception e) {
            Log.warn("sync: previous manifest unusable, uploading everything: " + e.getMessage());
            return null;
        }
    }

    /** Every object under incremental/ as listed now: what need not be uploaded again. */
    private Map<String, StoredObject> storedObjects() {
        Map<String, StoredObject> stored = new HashMap<>();
        for (StoredObject o : store.list(config.keys().objects())) stored.put(o.key(), o);
        return stored;
    }

    /**
     * Each database through `dolt backup` into a directory that persists between syncs (dolt then writes only
     * the table files it lacks); maps each database's path to its DoltBackup or its failure. The dolt
     * commands of two databases run at once: each is mostly a process starting.
     */
    private Map<String, Object> runDoltBackups(Town town) throws IOException {
        Map<String, Object> done = new java.util.concurrent.ConcurrentHashMap<>();
        Parallel.run(2, town.databases().stream().<Parallel.Task>map(db -> () -> {
            try {
                done.put(db.path(), doltBackup(town, db));
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
    private void addDatabases(Town town, Snapshot snapshot, Manifest base, Map<String, Object> done) throws IOException {
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
    private DoltBackup doltBackup(Town town, Town.DoltDatabase db) throws IOException {
        Instant t = Instant.now();
        Path dbDir = town.root().resolve(db.path());
        Path backupDir = config.stateDir().resolve("dolt-backups").resolve(config.townId()).resolve(db.path());
        Path syncedAt = config.stateDir().resolve("dolt-backup-states").resolve(config.townId()).resolve(db.path());
        Files.createDirectories(backupDir.getParent());
        DoltServer.Backup backup = DoltServer.backup(dbDir, backupDir, syncedAt);
        return new DoltBackup(backupDir, backup.files(), backup.state().branches(), DoltServer.backupRoot(backupDir), backup.synced(),
                Duration.between(t, Instant.now()));
    }

    /**
     * What each work tree holds that no commit does (staged, modified, untracked files), by the git directory
     * its .git leads to. Read just before the files are packed, so the counts describe the packs.
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
                // Its files are packed all the same; only the record of its git state is missing.
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

    /**
     * Every path of the town outside the skip list: what changed since the previous snapshot's file index into new
     * packs (a content some pack holds already is not stored again), the rest as that index had it.
     */
    private void packFiles(Town town, Snapshot snapshot, Manifest base) throws IOException {
        Instant t = Instant.now();
        List<Path> previous = previousIndex(base, snapshot);
        Map<String, FileEntry> basePacks = new HashMap<>();
        if (previous != null) base.filesUnder("files/packs").forEach(f -> basePacks.put(FilePacks.packId(f.path()), f));
        Set<String> merging = FilePacks.packsToMerge(basePacks.values(), previous == null ? Map.of() : liveBytes(base));
        Set<String> usable = basePacks.entrySet().stream().filter(e -> !merging.contains(e.getKey()) && snapshot.stored(e.getValue()))
                .map(Map.Entry::getKey).collect(Collectors.toSet());
        String prefix = snapshot.timestamp() + "-" + HexFormat.of().toHexDigits(new java.security.SecureRandom().nextInt());
        FilePacks.Packed packed;
        try (BlobCatalog catalog = catalog(base, previous, snapshot.dir());
             IndexReader before = previous == null ? null : IndexReader.index(previous)) {
            packed = FilePacks.pack(town, before, usable, catalog, snapshot.dir(), prefix);
            Path keptBefore = previous == null ? null : fileState("file-catalog").resolve(catalogName(base.fileIndex()));
            boolean sameIndex = previous != null && packed.index().keySet().stream().map(FileEntry::path).toList().equals(base.fileIndex());
            if (sameIndex && packed.written().isEmpty() && Files.isRegularFile(keptBefore)) {
                snapshot.catalog = keptBefore;   // nothing changed: the catalog kept for that index is this one's (no rewrite)
            } else {
                snapshot.catalog = snapshot.dir().resolve("catalog");
                catalog.finishInto(snapshot.catalog, packed.packsUsed()::contains);
            }
            snapshot.liveBytes = packed.liveBytes();
        }
        packed.written().forEach(snapshot::add);
        basePacks.forEach((id, f) -> {
            if (packed.packsUsed().contains(id)) snapshot.reuse(f);
        });
        packed.index().forEach(snapshot::add);
        snapshot.fileIndex = packed.index();
        Log.info("sync " + snapshot.timestamp() + ": files: " + packed.paths() + " paths, " + packed.changed() + " read again ("
                + packed.deduplicated() + " of them held by a pack already), " + Log.bytes(packed.newBytes()) + " of new content in "
                + packed.written().size() + " new packs (" + Log.bytes(packed.written().keySet().stream().mapToLong(FileEntry::size).sum())
                + ")" + (merging.isEmpty() ? "" : ", " + merging.size() + " small or mostly dead packs merged") + ", in "
                + Log.seconds(Duration.between(t, Instant.now())));
        if (!town.skipped().isEmpty())
            Log.info("sync " + snapshot.timestamp() + ": left out by the skip list: " + town.skipped().entrySet().stream()
                    .map(e -> e.getValue() + " x " + e.getKey()).collect(Collectors.joining("; ")));
    }

    /** Where this machine keeps the last published file index (its pieces) and catalog, for the next sync. */
    private Path fileState(String what) {
        return config.stateDir().resolve(what).resolve(config.townId());
    }

    /**
     * The previous snapshot's file index pieces, in order: kept in the state dir by the sync that published it (each
     * checked against its sha256), else downloaded there; null packs everything (no previous snapshot, one of an
     * older format, or an index that cannot be had).
     */
    private List<Path> previousIndex(Manifest base, Snapshot snapshot) {
        if (base == null) return null;
        if (!base.contentPacks()) {
            Log.info("sync " + snapshot.timestamp() + ": the previous snapshot " + base.timestamp() + " keeps its files in format "
                    + base.formatVersion() + " tar packs; this one stores every file anew, in content packs");
            return null;
        }
        try {
            Path dir = Files.createDirectories(fileState("file-index"));
            List<Path> pieces = new ArrayList<>();
            List<Parallel.Task> downloads = new ArrayList<>();
            for (String path : base.fileIndex()) {
                FileEntry piece = base.file(path).orElseThrow();
                Path local = dir.resolve(piece.sha256());
                pieces.add(local);
                if (Files.isRegularFile(local) && Sha256.ofFile(local, path).equals(piece)) continue;
                Files.deleteIfExists(local);
                downloads.addAll(store.downloads(config.keys(), piece, local, base.timestamp(), null));
            }
            Parallel.run(TRANSFERS, downloads);
            return pieces;
        } catch (R2Exception | IOException | java.util.NoSuchElementException e) {
            Log.warn("sync " + snapshot.timestamp() + ": the file index of " + base.timestamp() + " is unusable, reading every "
                    + "file again: " + e.getMessage());
            return null;
        }
    }

    /**
     * Where each stored content is: the catalog this machine kept for the previous snapshot's index, or one made
     * from that index now (a new machine, or the first sync after a restore).
     */
    private BlobCatalog catalog(Manifest base, List<Path> previous, Path work) throws IOException {
        if (previous == null) return BlobCatalog.open(null, work.resolve("catalog-work"));
        Path kept = fileState("file-catalog").resolve(catalogName(base.fileIndex()));
        if (Files.isRegularFile(kept)) return BlobCatalog.open(kept, work.resolve("catalog-work"));
        try (IndexReader index = IndexReader.index(previous)) {
            return BlobCatalog.of(index, work.resolve("catalog-work"));
        }
    }

    private static String catalogName(List<String> fileIndex) {
        return Sha256.of(String.join("\n", fileIndex).getBytes(StandardCharsets.UTF_8)) + ".catalog";
    }

    /** How much of each pack the previous snapshot's index points at, as its sync counted; empty when not kept here. */
    @SuppressWarnings("unchecked")
    private Map<String, Long> liveBytes(Manifest base) {
        Path file = fileState("file-catalog").resolve(catalogName(base.fileIndex()) + ".live");
        try {
            if (!Files.isRegularFile(file)) return Map.of();
            Map<String, Number> read = R2Common.JSON.readValue(file.toFile(), Map.class);
            Map<String, Long> live = new HashMap<>();
            read.forEach((pack, bytes) -> live.put(pack, bytes.longValue()));
            return live;
        } catch (IOException | RuntimeException e) {
            Log.warn("sync: " + file + " is unreadable, no pack is merged for being mostly dead this time: " + e.getMessage());
            return Map.of();
        }
    }

    /** Once published, the snapshot's file index and catalog stay in the state dir for the next sync; older ones go. */
    private void keepFileState(Snapshot snapshot) {
        try {
            Path indexDir = Files.createDirectories(fileState("file-index"));
            Set<String> names = new HashSet<>();
            for (Map.Entry<FileEntry, Path> piece : snapshot.fileIndex.entrySet()) {
                names.add(piece.getKey().sha256());
                Files.move(piece.getValue(), indexDir.resolve(piece.getKey().sha256()), StandardCopyOption.REPLACE_EXISTING);
            }
            removeAllBut(indexDir, names);
            Path catalogDir = Files.createDirectories(fileState("file-catalog"));
            String name = catalogName(snapshot.fileIndex.keySet().stream().map(FileEntry::path).toList());
            Files.move(snapshot.catalog, catalogDir.resolve(name), StandardCopyOption.REPLACE_EXISTING);
            FileTrees.writeAtomically(catalogDir.resolve(name + ".live"), R2Common.toJson(snapshot.liveBytes));
            removeAllBut(catalogDir, Set.of(name, name + ".live"));
        } catch (IOException e) {
            Log.warn("sync " + snapshot.timestamp() + ": cannot keep the file index in " + config.stateDir() + " (the next sync "
                    + "downloads it): " + e.getMessage());
        }
    }

    private static void removeAllBut(Path dir, Set<String> names) throws IOException {
        try (Stream<Path> s = Files.list(dir)) {
            for (Path p : s.filter(p -> !names.contains(p.getFileName().toString())).toList()) Files.deleteIfExists(p);
        }
    }

    /**
     * Every git directory's objects and refs as a chain of packs: unchanged, the previous snapshot's chain;
     * changed, that chain plus a pack of what is new since (PackChain says when to start over).
     */
    private void packRepos(Town town, Map<Path, List<WorkTreeFacts>> workTrees, Snapshot snapshot, Manifest base) {
        for (Town.GitDir gitDir : town.gitDirs()) {
            String repoPath = gitDir.path();
            RepoFacts before = base == null ? null : base.repo(repoPath).orElse(null);
            List<FileEntry> beforeFiles = before == null ? List.of()
                    : before.chain().stream().flatMap(l -> base.filesOf(l).stream()).collect(Collectors.toList());
            snapshot.attempt("repo " + repoPath, beforeFiles, null, before, () -> {
                Instant t = Instant.now();
                Path dir = town.root().resolve(repoPath);
                GitRepo.Refs refs = GitRepo.refs(dir);
                String fingerprint = GitRepo.fingerprint(dir, refs);
                List<WorkTreeFacts> trees = workTrees.getOrDefault(dir.toRealPath(), List.of());
                boolean chainStored = before != null && beforeFiles.stream().allMatch(snapshot::stored);
                List<ChainLink> links;
                if (!hasObjects(dir)) {
                    links = List.of();
                    Log.info("sync " + snapshot.timestamp() + ": git " + repoPath + " has no objects yet; recorded");
                } else if (chainStored && !before.empty() && fingerprint.equals(before.fingerprint())) {
                    links = before.chain();
                    beforeFiles.forEach(snapshot::reuse);
                    Log.info("sync " + snapshot.timestamp() + ": git " + repoPath + " unchanged since " + base.timestamp());
                } else {
                    links = extendChain(dir, repoPath, refs, chainStored ? before.chain() : List.of(), base, snapshot);
                    Log.info("sync " + snapshot.timestamp() + ": git " + repoPath + " " + refs.refs().size() + " refs, chain of "
                            + links.size() + " packs, in " + Log.seconds(Duration.between(t, Instant.now())));
                }
                snapshot.repos().add(new RepoFacts(repoPath, links, refs.refs(), refs.symrefs(), GitRepo.promisor(dir),
                        fingerprint, trees, null));
            });
        }
    }

    /**
     * The chain after this cycle: the kept part of the previous one (base's), and a pack of what it lacks (if
     * anything). A chain started afresh from a repo that keeps everything in one pack begins with that pack.
     */
    private List<ChainLink> extendChain(Path dir, String repoPath, GitRepo.Refs refs, List<ChainLink> chain, Manifest base,
                                        Snapshot snapshot) throws IOException {
        List<Long> sizes = chain.stream().map(l -> base.filesOf(l).stream().mapToLong(FileEntry::size).sum())
                .collect(Collectors.toList());
        PackChain.Plan plan = PackChain.plan(dir, chain, sizes);
        List<ChainLink> links = new ArrayList<>(chain.subList(0, plan.keep()));
        links.forEach(l -> base.filesOf(l).forEach(snapshot::reuse));
        String name = Keys.gitPacks(repoPath) + "/" + links.size();
        Optional<GitRepo.Pack> own = plan.prerequisites().isEmpty() ? GitRepo.onlyPack(dir, refs.refs().values(), name) : Optional.empty();
        if (own.isPresent())
            Log.info("sync " + snapshot.timestamp() + ": git " + repoPath + " keeps every object in one pack: that pack goes up as it is");
        GitRepo.Pack pack = own.isPresent() ? own.get()
                : GitRepo.writePack(dir, refs.refs().values(), plan.prerequisites(), snapshot.dir().resolve(name), name);
        if (own.isEmpty() && pack.objects() == 0 && plan.keep() == chain.size() && !chain.isEmpty()) {
            // only refs moved: the chain holds every object, the manifest the refs
            Files.delete(pack.packFile());
            Files.delete(pack.indexFile());
            return links;
        }
        snapshot.add(pack.pack(), pack.packFile());
        snapshot.add(pack.index(), pack.indexFile());
        links.add(new ChainLink(pack.pack().path(), pack.index().path(), plan.prerequisites(),
                GitRepo.commitsPresent(dir, refs.refs().values())));
        return links;
    }

    /** False for a git directory that holds no object yet (`git init` and nothing since). */
    private static boolean hasObjects(Path gitDir) throws IOException {
        try (Stream<Path> s = Files.walk(gitDir.resolve("objects"), 2)) {
            return s.anyMatch(p -> Files.isRegularFile(p) && !p.getParent().getFileName().toString().equals("info"));
        }
    }

    /** The versions of gt, dolt and git, for the manifest, asked in dir (a new directory of the work dir's, not the town). */
    private static Versions versions(Path dir) throws IOException {
        Files.createDirectories(dir);
        String gt = Proc.versionOf(dir, "gt", "version");
        String dolt = Proc.versionOf(dir, "dolt", "version").replaceFirst("^dolt version ", "");
        String git = Proc.versionOf(dir, "git", "--version").replaceFirst("^git version ", "");
        return new Versions(gt, dolt, git);
    }

    /**
     * Objects sent at once (fetched, for the previous file index): a cycle's few small files wait for R2's round
     * trips, not for the link.
     */
    static final int TRANSFERS = 4;

    /**
     * Uploads every object of the snapshot (a file, or a piece of one) the bucket does not hold yet, TRANSFERS at a
     * time. One it holds is skipped when the previous snapshot uses it (garbage collection keeps it) or it is
     * young enough that collection cannot take it before this sync publishes (an upload of an interrupted sync:
     * a large git pack or dolt table file goes on from the pieces that sync stored).
     */
    private Transfer upload(Snapshot snapshot, Manifest base) throws IOException {
        Instant t = Instant.now();
        Keys keys = config.keys();
        Set<String> baseKeys = base == null ? Set.of() : base.objects().stream().map(keys::object).collect(Collectors.toSet());
        Instant freshAfter = t.minus(history.gcGrace.dividedBy(2));
        Map<String, ObjectUpload> toUpload = new LinkedHashMap<>();
        int files = 0;
        int present = 0;
        for (Snapshot.Artifact a : snapshot.files()) {
            int before = toUpload.size();
            for (FileEntry.Part part : a.entry().parts()) {
                String key = keys.object(part.object());
                StoredObject stored = snapshot.storedAs(part.object());
                boolean keep = stored != null
                        && (baseKeys.contains(key) || (stored.modified() != null && stored.modified().isAfter(freshAfter)));
                if (keep || toUpload.containsKey(key)) continue;
                if (a.local() == null)
                    throw new R2Exception(R2Common.EXIT_FAILED, "sync " + snapshot.timestamp() + ": " + key + " is gone from the bucket "
                            + "and has no local copy; the next sync starts that part afresh");
                toUpload.put(key, new ObjectUpload(key, a.local(), part));
            }
            if (toUpload.size() > before) files++;
            else present++;
        }
        long bytes = toUpload.values().stream().mapToLong(u -> u.part().object().size()).sum();
        Progress progress = new Progress("upload", bytes);
        Parallel.run(TRANSFERS, toUpload.values().stream().<Parallel.Task>map(u -> () -> store.putFile(u.key(), u.local(),
                u.part().offset(), u.part().object(), progress)).collect(Collectors.toList()));
        progress.finish();
        Log.info("sync " + snapshot.timestamp() + ": uploaded " + files + " files (" + Log.bytes(bytes) + " in " + toUpload.size()
                + " objects), " + present + " already stored, in " + Log.seconds(Duration.between(t, Instant.now())));
        return new Transfer(bytes, files, present);
    }

    record ObjectUpload(String key, Path local, FileEntry.Part part) {}

    /**
     * Publishes the snapshot: creates its manifest.json under a timestamp newer than latest.json's (only if no
     * other writer has that timestamp), then moves latest.json to it.
     */
    private Manifest publish(PointerState previous, Snapshot snapshot, Versions versions, String writer) {
        Instant candidate = Keys.parse(snapshot.timestamp());
        if (previous.pointer() != null) {
            Instant latest = Keys.parse(previous.pointer().timestamp());
            if (!candidate.isAfter(latest)) candidate = latest.plusSeconds(1);
        }
        for (int attempt = 0; attempt < 30; attempt++, candidate = candidate.plusSeconds(1)) {
            Manifest manifest = snapshot.manifest(Keys.format(candidate), config.townId(), config.townRoot().toString(), versions,
                    history.policy());
            byte[] json = R2Common.toJson(manifest);
            try {
                store.putIfMatch(config.keys().object(manifest.timestamp(), Keys.MANIFEST), json, null);
            } catch (PreconditionFailed e) {
                continue;   // another writer holds this second; take the next one
            }
            manifests.put(manifest.timestamp(), manifest);
            movePointer(previous, manifest, json, writer);
            return manifest;
        }
        throw new R2Exception(R2Common.EXIT_FAILED, "sync: could not create a manifest under a free timestamp after 30 tries");
    }

    /**
     * Moves latest.json with a conditional write on the ETag read at the start: if another writer moved it
     * meanwhile, a newer snapshot of theirs is never replaced, and ours is discarded.
     */
    private void movePointer(PointerState previous, Manifest manifest, byte[] manifestJson, String writer) {
        String timestamp = manifest.timestamp();
        byte[] pointer = R2Common.toJson(new Pointer(timestamp, Sha256.of(manifestJson), writer));
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
        manifests.remove(timestamp);
        store.delete(store.list(config.keys().snapshot(timestamp)).stream().map(StoredObject::key).collect(Collectors.toList()));
    }

    /**
     * Applies the history policy to the snapshots up to ours, then collects the objects no remaining snapshot
     * uses. Never touches ours (the one latest.json names) or anything newer (another writer's). Snapshots of
     * an older format stay until --keep snapshots of this one exist: until then they may be the only copy the
     * previous version of this tool can restore. A prefix without a manifest is the leftover of an older
     * version's interrupted sync.
     */
    private void applyHistory(String current, HistoryState listed, Collection<StoredObject> objects) {
        Map<String, List<StoredObject>> byTimestamp = new TreeMap<>(Comparator.reverseOrder());
        byTimestamp.putAll(listed.snapshots());
        byTimestamp.putIfAbsent(current, List.of());   // published after the listing
        List<String> ours = new ArrayList<>();
        List<String> olderFormat = new ArrayList<>();
        List<String> unfinished = new ArrayList<>();
        for (Map.Entry<String, List<StoredObject>> e : byTimestamp.entrySet()) {
            String ts = e.getKey();
            if (ts.compareTo(current) > 0) continue;
            boolean complete = ts.equals(current) || hasManifest(ts, e.getValue());
            int format = complete ? formatOf(ts) : -1;
            if (!complete) unfinished.add(ts);
            else if (Manifest.reads(format)) ours.add(ts);
            else if (format > 0 && format < Manifest.OLDEST_READ) olderFormat.add(ts);
            // else unreadable now, or a newer version's: never removed by this one
        }
        Map<String, String> kept = history.policy().keep(ours);
        List<String> removed = ours.stream().filter(ts -> !kept.containsKey(ts) && !ts.equals(current)
                && !listed.held().snapshots().containsKey(ts)).collect(Collectors.toList());
        int keptCount = ours.size() - removed.size();
        if (keptCount >= history.last) removed.addAll(olderFormat);
        removed.addAll(unfinished);
        List<String> doomed = new ArrayList<>();
        for (String ts : removed) byTimestamp.get(ts).forEach(o -> doomed.add(o.key()));
        if (!doomed.isEmpty()) store.delete(doomed);
        removed.forEach(ts -> {
            manifests.remove(ts);
            formats.remove(ts);
        });
        if (!removed.isEmpty()) Log.info("sync " + current + ": history policy (" + history.policy().describe() + ") removed "
                + removed.size() + " snapshot(s) " + removed + "; " + keptCount + " kept");
        collectGarbage(current, byTimestamp.keySet().stream().filter(ts -> !removed.contains(ts)).collect(Collectors.toList()),
                objects, listed.pendingUploads());
    }

    /** Deletes the objects none of the remaining snapshots uses, once they are older than the grace period. */
    private void collectGarbage(String current, List<String> remaining, Collection<StoredObject> objects, List<PendingUpload> pending) {
        Keys keys = config.keys();
        Set<String> used = new HashSet<>();
        for (String ts : remaining) {
            int format = formatOf(ts);
            if (format > 0 && format < Manifest.OLDEST_READ) continue;   // an older format keeps its files under its own prefix
            Manifest m = Manifest.reads(format) ? manifests.get(ts) : null;
            if (m == null) {
                // Unreadable, or written by a newer version: what it uses is unknown, so nothing may go.
                Log.warn("sync " + current + ": garbage collection skipped: the manifest of " + ts + " cannot be read"
                        + (format > Manifest.FORMAT ? " (format " + format + ", newer than this tool's)" : ""));
                return;
            }
            m.objects().forEach(o -> used.add(keys.object(o)));
        }
        GarbageCollector.Collected c = GarbageCollector.collect(store, objects, pending, used, history.gcGrace, Instant.now());
        if (c.deleted() > 0 || c.young() > 0)
            Log.info("sync " + current + ": garbage collection removed " + c.deleted() + " unused object(s) (" + Log.bytes(c.bytes())
                    + "); " + c.young() + " unused but younger than " + DurationConverter.format(history.gcGrace) + " kept ("
                    + Log.bytes(c.youngBytes()) + ")");
    }

    /** A complete snapshot's manifest in a format this tool reads, read once and remembered; null for another format. */
    private Manifest manifest(String timestamp) {
        if (!manifests.containsKey(timestamp) && !formats.containsKey(timestamp)) {
            Optional<Versioned> json = store.get(config.keys().object(timestamp, Keys.MANIFEST));
            if (json.isEmpty()) throw new R2Exception(R2Common.EXIT_FAILED, "manifest of " + timestamp + " is missing");
            int format = Manifest.formatOf(json.get().data());
            formats.put(timestamp, format);
            if (Manifest.reads(format))
                manifests.put(timestamp, R2Common.fromJson(json.get().data(), Manifest.class, "manifest of " + timestamp));
        }
        return manifests.get(timestamp);
    }

    /**
     * The manifest format of a complete snapshot, read once and remembered; -1 when it cannot be read (such a
     * snapshot is never removed, and garbage collection waits until it can be read).
     */
    private int formatOf(String timestamp) {
        try {
            Manifest manifest = manifest(timestamp);
            if (manifest != null) return manifest.formatVersion();
        } catch (R2Exception e) {
            formats.putIfAbsent(timestamp, -1);
        }
        return formats.get(timestamp);
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
        body.put("filesAlreadyStored", result.transfer().present());
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
        Verification.last(config.stateDir()).ifPresent(v -> state.put("lastVerify", v.at() + " " + v.status()));
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

    record Transfer(long bytes, int uploaded, int present) {
        static final Transfer NONE = new Transfer(0, 0, 0);
    }

    record SyncResult(String timestamp, List<Problem> problems, Transfer transfer, Duration took) {
        int exitCode() {
            return problems.isEmpty() ? R2Common.EXIT_OK : R2Common.EXIT_PARTIAL;
        }
    }

    /** What one sync has built so far: files to upload (or already stored), facts, and problems. */
    static final class Snapshot {
        /**
         * A file of the snapshot and the local file it goes up from: written into the work dir, or used where it
         * is (a database's backup file, a repo's only pack); null: the bucket holds it, from an earlier snapshot.
         */
        record Artifact(FileEntry entry, Path local) {}

        interface Step {
            void run() throws IOException;
        }

        private final String timestamp;
        private final Path dir;
        private final Keys keys;
        /** The bucket's objects when the sync started. */
        final Map<String, StoredObject> stored;
        /** The snapshot this one builds on (its files are carried over when a part fails), or null. */
        private final String baseTimestamp;
        private final List<Artifact> files = new ArrayList<>();
        private final List<DatabaseFacts> databases = new ArrayList<>();
        private final List<RepoFacts> repos = new ArrayList<>();
        private final List<Problem> problems = new ArrayList<>();
        /** The file index pieces in order, with their local files; the catalog of contents that goes with them. */
        private Map<FileEntry, Path> fileIndex = Map.of();
        private Path catalog;
        private Map<String, Long> liveBytes = Map.of();
        private int succeeded;
        private int attempted;

        Snapshot(String timestamp, Path dir, Keys keys, Map<String, StoredObject> stored, String baseTimestamp) {
            this.timestamp = timestamp;
            this.dir = dir;
            this.keys = keys;
            this.stored = stored;
            this.baseTimestamp = baseTimestamp;
        }

        String timestamp() { return timestamp; }
        Path dir() { return dir; }
        List<Artifact> files() { return files; }
        List<DatabaseFacts> databases() { return databases; }
        List<RepoFacts> repos() { return repos; }

        void add(FileEntry entry, Path local) {
            files.add(new Artifact(entry, local));
        }

        void reuse(FileEntry entry) {
            files.add(new Artifact(entry, null));
        }

        /** True when the bucket held this file (every object it is stored as) when the sync started. */
        boolean stored(FileEntry entry) {
            return entry.parts().stream().allMatch(p -> storedAs(p.object()) != null);
        }

        /** The object as the bucket listed it when the sync started, or null when it did not hold it. */
        StoredObject storedAs(FileEntry object) {
            StoredObject o = stored.get(keys.object(object));
            return o != null && o.size() == object.size() ? o : null;
        }

        /**
         * Runs one part of the backup. A part whose source fails (a locked database, a corrupt repo) is
         * recorded as a problem and, where the previous snapshot has it and the bucket still holds its files,
         * carried over from there, marked. A local disk failure (no space) fails the whole sync instead:
         * nothing would be trustworthy.
         */
        void attempt(String part, List<FileEntry> previousFiles, DatabaseFacts previousDb, RepoFacts previousRepo, Step step) {
            attempted++;
            int filesBefore = files.size();
            try {
                step.run();
                succeeded++;
            } catch (IOException | R2Exception | IllegalArgumentException | java.io.UncheckedIOException e) {
                // Its dolt or git was killed because the cycle is being stopped or abandoned: the source is fine.
                if (Proc.shuttingDown || Thread.currentThread().isInterrupted())
                    throw new R2Exception(R2Common.EXIT_FAILED, "sync " + timestamp + ": stopped", e);
                String error = R2Cli.messageChain(e);
                if (error.toLowerCase(Locale.ROOT).contains("no space left"))
                    throw new R2Exception(R2Common.EXIT_FAILED, "sync: " + part + ": " + error, e);
                files.subList(filesBefore, files.size()).clear();
                String carried = null;
                boolean canCarry = (previousDb != null || previousRepo != null) && previousFiles.stream().allMatch(this::stored);
                if (canCarry) {
                    previousFiles.forEach(this::reuse);
                    if (previousDb != null) databases.add(previousDb);
                    if (previousRepo != null)
                        repos.add(previousRepo.carriedFrom(previousRepo.carriedFrom() != null ? previousRepo.carriedFrom() : baseTimestamp));
                    carried = baseTimestamp;
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

        Manifest manifest(String publishedAs, String townId, String townRoot, Versions versions, HistoryPolicy history) {
            // In path order: two snapshots of the same town list the same files the same way.
            List<FileEntry> entries = files.stream().map(Artifact::entry).sorted(Comparator.comparing(FileEntry::path)).toList();
            return new Manifest(Manifest.FORMAT, R2Common.VERSION, townId, publishedAs, Instant.now().toString(), townRoot, versions,
                    history, entries, fileIndex.keySet().stream().map(FileEntry::path).toList(), databases, repos, problems);
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

    private static void awaitQuietly(CountDownLatch latch, Duration max) {
        try {
            latch.await(max.toMillis(), TimeUnit.MILLISECONDS);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }
}

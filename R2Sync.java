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
                        + "and garbage collection remove what no kept snapshot needs (or r2-prune does, from outside the "
                        + "sandbox: --prune external; a credential that cannot delete defers them there too).",
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

    @Mixin
    IntervalOption intervalOption = new IntervalOption();

    @Option(names = "--lock-file", defaultValue = "${env:R2_SYNC_LOCK:-/tmp/r2-sync.lock}", paramLabel = "FILE",
            description = "Lock that serializes syncs on this machine (env R2_SYNC_LOCK, default ${DEFAULT-VALUE}).")
    Path lockFile;

    @Option(names = "--lock-wait", defaultValue = "${env:R2_SYNC_LOCK_WAIT:-10m}", converter = DurationConverter.class,
            paramLabel = "DURATION", description = "How long to wait for a running sync to finish before giving up "
            + "(env R2_SYNC_LOCK_WAIT, default ${DEFAULT-VALUE}).")
    Duration lockWait;

    @Mixin
    WorkDirOption workDirOption = new WorkDirOption();

    @Mixin
    HistoryOptions history = new HistoryOptions();

    @Mixin
    PruneOption prune = new PruneOption();

    @Option(names = "--verify-every", defaultValue = "${env:R2_VERIFY_EVERY:-24h}", converter = DurationConverter.class,
            paramLabel = "DURATION", description = "How often the daemon checks, beside its syncs, that the latest snapshot "
            + "restores (a trial restore, as r2-restore --verify) and reads back a seventh of every stored object (each is "
            + "read again within a week); 0 turns it off (env R2_VERIFY_EVERY, default ${DEFAULT-VALUE}).")
    Duration verifyEvery;

    @Option(names = "--take-over", description = "Make this volume the town's writer although latest.json was written by "
            + "another (after moving the town to a new machine by hand); without it such a sync refuses.")
    boolean takeOver;

    private Duration interval;
    private Path workDir;
    private Config config;
    private ObjectStore store;
    private Snapshots snapshots;
    private Heartbeat heartbeat;
    /** The last published manifest, kept at hand so the next cycle can skip what did not change. */
    private Manifest lastManifest;
    /** Pruning left to r2-prune is said loudly once a run (a refused delete: WARN; R2_PRUNE=external: INFO), then quietly. */
    private boolean pruningDeferredSaid;
    private final Lifetime lifetime = new Lifetime();

    public static void main(String... args) {
        System.exit(R2Cli.run(new R2Sync(), args));
    }

    @Override
    public Integer call() {
        config = r2.toConfig();
        history.policy();
        interval = intervalOption.value();
        workDir = workDirOption.dir;
        if (verifyEvery.isNegative()) throw R2Options.usage("--verify-every must not be negative (0 turns verification off)");
        if (immediate) Town.requireTown(config.townRoot());
        heartbeat = new Heartbeat(config);
        if (!config.sealed())
            Log.info("sync: the backups of town " + config.townId() + " are not sealed (no R2_ENCRYPTION_KEY): whoever can read the "
                    + "bucket reads the town, and whoever can write it can plant a snapshot");
        // However the JVM ends (SIGTERM, SIGINT), no dolt or git child outlives it.
        Runtime.getRuntime().addShutdownHook(new Thread(Proc::killAll, "r2-sync-kill-children"));
        try (ObjectStore opened = ObjectStore.open(config)) {
            store = opened;
            snapshots = new Snapshots(store, config);
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
            lifetime.shutDown();
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
            if (!finalSyncAsked.get() || lifetime.shuttingDown()) return R2Common.EXIT_OK;
            synchronized (this) {   // abandonCycle has run to its end: its interrupt is cleared, not left for this sync
                Thread.interrupted();
                lifetime.resume();
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
        Verification.Result r = Verification.run(snapshots, config, workDir.resolve("verify"));
        if (r.failed())
            Log.error("verify: FAILED: the backup of town " + config.townId() + " is damaged or cannot be checked (" + r.snapshot() + "): "
                    + r.error() + ". Run r2-restore --verify, and look at r2-restore --list");
        else
            Log.info("verify: " + r.status() + (r.snapshot() == null ? "" : ": snapshot " + r.snapshot() + " restores") + "; "
                    + r.objectsRead() + " stored objects read back (" + Log.bytes(r.bytesRead()) + ") in " + Log.seconds(Duration.ofMillis(r.durationMs())));
        heartbeat.send(Report.verify(config.townId(), r.status(), r.snapshot(), r.objectsRead(), r.bytesRead(), r.durationMs(), r.error()));
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
        lifetime.abandon();
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
             Background<History.HistoryState> historyRead = Background.start(() -> {
                 bucketRead.join();   // not to slow down the reads the packing waits for
                 return prune.self() ? History.read(snapshots) : null;
             })) {
            Town town;
            try (Background<Void> zstd = Background.start(PackWriter::loadZstd)) {   // beside the scan, which does not need it
                town = Town.scan(config.townRoot(), work.resolve("scan"));
                zstd.join();
            }
            try (Background<Map<String, Object>> doltBackups = Background.start(() -> DoltCapture.runDoltBackups(config, town));
                 Background<Versions> versions = Background.start(() -> versions(work.resolve("version-probe")))) {
                BucketState bucket = bucketRead.join();
                refuseAfterFailedRestore(bucket);
                String writer = snapshots.requireWriter(bucket.latest(), takeOver);
                Manifest base = bucket.base();
                refuseEmptyTownOverBackup(town, base);
                Log.info("sync " + timestamp + ": started for town " + config.townId());
                Snapshot snapshot = new Snapshot(timestamp, work, Keys.of(config), bucket.stored(), base == null ? null : base.timestamp(), lifetime);
                Map<Path, List<WorkTreeFacts>> workTrees = GitCapture.inspectWorkTrees(town, snapshot);
                FileCapture files = new FileCapture(config, store);
                files.pack(town, snapshot, base);
                GitCapture.packRepos(town, workTrees, snapshot, base);
                DoltCapture.addDatabases(town, snapshot, base, doltBackups.join());
                snapshot.requireSomethingBackedUp();
                Snapshots.Transfer transfer = snapshots.upload(snapshot, base, history.gcGrace);
                Manifest manifest = snapshots.publish(bucket.latest(), snapshot, versions.join(), writer, history.policy());
                lastManifest = manifest;
                files.keep(snapshot);
                String pruning = applyHistory(manifest.timestamp(), historyRead, bucket);
                SyncResult result = new SyncResult(manifest.timestamp(), manifest.problems(), transfer, Duration.between(start, Instant.now()),
                        pruning);
                report(result, null);
                recordLastSync(result, null);
                return result;
            }
        }
    }

    /**
     * The history policy and garbage collection once the snapshot is published; returns how they ended (the heartbeat's
     * and last-sync.json's pruning: done, deferred or failed). The snapshot is published whatever happens here: what is
     * left behind is the next sync's to remove, or r2-prune's when the store refuses this credential's deletes (the
     * sandbox's may write but not delete: docs/security.md).
     */
    private String applyHistory(String timestamp, Background<History.HistoryState> historyRead, BucketState bucket) {
        if (!prune.self()) {
            if (!pruningDeferredSaid) Log.info("sync " + timestamp + ": the history policy and garbage collection are left to r2-prune (R2_PRUNE=external)");
            pruningDeferredSaid = true;
            return History.Outcome.DEFERRED;
        }
        try {
            History.Outcome outcome = new History(snapshots, history).apply(timestamp, historyRead.join(), bucket.stored().values());
            if (outcome.pruning().equals(History.Outcome.DEFERRED)) {
                String line = "sync " + timestamp + ": history policy and garbage collection deferred to r2-prune: " + outcome.reason();
                if (pruningDeferredSaid) Log.info(line);
                else Log.warn(line + "; the snapshot is published all the same. Run r2-prune with a credential that can delete, "
                        + "and set R2_PRUNE=external so that syncs do not try (docs/security.md)");
                pruningDeferredSaid = true;
            }
            return outcome.pruning();
        } catch (R2Exception | IOException e) {
            Log.warn("sync " + timestamp + ": history policy or garbage collection failed, the next sync retries it: " + R2Cli.messageChain(e));
            return History.Outcome.FAILED;
        }
    }

    /** Reports a failed sync, unless the JVM is shutting down: then the cycle is abandoned, not failed. */
    private R2Exception fail(String timestamp, Instant start, R2Exception failure) {
        if (lifetime.shuttingDown() || lifetime.abandoning()) {
            Log.info("sync " + timestamp + ": abandoned (" + (lifetime.shuttingDown() ? "shutting down" : "a final sync follows")
                    + "); what it uploaded is collected later");
            return failure;
        }
        SyncResult result = new SyncResult(timestamp, List.of(), Snapshots.Transfer.NONE, Duration.between(start, Instant.now()), null);
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
                : bucket.restoreFailed() ? Optional.of(Keys.of(config).restoreFailed() + " in the bucket") : Optional.empty();
        marker.ifPresent(where -> {
            throw new R2Exception(R2Common.EXIT_FAILED, "sync: a restore of town " + config.townId() + " failed (" + where
                    + "); a sync now would replace the good backups with this incomplete town. Fix the restore "
                    + "(r2-restore --list / --snapshot), or run r2-restore --forget-failure to back up the town as it is.");
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

    /** What a sync needs from the bucket before it packs: the pointer, the snapshot it names, and every stored object. */
    record BucketState(Snapshots.Latest latest, Manifest base, Map<String, StoredObject> stored, boolean restoreFailed) {}

    /** The listing runs beside the two reads that depend on each other: a round trip or more less on R2. */
    private BucketState readBucket() throws IOException {
        try (Background<Map<String, StoredObject>> listing = Background.start(snapshots::storedObjects)) {
            Snapshots.Latest latest = snapshots.latestToReplace();
            Manifest base = previousManifest(latest);
            boolean restoreFailed = RestoreState.failedInBucket(store, config);
            return new BucketState(latest, base, listing.join(), restoreFailed);
        }
    }

    /** The snapshot latest.json names, whose objects this one reuses; null means everything is uploaded. */
    private Manifest previousManifest(Snapshots.Latest previous) {
        if (previous.pointer() == null) return null;
        String ts = previous.pointer().timestamp();
        if (lastManifest != null && lastManifest.timestamp().equals(ts)) return lastManifest;
        try {
            Manifest manifest = snapshots.manifest(ts);
            String key = snapshots.keys().keyId();
            if (manifest != null && !Objects.equals(manifest.keyId(), key)) {
                Log.info("sync: the previous snapshot " + ts + " is " + (manifest.sealed() ? "sealed with key " + manifest.keyId() : "unsealed")
                        + "; this one is sealed " + (key == null ? "by no key" : "with key " + key) + " and stores every object anew; the "
                        + "older snapshots stay until the history policy retires them");
                return null;
            }
            if (manifest == null)
                Log.info("sync: the previous snapshot " + ts + " is in manifest format " + snapshots.formatOf(ts) + "; this one is written in "
                        + "format " + Manifest.FORMAT + " from scratch, and the older snapshots are kept until "
                        + history.last + " of format " + Manifest.FORMAT + " exist");
            return manifest;
        } catch (R2Exception e) {
            Log.warn("sync: previous manifest unusable, uploading everything: " + e.getMessage());
            return null;
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

    /** The heartbeat (and the log line) of a sync that published, or failed. */
    private void report(SyncResult result, R2Exception failure) {
        String status = failure != null ? "failed" : result.problems().isEmpty() ? "ok" : "partial";
        List<String> problems = result.problems().stream().map(p -> p.part() + ": " + p.error()).collect(Collectors.toList());
        if (failure == null)
            Log.info("sync " + result.timestamp() + ": " + status + " in " + Log.seconds(result.took())
                    + (problems.isEmpty() ? "" : "; NOT backed up: " + problems));
        heartbeat.send(Report.sync(config.townId(), status, result.timestamp(), result.took().toMillis(), result.transfer().bytes(),
                result.transfer().uploaded(), result.transfer().present(), problems, result.pruning(),
                failure == null ? null : R2Cli.messageChain(failure)));
    }

    /** The outcome of the last sync on this machine, for the status view. */
    private void recordLastSync(SyncResult result, R2Exception failure) {
        String status = failure != null ? "failed" : result.problems().isEmpty() ? "ok" : "partial";
        new LastSync(config.townId(), Instant.now().toString(), status, result.timestamp(), result.took().toMillis(),
                failure == null ? null : Log.redact(R2Cli.messageChain(failure)),
                Verification.last(config.stateDir()).map(v -> v.at() + " " + v.status()).orElse(null), result.pruning()).write(config.stateDir());
    }

    // ---------------------------------------------------------------------------------------------
    // Helpers
    // ---------------------------------------------------------------------------------------------

    /** pruning: how the history policy and garbage collection ended (History.Outcome), null when the sync failed. */
    record SyncResult(String timestamp, List<Problem> problems, Snapshots.Transfer transfer, Duration took, String pruning) {
        int exitCode() {
            return problems.isEmpty() ? R2Common.EXIT_OK : R2Common.EXIT_PARTIAL;
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

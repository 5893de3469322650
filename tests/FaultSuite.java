import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.nio.file.attribute.PosixFilePermissions;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Random;
import java.util.Set;
import java.util.SortedMap;
import java.util.TreeMap;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.function.Predicate;
import java.util.stream.Collectors;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.MethodOrderer;
import org.junit.jupiter.api.TestInstance;
import org.junit.jupiter.api.TestMethodOrder;
import org.junit.jupiter.api.extension.ExtendWith;
import org.junit.jupiter.api.extension.ExtensionContext;
import org.junit.jupiter.api.extension.TestInstanceFactory;
import org.junit.jupiter.api.extension.TestInstanceFactoryContext;

/**
 * The fault suite: every fault is injected for real into real product processes (R2Sync and R2Restore
 * as child JVMs, real git, real dolt, S3Proxy behind {@link FaultProxy}), and after each one the suite
 * checks the promise of issue 4: latest.json always names a complete snapshot that verifies and
 * restores to the town it was taken from, nothing on the volume is lost or damaged, and every failure
 * says what went wrong. Each fault is counted; after the fault classes of a run the suite prints the figures once,
 * e.g. {@code fault suite: 103 faults injected, 103 survived, 0 data lost}, also written to /tmp/fault-figures.txt.
 *
 * <p>One class per group, each extending this one and starting only the lanes its group needs: {@link FaultCrashTest}
 * (kill -9 of the sync at every phase, in three chains: local phases, uploads and retention, a pack stored in pieces),
 * {@link FaultStorageSyncTest} and {@link FaultStorageRestoreTest} (500/503, stalls, resets, cut bodies, lost answers
 * during sync and restore), {@link FaultFullDiskTest}, {@link FaultTwoWritersTest}, {@link FaultHostileTest} (hostile
 * and broken backups), {@link FaultLocalStateTest} (bad local state) and {@link FaultSecretsTest} (secrets in every
 * output). A group shares one town and bucket (a "lane"); a test method waits for its group and reports it.
 *
 * <p>The fault classes a run selects (the whole suite, or e.g. {@code tests/run FaultCrashTest FaultHostileTest}) run
 * side by side: the first of them to start starts the lanes of all of them, LANES at a time, longest first, and waits
 * for every lane before it ends, so that no other test class runs beside them. JUnit's instance of each fault class is
 * the one whose lanes were started ({@link StartedInstance}).
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
@TestMethodOrder(MethodOrderer.OrderAnnotation.class)
@ExtendWith(FaultSuite.StartedInstance.class)
abstract class FaultSuite {
    static final Duration SYNC_TIMEOUT = Duration.ofMinutes(3);
    static final Duration POINT_TIMEOUT = Duration.ofSeconds(90);
    static final int KEEP = 3;
    /** A file pack's key: incremental/files/packs/{pack id}/{sha256}. */
    static final String PACK = "/" + PackWriter.DIR;
    /** A piece of the file index: incremental/files/index/{sha256}/{sha256}. */
    static final String INDEX_PIECE = "/" + IndexWriter.DIR;
    /** A chain link's pack, not its index: incremental/git/{repo}.packs/{n}.pack/{sha256}. */
    static final Predicate<FaultProxy.Request> GIT_PACK_FILE = r -> r.key().contains(".pack/");
    /** Over four pieces (Pieces.SIZE), so its pack goes up as five objects, four at a time. */
    static final int BIG_FILE = 70 * 1000 * 1000;
    /** Enough to fill the small filesystems of the full-disk faults (and cheaper to move than BIG_FILE). */
    static final int MEDIUM_FILE = 12 * 1000 * 1000;

    /** The second machine of the two-writer group (FLY_MACHINE_ID: the writer id is made of it and the town root). */
    static final String OTHER_MACHINE = "fault-other-machine";

    /** Lanes (independent towns and buckets) run this many at a time: some wait on holds, stalls and backoff. */
    static final int LANES = 4;

    /** The fault classes in the order their lanes start when a run selects several: longest first. */
    private static final List<Class<? extends FaultSuite>> LONGEST_FIRST = List.of(FaultCrashTest.class, FaultStorageSyncTest.class,
            FaultStorageRestoreTest.class, FaultFullDiskTest.class, FaultHostileTest.class, FaultLocalStateTest.class,
            FaultTwoWritersTest.class, FaultSecretsTest.class);

    // What the fault classes of one JVM share: the tally, the threads the lanes run on, an S3 client of the suite's own.
    private static final FaultKit.Tally TALLY = new FaultKit.Tally();
    private static final ExecutorService LANE_THREADS = Executors.newFixedThreadPool(LANES, daemon("fault-lane"));
    private static final ExecutorService HELPERS = Executors.newCachedThreadPool(daemon("fault-helper"));
    /** The instance of each fault class, made when its lanes start or when JUnit asks for it, whichever comes first. */
    private static final Map<Class<?>, FaultSuite> INSTANCES = new LinkedHashMap<>();
    private static FaultKit.Store sharedStore;

    final S3Server s3 = S3Server.shared();
    final FaultKit.Store store = sharedStore();
    /** What this class's lanes leave open (lanes, heartbeat receivers): closed when they have all ended. */
    final List<AutoCloseable> closeAtEnd = new ArrayList<>();
    private final Map<String, FaultKit.Group> groups = new ConcurrentHashMap<>();
    private final Map<String, CompletableFuture<Void>> tasks = new ConcurrentHashMap<>();
    // Guarded by INSTANCES: the lanes were started; they ended, were closed and their figures printed.
    private boolean started;
    private boolean finished;

    /** Submits this class's lanes ({@link #submit}): called once, maybe before JUnit reaches the class. */
    abstract void start();

    /** Starts this class's lanes and those of the run's other fault classes, unless they started already. */
    @BeforeAll
    final void startSelected() {
        synchronized (INSTANCES) {
            for (Class<?> c : selectedFaultClasses(getClass())) {
                FaultSuite suite = instance(c);
                if (!suite.started) {
                    suite.started = true;
                    suite.start();
                }
            }
        }
    }

    /** This class and the fault classes of the run's plan (none outside AllTests), longest first. */
    private static List<Class<?>> selectedFaultClasses(Class<?> self) {
        Set<String> names = new HashSet<>(AllTests.plannedClasses());
        names.add(self.getName());
        List<Class<?>> classes = new ArrayList<>();
        for (String name : names) {
            try {
                Class<?> c = Class.forName(name, false, FaultSuite.class.getClassLoader());
                if (FaultSuite.class.isAssignableFrom(c) && c != FaultSuite.class) classes.add(c);
            } catch (ClassNotFoundException e) {
                throw new IllegalStateException("the test plan names a class that does not load: " + name, e);
            }
        }
        classes.sort(Comparator.comparingInt(c -> LONGEST_FIRST.contains(c) ? LONGEST_FIRST.indexOf(c) : LONGEST_FIRST.size()));
        return classes;
    }

    /** The group of that name; its faults count in the suite's tally. */
    FaultKit.Group group(String name) {
        return groups.computeIfAbsent(name, TALLY::group);
    }

    /** Runs a lane on the lane threads; a failure that escapes it fails each group named. */
    void submit(FaultKit.Body body, String... groupNames) {
        CompletableFuture<Void> task = CompletableFuture.runAsync(() -> {
            try {
                body.run();
            } catch (Throwable e) {
                for (String g : groupNames) group(g).error("lane aborted", e);
            }
        }, LANE_THREADS);
        for (String g : groupNames) tasks.put(g, task);
    }

    /** Waits for the group's lane and fails with every fault the group did not survive. */
    void check(String groupName) {
        CompletableFuture<Void> task = tasks.get(groupName);
        if (task == null) throw new AssertionError(getClass().getSimpleName() + " started no lane for " + groupName);
        task.join();
        group(groupName).check();
    }

    /**
     * Waits for every lane started so far (after the run's first fault class: every lane of the run), closes what they
     * left open, and prints the figures when lanes ended since the last line: once for fault classes started together.
     */
    @AfterAll
    final void report() throws IOException {
        List<FaultSuite> started;
        synchronized (INSTANCES) {
            started = INSTANCES.values().stream().filter(s -> s.started).collect(Collectors.toList());
        }
        boolean ended = false;
        for (FaultSuite suite : started) ended |= suite.awaitAndClose();
        if (!ended) return;
        System.out.println("      cpu: " + cpuReport());
        String line = TALLY.line();
        StringBuilder figures = new StringBuilder(line).append('\n');
        new TreeMap<>(TALLY.perGroup).forEach((g, n) -> figures.append("  ").append(g).append(": ").append(n).append(" faults\n"));
        Files.writeString(Path.of("/tmp/fault-figures.txt"), figures.toString());
        System.out.println(line);
        System.out.flush();
    }

    /** Waits for this class's lanes; the first time, closes what they left open and returns true (figures to print). */
    private boolean awaitAndClose() {
        for (CompletableFuture<Void> t : tasks.values()) t.handle((v, e) -> null).join();
        synchronized (INSTANCES) {
            if (finished) return false;
            finished = true;
        }
        for (AutoCloseable c : closeAtEnd) {
            try {
                c.close();
            } catch (Exception e) {
                System.out.println("      cleanup: " + e);
            }
        }
        return true;
    }

    /** The instance of a fault class (made on first use). */
    private static FaultSuite instance(Class<?> c) {
        synchronized (INSTANCES) {
            FaultSuite suite = INSTANCES.get(c);
            if (suite == null) {
                try {
                    suite = (FaultSuite) c.getDeclaredConstructor().newInstance();
                } catch (ReflectiveOperationException e) {
                    throw new IllegalStateException("cannot make an instance of " + c.getName() + ": " + e, e);
                }
                INSTANCES.put(c, suite);
            }
            return suite;
        }
    }

    /** JUnit's instance of a fault class is the one whose lanes started (maybe before JUnit reached the class). */
    static final class StartedInstance implements TestInstanceFactory {
        @Override
        public Object createTestInstance(TestInstanceFactoryContext factory, ExtensionContext context) {
            return instance(factory.getTestClass());
        }
    }

    private static synchronized FaultKit.Store sharedStore() {
        if (sharedStore == null) sharedStore = new FaultKit.Store(S3Server.shared().client());
        return sharedStore;
    }

    /** Where the CPU went: this JVM (proxy, checks), the S3 server, and every finished child (product, dolt, git). */
    private static String cpuReport() {
        try {
            String[] f = Files.readString(Path.of("/proc/self/stat")).split("\\) ")[1].split(" ");
            double children = (Long.parseLong(f[13]) + Long.parseLong(f[14])) / 100.0;
            double self = ProcessHandle.current().info().totalCpuDuration().map(d -> d.toMillis() / 1000.0).orElse(-1.0);
            double s3 = ProcessHandle.current().children().filter(h -> h.info().commandLine().orElse("").contains("s3proxy"))
                    .mapToDouble(h -> h.info().totalCpuDuration().map(d -> d.toMillis() / 1000.0).orElse(0.0)).sum();
            return String.format(Locale.ROOT, "test JVM %.0f s, S3 server %.0f s, finished children %.0f s", self, s3, children);
        } catch (IOException | RuntimeException e) {
            return "unknown (" + e + ")";
        }
    }

    private static java.util.concurrent.ThreadFactory daemon(String name) {
        return r -> {
            Thread t = new Thread(r, name);
            t.setDaemon(true);
            return t;
        };
    }

    // =============================================================================================
    // The promise, checked: latest.json's snapshot is intact, verifies, and restores to its town.
    // =============================================================================================

    void assertLatestRestores(Lane lane) {
        FaultKit.Pointer p = lane.pointer();
        if (p == null || p.timestamp() == null) throw new FaultKit.DataLoss("latest.json is missing or unreadable");
        String ts = p.timestamp();
        store.assertIntact(lane.bucket, lane.townId, ts, p.manifestSha256());
        TownState expected = lane.states.get(ts);
        if (expected == null) throw new AssertionError("no recorded town state for " + ts + " (have " + lane.states.keySet() + ")");
        Path base = TestTools.tempDir("fault-restore-");
        try {
            CompletableFuture<TestTools.ProcResult> verify = CompletableFuture.supplyAsync(
                    () -> lane.restore(base.resolve("verify-root"), Map.of(), "--verify"), HELPERS);
            TestTools.ProcResult restore = lane.restore(base.resolve("town"), Map.of());
            TestTools.ProcResult v = verify.join();
            if (v.exitCode() != 0)
                throw new FaultKit.DataLoss("r2-restore --verify of " + ts + " exited " + v.exitCode() + "\n" + TestTools.tail(v.stderr(), 2000));
            if (restore.exitCode() != 0)
                throw new FaultKit.DataLoss("r2-restore of " + ts + " exited " + restore.exitCode() + "\n" + TestTools.tail(restore.stderr(), 2000));
            if (restore.stderr().contains("FALLBACK"))
                throw new FaultKit.DataLoss("the restore fell back from " + ts + "\n" + TestTools.tail(restore.stderr(), 2000));
            String diff = expected.diff(TownState.capture(base.resolve("town")));
            if (!diff.isEmpty()) throw new FaultKit.DataLoss("the town restored from " + ts + " differs from the synced one:\n" + diff);
        } finally {
            TestTools.deleteRecursively(base);
        }
    }

    /**
     * After a successful sync: no work dir, no unfinished prefix, at most KEEP snapshots, lock free. (What a
     * dead sync uploaded stays until it is older than the garbage
     * collector's grace period: it may be another machine's sync in flight. GarbageCollectionTest covers that.)
     */
    void assertCleanAfterSync(Lane lane, String abandoned, boolean abandonedComplete) {
        List<String> work = FaultKit.children(lane.workDir).stream().filter(n -> n.startsWith("r2-sync-")).collect(Collectors.toList());
        if (!work.isEmpty()) throw new AssertionError("work dirs left: " + work);
        SortedMap<String, List<String>> snaps = store.snapshots(lane.bucket, lane.townId);
        List<String> unfinished = snaps.entrySet().stream().filter(e -> !e.getValue().contains("manifest.json"))
                .map(e -> e.getKey() + e.getValue()).collect(Collectors.toList());
        if (!unfinished.isEmpty()) throw new AssertionError("unfinished snapshot prefixes left: " + unfinished);
        if (abandoned != null && !abandonedComplete && snaps.containsKey(abandoned))
            throw new AssertionError("the abandoned prefix " + abandoned + " is still there");
        if (snaps.size() > KEEP) throw new AssertionError("more than " + KEEP + " snapshots kept: " + snaps.keySet());
        if (!FaultKit.lockFree(lane.lockFile)) throw new AssertionError("the lock is held after the sync ended");
    }

    /** How a sync or a restore under a storage fault must end: it completes (exit 0) or it fails (exit 1). */
    enum Want { COMPLETES, FAILS }

    // =============================================================================================
    // After a failed restore, and after it was dealt with: the volume, the state dir and the bucket
    // =============================================================================================

    /**
     * After a failed restore: nothing under base changed but the failure marker the restore must leave at the root it
     * restored into (`.r2-restore-failed.json`, naming the town: the next container on the volume sees it), which is
     * taken out of the comparison and checked instead; the failure is recorded in the state dir and in the bucket too
     * (every machine of the town sees it). A change is data lost, checked first; a missing marker is a failure.
     */
    void assertUntouchedAfterFailedRestore(String what, SortedMap<String, String> before, Path base, Path root, Path stateDir,
                                                   String bucket, String townId) {
        SortedMap<String, String> after = FaultKit.tree(base);
        Path marker = root.resolve(RestoreState.FAILED_ON_VOLUME);
        String entry = after.remove(base.relativize(marker).toString());
        FaultKit.assertUntouched(what, before, after);
        if (entry == null || !entry.startsWith("file "))
            throw new AssertionError("no " + RestoreState.FAILED_ON_VOLUME + " file at the root after a failed restore ("
                    + (entry == null ? "missing" : entry) + "): the next container on this volume would not know");
        try {
            String named = FaultKit.JSON.readTree(Files.readAllBytes(marker)).path("townId").asText();
            if (!townId.equals(named)) throw new AssertionError(marker + " names town " + named + ", not " + townId);
        } catch (IOException e) {
            throw new AssertionError(marker + " does not parse: " + e);
        }
        if (!Files.isRegularFile(stateDir.resolve(RestoreState.FAILED)))
            throw new AssertionError("no " + RestoreState.FAILED + " in the state dir after a failed restore");
        if (store.get(bucket, new Keys(townId).restoreFailed()) == null)
            throw new AssertionError("no " + new Keys(townId).restoreFailed() + " in the bucket after a failed restore");
    }

    /** After a successful restore, or r2-restore --forget-failure: none of the three failure markers is left. */
    void assertFailureCleared(Path root, Path stateDir, String bucket, String townId) {
        List<String> left = new ArrayList<>();
        if (root != null && Files.exists(root.resolve(RestoreState.FAILED_ON_VOLUME))) left.add(root.resolve(RestoreState.FAILED_ON_VOLUME).toString());
        if (stateDir != null && Files.exists(stateDir.resolve(RestoreState.FAILED))) left.add(stateDir.resolve(RestoreState.FAILED).toString());
        if (store.get(bucket, new Keys(townId).restoreFailed()) != null) left.add(new Keys(townId).restoreFailed() + " in the bucket");
        if (!left.isEmpty()) throw new AssertionError("failed-restore markers left: " + left);
    }

    // =============================================================================================
    // Lanes and helpers
    // =============================================================================================

    /** A one-rig town with its first snapshot; with mediumFile a 12 MB file in a rig's plugins/ (for full disks). */
    Lane syncedLane(String name, boolean mediumFile) throws IOException {
        Lane lane = lane(name, TownBuilder.create().rigs("alpha"));
        if (mediumFile) writeBigFile(lane.town.root().resolve("alpha/plugins/medium.bin"), MEDIUM_FILE);
        lane.firstSync();
        return lane;
    }

    Lane lane(String name, TownBuilder builder) {
        Lane lane = new Lane(name, builder);
        synchronized (closeAtEnd) {
            closeAtEnd.add(lane);
        }
        return lane;
    }

    /**
     * A town, its bucket, a FaultProxy in front of S3, and the product's local dirs (lock, work, state),
     * plus the town state each snapshot was taken from (what its restore must give back).
     */
    final class Lane implements AutoCloseable {
        final String townId;
        final Path dir;
        final TestTown town;
        final String bucket;
        final FaultProxy proxy;
        final Path local;
        final Path workDir;
        final Path lockFile;
        private final Map<String, String> directEnv;
        private Map<String, String> syncEnv;
        /** This machine's writer id for the lane's town (the product's rule: the host name and the town root). */
        final String ownWriter;
        /**
         * Why the lane's machine is not the town's writer just now, when the suite itself moved the town: a check
         * restore of a snapshot into another root (a successful restore makes its root the writer), or a second
         * machine's --take-over in the two-writer group. The lane's town is the town's machine, and those moves are
         * the suite's checks, not a machine taking the town over: the lane's next sync of its own town takes it back
         * with --take-over (said in its log). Null while the lane is the writer: its syncs then run without it, and
         * are refused like any other machine's would be.
         */
        private volatile String writerMovedBy;
        final Map<String, TownState> states = new ConcurrentHashMap<>();
        volatile Duration lastSyncTook = Duration.ofSeconds(3);
        /** The town's state as last captured; touch() forgets it (syncs never change what it describes). */
        private TownState current;

        TownState currentState() {
            if (current == null) current = TownState.capture(town.root());
            return current;
        }

        /** Forgets the captured state after something other than a sync changed the town. */
        void forget() {
            current = null;
        }
        private int touches;
        private Path bigFile;

        Lane(String name, TownBuilder builder) {
            dir = TestTools.tempDir("fault-" + name + "-");
            town = builder.build(dir);
            bucket = s3.newBucket();
            townId = "fault-" + name;
            proxy = new FaultProxy(s3.endpoint());
            Product product = Product.of(town.root(), s3, bucket, townId);
            local = product.scratch();
            workDir = Path.of(product.env().get("R2_WORK_DIR"));
            lockFile = Path.of(product.env().get("R2_SYNC_LOCK"));
            // The history policy keeps the last KEEP only: a suite that crosses an hour keeps the same count.
            directEnv = FaultKit.env(product.env(), "R2_KEEP_HOURLY", "0", "R2_KEEP_DAILY", "0");
            syncEnv = FaultKit.env(directEnv, "R2_ENDPOINT", proxy.endpoint());
            ownWriter = Writer.of(town.root());
        }

        /** The suite moved the town to another writer on purpose (see writerMovedBy). */
        void writerMoved(String by) {
            writerMovedBy = by;
        }

        /** A sync of the lane's own town by the lane's machine into the lane's bucket (not a second machine's, not another bucket). */
        boolean ownMachine(Map<String, String> env) {
            return bucket.equals(env.get("R2_BUCKET")) && !OTHER_MACHINE.equals(env.get("FLY_MACHINE_ID"))
                    && town.root().toString().equals(env.get("GT_TOWN_ROOT"));
        }

        void setSyncEnv(String... kv) {
            syncEnv = FaultKit.env(syncEnv, kv);
        }

        /**
         * The env of a second machine syncing the same town: another machine id (FLY_MACHINE_ID, which the writer id
         * is made of), its own lock, work and state dirs.
         */
        Map<String, String> otherMachine() {
            Path other = local.resolve("other-machine");
            return FaultKit.env(syncEnv, "FLY_MACHINE_ID", OTHER_MACHINE, "R2_SYNC_LOCK", other.resolve("r2-sync.lock").toString(),
                    "R2_WORK_DIR", other.resolve("work").toString(), "R2_STATE_DIR", other.resolve("state").toString());
        }

        FaultKit.Running startSync(String... args) {
            return startSync(syncEnv, args);
        }

        /** A sync; the lane's own takes the town back with --take-over after the suite moved it (writerMovedBy). */
        FaultKit.Running startSync(Map<String, String> env, String... args) {
            return startSync(env, true, args);
        }

        private FaultKit.Running startSync(Map<String, String> env, boolean takeBack, String... args) {
            List<String> a = new ArrayList<>(List.of("--immediate"));
            a.addAll(List.of(args));
            if (takeBack && writerMovedBy != null && ownMachine(env) && !a.contains("--take-over")) a.add("--take-over");
            return FaultKit.Running.start(FaultKit.jvm("R2Sync", a, false), env, local.resolve("runs"));
        }

        TestTools.ProcResult sync(String... args) {
            return sync(Map.of(), args);
        }

        TestTools.ProcResult sync(Map<String, String> extraEnv, String... args) {
            return sync(extraEnv, true, args);
        }

        /** A sync of the lane's machine exactly as asked: never --take-over unless args say so (what a refusal needs). */
        TestTools.ProcResult syncAsAsked(Map<String, String> extraEnv, String... args) {
            return sync(extraEnv, false, args);
        }

        private TestTools.ProcResult sync(Map<String, String> extraEnv, boolean takeBack, String... args) {
            Map<String, String> env = FaultKit.copy(syncEnv);
            env.putAll(extraEnv);
            TestTools.ProcResult res;
            try (FaultKit.Running r = startSync(env, takeBack, args)) {
                res = r.await(SYNC_TIMEOUT);
                if (res.exitCode() == 0) lastSyncTook = Duration.ofNanos(System.nanoTime() - r.startNanos);
            }
            if ((res.exitCode() == 0 || res.exitCode() == 3) && ownMachine(env)) {
                // A published snapshot names the machine that wrote it: the lane's, whether it took the town back or not.
                FaultKit.Pointer p = pointer();
                if (p == null || !ownWriter.equals(p.writer()))
                    throw new AssertionError("the lane's sync published (exit " + res.exitCode() + ") but latest.json names writer "
                            + (p == null ? "(no latest.json)" : p.writer()) + ", not this machine's " + ownWriter + "\n" + TestTools.tail(res.stderr(), 2000));
                writerMovedBy = null;
            }
            return res;
        }

        /** Captures the town, syncs (exit 0 required) and records the state for the new snapshot. */
        TestTools.ProcResult syncAndRecord() {
            TownState state = currentState();
            TestTools.ProcResult r = sync();
            if (r.exitCode() != 0) throw new AssertionError("sync failed (exit " + r.exitCode() + ")\n" + TestTools.tail(r.stderr(), 3000));
            states.put(pointer().timestamp(), state);
            return r;
        }

        /** The lane's first snapshot (the suite's first one writes the class-data archive for later JVMs). */
        TestTools.ProcResult firstSync() {
            TownState state = currentState();
            TestTools.ProcResult r = FaultKit.archivingFirst(dumpArchive -> {
                List<String> cmd = FaultKit.jvm("R2Sync", List.of("--immediate"), dumpArchive);
                try (FaultKit.Running run = FaultKit.Running.start(cmd, syncEnv, local.resolve("runs"))) {
                    TestTools.ProcResult done = run.await(SYNC_TIMEOUT);
                    lastSyncTook = Duration.ofNanos(System.nanoTime() - run.startNanos);
                    return done;
                }
            });
            if (r.exitCode() != 0) throw new AssertionError("first sync of " + townId + " failed\n" + r.stderr());
            states.put(pointer().timestamp(), state);
            return r;
        }

        FaultKit.Pointer pointer() {
            return store.pointer(bucket, townId);
        }

        /** r2-restore straight to S3 (not through the proxy unless extraEnv says so), own state and work dirs. */
        TestTools.ProcResult restore(Path root, Map<String, String> extraEnv, String... args) {
            Path scratch = TestTools.tempDir("fault-restore-local-");
            try {
                return restore(root, scratch.resolve("state"), extraEnv, args);
            } finally {
                TestTools.deleteRecursively(scratch);
            }
        }

        /**
         * r2-restore of the lane's bucket with the given state dir (a machine's, kept between restores). A successful
         * restore makes its root the town's writer (the product's promise, checked here); the lane's next sync takes
         * the town back (writerMovedBy).
         */
        TestTools.ProcResult restore(Path root, Path stateDir, Map<String, String> extraEnv, String... args) {
            Path scratch = TestTools.tempDir("fault-restore-local-");
            Map<String, String> env = FaultKit.env(directEnv, "GT_TOWN_ROOT", root.toString(),
                    "R2_STATE_DIR", stateDir.toString(), "R2_WORK_DIR", scratch.resolve("work").toString());
            env.putAll(extraEnv);
            TestTools.ProcResult res;
            try {
                try (FaultKit.Running r = FaultKit.Running.start(FaultKit.jvm("R2Restore", List.of(args), false), env, scratch.resolve("runs"))) {
                    res = r.await(SYNC_TIMEOUT);
                }
            } finally {
                TestTools.deleteRecursively(scratch);
            }
            boolean restores = args.length == 0 || List.of(args).equals(List.of("--force"));
            if (res.exitCode() == 0 && restores && bucket.equals(env.get("R2_BUCKET"))) {
                FaultKit.Pointer p = pointer();
                String restorer = Writer.of(root);
                if (p == null || !restorer.equals(p.writer()))
                    throw new AssertionError("a successful restore into " + root + " did not make it the town's writer: latest.json names "
                            + (p == null ? "(no latest.json)" : p.writer()) + ", not " + restorer + "\n" + TestTools.tail(res.stderr(), 2000));
                writerMovedBy = "the restore into " + root;
            }
            return res;
        }

        /** r2-restore --forget-failure on the lane's machine for its town: an operator's decision that the town as it is is the one to keep. */
        TestTools.ProcResult forgetFailure() {
            Path scratch = TestTools.tempDir("fault-forget-");
            try (FaultKit.Running r = FaultKit.Running.start(FaultKit.jvm("R2Restore", List.of("--forget-failure"), false), directEnv,
                    scratch.resolve("runs"))) {
                return r.await(SYNC_TIMEOUT);
            } finally {
                TestTools.deleteRecursively(scratch);
            }
        }

        /** The failed-restore marker of the lane's town in its bucket (gastown/TOWN_ID/restore-failed.json), or null. */
        byte[] bucketFailureMarker() {
            return store.get(bucket, new Keys(townId).restoreFailed());
        }

        /** r2-restore of this lane's town id from another bucket, with the given state dir. */
        TestTools.ProcResult restoreFrom(String otherBucket, Path root, Path stateDir, String... args) {
            Path scratch = TestTools.tempDir("fault-restore-local-");
            Map<String, String> env = FaultKit.env(directEnv, "GT_TOWN_ROOT", root.toString(), "R2_BUCKET", otherBucket,
                    "R2_STATE_DIR", stateDir.toString(), "R2_WORK_DIR", scratch.resolve("work").toString());
            try (FaultKit.Running r = FaultKit.Running.start(FaultKit.jvm("R2Restore", List.of(args), false), env, scratch.resolve("runs"))) {
                return r.await(SYNC_TIMEOUT);
            } finally {
                TestTools.deleteRecursively(scratch);
            }
        }

        /** Puts git and dolt wrappers first on the sync's PATH that start git packs (pack-objects) and version probes 0.2 s late. */
        void slowChildren() throws IOException {
            Path shims = Files.createDirectories(local.resolve("shims"));
            String path = System.getenv("PATH");
            for (String[] tool : List.of(new String[] {"git", "*pack-objects*"}, new String[] {"dolt", "version*"})) {
                String real = java.util.Arrays.stream(path.split(":")).map(d -> Path.of(d, tool[0]))
                        .filter(Files::isExecutable).findFirst().orElseThrow().toString();
                Path shim = shims.resolve(tool[0]);
                Files.writeString(shim, "#!/bin/sh\ncase \"$*\" in " + tool[1] + ") sleep 0.2 ;; esac\nexec " + real + " \"$@\"\n");
                Files.setPosixFilePermissions(shim, PosixFilePermissions.fromString("rwxr-xr-x"));
            }
            setSyncEnv("PATH", shims + ":" + path);
        }

        /**
         * A 70 MB file in the town that every touch of files changes (one byte appended), so each sync packs it
         * again: its pack goes up in pieces.
         */
        void bigFile(Path file) throws IOException {
            writeBigFile(file, BIG_FILE);
            bigFile = file;
        }

        /**
         * Changes the town so the next sync has new work: a new commit on a new branch in every git repository
         * (new git packs) and every database (new dolt backups), and, with files, a changed config and runtime
         * file (a new file pack and file index).
         */
        void touch(boolean files) throws IOException {
            current = null;
            int n = ++touches;
            List<Path> repos = new ArrayList<>(List.of(town.root(), town.root().resolve("plugins/p/vendor/lib")));
            for (String rig : town.rigs())
                repos.addAll(List.of(town.rig(rig).resolve(".repo.git"), town.rig(rig).resolve("mayor/rig"),
                        town.rig(rig).resolve("crew/" + TestTown.CREW)));
            for (Path repo : repos) {
                // A new commit, so every repo has a new object to pack (a branch alone moves only refs).
                String commit = TestTools.git(repo, "commit-tree", "HEAD^{tree}", "-p", "HEAD", "-m", "fault " + n).strip();
                TestTools.git(repo, "branch", "fault-" + n, commit);
                if (n > 1) TestTools.git(repo, "branch", "-D", "fault-" + (n - 1));
            }
            for (String db : town.databases())
                TestTools.dolt(town.doltDb(db), "sql", "-q", "call dolt_branch('fault-" + n + "')"
                        + (n > 1 ? "; call dolt_branch('-D', 'fault-" + (n - 1) + "')" : ""));
            if (files) {
                Files.writeString(town.root().resolve("settings/fault.json"), "{\"touch\": " + n + "}\n");
                Files.writeString(town.root().resolve(".runtime/fault-state.json"), "{\"touch\": " + n + "}\n");
                if (bigFile != null) Files.write(bigFile, new byte[] {(byte) n}, StandardOpenOption.APPEND);
            }
        }

        @Override
        public void close() {
            proxy.close();
            TestTools.deleteRecursively(dir);
            TestTools.deleteRecursively(local);
        }
    }

    /** A volume that already holds a (small) town, for --force restores that must leave it as it is. */
    static void writeSentinelTown(Path root) throws IOException {
        Files.createDirectories(root.resolve("mayor"));
        Files.writeString(root.resolve("mayor/town.json"), "{\"name\":\"the town already here\"}\n");
        Files.createDirectories(root.resolve("alpha/.beads"));
        Files.writeString(root.resolve("alpha/.beads/issues.jsonl"), "{\"id\":\"al-1\"}\n");
        Files.createSymbolicLink(root.resolve("alpha/link"), Path.of("../mayor"));
    }

    /** Pseudo-random bytes (incompressible, like git packs and dolt tables). */
    static void writeBigFile(Path file, int size) throws IOException {
        Files.createDirectories(file.getParent());
        Random random = new Random(42);
        byte[] chunk = new byte[1 << 20];
        try (var out = Files.newOutputStream(file)) {
            for (int written = 0; written < size; written += chunk.length) {
                random.nextBytes(chunk);
                out.write(chunk, 0, Math.min(chunk.length, size - written));
            }
        }
    }

    static void assertMentions(String output, String text) {
        if (!output.toLowerCase(Locale.ROOT).contains(text.toLowerCase(Locale.ROOT)))
            throw new AssertionError("expected the output to mention \"" + text + "\":\n" + TestTools.tail(output, 2500));
    }
}

import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.Set;
import java.util.SortedMap;
import java.util.concurrent.ConcurrentHashMap;
import java.util.function.BooleanSupplier;
import java.util.function.Function;
import java.util.function.Predicate;
import java.util.stream.Collectors;
import org.junit.jupiter.api.Order;
import org.junit.jupiter.api.Test;

/**
 * Crashes: kill -9 of the sync (the JVM and its dolt/git children) at every phase, in three chains of kill points,
 * one lane each, side by side: the local phases (dolt backup, also through a running sql-server, git packing, file
 * packing, the version probe, points in time), the uploads and retention (each kind of upload, the manifest, the
 * pointer, the deletes, the listings), and a pack stored in pieces. After each kill latest.json names the snapshot it
 * must, that snapshot verifies and restores, and the next sync succeeds and removes what the dead one left.
 */
class FaultCrashTest extends FaultSuite {
    @Override
    void start() {
        // Longest lanes first.
        submit(() -> crashChain(group("crash-local"), "crash-local", localPhasePoints(), false), "crash-local");
        submit(() -> crashChain(group("crash-upload"), "crash-upload", uploadAndRetentionPoints(), false), "crash-upload");
        submit(() -> crashChain(group("crash-pieces"), "crash-pieces", piecePoints(), true), "crash-pieces");
    }

    @Test
    @Order(1)
    void killedSyncsDuringLocalPhasesLeaveARestorableLatestAndTheNextSyncCleansUp() {
        check("crash-local");
    }

    @Test
    @Order(2)
    void killedSyncsDuringUploadsAndRetentionLeaveARestorableLatestAndTheNextSyncCleansUp() {
        check("crash-upload");
    }

    @Test
    @Order(3)
    void killedUploadsOfAPackInPiecesLeaveARestorableLatestAndTheNextSyncCompletes() {
        check("crash-pieces");
    }

    /** What latest.json must name after the kill: the previous snapshot, or the killed sync's own. */
    enum Expect { BEFORE, AFTER }

    /** Decides when to kill: armed before the sync starts, then awaited while it runs. */
    interface Trigger {
        boolean await(FaultKit.Running run);
    }

    /** How the town changes before a crash point: not at all, new git and dolt refs (new git packs and dolt backups), or refs and files (a new file pack and index). */
    enum Touch { NONE, REFS, ALL }

    /**
     * One kill point. leavesPieces: the kill must leave stored pieces behind that no manifest names; doltServer: the
     * town's dolt sql-server runs during the sync (gastown's normal state; dolt backup then goes through it).
     */
    record CrashPoint(String name, Expect expect, Touch touch, boolean leavesPieces, boolean doltServer,
                      Function<Lane, Trigger> trigger) {}

    /** The dolt run that backs a database up (`dolt backup sync-url` is this procedure call). */
    private static final Predicate<String> DOLT_BACKUP = c -> c.contains("dolt_backup('sync-url'");

    /** The local phases: dolt backup, git pack-objects, file packs, version probe, and kills at time offsets. */
    private static List<CrashPoint> localPhasePoints() {
        return List.of(
                point("during dolt backup of the first database", Expect.BEFORE, Touch.REFS, child(DOLT_BACKUP, 1)),
                point("during dolt backup of the second database", Expect.BEFORE, Touch.REFS, child(DOLT_BACKUP, 2)),
                new CrashPoint("during dolt backup through the town's running dolt sql-server (which lives on)", Expect.BEFORE,
                        Touch.REFS, false, true, child(DOLT_BACKUP, 1)),
                point("during git pack-objects of .repo.git", Expect.BEFORE, Touch.REFS,
                        child(c -> c.contains("pack-objects") && c.contains("/alpha/.repo.git"), 1)),
                point("during git pack-objects of the mayor clone", Expect.BEFORE, Touch.REFS,
                        child(c -> c.contains("pack-objects") && c.contains("/alpha/mayor/rig/.git"), 1)),
                point("between packing the files and bundling the repos", Expect.BEFORE, Touch.ALL, logLine(": files: ")),
                point("while probing tool versions", Expect.BEFORE, Touch.NONE, child(c -> c.contains("dolt version"), 1)),
                point("at 30% of a sync's run time", Expect.BEFORE, Touch.ALL, afterFraction(0.3)),
                point("at 70% of a sync's run time", Expect.BEFORE, Touch.ALL, afterFraction(0.7)));
    }

    /** Each upload, the manifest, the pointer, and retention (all held in the proxy while the kill lands). */
    private static List<CrashPoint> uploadAndRetentionPoints() {
        return List.of(
                point("during the upload of a dolt/alpha.backup file", Expect.BEFORE, Touch.REFS, holdRequest(FaultProxy.put("/dolt/alpha.backup/"))),
                point("during the upload of a git/alpha.packs increment", Expect.BEFORE, Touch.REFS, holdRequest(FaultProxy.put("/git/alpha.packs/").and(GIT_PACK_FILE))),
                point("during the upload of a file pack", Expect.BEFORE, Touch.ALL, holdRequest(FaultProxy.put(PACK))),
                point("during the upload of the file index", Expect.BEFORE, Touch.ALL, holdRequest(FaultProxy.put(INDEX_PIECE))),
                point("while listing the stored objects", Expect.BEFORE, Touch.NONE, holdRequest(FaultProxy.listObjects())),
                point("during the upload of manifest.json", Expect.BEFORE, Touch.NONE, holdRequest(FaultProxy.put("/manifest.json"))),
                point("between manifest.json and latest.json (pointer PUT held)", Expect.BEFORE, Touch.NONE,
                        holdRequest(FaultProxy.put("/latest.json"))),
                point("after latest.json landed, before its answer", Expect.AFTER, Touch.NONE, holdResponse(FaultProxy.put("/latest.json"))),
                point("during the history policy or garbage collection: a batch delete", Expect.AFTER, Touch.NONE, holdRequest(FaultProxy.deleteObjects())),
                point("during garbage collection: after a delete, before its answer", Expect.AFTER, Touch.NONE,
                        holdResponse(FaultProxy.deleteObjects())),
                // What the history policy and garbage collection look at is read beside the sync, before it publishes.
                point("while listing unfinished uploads for garbage collection", Expect.BEFORE, Touch.NONE, holdRequest(FaultProxy.listUploads())));
    }

    /** A 70 MB file in a rig's plugins/: packing it, and the uploads of its pack's five pieces. */
    private static List<CrashPoint> piecePoints() {
        return List.of(
                point("while packing a 70 MB file", Expect.BEFORE, Touch.ALL, workFileOver(PackWriter.DIR, 1 << 20)),
                point("during the upload of a piece of its pack (three more in flight)", Expect.BEFORE, Touch.ALL,
                        holdRequest(FaultProxy.put(PACK))),
                new CrashPoint("after a piece of its pack landed, before its answer", Expect.BEFORE, Touch.ALL, true, false,
                        holdResponse(FaultProxy.put(PACK))));
    }

    /** One chain: a lane, its first snapshot, then every crash point in turn, then the last snapshot restored. */
    private void crashChain(FaultKit.Group g, String name, List<CrashPoint> points, boolean bigFile) throws IOException {
        Lane lane = lane(name, TownBuilder.create().rigs("alpha"));
        if (bigFile) lane.bigFile(lane.town.root().resolve("alpha/plugins/big.bin"));
        // Short-lived children (git pack-objects, dolt version) start 0.2 s late, so a kill under load lands in them.
        if (name.equals("crash-local")) lane.slowChildren();
        lane.firstSync();
        for (CrashPoint p : points) crash(g, lane, p);
        g.step("the last snapshot of the chain verifies and restores", () -> assertLatestRestores(lane));
    }

    private static CrashPoint point(String name, Expect expect, Touch touch, Function<Lane, Trigger> trigger) {
        return new CrashPoint(name, expect, touch, false, false, trigger);
    }

    /** One crash point: change the town, start a sync, kill it -9 at the point, then check everything. */
    private void crash(FaultKit.Group g, Lane lane, CrashPoint cp) {
        g.fault("kill -9 " + cp.name(), () -> {
            if (cp.touch() != Touch.NONE) lane.touch(cp.touch() == Touch.ALL);
            if (cp.doltServer()) {
                // A server's first start writes its users and grants (.dolt-data/.doltcfg/privileges.db), town data.
                lane.town.startDoltServer().close();
                lane.forget();
            }
            TownState state = lane.currentState();
            TestDoltServer server = cp.doltServer() ? lane.town.startDoltServer() : null;
            try {
                crashAndCheck(lane, cp, state);
            } finally {
                if (server != null) server.close();
            }
        });
    }

    /** Starts a sync, kills it -9 at the point, then checks latest.json's snapshot and the next sync's cleanup. */
    private void crashAndCheck(Lane lane, CrashPoint cp, TownState state) throws Exception {
        FaultKit.Pointer before = lane.pointer();
        Set<String> prefixesBefore = store.snapshots(lane.bucket, lane.townId).keySet();
        lane.proxy.clearLog();
        Trigger trigger = cp.trigger().apply(lane);
        String killedOutput;
        try (FaultKit.Running run = lane.startSync()) {
            boolean reached = trigger.await(run);
            run.kill9();
            killedOutput = run.stderr();
            if (!reached)
                throw new AssertionError("the sync never reached the kill point (exit " + exitOf(run) + ")\n"
                        + TestTools.tail(killedOutput, 3000) + "\n--- requests ---\n" + lane.proxy.logText());
        } finally {
            lane.proxy.clearRules();
        }
        assertTrue(FaultKit.lockFree(lane.lockFile), "the lock is still held after the kill");
        List<String> logLines = killedOutput.lines().collect(Collectors.toList());
        List<FaultProxy.Entry> requests = lane.proxy.log();
        System.out.println("        " + lane.townId + " killed after: " + (logLines.isEmpty() ? "(no log line)" : logLines.get(logLines.size() - 1).replaceFirst("^\\S+ ", ""))
                + (requests.isEmpty() ? "" : " | last request: " + requests.get(requests.size() - 1)));

        // What the dead sync left, and where latest.json points.
        FaultKit.Pointer after = lane.pointer();
        if (after == null || after.timestamp() == null) throw new FaultKit.DataLoss("latest.json is gone or unreadable after the kill");
        SortedMap<String, List<String>> snaps = store.snapshots(lane.bucket, lane.townId);
        List<String> newPrefixes = snaps.keySet().stream().filter(ts -> !prefixesBefore.contains(ts)).collect(Collectors.toList());
        if (newPrefixes.size() > 1) throw new AssertionError("one sync left several new prefixes: " + newPrefixes);
        String killedTs = newPrefixes.isEmpty() ? null : newPrefixes.get(0);
        boolean killedComplete = killedTs != null && snaps.get(killedTs).contains("manifest.json");
        String expected = switch (cp.expect()) {
            case BEFORE -> before.timestamp();
            case AFTER -> killedTs;
        };
        if (!after.timestamp().equals(expected))
            throw new AssertionError("latest.json names " + after.timestamp() + ", expected "
                    + expected + " (before: " + before.timestamp() + ", killed sync: " + killedTs + ")\n" + TestTools.tail(killedOutput, 2000));
        if (after.timestamp().equals(killedTs)) lane.states.put(killedTs, state);
        if (cp.leavesPieces() && store.unnamedObjects(lane.bucket, lane.townId).stream().noneMatch(k -> k.contains(PACK)))
            throw new AssertionError("expected the kill to leave a stored piece no manifest names; there is none\n" + lane.proxy.logText());

        // The promise: the snapshot latest.json names verifies and restores to its town.
        assertLatestRestores(lane);

        // The next sync succeeds and cleans what the dead one left.
        boolean leftWorkDir = FaultKit.children(lane.workDir).stream().anyMatch(n -> n.startsWith("r2-sync-"));
        TestTools.ProcResult next = lane.sync();
        if (next.exitCode() != 0)
            throw new AssertionError("the next sync failed (exit " + next.exitCode() + ")\n" + TestTools.tail(next.stderr(), 3000));
        FaultKit.Pointer now = lane.pointer();
        if (now.timestamp().compareTo(after.timestamp()) <= 0 || (killedTs != null && now.timestamp().compareTo(killedTs) <= 0))
            throw new AssertionError("the next sync published " + now.timestamp() + ", not newer than " + after.timestamp() + "/" + killedTs);
        lane.states.put(now.timestamp(), state);
        if (leftWorkDir && !next.stderr().contains("removing the work dir of an interrupted sync"))
            throw new AssertionError("the dead sync's work dir was there, but the next sync did not say it removed it");
        assertCleanAfterSync(lane, killedTs, killedComplete);
    }

    // ---- triggers ----

    private static Function<Lane, Trigger> holdRequest(Predicate<FaultProxy.Request> p) {
        return lane -> {
            FaultProxy.Rule rule = lane.proxy.on("crash", p).hold();
            return run -> FaultKit.awaitWhileRunning(run, rule::isHeld, POINT_TIMEOUT);
        };
    }

    private static Function<Lane, Trigger> holdResponse(Predicate<FaultProxy.Request> p) {
        return lane -> {
            FaultProxy.Rule rule = lane.proxy.on("crash", p).holdResponse();
            return run -> FaultKit.awaitWhileRunning(run, rule::isHeld, POINT_TIMEOUT);
        };
    }

    /** Kills while the nth distinct child process whose command line matches is alive. */
    private static Function<Lane, Trigger> child(Predicate<String> cmd, int nth) {
        return lane -> run -> {
            Set<Long> seen = ConcurrentHashMap.newKeySet();
            BooleanSupplier reached = () -> {
                for (ProcessHandle h : run.process.descendants().collect(Collectors.toList())) {
                    String c = h.info().commandLine().orElse("");
                    if (cmd.test(c) && h.isAlive()) seen.add(h.pid());
                }
                return seen.size() >= nth;
            };
            return FaultKit.awaitWhileRunning(run, reached, POINT_TIMEOUT);
        };
    }

    private static Function<Lane, Trigger> logLine(String text) {
        return lane -> run -> FaultKit.awaitWhileRunning(run, () -> run.stderr().contains(text), POINT_TIMEOUT);
    }

    /**
     * Kills as soon as a file in that dir of the sync's work dir holds more than {@code bytes}: a content that large
     * is being written into it (a large file goes into a pack of its own).
     */
    private static Function<Lane, Trigger> workFileOver(String dir, long bytes) {
        return lane -> run -> FaultKit.awaitWhileRunning(run, () -> FaultKit.children(lane.workDir).stream().anyMatch(d -> {
            Path in = lane.workDir.resolve(d).resolve(dir);
            try {
                return FaultKit.children(in).stream().anyMatch(f -> {
                    try {
                        return Files.size(in.resolve(f)) > bytes;
                    } catch (IOException e) {
                        return false;   // moved or removed since listed
                    }
                });
            } catch (UncheckedIOException e) {
                return false;   // the work dir went away since listed
            }
        }), POINT_TIMEOUT);
    }

    /**
     * Kills at a fraction of the lane's last sync duration, whatever phase that is. A sync that gets faster
     * under a lighter load must not finish first, so its pointer update is held as a backstop.
     */
    private static Function<Lane, Trigger> afterFraction(double fraction) {
        return lane -> {
            lane.proxy.on("backstop", FaultProxy.put("/latest.json")).hold();
            long ms = (long) (lane.lastSyncTook.toMillis() * fraction);
            return run -> run.stillRunningAfter(Duration.ofMillis(ms));
        };
    }

    private static String exitOf(FaultKit.Running run) {
        return run.alive() ? "still running" : String.valueOf(run.process.exitValue());
    }
}

import java.util.List;
import java.util.Map;
import java.util.Set;
import org.junit.jupiter.api.Test;

/**
 * Two writers for one town: the second machine is refused while latest.json names the first, an operator moves the
 * town with --take-over, and a newer snapshot is never replaced by an older one (counted as data lost if it were).
 */
class FaultTwoWritersTest extends FaultSuite {
    @Override
    void start() {
        submit(() -> twoWriters(group("two-writers")), "two-writers");
    }

    @Test
    void twoWritersNeverReplaceANewerSnapshot() {
        check("two-writers");
    }

    /**
     * Two machines on one town (the second one: another FLY_MACHINE_ID, its own lock, work and state dirs). One writer
     * per town: while latest.json names the first machine, the second one's sync is refused and publishes nothing. An
     * operator moves the town with --take-over: the second machine's syncs pass it only there, never blindly. A sync of
     * the first machine still running then loses at the pointer, never replacing the newer snapshot, and the first
     * machine's later syncs are refused. (The lane's own syncs take the town back after the suite's check restores and
     * the second machine's take-overs: Lane.writerMovedBy.) What would be lost is counted as data lost, checked before
     * anything else: latest.json not naming the newest snapshot published, or naming one of a machine the writer rule
     * refused.
     */
    private void twoWriters(FaultKit.Group g) {
        Lane lane = lane("writers", TownBuilder.create().rigs("alpha"));
        lane.firstSync();
        Map<String, String> otherHost = lane.otherMachine();

        g.fault("writers: the older writer loses at the pointer and says so", () -> {
            lane.touch(true);
            TownState state = lane.currentState();
            FaultProxy.Rule held = lane.proxy.on("writer A", FaultProxy.put("/latest.json")).hold();
            try (FaultKit.Running a = lane.startSync()) {
                if (!FaultKit.awaitWhileRunning(a, held::isHeld, POINT_TIMEOUT))
                    throw new AssertionError("writer A never reached its pointer update\n" + a.stderr());
                String tsA = startedTimestamp(a.stderr());
                // B, a second machine, while latest.json names A's machine: refused, nothing of it published.
                String machineB = assertRefusedAsAnotherMachine(lane, "the second machine", () -> lane.sync(otherHost));
                // The operator moves the town to B (--take-over) while A's sync still runs.
                TestTools.ProcResult b = lane.sync(otherHost, "--take-over");
                if (b.exitCode() != 0) throw new AssertionError("writer B failed: " + b.stderr());
                String tsB = lane.pointer().timestamp();
                lane.states.put(tsB, state);
                lane.writerMoved("the second machine's --take-over");
                assertWriter(lane, machineB, "after the second machine's --take-over");
                held.release(true);
                TestTools.ProcResult ra = a.await(SYNC_TIMEOUT);
                // What would be lost, first: the older writer must not have replaced the newer pointer.
                if (!lane.pointer().timestamp().equals(tsB))
                    throw new FaultKit.DataLoss("latest.json names " + lane.pointer().timestamp() + ", not the newer " + tsB
                            + " (writer A exited " + ra.exitCode() + ")\n" + TestTools.tail(ra.stderr(), 2000));
                if (ra.exitCode() == 0) throw new AssertionError("writer A exited 0 although writer B published " + tsB + " meanwhile");
                assertMentions(ra.stderr(), "conflict");
                assertMentions(ra.stderr(), tsB);
                if (store.snapshots(lane.bucket, lane.townId).containsKey(tsA))
                    throw new AssertionError("the loser's snapshot " + tsA + " was not discarded");
            } finally {
                lane.proxy.clearRules();
            }
            // The town is B's now: the first machine's next sync is refused (asked as it is, without --take-over).
            assertRefusedAsAnotherMachine(lane, "the first machine after the take-over", () -> lane.syncAsAsked(Map.of()));
            assertLatestRestores(lane);
        });

        g.fault("writers: a newer writer held at the pointer replaces an older one, never the reverse", () -> {
            lane.touch(true);
            TownState state = lane.currentState();
            FaultProxy.Rule aFirstUpload = lane.proxy.on("writer A", FaultProxy.put("/dolt/alpha.backup")).hold();
            // A: the lane's machine (taking the town back after the check restore). B: the second machine, moved to by
            // an operator (--take-over) while A's sync runs.
            try (FaultProxy proxyB = new FaultProxy(s3.endpoint());
                 FaultKit.Running a = lane.startSync()) {
                if (!FaultKit.awaitWhileRunning(a, aFirstUpload::isHeld, POINT_TIMEOUT))
                    throw new AssertionError("writer A never reached its first upload\n" + a.stderr());
                String tsA = startedTimestamp(a.stderr());
                FaultProxy.Rule bPointer = proxyB.on("writer B", FaultProxy.put("/latest.json")).hold();
                try (FaultKit.Running b = lane.startSync(FaultKit.env(otherHost, "R2_ENDPOINT", proxyB.endpoint()), "--take-over")) {
                    if (!FaultKit.awaitWhileRunning(b, bPointer::isHeld, POINT_TIMEOUT))
                        throw new AssertionError("writer B never reached its pointer update\n" + b.stderr());
                    String tsB = startedTimestamp(b.stderr());
                    if (tsB.compareTo(tsA) <= 0) throw new AssertionError("B (" + tsB + ") should be newer than A (" + tsA + ")");
                    aFirstUpload.release(true);
                    TestTools.ProcResult ra = a.await(SYNC_TIMEOUT);
                    if (ra.exitCode() != 0) throw new AssertionError("writer A failed: " + ra.stderr());
                    bPointer.release(true);
                    TestTools.ProcResult rb = b.await(SYNC_TIMEOUT);
                    lane.states.put(tsB, state);
                    lane.states.put(tsA, state);
                    // What would be lost, first: the newest snapshot must be the one latest.json names.
                    if (!lane.pointer().timestamp().equals(tsB))
                        throw new FaultKit.DataLoss("latest.json names " + lane.pointer().timestamp() + ", not the newest " + tsB
                                + " (writer B exited " + rb.exitCode() + ")\n" + TestTools.tail(rb.stderr(), 2000));
                    if (rb.exitCode() != 0) throw new AssertionError("writer B failed: " + rb.stderr());
                    assertMentions(rb.stderr(), "older than ours");
                    lane.writerMoved("the second machine's --take-over");
                    assertWriter(lane, machineIdIn(rb.stderr()), "after the second machine's --take-over");
                }
            } finally {
                lane.proxy.clearRules();
            }
            assertLatestRestores(lane);
        });

        g.fault("writers: two syncs started at once both end, the newest snapshot wins", () -> {
            lane.touch(true);
            TownState state = lane.currentState();
            // A: the lane's machine (taking the town back after the check restore). B: the second machine, moved to by
            // an operator (--take-over) as A's sync starts. Both pass the writer check; the pointer's conditional write decides.
            try (FaultKit.Running a = lane.startSync(); FaultKit.Running b = lane.startSync(otherHost, "--take-over")) {
                TestTools.ProcResult ra = a.await(SYNC_TIMEOUT);
                TestTools.ProcResult rb = b.await(SYNC_TIMEOUT);
                String tsA = publishedTimestampOrNull(ra.stderr());
                String tsB = publishedTimestampOrNull(rb.stderr());
                String newest = tsA == null ? tsB : tsB == null ? tsA : tsA.compareTo(tsB) > 0 ? tsA : tsB;
                if (newest != null) {
                    lane.states.put(newest, state);
                    // What would be lost, first: the newest snapshot must be the one latest.json names.
                    if (!lane.pointer().timestamp().equals(newest))
                        throw new FaultKit.DataLoss("latest.json names " + lane.pointer().timestamp() + ", not the newest " + newest
                                + " (A: " + tsA + ", exit " + ra.exitCode() + "; B: " + tsB + ", exit " + rb.exitCode() + ")");
                }
                tsA = publishedTimestamp(ra.stderr());
                tsB = publishedTimestamp(rb.stderr());
                if (tsA.equals(tsB)) throw new AssertionError("both writers created a manifest as " + tsA);
                for (TestTools.ProcResult r : List.of(ra, rb)) {
                    if (r.exitCode() != 0 && r.exitCode() != 1) throw new AssertionError("exit " + r.exitCode() + "\n" + r.stderr());
                    if (r.exitCode() == 1) assertMentions(r.stderr(), "conflict");
                }
                // latest.json names the machine whose snapshot it is.
                if (newest.equals(tsB)) lane.writerMoved("the second machine's --take-over");
                assertWriter(lane, newest.equals(tsA) ? lane.ownWriter : machineIdIn(rb.stderr()), "after both syncs");
            }
            assertLatestRestores(lane);
        });
    }

    /**
     * A sync refused by the writer rule: latest.json names another machine. Exit 1, one line saying so (naming that
     * writer, and --take-over), no stack trace, latest.json and the snapshot prefixes as they were. latest.json moved is
     * data lost: the town's snapshot would be buried under a machine's that is not the town's writer. Returns the
     * refused machine's writer id, as its refusal names it.
     */
    private String assertRefusedAsAnotherMachine(Lane lane, String who, java.util.function.Supplier<TestTools.ProcResult> sync) {
        FaultKit.Pointer before = lane.pointer();
        Set<String> prefixes = store.snapshots(lane.bucket, lane.townId).keySet();
        TestTools.ProcResult r = sync.get();
        FaultKit.Pointer after = lane.pointer();
        if (!after.sameBytes(before))
            throw new FaultKit.DataLoss(who + ", not the town's writer, moved latest.json from " + before.timestamp() + " (writer "
                    + before.writer() + ") to " + after.timestamp() + " (writer " + after.writer() + "), exit " + r.exitCode() + "\n"
                    + TestTools.tail(r.stderr(), 2000));
        if (r.exitCode() != 1)
            throw new AssertionError(who + ": exit " + r.exitCode() + ", expected 1 (latest.json was written by another machine)\n"
                    + TestTools.tail(r.stderr(), 2000));
        assertMentions(r.stderr(), "written by another machine");
        assertMentions(r.stderr(), "writer " + before.writer());
        assertMentions(r.stderr(), "--take-over");
        if (r.stderr().contains("\tat ")) throw new AssertionError("stack trace in a refused sync:\n" + r.stderr());
        Set<String> now = store.snapshots(lane.bucket, lane.townId).keySet();
        if (!now.equals(prefixes)) throw new AssertionError(who + "'s refused sync changed the snapshots: " + prefixes + " -> " + now);
        java.util.regex.Matcher m = java.util.regex.Pattern.compile("this one is ([0-9a-f-]{36})").matcher(r.stderr());
        if (!m.find()) throw new AssertionError("the refusal does not name the refused machine's writer id:\n" + r.stderr());
        if (m.group(1).equals(before.writer())) throw new AssertionError("refused although its writer id is latest.json's: " + r.stderr());
        return m.group(1);
    }

    /** The writer id a sync that took the town over names itself by ("--take-over: this machine (id) is the writer"). */
    private static String machineIdIn(String log) {
        java.util.regex.Matcher m = java.util.regex.Pattern.compile("this machine \\(([0-9a-f-]{36})\\) is the writer").matcher(log);
        if (!m.find()) throw new AssertionError("the sync with --take-over does not say it took the town over:\n" + TestTools.tail(log, 2000));
        return m.group(1);
    }

    private void assertWriter(Lane lane, String expected, String when) {
        String writer = lane.pointer().writer();
        if (!expected.equals(writer)) throw new AssertionError(when + ", latest.json names writer " + writer + ", not " + expected);
    }

    /** The timestamp a sync created its manifest under: the one it published, or lost a conflict with. */
    private static String publishedTimestamp(String log) {
        String ts = publishedTimestampOrNull(log);
        if (ts == null) throw new AssertionError("no published or conflicting snapshot in:\n" + log);
        return ts;
    }

    private static String publishedTimestampOrNull(String log) {
        java.util.regex.Matcher m = java.util.regex.Pattern.compile("latest\\.json now names (\\d{8}T\\d{6}Z)|sync (\\d{8}T\\d{6}Z): conflict").matcher(log);
        if (!m.find()) return null;
        return m.group(1) != null ? m.group(1) : m.group(2);
    }

    private static String startedTimestamp(String log) {
        java.util.regex.Matcher m = java.util.regex.Pattern.compile("sync (\\d{8}T\\d{6}Z): started").matcher(log);
        if (!m.find()) throw new AssertionError("no 'started' line in:\n" + log);
        return m.group(1);
    }
}

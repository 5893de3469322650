import java.io.IOException;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.function.Consumer;
import java.util.function.Predicate;
import java.util.stream.Collectors;
import org.junit.jupiter.api.Test;

/**
 * Storage faults during sync (500/503 once and on every try, a non-retryable 403, stalls, connection resets, bodies
 * cut short, lost answers, failing listings; also on the pieces of a pack stored in pieces): every object matches its
 * manifest, or exit 1 and latest.json untouched.
 */
class FaultStorageSyncTest extends FaultSuite {
    @Override
    void start() {
        submit(() -> storageSyncFaults(group("storage-sync"), syncedLane("storage", false)), "storage-sync");
    }

    @Test
    void storageFaultsDuringSyncEndInACompleteSnapshotOrAnUntouchedPointer() {
        check("storage-sync");
    }

    private void storageSyncFaults(FaultKit.Group g, Lane lane) throws IOException {
        syncFault(g, lane, "500 once on PUT of a dolt/hq.backup file", Want.COMPLETES, 2, FaultProxy.put("/dolt/hq.backup/"),
                r -> r.fail(500, "InternalError"), true);
        syncFault(g, lane, "503 SlowDown on every PUT of a git/alpha.packs increment", Want.FAILS, 5, FaultProxy.put("/git/alpha.packs/").and(GIT_PACK_FILE),
                r -> r.fail(503, "SlowDown").always(), true);
        syncFault(g, lane, "403 AccessDenied (not retryable) on PUT of a dolt/alpha.backup file", Want.FAILS, 1, FaultProxy.put("/dolt/alpha.backup/"),
                r -> r.fail(403, "AccessDenied"), true);
        syncFault(g, lane, "connection reset once on PUT of a file pack", Want.COMPLETES, 2, FaultProxy.put(PACK),
                FaultProxy.Rule::reset, true);
        syncFault(g, lane, "connection reset on every PUT of manifest.json", Want.FAILS, 5, FaultProxy.put("/manifest.json"),
                r -> r.reset().always(), true);
        syncFault(g, lane, "body of latest.json cut short once", Want.COMPLETES, 2, FaultProxy.get("/latest.json"),
                r -> r.cutResponse(10), false);
        // Every manifest read fails (the previous one, and those the history policy reads): each is retried.
        syncFault(g, lane, "body of every manifest cut short every time", Want.COMPLETES, 15, FaultProxy.get("/manifest.json"),
                r -> r.cutResponse(40).always(), false);
        syncFault(g, lane, "404 for an existing latest.json", Want.COMPLETES, 2, FaultProxy.get("/latest.json"),
                r -> r.fail(404, "NoSuchKey"), false);
        syncFault(g, lane, "3 s stall on GET latest.json", Want.COMPLETES, 1, FaultProxy.get("/latest.json"),
                r -> r.stall(Duration.ofSeconds(3)), false);
        syncFault(g, lane, "3 s stall on PUT of the file index", Want.COMPLETES, 1, FaultProxy.put(INDEX_PIECE),
                r -> r.stall(Duration.ofSeconds(3)), true);
        syncFault(g, lane, "500 on every PUT of latest.json", Want.FAILS, 5, FaultProxy.put("/latest.json"),
                r -> r.fail(500, "InternalError").always(), true);
        syncFault(g, lane, "latest.json PUT applied but its answer lost (reset)", Want.COMPLETES, 2, FaultProxy.put("/latest.json"),
                FaultProxy.Rule::resetAfterForward, true);
        syncFault(g, lane, "manifest.json PUT applied but its answer lost (reset)", Want.COMPLETES, 2, FaultProxy.put("/manifest.json"),
                FaultProxy.Rule::resetAfterForward, true);
        syncFault(g, lane, "500 on every batch delete of the history policy and garbage collection", Want.COMPLETES, 5,
                FaultProxy.deleteObjects(), r -> r.fail(500, "InternalError").always(), false);
        syncFault(g, lane, "503 on every listing (what is stored, the snapshots)", Want.FAILS, 5, FaultProxy.listObjects(),
                r -> r.fail(503, "SlowDown").always(), false);
        syncFault(g, lane, "500 on every listing of unfinished uploads", Want.COMPLETES, 5, FaultProxy.listUploads(),
                r -> r.fail(500, "InternalError").always(), false);
        // Pieces: a 70 MB file in a rig's plugins/ makes a pack go up as five objects.
        g.step("a 70 MB file makes its pack go up in pieces", () -> {
            lane.bigFile(lane.town.root().resolve("alpha/plugins/big.bin"));
            lane.syncAndRecord();
        });
        syncFault(g, lane, "500 once on a piece of a pack", Want.COMPLETES, 2, FaultProxy.put(PACK),
                r -> r.fail(500, "InternalError"), true);
        syncFault(g, lane, "reset on every try of a piece of a pack", Want.FAILS, 5, FaultProxy.put(PACK),
                r -> r.reset().always(), true);
        syncFault(g, lane, "a piece's PUT applied but its answer lost (reset)", Want.COMPLETES, 2, FaultProxy.put(PACK),
                FaultProxy.Rule::resetAfterForward, true);
        g.step("a clean sync after the faults cleans up and restores", () -> {
            lane.syncAndRecord();
            assertCleanAfterSync(lane, null, false);
            assertLatestRestores(lane);
        });
    }

    private void syncFault(FaultKit.Group g, Lane lane, String name, Want want, int maxAttempts,
                           Predicate<FaultProxy.Request> target, Consumer<FaultProxy.Rule> arm, boolean touch) {
        g.fault("storage: " + name, () -> {
            if (touch) lane.touch(true);
            TownState state = lane.currentState();
            FaultKit.Pointer before = lane.pointer();
            lane.proxy.clearLog();
            FaultProxy.Rule rule = lane.proxy.on("fault", target);
            arm.accept(rule);
            TestTools.ProcResult r;
            try {
                r = lane.sync();
            } finally {
                lane.proxy.clearRules();
            }
            List<FaultProxy.Request> attempts = attempts(lane.proxy, rule);
            if (rule.hits().isEmpty())
                throw new AssertionError("the fault was never injected (no matching request)\n" + lane.proxy.logText());
            if (attempts.size() > maxAttempts)
                throw new AssertionError(attempts.size() + " attempts at the faulty request, more than " + maxAttempts + "\n" + lane.proxy.logText());
            FaultKit.Pointer after = lane.pointer();
            if (r.exitCode() == 0) {
                if (after.sameBytes(before)) throw new AssertionError("exit 0 but latest.json did not move");
                store.assertIntact(lane.bucket, lane.townId, after.timestamp(), after.manifestSha256());
                lane.states.put(after.timestamp(), state);
            } else if (r.exitCode() == 1) {
                if (!after.sameBytes(before)) {
                    store.assertIntact(lane.bucket, lane.townId, after.timestamp(), after.manifestSha256());
                    throw new AssertionError("exit 1 but latest.json moved from " + before.timestamp() + " to " + after.timestamp()
                            + "\n" + TestTools.tail(r.stderr(), 2000));
                }
                store.assertIntact(lane.bucket, lane.townId, before.timestamp(), before.manifestSha256());
                if (!r.stderr().contains("ERROR") || r.stderr().contains("\tat "))
                    throw new AssertionError("a failed sync must say why in one line, without a stack trace:\n" + TestTools.tail(r.stderr(), 2000));
            } else {
                throw new AssertionError("exit " + r.exitCode() + " (only 0 or 1 are right here)\n" + TestTools.tail(r.stderr(), 2000));
            }
            Want got = r.exitCode() == 0 ? Want.COMPLETES : Want.FAILS;
            if (got != want)
                throw new AssertionError("expected the sync to " + want + " but it " + got + " (exit " + r.exitCode() + ")\n"
                        + TestTools.tail(r.stderr(), 2500) + "\n--- requests ---\n" + TestTools.tail(lane.proxy.logText(), 3000));
            if (want == Want.FAILS && maxAttempts > 1 && attempts.size() < maxAttempts)
                throw new AssertionError("a persistent fault was tried " + attempts.size() + " times, expected " + maxAttempts);
            if (attempts.size() > 1) {
                List<Long> gaps = new ArrayList<>();
                for (int i = 1; i < attempts.size(); i++)
                    gaps.add((attempts.get(i).atNanos() - attempts.get(i - 1).atNanos()) / 1_000_000);
                System.out.println("        " + attempts.size() + " attempts, gaps between them (ms, backoff with jitter): " + gaps);
            }
        });
    }

    /** The faulty request and its retries: every request to the same method and target (path and query) from the first hit on. */
    private static List<FaultProxy.Request> attempts(FaultProxy proxy, FaultProxy.Rule rule) {
        if (rule.hits().isEmpty()) return List.of();
        FaultProxy.Request first = rule.hits().get(0);
        List<FaultProxy.Request> requests = proxy.log().stream().map(FaultProxy.Entry::request).distinct()
                .sorted(java.util.Comparator.comparingInt(FaultProxy.Request::index)).collect(Collectors.toList());
        return requests.stream().filter(r -> r.index() >= first.index() && r.method().equals(first.method())
                && r.target().equals(first.target())).collect(Collectors.toList());
    }
}

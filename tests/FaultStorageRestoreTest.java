import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.SortedMap;
import java.util.TreeMap;
import java.util.function.Consumer;
import java.util.function.Predicate;
import org.junit.jupiter.api.Test;

/**
 * Storage faults during restore (500/503, stalls, resets, bodies cut short, also with --force over a town): the restore
 * completes, or the volume is as it was but for the failure marker, and the restore retried once the storage is back
 * completes and clears the markers.
 */
class FaultStorageRestoreTest extends FaultSuite {
    @Override
    void start() {
        submit(() -> storageRestoreFaults(group("storage-restore"), syncedLane("restore", true)), "storage-restore");
    }

    @Test
    void storageFaultsDuringRestoreCompleteOrLeaveTheVolumeUntouched() {
        check("storage-restore");
    }

    private void storageRestoreFaults(FaultKit.Group g, Lane lane) {
        restoreFault(g, lane, "500 once on GET of a dolt/hq.backup file", Want.COMPLETES, false, FaultProxy.get("/dolt/hq.backup/"),
                r -> r.fail(500, "InternalError"));
        restoreFault(g, lane, "503 on every GET of a git/alpha.packs", Want.FAILS, false, FaultProxy.get("/git/alpha.packs/").and(GIT_PACK_FILE),
                r -> r.fail(503, "SlowDown").always());
        restoreFault(g, lane, "body of a file pack cut short once", Want.COMPLETES, false, FaultProxy.get(PACK),
                r -> r.cutResponse(1000));
        restoreFault(g, lane, "connection reset on every GET of manifest.json (--force over a town)", Want.FAILS, true,
                FaultProxy.get("/manifest.json"), r -> r.reset().always());
        restoreFault(g, lane, "3 s stall on GET latest.json", Want.COMPLETES, false, FaultProxy.get("/latest.json"),
                r -> r.stall(Duration.ofSeconds(3)));
        restoreFault(g, lane, "body of the file index cut short every time (--force over a town)", Want.FAILS, true,
                FaultProxy.get(INDEX_PIECE), r -> r.cutResponse(100).always());
        restoreFault(g, lane, "500 on every GET of latest.json", Want.FAILS, false, FaultProxy.get("/latest.json"),
                r -> r.fail(500, "InternalError").always());
    }

    private void restoreFault(FaultKit.Group g, Lane lane, String name, Want want, boolean force,
                              Predicate<FaultProxy.Request> target, Consumer<FaultProxy.Rule> arm) {
        g.fault("restore: " + name, () -> {
            FaultKit.Pointer latest = lane.pointer();
            Path base = TestTools.tempDir("fault-restore-");
            Path root = base.resolve("town");
            Path state = TestTools.tempDir("fault-restore-state-");   // the restoring machine's, outside the volume
            try {
                if (force) writeSentinelTown(root);
                else Files.createDirectories(root);
                SortedMap<String, String> before = FaultKit.tree(base);
                lane.proxy.clearLog();
                FaultProxy.Rule rule = lane.proxy.on("fault", target);
                arm.accept(rule);
                TestTools.ProcResult r;
                try {
                    r = lane.restore(root, state, Map.of("R2_ENDPOINT", lane.proxy.endpoint()), force ? new String[] {"--force"} : new String[0]);
                } finally {
                    lane.proxy.clearRules();
                }
                if (rule.hits().isEmpty()) throw new AssertionError("the fault was never injected\n" + lane.proxy.logText());
                if (r.exitCode() == 0) {
                    if (r.stderr().contains("FALLBACK"))
                        throw new FaultKit.DataLoss("a transient fault made the restore fall back to an older snapshot:\n" + TestTools.tail(r.stderr(), 2000));
                    String diff = lane.states.get(latest.timestamp()).diff(TownState.capture(root));
                    if (!diff.isEmpty()) throw new FaultKit.DataLoss("restored town differs:\n" + diff);
                } else {
                    assertUntouchedAfterFailedRestore("the volume after a failed restore", before, base, root, state, lane.bucket, lane.townId);
                    if (r.stderr().contains("\tat ")) throw new AssertionError("stack trace in a failed restore:\n" + r.stderr());
                }
                Want got = r.exitCode() == 0 ? Want.COMPLETES : Want.FAILS;
                if (got != want || (r.exitCode() != 0 && r.exitCode() != 1))
                    throw new AssertionError("expected the restore to " + want + " but it " + got + " (exit " + r.exitCode() + ")\n"
                            + TestTools.tail(r.stderr(), 2500) + "\n--- requests ---\n" + TestTools.tail(lane.proxy.logText(), 2000));
                if (r.exitCode() != 0) {
                    // The storage is back and the next start restores again, onto the same volume with the same state dir:
                    // it succeeds and removes the three markers, so the town's syncs are no longer held back.
                    TestTools.ProcResult again = lane.restore(root, state, Map.of("R2_ENDPOINT", lane.proxy.endpoint()),
                            force ? new String[] {"--force"} : new String[0]);
                    if (again.exitCode() != 0 || again.stderr().contains("FALLBACK"))
                        throw new AssertionError("the restore retried after the fault did not restore (exit " + again.exitCode() + ")\n"
                                + TestTools.tail(again.stderr(), 2500));
                    if (force) {
                        // --force again: the town that was there is moved aside whole (nothing deleted), then put away by
                        // the operator, so that what is compared is the restored town.
                        List<String> aside = FaultKit.children(root).stream().filter(n -> n.startsWith(Town.ASIDE_PREFIX)).toList();
                        if (aside.size() != 1) throw new FaultKit.DataLoss("the town that was on the volume is not kept aside: " + aside);
                        String town = base.relativize(root) + "/";
                        SortedMap<String, String> was = new TreeMap<>();
                        before.forEach((k, v) -> { if (k.startsWith(town) && !k.equals(town)) was.put(k.substring(town.length()), v); });
                        SortedMap<String, String> kept = FaultKit.tree(root.resolve(aside.get(0)));
                        kept.remove("/");
                        FaultKit.assertUntouched("the town that was on the volume, moved aside", was, kept);
                        TestTools.deleteRecursively(root.resolve(aside.get(0)));
                    }
                    String diff = lane.states.get(latest.timestamp()).diff(TownState.capture(root));
                    if (!diff.isEmpty()) throw new FaultKit.DataLoss("the town restored after the fault differs:\n" + diff);
                    assertFailureCleared(root, state, lane.bucket, lane.townId);
                }
            } finally {
                TestTools.deleteRecursively(base);
                TestTools.deleteRecursively(state);
            }
        });
    }
}

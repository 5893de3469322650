import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.SortedMap;
import java.util.stream.Collectors;
import org.junit.jupiter.api.Test;

/**
 * A full disk during sync and restore (a small tmpfs made for the test): under the work dir while packing, under the
 * state dir during dolt backup, under the town volume while downloading and when it is too small to extract into, and
 * under the work dir of --verify. Each fails cleanly, without a partial pointer, leaving the town and the volume as
 * they were.
 */
class FaultFullDiskTest extends FaultSuite {
    @Override
    void start() {
        submit(() -> fullDisk(group("full-disk"), syncedLane("disk", true)), "full-disk");
    }

    @Test
    void aFullDiskFailsCleanlyWithoutAPartialPointer() {
        check("full-disk");
    }

    private void fullDisk(FaultKit.Group g, Lane lane) {
        diskSync(g, lane, "work dir fills up while packing files (6 MB filesystem)", "R2_WORK_DIR", "6m", "no space left");
        diskSync(g, lane, "state dir fills up during dolt backup (32 KB filesystem)", "R2_STATE_DIR", "32k", "no space left");
        diskRestore(g, lane, "town volume fills up while downloading (6 MB filesystem)", "6m", false, "no space left");
        // The downloads fit; the files would not: refused before anything is extracted.
        diskRestore(g, lane, "town volume too small to extract into, --force over a town (20 MB filesystem)", "20m", true,
                "make room or restore onto a larger volume");
        g.fault("disk: --verify with a full work dir", () -> {
            try (FaultKit.SmallFs fs = FaultKit.SmallFs.mount("6m")) {
                SortedMap<String, String> before = FaultKit.tree(fs.dir());
                Path root = TestTools.tempDir("fault-verify-");
                TestTools.ProcResult r = lane.restore(root, Map.of("R2_WORK_DIR", fs.dir().toString()), "--verify");
                if (r.exitCode() != 1) throw new AssertionError("--verify on a full disk: exit " + r.exitCode() + "\n" + r.stderr());
                assertMentions(r.stderr(), "no space left");
                FaultKit.assertUntouched("the work dir filesystem", before, FaultKit.tree(fs.dir()));
            }
        });
        // The failed restores of this lane were retried or forgotten: its town is backed up again.
        g.step("the lane's town backs up after the failed restores were dealt with", () -> {
            lane.touch(true);
            lane.syncAndRecord();
            assertCleanAfterSync(lane, null, false);
        });
    }

    /** A sync whose work dir or state dir (dirVar) is a small filesystem that fills up. */
    private void diskSync(FaultKit.Group g, Lane lane, String name, String dirVar, String size, String mention) {
        g.fault("disk: sync: " + name, () -> {
            lane.touch(true);
            // Only what changed is packed: enough new bytes to fill the work dir's filesystem.
            if (dirVar.equals("R2_WORK_DIR")) writeBigFile(lane.town.root().resolve("plugins/disk-fill.bin"), 8 << 20);
            FaultKit.Pointer before = lane.pointer();
            Set<String> dbDirs = lane.town.databases().stream().map(db -> ".dolt-data/" + db + "/.dolt").collect(Collectors.toSet());
            SortedMap<String, String> townBefore = FaultKit.tree(lane.town.root(), dbDirs);
            TownState doltBefore = lane.currentState().only("dolt:");
            try (FaultKit.SmallFs fs = FaultKit.SmallFs.mount(size)) {
                TestTools.ProcResult r = lane.sync(Map.of(dirVar, fs.dir().toString()));
                if (r.exitCode() != 1) throw new AssertionError("exit " + r.exitCode() + " on a full disk\n" + TestTools.tail(r.stderr(), 3000));
                assertMentions(r.stderr(), mention);
                if (!lane.pointer().sameBytes(before)) throw new FaultKit.DataLoss("latest.json changed after a failed sync");
                store.assertIntact(lane.bucket, lane.townId, before.timestamp(), before.manifestSha256());
                // A state dir keeps dolt's identity, this machine's record of the failed sync, the backup
                // directories of the databases dolt finished with the states they hold (the next sync adds to
                // them), and the published snapshot's file index pieces (the next sync checks each against its
                // sha256 before using it); nothing else.
                List<String> left = FaultKit.filesUnder(fs.dir()).stream().filter(f -> !f.startsWith("dolt-home")
                        && !f.startsWith("dolt-backups") && !f.startsWith("dolt-backup-states") && !f.equals(LastSync.FILE)
                        && !f.startsWith("file-index"))
                        .collect(Collectors.toList());
                if (!left.isEmpty()) throw new AssertionError("the failed sync left files in its " + dirVar + ": " + left + "\n"
                        + TestTools.tail(r.stderr(), 2000));
            }
            FaultKit.assertUntouched("the town after a failed sync", townBefore, FaultKit.tree(lane.town.root(), dbDirs));
            String diff = doltBefore.diff(TownState.capture(lane.town.root()).only("dolt:"));
            if (!diff.isEmpty()) throw new FaultKit.DataLoss("the databases changed:\n" + diff);
            lane.syncAndRecord(); // the next sync with room works and cleans up
            assertCleanAfterSync(lane, null, false);
        });
    }

    private void diskRestore(FaultKit.Group g, Lane lane, String name, String size, boolean force, String mention) {
        g.fault("disk: restore: " + name, () -> {
            Path state = TestTools.tempDir("fault-restore-state-");   // the restoring machine's, outside the volume
            try (FaultKit.SmallFs fs = FaultKit.SmallFs.mount(size)) {
                Path root = fs.dir().resolve("town");
                if (force) writeSentinelTown(root);
                else Files.createDirectories(root);
                SortedMap<String, String> before = FaultKit.tree(fs.dir());
                TestTools.ProcResult r = lane.restore(root, state, Map.of(), force ? new String[] {"--force"} : new String[0]);
                if (r.exitCode() != 1) throw new AssertionError("exit " + r.exitCode() + " on a full disk\n" + TestTools.tail(r.stderr(), 3000));
                assertMentions(r.stderr(), mention);
                assertUntouchedAfterFailedRestore("the volume after a failed restore", before, fs.dir(), root, state, lane.bucket, lane.townId);
            } finally {
                TestTools.deleteRecursively(state);
            }
            // The bucket's marker holds back every machine of the town, the lane's too. The volume too small is given
            // up; the lane's town is the one to keep: the operator's decision, r2-restore --forget-failure on its machine.
            TestTools.ProcResult forget = lane.forgetFailure();
            if (forget.exitCode() != 0) throw new AssertionError("r2-restore --forget-failure: exit " + forget.exitCode() + "\n" + forget.stderr());
            assertFailureCleared(null, null, lane.bucket, lane.townId);
        });
    }
}

// Continuous verification (part of R2Common, included with //SOURCES). Deduplication means one damaged object can
// break every snapshot that shares it, and nothing reads a stored object again until a restore needs it: the
// daemon checks on a schedule of its own (R2_VERIFY_EVERY, daily by default) that the latest snapshot restores (a
// trial restore, as --verify runs it) and reads back a seventh of every stored object, a different seventh each
// day, so that each object is read again within a week (restic's `check --read-data-subset`).

import java.io.IOException;
import java.nio.file.*;
import java.time.Duration;
import java.time.Instant;
import java.util.*;

final class Verification {
    static final String LAST = "last-verify.json";
    /** Days in which every stored object is read once. */
    static final int ROTATION = 7;

    private Verification() {}

    /** What one verification found; status: ok, failed, or no-snapshot. */
    record Result(String at, String status, String snapshot, long objectsRead, long bytesRead, long durationMs, String error) {
        boolean failed() {
            return "failed".equals(status);
        }
    }

    /** The last verification recorded in the state dir (by the daemon), if any. */
    static Optional<Result> last(Path stateDir) {
        Path file = stateDir.resolve(LAST);
        try {
            return Files.isRegularFile(file) ? Optional.of(R2Common.JSON.readValue(file.toFile(), Result.class)) : Optional.empty();
        } catch (IOException | RuntimeException e) {
            Log.warn("verify: " + file + " is unreadable: " + e.getMessage());
            return Optional.empty();
        }
    }

    /** Verifies the latest snapshot and today's share of the stored objects; never throws (a failure is its result). */
    static Result run(Snapshots snapshots, Config config, Path workDir) {
        Instant start = Instant.now();
        String snapshot = null;
        long[] read = new long[2];
        try {
            Optional<Pointer> latest = snapshots.pointer();
            if (latest.isEmpty()) return new Result(start.toString(), "no-snapshot", null, 0, 0, 0, null);
            snapshot = latest.get().timestamp();
            Rebuild.trial(snapshots, config, latest.get(), snapshot, workDir);
            readShare(snapshots.store(), snapshots.keys(), workDir, (int) Math.floorMod(start.getEpochSecond() / 86_400, ROTATION), read);
            return new Result(start.toString(), "ok", snapshot, read[0], read[1], Duration.between(start, Instant.now()).toMillis(), null);
        } catch (IOException | RuntimeException e) {
            return new Result(start.toString(), "failed", snapshot, read[0], read[1], Duration.between(start, Instant.now()).toMillis(),
                    Log.redact(R2Cli.messageChain(e)));
        }
    }

    /**
     * Reads back today's share of the stored objects (the listing in key order, cut into ROTATION even parts: part
     * `day`; with seven objects or more, no part is empty),
     * each checked against the sha256 its name ends with. One that garbage collection removed since the listing is
     * passed over; any other missing or different object is damage.
     */
    private static void readShare(ObjectStore store, Keys keys, Path workDir, int day, long[] read) throws IOException {
        List<StoredObject> all = new ArrayList<>(store.list(keys.objects()));
        all.sort(Comparator.comparing(StoredObject::key));
        List<StoredObject> share = all.subList((int) ((long) day * all.size() / ROTATION), (int) ((long) (day + 1) * all.size() / ROTATION));
        Path scratch = Files.createTempDirectory(Files.createDirectories(workDir), "r2-read-");
        try {
            for (StoredObject o : share) {
                String sha = o.key().substring(o.key().lastIndexOf('/') + 1);
                if (!Sha256.HEX.matcher(sha).matches()) continue;   // not an object of a snapshot (a leftover upload)
                Path target = scratch.resolve("object");
                Files.deleteIfExists(target);
                FileEntry got;
                try {
                    got = store.download(o.key(), target, 0, new FileEntry("object", o.size(), sha), null);
                } catch (SnapshotDamaged e) {
                    if (store.list(o.key()).isEmpty()) continue;   // collected since the listing
                    throw e;
                }
                // A sealed object (incremental/s/) is named by a keyed hash: opening it proved it is what its key sealed under this
                // very name (the name is the associated data); an unsealed one is named by its sha256.
                boolean sealed = o.key().startsWith(keys.objects() + "s/");
                if (sealed ? o.size() < got.size() : got.size() != o.size() || !got.sha256().equals(sha))
                    throw new SnapshotDamaged(o.key() + " does not hold what its name says (" + got.size() + " bytes, sha256 "
                            + got.sha256() + ")");
                read[0]++;
                read[1] += o.size();
            }
        } finally {
            FileTrees.delete(scratch);
        }
    }
}

// What this tool reports (part of R2Common, included with //SOURCES), each as a typed record with one schema:
//   Report        the heartbeat's body (POST {api}/api/gastown/heartbeat) for a sync, a restore, a verification and a prune
//   Heartbeat     sends a Report; a failure is logged, never fatal
//   LastSync      last-sync.json in the state dir: this machine's last sync, for R2Status
//   PruneRun      pruned.json in the bucket: r2-prune's last run, for R2Status
//   RestoreState  the failed-restore markers (state dir, volume, bucket) and the staging marker of a restore
//                 interrupted while moving into place

import com.fasterxml.jackson.annotation.JsonInclude;

import java.io.*;
import java.net.HttpURLConnection;
import java.net.URI;
import java.nio.file.*;
import java.time.Instant;
import java.util.*;

/**
 * Status reports to the cloud API: POST {api}/api/gastown/heartbeat. A failure is logged, never fatal.
 * HttpURLConnection, not java.net.http: that client's selector thread waits in native code, and a JVM exiting with
 * such a thread waits 0.3 s for it, at the end of every flush and restore.
 */
final class Heartbeat {
    static final String PATH = "/api/gastown/heartbeat";
    private final URI endpoint;
    private final String token;

    Heartbeat(Config config) {
        this.endpoint = config.apiUrl() == null ? null
                : URI.create(config.apiUrl().toString().replaceAll("/+$", "") + PATH);
        this.token = config.apiToken();
    }

    boolean enabled() {
        return endpoint != null;
    }

    void send(Report body) {
        if (endpoint == null) return;
        HttpURLConnection http = null;
        try {
            byte[] json = R2Common.toJson(body);
            http = (HttpURLConnection) endpoint.toURL().openConnection();
            http.setConnectTimeout(5_000);
            http.setReadTimeout(10_000);
            http.setInstanceFollowRedirects(false);
            http.setRequestMethod("POST");
            http.setRequestProperty("Content-Type", "application/json");
            if (token != null && !token.isBlank()) http.setRequestProperty("Authorization", "Bearer " + token);
            http.setDoOutput(true);
            http.setFixedLengthStreamingMode(json.length);
            try (OutputStream out = http.getOutputStream()) {
                out.write(json);
            }
            int status = http.getResponseCode();
            if (status / 100 != 2)
                Log.warn("heartbeat: " + Log.redactUrl(endpoint.toString()) + " answered HTTP " + status);
        } catch (IOException e) {
            Log.warn("heartbeat: cannot reach " + Log.redactUrl(endpoint.toString()) + ": " + e.getMessage());
        } finally {
            if (http != null) http.disconnect();
        }
    }
}

/**
 * Local state shared by restore, sync and status, in the state dir; and the failed-restore marker. A failed restore
 * is recorded in three places, each enough to stop every sync from backing up an empty or half-restored town over
 * the good snapshots: the state dir (this machine), the volume (the next container on it, after `gt up` filled it)
 * and the bucket (any machine of the town). A successful restore or an operator (r2-restore --forget-failure)
 * removes all three. The staging marker makes the next start finish a restore interrupted while moving into place.
 */
final class RestoreState {
    static final String FAILED = "restore-failed.json";
    /** The marker at the town root (never backed up: Town.OWN_DIRS). */
    static final String FAILED_ON_VOLUME = ".r2-restore-failed.json";
    private static final String MOVING = "moving.json";

    private RestoreState() {}

    static void recordFailure(Config config, ObjectStore store, String error) {
        byte[] json = R2Common.toJson(new RestoreFailure(config.townId(), Instant.now().toString(), Writer.host(), Log.redact(error)));
        for (Path marker : List.of(config.stateDir().resolve(FAILED), config.townRoot().resolve(FAILED_ON_VOLUME))) {
            try {
                FileTrees.writeAtomically(marker, json);
            } catch (IOException e) {
                Log.warn("restore: cannot record the failure in " + marker + ": " + e.getMessage());
            }
        }
        try {
            store.putBytes(Keys.of(config).restoreFailed(), json);
        } catch (RuntimeException e) {
            Log.warn("restore: cannot record the failure in the bucket: " + R2Cli.messageChain(e));
        }
    }

    /**
     * Removes every marker; a bucket that cannot be reached keeps its marker (said), and the sync still refuses. A
     * credential that cannot delete (the sandbox's) overwrites the bucket's marker with a cleared one instead.
     */
    static void clearFailure(Config config, ObjectStore store) {
        for (Path marker : List.of(config.stateDir().resolve(FAILED), config.townRoot().resolve(FAILED_ON_VOLUME))) {
            try {
                Files.deleteIfExists(marker);
            } catch (IOException e) {
                Log.warn("cannot remove " + marker + ": " + e.getMessage());
            }
        }
        String key = Keys.of(config).restoreFailed();
        try {
            try {
                store.delete(List.of(key));
            } catch (DeleteRefused e) {
                if (!store.list(key).isEmpty())
                    store.putBytes(key, R2Common.toJson(Map.of(CLEARED, Instant.now().toString(), "townId", config.townId())));
            }
        } catch (RuntimeException e) {
            Log.warn("cannot remove the failed-restore marker from the bucket: " + R2Cli.messageChain(e));
        }
    }

    /** A bucket marker that holds this field was cleared by a credential that could not delete it. */
    private static final String CLEARED = "cleared";

    /** The bucket's marker of a failed restore, which any machine of the town may have left (and not one cleared since). */
    static boolean failedInBucket(ObjectStore store, Config config) {
        // One GET, no listing: the sync reads it beside its listing of the stored objects, and a second listing there
        // would fail or retry beside the first.
        try {
            return store.get(Keys.of(config).restoreFailed()).map(marker -> !cleared(marker.data())).orElse(false);
        } catch (SnapshotDamaged e) {
            return true;   // there, but changed since it was sealed: a failure all the same
        } catch (R2Exception e) {
            if (e.exitCode == R2Common.EXIT_USAGE) return true;   // sealed with a key this machine lacks: a failure all the same
            throw e;
        }
    }

    private static boolean cleared(byte[] marker) {
        try {
            return R2Common.JSON.readTree(marker).has(CLEARED);
        } catch (IOException e) {
            return false;   // unreadable: a failure all the same
        }
    }

    /** The local marker of a failed restore (this machine's state dir, or the volume), if any. */
    static Optional<Path> failure(Config config) {
        for (Path marker : List.of(config.stateDir().resolve(FAILED), config.townRoot().resolve(FAILED_ON_VOLUME)))
            if (Files.exists(marker, LinkOption.NOFOLLOW_LINKS)) return Optional.of(marker);
        return Optional.empty();
    }

    static void markMoving(Path staging, String timestamp) throws IOException {
        FileTrees.writeAtomically(staging.resolve(MOVING), R2Common.toJson(Map.of("snapshot", timestamp)));
    }

    /**
     * Removes the staging dir with the moving marker last: a restore killed while cleaning up is then
     * finished by the next start (nothing left to move, the rest removed) instead of leaving files behind.
     */
    static void removeStaging(Path staging) throws IOException {
        for (Path child : FileTrees.sortedChildren(staging))
            if (!child.getFileName().toString().equals(MOVING)) FileTrees.delete(child);
        FileTrees.delete(staging);
    }

    static boolean moving(Path staging) {
        return Files.isRegularFile(staging.resolve(MOVING));
    }

    static String movingSnapshot(Path staging) throws IOException {
        return R2Common.JSON.readTree(Files.readAllBytes(staging.resolve(MOVING))).path("snapshot").asText("unknown");
    }
}

/**
 * The heartbeat's body, one schema for every event: a sync (bytes and files uploaded, problems, how pruning went), a
 * restore (fallback), a verification (objects and bytes read back) and a prune (snapshots removed, objects deleted). A
 * field the event does not have is left out; snapshot is always there (null when the event names none). No secret is
 * ever in it: errors and problems pass through Log.redact.
 */
@JsonInclude(JsonInclude.Include.NON_NULL)
record Report(String townId, String event, String status, @JsonInclude(JsonInclude.Include.ALWAYS) String snapshot,
              Boolean fallback, Long objectsRead, Long bytesRead, Long durationMs, Long bytesUploaded, Integer filesUploaded,
              Integer filesAlreadyStored, List<String> problems, String pruning, Integer snapshotsRemoved, Integer objectsDeleted,
              Long bytesDeleted, String error) {

    /**
     * status: ok, partial (a snapshot with problems) or failed. pruning: how the history policy and garbage collection
     * ended once the snapshot was published: done, deferred (to r2-prune: the credential cannot delete, or R2_PRUNE=external;
     * never a failure of the backup) or failed; absent when the sync failed.
     */
    static Report sync(String townId, String status, String snapshot, long durationMs, long bytesUploaded, int filesUploaded,
                       int filesAlreadyStored, List<String> problems, String pruning, String error) {
        return new Report(townId, "sync", status, snapshot, null, null, null, durationMs, bytesUploaded, filesUploaded,
                filesAlreadyStored, problems.isEmpty() ? null : problems.stream().map(Log::redact).toList(), pruning, null, null, null,
                Log.redact(error));
    }

    /** status: ok, fallback, failed, or no-backup / volume-has-data when nothing was restored. */
    static Report restore(String townId, String status, String snapshot, boolean fallback, long durationMs, String error) {
        return new Report(townId, "restore", status, snapshot, fallback, null, null, durationMs, null, null, null, null, null, null, null,
                null, Log.redact(error));
    }

    /** status: ok, failed, or no-snapshot. */
    static Report verify(String townId, String status, String snapshot, long objectsRead, long bytesRead, long durationMs, String error) {
        return new Report(townId, "verify", status, snapshot, null, objectsRead, bytesRead, durationMs, null, null, null, null, null, null,
                null, null, Log.redact(error));
    }

    /** r2-prune's run. status: ok or failed; snapshot: the one latest.json named, which it kept. */
    static Report prune(PruneRun run, String latest, long durationMs) {
        return new Report(run.townId(), "prune", run.status(), latest, null, null, null, durationMs, null, null, null, null, null,
                run.snapshotsRemoved(), run.objectsDeleted(), run.bytesDeleted(), Log.redact(run.error()));
    }
}

/**
 * last-sync.json in the state dir: how the last sync on this machine ended, for R2Status (and the sandbox's gt).
 * pruning: as the heartbeat's (Report.sync).
 */
@JsonInclude(JsonInclude.Include.NON_NULL)
record LastSync(String townId, String finishedAt, String status, String snapshot, Long durationMs, String error, String lastVerify,
                String pruning) {
    static final String FILE = "last-sync.json";

    void write(Path stateDir) {
        try {
            FileTrees.writeAtomically(stateDir.resolve(FILE), R2Common.toJson(this));
        } catch (IOException e) {
            Log.warn("sync: cannot record the outcome in " + stateDir + ": " + e.getMessage());
        }
    }

    /** The last sync recorded in stateDir: empty when none; one that cannot be read says so in its error. */
    static Optional<LastSync> read(Path stateDir) {
        Path file = stateDir.resolve(FILE);
        if (!Files.isRegularFile(file)) return Optional.empty();
        try {
            return Optional.of(R2Common.JSON.readValue(file.toFile(), LastSync.class));
        } catch (IOException e) {
            return Optional.of(new LastSync(null, null, null, null, null, file + " is unreadable: " + e.getMessage(), null, null));
        }
    }
}

/** restore-failed.json (state dir, bucket) and .r2-restore-failed.json (volume): a failed restore, for every sync to see. */
@JsonInclude(JsonInclude.Include.NON_NULL)
record RestoreFailure(String townId, String at, String machine, String error) {
    static Optional<RestoreFailure> read(Path marker) {
        if (!Files.exists(marker, LinkOption.NOFOLLOW_LINKS)) return Optional.empty();
        try {
            return Optional.of(R2Common.JSON.readValue(marker.toFile(), RestoreFailure.class));
        } catch (IOException e) {
            return Optional.of(new RestoreFailure(null, null, null, marker + " is unreadable: " + e.getMessage()));
        }
    }
}

/**
 * pruned.json in the town's prefix: how r2-prune's last run went. Written at its start (status running: the store's
 * LastModified of that write is the run's clock) and at its end (ok or failed); R2Status shows it. Whoever can write
 * the bucket can write it too: it informs, it proves nothing.
 */
@JsonInclude(JsonInclude.Include.NON_NULL)
record PruneRun(String townId, String startedAt, String finishedAt, String status, Integer snapshotsRemoved, Integer snapshotsKept,
                Integer objectsDeleted, Long bytesDeleted, String error) {
    static final String FILE = "pruned.json";
    static final String RUNNING = "running";
    static final String OK = "ok";
    static final String FAILED = "failed";

    static String key(Keys keys) {
        return keys.town() + FILE;
    }

    static PruneRun running(String townId, Instant startedAt) {
        return new PruneRun(townId, startedAt.toString(), null, RUNNING, null, null, null, null, null);
    }

    void write(ObjectStore store, Keys keys) {
        store.putBytes(key(keys), R2Common.toJson(this));
    }

    /** r2-prune's last run as the bucket records it: empty when none ran; one that cannot be read says so in its error. */
    static Optional<PruneRun> read(ObjectStore store, Keys keys) {
        Optional<Versioned> json = store.get(key(keys));
        if (json.isEmpty()) return Optional.empty();
        try {
            return Optional.of(R2Common.JSON.readValue(json.get().data(), PruneRun.class));
        } catch (IOException e) {
            return Optional.of(new PruneRun(null, null, null, null, null, null, null, null, FILE + " is unreadable: " + e.getMessage()));
        }
    }
}

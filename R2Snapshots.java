// A town's snapshots in the object store (part of R2Common, included with //SOURCES): Litestream's replica.

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.*;
import java.time.Duration;
import java.time.Instant;
import java.util.*;
import java.util.stream.Collectors;

/**
 * A town's snapshots in a store: the one reader of latest.json (with its one pin check), the listing of snapshots
 * with a cache of their manifests and formats, publishing (a manifest under a free timestamp, then latest.json moved
 * by a conditional write), the download of a snapshot checked against its manifest, and the writer and held.json.
 * Manifests and formats never change once written, so they are read once per process.
 */
final class Snapshots {
    /**
     * Objects sent or fetched at once: a cycle's few small files wait for R2's round trips, not for the link; a
     * restore's many objects fill it.
     */
    static final int TRANSFERS = 4;

    private final ObjectStore store;
    private final Config config;
    private final Keys keys;
    private final Map<String, Manifest> manifests = new java.util.concurrent.ConcurrentHashMap<>();
    private final Map<String, Integer> formats = new java.util.concurrent.ConcurrentHashMap<>();

    Snapshots(ObjectStore store, Config config) {
        this.store = store;
        this.config = config;
        this.keys = Keys.of(config);
    }

    ObjectStore store() {
        return store;
    }

    Keys keys() {
        return keys;
    }

    /** The keys a snapshot's objects are under: sealed by the key its manifest names, or unsealed. */
    Keys keysOf(Manifest manifest) {
        return Keys.of(config, manifest);
    }

    // ---------------------------------------------------------------------------------------------
    // Sealing: which objects may be trusted
    // ---------------------------------------------------------------------------------------------

    /** True once the town's backups are sealed (sealed.json exists: even damaged, it says so; nothing unsealed is trusted). */
    boolean sealedTown() {
        try {
            return store.get(keys.sealedMarker()).isPresent();   // one GET: a sync reads it beside its listing of the objects
        } catch (SnapshotDamaged e) {
            return true;
        } catch (R2Exception e) {
            if (e.exitCode == R2Common.EXIT_USAGE) return true;   // sealed with a key this machine lacks: sealed all the same
            throw e;
        }
    }

    /**
     * What may be trusted of an object a snapshot is read from (latest.json, a manifest): sealed with a key of the town
     * (SealedStore checked it), or unsealed while the town has no key, or has one but no sealed backup yet (the
     * snapshots from before are restored, loudly). Unsealed in a sealed town: refused, as planted.
     */
    private void requireTrusted(Versioned object, String what) {
        if (object.keyId() != null || keys.seal() == null) return;
        if (sealedTown())
            throw new SnapshotDamaged(what + " is not sealed, but town " + config.townId() + "'s backups are (" + keys.sealedMarker()
                    + "): refused, as anyone with write access to the bucket could have planted it");
        Log.warn(what + " is UNSEALED (written before the town had a key): it is trusted as it is; the next sync seals");
    }

    /** Marks the town sealed, once: from the first sealed sync on, nothing unsealed is trusted. */
    private void markSealed() {
        if (keys.seal() == null || sealedTown()) return;
        try {
            store.putIfMatch(keys.sealedMarker(), R2Common.toJson(Map.of("townId", config.townId(), "sealedSince", Instant.now().toString())), null);
            Log.info("sync: the backups of town " + config.townId() + " are sealed from now on (key " + keys.seal().id() + ")");
        } catch (PreconditionFailed e) {
            // another sync marked it first
        }
    }

    // ---------------------------------------------------------------------------------------------
    // latest.json
    // ---------------------------------------------------------------------------------------------

    /** latest.json as read for a conditional write: the pointer (null if none or damaged) and the ETag it was read at. */
    record Latest(Pointer pointer, String etag) {
        String timestamp() {
            return pointer == null ? null : pointer.timestamp();
        }
    }

    /** latest.json for the sync, which replaces it: a damaged pointer must not stop new backups (said, and replaced). */
    Latest latestToReplace() {
        Optional<Versioned> latest;
        try {
            latest = store.get(keys.latest());
        } catch (SnapshotDamaged e) {
            Log.warn("sync: " + e.getMessage() + "; it will be replaced by this snapshot");
            return new Latest(null, null);
        }
        if (latest.isEmpty()) return new Latest(null, null);
        try {
            requireTrusted(latest.get(), "latest.json");
            return new Latest(R2Common.fromJson(latest.get().data(), Pointer.class, "latest.json"), latest.get().etag());
        } catch (R2Exception e) {
            Log.warn("sync: " + e.getMessage() + "; it will be replaced by this snapshot");
            return new Latest(null, latest.get().etag());
        }
    }

    /** latest.json as the restore, the status and the verification read it: empty when none exists; damaged is an error. */
    Optional<Pointer> pointer() {
        return store.get(keys.latest()).map(v -> {
            requireTrusted(v, "latest.json");
            return R2Common.fromJson(v.data(), Pointer.class, "latest.json");
        });
    }

    /** The one pin check: when latest.json names this snapshot, its manifest must be the one it pins. */
    static void requirePinned(Pointer latest, String timestamp, byte[] manifestJson) {
        if (latest != null && latest.timestamp().equals(timestamp) && latest.manifestSha256() != null
                && !latest.manifestSha256().equals(Sha256.of(manifestJson)))
            throw new SnapshotDamaged("manifest.json of " + timestamp + " is not the one latest.json pins (sha256 differs)");
    }

    /**
     * This machine's writer id. A latest.json written under another id means a second machine backs up this town
     * (or TOWN_ID names another town): refused, unless takeOver. A pointer that names no writer (written before
     * 0.6), or none at all, is adopted.
     */
    String requireWriter(Latest latest, boolean takeOver) {
        String mine = Writer.of(config.townRoot());
        String theirs = latest.pointer() == null ? null : latest.pointer().writer();
        if (theirs != null && !theirs.equals(mine) && !takeOver)
            throw new R2Exception(R2Common.EXIT_FAILED, "sync: latest.json of town " + config.townId() + " was written by another "
                    + "machine (writer " + theirs + "; this one is " + mine + "): is a second machine backing up this town, or "
                    + "does TOWN_ID name another town? Nothing was published. If this machine is the town's now, run "
                    + "r2-sync --immediate --take-over once.");
        if (theirs != null && !theirs.equals(mine)) Log.warn("sync: --take-over: this machine (" + mine + ") is the writer of town "
                + config.townId() + " from now on, in place of " + theirs);
        return mine;
    }

    /**
     * After a restore, the restoring machine becomes the town's writer: latest.json names it (a conditional write; a
     * pointer moved meanwhile is left as it is, said). A machine that wrote before, still running, is then refused.
     */
    void claimWriter() {
        String id = Writer.of(config.townRoot());
        Optional<Versioned> latest = store.get(keys.latest());
        if (latest.isEmpty()) return;
        try {
            Pointer p = R2Common.fromJson(latest.get().data(), Pointer.class, "latest.json");
            store.putIfMatch(keys.latest(), R2Common.toJson(new Pointer(p.timestamp(), p.manifestSha256(), id)), latest.get().etag());
            Log.info("restore: this machine is the writer of town " + config.townId() + " now (" + id + ")");
        } catch (R2Exception e) {
            Log.warn("restore: latest.json could not name this volume as the writer (" + e.getMessage() + "); the first sync "
                    + "will refuse until r2-sync --take-over");
        }
    }

    // ---------------------------------------------------------------------------------------------
    // Listing, and each snapshot's manifest and format
    // ---------------------------------------------------------------------------------------------

    /** Every object under snapshots/, by the timestamp of its snapshot, newest first. */
    Map<String, List<StoredObject>> byTimestamp() {
        Map<String, List<StoredObject>> byTimestamp = new TreeMap<>(Comparator.reverseOrder());
        for (StoredObject o : store.list(keys.snapshots())) {
            String ts = keys.timestampOf(o.key());
            if (ts != null) byTimestamp.computeIfAbsent(ts, k -> new ArrayList<>()).add(o);
        }
        return byTimestamp;
    }

    /** Snapshot timestamps that have a manifest, newest first. */
    List<String> complete() {
        return byTimestamp().entrySet().stream().filter(e -> hasManifest(e.getKey(), e.getValue())).map(Map.Entry::getKey)
                .collect(Collectors.toList());
    }

    /** A snapshot is complete once its manifest exists; a prefix without one is an older version's leftover. */
    boolean hasManifest(String timestamp, List<StoredObject> listed) {
        String manifest = keys.object(timestamp, Keys.MANIFEST);
        return listed.stream().anyMatch(o -> o.key().equals(manifest));
    }

    /** Every object under incremental/ as listed now: what need not be uploaded again. */
    Map<String, StoredObject> storedObjects() {
        Map<String, StoredObject> stored = new HashMap<>();
        for (StoredObject o : store.list(keys.objects())) stored.put(o.key(), o);
        return stored;
    }

    /** A complete snapshot's manifest in a format this tool reads, read once and remembered; null for another format. */
    Manifest manifest(String timestamp) {
        if (!manifests.containsKey(timestamp) && !formats.containsKey(timestamp)) {
            Optional<Versioned> json = store.get(keys.object(timestamp, Keys.MANIFEST));
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
    int formatOf(String timestamp) {
        try {
            Manifest manifest = manifest(timestamp);
            if (manifest != null) return manifest.formatVersion();
        } catch (R2Exception e) {
            formats.putIfAbsent(timestamp, -1);
        }
        return formats.get(timestamp);
    }

    /** Forgets a snapshot that is gone (removed by the history policy, or discarded). */
    void forget(String timestamp) {
        manifests.remove(timestamp);
        formats.remove(timestamp);
    }

    // ---------------------------------------------------------------------------------------------
    // held.json
    // ---------------------------------------------------------------------------------------------

    /** What held.json says; none yet is an empty hold. One that does not parse holds nothing back: said loudly. */
    Held held() {
        Optional<Versioned> json = store.get(keys.held());
        if (json.isEmpty()) return new Held(Map.of());
        return R2Common.fromJson(json.get().data(), Held.class, "held.json");
    }

    /** Keeps snapshots whatever the history policy says (held.json), each with why. */
    void hold(List<String> timestamps, List<String> why) {
        Held held = held();
        for (int i = 0; i < timestamps.size(); i++)
            held = held.with(timestamps.get(i), i < why.size() ? why.get(i) : "unusable");
        store.putBytes(keys.held(), R2Common.toJson(held));
    }

    /** Writes an empty hold rather than deleting held.json: a credential that cannot delete releases too. */
    void releaseHeld() {
        store.putBytes(keys.held(), R2Common.toJson(new Held(Map.of())));
    }

    // ---------------------------------------------------------------------------------------------
    // Publishing
    // ---------------------------------------------------------------------------------------------

    /**
     * Uploads every object of the snapshot (a file, or a piece of one) the bucket does not hold yet, TRANSFERS at a
     * time. One it holds is skipped when the previous snapshot uses it (garbage collection keeps it) or it is
     * young enough that collection cannot take it before this sync publishes (an upload of an interrupted sync:
     * a large git pack or dolt table file goes on from the pieces that sync stored).
     */
    Transfer upload(Snapshot snapshot, Manifest base, Duration gcGrace) throws IOException {
        Instant t = Instant.now();
        Set<String> baseKeys = base == null ? Set.of() : base.objects().stream().map(keysOf(base)::object).collect(Collectors.toSet());
        Instant freshAfter = t.minus(gcGrace.dividedBy(2));
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

    private record ObjectUpload(String key, Path local, FileEntry.Part part) {}

    /** What an upload sent: bytes, files sent (a file in pieces counts once), files the bucket held already. */
    record Transfer(long bytes, int uploaded, int present) {
        static final Transfer NONE = new Transfer(0, 0, 0);
    }

    /**
     * Publishes the snapshot: creates its manifest.json under a timestamp newer than latest.json's (only if no
     * other writer has that timestamp), then moves latest.json to it.
     */
    Manifest publish(Latest previous, Snapshot snapshot, Versions versions, String writer, HistoryPolicy history) {
        Instant candidate = Keys.parse(snapshot.timestamp());
        if (previous.pointer() != null) {
            Instant latest = Keys.parse(previous.pointer().timestamp());
            if (!candidate.isAfter(latest)) candidate = latest.plusSeconds(1);
        }
        for (int attempt = 0; attempt < 30; attempt++, candidate = candidate.plusSeconds(1)) {
            Manifest manifest = snapshot.manifest(Keys.format(candidate), config.townId(), config.townRoot().toString(), versions, history);
            byte[] json = R2Common.toJson(manifest);
            try {
                store.putIfMatch(keys.object(manifest.timestamp(), Keys.MANIFEST), json, null);
            } catch (PreconditionFailed e) {
                continue;   // another writer holds this second; take the next one
            }
            manifests.put(manifest.timestamp(), manifest);
            markSealed();
            movePointer(previous, manifest, json, writer);
            return manifest;
        }
        throw new R2Exception(R2Common.EXIT_FAILED, "sync: could not create a manifest under a free timestamp after 30 tries");
    }

    /**
     * Moves latest.json with a conditional write on the ETag read at the start: if another writer moved it
     * meanwhile, a newer snapshot of theirs is never replaced, and ours is discarded.
     */
    private void movePointer(Latest previous, Manifest manifest, byte[] manifestJson, String writer) {
        String timestamp = manifest.timestamp();
        byte[] pointer = R2Common.toJson(new Pointer(timestamp, Sha256.of(manifestJson), writer));
        String expected = previous.etag();
        for (int attempt = 0; attempt < 3; attempt++) {
            try {
                store.putIfMatch(keys.latest(), pointer, expected);
                Log.info("sync " + timestamp + ": latest.json now names " + timestamp);
                return;
            } catch (PreconditionFailed e) {
                Latest now = latestToReplace();
                String theirs = now.timestamp();
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
        forget(timestamp);
        try {
            store.delete(store.list(keys.snapshot(timestamp)).stream().map(StoredObject::key).collect(Collectors.toList()));
        } catch (DeleteRefused e) {
            Log.warn("sync " + timestamp + ": the discarded snapshot stays in the bucket for the history policy (" + e.getMessage() + ")");
        }
    }

    /** Deletes whole snapshots (every object under their prefixes, as listed). */
    void remove(Map<String, List<StoredObject>> listed, Collection<String> timestamps) {
        List<String> doomed = new ArrayList<>();
        for (String ts : timestamps) listed.getOrDefault(ts, List.of()).forEach(o -> doomed.add(o.key()));
        if (!doomed.isEmpty()) store.delete(doomed);
        timestamps.forEach(this::forget);
    }

    // ---------------------------------------------------------------------------------------------
    // Downloading
    // ---------------------------------------------------------------------------------------------

    /** A snapshot downloaded into dir, every file checked against the manifest, the manifest against latest.json. */
    record Downloaded(String timestamp, Manifest manifest, Path dir) {
        Path file(String path) {
            return dir.resolve(path);
        }
    }

    Downloaded download(Pointer latest, String timestamp, Path dir) throws IOException {
        Instant t = Instant.now();
        Versioned object = store.get(keys.object(timestamp, Keys.MANIFEST))
                .orElseThrow(() -> new SnapshotDamaged("manifest.json of " + timestamp
                        + " is missing (the snapshot was deleted or never finished)"));
        requireTrusted(object, "manifest.json of " + timestamp);
        byte[] manifestJson = object.data();
        requirePinned(latest, timestamp, manifestJson);
        int format = Manifest.formatOf(manifestJson);
        if (!Manifest.reads(format) && format != -1)
            throw new R2Exception(R2Common.EXIT_FAILED, "snapshot " + timestamp + ": " + new Manifest.UnreadableFormat(format).getMessage());
        Manifest manifest;
        try {
            manifest = R2Common.fromJson(manifestJson, Manifest.class, "manifest.json of " + timestamp);
        } catch (R2Exception e) {
            throw new SnapshotDamaged(e.getMessage(), e);
        }
        if (!manifest.timestamp().equals(timestamp) || !manifest.townId().equals(config.townId()))
            throw new SnapshotDamaged("manifest.json of " + timestamp + " belongs to "
                    + manifest.townId() + "/" + manifest.timestamp());
        if (!Objects.equals(manifest.keyId(), object.keyId()))
            throw new SnapshotDamaged("manifest.json of " + timestamp + " names key " + manifest.keyId() + " but is sealed with "
                    + object.keyId());
        Keys keys = keysOf(manifest);
        Progress progress = new Progress("download", manifest.totalBytes());
        List<Parallel.Task> downloads = new ArrayList<>();
        for (FileEntry expected : manifest.files()) {
            Path target = dir.resolve(expected.path());
            Files.createDirectories(target.getParent());
            downloads.addAll(store.downloads(keys, expected, target, timestamp, progress));
        }
        Parallel.run(TRANSFERS, downloads);
        progress.finish();
        if (!manifest.problems().isEmpty())
            Log.warn("restore: snapshot " + timestamp + " is PARTIAL; when it was taken these were not backed up: "
                    + manifest.problems().stream().map(p -> p.part() + (p.carriedFrom() != null ? " (copy from " + p.carriedFrom() + ")" : ""))
                    .collect(Collectors.joining(", ")));
        Log.info("restore: snapshot " + timestamp + ": " + manifest.files().size() + " files, " + Log.bytes(manifest.totalBytes())
                + " downloaded and verified in " + Log.seconds(Duration.between(t, Instant.now())));
        return new Downloaded(timestamp, manifest, dir);
    }
}

/** What one sync has built so far: files to upload (or already stored), facts, and problems. */
final class Snapshot {
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
    private final Lifetime lifetime;
    private final List<Artifact> files = new ArrayList<>();
    private final List<DatabaseFacts> databases = new ArrayList<>();
    private final List<RepoFacts> repos = new ArrayList<>();
    private final List<Problem> problems = new ArrayList<>();
    /** The file index pieces in order, with their local files; the catalog of contents that goes with them. */
    Map<FileEntry, Path> fileIndex = Map.of();
    Path catalog;
    Map<String, Long> liveBytes = Map.of();
    private int succeeded;
    private int attempted;

    Snapshot(String timestamp, Path dir, Keys keys, Map<String, StoredObject> stored, String baseTimestamp, Lifetime lifetime) {
        this.timestamp = timestamp;
        this.lifetime = lifetime;
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
        return o != null && o.size() == keys.storedSize(object.size()) ? o : null;
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
            if (lifetime.shuttingDown() || Thread.currentThread().isInterrupted())
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
                history, entries, fileIndex.keySet().stream().map(FileEntry::path).toList(), databases, repos, problems, keys.keyId());
    }
}

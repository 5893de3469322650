// History: which snapshots are kept, and garbage collection of the objects none of them uses (part of
// R2Common, included with //SOURCES). The policy is restic's `forget`: the last N snapshots, and the newest
// snapshot of each of the last H hours and D days that have one. Objects are shared between snapshots, so
// a kept snapshot costs only what changed since the one before it.
// Snapshots are dated by their names (the writer's clock) when a sync prunes itself, and by the store's LastModified
// of their manifests when r2-prune does it from outside the sandbox (docs/security.md).
//   HistoryOptions   the picocli mixin (--keep, --keep-hourly, --keep-daily, --gc-grace)
//   PruneOption      the sync's --prune: self (it applies the policy) or external (r2-prune does; it deletes nothing)
//   Retention        which snapshots a policy (HistoryPolicy, R2Format) keeps, and why
//   GarbageCollector deletes objects no kept snapshot names, once they are older than the grace period
//   History          the policy and collection as one run applies them: after a sync's publish, or in r2-prune

import picocli.CommandLine.Option;

import java.io.IOException;
import java.time.Duration;
import java.time.Instant;
import java.util.*;
import java.util.stream.Collectors;

final class HistoryOptions {
    @Option(names = "--keep", defaultValue = "${env:R2_KEEP_SNAPSHOTS:-3}", paramLabel = "N",
            description = "Keep the last N snapshots (env R2_KEEP_SNAPSHOTS, default ${DEFAULT-VALUE}).")
    int last;

    @Option(names = "--keep-hourly", defaultValue = "${env:R2_KEEP_HOURLY:-24}", paramLabel = "N",
            description = "Also keep the newest snapshot of each of the last N hours that have one "
                    + "(env R2_KEEP_HOURLY, default ${DEFAULT-VALUE}).")
    int hourly;

    @Option(names = "--keep-daily", defaultValue = "${env:R2_KEEP_DAILY:-7}", paramLabel = "N",
            description = "Also keep the newest snapshot of each of the last N days that have one "
                    + "(env R2_KEEP_DAILY, default ${DEFAULT-VALUE}).")
    int daily;

    @Option(names = "--gc-grace", defaultValue = "${env:R2_GC_GRACE:-6h}", converter = DurationConverter.class,
            paramLabel = "DURATION", description = "An object no kept snapshot uses is deleted only once it is older than "
            + "this, so a sync still uploading (here or on another machine) never loses one; a sync must finish within "
            + "half of it (env R2_GC_GRACE, default ${DEFAULT-VALUE}).")
    Duration gcGrace;

    HistoryPolicy policy() {
        if (last < 1) throw R2Options.usage("--keep must be at least 1");
        if (hourly < 0 || daily < 0) throw R2Options.usage("--keep-hourly and --keep-daily cannot be negative");
        if (gcGrace.toMinutes() < 10) throw R2Options.usage("--gc-grace must be at least 10m");
        return new HistoryPolicy(last, hourly, daily);
    }
}

/**
 * Who applies the history policy and garbage collection after a sync publishes. self: the sync does; a store that
 * refuses its deletes (a credential that cannot delete) makes it say so and leave them to r2-prune. external: r2-prune
 * does, with a credential that can delete (docs/security.md); the sync reads no history and sends no delete.
 */
final class PruneOption {
    enum Mode { self, external }

    @Option(names = "--prune", defaultValue = "${env:R2_PRUNE:-self}", paramLabel = "WHO",
            description = "Who applies the history policy and garbage collection after a snapshot is published: self (this "
                    + "sync), or external (r2-prune, run elsewhere with a credential that can delete; this sync deletes nothing "
                    + "and reports pruning as deferred). One of: ${COMPLETION-CANDIDATES} (env R2_PRUNE, default ${DEFAULT-VALUE}).")
    Mode mode;

    boolean self() {
        return mode == Mode.self;
    }
}

/** Which snapshots a history policy keeps: restic's `forget`. */
final class Retention {
    private Retention() {}

    /**
     * The snapshots kept, each with why (e.g. "last, hourly"), of the given timestamps; the rest are to go.
     * A snapshot counts for the hour and day (UTC) its timestamp names.
     */
    static Map<String, String> keep(HistoryPolicy policy, Collection<String> timestamps) {
        Map<String, Instant> named = new HashMap<>();
        for (String ts : timestamps) named.put(ts, Keys.parse(ts));
        return keep(policy, named);
    }

    /**
     * The snapshots kept, each with why, of the snapshots given with the time each counts as taken at (r2-prune: when
     * the store received its manifest); the rest are to go. A snapshot counts for the hour and day (UTC) of that time;
     * of two with the same time, the later name is the newer.
     */
    static Map<String, String> keep(HistoryPolicy policy, Map<String, Instant> takenAt) {
        List<String> newestFirst = takenAt.keySet().stream()
                .sorted(Comparator.comparing((String ts) -> takenAt.get(ts)).thenComparing(Comparator.naturalOrder()).reversed())
                .collect(Collectors.toList());
        Map<String, List<String>> reasons = new LinkedHashMap<>();
        for (int i = 0; i < Math.min(policy.last(), newestFirst.size()); i++)
            reasons.computeIfAbsent(newestFirst.get(i), k -> new ArrayList<>()).add("last");
        newestOfEach(newestFirst, takenAt, "yyyyMMddTHH".length(), policy.hourly(), "hourly", reasons);
        newestOfEach(newestFirst, takenAt, "yyyyMMdd".length(), policy.daily(), "daily", reasons);
        Map<String, String> kept = new TreeMap<>(Comparator.reverseOrder());
        reasons.forEach((ts, why) -> kept.put(ts, String.join(", ", why)));
        return kept;
    }

    private static void newestOfEach(List<String> newestFirst, Map<String, Instant> takenAt, int periodChars, int periods, String why,
                                     Map<String, List<String>> reasons) {
        Set<String> seen = new HashSet<>();
        for (String ts : newestFirst) {
            if (seen.size() >= periods) return;
            if (seen.add(Keys.format(takenAt.get(ts)).substring(0, periodChars))) reasons.computeIfAbsent(ts, k -> new ArrayList<>()).add(why);
        }
    }
}

final class GarbageCollector {
    private GarbageCollector() {}

    record Collected(int deleted, long bytes, int young, long youngBytes) {}

    /**
     * Deletes every listed object (those under keys.objects()) that no key in used names and that was last written
     * before now - grace. Objects younger than that may belong to a sync still uploading: they stay until a later
     * run, as do those written since the listing. Pending multipart uploads older than that are aborted.
     */
    static Collected collect(ObjectStore store, Collection<StoredObject> objects, List<PendingUpload> pending, Set<String> used,
                             Duration grace, Instant now) {
        Instant cutoff = now.minus(grace);
        List<String> doomed = new ArrayList<>();
        long bytes = 0, youngBytes = 0;
        int young = 0;
        for (StoredObject o : objects) {
            if (used.contains(o.key())) continue;
            if (o.modified() != null && o.modified().isAfter(cutoff)) {
                young++;
                youngBytes += o.size();
                continue;
            }
            doomed.add(o.key());
            bytes += o.size();
        }
        if (!doomed.isEmpty()) store.delete(doomed);
        // Multipart uploads are what versions before 0.5 (format 4) left when killed mid-upload; this one makes none.
        for (PendingUpload u : pending)
            if (u.initiated() == null || u.initiated().isBefore(cutoff)) store.abort(u);
        return new Collected(doomed.size(), bytes, young, youngBytes);
    }
}

/**
 * The history policy and garbage collection as one run applies them: a sync once its snapshot is published (dating
 * snapshots by their names), or r2-prune (dating them by when the store received their manifests). Which snapshots
 * go (Retention, held.json, older formats, unfinished prefixes), then which objects no remaining snapshot uses. A
 * delete the store refuses ends the run as deferred: what is left is r2-prune's (or the next run's) to remove.
 */
final class History {
    private final Snapshots snapshots;
    private final HistoryOptions history;

    History(Snapshots snapshots, HistoryOptions history) {
        this.snapshots = snapshots;
        this.history = history;
    }

    /**
     * What the history policy and garbage collection look at: every snapshot (by timestamp), each complete one's
     * manifest (read four at a time into the cache, so that the policy, once the snapshot is published, waits for
     * no request), and what multipart uploads older versions left. Read at the start, it misses only snapshots
     * published meanwhile, by another writer: those are left to the next sync.
     */
    record HistoryState(Map<String, List<StoredObject>> snapshots, List<PendingUpload> pendingUploads, Held held) {}

    static HistoryState read(Snapshots snapshots) throws IOException {
        Map<String, List<StoredObject>> byTimestamp = snapshots.byTimestamp();
        Parallel.run(Snapshots.TRANSFERS, byTimestamp.entrySet().stream()
                .filter(e -> snapshots.hasManifest(e.getKey(), e.getValue()))
                .<Parallel.Task>map(e -> () -> snapshots.formatOf(e.getKey())).collect(Collectors.toList()));
        return new HistoryState(byTimestamp, snapshots.store().pendingUploads(snapshots.keys().objects()), snapshots.held());
    }

    /**
     * How a run ended. pruning: done (the policy applied and garbage collected), deferred (the store refused a delete:
     * the credential cannot delete, or a bucket lock rule protects the object still) or failed (collection stopped:
     * a manifest cannot be read; or the run failed, which the caller records). removed: the snapshots deleted;
     * collected: null when collection did not run.
     */
    record Outcome(String pruning, List<String> removed, int kept, GarbageCollector.Collected collected, String reason) {
        static final String DONE = "done";
        static final String DEFERRED = "deferred";
        static final String FAILED = "failed";
    }

    /**
     * A sync: applies the history policy to the snapshots up to ours, by their names, then collects the objects no
     * remaining snapshot uses. Never touches ours (the one latest.json names) or anything newer (another writer's).
     */
    Outcome apply(String current, HistoryState listed, Collection<StoredObject> objects) {
        Map<String, List<StoredObject>> byTimestamp = new TreeMap<>(Comparator.reverseOrder());
        byTimestamp.putAll(listed.snapshots());
        byTimestamp.putIfAbsent(current, List.of());   // published after the listing
        return run("sync " + current, byTimestamp, ts -> ts.compareTo(current) <= 0, Keys::parse, Set.of(current), listed, objects,
                Instant.now());
    }

    /**
     * r2-prune: applies the history policy to every snapshot, each dated by when the store received its manifest
     * (its LastModified as listed), never by its name, which the writer's clock made: a snapshot named in the future
     * counts for the hour it arrived in, so a flood of new snapshots takes one hourly and one daily place, whatever
     * they are named. Never removes the snapshot latest (latest.json's when the run started) nor one the store
     * received less than half the grace period before now (a sync may be publishing it; a bucket lock rule of at most
     * that age refuses its delete anyway). now is the store's time.
     */
    Outcome prune(String latest, HistoryState listed, Collection<StoredObject> objects, Instant now) {
        Map<String, List<StoredObject>> byTimestamp = new TreeMap<>(Comparator.reverseOrder());
        byTimestamp.putAll(listed.snapshots());
        Instant youngAfter = now.minus(history.gcGrace.dividedBy(2));
        Map<String, Instant> received = new HashMap<>();
        Set<String> spared = new HashSet<>();
        if (latest != null) spared.add(latest);
        for (Map.Entry<String, List<StoredObject>> e : byTimestamp.entrySet()) {
            String manifest = snapshots.keys().object(e.getKey(), Keys.MANIFEST);
            Instant newest = null;
            boolean undated = false;
            for (StoredObject o : e.getValue()) {
                if (o.modified() == null) undated = true;
                else if (newest == null || o.modified().isAfter(newest)) newest = o.modified();
                if (o.key().equals(manifest) && o.modified() != null) received.put(e.getKey(), o.modified());
            }
            if (undated || newest == null || newest.isAfter(youngAfter)) spared.add(e.getKey());
        }
        warnOfClocks(received);
        return run("prune", byTimestamp, ts -> true, received::get, spared, listed, objects, now);
    }

    /** A snapshot named well after the store received it was made by a fast clock, or planted: said, and dated by the store. */
    private static void warnOfClocks(Map<String, Instant> received) {
        Duration tolerance = Duration.ofMinutes(5);
        List<String> ahead = new ArrayList<>();
        Duration most = Duration.ZERO;
        for (Map.Entry<String, Instant> e : received.entrySet()) {
            Duration by = Duration.between(e.getValue(), Keys.parse(e.getKey()));
            if (by.compareTo(tolerance) <= 0) continue;
            ahead.add(e.getKey());
            if (by.compareTo(most) > 0) most = by;
        }
        if (!ahead.isEmpty())
            Log.warn("prune: " + ahead.size() + " snapshot(s) are named up to " + (most.toHours() > 0 ? most.toHours() + "h" : most.toMinutes() + "m")
                    + " after the time the store received them (" + String.join(", ", ahead.stream().sorted().limit(5).toList())
                    + (ahead.size() > 5 ? ", ..." : "") + "): their writer's clock was fast, or they were planted; "
                    + "they are dated by the store's time, as every snapshot is");
    }

    /**
     * One run over the snapshots considered, each dated by dated (null: never removed). Snapshots of an older format
     * stay until --keep snapshots of this one exist: until then they may be the only copy the previous version of this
     * tool can restore. A prefix without a manifest is the leftover of an older version's interrupted sync. spared
     * snapshots are never removed; held ones (held.json) neither.
     */
    private Outcome run(String label, Map<String, List<StoredObject>> byTimestamp, java.util.function.Predicate<String> considered,
                        java.util.function.Function<String, Instant> dated, Set<String> spared, HistoryState listed,
                        Collection<StoredObject> objects, Instant now) {
        List<String> ours = new ArrayList<>();
        List<String> olderFormat = new ArrayList<>();
        List<String> unfinished = new ArrayList<>();
        for (Map.Entry<String, List<StoredObject>> e : byTimestamp.entrySet()) {
            String ts = e.getKey();
            if (!considered.test(ts)) continue;
            boolean complete = e.getValue().isEmpty() || snapshots.hasManifest(ts, e.getValue());   // empty: published after the listing
            int format = complete ? snapshots.formatOf(ts) : -1;
            if (!complete) unfinished.add(ts);
            else if (Manifest.reads(format)) ours.add(ts);
            else if (format > 0 && format < Manifest.OLDEST_READ) olderFormat.add(ts);
            // else unreadable now, or a newer version's: never removed by this one
        }
        Map<String, Instant> takenAt = new HashMap<>();
        for (String ts : ours) {
            Instant at = dated.apply(ts);
            if (at != null) takenAt.put(ts, at);
        }
        Map<String, String> kept = Retention.keep(history.policy(), takenAt);
        List<String> removed = ours.stream().filter(ts -> !kept.containsKey(ts) && !spared.contains(ts)
                && !listed.held().snapshots().containsKey(ts)).collect(Collectors.toList());
        int keptCount = ours.size() - removed.size();
        if (keptCount >= history.last) olderFormat.stream().filter(ts -> !spared.contains(ts)).forEach(removed::add);
        unfinished.stream().filter(ts -> !spared.contains(ts)).forEach(removed::add);
        try {
            snapshots.remove(byTimestamp, removed);
        } catch (DeleteRefused e) {
            return new Outcome(Outcome.DEFERRED, List.of(), ours.size(), null, e.getMessage());
        }
        if (!removed.isEmpty()) Log.info(label + ": history policy (" + history.policy().describe() + ") removed "
                + removed.size() + " snapshot(s) " + removed + "; " + keptCount + " kept");
        List<String> remaining = byTimestamp.keySet().stream().filter(ts -> !removed.contains(ts)).collect(Collectors.toList());
        try {
            GarbageCollector.Collected c = collectGarbage(label, remaining, objects, listed.pendingUploads(), now);
            if (c == null) return new Outcome(Outcome.FAILED, removed, keptCount, null, "garbage collection skipped: a manifest cannot be read");
            return new Outcome(Outcome.DONE, removed, keptCount, c, null);
        } catch (DeleteRefused e) {
            return new Outcome(Outcome.DEFERRED, removed, keptCount, null, e.getMessage());
        }
    }

    /**
     * Deletes the objects none of the remaining snapshots uses, once they are older than the grace period at now;
     * null when a manifest cannot be read (what it uses is unknown, so nothing may go).
     */
    private GarbageCollector.Collected collectGarbage(String label, List<String> remaining, Collection<StoredObject> objects,
                                                      List<PendingUpload> pending, Instant now) {
        Set<String> used = new HashSet<>();
        for (String ts : remaining) {
            int format = snapshots.formatOf(ts);
            if (format > 0 && format < Manifest.OLDEST_READ) continue;   // an older format keeps its files under its own prefix
            Manifest m = Manifest.reads(format) ? snapshots.manifest(ts) : null;
            if (m == null) {
                // Unreadable, or written by a newer version: what it uses is unknown, so nothing may go.
                Log.warn(label + ": garbage collection skipped: the manifest of " + ts + " cannot be read"
                        + (format > Manifest.FORMAT ? " (format " + format + ", newer than this tool's)" : ""));
                return null;
            }
            Keys keys = snapshots.keysOf(m);
            m.objects().forEach(o -> used.add(keys.object(o)));
        }
        GarbageCollector.Collected c = GarbageCollector.collect(snapshots.store(), objects, pending, used, history.gcGrace, now);
        if (c.deleted() > 0 || c.young() > 0)
            Log.info(label + ": garbage collection removed " + c.deleted() + " unused object(s) (" + Log.bytes(c.bytes())
                    + "); " + c.young() + " unused but younger than " + DurationConverter.format(history.gcGrace) + " kept ("
                    + Log.bytes(c.youngBytes()) + ")");
        return c;
    }
}

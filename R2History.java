// History: which snapshots are kept, and garbage collection of the objects none of them uses (part of
// R2Common, included with //SOURCES). The policy is restic's `forget`: the last N snapshots, and the newest
// snapshot of each of the last H hours and D days that have one. Objects are shared between snapshots, so
// a kept snapshot costs only what changed since the one before it.
//   HistoryOptions   the picocli mixin (--keep, --keep-hourly, --keep-daily, --gc-grace)
//   Retention        which snapshots a policy (HistoryPolicy, R2Format) keeps, and why
//   GarbageCollector deletes objects no kept snapshot names, once they are older than the grace period

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

/** Which snapshots a history policy keeps: restic's `forget`. */
final class Retention {
    private Retention() {}

    /**
     * The snapshots kept, each with why (e.g. "last, hourly"), of the given timestamps; the rest are to go.
     * A snapshot counts for the hour and day (UTC) its timestamp names.
     */
    static Map<String, String> keep(HistoryPolicy policy, Collection<String> timestamps) {
        List<String> newestFirst = timestamps.stream().sorted(Comparator.reverseOrder()).collect(Collectors.toList());
        Map<String, List<String>> reasons = new LinkedHashMap<>();
        for (int i = 0; i < Math.min(policy.last(), newestFirst.size()); i++)
            reasons.computeIfAbsent(newestFirst.get(i), k -> new ArrayList<>()).add("last");
        newestOfEach(newestFirst, "yyyyMMddTHH".length(), policy.hourly(), "hourly", reasons);
        newestOfEach(newestFirst, "yyyyMMdd".length(), policy.daily(), "daily", reasons);
        Map<String, String> kept = new TreeMap<>(Comparator.reverseOrder());
        reasons.forEach((ts, why) -> kept.put(ts, String.join(", ", why)));
        return kept;
    }

    private static void newestOfEach(List<String> newestFirst, int periodChars, int periods, String why, Map<String, List<String>> reasons) {
        Set<String> seen = new HashSet<>();
        for (String ts : newestFirst) {
            if (seen.size() >= periods) return;
            if (seen.add(ts.substring(0, periodChars))) reasons.computeIfAbsent(ts, k -> new ArrayList<>()).add(why);
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
 * The history policy and garbage collection as a sync applies them once its snapshot is published: which snapshots
 * go (Retention, held.json, older formats, unfinished prefixes), then which objects no remaining snapshot uses.
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
     * Applies the history policy to the snapshots up to ours, then collects the objects no remaining snapshot
     * uses. Never touches ours (the one latest.json names) or anything newer (another writer's). Snapshots of
     * an older format stay until --keep snapshots of this one exist: until then they may be the only copy the
     * previous version of this tool can restore. A prefix without a manifest is the leftover of an older
     * version's interrupted sync.
     */
    void apply(String current, HistoryState listed, Collection<StoredObject> objects) {
        Map<String, List<StoredObject>> byTimestamp = new TreeMap<>(Comparator.reverseOrder());
        byTimestamp.putAll(listed.snapshots());
        byTimestamp.putIfAbsent(current, List.of());   // published after the listing
        List<String> ours = new ArrayList<>();
        List<String> olderFormat = new ArrayList<>();
        List<String> unfinished = new ArrayList<>();
        for (Map.Entry<String, List<StoredObject>> e : byTimestamp.entrySet()) {
            String ts = e.getKey();
            if (ts.compareTo(current) > 0) continue;
            boolean complete = ts.equals(current) || snapshots.hasManifest(ts, e.getValue());
            int format = complete ? snapshots.formatOf(ts) : -1;
            if (!complete) unfinished.add(ts);
            else if (Manifest.reads(format)) ours.add(ts);
            else if (format > 0 && format < Manifest.OLDEST_READ) olderFormat.add(ts);
            // else unreadable now, or a newer version's: never removed by this one
        }
        Map<String, String> kept = Retention.keep(history.policy(), ours);
        List<String> removed = ours.stream().filter(ts -> !kept.containsKey(ts) && !ts.equals(current)
                && !listed.held().snapshots().containsKey(ts)).collect(Collectors.toList());
        int keptCount = ours.size() - removed.size();
        if (keptCount >= history.last) removed.addAll(olderFormat);
        removed.addAll(unfinished);
        snapshots.remove(byTimestamp, removed);
        if (!removed.isEmpty()) Log.info("sync " + current + ": history policy (" + history.policy().describe() + ") removed "
                + removed.size() + " snapshot(s) " + removed + "; " + keptCount + " kept");
        collectGarbage(current, byTimestamp.keySet().stream().filter(ts -> !removed.contains(ts)).collect(Collectors.toList()),
                objects, listed.pendingUploads());
    }

    /** Deletes the objects none of the remaining snapshots uses, once they are older than the grace period. */
    private void collectGarbage(String current, List<String> remaining, Collection<StoredObject> objects, List<PendingUpload> pending) {
        Set<String> used = new HashSet<>();
        for (String ts : remaining) {
            int format = snapshots.formatOf(ts);
            if (format > 0 && format < Manifest.OLDEST_READ) continue;   // an older format keeps its files under its own prefix
            Manifest m = Manifest.reads(format) ? snapshots.manifest(ts) : null;
            if (m == null) {
                // Unreadable, or written by a newer version: what it uses is unknown, so nothing may go.
                Log.warn("sync " + current + ": garbage collection skipped: the manifest of " + ts + " cannot be read"
                        + (format > Manifest.FORMAT ? " (format " + format + ", newer than this tool's)" : ""));
                return;
            }
            Keys keys = snapshots.keysOf(m);
            m.objects().forEach(o -> used.add(keys.object(o)));
        }
        GarbageCollector.Collected c = GarbageCollector.collect(snapshots.store(), objects, pending, used, history.gcGrace, Instant.now());
        if (c.deleted() > 0 || c.young() > 0)
            Log.info("sync " + current + ": garbage collection removed " + c.deleted() + " unused object(s) (" + Log.bytes(c.bytes())
                    + "); " + c.young() + " unused but younger than " + DurationConverter.format(history.gcGrace) + " kept ("
                    + Log.bytes(c.youngBytes()) + ")");
    }
}

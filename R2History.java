// History: which snapshots are kept, and garbage collection of the objects none of them uses (part of
// R2Common, included with //SOURCES). The policy is restic's `forget`: the last N snapshots, and the newest
// snapshot of each of the last H hours and D days that have one. Objects are shared between snapshots, so
// a kept snapshot costs only what changed since the one before it.
//   HistoryOptions   the picocli mixin (--keep, --keep-hourly, --keep-daily, --gc-grace)
//   HistoryPolicy    which snapshots a policy keeps, and why
//   GarbageCollector deletes objects no kept snapshot names, once they are older than the grace period

import picocli.CommandLine.Option;

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

record HistoryPolicy(int last, int hourly, int daily) {
    /**
     * The snapshots kept, each with why (e.g. "last, hourly"), of the given timestamps; the rest are to go.
     * A snapshot counts for the hour and day (UTC) its timestamp names.
     */
    Map<String, String> keep(Collection<String> timestamps) {
        List<String> newestFirst = timestamps.stream().sorted(Comparator.reverseOrder()).collect(Collectors.toList());
        Map<String, List<String>> reasons = new LinkedHashMap<>();
        for (int i = 0; i < Math.min(last, newestFirst.size()); i++)
            reasons.computeIfAbsent(newestFirst.get(i), k -> new ArrayList<>()).add("last");
        newestOfEach(newestFirst, "yyyyMMddTHH".length(), hourly, "hourly", reasons);
        newestOfEach(newestFirst, "yyyyMMdd".length(), daily, "daily", reasons);
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

    String describe() {
        return "the last " + last + ", hourly for " + hourly + " hours, daily for " + daily + " days";
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

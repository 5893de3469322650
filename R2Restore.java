///usr/bin/env jbang "$0" "$@" ; exit $?
//JAVA 17+
// A heap sized for a sandbox whose agents need the memory: everything large is streamed (tools/soak.sh).
// Compile thresholds 4x the JVM's: see R2Sync.java.
//JAVA_OPTIONS -Xmx128m -XX:CompileThresholdScaling=4
// No //CDS: see R2Sync.java.
//SOURCES R2Common.java

import picocli.CommandLine.ArgGroup;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Option;

import java.io.IOException;
import java.io.PrintWriter;
import java.nio.file.*;
import java.time.Duration;
import java.time.Instant;
import java.util.*;
import java.util.concurrent.Callable;
import java.util.stream.Collectors;
import java.util.stream.Stream;

@Command(name = "r2-restore", mixinStandardHelpOptions = true, version = R2Common.VERSION, sortOptions = false,
        description = {
                "Restores a Gas Town from R2 onto an empty volume: downloads a snapshot, checks every file "
                        + "against its manifest, rebuilds the whole town in a staging directory on the volume "
                        + "(<town-root>/.r2-restore): every path, every git repository with its work trees' "
                        + "uncommitted work, every Dolt database; verifies them, and only then moves the town into "
                        + "place. Run it before `gt up`, with the Dolt server stopped. It needs git and dolt, and "
                        + "nothing from HOME (no git or dolt identity).",
                "A volume that already holds data is left as it is (its state takes priority) unless --force."},
        exitCodeListHeading = "%nExit codes:%n",
        exitCodeList = {
                "0:restored, or nothing to do (the volume holds data, or no backup exists yet); "
                        + "--verify: the snapshot would restore",
                "1:the restore failed; the volume is as it was (a failed restore is also recorded in "
                        + "the state dir, which stops the sync from backing up an empty town over good backups)",
                "2:usage or configuration error"})
public class R2Restore implements Callable<Integer> {

    @Mixin
    R2Options r2 = new R2Options();

    @ArgGroup(exclusive = true)
    Mode mode = new Mode();

    static final class Mode {
        @Option(names = "--list", description = "List the snapshots in R2 (timestamp, files, size, state, the key each is "
                + "sealed with, which one latest.json names) and exit.")
        boolean list;

        @Option(names = "--verify", description = "Download and check a snapshot end to end, with a trial restore "
                + "of every database and repo in a temporary directory (each git object hashed again: `git fsck`); "
                + "touches nothing else. Exit 0 only if it would restore.")
        boolean verify;

        @Option(names = "--forget-failure", description = "Forget a failed restore (its markers on this machine, the volume "
                + "and in the bucket), so that syncs back up the town as it is now: an operator's decision after a failed "
                + "restore, once the town on the volume is the one to keep.")
        boolean forgetFailure;

        @Option(names = "--release-held", description = "Let the history policy apply again to the snapshots a fallback "
                + "restore passed over (held.json, shown by --list), once what they hold is recovered or given up.")
        boolean releaseHeld;
    }

    @Option(names = "--snapshot", paramLabel = "TIMESTAMP", description = "Restore (or verify) this snapshot "
            + "instead of the one latest.json names, e.g. 20260217T120000Z. No fallback to another.")
    String snapshot;

    @Option(names = "--force", description = "Restore even though the volume holds data; the existing content "
            + "is moved aside into <town-root>/.r2-aside-<time>/ (nothing is deleted).")
    boolean force;

    @Option(names = "--json", description = "With --list: print JSON instead of a table.")
    boolean json;

    @Mixin
    WorkDirOption workDir = new WorkDirOption();

    static final String STAGING = ".r2-restore";

    private Config config;
    private ObjectStore store;
    private Snapshots snapshots;
    /** latest.json as candidates() read it; its manifest hash is checked against what is downloaded. */
    private Pointer latestPointer;

    public static void main(String... args) {
        System.exit(R2Cli.run(new R2Restore(), args));
    }

    @Override
    public Integer call() throws IOException {
        config = r2.toConfig();
        if (json && !mode.list) throw R2Options.usage("--json goes with --list");
        if (snapshot != null && !Keys.TIMESTAMP_FORM.matcher(snapshot).matches())
            throw R2Options.usage("--snapshot must look like 20260217T120000Z, not " + snapshot);
        try (ObjectStore opened = ObjectStore.open(config)) {
            store = opened;
            snapshots = new Snapshots(store, config);
            if (mode.list) return listSnapshots();
            if (mode.releaseHeld) return releaseHeld();
            if (mode.forgetFailure) {
                RestoreState.clearFailure(config, store);
                Log.info("restore: a failed restore of town " + config.townId() + " is forgotten; syncs back up " + config.townRoot()
                        + " as it is");
                return R2Common.EXIT_OK;
            }
            DoltHome.use(config.stateDir());
            if (mode.verify) return verify();
            return restore();
        }
    }

    // ---------------------------------------------------------------------------------------------
    // Restore, in the order it runs.
    // ---------------------------------------------------------------------------------------------

    private int restore() throws IOException {
        Instant start = Instant.now();
        Path root = config.townRoot();
        Path staging = root.resolve(STAGING);
        if (finishInterruptedMove(staging)) return R2Common.EXIT_OK;
        if (Town.holdsData(root) && !force) {
            Log.info("restore: " + root + " already holds data; the volume's state takes priority, nothing restored "
                    + "(use --force to restore anyway)");
            // A volume filled after a failed restore (gt up ran) is exactly what must not be backed up unasked.
            RestoreState.failure(config).ifPresent(marker -> Log.warn("restore: a restore of this town failed before (" + marker
                    + "): backups stay off until a restore succeeds or r2-restore --forget-failure"));
            report("volume-has-data", null, false, start);
            return R2Common.EXIT_OK;
        }
        String chosen = null;
        boolean fallback = false;
        try {
            List<String> candidates = candidates();
            if (candidates.isEmpty()) {
                Log.info("restore: no backup of town " + config.townId() + " exists yet; starting fresh (first boot)");
                report("no-backup", null, false, start);
                RestoreState.clearFailure(config, store);
                return R2Common.EXIT_OK;
            }
            List<String> refused = new ArrayList<>();
            for (String candidate : candidates) {
                FileTrees.delete(staging);
                Files.createDirectories(staging);
                try {
                    Snapshots.Downloaded prepared = Rebuild.download(snapshots, latestPointer, candidate, staging.resolve("download"));
                    Rebuild.build(prepared, staging.resolve("town"), root, GitRepo.Check.CONNECTIVITY);
                    chosen = candidate;
                    break;
                } catch (R2Exception e) {
                    if (snapshot != null) throw e;
                    // A snapshot is passed over only when it is proven damaged: a failure of the network or of this
                    // machine says nothing about it, and an older town restored in its place would bury it.
                    if (!SnapshotDamaged.proven(e))
                        throw new R2Exception(e.exitCode, "restore: snapshot " + candidate + " could not be restored, and nothing shows "
                                + "it is damaged, so no older one is tried: " + R2Cli.messageChain(e) + ". Run the restore again once "
                                + "that is fixed, or choose a snapshot with --snapshot (see --list)", e);
                    refused.add(candidate + ": " + e.getMessage());
                    Log.error("restore: snapshot " + candidate + " is unusable: " + e.getMessage());
                }
            }
            if (chosen == null)
                throw new R2Exception(R2Common.EXIT_FAILED, "restore: no snapshot could be restored: " + String.join("; ", refused));
            fallback = !chosen.equals(candidates.get(0));
            if (fallback) {
                Log.warn("restore: FALLBACK: the latest snapshot " + candidates.get(0) + " is unusable; restoring the older "
                        + chosen + " instead. Work after " + chosen + " is not in this restore.");
                holdNewer(candidates.subList(0, candidates.indexOf(chosen)), refused);
            }
            if (Town.holdsData(root)) moveAside(root);
            moveIntoPlace(staging, chosen);
            Log.info("restore: town " + config.townId() + " restored from snapshot " + chosen + " in "
                    + Log.seconds(Duration.between(start, Instant.now())));
            snapshots.claimWriter();
            report(chosen, null, fallback, start);
            RestoreState.clearFailure(config, store);
            return R2Common.EXIT_OK;
        } catch (IOException | RuntimeException | Error e) {
            // Whatever failed (an unexpected error, an OutOfMemoryError included), a half-built staging dir is not left
            // on the volume, and the failure is reported and recorded like any other: never a reason to fall back.
            if (!RestoreState.moving(staging)) FileTrees.deleteQuietly(staging);
            R2Exception failure = e instanceof R2Exception r ? r : new R2Exception(R2Common.EXIT_FAILED, "restore: " + e, e);
            report(chosen, failure, fallback, start);
            RestoreState.recordFailure(config, store, R2Cli.messageChain(failure));
            throw failure;
        }
    }

    /**
     * The snapshots a fallback passed over stay in the bucket whatever the history policy says (held.json), until an
     * operator releases them (--release-held): what they hold may still be recovered by hand.
     */
    private void holdNewer(List<String> passedOver, List<String> why) {
        try {
            String at = "passed over by a fallback restore at " + Instant.now() + ": ";
            snapshots.hold(passedOver, why.stream().map(w -> at + Log.redact(w)).collect(Collectors.toList()));
            Log.warn("restore: " + passedOver + " stay kept (held.json) until an operator releases them with r2-restore --release-held");
        } catch (R2Exception e) {
            Log.error("restore: cannot record in held.json that " + passedOver + " must be kept: " + e.getMessage()
                    + "; copy them aside before the history policy removes them");
        }
    }

    /** A restore killed while moving the town into place is finished, never started over on top of it. */
    private boolean finishInterruptedMove(Path staging) throws IOException {
        if (!RestoreState.moving(staging)) return false;
        String ts = RestoreState.movingSnapshot(staging);
        Log.warn("restore: a restore of snapshot " + ts + " was interrupted while moving into place; finishing it");
        moveIntoPlace(staging, ts);
        snapshots.claimWriter();
        RestoreState.clearFailure(config, store);
        return true;
    }

    /** The snapshots to try, best first: --snapshot alone, or latest.json's then the older complete ones. */
    private List<String> candidates() {
        if (snapshot != null) {
            // The pointer only pins a manifest here; an unreadable one is no reason to refuse a chosen snapshot.
            try {
                latestPointer = snapshots.pointer().orElse(null);
            } catch (R2Exception e) {
                Log.warn("restore: " + e.getMessage() + "; restoring the chosen snapshot " + snapshot + " anyway");
            }
            return List.of(snapshot);
        }
        List<String> complete = snapshots.complete();
        Optional<Pointer> latest;
        try {
            latest = snapshots.pointer();
        } catch (R2Exception e) {
            if (e.exitCode == R2Common.EXIT_USAGE) throw e;   // no key, or not the town's: say so, exit 2
            throw new R2Exception(R2Common.EXIT_FAILED, "restore: " + e.getMessage()
                    + "; not guessing which snapshot is current: choose one with --snapshot (see --list)");
        }
        if (latest.isEmpty()) {
            if (!complete.isEmpty())
                throw new R2Exception(R2Common.EXIT_FAILED, "restore: latest.json is missing although snapshots exist ("
                        + complete.get(0) + " is the newest); choose one with --snapshot (see --list)");
            return List.of();
        }
        Pointer pointer = latest.get();
        latestPointer = pointer;
        List<String> result = new ArrayList<>(List.of(pointer.timestamp()));
        complete.stream().filter(ts -> ts.compareTo(pointer.timestamp()) < 0).forEach(result::add);
        return result;
    }

    /** --force: the existing content goes into .r2-aside-<time>/ on the same volume; nothing is deleted. */
    private void moveAside(Path root) throws IOException {
        Path aside = root.resolve(".r2-aside-" + Keys.format(Instant.now()));
        Files.createDirectory(aside);
        for (Path p : FileTrees.sortedChildren(root)) {
            String name = p.getFileName().toString();
            if (Town.OWN_DIRS.contains(name) || p.equals(aside)) continue;
            Files.move(p, aside.resolve(name), StandardCopyOption.ATOMIC_MOVE);
        }
        Log.warn("restore: --force: the volume's previous content was moved to " + aside);
    }

    /**
     * Moves the staged town into the root entry by entry (each a rename on the same volume), mayor/ last,
     * because gt recognises a town by mayor/town.json. A marker makes the next start finish an interrupted
     * move; worktree links are repaired once everything is in place.
     */
    private void moveIntoPlace(Path staging, String timestamp) throws IOException {
        Path root = config.townRoot();
        Path townDir = staging.resolve("town");
        RestoreState.markMoving(staging, timestamp);
        if (Files.isDirectory(townDir)) {
            List<Path> entries = FileTrees.sortedChildren(townDir);
            entries.sort(Comparator.comparing((Path p) -> p.getFileName().toString().equals("mayor")));
            for (Path entry : entries) {
                Path destination = root.resolve(entry.getFileName().toString());
                if (Files.exists(destination, LinkOption.NOFOLLOW_LINKS))
                    throw new R2Exception(R2Common.EXIT_FAILED, "restore: " + destination + " appeared while restoring; "
                            + "the staged town is kept in " + staging);
                Files.move(entry, destination, StandardCopyOption.ATOMIC_MOVE);
            }
        }
        RestoreState.removeStaging(staging);
    }

    // ---------------------------------------------------------------------------------------------
    // --verify and --list
    // ---------------------------------------------------------------------------------------------

    /** A full trial restore in a temporary directory: exit 0 only if the snapshot would restore. */
    private int verify() throws IOException {
        List<String> candidates = candidates();
        if (candidates.isEmpty()) throw new R2Exception(R2Common.EXIT_FAILED, "verify: town " + config.townId() + " has no snapshot");
        String timestamp = candidates.get(0);
        Manifest manifest = Rebuild.trial(snapshots, config, latestPointer, timestamp, workDir.dir);
        Log.info("verify: snapshot " + timestamp + " is complete and restores (" + manifest.files().size()
                + " files, " + manifest.databases().size() + " databases, " + manifest.repos().size() + " repos)"
                + (manifest.problems().isEmpty() ? "" : "; it is PARTIAL: " + manifest.problems().size() + " problem(s) recorded"));
        return R2Common.EXIT_OK;
    }

    /** --release-held: held.json is emptied; the next history policy run decides about those snapshots again. */
    private int releaseHeld() {
        Held held = snapshots.held();
        if (held.snapshots().isEmpty()) {
            Log.info("release: no snapshot of town " + config.townId() + " is held");
            return R2Common.EXIT_OK;
        }
        snapshots.releaseHeld();
        Log.info("release: " + held.snapshots().keySet() + " are no longer held; the history policy applies to them from the next sync");
        return R2Common.EXIT_OK;
    }

    /**
     * One row per snapshot, newest first: its files and size, the bytes it added (objects the next older
     * snapshot does not use), its state, which rule of the history policy keeps it, and latest.json's.
     */
    private int listSnapshots() {
        Keys keys = Keys.of(config);
        String latest = latestTimestamp();
        Map<String, List<StoredObject>> byTimestamp = new TreeMap<>(snapshots.byTimestamp());
        byTimestamp.values().forEach(objects -> objects.removeIf(o -> o.key().endsWith("/claim.json")));
        byTimestamp.values().removeIf(List::isEmpty);
        Map<String, Manifest> manifests = new TreeMap<>();
        Map<String, String> states = new TreeMap<>();
        for (Map.Entry<String, List<StoredObject>> e : byTimestamp.entrySet()) {
            String ts = e.getKey();
            if (!snapshots.hasManifest(ts, e.getValue())) {
                states.put(ts, "unfinished");
                continue;
            }
            try {
                Manifest m = snapshots.manifest(ts);
                if (m == null) {
                    states.put(ts, "format " + snapshots.formatOf(ts));
                } else {
                    manifests.put(ts, m);
                    states.put(ts, m.complete() ? "complete" : "partial");
                }
            } catch (R2Exception ex) {
                states.put(ts, "unreadable");
            }
        }
        HistoryPolicy policy = manifests.values().stream().map(Manifest::history).filter(Objects::nonNull)
                .reduce((a, b) -> b).orElse(null);
        Map<String, String> keptBy = new HashMap<>(policy == null ? Map.of() : Retention.keep(policy, manifests.keySet()));
        Held held = snapshots.held();
        held.snapshots().keySet().forEach(ts -> keptBy.put(ts, "held (fallback)"));
        List<Map<String, Object>> rows = new ArrayList<>();
        Set<String> olderKeys = Set.of();
        for (String ts : states.keySet()) {
            Manifest m = manifests.get(ts);
            Map<String, Object> row = new LinkedHashMap<>();
            row.put("timestamp", ts);
            row.put("files", m == null ? byTimestamp.get(ts).size() : m.files().size());
            row.put("bytes", m == null ? byTimestamp.get(ts).stream().mapToLong(StoredObject::size).sum() : m.totalBytes());
            if (m != null) {
                Set<String> previous = olderKeys;
                Keys named = keysOrNull(m);
                if (named != null) {
                    row.put("newBytes", m.objects().stream().filter(o -> !previous.contains(named.object(o))).mapToLong(FileEntry::size).sum());
                    olderKeys = m.objects().stream().map(named::object).collect(Collectors.toSet());
                }
            }
            row.put("state", states.get(ts));
            row.put("key", m == null ? "-" : m.sealed() ? m.keyId() : "unsealed");
            row.put("keptBy", keptBy.getOrDefault(ts, ""));
            if (held.snapshots().containsKey(ts)) row.put("held", held.snapshots().get(ts));
            row.put("latest", ts.equals(latest));
            rows.add(0, row);
        }
        PrintWriter out = new PrintWriter(System.out, true);
        if (json) {
            out.println(new String(R2Common.toJson(rows), java.nio.charset.StandardCharsets.UTF_8));
            return R2Common.EXIT_OK;
        }
        out.printf("%-18s %6s %11s %11s  %-10s %-16s %-20s %s%n", "SNAPSHOT", "FILES", "SIZE", "NEW", "STATE", "KEY", "KEPT BY", "");
        for (Map<String, Object> row : rows)
            out.printf("%-18s %6d %11s %11s  %-10s %-16s %-20s %s%n", row.get("timestamp"), (Integer) row.get("files"),
                    Log.bytes((Long) row.get("bytes")), row.containsKey("newBytes") ? Log.bytes((Long) row.get("newBytes")) : "-",
                    row.get("state"), row.get("key"), row.get("keptBy"), Boolean.TRUE.equals(row.get("latest")) ? "<- latest.json" : "");
        if (rows.isEmpty()) out.println("(no snapshots for town " + config.townId() + ")");
        else if (policy != null) out.println("history policy: " + policy.describe() + "; NEW is what a snapshot added to the one before it; "
                + "KEY is the key a snapshot is sealed with (R2_ENCRYPTION_KEY or R2_ENCRYPTION_KEYRING must hold it), or unsealed");
        held.snapshots().forEach((ts, why) -> out.println("held: " + ts + ": " + Log.escape(why) + " (r2-restore --release-held lets "
                + "the history policy remove it)"));
        return R2Common.EXIT_OK;
    }

    // ---------------------------------------------------------------------------------------------
    // Helpers
    // ---------------------------------------------------------------------------------------------

    /** The keys a listed snapshot's objects are under; null when its key is not in the keyring (--list still shows it). */
    private Keys keysOrNull(Manifest m) {
        try {
            return snapshots.keysOf(m);
        } catch (R2Exception e) {
            return null;
        }
    }

    /** The timestamp latest.json names, for --list; a damaged pointer is said and named nowhere. */
    private String latestTimestamp() {
        try {
            return snapshots.pointer().map(Pointer::timestamp).orElse(null);
        } catch (R2Exception e) {
            Log.warn("list: " + e.getMessage());
            return null;
        }
    }

    /** Reports the outcome; restored is a snapshot timestamp, or "no-backup" / "volume-has-data" when none was needed. */
    private void report(String restored, R2Exception failure, boolean fallback, Instant start) {
        boolean snapshotRestored = restored != null && Keys.TIMESTAMP_FORM.matcher(restored).matches();
        String status = failure != null ? "failed" : !snapshotRestored ? restored : fallback ? "fallback" : "ok";
        new Heartbeat(config).send(Report.restore(config.townId(), status, snapshotRestored ? restored : null, fallback,
                Duration.between(start, Instant.now()).toMillis(), failure == null ? null : R2Cli.messageChain(failure)));
    }
}

///usr/bin/env jbang "$0" "$@" ; exit $?
//JAVA 17+
// The heap and compile thresholds of the other scripts: see R2Sync.java. No //CDS: see R2Sync.java.
//JAVA_OPTIONS -Xmx128m -XX:CompileThresholdScaling=4
//SOURCES R2Common.java

import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;

import java.io.IOException;
import java.time.Duration;
import java.time.Instant;
import java.util.Collection;
import java.util.Optional;
import java.util.concurrent.Callable;

@Command(name = "r2-prune", mixinStandardHelpOptions = true, version = R2Common.VERSION, sortOptions = false,
        description = {
                "Applies the history policy and garbage collection to one town's backups in R2, from outside the sandbox, "
                        + "with a credential that can delete: the sandbox's cannot (docs/security.md). Run it from the "
                        + "cloud's scheduler, hourly or daily, once per town.",
                "Every age is the store's: a snapshot counts as taken when the store received its manifest (its "
                        + "LastModified), never when its name says (the sandbox's clock made that), and the run's own time is "
                        + "the LastModified of pruned.json, which it writes first. So neither a wrong clock nor a flood of "
                        + "snapshots under made-up names pushes the hourly and daily snapshots out.",
                "It never removes the snapshot latest.json names, one the store received less than half of --gc-grace "
                        + "ago, a held one (held.json), nor one of an older format until --keep of this format exist; it deletes "
                        + "an object only when no remaining snapshot uses it and it is older than --gc-grace, and none while a "
                        + "manifest cannot be read. How the run went: pruned.json in the town's prefix (r2-status shows it), "
                        + "and a heartbeat when GASTOWN_API_URL is set."},
        exitCodeListHeading = "%nExit codes:%n",
        exitCodeList = {
                "0:the history policy and garbage collection were applied (or the town has no backup yet)",
                "1:they were not, or not all: the store refused a delete (this credential cannot delete, or a bucket lock "
                        + "rule protects the object still), a manifest cannot be read (garbage collection stopped), or R2 "
                        + "cannot be read",
                "2:usage or configuration error"})
public class R2Prune implements Callable<Integer> {

    @Mixin
    R2Options r2 = new R2Options();

    @Mixin
    HistoryOptions history = new HistoryOptions();

    /** How far this machine's clock may be from the store's before it is said (it decides nothing either way). */
    static final Duration CLOCK_TOLERANCE = Duration.ofMinutes(1);

    private Config config;

    public static void main(String... args) {
        System.exit(R2Cli.run(new R2Prune(), args));
    }

    @Override
    public Integer call() {
        config = r2.toConfig();
        history.policy();
        Heartbeat heartbeat = new Heartbeat(config);
        Instant start = Instant.now();
        try (ObjectStore store = ObjectStore.open(config)) {
            Snapshots snapshots = new Snapshots(store, config);
            Keys keys = snapshots.keys();
            // Read before anything is listed: a sync publishing meanwhile builds on this one, which is kept.
            Optional<Pointer> latest = snapshots.pointer();
            if (latest.isEmpty()) {
                Log.info("prune: town " + config.townId() + " has no latest.json: no backup to prune");
                return R2Common.EXIT_OK;
            }
            Instant now = storeClock(store, keys, start);
            PruneRun run = prune(snapshots, latest.get().timestamp(), now, start);
            try {
                run.write(store, keys);
            } catch (R2Exception e) {
                Log.warn("prune: cannot record the run in " + PruneRun.key(keys) + ": " + R2Cli.messageChain(e));
            }
            heartbeat.send(Report.prune(run, latest.get().timestamp(), Duration.between(start, Instant.now()).toMillis()));
            return PruneRun.OK.equals(run.status()) ? R2Common.EXIT_OK : R2Common.EXIT_FAILED;
        }
    }

    /**
     * The store's time now: pruned.json is written (status running) and its LastModified, as the store lists it, is
     * taken. Every age of the run is a difference of two times the store gave.
     */
    private Instant storeClock(ObjectStore store, Keys keys, Instant start) {
        PruneRun.running(config.townId(), start).write(store, keys);
        String key = PruneRun.key(keys);
        Instant now = store.list(key).stream().filter(o -> o.key().equals(key) && o.modified() != null).map(StoredObject::modified)
                .findFirst().orElseThrow(() -> new R2Exception(R2Common.EXIT_FAILED, "prune: the store lists no LastModified for " + key
                        + ", just written: the run has no clock to date snapshots by"));
        Duration off = Duration.between(now, start).abs();
        if (off.compareTo(CLOCK_TOLERANCE) > 0)
            Log.warn("prune: this machine's clock is " + DurationConverter.format(Duration.ofSeconds(off.toSeconds())) + " " + (start.isAfter(now) ? "ahead of" : "behind")
                    + " the store's; every age is taken from the store's");
        return now;
    }

    /** The policy and collection over every snapshot of the town, dated by the store; the run as pruned.json records it. */
    private PruneRun prune(Snapshots snapshots, String latest, Instant now, Instant start) {
        String startedAt = start.toString();
        try {
            History.HistoryState listed = History.read(snapshots);
            // Listed last, just before the deletes: an object a sync stores again meanwhile is young in this listing.
            Collection<StoredObject> objects = snapshots.storedObjects().values();
            History.Outcome outcome = new History(snapshots, history).prune(latest, listed, objects, now);
            GarbageCollector.Collected c = outcome.collected();
            String error = switch (outcome.pruning()) {
                case History.Outcome.DONE -> null;
                case History.Outcome.DEFERRED -> outcome.reason() + "; r2-prune needs a credential that can delete, and a bucket lock "
                        + "rule no longer than half of --gc-grace (docs/security.md)";
                default -> outcome.reason();
            };
            PruneRun run = new PruneRun(config.townId(), startedAt, Instant.now().toString(), error == null ? PruneRun.OK : PruneRun.FAILED,
                    outcome.removed().size(), outcome.kept(), c == null ? 0 : c.deleted(), c == null ? 0L : c.bytes(), error);
            if (error != null) Log.error("prune: town " + config.townId() + ": " + error);
            Log.info("prune: town " + config.townId() + ": " + run.snapshotsRemoved() + " snapshot(s) removed, " + run.snapshotsKept()
                    + " kept (latest.json names " + latest + "), " + run.objectsDeleted() + " unused object(s) deleted ("
                    + Log.bytes(run.bytesDeleted()) + "); ages by the store's clock (" + now + "), in "
                    + Log.seconds(Duration.between(start, Instant.now())));
            return run;
        } catch (R2Exception | IOException e) {
            String error = R2Cli.messageChain(e);
            Log.error("prune: town " + config.townId() + ": " + error);
            return new PruneRun(config.townId(), startedAt, Instant.now().toString(), PruneRun.FAILED, null, null, null, null, Log.redact(error));
        }
    }
}

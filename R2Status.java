///usr/bin/env jbang "$0" "$@" ; exit $?
//JAVA 17+
// A heap sized for a sandbox whose agents need the memory: everything large is streamed (tools/soak.sh).
// Compile thresholds 4x the JVM's: see R2Sync.java.
//JAVA_OPTIONS -Xmx128m -XX:CompileThresholdScaling=4
// No //CDS: see R2Sync.java.
//SOURCES R2Common.java

import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.Spec;

import com.fasterxml.jackson.databind.JsonNode;

import java.io.IOException;
import java.io.PrintWriter;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.time.Instant;
import java.util.*;
import java.util.concurrent.Callable;
import java.util.stream.Collectors;

@Command(name = "r2-status", mixinStandardHelpOptions = true, version = R2Common.VERSION, sortOptions = false,
        description = {
                "Shows whether this town's 5-minute loss window is held: when the last snapshot succeeded and "
                        + "its age (from R2: latest.json and its manifest), and this machine's last sync and any "
                        + "failed restore (from the state dir: last-sync.json, restore-failed.json). Also how the "
                        + "history policy is applied: by the sync, or deferred to r2-prune and when that last ran "
                        + "(pruned.json in R2); neither changes the verdict.",
                "The window is held when the snapshot latest.json names is complete and at most "
                        + "--interval + --slack old, and no failed restore stops the sync."},
        exitCodeListHeading = "%nExit codes:%n",
        exitCodeList = {
                "0:the loss window is held",
                "1:it is not held: no snapshot, too old, partial, a failed restore blocks the sync, or R2 "
                        + "cannot be read (the output says which)",
                "2:usage or configuration error"})
public class R2Status implements Callable<Integer> {

    @Mixin
    R2Options r2 = new R2Options();

    @Mixin
    IntervalOption intervalOption = new IntervalOption();

    private Duration interval;

    @Option(names = "--slack", defaultValue = "${env:R2_STATUS_SLACK:-2m}", converter = DurationConverter.class,
            paramLabel = "DURATION", description = "Time a sync may take on top of the interval before the window "
            + "counts as lost (env R2_STATUS_SLACK, default ${DEFAULT-VALUE}).")
    Duration slack;

    @Option(names = "--json", description = "Print one JSON object instead of text.")
    boolean json;

    @Spec
    CommandSpec spec;

    public static void main(String... args) {
        System.exit(R2Cli.run(new R2Status(), args));
    }

    @Override
    public Integer call() {
        interval = intervalOption.value();
        if (slack.isNegative()) throw R2Options.usage("--slack must not be negative");
        Config config = r2.toConfig();
        Instant now = Instant.now();
        Latest latest = readLatest(config, now);
        LastSync lastSync = LastSync.read(config.stateDir()).orElse(null);
        RestoreFailure restoreFailed = RestoreState.failure(config).flatMap(RestoreFailure::read)
                .orElse(latest.restoreFailed() ? new RestoreFailure(config.townId(), "(recorded in the bucket)", null,
                        "see " + Keys.of(config).restoreFailed()) : null);
        Optional<Verification.Result> verified = Verification.last(config.stateDir());
        Verdict verdict = judge(latest, restoreFailed, lastSync, verified.orElse(null));
        pruningWarnings(latest.lastPrune(), lastSync, now, verdict.warnings());
        Map<String, Object> status = status(config, now, latest, lastSync, restoreFailed, verdict);
        status.put("lastVerify", verified.orElse(null));
        status.put("lastPrune", latest.lastPrune());
        print(status, now, latest, lastSync, restoreFailed, verified.orElse(null), verdict);
        return verdict.held() ? R2Common.EXIT_OK : R2Common.EXIT_FAILED;
    }

    // ---------------------------------------------------------------------------------------------
    // Reading R2 and the local state.
    // ---------------------------------------------------------------------------------------------

    /** What R2 says: the snapshot latest.json names and its manifest, or why that could not be read; r2-prune's last run. */
    record Latest(String timestamp, Duration age, Manifest manifest, String error, String writer, Held held, boolean restoreFailed,
                  PruneRun lastPrune) {
        Latest(String timestamp, Duration age, Manifest manifest, String error) {
            this(timestamp, age, manifest, error, null, new Held(Map.of()), false, null);
        }

        boolean present() {
            return timestamp != null;
        }
    }

    private static Latest readLatest(Config config, Instant now) {
        Keys keys = Keys.of(config);
        try (ObjectStore store = ObjectStore.open(config)) {
            Snapshots snapshots = new Snapshots(store, config);
            Optional<Pointer> pointer = snapshots.pointer();
            if (pointer.isEmpty()) return new Latest(null, null, null, null);
            String ts = pointer.get().timestamp();
            Duration age = Duration.between(Keys.parse(ts), now);
            Optional<Versioned> manifestObject = store.get(keys.object(ts, Keys.MANIFEST));
            if (manifestObject.isEmpty()) return new Latest(ts, age, null, "manifest.json of " + ts + " is missing");
            byte[] manifestJson = manifestObject.get().data();
            try {
                Snapshots.requirePinned(pointer.get(), ts, manifestJson);
            } catch (SnapshotDamaged e) {
                return new Latest(ts, age, null, e.getMessage());
            }
            Manifest manifest = R2Common.fromJson(manifestJson, Manifest.class, "manifest.json of " + ts);
            return new Latest(ts, age, manifest, null, pointer.get().writer(), snapshots.held(), RestoreState.failedInBucket(store, config),
                    PruneRun.read(store, keys).orElse(null));
        } catch (R2Exception | IllegalArgumentException e) {
            return new Latest(null, null, null, "cannot read " + keys.latest() + ": " + R2Cli.messageChain(e));
        }
    }

    // ---------------------------------------------------------------------------------------------
    // The verdict and its presentation.
    // ---------------------------------------------------------------------------------------------

    record Verdict(boolean held, String reason, List<String> warnings) {}

    private Verdict judge(Latest latest, RestoreFailure restoreFailed, LastSync lastSync, Verification.Result verified) {
        Duration limit = interval.plus(slack);
        List<String> warnings = new ArrayList<>();
        if (lastSync != null && "failed".equals(lastSync.status()))
            warnings.add("the last sync on this machine failed at " + lastSync.finishedAt() + ": " + lastSync.error());
        if (restoreFailed != null)
            return new Verdict(false, "a restore of this town failed (" + restoreFailed.at() + ": "
                    + restoreFailed.error() + "); the sync refuses to run until a restore succeeds or r2-restore --forget-failure", warnings);
        latest.held().snapshots().forEach((ts, why) -> warnings.add("snapshot " + ts + " is held: " + why
                + " (r2-restore --release-held lets the history policy remove it)"));
        if (latest.error() != null) return new Verdict(false, latest.error(), warnings);
        if (verified != null && verified.failed())
            return new Verdict(false, "the last verification (" + verified.at() + ") found the backup damaged or could not check it: "
                    + verified.error(), warnings);
        if (!latest.present()) return new Verdict(false, "no snapshot of this town exists yet", warnings);
        if (!latest.manifest().complete())
            return new Verdict(false, "snapshot " + latest.timestamp() + " is partial; not backed up: "
                    + latest.manifest().problems().stream().map(Problem::part).collect(Collectors.joining(", ")), warnings);
        if (latest.age().compareTo(limit) > 0)
            return new Verdict(false, "snapshot " + latest.timestamp() + " is " + human(latest.age()) + " old, more than "
                    + DurationConverter.format(interval) + " interval + " + DurationConverter.format(slack) + " slack", warnings);
        return new Verdict(true, "snapshot " + latest.timestamp() + " is " + human(latest.age()) + " old, within "
                + DurationConverter.format(interval) + " interval + " + DurationConverter.format(slack) + " slack", warnings);
    }

    /** How long pruning may go undone, while the sync defers it, before the status warns that the bucket only grows. */
    static final Duration PRUNE_STALE = Duration.ofDays(2);

    /** Pruning never changes the verdict (a backup is no worse for history kept too long); what needs an operator is said. */
    private static void pruningWarnings(PruneRun lastPrune, LastSync lastSync, Instant now, List<String> warnings) {
        boolean deferred = lastSync != null && History.Outcome.DEFERRED.equals(lastSync.pruning());
        if (lastSync != null && History.Outcome.FAILED.equals(lastSync.pruning()))
            warnings.add("the last sync on this machine could not apply the history policy or collect garbage (its log says why)");
        if (lastPrune == null) {
            if (deferred) warnings.add("pruning is deferred to r2-prune, and no r2-prune run is recorded: the bucket only grows");
            return;
        }
        if (PruneRun.FAILED.equals(lastPrune.status()) || lastPrune.error() != null)
            warnings.add("r2-prune's last run (" + lastPrune.startedAt() + ") failed: " + lastPrune.error());
        else if (deferred && ranAt(lastPrune).map(at -> Duration.between(at, now).compareTo(PRUNE_STALE) > 0).orElse(true))
            warnings.add("pruning is deferred to r2-prune, which last ran " + lastPrune.startedAt() + ", more than "
                    + PRUNE_STALE.toDays() + " days ago: the bucket only grows");
    }

    private static Optional<Instant> ranAt(PruneRun run) {
        try {
            return Optional.of(Instant.parse(run.finishedAt() != null ? run.finishedAt() : run.startedAt()));
        } catch (RuntimeException e) {
            return Optional.empty();
        }
    }

    private Map<String, Object> status(Config config, Instant now, Latest latest, LastSync lastSync,
                                       RestoreFailure restoreFailed, Verdict verdict) {
        Map<String, Object> status = new LinkedHashMap<>();
        status.put("townId", config.townId());
        status.put("checkedAt", now.toString());
        status.put("held", verdict.held());
        status.put("reason", verdict.reason());
        status.put("warnings", verdict.warnings());
        status.put("intervalSeconds", interval.toSeconds());
        status.put("slackSeconds", slack.toSeconds());
        if (latest.present()) {
            Map<String, Object> l = new LinkedHashMap<>();
            l.put("snapshot", latest.timestamp());
            l.put("takenAt", Keys.parse(latest.timestamp()).toString());
            l.put("ageSeconds", latest.age().toSeconds());
            if (latest.manifest() != null) {
                l.put("manifestCreatedAt", latest.manifest().createdAt());
                l.put("complete", latest.manifest().complete());
                l.put("files", latest.manifest().files().size());
                l.put("bytes", latest.manifest().totalBytes());
                l.put("problems", latest.manifest().problems().stream().map(Problem::part).collect(Collectors.toList()));
                l.put("keyId", latest.manifest().keyId());
            }
            l.put("writer", latest.writer());
            status.put("latest", l);
            status.put("heldSnapshots", latest.held().snapshots());
        }
        status.put("lastSync", lastSync);
        status.put("restoreFailed", restoreFailed);
        return status;
    }

    private void print(Map<String, Object> status, Instant now, Latest latest, LastSync lastSync,
                       RestoreFailure restoreFailed, Verification.Result verified, Verdict verdict) {
        PrintWriter out = spec.commandLine().getOut();
        if (json) {
            out.println(new String(R2Common.toJson(status), StandardCharsets.UTF_8));
            out.flush();
            return;
        }
        out.printf("town         %s%n", status.get("townId"));
        out.printf("loss window  %s: %s%n", verdict.held() ? "HELD" : "NOT HELD", verdict.reason());
        if (latest.present()) {
            String facts = latest.manifest() == null ? "" : ", " + (latest.manifest().complete() ? "complete" : "PARTIAL")
                    + ", " + latest.manifest().files().size() + " files, " + Log.bytes(latest.manifest().totalBytes())
                    + (latest.manifest().sealed() ? ", sealed (key " + latest.manifest().keyId() + ")" : ", UNSEALED");
            out.printf("latest       %s, %s ago%s%s%n", latest.timestamp(), human(latest.age()), facts,
                    latest.writer() == null ? "" : ", written by " + latest.writer());
        } else {
            out.printf("latest       none%n");
        }
        if (lastSync != null)
            out.printf("last sync    %s %s, finished %s%s%n", lastSync.status(), Objects.toString(lastSync.snapshot(), "-"),
                    lastSync.finishedAt(), lastSync.error() == null ? "" : ": " + lastSync.error());
        else
            out.printf("last sync    none on this machine%n");
        out.printf("pruning      %s%n", pruning(lastSync, latest.lastPrune(), now));
        out.printf("restore      %s%n", restoreFailed == null ? "no failure recorded"
                : "FAILED at " + restoreFailed.at() + ": " + restoreFailed.error());
        if (verified != null)
            out.printf("verify       %s %s at %s%s%n", verified.status(), Objects.toString(verified.snapshot(), "-"), verified.at(),
                    verified.error() == null ? ", " + verified.objectsRead() + " stored objects read back" : ": " + verified.error());
        else
            out.printf("verify       none recorded on this machine%n");
        for (String warning : verdict.warnings()) out.printf("warning      %s%n", warning);
        out.flush();
    }

    /** Who applies the history policy (this machine's last sync says), and r2-prune's last run. */
    private static String pruning(LastSync lastSync, PruneRun lastPrune, Instant now) {
        String bySync = lastSync == null || lastSync.pruning() == null ? "no sync recorded on this machine"
                : switch (lastSync.pruning()) {
                    case History.Outcome.DONE -> "done by the sync";
                    case History.Outcome.DEFERRED -> "deferred to r2-prune";
                    default -> "FAILED on the last sync";
                };
        if (lastPrune == null) return History.Outcome.DONE.equals(lastSync == null ? null : lastSync.pruning()) ? bySync
                : bySync + "; r2-prune: no run recorded";
        String when = ranAt(lastPrune).map(at -> human(Duration.between(at, now)) + " ago").orElse("at an unknown time");
        String what = PruneRun.RUNNING.equals(lastPrune.status()) ? "running (or died) since " + lastPrune.startedAt()
                : lastPrune.error() != null ? "FAILED " + when + ": " + lastPrune.error()
                : lastPrune.status() + " " + when + ", " + lastPrune.snapshotsRemoved() + " snapshot(s) removed, " + lastPrune.snapshotsKept()
                + " kept, " + lastPrune.objectsDeleted() + " object(s) deleted (" + Log.bytes(lastPrune.bytesDeleted() == null ? 0 : lastPrune.bytesDeleted()) + ")";
        return bySync + "; r2-prune: " + what;
    }

    /** 2m13s, 1h04m, 3d02h: an age as an operator reads it. */
    static String human(Duration d) {
        long s = Math.max(0, d.toSeconds());
        if (s < 60) return s + "s";
        if (s < 3600) return String.format(Locale.ROOT, "%dm%02ds", s / 60, s % 60);
        if (s < 86400) return String.format(Locale.ROOT, "%dh%02dm", s / 3600, s % 3600 / 60);
        return String.format(Locale.ROOT, "%dd%02dh", s / 86400, s % 86400 / 3600);
    }
}

import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.MethodOrderer;
import org.junit.jupiter.api.Order;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestInstance;
import org.junit.jupiter.api.TestMethodOrder;

import com.fasterxml.jackson.databind.JsonNode;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.time.Duration;
import java.time.Instant;
import java.util.*;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Collectors;

import static org.junit.jupiter.api.Assertions.*;

/**
 * The sandbox integration end to end, with real processes and real signals: startup.sh runs the repo's
 * scripts through JBang (r2-restore.sh, r2-sync-daemon.sh), against S3Proxy, on towns of real git and
 * real dolt. Only gt is a stand-in: a script first on PATH that records each call (time, whether the
 * town exists yet, the last sync on this machine) and the environment gt and whatever it starts get, and,
 * like gt, starts the town's dolt sql-server on `gt up` and stops it on `gt down`.
 *
 * <p>The first four tests are one story, in order, sharing one bucket and town id (a failure early on
 * fails the later ones too): a machine with data, its secrets in files, starts and is stopped while idle (1);
 * a new machine with an empty volume restores that and is stopped in the middle of a sync cycle (2); in
 * both, the backup ran with the secrets and gt saw none of them. A third restores that
 * and is stopped with SIGINT (3); a fourth is stopped in the middle of its restore, and then restores
 * the last snapshot through the catalog alias (4). Each change made just before a signal is proven by
 * the restore that follows. Status (5) and the catalog (6) read that bucket too; the others stand alone.
 * With SANDBOX_TEST_LOGS=dir every startup.sh log is kept there.
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
@TestMethodOrder(MethodOrderer.OrderAnnotation.class)
class SandboxTest {
    private static final String TOWN_ID = "sandbox-town";
    private static final Duration START_TIMEOUT = Duration.ofMinutes(3);
    private static final Duration STOP_TIMEOUT = Duration.ofMinutes(3);
    private static final Pattern FLUSH_TOOK = Pattern.compile("startup: flush took (\\d+\\.\\d)s");
    /** The backup's secrets: none of these, nor its _FILE variant, may reach gt, the agents or the command. */
    private static final List<String> SECRETS = List.of("R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY", "GASTOWN_API_TOKEN",
            "R2_ENCRYPTION_KEY", "R2_ENCRYPTION_KEYRING");

    private final S3Server s3 = S3Server.shared();
    private final Path repo = TestTools.repo();
    private HeartbeatReceiver api;
    private Path dir;
    private Path standinBin;
    private String bucket;
    private BucketView view;
    private TestTown town;
    /** Flush times seen by the tests, printed at the end (the figure docs/operating.md sizes kill_timeout from). */
    private final List<String> flushTimes = new ArrayList<>();

    @BeforeAll
    void setUp() throws IOException {
        dir = TestTools.tempDir("sandbox-");
        town = TownBuilder.create().rigs("alpha").build(dir.resolve("built"));
        bucket = s3.newBucket();
        view = BucketView.of(s3, bucket, TOWN_ID);
        api = new HeartbeatReceiver();
        standinBin = Files.createDirectories(dir.resolve("standin-bin"));
        Path gt = standinBin.resolve("gt");
        Files.writeString(gt, GT_STANDIN);
        Files.setPosixFilePermissions(gt, PosixFilePermissions.fromString("rwxr-xr-x"));
    }

    @AfterAll
    void tearDown() {
        flushTimes.forEach(t -> System.out.println("SandboxTest: " + t));
        if (api != null) api.close();
        TestTools.deleteRecursively(dir);
    }

    // ---------------------------------------------------------------------------------------------
    // The story: keep, flush, restore, flush during a cycle, SIGINT, restore.
    // ---------------------------------------------------------------------------------------------

    @Test
    @Order(1)
    void aVolumeWithDataIsKeptAndSigtermWhileIdleFlushesAChangeThenRunsGtDown() throws Exception {
        Machine m = machine("m1", town.root());
        String before = TreeHash.of(m.volume().resolve("mayor"));
        // The secret key and the API token as files, as a platform mounts them (the key id stays a value).
        Map<String, String> env = new HashMap<>(env(m, Map.of()));
        env.put("R2_SECRET_ACCESS_KEY_FILE", secretFile(m, "r2-secret-access-key", env.remove("R2_SECRET_ACCESS_KEY")));
        env.put("GASTOWN_API_TOKEN_FILE", secretFile(m, "gastown-api-token", env.remove("GASTOWN_API_TOKEN")));
        try (Startup s = Startup.start(repo, m, env)) {
            s.awaitLog("startup: running;", START_TIMEOUT);
            assertTrue(s.log().contains("already holds data"), "the volume's data takes priority:\n" + s.log());
            assertFalse(s.log().contains("restored from snapshot"), s.log());
            assertEquals(before, TreeHash.of(m.volume().resolve("mayor")), "mayor/ untouched by the restore step");
            String first = awaitIdleAfterSync(m, s);

            // The change made just before the signal: a row through the running dolt server, and a file.
            sql(m, "insert into alpha.issues values ('al-x1', 'written just before SIGTERM', 'open', 1)");
            Files.writeString(m.volume().resolve("settings/x1.json"), "{\"x\":1}\n");
            s.signal("TERM");
            assertEquals(0, s.awaitExit(STOP_TIMEOUT), "exit 0 after SIGTERM:\n" + s.log());
            flushTimes.add("SIGTERM while idle: " + s.flushTook() + " (signal to exit " + s.signalToExit() + ")");

            String last = view.latest().orElseThrow().timestamp();
            assertTrue(last.compareTo(first) > 0, "the flush published a new snapshot (" + last + " after " + first + ")");
            assertTrue(view.manifest(last).complete(), "the final snapshot is complete");
            assertGtCalls(m, List.of("up", "down"));
            assertEquals(last, lastSyncSeenBy(m, "down"), "gt down ran after the flush had published " + last + ":\n" + s.log());
            // The warm daemon made the final sync: no second JVM started for it.
            assertLogOrder(s.log(), "startup: received SIGTERM", "startup: final sync to R2 by the sync daemon",
                    "daemon: SIGUSR1", ": ok in", "daemon: stopped", "startup: final sync done", "startup: flush took", "startup: gt down", "startup: stopped; exit 0");
            assertHeartbeat("sync", "ok", last);
            s.assertNoneLeft();
        }
        // The backup read both files (the S3 server checks the key, the heartbeat carried the token); gt did not see them.
        assertGtCalls(m, List.of("up", "down"));
        assertNoSecretsIn(m.gtEnv(), env, "up", "down");
    }

    @Test
    @Order(2)
    void anEmptyVolumeIsRestoredBeforeGtUpAndSigtermDuringACycleEndsWithTheFinalState() throws Exception {
        Machine m = machine("m2", Files.createDirectories(dir.resolve("m2-volume")));
        String published = view.latest().orElseThrow().timestamp();
        Map<String, String> env = env(m, Map.of("R2_SYNC_INTERVAL", "3s"));
        try (Startup s = Startup.start(repo, m, env)) {
            s.awaitLog("startup: running;", START_TIMEOUT);
            assertTrue(s.log().contains("restored from snapshot " + published), s.log());
            assertGtCalls(m, List.of("up"));
            assertEquals("yes", gtCall(m, "up").get("town"), "the town was in place when gt up ran");
            assertEquals("written just before SIGTERM", sql(m, "select title from alpha.issues where id = 'al-x1'").trim(),
                    "the row written just before the first SIGTERM was restored");
            assertEquals("{\"x\":1}\n", Files.readString(m.volume().resolve("settings/x1.json")));
            assertHeartbeat("restore", "ok", published);

            // Make the next cycle long (a 128 MiB runtime file to tar, hash and upload), then signal in it.
            awaitIdleAfterSync(m, s);
            writeBigFile(m.volume().resolve(".runtime/scratch/big.bin"), 128);
            int cycles = s.count(": started for town ");
            s.awaitLog(": started for town ", cycles + 1, START_TIMEOUT);
            String cycle = lastStarted(s.log());
            sql(m, "insert into alpha.issues values ('al-y2', 'written during a running cycle', 'open', 2)");
            Files.writeString(m.volume().resolve("settings/y2.json"), "{\"y\":2}\n");
            s.signal("TERM");
            String atSignal = s.log();
            assertEquals(0, s.awaitExit(STOP_TIMEOUT), "exit 0 after SIGTERM:\n" + s.log());
            flushTimes.add("SIGTERM during a 128 MiB cycle: " + s.flushTook() + " (signal to exit " + s.signalToExit() + ")");

            assertFalse(atSignal.contains("sync " + cycle + ": ok"), "the signal came while cycle " + cycle + " ran:\n" + atSignal);
            String last = view.latest().orElseThrow().timestamp();
            // The final sync may take the abandoned cycle's timestamp (the same second): that one never published.
            assertLogOrder(s.log(), "sync " + cycle + ": abandoned (a final sync follows)", "latest.json now names " + last,
                    "startup: final sync done");
            assertTrue(view.manifest(last).complete(), "the final snapshot is complete");
            if (!last.equals(cycle))
                assertFalse(view.prefixes().contains(cycle), "the abandoned cycle " + cycle + " left nothing behind in R2");
            assertEquals(last, lastSyncSeenBy(m, "down"), "gt down ran after the flush had published " + last + ":\n" + s.log());
            assertGtCalls(m, List.of("up", "down"));
            s.assertNoneLeft();
        }
        // The secrets as values: the restore and the syncs used them (above); gt did not see them.
        assertNoSecretsIn(m.gtEnv(), env, "up", "down");
    }

    @Test
    @Order(3)
    void sigintBehavesTheSame() throws Exception {
        Machine m = machine("m3", Files.createDirectories(dir.resolve("m3-volume")));
        String published = view.latest().orElseThrow().timestamp();
        try (Startup s = Startup.start(repo, m, env(m, Map.of()))) {
            s.awaitLog("startup: running;", START_TIMEOUT);
            assertTrue(s.log().contains("restored from snapshot " + published), s.log());
            assertEquals("yes", gtCall(m, "up").get("town"));
            assertEquals("written during a running cycle", sql(m, "select title from alpha.issues where id = 'al-y2'").trim(),
                    "the row written during the interrupted cycle was in the final snapshot");
            assertEquals("{\"y\":2}\n", Files.readString(m.volume().resolve("settings/y2.json")));
            assertEquals(128L << 20, Files.size(m.volume().resolve(".runtime/scratch/big.bin")));

            String first = awaitIdleAfterSync(m, s);
            sql(m, "insert into alpha.issues values ('al-z3', 'written just before SIGINT', 'open', 3)");
            Files.writeString(m.volume().resolve("settings/z3.json"), "{\"z\":3}\n");
            s.signal("INT");
            assertEquals(0, s.awaitExit(STOP_TIMEOUT), "exit 0 after SIGINT:\n" + s.log());
            flushTimes.add("SIGINT while idle: " + s.flushTook() + " (signal to exit " + s.signalToExit() + ")");

            assertTrue(s.log().contains("startup: received SIGINT"), s.log());
            String last = view.latest().orElseThrow().timestamp();
            assertTrue(last.compareTo(first) > 0, "the flush published a new snapshot");
            assertEquals(last, lastSyncSeenBy(m, "down"), "gt down ran after the flush had published " + last + ":\n" + s.log());
            assertGtCalls(m, List.of("up", "down"));
            s.assertNoneLeft();
        }
    }

    @Test
    @Order(4)
    void aSignalDuringTheRestoreStopsItCleanlyAndTheLastSnapshotThenRestoresThroughTheCatalogAlias() throws Exception {
        Machine m = machine("m4", Files.createDirectories(dir.resolve("m4-volume")));
        try (Startup s = Startup.start(repo, m, env(m, Map.of()))) {
            s.awaitLog("downloaded and verified", START_TIMEOUT);   // now rebuilding the town in staging
            s.signal("TERM");
            assertEquals(0, s.awaitExit(STOP_TIMEOUT), s.log());
            assertTrue(s.log().contains("startup: the restore was interrupted"), s.log());
            assertFalse(s.log().contains("restored from snapshot"), "the signal came before the restore finished:\n" + s.log());
            assertFalse(s.log().contains("final sync"), "no flush of a town that never started:\n" + s.log());
            assertGtCalls(m, List.of());
            assertFalse(Files.exists(m.volume().resolve("mayor/town.json")), "no half town in place");
            s.assertNoneLeft();
        }

        // The next restore starts over; here through the catalog alias.
        TestTools.ProcResult r = jbang(env(m, Map.of()), "r2-restore@" + repo);
        assertEquals(0, r.exitCode(), r.stderr());
        assertEquals("written just before SIGINT",
                TestTools.dolt(m.volume().resolve(".dolt-data/alpha"), "sql", "-r", "csv", "-q",
                        "select title from issues where id = 'al-z3'").lines().skip(1).findFirst().orElse(""));
        assertEquals("{\"z\":3}\n", Files.readString(m.volume().resolve("settings/z3.json")));
    }

    // ---------------------------------------------------------------------------------------------
    // Status, catalog, wrappers, shellcheck, and startup without its dependencies.
    // ---------------------------------------------------------------------------------------------

    @Test
    @Order(5)
    void statusSaysHeldForAFreshSnapshotAndNotHeldOtherwise() throws Exception {
        Machine m = machine("m5", Files.createDirectories(dir.resolve("m5-volume")));
        Map<String, String> env = env(m, Map.of());
        String latest = view.latest().orElseThrow().timestamp();

        TestTools.ProcResult held = jbang(env, "r2-status@" + repo, "--json");
        JsonNode json = R2Common.JSON.readTree(held.stdout());
        assertEquals(0, held.exitCode(), held.stdout() + held.stderr());
        assertTrue(json.path("held").asBoolean(), held.stdout());
        assertEquals(latest, json.path("latest").path("snapshot").asText());
        assertTrue(json.path("latest").path("complete").asBoolean());

        TestTools.ProcResult text = status(env);
        assertEquals(0, text.exitCode(), text.stderr());
        assertTrue(text.stdout().contains("loss window  HELD: snapshot " + latest), text.stdout());

        // Older than interval + slack: wait (with a deadline) until the snapshot is over 2 s old.
        Instant taken = Keys.parse(latest);
        assertTrue(TestTools.await(() -> Instant.now().isAfter(taken.plusSeconds(3)), Duration.ofSeconds(10), 100));
        TestTools.ProcResult old = status(env, "--json", "--interval", "1s", "--slack", "1s");
        assertEquals(1, old.exitCode(), old.stdout() + old.stderr());
        JsonNode oldJson = R2Common.JSON.readTree(old.stdout());
        assertFalse(oldJson.path("held").asBoolean());
        assertTrue(oldJson.path("reason").asText().contains("old, more than 1s interval + 1s slack"), old.stdout());

        Files.createDirectories(m.state());
        Files.writeString(m.state().resolve("restore-failed.json"),
                "{\"townId\":\"" + TOWN_ID + "\",\"at\":\"2026-01-01T00:00:00Z\",\"error\":\"restore: boom\"}");
        TestTools.ProcResult failed = status(env, "--json");
        assertEquals(1, failed.exitCode(), failed.stdout());
        assertTrue(R2Common.JSON.readTree(failed.stdout()).path("reason").asText().contains("a restore of this town failed"),
                failed.stdout());
        Files.delete(m.state().resolve("restore-failed.json"));

        Map<String, String> otherTown = new HashMap<>(env);
        otherTown.put("TOWN_ID", "no-such-town");
        TestTools.ProcResult none = status(otherTown);
        assertEquals(1, none.exitCode(), none.stdout());
        assertTrue(none.stdout().contains("NOT HELD: no snapshot of this town exists yet"), none.stdout());

        Map<String, String> unreachable = new HashMap<>(env);
        unreachable.put("R2_ENDPOINT", "http://127.0.0.1:" + TestTools.freePort());
        TestTools.ProcResult down = status(unreachable, "--json");
        assertEquals(1, down.exitCode(), down.stdout() + down.stderr());
        assertTrue(R2Common.JSON.readTree(down.stdout()).path("reason").asText().startsWith("cannot read"), down.stdout());

        assertEquals(2, status(Map.of("R2_ENDPOINT", "")).exitCode(), "missing config is a usage error");
    }

    @Test
    @Order(6)
    void catalogAliasesRunAndInstallAsApps() throws IOException {
        TestTools.ProcResult aliases = jbang(Map.of(), "alias", "list", repo.toString());
        assertEquals(0, aliases.exitCode(), aliases.stderr());
        for (String alias : List.of("r2-sync", "r2-sync-now", "r2-restore", "r2-list", "r2-verify", "r2-status", "r2-prune"))
            assertTrue(aliases.stdout().contains(alias + "@"), alias + " in:\n" + aliases.stdout());

        TestTools.ProcResult help = jbang(Map.of(), "r2-sync@" + repo, "--help");
        assertEquals(0, help.exitCode(), help.stderr());
        assertTrue(help.stdout().contains("Usage: r2-sync"), help.stdout());

        Machine m = machine("m6", town.root());
        TestTools.ProcResult list = jbang(env(m, Map.of()), "r2-list@" + repo);
        assertEquals(0, list.exitCode(), list.stderr());
        assertTrue(list.stdout().contains(view.latest().orElseThrow().timestamp()) && list.stdout().contains("<- latest.json"),
                list.stdout());

        // jbang app install, with JBANG_DIR in a temp dir and its bin first on PATH (so no shell rc file is touched).
        Path jbangDir = Files.createDirectories(dir.resolve("jbang-dir"));
        Path bin = Files.createDirectories(jbangDir.resolve("bin"));
        Path launcher = bin.resolve("jbang");   // the installed app runs `jbang` from PATH
        Files.writeString(launcher, "#!/bin/sh\nexec " + repo.resolve("jbang") + " \"$@\"\n");
        Files.setPosixFilePermissions(launcher, PosixFilePermissions.fromString("rwxr-xr-x"));
        Map<String, String> appEnv = Map.of("JBANG_DIR", jbangDir.toString(), "PATH", bin + ":" + System.getenv("PATH"));
        TestTools.ProcResult install = jbang(appEnv, "app", "install", "--name", "r2-sync", "r2-sync@" + repo);
        assertEquals(0, install.exitCode(), install.stdout() + install.stderr());
        assertTrue(Files.isExecutable(bin.resolve("r2-sync")), "installed into $JBANG_DIR/bin");
        TestTools.ProcResult app = TestTools.run(List.of(bin.resolve("r2-sync").toString(), "--version"), dir, appEnv, null,
                Duration.ofMinutes(2));
        assertEquals(0, app.exitCode(), app.stderr());
        assertEquals(R2Common.VERSION, app.stdout().trim());
    }

    @Test
    @Order(7)
    void wrappersFindTheirScriptsThroughSymlinksAndPassArgumentsAndExitCodes() throws IOException {
        Map<String, String> noConfig = new HashMap<>();
        for (String v : List.of("R2_ENDPOINT", "R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY", "R2_BUCKET", "TOWN_ID")) noConfig.put(v, "");
        TestTools.ProcResult missing = TestTools.run(List.of(repo.resolve("r2-sync-daemon.sh").toString(), "--immediate"), dir,
                noConfig, null, Duration.ofMinutes(2));
        assertEquals(2, missing.exitCode(), "missing config is exit 2: " + missing.stderr());
        assertTrue(missing.stderr().contains("R2_ENDPOINT is not set"), missing.stderr());

        // Installed as symlinks elsewhere (/usr/local/bin in the image): the scripts are still found.
        Path bin = Files.createDirectories(dir.resolve("usr-local-bin"));
        for (String script : List.of("r2-sync-daemon.sh", "r2-restore.sh")) {
            Path link = bin.resolve(script);
            Files.deleteIfExists(link);
            Files.createSymbolicLink(link, repo.resolve(script));
            TestTools.ProcResult version = TestTools.run(List.of(link.toString(), "--version"), dir, Map.of(), null,
                    Duration.ofMinutes(2));
            assertEquals(0, version.exitCode(), script + ": " + version.stderr());
            assertEquals(R2Common.VERSION, version.stdout().trim());
        }
        TestTools.ProcResult restoreMissing = TestTools.run(List.of(bin.resolve("r2-restore.sh").toString()), dir, noConfig,
                null, Duration.ofMinutes(2));
        assertEquals(2, restoreMissing.exitCode(), restoreMissing.stderr());

        // $JBANG wins, gets the script and every argument, is exec'd (same pid), and its exit code comes back.
        Path fake = dir.resolve("fake-jbang");
        Path seen = dir.resolve("fake-jbang.seen");
        Files.writeString(fake, "#!/bin/sh\nprintf '%s\\n' \"$$\" \"$@\" > '" + seen + "'\nexit 42\n");
        Files.setPosixFilePermissions(fake, PosixFilePermissions.fromString("rwxr-xr-x"));
        for (String[] c : List.of(new String[] {"r2-sync-daemon.sh", "R2Sync.java"}, new String[] {"r2-restore.sh", "R2Restore.java"})) {
            ProcessBuilder pb = new ProcessBuilder(bin.resolve(c[0]).toString(), "--immediate", "a b", "").directory(dir.toFile());
            pb.environment().put("JBANG", fake.toString());
            pb.redirectErrorStream(true).redirectOutput(ProcessBuilder.Redirect.DISCARD);
            Process p = pb.start();
            try {
                assertTrue(p.waitFor(60, TimeUnit.SECONDS));
            } catch (InterruptedException e) {
                throw new AssertionError(e);
            } finally {
                p.destroyForcibly();
            }
            assertEquals(42, p.exitValue(), c[0] + " passes the exit code through");
            List<String> lines = Files.readAllLines(seen);
            assertEquals(List.of(String.valueOf(p.pid()), repo.resolve(c[1]).toString(), "--immediate", "a b", ""), lines,
                    c[0] + ": exec'd (same pid), with the script next to the real file and every argument intact");
        }
    }

    @Test
    @Order(8)
    void shellcheckPassesOnEveryScript() throws IOException {
        Assumptions.assumeTrue(TestTools.run(List.of("sh", "-c", "command -v shellcheck"), repo).ok(), "shellcheck is not installed");
        List<String> cmd = new ArrayList<>(List.of("shellcheck", "-x"));
        try (var s = Files.list(repo)) {
            s.filter(p -> p.toString().endsWith(".sh")).sorted().forEach(p -> cmd.add(repo.relativize(p).toString()));
        }
        try (var s = Files.list(repo.resolve("tools"))) {
            s.filter(p -> p.toString().endsWith(".sh")).sorted().forEach(p -> cmd.add(repo.relativize(p).toString()));
        }
        cmd.add("tests/run");
        assertTrue(cmd.contains("startup.sh") && cmd.contains("r2-sync-daemon.sh") && cmd.contains("r2-restore.sh"), cmd.toString());
        TestTools.ProcResult r = TestTools.run(cmd, repo);
        assertEquals(0, r.exitCode(), String.join(" ", cmd) + "\n" + r.stdout() + r.stderr());
    }

    @Test
    @Order(9)
    void withoutGtAndWithAFailingRestoreTheContainerStillStartsWaitsAndStopsCleanly() throws Exception {
        Assumptions.assumeFalse(TestTools.run(List.of("sh", "-c", "command -v gt"), dir).ok(), "a real gt is on PATH");
        Machine m = machine("m9", Files.createDirectories(dir.resolve("m9-volume")));
        Map<String, String> env = new HashMap<>(env(m, Map.of()));
        env.put("PATH", System.getenv("PATH"));   // no gt stand-in
        env.put("R2_ENDPOINT", "");               // restore, daemon and flush all fail: exit 2
        try (Startup s = Startup.start(repo, m, env, "--", "sleep", "600")) {
            s.awaitLog("startup: running;", START_TIMEOUT);
            assertTrue(s.log().contains("ERROR: RESTORE NOT RUN: configuration error (exit 2"), s.log());
            assertTrue(s.log().contains("gt not found on PATH; skipping gt up"), s.log());
            s.awaitLog("ERROR: the sync daemon exited (status 2)", START_TIMEOUT);
            s.signal("TERM");
            assertEquals(0, s.awaitExit(STOP_TIMEOUT), s.log());
            assertTrue(s.log().contains("final sync to R2 (the sync daemon is not running"), s.log());
            assertTrue(s.log().contains("ERROR: final sync failed (exit 2)"), s.log());
            assertTrue(s.log().contains("gt not found on PATH; skipping gt down"), s.log());
            s.assertNoneLeft();
        }
    }

    @Test
    @Order(10)
    void whenTheCommandExitsTheContainerShutsDownWithItsStatus() throws Exception {
        Machine m = machine("m10", Files.createDirectories(dir.resolve("m10-volume")));
        Map<String, String> env = new HashMap<>(env(m, Map.of()));
        env.put("R2_ENDPOINT", "");
        // Every secret and every _FILE variant set at once (no backup runs here): neither gt nor the command gets one.
        for (String name : SECRETS) {
            env.putIfAbsent(name, "m10-" + name.toLowerCase(Locale.ROOT) + "-value");
            env.put(name + "_FILE", secretFile(m, name.toLowerCase(Locale.ROOT), "m10-" + name.toLowerCase(Locale.ROOT) + "-in-file"));
        }
        Path commandEnv = m.scratch().resolve("command.env");
        try (Startup s = Startup.start(repo, m, env, "--", "sh", "-c", "{ echo '--- command'; env; } > \"$0\"; exit 7",
                commandEnv.toString())) {
            assertEquals(7, s.awaitExit(STOP_TIMEOUT), s.log());
            assertLogOrder(s.log(), "startup: the command exited (status 7); shutting down", "startup: flush took",
                    "startup: gt down", "startup: stopped; exit 7");
            assertGtCalls(m, List.of("up", "down"));
            s.assertNoneLeft();
        }
        assertNoSecretsIn(m.gtEnv(), env, "up", "down");
        assertNoSecretsIn(commandEnv, env, "command");
    }

    @Test
    @Order(11)
    void aSignalBeforeTheDaemonCanTakeTheFlushIsFlushedByANewProcess() throws Exception {
        Machine m = machine("m11", dir.resolve("m4-volume"));   // the town test 4 restored
        Files.writeString(m.volume().resolve("settings/m11.json"), "{\"m\":11}\n");
        try (Startup s = Startup.start(repo, m, env(m, Map.of()))) {
            s.awaitLog("startup: running;", START_TIMEOUT);
            s.signal("TERM");   // the daemon's JVM is still starting (JBang alone takes longer than this)
            assertEquals(0, s.awaitExit(STOP_TIMEOUT), s.log());
            assertFalse(s.log().contains("daemon: syncing"), "the daemon had not started its loop:\n" + s.log());
            assertLogOrder(s.log(), "startup: final sync to R2 by the sync daemon",
                    "startup: the sync daemon ended at SIGUSR1 before it could take it", ": ok in", "startup: final sync done",
                    "startup: gt down", "startup: stopped; exit 0");
            String last = view.latest().orElseThrow().timestamp();
            assertTrue(view.manifest(last).complete(), "the final snapshot is complete");
            assertEquals(last, lastSyncSeenBy(m, "down"), "gt down ran after the flush had published " + last + ":\n" + s.log());
            s.assertNoneLeft();
        }
        Machine fresh = machine("m11b", Files.createDirectories(dir.resolve("m11b-volume")));
        TestTools.ProcResult r = jbang(env(fresh, Map.of()), "r2-restore@" + repo);
        assertEquals(0, r.exitCode(), r.stderr());
        assertEquals("{\"m\":11}\n", Files.readString(fresh.volume().resolve("settings/m11.json")), "the file written before the start");
    }

    // ---------------------------------------------------------------------------------------------
    // Helpers
    // ---------------------------------------------------------------------------------------------

    /** One machine of the story: its volume (the town root), and local state of its own. */
    record Machine(String name, Path volume, Path scratch) {
        Path state() {
            return scratch.resolve("state");
        }

        Path gtCalls() {
            return scratch.resolve("gt-calls");
        }

        /** The environment of each gt call, as the stand-in recorded it ("--- gt up", then env's output). */
        Path gtEnv() {
            return scratch.resolve("gt-calls.env");
        }
    }

    private Machine machine(String name, Path volume) throws IOException {
        return new Machine(name, volume, Files.createDirectories(dir.resolve(name + "-scratch")));
    }

    /** The environment the sandbox provisions, plus this machine's local paths and the gt stand-in first on PATH. */
    private Map<String, String> env(Machine m, Map<String, String> extra) {
        Map<String, String> env = new HashMap<>(s3.r2Env(bucket));
        env.put("TOWN_ID", TOWN_ID);
        env.put("GT_TOWN_ROOT", m.volume().toString());
        env.put("GASTOWN_API_URL", api.baseUrl());
        env.put("GASTOWN_API_TOKEN", "test-token");
        env.put("R2_STATE_DIR", m.state().toString());
        env.put("R2_SYNC_LOCK", m.scratch().resolve("r2-sync.lock").toString());
        env.put("R2_WORK_DIR", m.scratch().resolve("work").toString());
        env.put("GT_STANDIN_CALLS", m.gtCalls().toString());
        env.put("PATH", standinBin + ":" + System.getenv("PATH"));
        env.putAll(extra);
        return env;
    }

    /** Writes a secret into a file readable by its owner only (as a platform mounts one) and returns the file's path. */
    private static String secretFile(Machine m, String name, String value) throws IOException {
        assertNotNull(value, name);
        Path file = Files.createDirectories(m.scratch().resolve("secrets")).resolve(name);
        Files.writeString(file, value + "\n");
        Files.setPosixFilePermissions(file, PosixFilePermissions.fromString("rw-------"));
        return file.toString();
    }

    /**
     * What a user would check from inside an agent with `env`, in every environment recorded in the dump (each
     * section "--- gt up", "--- command", ...; the named ones must be there): no variable named after a secret
     * or its _FILE variant, and nowhere any value startup.sh got for one, nor a secret file's path or content.
     * The rest came through (GT_TOWN_ROOT), so the dump is an environment and not an empty one.
     */
    private static void assertNoSecretsIn(Path dump, Map<String, String> startupEnv, String... sections) throws IOException {
        String all = Files.readString(dump);
        Map<String, String> bySection = new LinkedHashMap<>();
        for (String part : all.split("(?m)^--- ")) {
            if (part.isEmpty()) continue;
            int eol = part.indexOf('\n');
            bySection.merge(part.substring(0, eol).replaceFirst("^gt ", ""), part.substring(eol + 1), String::concat);
        }
        assertTrue(bySection.keySet().containsAll(List.of(sections)), "sections " + List.of(sections) + " in " + bySection.keySet());
        List<String> secrets = new ArrayList<>();
        int given = 0;
        for (String name : SECRETS) {
            for (String var : List.of(name, name + "_FILE")) {
                String value = startupEnv.get(var);
                if (value == null || value.isBlank()) continue;
                given++;
                secrets.add(value);
                if (var.endsWith("_FILE")) secrets.add(Files.readString(Path.of(value)).trim());
            }
        }
        assertTrue(given >= 3, "startup.sh was given the secrets: " + given);
        for (Map.Entry<String, String> section : bySection.entrySet()) {
            String where = "the environment of " + section.getKey() + " (" + dump + ")";
            Set<String> names = section.getValue().lines().filter(l -> l.matches("[A-Za-z_][A-Za-z0-9_]*=.*"))
                    .map(l -> l.substring(0, l.indexOf('='))).collect(Collectors.toSet());
            assertTrue(names.contains("GT_TOWN_ROOT"), where + " holds the rest: " + names);
            for (String name : SECRETS) {
                assertFalse(names.contains(name), where + " holds " + name);
                assertFalse(names.contains(name + "_FILE"), where + " holds " + name + "_FILE");
            }
            for (String secret : secrets)
                assertFalse(section.getValue().contains(secret), where + " holds a secret's value (" + secret.length() + " chars)");
        }
    }

    /** Waits until the daemon's first sync on this machine is recorded, and returns its snapshot. */
    private String awaitIdleAfterSync(Machine m, Startup s) {
        Path lastSync = m.state().resolve("last-sync.json");
        assertTrue(TestTools.await(() -> Files.exists(lastSync), START_TIMEOUT, 100), "no sync finished:\n" + s.log());
        JsonNode state = readJson(lastSync);
        assertEquals("ok", state.path("status").asText(), state.toString());
        return state.path("snapshot").asText();
    }

    /** Runs SQL through the town's running dolt sql-server (the one `gt up` started); returns the rows as CSV without header. */
    private String sql(Machine m, String query) {
        String port = doltPort(m.volume());
        String out = TestTools.check(List.of(TestTools.dolt(), "--host", "127.0.0.1", "--port", port, "--no-tls", "-u", "root",
                "-p", "", "sql", "-r", "csv", "-q", query), m.volume()).stdout();
        return out.lines().skip(1).collect(Collectors.joining("\n"));
    }

    private static String doltPort(Path root) {
        try {
            Matcher mm = Pattern.compile("(?m)^\\s*port:\\s*(\\d+)").matcher(Files.readString(root.resolve(".dolt-data/config.yaml")));
            assertTrue(mm.find(), "port in .dolt-data/config.yaml");
            return mm.group(1);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    /** The snapshot timestamp of the last "sync <ts>: started" line. */
    private static String lastStarted(String log) {
        Matcher m = Pattern.compile("sync (\\d{8}T\\d{6}Z): started for town").matcher(log);
        String last = null;
        while (m.find()) last = m.group(1);
        assertNotNull(last, "a started cycle in:\n" + log);
        return last;
    }

    private static void writeBigFile(Path file, int mebibytes) throws IOException {
        Files.createDirectories(file.getParent());
        byte[] chunk = new byte[1 << 20];
        new Random(42).nextBytes(chunk);
        try (var out = Files.newOutputStream(file)) {
            for (int i = 0; i < mebibytes; i++) {
                chunk[0] = (byte) i;
                out.write(chunk);
            }
        }
    }

    /** The gt calls recorded on this machine: each a map of cmd, time (epoch ms), town (yes/no), lastSync. */
    private static List<Map<String, String>> gtCallsOf(Machine m) {
        try {
            if (!Files.exists(m.gtCalls())) return List.of();
            List<Map<String, String>> calls = new ArrayList<>();
            for (String line : Files.readAllLines(m.gtCalls())) {
                String[] f = line.split(" ");
                calls.add(Map.of("time", f[0], "cmd", f[1], "town", f[2].substring("town=".length()),
                        "lastSync", f[3].substring("last-sync=".length())));
            }
            return calls;
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    /** gt up and gt down in this order (gt version, which the sync asks, does not count). */
    private static void assertGtCalls(Machine m, List<String> expected) {
        List<String> actual = gtCallsOf(m).stream().map(c -> c.get("cmd")).filter(c -> !c.equals("version"))
                .collect(Collectors.toList());
        assertEquals(expected, actual, "gt calls");
    }

    private static Map<String, String> gtCall(Machine m, String cmd) {
        return gtCallsOf(m).stream().filter(c -> c.get("cmd").equals(cmd)).findFirst()
                .orElseThrow(() -> new AssertionError("no gt " + cmd));
    }

    private static String lastSyncSeenBy(Machine m, String cmd) {
        return gtCall(m, cmd).get("lastSync");
    }

    private static void assertLogOrder(String log, String... markers) {
        int at = -1;
        for (String marker : markers) {
            int next = log.indexOf(marker, at + 1);
            assertTrue(next > at, "'" + marker + "' after the previous marker in:\n" + log);
            at = next;
        }
    }

    private void assertHeartbeat(String event, String status, String snapshot) {
        assertTrue(TestTools.await(() -> api.requests().stream().anyMatch(r -> matches(r, event, status, snapshot)),
                Duration.ofSeconds(10), 50), "a heartbeat " + event + " " + status + " " + snapshot + " in " + api.requests());
    }

    private static boolean matches(HeartbeatReceiver.Request r, String event, String status, String snapshot) {
        JsonNode body = readJson(r.body().getBytes(StandardCharsets.UTF_8));
        return r.path().equals("/api/gastown/heartbeat") && "Bearer test-token".equals(r.header("Authorization"))
                && event.equals(body.path("event").asText()) && status.equals(body.path("status").asText())
                && snapshot.equals(body.path("snapshot").asText());
    }

    private static JsonNode readJson(Path file) {
        try {
            return readJson(Files.readAllBytes(file));
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    private static JsonNode readJson(byte[] json) {
        try {
            return R2Common.JSON.readTree(json);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    /** Runs the repo's JBang launcher with these arguments. */
    private TestTools.ProcResult jbang(Map<String, String> env, String... args) {
        List<String> cmd = new ArrayList<>(List.of(repo.resolve("jbang").toString()));
        cmd.addAll(List.of(args));
        return TestTools.run(cmd, dir, env, null, Duration.ofMinutes(3));
    }

    private TestTools.ProcResult status(Map<String, String> env, String... args) {
        List<String> all = new ArrayList<>(List.of(repo.resolve("R2Status.java").toString()));
        all.addAll(List.of(args));
        return jbang(env, all.toArray(String[]::new));
    }

    // ---------------------------------------------------------------------------------------------
    // A running startup.sh
    // ---------------------------------------------------------------------------------------------

    /**
     * startup.sh as a container runs it, its output in a log file. Every process below it is sampled
     * while it runs, so the test can prove that none outlives it; close() kills whatever a failed test
     * left behind.
     */
    static final class Startup implements AutoCloseable {
        private final Process process;
        private final Path log;
        private final Set<ProcessHandle> seen = ConcurrentHashMap.newKeySet();
        private final Thread sampler;
        private long signalledNanos;
        private long exitedNanos;

        private Startup(Process process, Path log) {
            this.process = process;
            this.log = log;
            this.sampler = new Thread(this::sample, "startup-sampler");
            sampler.setDaemon(true);
            sampler.start();
        }

        static Startup start(Path repo, Machine m, Map<String, String> env, String... args) {
            // env --default-signal: bash cannot trap a signal that was ignored when it started, and a
            // JVM started in the background by a non-interactive shell hands SIGINT down ignored.
            List<String> cmd = new ArrayList<>(List.of("env", "--default-signal=INT,TERM", repo.resolve("startup.sh").toString()));
            cmd.addAll(List.of(args));
            Path log = m.scratch().resolve("startup-" + System.nanoTime() + ".log");
            ProcessBuilder pb = new ProcessBuilder(cmd).directory(m.scratch().toFile())
                    .redirectErrorStream(true).redirectOutput(log.toFile()).redirectInput(ProcessBuilder.Redirect.from(new java.io.File("/dev/null")));
            pb.environment().putAll(env);
            try {
                return new Startup(pb.start(), log);
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
        }

        private void sample() {
            while (process.isAlive()) {
                process.descendants().forEach(seen::add);
                try {
                    process.waitFor(50, TimeUnit.MILLISECONDS);
                } catch (InterruptedException e) {
                    return;
                }
            }
        }

        String log() {
            try {
                return Files.readString(log);
            } catch (IOException e) {
                return "<no log: " + e + ">";
            }
        }

        int count(String marker) {
            return (int) log().lines().filter(l -> l.contains(marker)).count();
        }

        void awaitLog(String marker, Duration timeout) {
            awaitLog(marker, 1, timeout);
        }

        /** Waits until the log holds {@code n} lines containing marker; fails early when startup.sh exits. */
        void awaitLog(String marker, int n, Duration timeout) {
            boolean ok = TestTools.await(() -> count(marker) >= n || !process.isAlive(), timeout, 50);
            if (!ok || count(marker) < n)
                fail("no " + n + " x '" + marker + "' in the log within " + timeout + " (alive " + process.isAlive() + "):\n" + log());
        }

        /** Sends a real signal with kill(1). */
        void signal(String name) {
            signalledNanos = System.nanoTime();
            TestTools.check(List.of("kill", "-" + name, String.valueOf(process.pid())), Path.of("/"));
        }

        int awaitExit(Duration timeout) throws InterruptedException {
            if (!process.waitFor(timeout.toMillis(), TimeUnit.MILLISECONDS))
                fail("startup.sh did not exit within " + timeout + ":\n" + log());
            exitedNanos = System.nanoTime();
            sampler.join(5000);
            return process.exitValue();
        }

        String flushTook() {
            Matcher m = FLUSH_TOOK.matcher(log());
            assertTrue(m.find(), "a 'flush took' line:\n" + log());
            return m.group(1) + "s";
        }

        String signalToExit() {
            return String.format(Locale.ROOT, "%.1fs", (exitedNanos - signalledNanos) / 1e9);
        }

        /** With SANDBOX_TEST_LOGS=<dir>, the log is kept there (what an operator would see in the container log). */
        private void keepLog() {
            String keep = System.getenv("SANDBOX_TEST_LOGS");
            if (keep == null || keep.isBlank()) return;
            try {
                Path target = Files.createDirectories(Path.of(keep)).resolve(log.getParent().getFileName() + "-" + log.getFileName());
                Files.copy(log, target, java.nio.file.StandardCopyOption.REPLACE_EXISTING);
            } catch (IOException e) {
                System.out.println("SandboxTest: cannot keep " + log + ": " + e);
            }
        }

        /**
         * Every process seen below startup.sh (JVMs, dolt, git, the dolt server gt started) is gone. The launcher's
         * class-data archive build (tools/build-class-data.sh, at the lowest priority) is a cache being filled, not
         * part of the town's lifecycle: it may finish on its own time.
         */
        void assertNoneLeft() {
            assertFalse(seen.isEmpty(), "the sampler saw the children");
            seen.removeIf(h -> h.info().commandLine().orElse("").matches(".*(build-class-data\\.sh|-Xshare:dump).*"));
            TestTools.await(() -> seen.stream().noneMatch(ProcessHandle::isAlive), Duration.ofSeconds(10), 50);
            List<String> left = seen.stream().filter(ProcessHandle::isAlive)
                    .map(h -> h.pid() + " " + h.info().commandLine().orElse("?")).collect(Collectors.toList());
            assertEquals(List.of(), left, "processes that outlived startup.sh");
        }

        @Override
        public void close() {
            keepLog();
            if (process.isAlive()) {
                process.descendants().forEach(seen::add);
                process.destroyForcibly();
            }
            seen.forEach(ProcessHandle::destroyForcibly);
            try {
                process.waitFor(10, TimeUnit.SECONDS);
                sampler.join(5000);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }
    }

    /**
     * The gt stand-in. It records every call, with whether the town is in place (mayor/town.json) and
     * the snapshot of this machine's last sync at that moment; `gt up` starts the town's dolt sql-server
     * on its .dolt-data and waits until it answers, `gt down` stops it, as gt does.
     */
    private static final String GT_STANDIN = """
            #!/usr/bin/env bash
            # gt stand-in for SandboxTest: records each call to $GT_STANDIN_CALLS; up/down start/stop dolt sql-server.
            set -euo pipefail
            root="${GT_TOWN_ROOT:?}"
            calls="${GT_STANDIN_CALLS:?}"
            pidfile="$calls.dolt.pid"

            # Appends: <epoch-ms> <subcommand> town=<yes|no> last-sync=<snapshot|none>
            record() {
              local town=no last=""
              [[ -f "$root/mayor/town.json" ]] && town=yes
              if [[ -f "${R2_STATE_DIR:-/nonexistent}/last-sync.json" ]]; then
                last="$(sed -n 's/.*"snapshot" *: *"\\([^"]*\\)".*/\\1/p' "$R2_STATE_DIR/last-sync.json")"
              fi
              printf '%s %s town=%s last-sync=%s\\n' "$(date +%s%3N)" "${1:-none}" "$town" "${last:-none}" >> "$calls"
            }

            # Starts dolt sql-server on the town's .dolt-data (port from its config.yaml) and waits until it serves.
            up() {
              [[ -f "$root/.dolt-data/config.yaml" ]] || return 0
              local port
              port="$(sed -n 's/^ *port: *\\([0-9]*\\).*/\\1/p' "$root/.dolt-data/config.yaml" | head -n 1)"
              setsid dolt sql-server -H 127.0.0.1 -P "$port" --data-dir "$root/.dolt-data" > "$calls.dolt.log" 2>&1 < /dev/null &
              echo "$!" > "$pidfile"
              for _ in $(seq 300); do
                if dolt --host 127.0.0.1 --port "$port" --no-tls -u root -p "" sql -q "select 1" > /dev/null 2>&1; then
                  return 0
                fi
                sleep 0.1
              done
              echo "gt stand-in: dolt sql-server did not start" >&2
              return 1
            }

            # Stops the dolt sql-server that up started, and waits until it is gone.
            down() {
              [[ -f "$pidfile" ]] || return 0
              local pid
              pid="$(cat "$pidfile")"
              kill -TERM "$pid" 2> /dev/null || true
              for _ in $(seq 300); do
                kill -0 "$pid" 2> /dev/null || break
                sleep 0.1
              done
              rm -f "$pidfile"
            }

            record "$@"
            # What gt and everything it starts get: this env is one of gt's children.
            { printf -- '--- gt %s\\n' "${1:-none}"; env; } >> "$calls.env"
            case "${1:-}" in
              up) up ;;
              down) down ;;
              version) echo "gt version 0.0.0-standin (test)" ;;
            esac
            """;
}

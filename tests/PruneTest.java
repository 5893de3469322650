//SOURCES FaultProxy.java

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import org.junit.jupiter.api.Test;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.FileTime;
import java.time.Duration;
import java.time.Instant;
import java.time.LocalDate;
import java.time.ZoneOffset;
import java.time.temporal.ChronoUnit;
import java.util.*;
import java.util.stream.Collectors;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.*;

/**
 * The sandbox cannot erase history (docs/security.md). A sync whose credential cannot delete (S3Proxy behind a
 * FaultProxy that answers every delete 403 AccessDenied) publishes and reports pruning as deferred; r2-prune, with a
 * credential that can delete, applies the history policy by the store's clock, never removes what a kept snapshot
 * needs, and keeps the hourly and daily snapshots however many snapshots a fast clock (or a compromised sandbox) makes
 * under names of its choosing. The store's clock is moved by setting the mtimes S3Proxy's filesystem store reports as
 * LastModified; snapshots of a clock a day ahead are planted through the test's own S3 client.
 */
class PruneTest {
    private final S3Server s3 = S3Server.shared();

    @Test
    void aSyncThatCannotDeletePublishesAndDefersPruningWhichR2PruneThenDoes() throws Exception {
        Path dir = TestTools.tempDir("prune-");
        TestTown town = TownBuilder.create().rigs("alpha").build(dir.resolve("town"));
        String bucket = s3.newBucket();
        BucketView view = BucketView.of(s3, bucket, "town-p");
        List<String> made = new ArrayList<>();
        try (FaultProxy proxy = new FaultProxy(s3.endpoint()); HeartbeatReceiver api = new HeartbeatReceiver()) {
            FaultProxy.Rule noDelete = proxy.on("no delete", r -> r.method().equals("DELETE") || FaultProxy.deleteObjects().test(r))
                    .fail(403, "AccessDenied").always();
            Product sandbox = lastOnly(Product.of(town.root(), s3, bucket, "town-p"))
                    .with("R2_ENDPOINT", proxy.endpoint()).with("GASTOWN_API_URL", api.baseUrl());
            sandbox.sync("--immediate").assertOk();
            made.add(view.latest().orElseThrow().timestamp());
            change(town, "second");
            TestTools.ProcResult second = sandbox.sync("--immediate").assertOk();
            made.add(view.latest().orElseThrow().timestamp());

            // Published, with the policy (--keep 1) left undone: nothing was deleted, and nothing failed.
            assertFalse(noDelete.hits().isEmpty(), "the sync tried to delete, and the store refused:\n" + proxy.logText());
            assertEquals(made, view.completeSnapshots(), "the refused delete removed nothing");
            assertTrue(second.stderr().contains("history policy and garbage collection deferred to r2-prune"), second.stderr());
            assertFalse(second.stderr().contains("ERROR"), second.stderr());
            JsonNode beat = lastSyncHeartbeat(api);
            assertEquals("ok", beat.path("status").asText(), beat.toString());
            assertEquals("deferred", beat.path("pruning").asText(), beat.toString());
            JsonNode lastSync = R2Common.JSON.readTree(Files.readString(sandbox.stateDir().resolve(LastSync.FILE)));
            assertEquals("ok", lastSync.path("status").asText(), lastSync.toString());
            assertEquals("deferred", lastSync.path("pruning").asText(), lastSync.toString());
            TestTools.ProcResult status = sandbox.run("R2Status");
            assertEquals(0, status.exitCode(), "deferred pruning is no failure of the backup:\n" + status.stdout());
            assertTrue(status.stdout().contains("pruning      deferred to r2-prune; r2-prune: no run recorded"), status.stdout());
            assertTrue(status.stdout().contains("no r2-prune run is recorded: the bucket only grows"), status.stdout());
            JsonNode statusJson = R2Common.JSON.readTree(sandbox.run("R2Status", "--json").stdout());
            assertEquals("deferred", statusJson.path("lastSync").path("pruning").asText(), statusJson.toString());

            // A failed restore's marker in the bucket stops the sync; the operator's --forget-failure clears it with
            // this credential too (overwritten as cleared, since it cannot be deleted).
            view.put(view.keys().restoreFailed(), R2Common.toJson(new RestoreFailure("town-p", "2026-01-01T00:00:00Z", "m", "a test")));
            assertEquals(1, sandbox.sync("--immediate").exitCode(), "a failed restore stops the sync");
            sandbox.restore("--forget-failure").assertOk();
            assertTrue(view.find(view.keys().restoreFailed()).isPresent(), "not deleted: overwritten");

            // R2_PRUNE=external: the sync does not even try (no refused request for a tripwire to mistake for an attack).
            proxy.clearLog();
            change(town, "third");
            TestTools.ProcResult third = sandbox.with("R2_PRUNE", "external").sync("--immediate").assertOk();
            made.add(view.latest().orElseThrow().timestamp());
            assertTrue(proxy.log().stream().noneMatch(e -> e.request().method().equals("DELETE") || e.request().hasParam("delete")),
                    proxy.logText());
            assertTrue(third.stderr().contains("left to r2-prune (R2_PRUNE=external)"), third.stderr());
            assertFalse(third.stderr().contains("WARN"), third.stderr());
            assertEquals("deferred", lastSyncHeartbeat(api).path("pruning").asText());
        }
        assertEquals(made, view.completeSnapshots());
        Manifest latest = view.manifest(made.get(2));
        Set<String> onlyOlder = new TreeSet<>();
        for (String ts : made.subList(0, 2)) onlyOlder.addAll(keys(view, view.manifest(ts)));
        onlyOlder.removeAll(keys(view, latest));
        assertFalse(onlyOlder.isEmpty(), "the changes replaced a pack and the file index");

        // r2-prune seven hours later (by the store's clock), with a credential that can delete.
        age(bucket, view.keys().town(), Instant.now().minus(Duration.ofHours(7)));
        Product pruner = lastOnly(Product.of(dir.resolve("no-town"), s3, bucket, "town-p"));
        TestTools.ProcResult pruned = pruner.run("R2Prune").assertOk();
        assertEquals(List.of(made.get(2)), view.completeSnapshots(), pruned.stderr());
        List<String> stored = view.keys(view.keys().objects());
        assertTrue(stored.containsAll(keys(view, latest)), "everything the kept snapshot names is there");
        for (String key : onlyOlder) assertFalse(stored.contains(key), key + " is used by no kept snapshot and old: deleted");
        JsonNode record = R2Common.JSON.readTree(view.get(view.keys().town() + PruneRun.FILE));
        assertEquals("ok", record.path("status").asText(), record.toString());
        assertEquals(2, record.path("snapshotsRemoved").asInt(), record.toString());
        assertEquals(onlyOlder.size(), record.path("objectsDeleted").asInt(), record.toString());

        // The sandbox's status shows the pruner's run; the kept snapshot restores to the town.
        TestTools.ProcResult status = lastOnly(Product.of(town.root(), s3, bucket, "town-p")).run("R2Status");
        assertTrue(status.stdout().contains("r2-prune: ok ") && status.stdout().contains("2 snapshot(s) removed"), status.stdout());
        Path volume = Files.createDirectories(dir.resolve("restored"));
        Product.of(volume, s3, bucket, "town-p").onNewMachine().restore().assertOk();
        TownState.assertSame(TownState.capture(town.root()), TownState.capture(volume));
        TestTools.deleteRecursively(dir);
    }

    @Test
    void r2PruneDatesSnapshotsByTheStoreSoAClockADayAheadCannotPushHistoryOut() throws Exception {
        Path dir = TestTools.tempDir("prune-clock-");
        TestTown town = TownBuilder.create().rigs("alpha").build(dir.resolve("town"));
        String bucket = s3.newBucket();
        BucketView view = BucketView.of(s3, bucket, "town-c");
        Product sandbox = Product.of(town.root(), s3, bucket, "town-c");
        Map<String, String> made = new LinkedHashMap<>();   // snapshot -> what settings/prune-clock held
        for (String name : List.of("A", "B", "C")) {
            change(town, name);
            sandbox.sync("--immediate").assertOk();
            made.put(view.latest().orElseThrow().timestamp(), name);
        }
        List<String> real = new ArrayList<>(made.keySet());
        String a = real.get(0), b = real.get(1), c = real.get(2);

        // The store received A two days ago, B and C yesterday morning and evening; every object before that.
        Instant floodAt = Instant.now().minus(Duration.ofMinutes(8));
        LocalDate today = LocalDate.ofInstant(floodAt, ZoneOffset.UTC);
        age(bucket, view.keys().objects(), today.minusDays(3).atStartOfDay().toInstant(ZoneOffset.UTC));
        ageManifest(bucket, view, a, today.minusDays(2).atTime(12, 0).toInstant(ZoneOffset.UTC));
        ageManifest(bucket, view, b, today.minusDays(1).atTime(10, 0).toInstant(ZoneOffset.UTC));
        ageManifest(bucket, view, c, today.minusDays(1).atTime(20, 0).toInstant(ZoneOffset.UTC));
        Set<String> onlyB = keys(view, view.manifest(b));
        onlyB.removeAll(keys(view, view.manifest(a)));
        onlyB.removeAll(keys(view, view.manifest(c)));
        assertFalse(onlyB.isEmpty(), "B has a pack of its own");

        // Then a sync whose clock is a day ahead (or a compromised sandbox) makes 49 snapshots, named a day and more
        // ahead, one an hour (so on three days at least), and latest.json names the last, as such a sync's would.
        byte[] template = view.get(view.keys().object(c, Keys.MANIFEST));
        List<String> flood = new ArrayList<>();
        Instant ahead = Instant.now().plus(Duration.ofDays(1)).truncatedTo(ChronoUnit.HOURS);
        for (int i = 0; i < 49; i++) {
            String ts = Keys.format(ahead.plus(Duration.ofHours(i)));
            ObjectNode manifest = (ObjectNode) R2Common.JSON.readTree(template);
            manifest.put("timestamp", ts);
            view.put(view.keys().object(ts, Keys.MANIFEST), R2Common.JSON.writeValueAsBytes(manifest));
            ageManifest(bucket, view, ts, floodAt);
            flood.add(ts);
        }
        String newest = flood.get(flood.size() - 1);
        view.put(view.keys().latest(), R2Common.toJson(new Pointer(newest, Sha256.of(view.get(view.keys().object(newest, Keys.MANIFEST))))));

        HistoryPolicy policy = new HistoryPolicy(1, 2, 3);
        Set<String> byNames = Retention.keep(policy, view.completeSnapshots()).keySet();
        assertFalse(byNames.contains(a) || byNames.contains(c), "by their names, the flood would push A and C out: " + byNames);

        Product pruner = Product.of(dir.resolve("no-town"), s3, bucket, "town-c").with("R2_KEEP_SNAPSHOTS", "1")
                .with("R2_KEEP_HOURLY", "2").with("R2_KEEP_DAILY", "3").with("R2_GC_GRACE", "10m");
        TestTools.ProcResult r = pruner.run("R2Prune").assertOk();
        // By the store's clock the flood is one hour of one day: the newest of it is kept (last, hourly, daily; and
        // latest.json names it), C is yesterday's newest (hourly, daily), A the day before's (daily). B goes.
        List<String> expected = new ArrayList<>(List.of(a, c, newest));
        Collections.sort(expected);
        assertEquals(expected, view.completeSnapshots(), r.stderr());
        // (A, B and C are named after the times the test made the store receive them, too.)
        assertTrue(r.stderr().contains("52 snapshot(s) are named up to ") && r.stderr().contains("dated by the store's time"), r.stderr());
        List<String> stored = view.keys(view.keys().objects());
        for (String ts : List.of(a, c)) assertTrue(stored.containsAll(keys(view, view.manifest(ts))), ts + " lacks nothing");
        for (String key : onlyB) assertFalse(stored.contains(key), key + " was B's alone: deleted");

        // A restores, as it was.
        Path volume = Files.createDirectories(dir.resolve("restored-a"));
        Product.of(volume, s3, bucket, "town-c").onNewMachine().restore("--snapshot", a).assertOk();
        assertEquals("A\n", Files.readString(volume.resolve("settings/prune-clock")));
        TestTools.deleteRecursively(dir);
    }

    @Test
    void r2PruneDeletesNothingWhileAManifestCannotBeReadAndFailsLoudlyWithoutDeleteRights() throws Exception {
        Path dir = TestTools.tempDir("prune-stop-");
        TestTown town = TownBuilder.create().rigs("alpha").build(dir.resolve("town"));
        String bucket = s3.newBucket();
        BucketView view = BucketView.of(s3, bucket, "town-s");
        lastOnly(Product.of(town.root(), s3, bucket, "town-s")).sync("--immediate").assertOk();
        byte[] unused = "an object no snapshot uses".getBytes();
        String unusedKey = view.keys().object(new FileEntry("files/unused.tar", unused.length, Sha256.of(unused)));
        view.put(unusedKey, unused);
        String garbled = "20200101T000000Z";
        view.put(view.keys().object(garbled, Keys.MANIFEST), "{ not a manifest".getBytes());
        age(bucket, view.keys().town(), Instant.now().minus(Duration.ofHours(7)));
        Product pruner = lastOnly(Product.of(dir.resolve("no-town"), s3, bucket, "town-s"));

        TestTools.ProcResult r = pruner.run("R2Prune");
        assertEquals(1, r.exitCode(), r.stderr());
        assertTrue(r.stderr().contains("garbage collection skipped: the manifest of " + garbled + " cannot be read"), r.stderr());
        assertTrue(view.find(unusedKey).isPresent(), "nothing is deleted while what a snapshot uses is unknown");
        assertTrue(view.manifestExists(garbled), "an unreadable snapshot is never removed");
        assertEquals("failed", R2Common.JSON.readTree(view.get(view.keys().town() + PruneRun.FILE)).path("status").asText());

        // Readable again; but a pruner whose credential cannot delete says so and fails.
        view.delete(view.keys().object(garbled, Keys.MANIFEST));
        try (FaultProxy proxy = new FaultProxy(s3.endpoint())) {
            proxy.on("no delete", FaultProxy.deleteObjects()).fail(403, "AccessDenied").always();
            TestTools.ProcResult refused = pruner.with("R2_ENDPOINT", proxy.endpoint()).run("R2Prune");
            assertEquals(1, refused.exitCode(), refused.stderr());
            assertTrue(refused.stderr().contains("the credential cannot delete; r2-prune needs a credential that can delete"),
                    refused.stderr());
        }
        assertTrue(view.find(unusedKey).isPresent());
        pruner.run("R2Prune").assertOk();
        assertFalse(view.find(unusedKey).isPresent(), "unused and old: deleted");
        TestTools.deleteRecursively(dir);
    }

    @Test
    void r2PruneOfASealedTownNeedsTheTownsKey() throws Exception {
        Path dir = TestTools.tempDir("prune-sealed-");
        TestTown town = TownBuilder.create().rigs("alpha").build(dir.resolve("town"));
        String bucket = s3.newBucket();
        BucketView view = BucketView.of(s3, bucket, "town-k");
        String key = Base64.getEncoder().encodeToString("a sealed town's key, 32 bytes!!!".getBytes(java.nio.charset.StandardCharsets.US_ASCII));
        Product sandbox = lastOnly(Product.of(town.root(), s3, bucket, "town-k")).with("R2_ENCRYPTION_KEY", key).with("R2_PRUNE", "external");
        sandbox.sync("--immediate").assertOk();
        change(town, "sealed");
        sandbox.sync("--immediate").assertOk();
        List<String> snapshots = view.completeSnapshots();
        assertEquals(2, snapshots.size(), "R2_PRUNE=external: nothing removed");
        int objects = view.keys(view.keys().objects()).size();
        age(bucket, view.keys().town(), Instant.now().minus(Duration.ofHours(7)));

        // Its manifests are sealed: what they use is named by the town's key, which the pruner needs too.
        Product pruner = lastOnly(Product.of(dir.resolve("no-town"), s3, bucket, "town-k"));
        TestTools.ProcResult keyless = pruner.run("R2Prune");
        assertEquals(2, keyless.exitCode(), keyless.stderr());
        assertTrue(keyless.stderr().contains("R2_ENCRYPTION_KEY"), keyless.stderr());
        assertEquals(snapshots, view.completeSnapshots());
        pruner.with("R2_ENCRYPTION_KEY", key).run("R2Prune").assertOk();
        assertEquals(snapshots.subList(1, 2), view.completeSnapshots());
        assertTrue(view.keys(view.keys().objects()).size() < objects, "the older snapshot's own objects are collected");
        Path volume = Files.createDirectories(dir.resolve("restored"));
        Product.of(volume, s3, bucket, "town-k").with("R2_ENCRYPTION_KEY", key).onNewMachine().restore().assertOk();
        TownState.assertSame(TownState.capture(town.root()), TownState.capture(volume));
        TestTools.deleteRecursively(dir);
    }

    // ---------------------------------------------------------------------------------------------

    /** The policy at its smallest: only the last snapshot is kept, so every older one is the policy's to remove. */
    private static Product lastOnly(Product p) {
        return p.with("R2_KEEP_SNAPSHOTS", "1").with("R2_KEEP_HOURLY", "0").with("R2_KEEP_DAILY", "0");
    }

    private static void change(TestTown town, String content) throws IOException {
        Files.writeString(town.root().resolve("settings/prune-clock"), content + "\n");
    }

    private static JsonNode lastSyncHeartbeat(HeartbeatReceiver api) throws IOException {
        JsonNode last = null;
        for (var r : api.requests()) {
            JsonNode body = R2Common.JSON.readTree(r.body());
            if (body.path("event").asText().equals("sync")) last = body;
        }
        assertNotNull(last, "a sync heartbeat arrived");
        return last;
    }

    private static Set<String> keys(BucketView view, Manifest m) {
        return m.objects().stream().map(o -> view.keys().object(o)).collect(Collectors.toCollection(TreeSet::new));
    }

    /** Sets the LastModified S3Proxy reports for every object under prefix. */
    private void age(String bucket, String prefix, Instant at) {
        try (Stream<Path> files = Files.walk(s3.bucketDir(bucket).resolve(prefix))) {
            for (Path f : files.filter(Files::isRegularFile).toList()) Files.setLastModifiedTime(f, FileTime.from(at));
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    private void ageManifest(String bucket, BucketView view, String ts, Instant at) throws IOException {
        Files.setLastModifiedTime(s3.bucketDir(bucket).resolve(view.keys().object(ts, Keys.MANIFEST)), FileTime.from(at));
    }
}

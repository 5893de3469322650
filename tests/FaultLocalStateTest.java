import com.fasterxml.jackson.databind.JsonNode;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.channels.FileChannel;
import java.nio.channels.FileLock;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.nio.file.attribute.PosixFilePermissions;
import java.security.SecureRandom;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.SortedMap;
import java.util.TreeMap;
import org.junit.jupiter.api.Test;

/**
 * Bad local state, backed up as far as possible and reported exactly: a stale lock file, a live lock holder, leftover
 * work and staging dirs, a Dolt server killed mid-life, locked and broken databases, a repo missing an object, every
 * database and repository broken at once, a first sync with a broken database.
 */
class FaultLocalStateTest extends FaultSuite {
    @Override
    void start() {
        submit(() -> badLocalState(group("local-state")), "local-state");
    }

    @Test
    void badLocalStateIsBackedUpAsFarAsPossibleAndReportedExactly() {
        check("local-state");
    }

    private void badLocalState(FaultKit.Group g) throws IOException {
        Lane lane = lane("local", TownBuilder.create().rigs("alpha"));
        HeartbeatReceiver api = new HeartbeatReceiver();
        closeAtEnd.add(api);
        String token = "gtk_" + HexFormat.of().formatHex(new SecureRandom().generateSeed(12));
        lane.setSyncEnv("GASTOWN_API_URL", api.baseUrl(), "GASTOWN_API_TOKEN", token);
        lane.firstSync();
        TestTown town = lane.town;

        g.fault("local: a stale lock file left by a dead process", () -> {
            Files.writeString(lane.lockFile, "999999999\n");
            lane.touch(true);
            lane.syncAndRecord();
        });
        g.fault("local: a lock held by a live process: bounded wait, clear error, nothing written", () -> {
            FaultKit.Pointer before = lane.pointer();
            Set<String> prefixes = store.snapshots(lane.bucket, lane.townId).keySet();
            try (FileChannel ch = FileChannel.open(lane.lockFile, StandardOpenOption.WRITE); FileLock held = ch.lock()) {
                TestTools.ProcResult r = lane.sync(Map.of("R2_SYNC_LOCK_WAIT", "1s"));
                if (r.exitCode() != 1) throw new AssertionError("exit " + r.exitCode() + " with the lock held\n" + r.stderr());
                assertMentions(r.stderr(), "another sync still holds");
            }
            if (!lane.pointer().sameBytes(before) || !store.snapshots(lane.bucket, lane.townId).keySet().equals(prefixes))
                throw new AssertionError("a sync that never got the lock wrote to the bucket");
        });
        g.fault("local: a leftover work dir of a dead sync (with a read-only dir in it)", () -> {
            Path leftover = lane.workDir.resolve("r2-sync-20200101T000000Z-999999");
            Files.createDirectories(leftover.resolve("dolt/hq/ro"));
            Files.writeString(leftover.resolve("dolt/hq/ro/table"), "junk");
            Files.setPosixFilePermissions(leftover.resolve("dolt/hq/ro"), PosixFilePermissions.fromString("r-xr-xr-x"));
            lane.touch(true);
            TestTools.ProcResult r = lane.syncAndRecord();
            assertMentions(r.stderr(), "removing the work dir of an interrupted sync");
            if (Files.exists(leftover)) throw new AssertionError("the leftover work dir is still there");
        });
        g.fault("local: a leftover restore staging dir on an empty volume", () -> {
            Path base = TestTools.tempDir("fault-staging-");
            Path root = base.resolve("town");
            Files.createDirectories(root.resolve(".r2-restore/download/dolt"));
            Files.writeString(root.resolve(".r2-restore/download/dolt/hq.backup"), "half a download");
            Files.createDirectories(root.resolve(".r2-restore/town/mayor"));
            Files.writeString(root.resolve(".r2-restore/town/mayor/town.json"), "{\"stale\":true}");
            TestTools.ProcResult r = lane.restore(root, Map.of());
            if (r.exitCode() != 0) throw new AssertionError("restore over a leftover staging dir failed\n" + r.stderr());
            if (Files.exists(root.resolve(".r2-restore"))) throw new AssertionError("the staging dir is still there");
            String diff = lane.states.get(lane.pointer().timestamp()).diff(TownState.capture(root));
            if (!diff.isEmpty()) throw new FaultKit.DataLoss("restored town differs:\n" + diff);
            TestTools.deleteRecursively(base);
        });
        g.fault("local: the Dolt server died (kill -9), leaving sql-server.info behind", () -> {
            TestDoltServer server = town.startDoltServer();
            try {
                ProcessHandle.of(server.pid()).ifPresent(ProcessHandle::destroyForcibly);
                TestTools.await(() -> !server.isAlive(), Duration.ofSeconds(10), 20);
            } finally {
                server.close();
            }
            if (!Files.exists(town.doltData().resolve(".dolt/sql-server.info")))
                throw new AssertionError("test setup: the dead server left no sql-server.info");
            lane.touch(true);
            TestTools.ProcResult r = lane.syncAndRecord();
            if (r.stderr().contains("NOT backed up")) throw new AssertionError("a dead server's leftovers stopped a backup:\n" + r.stderr());
            assertLatestRestores(lane);
        });
        g.fault("local: every database locked by another dolt process: partial, carried over, reported", () -> {
            lane.touch(true);
            TownState state = lane.currentState();
            String prev = lane.pointer().timestamp();
            TestDoltServer server = town.startDoltServer();
            Path info = town.doltData().resolve(".dolt/sql-server.info");
            Path aside = town.doltData().resolve("sql-server.info.aside");
            try {
                // Without sql-server.info the dolt CLI does not route through the server and finds the lock.
                Files.move(info, aside);
                TestTools.ProcResult r = lane.sync();
                assertPartial(lane, r, api, Set.of("database .dolt-data/alpha", "database .dolt-data/hq"), prev,
                        new TownState(merge(state.without("dolt:"), lane.states.get(prev).only("dolt:"))));
            } finally {
                if (Files.exists(aside)) Files.move(aside, info);
                server.close();
            }
        });
        g.fault("local: a broken database (its noms manifest overwritten): partial, carried over, restorable", () -> {
            Path manifest = town.doltDb("alpha").resolve(".dolt/noms/manifest");
            byte[] good = Files.readAllBytes(manifest);
            lane.touch(true);
            String prev = lane.pointer().timestamp();
            TownState state = lane.currentState();
            try {
                Files.writeString(manifest, "garbage, not a dolt manifest");
                TestTools.ProcResult r = lane.sync();
                // The partial snapshot restores: alpha as the previous snapshot had it, the rest as now.
                assertPartial(lane, r, api, Set.of("database .dolt-data/alpha"), prev,
                        new TownState(merge(state.without("dolt:alpha:"), lane.states.get(prev).only("dolt:alpha:"))));
                assertLatestRestores(lane);
            } finally {
                Files.write(manifest, good);
            }
        });
        g.fault("local: a rig repo with a missing object: partial, carried over, restorable", () -> {
            Path repo = town.rig("alpha").resolve(".repo.git");
            Path object = looseObject(repo);
            byte[] content = Files.readAllBytes(object);
            lane.touch(false);
            String prev = lane.pointer().timestamp();
            TownState state = lane.currentState();
            try {
                Files.delete(object);
                TestTools.ProcResult r = lane.sync();
                // The partial snapshot restores: .repo.git as the previous snapshot had it, the rest as now.
                assertPartial(lane, r, api, Set.of("repo alpha/.repo.git"), prev, new TownState(merge(
                        state.without("refs:alpha/.repo.git"), lane.states.get(prev).only("refs:alpha/.repo.git"))));
                if (!r.stderr().contains("repo alpha/.repo.git NOT backed up"))
                    throw new AssertionError("the log does not name the repo:\n" + r.stderr());
                assertLatestRestores(lane);
            } finally {
                Files.write(object, content);
            }
            TestTools.ProcResult ok = lane.syncAndRecord();
            if (ok.stderr().contains("NOT backed up")) throw new AssertionError("still partial after the repair:\n" + ok.stderr());
        });
        g.fault("local: nothing can be backed up (all databases and repos broken): exit 1, pointer untouched", () -> {
            List<Path> objects = new ArrayList<>();
            Map<Path, byte[]> saved = new LinkedHashMap<>();
            for (String db : town.databases()) objects.add(town.doltDb(db).resolve(".dolt/noms/manifest"));
            for (String repo : List.of(".git", "alpha/.repo.git", "alpha/mayor/rig/.git", "alpha/crew/max/.git", "plugins/p/vendor/lib/.git"))
                objects.add(looseObject(town.root().resolve(repo)));
            FaultKit.Pointer before = lane.pointer();
            lane.touch(false);
            try {
                for (Path p : objects) {
                    saved.put(p, Files.readAllBytes(p));
                    if (p.getFileName().toString().equals("manifest")) Files.writeString(p, "garbage");
                    else Files.delete(p);
                }
                TestTools.ProcResult r = lane.sync();
                if (r.exitCode() != 1) throw new AssertionError("exit " + r.exitCode() + " when nothing could be backed up\n" + r.stderr());
                assertMentions(r.stderr(), "no database or repo could be backed up");
                if (!lane.pointer().sameBytes(before)) throw new FaultKit.DataLoss("latest.json moved to a snapshot of nothing");
                Map<String, Object> hb = lastHeartbeat(api);
                if (!"failed".equals(hb.get("status"))) throw new AssertionError("heartbeat status " + hb.get("status") + ", expected failed");
            } finally {
                for (Map.Entry<Path, byte[]> e : saved.entrySet()) Files.write(e.getKey(), e.getValue());
            }
            lane.syncAndRecord();
        });
        g.fault("local: the first sync ever, with a broken database: published partial, the gap named", () -> {
            Path manifest = town.doltDb("alpha").resolve(".dolt/noms/manifest");
            byte[] good = Files.readAllBytes(manifest);
            String bucket = s3.newBucket();
            try {
                Files.writeString(manifest, "garbage");
                TestTools.ProcResult r = lane.sync(Map.of("R2_BUCKET", bucket, "R2_SYNC_LOCK", lane.local.resolve("other.lock").toString()));
                if (r.exitCode() != 3) throw new AssertionError("exit " + r.exitCode() + ", expected 3 (partial)\n" + r.stderr());
                FaultKit.Pointer p = store.pointer(bucket, lane.townId);
                JsonNode m = store.manifest(bucket, lane.townId, p.timestamp());
                List<String> dbs = new ArrayList<>();
                m.path("databases").forEach(d -> dbs.add(d.path("name").asText()));
                if (dbs.contains("alpha")) throw new AssertionError("the manifest lists the broken database as backed up");
                JsonNode problems = m.path("problems");
                if (problems.size() != 1 || !problems.get(0).path("part").asText().equals("database .dolt-data/alpha")
                        || !problems.get(0).path("carriedFrom").isMissingNode() && !problems.get(0).path("carriedFrom").isNull())
                    throw new AssertionError("the manifest must name exactly the missing database, not carried: " + problems);
            } finally {
                Files.write(manifest, good);
            }
        });
    }

    /**
     * Exit 3, manifest.problems names exactly {@code parts}, each carried over from {@code prev}; the heartbeat
     * says partial. Records {@code expected} as what the partial snapshot restores to.
     */
    private void assertPartial(Lane lane, TestTools.ProcResult r, HeartbeatReceiver api, Set<String> parts, String prev,
                               TownState expected) {
        if (r.exitCode() != 3) throw new AssertionError("exit " + r.exitCode() + ", expected 3 (partial)\n" + TestTools.tail(r.stderr(), 3000));
        FaultKit.Pointer p = lane.pointer();
        if (p.timestamp().equals(prev)) throw new AssertionError("a partial snapshot must still be published");
        lane.states.put(p.timestamp(), expected);
        store.assertIntact(lane.bucket, lane.townId, p.timestamp(), p.manifestSha256());
        JsonNode m = store.manifest(lane.bucket, lane.townId, p.timestamp());
        Set<String> named = new java.util.TreeSet<>();
        for (JsonNode problem : m.path("problems")) {
            named.add(problem.path("part").asText());
            if (!prev.equals(problem.path("carriedFrom").asText()))
                throw new AssertionError("problem " + problem + " is not carried over from " + prev);
        }
        if (!named.equals(new java.util.TreeSet<>(parts)))
            throw new AssertionError("manifest.problems names " + named + ", expected exactly " + parts);
        Map<String, Object> hb = lastHeartbeat(api);
        if (!"partial".equals(hb.get("status"))) throw new AssertionError("heartbeat status " + hb.get("status") + ", expected partial: " + hb);
        @SuppressWarnings("unchecked")
        List<String> hbProblems = (List<String>) hb.get("problems");
        if (hbProblems == null || hbProblems.size() != parts.size()
                || !parts.stream().allMatch(part -> hbProblems.stream().anyMatch(s -> s.startsWith(part + ": "))))
            throw new AssertionError("heartbeat problems " + hbProblems + " do not name exactly " + parts);
        // Each missing part is in the snapshot as the previous snapshot's copy.
        Set<String> dbs = new java.util.TreeSet<>();
        m.path("databases").forEach(d -> dbs.add("database " + d.path("path").asText()));
        Set<String> repos = new java.util.TreeSet<>();
        m.path("repos").forEach(d -> repos.add("repo " + d.path("path").asText()));
        for (String part : parts)
            if (!dbs.contains(part) && !repos.contains(part))
                throw new AssertionError(part + " is neither in the snapshot (carried over) nor ... it silently lacks it: " + m);
    }

    @SuppressWarnings("unchecked")
    private static Map<String, Object> lastHeartbeat(HeartbeatReceiver api) {
        List<HeartbeatReceiver.Request> all = api.requests();
        if (all.isEmpty()) throw new AssertionError("no heartbeat arrived");
        try {
            return FaultKit.JSON.readValue(all.get(all.size() - 1).body(), Map.class);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    private static SortedMap<String, String> merge(TownState a, TownState b) {
        SortedMap<String, String> m = new TreeMap<>(a.facts());
        m.putAll(b.facts());
        return m;
    }

    /**
     * A loose object file of a repo (a commit made after the clone), to delete for corruption: one the town's
     * own refs reach (so no pack can be written without it), not only a branch touch() made.
     */
    private static Path looseObject(Path gitDir) throws IOException {
        for (String sha : TestTools.git(gitDir, "--git-dir=" + gitDir, "rev-list", "--exclude=refs/heads/fault-*", "--all")
                .lines().toList()) {
            Path object = gitDir.resolve("objects").resolve(sha.substring(0, 2)).resolve(sha.substring(2));
            if (Files.isRegularFile(object)) return object;
        }
        throw new AssertionError("no loose commit in " + gitDir);
    }
}

import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestInstance;

import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.time.Instant;
import java.util.*;
import java.util.stream.Collectors;

import static org.junit.jupiter.api.Assertions.*;

/**
 * R2Sync against a realistic town (real git, real dolt, a real dolt sql-server) and a real S3 server.
 * One town is built for the class; tests that change it build their own.
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class R2SyncTest {
    private final S3Server s3 = S3Server.shared();
    private TestTown town;
    private Path dir;

    @BeforeAll
    void buildTown() {
        dir = TestTools.tempDir("sync-test-");
        town = TownBuilder.create().rigs("alpha", "beta").emptyRig("gamma").build(dir);
    }

    @AfterAll
    void cleanUp() {
        TestTools.deleteRecursively(dir);
    }

    private Product product(String bucket) {
        return Product.of(town.root(), s3, bucket, "town-1");
    }

    @Test
    void everyObjectHasTheSizeAndSha256ItsManifestStatesAndThePointerPinsTheManifest() throws Exception {
        String bucket = s3.newBucket();
        BucketView view = BucketView.of(s3, bucket, "town-1");
        try (TestDoltServer server = town.startDoltServer()) {
            product(bucket).sync("--immediate").assertOk();
        }
        Pointer latest = view.latest().orElseThrow();
        byte[] manifestJson = view.get(view.keys().object(latest.timestamp(), Keys.MANIFEST));
        assertEquals(Sha256.of(manifestJson), latest.manifestSha256(), "latest.json pins the manifest");
        Manifest m = R2Common.fromJson(manifestJson, Manifest.class, "manifest");

        // Every git directory found by what it is: the town root's, each rig's shared repo, the separate
        // clones, and one in a place nobody lists. gamma's repo has no objects: recorded, no pack.
        assertEquals(Set.of(".git", "alpha/.repo.git", "beta/.repo.git", "gamma/.repo.git", "alpha/mayor/rig/.git",
                "beta/mayor/rig/.git", "alpha/crew/max/.git", "beta/crew/max/.git", "plugins/p/vendor/lib/.git"),
                m.repos().stream().map(RepoFacts::path).collect(Collectors.toSet()));
        assertEquals(Set.of("gamma/.repo.git"), m.repos().stream().filter(RepoFacts::empty).map(RepoFacts::path).collect(Collectors.toSet()));
        for (RepoFacts repo : m.repos())
            if (!repo.empty()) assertEquals(List.of(List.of(Keys.gitPacks(repo.path()) + "/0.pack", Keys.gitPacks(repo.path()) + "/0.idx")),
                    repo.chain().stream().map(ChainLink::files).toList(), "a first snapshot holds one full pack per repo, with its index");
        for (String db : List.of("hq", "alpha", "beta", "gamma"))
            assertTrue(m.file("dolt/" + db + ".backup/manifest").isPresent(), db + " has its dolt backup's manifest");
        assertFalse(m.fileIndex().isEmpty(), "a file index");
        assertTrue(m.fileIndex().stream().allMatch(p -> m.file(p).isPresent()), "every index piece is a file of the snapshot");
        assertTrue(m.files().stream().anyMatch(f -> f.path().startsWith(PackWriter.DIR)), "at least one file pack");
        // Every file is an object under incremental/, named by its content, holding what the manifest says.
        for (FileEntry f : m.files()) {
            String key = view.keys().object(f);
            assertEquals("gastown/town-1/incremental/" + f.path() + "/" + f.sha256(), key);
            byte[] data = view.get(key);
            assertEquals(f.size(), data.length, f.path() + " size");
            assertEquals(f.sha256(), Sha256.of(data), f.path() + " sha256");
        }
        assertEquals(List.of(view.keys().object(latest.timestamp(), Keys.MANIFEST)), view.keys(view.keys().snapshots()),
                "a snapshot's prefix holds its manifest only");
        assertEquals("town-1", m.townId());
        assertEquals(latest.timestamp(), m.timestamp());
        assertEquals(R2Common.VERSION, m.tool());
        assertEquals("unknown", m.versions().gt(), "gt is not on PATH in tests");
        assertTrue(m.versions().dolt().matches("\\d+\\.\\d+\\.\\d+"), m.versions().dolt());
        assertTrue(m.versions().git().startsWith("2."), m.versions().git());
        assertTrue(m.problems().isEmpty(), m.problems().toString());
        assertTrue(m.databases().stream().allMatch(DatabaseFacts::serverRunning), "backed up through the running server");

        RepoFacts empty = m.repo("gamma/.repo.git").orElseThrow();
        assertTrue(empty.empty(), "a repo with no commits is recorded without a pack");
        RepoFacts alpha = m.repo("alpha/.repo.git").orElseThrow();
        assertEquals(town.worktrees().keySet().stream().filter(p -> p.startsWith("alpha/")).collect(Collectors.toSet()),
                alpha.workTrees().stream().map(WorkTreeFacts::path).collect(Collectors.toSet()), "every worktree path");
        assertEquals(TestTools.git(town.root().resolve("alpha/.repo.git"), "for-each-ref", "--format=%(refname)").lines()
                .collect(Collectors.toSet()), alpha.refs().keySet(), "every ref");
        // The agent's in-progress work is counted: notes/plan.md staged, src/file1.txt modified, and five
        // untracked entries (wip.txt, build.log, CLAUDE.md, and gt's .beads/ and .claude/ dirs).
        WorkTreeFacts busy = alpha.workTrees().stream().filter(w -> w.path().equals("alpha/polecats/furiosa/alpha"))
                .findFirst().orElseThrow();
        assertEquals(List.of(1, 1, 5), List.of(busy.staged(), busy.modified(), busy.untracked()), busy.summary());
        assertEquals("alpha/.repo.git/worktrees/alpha", busy.gitDir());
        assertTrue(m.repo("beta/.repo.git").orElseThrow().promisor(), "beta is a partial clone");
        assertFalse(alpha.promisor());
        assertEquals("refs/remotes/origin/main", m.repo("alpha/crew/max/.git").orElseThrow().symrefs().get("refs/remotes/origin/HEAD"));
        assertEquals(1, m.repo(".git").orElseThrow().workTrees().size(), "the town root is a work tree");
    }

    @Test
    void eachDoltBackupRestoresToTheSameBranchesCommitsAndWorkingSet() throws Exception {
        String bucket = s3.newBucket();
        BucketView view = BucketView.of(s3, bucket, "town-1");
        try (TestDoltServer server = town.startDoltServer()) {
            product(bucket).sync("--immediate").assertOk();
        }
        String ts = view.latest().orElseThrow().timestamp();
        Path scratch = TestTools.tempDir("dolt-restore-");
        try {
            for (String db : town.databases()) {
                Path backup = view.downloadDir(ts, "dolt/" + db + ".backup", scratch);
                Path restored = Files.createDirectories(scratch.resolve("restored"));
                TestTools.dolt(restored, "backup", "restore", "file://" + backup, db);

                Map<String, String> original = new TreeMap<>();
                DoltFacts.capture(town.doltDb(db), original);
                Map<String, String> copy = new TreeMap<>();
                DoltFacts.capture(restored.resolve(db), copy);
                assertEquals(original, copy, "database " + db + " after dolt backup restore");
                assertTrue(original.values().stream().anyMatch(v -> v.contains(TestTown.DOLT_BRANCH)), "second branch captured");
            }
        } finally {
            TestTools.deleteRecursively(scratch);
        }
    }

    @Test
    void syncWorksWithTheDoltServerStopped() {
        String bucket = s3.newBucket();
        product(bucket).sync("--immediate").assertOk();
        Manifest m = BucketView.of(s3, bucket, "town-1").manifest(BucketView.of(s3, bucket, "town-1").latest().orElseThrow().timestamp());
        assertEquals(town.databases().size(), m.databases().size());
        assertTrue(m.databases().stream().noneMatch(DatabaseFacts::serverRunning));
    }

    @Test
    void eachFirstPackVerifiesAndHoldsEveryRefPolecatBranchesIncluded() throws Exception {
        String bucket = s3.newBucket();
        BucketView view = BucketView.of(s3, bucket, "town-1");
        product(bucket).sync("--immediate").assertOk();
        String ts = view.latest().orElseThrow().timestamp();
        Manifest m = view.manifest(ts);
        Path scratch = TestTools.tempDir("packs-");
        try {
            for (RepoFacts repo : m.repos()) {
                if (repo.empty()) continue;
                Path source = town.root().resolve(repo.path());
                Map<String, String> sourceRefs = new TreeMap<>();
                TestTools.git(source, "for-each-ref", "--format=%(refname) %(objectname)").lines()
                        .forEach(l -> sourceRefs.put(l.split(" ")[0], l.split(" ")[1]));
                assertEquals(sourceRefs, repo.refs(), "refs of " + repo.path());
                // git checks the pack against its index (every object hashed), then finds everything each ref reaches.
                ChainLink first = repo.chain().get(0);
                Path pack = view.download(ts, first.file(), scratch);
                Path index = view.download(ts, first.index(), scratch);
                TestTools.git(scratch, "verify-pack", index.toString());
                Path verifier = scratch.resolve(repo.path().replace('/', '_') + "-verifier.git");
                TestTools.git(scratch, "init", "--quiet", "--bare", verifier.toString());
                Files.copy(pack, verifier.resolve("objects/pack/pack-first.pack"));
                Files.copy(index, verifier.resolve("objects/pack/pack-first.idx"));
                // A shallow clone's boundary is one of its files (in the file packs), not in its pack.
                if (Files.exists(source.resolve("shallow"))) Files.copy(source.resolve("shallow"), verifier.resolve("shallow"));
                // A partial clone's pack lacks the blobs its promisor remote holds, as the clone itself does.
                String missing = repo.promisor() ? "--missing=allow-any" : "--missing=error";
                for (String object : sourceRefs.values()) TestTools.git(verifier, "rev-list", "--objects", "--quiet", missing, object);
            }
            for (String rig : town.rigs())
                for (String polecat : TestTown.POLECATS) {
                    String branch = town.worktrees().get(rig + "/polecats/" + polecat + "/" + rig);
                    assertNotNull(branch, "builder recorded the polecat worktree");
                    assertTrue(m.repo(rig + "/.repo.git").orElseThrow().refs().containsKey("refs/heads/" + branch), branch);
                }
        } finally {
            TestTools.deleteRecursively(scratch);
        }
    }

    @Test
    void theTarsHoldTheWholeTownButTheSkipList() throws Exception {
        String bucket = s3.newBucket();
        BucketView view = BucketView.of(s3, bucket, "town-1");
        product(bucket).sync("--immediate").assertOk();
        String ts = view.latest().orElseThrow().timestamp();
        Path scratch = TestTools.tempDir("tars-");
        try {
            Set<String> inTars = new TreeSet<>(view.packedPaths(ts, scratch));
            for (String kept : town.keptFiles()) assertTrue(inTars.contains(kept), kept + " must be kept");
            for (String dir : town.emptyDirs()) assertTrue(inTars.contains(dir), "empty dir " + dir + " must be kept");
            for (String skipped : town.skippedFiles()) assertFalse(inTars.contains(skipped), skipped + " must be skipped");
            // What git shows in a work tree wins over the skip list: a tracked lock file, an untracked log.
            assertTrue(inTars.contains("alpha/refinery/rig/Cargo.lock"));
            assertTrue(inTars.contains("alpha/polecats/furiosa/alpha/build.log"));
            // Git directories' own files are there (objects and refs go in git packs), the users and grants too.
            for (String path : List.of(".git/hooks/post-checkout", ".git/config", "alpha/.repo.git/shallow",
                    "alpha/.repo.git/worktrees/alpha/index", "alpha/crew/max/.git/logs/refs/stash", "alpha/crew/max/.git/index",
                    ".dolt-data/.doltcfg/privileges.db"))
                assertTrue(inTars.contains(path), path);
            assertTrue(inTars.stream().noneMatch(p -> p.contains("/objects/") || p.endsWith("packed-refs")
                    || p.matches(".*\\.git/refs/.*") || p.matches("\\.dolt-data/[^/]+/\\.dolt(/.*)?")), "no git or dolt store");
        } finally {
            TestTools.deleteRecursively(scratch);
        }
    }

    @Test
    void whatAnotherToolStoresIsNeverTarredEvenWhereGitShowsItAsUntracked() throws Exception {
        // A town root repo that ignores nothing: git lists the databases' .dolt and the rigs' .repo.git as
        // untracked, yet they go up only through dolt backup and git packs, never as raw files.
        Path own = TestTools.tempDir("nothing-ignored-");
        TestTown t = TownBuilder.create().rigs("alpha").partial().build(own);
        Files.writeString(t.root().resolve(".gitignore"), "# nothing ignored\n");
        assertTrue(TestTools.git(t.root(), "status", "--porcelain", "--untracked-files=all").contains(".dolt-data/hq/.dolt/"));
        String bucket = s3.newBucket();
        BucketView view = BucketView.of(s3, bucket, "town-1");
        Product.of(t.root(), s3, bucket, "town-1").sync("--immediate").assertOk();
        String ts = view.latest().orElseThrow().timestamp();
        Path scratch = TestTools.tempDir("tars-");
        List<String> inTars = view.packedPaths(ts, scratch);
        assertTrue(inTars.stream().noneMatch(p -> p.contains("/.dolt/") || p.endsWith("/.dolt") || p.contains("/objects/")
                || p.endsWith("packed-refs")), "no dolt store, no git object store: " + inTars.stream().filter(p -> p.contains(".dolt/")).toList());
        assertTrue(inTars.contains("daemon/dolt.pid"), "a volatile file git shows as untracked is the town's to keep");
        TestTools.deleteRecursively(own);
        TestTools.deleteRecursively(scratch);
    }

    @Test
    void latestJsonIsWrittenOnlyAfterEveryObjectOfTheSnapshot() throws Exception {
        // S3Proxy's filesystem store keeps each object as a file: their mtimes are the order of the writes.
        String bucket = s3.newBucket();
        BucketView view = BucketView.of(s3, bucket, "town-1");
        product(bucket).sync("--immediate").assertOk();
        String ts = view.latest().orElseThrow().timestamp();
        Path blobs = s3.bucketDir(bucket);
        java.nio.file.attribute.FileTime pointerWritten = Files.getLastModifiedTime(blobs.resolve(view.keys().latest()));
        java.nio.file.attribute.FileTime manifestWritten = Files.getLastModifiedTime(blobs.resolve(view.keys().object(ts, Keys.MANIFEST)));
        assertTrue(manifestWritten.compareTo(pointerWritten) <= 0, "manifest before pointer");
        for (String key : view.keys(view.keys().snapshot(ts))) {
            java.nio.file.attribute.FileTime written = Files.getLastModifiedTime(blobs.resolve(key));
            assertTrue(written.compareTo(manifestWritten) <= 0, key + " written after the manifest");
        }
    }

    @Test
    void anUnchangedTownReusesEveryPackAndBundle() {
        String bucket = s3.newBucket();
        BucketView view = BucketView.of(s3, bucket, "town-1");
        Product p = product(bucket);
        p.sync("--immediate").assertOk();
        // A path changed within 2 s of a scan is read again at the next one: the class's town may be that fresh.
        p.sync("--immediate").assertOk();
        List<String> objectsBefore = view.keys(view.keys().objects());
        TestTools.ProcResult third = p.sync("--immediate").assertOk();
        // Repos are fingerprinted (refs, shallow boundary, HEADs, indexes, stash): unchanged ones are never
        // packed again; files whose type, mode, size, mtime and inode are unchanged are not read again.
        for (String repo : List.of(".git", "alpha/.repo.git", "alpha/mayor/rig/.git", "alpha/crew/max/.git", "beta/.repo.git",
                "plugins/p/vendor/lib/.git"))
            assertTrue(third.stderr().contains("git " + repo + " unchanged since"), repo + ":\n" + third.stderr());
        assertTrue(third.stderr().matches("(?s).*files: [0-9]+ paths, 0 read again.*"), third.stderr());
        // Every dolt command rewrites the working set's timestamp; a database whose refs and working sets did
        // not change is still not backed up again.
        for (String db : town.databases())
            assertTrue(third.stderr().contains("dolt .dolt-data/" + db + ": unchanged"), db + ":\n" + third.stderr());
        List<String> added = view.keys(view.keys().objects()).stream().filter(k -> !objectsBefore.contains(k)).toList();
        assertEquals(List.of(), added, "an unchanged town uploads no object");
        List<String> snapshots = view.completeSnapshots();
        Manifest first = view.manifest(snapshots.get(snapshots.size() - 2));
        Manifest latest = view.manifest(snapshots.get(snapshots.size() - 1));
        assertEquals(first.files(), latest.files(), "the same file packs, git packs and dolt backup files");
    }

    @Test
    void aChangeOnlyInAnotherBranchsUncommittedWorkIsBackedUp() throws Exception {
        Path own = TestTools.tempDir("branch-change-");
        TestTown t = TownBuilder.create().rigs("alpha").build(own);
        String bucket = s3.newBucket();
        BucketView view = BucketView.of(s3, bucket, "town-1");
        Product p = Product.of(t.root(), s3, bucket, "town-1");
        Path scratch = TestTools.tempDir("branch-restore-");
        try (TestDoltServer server = t.startDoltServer()) {
            p.sync("--immediate").assertOk();
            p.sync("--immediate").assertOk();
            // Through the server, on the branch that is not checked out, never committed: only that branch's
            // working set changes (no ref moves, the checked-out working set is the same).
            TestTools.dolt(t.doltDb("hq"), "sql", "-q", "use `hq/" + TestTown.DOLT_BRANCH + "`; "
                    + "insert into issues values ('hq-77', 'uncommitted on the branch', 'open', 1)");
            TestTools.ProcResult r = p.sync("--immediate").assertOk();
            assertFalse(r.stderr().contains("dolt .dolt-data/hq: unchanged"), r.stderr());
            assertTrue(r.stderr().contains("dolt .dolt-data/alpha: unchanged"), r.stderr());
        }
        Path backup = view.downloadDir(view.latest().orElseThrow().timestamp(), "dolt/hq.backup", scratch);
        Path restored = Files.createDirectories(scratch.resolve("restored"));
        TestTools.dolt(restored, "backup", "restore", "file://" + backup, "hq");
        String row = TestTools.dolt(restored.resolve("hq"), "sql", "-r", "csv", "-q",
                "use `hq/" + TestTown.DOLT_BRANCH + "`; select title from issues where id = 'hq-77'");
        assertTrue(row.contains("uncommitted on the branch"), row);
        TestTools.deleteRecursively(scratch);
        TestTools.deleteRecursively(own);
    }

    @Test
    void aSmallChangeUploadsOnlyWhatChanged() throws Exception {
        Path own = TestTools.tempDir("small-change-");
        TestTown t = TownBuilder.create().rigs("alpha").build(own);
        String bucket = s3.newBucket();
        BucketView view = BucketView.of(s3, bucket, "town-1");
        Product p = Product.of(t.root(), s3, bucket, "town-1");
        p.sync("--immediate").assertOk();
        p.sync("--immediate").assertOk();
        Manifest before = view.manifest(view.latest().orElseThrow().timestamp());
        // One dolt row, one commit in a crew clone, one settings edit.
        TestTools.dolt(t.doltDb("hq"), "sql", "-q", "insert into issues values ('hq-9001', 'small change', 'open', 1)");
        TestTools.dolt(t.doltDb("hq"), "commit", "-Am", "small change");
        Path crew = t.root().resolve("alpha/crew/max");
        Files.writeString(crew.resolve("small.txt"), "one more line\n");
        TestTools.git(crew, "add", "small.txt");
        TestTools.git(crew, "commit", "-qm", "small change");
        Files.writeString(t.root().resolve("settings/config.json"), "{\"changed\": true}\n");
        TestTools.ProcResult r = p.sync("--immediate").assertOk();
        Manifest after = view.manifest(view.latest().orElseThrow().timestamp());
        Set<String> old = before.files().stream().map(f -> view.keys().object(f)).collect(Collectors.toSet());
        List<FileEntry> added = after.files().stream().filter(f -> !old.contains(view.keys().object(f))).collect(Collectors.toList());
        // The file index is one piece in a town this small (a piece holds about 4,096 paths): it is new as a whole.
        long addedBytes = added.stream().filter(f -> !after.fileIndex().contains(f.path())).mapToLong(FileEntry::size).sum();
        assertTrue(addedBytes < after.totalBytes() / 10, "a small change adds a small part: " + added);
        assertEquals(1, added.stream().filter(f -> f.path().startsWith(PackWriter.DIR)).count(), "one new pack: " + added);
        assertTrue(added.stream().anyMatch(f -> f.path().startsWith("dolt/hq.backup/")), "the new dolt table file: " + added);
        assertTrue(added.stream().noneMatch(f -> f.path().startsWith("dolt/alpha.backup/")), "the unchanged database adds nothing: " + added);
        RepoFacts crewRepo = after.repo("alpha/crew/max/.git").orElseThrow();
        assertEquals(2, crewRepo.chain().size(), "the first pack and an increment");
        assertFalse(crewRepo.chain().get(1).prerequisites().isEmpty(), "the increment names what it builds on");
        assertEquals(before.repo("alpha/crew/max/.git").orElseThrow().chain().get(0), crewRepo.chain().get(0));
        assertTrue(r.stderr().matches("(?s).*files: [0-9]+ paths, [0-9] read again.*"), "only the changed paths are read again:\n" + r.stderr());
        TestTools.deleteRecursively(own);
    }

    @Test
    void packsMostlyDeadOrTooManySmallOnesAreMergedSoTheirSpaceComesBack() throws Exception {
        Path own = TestTools.tempDir("merge-packs-");
        TestTown t = TownBuilder.create().rigs("alpha").build(own);
        String bucket = s3.newBucket();
        BucketView view = BucketView.of(s3, bucket, "town-1");
        Product p = Product.of(t.root(), s3, bucket, "town-1");
        // Three files of 900 KiB that do not compress share one pack; two of them go: the pack is two thirds dead.
        Random random = new Random(42);
        for (String name : List.of("a", "b", "c")) {
            byte[] data = new byte[900 << 10];
            random.nextBytes(data);
            Files.write(t.root().resolve("settings/" + name + ".bin"), data);
        }
        p.sync("--immediate").assertOk();
        Set<String> firstPacks = packs(view);
        Files.delete(t.root().resolve("settings/a.bin"));
        Files.delete(t.root().resolve("settings/b.bin"));
        p.sync("--immediate").assertOk();   // counts what is left alive of each pack
        TestTools.ProcResult merged = p.sync("--immediate").assertOk();
        assertTrue(merged.stderr().contains("packs merged"), merged.stderr());
        Set<String> kept = new HashSet<>(packs(view));
        kept.retainAll(firstPacks);
        assertTrue(packBytes(view, kept) < (1 << 20), "no pack of the first snapshot holding 1.8 MiB of dead content is still used: " + kept);
        // Each small change leaves a small pack: once there are more than 16, a sync stores their contents again.
        StringBuilder logs = new StringBuilder();
        for (int i = 0; i < FilePacks.MAX_SMALL_PACKS + 1; i++) {
            Files.writeString(t.root().resolve("settings/small-" + i + ".txt"), "change " + i + "\n");
            logs.append(p.sync("--immediate").assertOk().stderr());
        }
        logs.append(p.sync("--immediate").assertOk().stderr());
        assertTrue(logs.toString().contains("small or mostly dead packs merged"), logs.toString());
        Manifest m = view.manifest(view.latest().orElseThrow().timestamp());
        long small = m.filesUnder("files/packs").stream().filter(f -> f.size() < FilePacks.SMALL_PACK).count();
        assertTrue(small <= FilePacks.MAX_SMALL_PACKS, small + " small packs left: " + m.filesUnder("files/packs"));
        Path volume = TestTools.tempDir("merge-packs-restored-");
        Product.of(volume, s3, bucket, "town-1").onNewMachine().restore().assertOk();
        for (int i = 0; i < FilePacks.MAX_SMALL_PACKS + 1; i++)
            assertEquals("change " + i + "\n", Files.readString(volume.resolve("settings/small-" + i + ".txt")));
        assertArrayEquals(Files.readAllBytes(t.root().resolve("settings/c.bin")), Files.readAllBytes(volume.resolve("settings/c.bin")));
        TestTools.deleteRecursively(own);
        TestTools.deleteRecursively(volume);
    }

    private static Set<String> packs(BucketView view) {
        return view.manifest(view.latest().orElseThrow().timestamp()).filesUnder("files/packs").stream().map(FileEntry::path)
                .collect(Collectors.toSet());
    }

    private static long packBytes(BucketView view, Set<String> packs) {
        return view.manifest(view.latest().orElseThrow().timestamp()).files().stream().filter(f -> packs.contains(f.path()))
                .mapToLong(FileEntry::size).sum();
    }

    @Test
    void twoMachinesOnOneTownAreRefusedAndTakingItOverIsExplicit() throws Exception {
        Path own = TestTools.tempDir("two-writers-");
        TestTown a = TownBuilder.create().rigs("alpha").build(own.resolve("a"));
        String bucket = s3.newBucket();
        BucketView view = BucketView.of(s3, bucket, "town-1");
        Product first = Product.of(a.root(), s3, bucket, "town-1");
        first.sync("--immediate").assertOk();
        String firstSnapshot = view.latest().orElseThrow().timestamp();
        assertNotNull(view.latest().orElseThrow().writer(), "latest.json names its writer");
        // A second machine with a town of its own under the same TOWN_ID (a copy, as a mis-provisioned one would be).
        Path b = own.resolve("b");
        TestTools.run(List.of("cp", "-a", a.root().toString(), b.toString()), own, Map.of(), null, Duration.ofMinutes(1));
        Files.writeString(b.resolve("settings/second-machine.txt"), "b\n");
        Product second = Product.of(b, s3, bucket, "town-1");
        try (HeartbeatReceiver api = new HeartbeatReceiver()) {
            TestTools.ProcResult refused = second.with("GASTOWN_API_URL", api.baseUrl()).sync("--immediate");
            assertEquals(1, refused.exitCode(), refused.stderr());
            assertTrue(refused.stderr().contains("written by another machine"), refused.stderr());
            var body = R2Common.JSON.readTree(api.awaitRequests(1, Duration.ofSeconds(10)).get(0).body());
            assertEquals("failed", body.path("status").asText());
        }
        assertEquals(firstSnapshot, view.latest().orElseThrow().timestamp(), "nothing of the second machine was published");
        // An operator moves the town: the second machine takes it over, and the first is refused from then on.
        second.sync("--immediate", "--take-over").assertOk();
        String taken = view.latest().orElseThrow().timestamp();
        assertTrue(view.packedPaths(taken, TestTools.tempDir("two-writers-index-")).contains("settings/second-machine.txt"));
        TestTools.ProcResult late = first.sync("--immediate");
        assertEquals(1, late.exitCode(), late.stderr());
        assertEquals(taken, view.latest().orElseThrow().timestamp(), "the first machine published nothing over it");
        second.sync("--immediate").assertOk();
        TestTools.deleteRecursively(own);
    }

    @Test
    void aNewContainerAfterAFailedRestoreDoesNotPublishUntilAnOperatorSaysSo() throws Exception {
        Path own = TestTools.tempDir("failed-restore-");
        TestTown t = TownBuilder.create().rigs("alpha").build(own.resolve("town"));
        String bucket = s3.newBucket();
        BucketView view = BucketView.of(s3, bucket, "town-1");
        Product.of(t.root(), s3, bucket, "town-1").sync("--immediate").assertOk();
        String good = view.latest().orElseThrow().timestamp();
        // The restore on a new machine fails (an object of the only snapshot is gone)...
        String pack = view.manifest(good).filesUnder("files/packs").get(0).path();
        byte[] saved = view.get(view.objectKey(good, pack));
        view.delete(view.objectKey(good, pack));
        Path volume = Files.createDirectories(own.resolve("volume"));
        TestTools.ProcResult failed = Product.of(volume, s3, bucket, "town-1").onNewMachine().restore();
        assertEquals(1, failed.exitCode(), failed.stderr());
        view.put(view.objectKey(good, pack), saved);   // the object is back: the bucket holds a good snapshot again
        // ... `gt up` makes a fresh town on the volume, and the machine is replaced (a new state dir).
        TestTown fresh = TownBuilder.create().rigs("alpha").build(own.resolve("fresh"));
        TestTools.run(List.of("cp", "-a", fresh.root() + "/.", volume.toString()), own, Map.of(), null, Duration.ofMinutes(1));
        Product next = Product.of(volume, s3, bucket, "town-1").onNewMachine();
        TestTools.ProcResult skipped = next.restore().assertOk();
        assertTrue(skipped.stderr().contains("backups stay off"), skipped.stderr());
        TestTools.ProcResult refused = next.sync("--immediate");
        assertEquals(1, refused.exitCode(), refused.stderr());
        assertTrue(refused.stderr().contains("--forget-failure"), refused.stderr());
        assertEquals(good, view.latest().orElseThrow().timestamp(), "the fresh town was not published over the good snapshot");
        // Even on a volume that lost its marker, the bucket's stops it.
        Files.delete(volume.resolve(RestoreState.FAILED_ON_VOLUME));
        assertEquals(1, Product.of(volume, s3, bucket, "town-1").sync("--immediate").exitCode());
        assertEquals(good, view.latest().orElseThrow().timestamp());
        next.restore("--forget-failure").assertOk();
        next.sync("--immediate", "--take-over").assertOk();
        assertNotEquals(good, view.latest().orElseThrow().timestamp());
        TestTools.deleteRecursively(own);
    }

    @Test
    void retentionKeepsTheNewestThreeAndTheOneLatestNames() {
        String bucket = s3.newBucket();
        BucketView view = BucketView.of(s3, bucket, "town-1");
        Product p = product(bucket);
        List<String> made = new ArrayList<>();
        for (int i = 0; i < 5; i++) {
            p.sync("--immediate").assertOk();
            made.add(view.latest().orElseThrow().timestamp());
        }
        assertEquals(made.subList(2, 5), view.prefixes(), "the three newest remain, nothing else");
        assertEquals(made.get(4), view.latest().orElseThrow().timestamp());
    }

    @Test
    void anOlderFormatIsRefusedByNameAndKeptUntilThreeSnapshotsOfThisFormatExist() throws Exception {
        String bucket = s3.newBucket();
        BucketView view = BucketView.of(s3, bucket, "town-1");
        Product p = product(bucket);
        p.sync("--immediate").assertOk();
        // Make it what gastown-r2 0.1 left: the same objects under an older prefix, its manifest in format 1.
        String made = view.latest().orElseThrow().timestamp();
        String old = "20200101T000000Z";
        for (String key : view.keys(view.keys().snapshot(made))) {
            String rel = key.substring(view.keys().snapshot(made).length());
            byte[] data = view.get(key);
            if (rel.equals(Keys.MANIFEST)) {
                var manifest = (com.fasterxml.jackson.databind.node.ObjectNode) R2Common.JSON.readTree(data);
                manifest.put("formatVersion", 1).put("timestamp", old);
                data = R2Common.JSON.writeValueAsBytes(manifest);
            }
            view.put(view.keys().object(old, rel), data);
            view.delete(key);
        }
        view.put(view.keys().latest(), R2Common.toJson(new Pointer(old, Sha256.of(view.get(view.keys().object(old, Keys.MANIFEST))))));

        // Restore refuses it by its format, never misreads it, and leaves the volume as it was.
        Path volume = Files.createDirectories(dir.resolve("format-1-volume"));
        TestTools.ProcResult r = Product.of(volume, s3, bucket, "town-1").restore();
        assertEquals(1, r.exitCode(), r.stderr());
        assertTrue(r.stderr().contains("manifest format 1 is not a format this tool reads (3 to " + Manifest.FORMAT + ")"), r.stderr());
        try (var left = Files.list(volume)) {
            // Untouched but for the failed restore's marker, which keeps a town made there later from being published.
            assertEquals(List.of(volume.resolve(RestoreState.FAILED_ON_VOLUME)), left.collect(Collectors.toList()), "the volume is untouched");
        }
        // That failure is recorded in the bucket too; the operator, whose town is the one syncing, forgets it.
        assertEquals(1, p.sync("--immediate").exitCode(), "no sync publishes over a failed restore unasked");
        Product.of(volume, s3, bucket, "town-1").restore("--forget-failure").assertOk();
        // Syncs keep it until three snapshots of this format exist: until then it may be the only copy.
        for (int i = 1; i <= 3; i++) {
            p.sync("--immediate").assertOk();
            assertEquals(i < 3, view.prefixes().contains(old), "after " + i + " syncs: " + view.prefixes());
        }
        assertEquals(3, view.completeSnapshots().size(), view.prefixes().toString());
    }

    @Test
    void concurrentSyncsSerializeOnTheLockAndBothPublish() throws Exception {
        String bucket = s3.newBucket();
        BucketView view = BucketView.of(s3, bucket, "town-1");
        Product p = product(bucket);
        try (Product.Started first = p.start("R2Sync", "--immediate");
             Product.Started second = p.start("R2Sync", "--immediate")) {
            assertEquals(0, first.process().waitFor(), first.output());
            assertEquals(0, second.process().waitFor(), second.output());
            String waited = first.output() + second.output();
            assertTrue(waited.contains("another sync holds"), "one of them waited for the other:\n" + waited);
            List<String> snapshots = view.completeSnapshots();
            assertEquals(2, snapshots.size(), "neither sync was skipped");
            assertEquals(snapshots.get(1), view.latest().orElseThrow().timestamp());
            // Serialized: one finished ("ok in") before the other started ("started for town").
            Instant firstDone = logTime(first.output(), ": ok in ");
            Instant secondDone = logTime(second.output(), ": ok in ");
            Instant laterStart = firstDone.isBefore(secondDone) ? logTime(second.output(), "started for town")
                    : logTime(first.output(), "started for town");
            assertFalse(laterStart.isBefore(firstDone.isBefore(secondDone) ? firstDone : secondDone), "runs overlapped");
        }
    }

    private static Instant logTime(String log, String marker) {
        String line = log.lines().filter(l -> l.contains(marker)).findFirst().orElseThrow(() -> new AssertionError("no '" + marker + "' in\n" + log));
        return Instant.parse(line.substring(0, line.indexOf(' ')));
    }

    @Test
    void theHeartbeatArrivesWithTheRightBodyAndToken() throws Exception {
        String bucket = s3.newBucket();
        try (HeartbeatReceiver api = new HeartbeatReceiver()) {
            product(bucket).with("GASTOWN_API_URL", api.baseUrl()).with("GASTOWN_API_TOKEN", "tok-secret-123")
                    .sync("--immediate").assertOk();
            api.awaitRequests(1, Duration.ofSeconds(10));
            HeartbeatReceiver.Request r = api.requests().get(0);
            assertEquals("POST", r.method());
            assertEquals("/api/gastown/heartbeat", r.path());
            assertEquals("Bearer tok-secret-123", r.header("Authorization"));
            var body = R2Common.JSON.readTree(r.body());
            assertEquals("town-1", body.path("townId").asText());
            assertEquals("sync", body.path("event").asText());
            assertEquals("ok", body.path("status").asText());
            assertEquals(BucketView.of(s3, bucket, "town-1").latest().orElseThrow().timestamp(), body.path("snapshot").asText());
            assertTrue(body.path("bytesUploaded").asLong() > 0);
            assertTrue(body.path("filesUploaded").asInt() >= 12);
            assertTrue(body.path("durationMs").asLong() > 0);
            assertEquals("done", body.path("pruning").asText(), "a credential that can delete: the sync prunes itself");
        }
    }

    @Test
    void aFailedHeartbeatIsLoggedAndDoesNotUndoTheSnapshot() {
        String bucket = s3.newBucket();
        try (HeartbeatReceiver api = new HeartbeatReceiver()) {
            api.respondWith(500);
            TestTools.ProcResult r = product(bucket).with("GASTOWN_API_URL", api.baseUrl()).sync("--immediate");
            assertEquals(0, r.exitCode(), r.stderr());
            assertTrue(r.stderr().contains("heartbeat") && r.stderr().contains("500"), r.stderr());
            assertTrue(BucketView.of(s3, bucket, "town-1").latest().isPresent());
        }
    }

    @Test
    void theDaemonSyncsEveryIntervalAndSurvivesAFailedCycle() throws Exception {
        String bucket = s3.newBucket();
        BucketView view = BucketView.of(s3, bucket, "town-1");
        Product p = product(bucket);
        try (HeartbeatReceiver api = new HeartbeatReceiver();
             Product.Started daemon = p.with("GASTOWN_API_URL", api.baseUrl()).start("R2Sync", "--interval", "1s")) {
            assertTrue(TestTools.await(() -> view.completeSnapshots().size() >= 2, Duration.ofSeconds(60), 200), daemon.output());
            // A real cause of failure: the marker a failed restore leaves makes every cycle refuse.
            Path marker = p.stateDir().resolve("restore-failed.json");
            Files.writeString(marker, "{\"error\":\"test\"}");
            assertTrue(TestTools.await(() -> api.requests().stream().anyMatch(r -> r.body().contains("\"failed\"")),
                    Duration.ofSeconds(60), 200), daemon.output());
            Files.delete(marker);
            String failedAt = view.latest().orElseThrow().timestamp();
            assertTrue(TestTools.await(() -> view.latest().orElseThrow().timestamp().compareTo(failedAt) > 0,
                    Duration.ofSeconds(60), 200), "the daemon recovered:\n" + daemon.output());
            assertTrue(daemon.process().isAlive());
            daemon.process().destroy();   // SIGTERM
            assertTrue(daemon.process().waitFor(30, java.util.concurrent.TimeUnit.SECONDS), daemon.output());
            assertTrue(daemon.output().contains("daemon: stopped"), daemon.output());
            assertTrue(daemon.output().contains("cycle failed"), daemon.output());
        }
        String ts = view.latest().orElseThrow().timestamp();
        assertTrue(view.completeSnapshots().contains(ts), "latest.json names a complete snapshot after SIGTERM");
    }

    @Test
    void theDaemonVerifiesTheBackupOnItsOwnScheduleAndSaysLoudlyWhenItIsDamaged() throws Exception {
        Path own = TestTools.tempDir("verify-");
        TestTown t = TownBuilder.create().rigs("alpha").build(own);
        String bucket = s3.newBucket();
        BucketView view = BucketView.of(s3, bucket, "town-1");
        Product p = Product.of(t.root(), s3, bucket, "town-1");
        try (HeartbeatReceiver api = new HeartbeatReceiver();
             Product.Started daemon = p.with("GASTOWN_API_URL", api.baseUrl()).with("R2_VERIFY_EVERY", "2s")
                     .start("R2Sync", "--interval", "1s")) {
            assertTrue(TestTools.await(() -> verifications(api, "ok") > 0, Duration.ofSeconds(120), 200), daemon.output());
            var ok = verification(api, "ok");
            assertTrue(ok.path("objectsRead").asLong() > 0, "a share of the stored objects was read back: " + ok);
            // One byte of a stored object flipped (the first piece of the file index, which every snapshot since uses).
            String ts = view.latest().orElseThrow().timestamp();
            String key = view.objectKey(ts, view.manifest(ts).fileIndex().get(0));
            byte[] data = view.get(key);
            data[data.length / 2] ^= 1;
            view.put(key, data);
            assertTrue(TestTools.await(() -> verifications(api, "failed") > 0, Duration.ofSeconds(120), 200), daemon.output());
            assertTrue(daemon.output().contains("verify: FAILED"), daemon.output());
            TestTools.ProcResult status = p.run("R2Status");
            assertEquals(1, status.exitCode(), status.stdout());
            assertTrue(status.stdout().contains("NOT HELD") && status.stdout().contains("verification"), status.stdout());
            view.put(key, flip(data));
        }
        TestTools.deleteRecursively(own);
    }

    private static byte[] flip(byte[] data) {
        data[data.length / 2] ^= 1;
        return data;
    }

    private static long verifications(HeartbeatReceiver api, String status) {
        return api.requests().stream().filter(r -> r.body().contains("\"verify\"") && r.body().contains("\"" + status + "\"")).count();
    }

    private static com.fasterxml.jackson.databind.JsonNode verification(HeartbeatReceiver api, String status) throws Exception {
        for (var r : api.requests()) {
            var body = R2Common.JSON.readTree(r.body());
            if (body.path("event").asText().equals("verify") && body.path("status").asText().equals(status)) return body;
        }
        throw new AssertionError("no " + status + " verification");
    }

    @Test
    void anErrorInASyncIsAFailedSyncAndTheDaemonGoesOn() throws Exception {
        // A real OutOfMemoryError: a sync reads each linked worktree's commondir file whole, and one of 64 MiB (sparse,
        // git reads it up to its first NUL) does not fit a 48 MiB heap, which holds the rest of this town's sync well.
        Path own = TestTools.tempDir("sync-error-");
        TestTown t = TownBuilder.create().rigs("alpha").partial().build(own);
        Path commondir = t.rig("alpha").resolve(".repo.git/worktrees/alpha/commondir");
        long size = Files.size(commondir);
        String bucket = s3.newBucket();
        BucketView view = BucketView.of(s3, bucket, "town-1");
        try (HeartbeatReceiver api = new HeartbeatReceiver()) {
            Product p = Product.of(t.root(), s3, bucket, "town-1").with("GASTOWN_API_URL", api.baseUrl())
                    .with("JAVA_TOOL_OPTIONS", "-Xmx48m");
            p.sync("--immediate").assertOk();
            String published = view.latest().orElseThrow().timestamp();
            resize(commondir, 64L << 20);

            TestTools.ProcResult r = p.sync("--immediate");
            assertEquals(1, r.exitCode(), r.stderr());
            assertTrue(r.stderr().contains("OutOfMemoryError"), r.stderr());
            var lastSync = R2Common.JSON.readTree(Files.readString(p.stateDir().resolve(LastSync.FILE)));
            assertEquals("failed", lastSync.path("status").asText(), lastSync.toString());
            assertTrue(lastSync.path("error").asText().contains("OutOfMemoryError"), lastSync.toString());
            assertTrue(TestTools.await(() -> failedHeartbeats(api) == 1, Duration.ofSeconds(10), 100), api.requests().toString());
            assertEquals(published, view.latest().orElseThrow().timestamp(), "nothing published");

            // The daemon: a cycle fails the same way, and once the file is back to its size the next one publishes.
            try (Product.Started daemon = p.start("R2Sync", "--interval", "1s")) {
                assertTrue(TestTools.await(() -> failedHeartbeats(api) >= 2, Duration.ofSeconds(60), 200), daemon.output());
                resize(commondir, size);
                assertTrue(TestTools.await(() -> view.latest().orElseThrow().timestamp().compareTo(published) > 0,
                        Duration.ofSeconds(60), 200), "the daemon went on:\n" + daemon.output());
                assertTrue(daemon.process().isAlive(), daemon.output());
                assertTrue(daemon.output().contains("cycle failed") && daemon.output().contains("OutOfMemoryError"), daemon.output());
            }
        }
        TestTools.deleteRecursively(own);
    }

    /**
     * A temporary credential (the sandbox's, without delete) is replaced in its files before it expires: the daemon reads
     * them again (at most once a minute) and goes on without a restart. Here the secret file first holds a stale secret.
     */
    @Test
    void theDaemonReadsACredentialReplacedInItsFilesWithoutARestart() throws Exception {
        String bucket = s3.newBucket();
        BucketView view = BucketView.of(s3, bucket, "town-1");
        Path secretFile = TestTools.tempDir("credential-").resolve("secret");
        Product base = product(bucket);
        String secret = base.env().get("R2_SECRET_ACCESS_KEY");
        Files.writeString(secretFile, "a-stale-secret-of-yesterday\n");
        Product p = base.with("R2_SECRET_ACCESS_KEY", null).with("R2_SECRET_ACCESS_KEY_FILE", secretFile.toString());
        try (Product.Started daemon = p.start("R2Sync", "--interval", "2s")) {
            assertTrue(TestTools.await(() -> daemon.output().contains("cycle failed"), Duration.ofSeconds(60), 200), daemon.output());
            assertTrue(view.latest().isEmpty(), "nothing published with a stale secret");
            Files.writeString(secretFile, secret + "\n");   // the cloud replaced the credential
            assertTrue(TestTools.await(() -> view.latest().isPresent(), Duration.ofSeconds(150), 500),
                    "the daemon published with the new secret, without a restart:\n" + daemon.output());
            assertTrue(daemon.process().isAlive(), daemon.output());
            assertFalse(daemon.output().contains(secret) || daemon.output().contains("a-stale-secret"), "no secret printed");
        }
    }

    private static long failedHeartbeats(HeartbeatReceiver api) {
        return api.requests().stream().filter(r -> r.body().contains("\"failed\"")).count();
    }

    /** Grows a file (with a hole: no disk used) or cuts it back to its old size. */
    private static void resize(Path file, long size) throws java.io.IOException {
        try (java.io.RandomAccessFile f = new java.io.RandomAccessFile(file.toFile(), "rw")) {
            f.setLength(size);
        }
    }

    @Test
    void aMissingOrInvalidSettingGivesExit2NamesItAndWritesNothing() {
        String bucket = s3.newBucket();
        BucketView view = BucketView.of(s3, bucket, "town-1");
        Product p = product(bucket);
        Map<String, String> cases = new LinkedHashMap<>();
        cases.put("R2_ENDPOINT", null);
        cases.put("R2_ACCESS_KEY_ID", null);
        cases.put("R2_SECRET_ACCESS_KEY", null);
        cases.put("R2_BUCKET", null);
        cases.put("TOWN_ID", null);
        cases.put("GT_TOWN_ROOT", dir.resolve("no-such-town").toString());
        cases.put("GASTOWN_API_URL", "ftp://nope");
        for (Map.Entry<String, String> c : cases.entrySet()) {
            TestTools.ProcResult r = p.with(c.getKey(), c.getValue()).sync("--immediate");
            assertEquals(2, r.exitCode(), c.getKey() + ":\n" + r.stderr());
            String lines = r.stderr().strip();
            assertTrue(lines.contains(c.getKey()), "the message names " + c.getKey() + ": " + lines);
            assertEquals(1, lines.lines().count(), "one clear line: " + lines);
            assertFalse(r.stderr().contains(p.env().get("R2_SECRET_ACCESS_KEY")));
        }
        assertTrue(view.keys("").isEmpty(), "nothing written to the bucket");
        assertFalse(Files.exists(p.scratch().resolve("r2-sync.lock")), "no lock file");
        assertFalse(Files.exists(p.scratch().resolve("work")), "no work dir");
    }

    @Test
    void aRootThatIsNotATownIsRefusedBeforeAnythingIsReadOrWritten() throws Exception {
        // A mistyped GT_TOWN_ROOT: a home directory full of files, or /. Neither may ever be uploaded.
        Path home = Files.createDirectories(dir.resolve("not-a-town"));
        Files.writeString(home.resolve(".bashrc"), "export SECRET=1\n");
        Files.createDirectories(home.resolve("mayor"));   // close, but no mayor/town.json
        String bucket = s3.newBucket();
        BucketView view = BucketView.of(s3, bucket, "town-1");
        for (String root : List.of(home.toString(), "/")) {
            Product p = Product.of(Path.of(root), s3, bucket, "town-1");
            TestTools.ProcResult r = p.sync("--immediate");
            assertEquals(2, r.exitCode(), r.stderr());
            String lines = r.stderr().strip();
            assertEquals(1, lines.lines().count(), "one clear line: " + lines);
            assertTrue(lines.contains("is not a Gas Town") && lines.contains("mayor/town.json") && lines.contains("GT_TOWN_ROOT"), lines);
            assertFalse(Files.exists(p.scratch().resolve("r2-sync.lock")), "no lock file");
            assertFalse(Files.exists(p.scratch().resolve("work")), "no work dir");
            assertFalse(Files.exists(p.stateDir()), "no state written");
        }
        assertTrue(view.keys("").isEmpty(), "nothing written to the bucket");
    }

    @Test
    void theDaemonWaitsForTheTownSayingSoOnceAndSyncsWhenItAppears() throws Exception {
        Path root = Files.createDirectories(dir.resolve("first-boot").resolve("town"));
        String bucket = s3.newBucket();
        BucketView view = BucketView.of(s3, bucket, "town-1");
        try (Product.Started daemon = Product.of(root, s3, bucket, "town-1").start("R2Sync", "--interval", "1s")) {
            assertTrue(TestTools.await(() -> daemon.output().contains("is not a Gas Town"), Duration.ofSeconds(60), 100), daemon.output());
            Thread.sleep(3_000);   // three more cycles
            assertEquals(1, daemon.output().lines().filter(l -> l.contains("is not a Gas Town")).count(), "said once:\n" + daemon.output());
            assertTrue(view.keys("").isEmpty(), "nothing uploaded while it is no town");
            // gt install makes the town while the daemon runs
            Files.createDirectories(root.resolve("mayor"));
            Files.writeString(root.resolve("mayor/town.json"), "{\"type\":\"town\",\"name\":\"first-boot\"}\n");
            assertTrue(TestTools.await(() -> !view.completeSnapshots().isEmpty(), Duration.ofSeconds(60), 200), daemon.output());
            assertTrue(daemon.output().contains("is a town now"), daemon.output());
        }
    }

    @Test
    void namesFromTheEnvironmentCannotForgeALogLine() {
        Product p = product(s3.newBucket()).with("TOWN_ID", "a\nINFO forged line");
        TestTools.ProcResult r = p.sync("--immediate");
        assertEquals(2, r.exitCode(), r.stderr());
        assertEquals(1, r.stderr().strip().lines().count(), r.stderr());
        assertTrue(r.stderr().contains("a\\nINFO forged line"), "printed escaped: " + r.stderr());
        assertTrue(r.stderr().lines().noneMatch(l -> l.startsWith("INFO forged")), r.stderr());
    }

    @Test
    void theSigningRegionIsASetting() {
        // R2 signs for "auto"; versitygw and AWS refuse it and want their own. S3Proxy accepts either.
        String bucket = s3.newBucket();
        product(bucket).with("R2_REGION", "us-east-1").sync("--immediate").assertOk();
        TestTools.ProcResult bad = product(bucket).with("R2_REGION", "Not A Region").sync("--immediate");
        assertEquals(2, bad.exitCode(), bad.stderr());
        assertTrue(bad.stderr().contains("R2_REGION"), bad.stderr());
    }

    @Test
    void helpExplainsEveryOptionWithItsEnvVarAndNoSecret() {
        Product p = product(s3.newBucket());
        TestTools.ProcResult r = p.sync("--help").assertOk();
        for (String env : List.of("R2_ENDPOINT", "R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY", "R2_BUCKET", "TOWN_ID",
                "GT_TOWN_ROOT", "GASTOWN_API_URL", "GASTOWN_API_TOKEN", "R2_REGION", "--immediate", "--interval", "--take-over",
                "Exit codes"))
            assertTrue(r.stdout().contains(env), env + " in --help");
        assertFalse(r.stdout().contains(p.env().get("R2_SECRET_ACCESS_KEY")), "secret printed by --help");
    }
}

import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestInstance;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.nio.file.attribute.FileTime;
import java.nio.file.attribute.PosixFilePermissions;
import java.time.Instant;
import java.util.ArrayList;
import java.util.List;
import java.util.SortedMap;
import java.util.TreeMap;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.*;

/**
 * A town made by the real gt 1.0.1, bd 1.0.0 and dolt 1.86.4 (the fixture ../shared/fixtures/real-town):
 * unpacked, given a few things nobody listed, synced while its dolt sql-server runs, destroyed, restored on
 * a new machine (no HOME, no git or dolt identity), and proved to be the same town: every path outside the
 * skip list, every repository and work tree, every database; also against the fixture's own views/, and
 * with `git fetch origin` and the partial clone's lazy blob fetch working again.
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class RealTownTest {
    /** Where make.sh built the fixture; its views/ name paths under it. */
    private static final String FIXTURE_PREFIX = "/tmp/gt-fixture";
    private static final Instant OLD_MTIME = Instant.parse("2001-09-09T01:46:40Z");
    private static final String FIFO = "mayor/agent.fifo";
    private static final String CHROME = "demo/polecats/chrome/demo";
    private static final String LAZY_CONTENT = "read me and I come from origin\n";

    private final Path fixture = Path.of(System.getenv("GASTOWN_R2_REPO"), "..", "shared", "fixtures", "real-town").normalize();
    private Path dest;
    private Path town;
    private int port;
    private String lazyBlob;
    private List<String> databases;

    private TownView.Tree treeBeforeSync;
    private TownView.Tree treeBefore;
    private SortedMap<String, String> gitBefore;
    private SortedMap<String, String> doltBefore;
    private String doltViewBefore;
    private SortedMap<String, String> workingSetsBefore;

    private TestTools.ProcResult sync;
    private TestTools.ProcResult restore;
    private TownView.Tree treeAfter;
    private SortedMap<String, String> gitAfter;
    private String fixtureGitViewAfter;
    private SortedMap<String, String> doltAfter;
    private String doltViewAfter;
    private SortedMap<String, String> workingSetsAfter;
    private List<String> missingAfterRestore;

    @BeforeAll
    void syncDestroyAndRestoreTheRealTown() throws IOException {
        assertTrue(Files.isRegularFile(fixture.resolve("unpack.sh")), "the real-town fixture is missing at " + fixture);
        dest = TestTools.tempDir("real-town-");
        port = TestTools.freePort();
        TestTools.check(List.of("bash", fixture.resolve("unpack.sh").toString(), dest.toString(), String.valueOf(port)), dest);
        town = dest.resolve("town");
        databases = databases(town);
        addWhatNobodyListed();
        lazyBlob = makeABlobOnlyOriginHas();

        Product product = Product.of(town, S3Server.shared(), S3Server.shared().newBucket(), "real-town");
        treeBeforeSync = TownView.tree(town);
        try (TestDoltServer server = TestDoltServer.start(town.resolve(".dolt-data"), port)) {
            doltViewBefore = TownView.doltView(dest, port);
            workingSetsBefore = TownView.doltWorkingSets(dest, port, databases);
            sync = product.sync("--immediate").assertOk();
        }
        treeBefore = TownView.tree(town);
        gitBefore = TownView.git(town);
        doltBefore = doltFacts(town);

        TestTools.deleteRecursively(town);
        restore = product.onNewMachine().restore();
        assertEquals(0, restore.exitCode(), "the restore on a new machine failed:\n" + restore.stderr());

        treeAfter = TownView.tree(town);
        gitAfter = TownView.git(town);
        fixtureGitViewAfter = TownView.fixtureGitView(town, FIXTURE_PREFIX);
        missingAfterRestore = missingObjects(town.resolve("tools/.repo.git"));
        doltAfter = doltFacts(town);
        try (TestDoltServer server = TestDoltServer.start(town.resolve(".dolt-data"), port)) {
            doltViewAfter = TownView.doltView(dest, port);
            workingSetsAfter = TownView.doltWorkingSets(dest, port, databases);
        }
    }

    @AfterAll
    void cleanUp() {
        if (dest != null) TestTools.deleteRecursively(dest);
    }

    /** Things no list names: they come back because the selection is by exclusion (the fifo does not). */
    private void addWhatNobodyListed() throws IOException {
        Path file = town.resolve("newthing/deep/file");
        Files.createDirectories(file.getParent());
        Files.writeString(file, "nobody listed this\n");
        Files.setPosixFilePermissions(file, PosixFilePermissions.fromString("rw-r-----"));
        Files.setPosixFilePermissions(file.getParent(), PosixFilePermissions.fromString("rwxr-x---"));
        Files.createDirectory(town.resolve("another"));
        Files.createSymbolicLink(town.resolve("mayor/dangling"), Path.of("nowhere/at/all"));
        Path old = town.resolve("newthing/old.txt");
        Files.writeString(old, "written long ago\n");
        Files.setLastModifiedTime(old, FileTime.from(OLD_MTIME));
        TestTools.check(List.of("mkfifo", town.resolve(FIFO).toString()), town);
        // A *.log git shows as untracked: an agent's work, so git's view wins over the skip list.
        Files.writeString(town.resolve("demo/crew/alice/session.log"), "alice's session notes\n");
        assertTrue(TownView.git(town.resolve("demo/crew/alice"), "status", "--porcelain").contains("?? session.log"));
    }

    /**
     * The fixture's partial clone (rig tools, `gt rig add --filter blob:none`) misses no blob: its upstream, a
     * bare repo read over file://, does not allow filters (uploadpack.allowFilter), so git ignored the filter
     * ("filtering not recognized by server") and fetched every blob. So: a new commit on a new upstream branch,
     * fetched with the clone's own filter while the upstream allows filters, leaves one blob only origin has.
     * The upstream is then set back as the fixture has it; a lazy fetch of one object needs no filter support.
     */
    private String makeABlobOnlyOriginHas() throws IOException {
        Path repo = town.resolve("tools/.repo.git");
        assertTrue(missingObjects(repo).isEmpty(), "the fixture's partial clone already misses a blob: use it");
        Path scratch = dest.resolve("scratch-tools");
        TestTools.git(dest, "clone", "-q", "file://" + dest.resolve("upstream/tools.git"), scratch.toString());
        Files.writeString(scratch.resolve("LAZY.md"), LAZY_CONTENT);
        TestTools.git(scratch, "add", "LAZY.md");
        TestTools.git(scratch, "commit", "-qm", "a file the partial clone reads on demand");
        TestTools.git(scratch, "push", "-q", "origin", "HEAD:refs/heads/probe/lazy");
        String blob = TestTools.git(scratch, "rev-parse", "HEAD:LAZY.md").strip();
        Path upstream = dest.resolve("upstream/tools.git");
        TestTools.git(upstream, "config", "uploadpack.allowFilter", "true");
        TestTools.git(repo, "fetch", "-q", "origin");
        TestTools.git(upstream, "config", "--unset", "uploadpack.allowFilter");
        assertEquals(List.of(blob), missingObjects(repo), "the new branch's blob stays on origin (filter blob:none)");
        return blob;
    }

    /** The objects a repository's refs reach but it does not have (a partial clone's, on its promisor remote). */
    private static List<String> missingObjects(Path gitDir) {
        return TownView.git(gitDir, "rev-list", "--objects", "--all", "--missing=print").lines()
                .filter(l -> l.startsWith("?")).map(l -> l.substring(1)).toList();
    }

    private static List<String> databases(Path town) throws IOException {
        try (Stream<Path> s = Files.list(town.resolve(".dolt-data"))) {
            return s.filter(p -> Files.isDirectory(p.resolve(".dolt/noms"))).map(p -> p.getFileName().toString()).sorted().toList();
        }
    }

    /** Branches, tags, head/staged/working roots, dolt_status and every row, read with the server stopped. */
    private SortedMap<String, String> doltFacts(Path town) {
        SortedMap<String, String> facts = new TreeMap<>();
        for (String db : databases) DoltFacts.capture(town.resolve(".dolt-data").resolve(db), facts);
        return facts;
    }

    // ---- the restore ----

    @Test
    void theRestoreReportsEveryWorkTreeWithItsInProgressWork() {
        assertFalse(sync.stderr().contains(" WARN ") || sync.stderr().contains(" ERROR "), "a clean sync:\n" + sync.stderr());
        String err = restore.stderr();
        assertFalse(err.contains(" WARN ") || err.contains(" ERROR "), "a clean restore:\n" + err);
        for (Path wt : TownView.gitPlaces(town).workTrees()) {
            String name = wt.equals(town) ? "(town root)" : town.relativize(wt).toString();
            assertTrue(err.contains("work tree " + name + " ("), "a line for work tree " + name + ":\n" + err);
        }
        // The polecat's in-progress work, as `git status` showed it before the sync: README.md modified,
        // notes/plan.md staged, and untracked scratch.txt plus gt's own .beads/, .claude/ and CLAUDE.md.
        String status = gitBefore.get("worktree " + CHROME + ": status");
        assertTrue(status.contains(" .M N... ") && status.contains(" README.md\n") && status.contains(" A. N... ")
                && status.contains(" notes/plan.md\n") && status.contains("\n? scratch.txt\n"), status);
        long untracked = status.lines().filter(l -> l.startsWith("? ")).count();
        assertEquals(4, untracked, status);
        String chrome = err.lines().filter(l -> l.contains("work tree " + CHROME + " ")).findFirst().orElse("no line for " + CHROME + ":\n" + err);
        assertTrue(chrome.contains("(polecat/chrome-mx5a6ec4): 1 staged, 1 modified, " + untracked + " untracked, as backed up"), chrome);
        assertFalse(Files.exists(town.resolve(".r2-restore")), "the staging dir is gone");
    }

    // ---- the file tree ----

    @Test
    void everyPathOutsideTheSkipListComesBackAsItWas() {
        assertNoDiff(TownView.diff(treeBefore.paths(), treeAfter.paths()),
                "paths (type, mode, size, sha256, mtime, link target) differ after the restore");
        assertTrue(treeAfter.paths().size() > 300, "a real town, not an empty one: " + treeAfter.paths().size() + " paths");
    }

    @Test
    void nothingTheSkipListNamesComesBack() {
        assertTrue(treeBefore.skipped().containsAll(List.of(FIFO, "daemon/dolt.log", "daemon/dolt.lock", "daemon/dolt-state.json",
                ".events.jsonl.lock", "demo/.beads/.locks", "demo/.runtime/locks", "demo/.beads/backup", "tools/.beads/backup",
                ".dolt-data/.dolt")),
                "the town held skip-list paths before: " + treeBefore.skipped());
        assertEquals(List.of(), treeAfter.skipped(), "skip-list paths after the restore");
    }

    @Test
    void pathsNobodyListedComeBackAndTheFifoDoesNot() throws IOException {
        Path file = town.resolve("newthing/deep/file");
        assertEquals("nobody listed this\n", Files.readString(file));
        assertEquals("rw-r-----", PosixFilePermissions.toString(Files.getPosixFilePermissions(file)));
        assertEquals("rwxr-x---", PosixFilePermissions.toString(Files.getPosixFilePermissions(file.getParent())));
        assertTrue(Files.isDirectory(town.resolve("another")), "the empty dir another/");
        try (Stream<Path> s = Files.list(town.resolve("another"))) {
            assertEquals(0, s.count(), "another/ is still empty");
        }
        assertEquals(Path.of("nowhere/at/all"), Files.readSymbolicLink(town.resolve("mayor/dangling")));
        assertEquals(OLD_MTIME, Files.getLastModifiedTime(town.resolve("newthing/old.txt")).toInstant());
        assertEquals("alice's session notes\n", Files.readString(town.resolve("demo/crew/alice/session.log")),
                "an untracked *.log in a work tree is the agent's work, kept");
        assertFalse(Files.exists(town.resolve(FIFO), LinkOption.NOFOLLOW_LINKS), "the fifo must not come back");
    }

    @Test
    void theSyncLeftTheTownAsItWas() {
        assertNoDiff(TownView.diff(treeBeforeSync.paths(), treeBefore.paths()),
                "the town changed between before the sync (server stopped) and after it (server stopped again)");
    }

    // ---- git ----

    @Test
    void everyRepositoryAndWorkTreeIsTheSame() {
        assertNoDiff(TownView.diff(gitBefore, gitAfter), "git facts differ after the restore");
        // What the comparison covers, so it cannot pass by seeing nothing.
        assertTrue(gitAfter.containsKey("repo demo/.repo.git: worktree list"), gitAfter.keySet().toString());
        assertTrue(gitAfter.get("repo .git: hooks").startsWith("post-checkout "), gitAfter.get("repo .git: hooks"));
        assertTrue(gitAfter.get("repo demo/.repo.git: shallow").matches("(?s)[0-9a-f]{40}\n.*"), "demo's bare repo is shallow");
        assertTrue(gitAfter.get("worktree demo/crew/alice: stash list").contains("alice: wip readme rewording"));
        assertEquals(10, gitAfter.keySet().stream().filter(k -> k.endsWith(": status")).count(),
                "10 work trees: the town root, per rig its crew, mayor/rig, refinery/rig, and 3 polecats\n" + gitAfter.keySet());
    }

    // ---- dolt ----

    @Test
    void everyDatabaseIsTheSame() {
        assertEquals(List.of("demo", "hq", "tools"), databases);
        assertNoDiff(TownView.diff(doltBefore, doltAfter), "the databases (read with the server stopped) differ");
        assertNoDiff(TownView.diff(workingSetsBefore, workingSetsAfter), "the working sets (through the server) differ");
        assertNoDiff(TownView.lineDiff(doltViewBefore, doltViewAfter), "the server's view differs");
        assertTrue(doltAfter.get("dolt:hq:rows:main:issues").lines().count() > 10, "hq's issues are rows, not an empty table");
    }

    // ---- the fixture's own views ----

    @Test
    void everyPathOfTheFixturesTreeViewIsBack() {
        List<String> problems = new ArrayList<>();
        int hashesCompared = 0;
        for (String line : TownView.read(fixture.resolve("views/tree.txt")).lines().toList()) {
            String[] f = line.split(" ", 4);   // type, mode, ./path, hash prefix | "gitfile" | "-> target"
            if (f[2].equals(".")) continue;
            String rel = f[2].substring(2);
            String after = treeAfter.paths().get(rel);
            if (after == null) {
                problems.add("missing: " + line);
                continue;
            }
            if (f[0].equals("l")) {
                if (!after.equals("l " + f[3])) problems.add("link: " + line + " | after: " + after);
                continue;
            }
            if (!(after + " ").startsWith(f[0] + " " + f[1] + " ")) problems.add("type/mode: " + line + " | after: " + after);
            if (f[0].equals("f") && !f[3].equals("gitfile")) {
                if (sha(treeBefore.paths().get(rel)).startsWith(f[3])) {
                    hashesCompared++;
                    if (!sha(after).startsWith(f[3])) problems.add("content: " + line + " | after: " + after);
                } else if (!rel.equals(".events.jsonl")) {
                    // unpack.sh rewrote it (the town's path, the dolt port); .events.jsonl grew after tree.txt was taken
                    String text = TownView.read(town.resolve(rel));
                    if (!text.contains(dest + "/") && !text.contains(String.valueOf(port)))
                        problems.add("differs from tree.txt though unpack.sh did not rewrite it: " + line);
                }
            }
        }
        assertNoDiff(String.join("\n", problems), "views/tree.txt against the restored town");
        assertTrue(hashesCompared > 150, "only " + hashesCompared + " of 175 files still hold the fixture's content");
    }

    @Test
    void theFixturesGitViewHolds() {
        // The one change: the branch this test pushed to upstream tools.git, fetched into the partial clone.
        String probe = lazyProbeRefLine();
        String actual = fixtureGitViewAfter.lines().filter(l -> !l.equals(probe)).map(l -> l + "\n").reduce("", String::concat);
        String expected = TownView.read(fixture.resolve("views/git.txt"));
        assertNoDiff(TownView.lineDiff(expected, actual), "views/git.txt (" + dest + " read as " + FIXTURE_PREFIX + ")");
        assertEquals(expected, actual);
        assertTrue(fixtureGitViewAfter.contains(probe), fixtureGitViewAfter);
    }

    @Test
    void theFixturesDoltViewHolds() {
        String expected = TownView.read(fixture.resolve("views/dolt.txt"));
        assertNoDiff(TownView.lineDiff(expected, doltViewAfter), "views/dolt.txt against the restarted server");
        assertEquals(expected, doltViewAfter);
    }

    // ---- the remotes ----

    @Test
    void gitFetchOriginWorksInEveryRig() throws IOException {
        for (String rig : List.of("demo", "tools")) {
            String pushed = pushANewCommitUpstream(rig);
            List<Path> repos = new ArrayList<>(List.of(town.resolve(rig + "/.repo.git"), town.resolve(rig + "/mayor/rig")));
            try (Stream<Path> crew = Files.list(town.resolve(rig + "/crew"))) {
                crew.filter(p -> Files.isDirectory(p.resolve(".git"))).sorted().forEach(repos::add);
            }
            for (Path repo : repos) {
                String name = town.relativize(repo).toString();
                TestTools.ProcResult r = TestTools.run(List.of("git", "fetch", "origin"), repo);
                assertEquals(0, r.exitCode(), "git fetch origin in " + name + ":\n" + r.stderr());
                assertEquals(pushed, TestTools.git(repo, "rev-parse", "refs/remotes/origin/main").strip(),
                        name + " fetched upstream's new commit");
            }
        }
    }

    @Test
    void thePartialCloneFetchesAMissingBlobFromOriginOnDemand() throws IOException {
        Path repo = town.resolve("tools/.repo.git");
        assertEquals(List.of(lazyBlob), missingAfterRestore, "right after the restore, the blob is still only on origin");
        assertEquals("true", TownView.git(repo, "config", "remote.origin.promisor").strip());
        assertEquals("blob:none", TownView.git(repo, "config", "remote.origin.partialclonefilter").strip());
        try (Stream<Path> packs = Files.list(repo.resolve("objects/pack"))) {
            assertTrue(packs.anyMatch(p -> p.toString().endsWith(".promisor")), "a .promisor pack");
        }
        assertEquals(LAZY_CONTENT, TownView.git(repo, "cat-file", "-p", lazyBlob), "the lazy fetch from origin");
        assertFalse(missingObjects(repo).contains(lazyBlob), "the blob is local now");
    }

    // ---- helpers ----

    /** Fails with the difference alone (not printed twice, as assertEquals would). */
    private static void assertNoDiff(String diff, String what) {
        if (!diff.isEmpty()) fail(what + ":\n" + diff);
    }

    /** Pushes a new commit to main of a rig's upstream (DEST/upstream/<rig>.git); returns it. */
    private String pushANewCommitUpstream(String rig) throws IOException {
        Path clone = dest.resolve("scratch-" + rig + "-" + System.nanoTime());
        TestTools.git(dest, "clone", "-q", "file://" + dest.resolve("upstream/" + rig + ".git"), clone.toString());
        Files.writeString(clone.resolve("AFTER-RESTORE.md"), "pushed after the restore\n");
        TestTools.git(clone, "add", "AFTER-RESTORE.md");
        TestTools.git(clone, "commit", "-qm", "upstream moved on while the town was restored");
        TestTools.git(clone, "push", "-q", "origin", "HEAD:refs/heads/main");
        return TestTools.git(clone, "rev-parse", "HEAD").strip();
    }

    /** The line views/git.txt style gives the branch this test added to tools' upstream. */
    private String lazyProbeRefLine() {
        String commit = TestTools.git(dest.resolve("upstream/tools.git"), "rev-parse", "refs/heads/probe/lazy").strip();
        return commit + " refs/remotes/origin/probe/lazy";
    }

    /** The sha256 of a tree entry ("f 644 size=N sha256=HEX mtime=S"). */
    private static String sha(String entry) {
        int at = entry == null ? -1 : entry.indexOf("sha256=");
        return at < 0 ? "" : entry.substring(at + 7, entry.indexOf(' ', at));
    }
}

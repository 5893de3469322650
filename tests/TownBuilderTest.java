import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestInstance;

/** Proves TownBuilder builds what gastown-town.md describes, and that TownState sees what matters. */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class TownBuilderTest {
    private Path dir;
    private TestTown town; // shared, read-only: tests that change a town build their own

    @BeforeAll
    void build() {
        dir = TestTools.tempDir("town-builder-test-");
        town = TownBuilder.create().emptyRig("gamma").build(dir.resolve("shared"));
    }

    @AfterAll
    void cleanUp() {
        TestTools.deleteRecursively(dir);
    }

    @Test
    void repoGitIsAShallowBareCloneWithOriginRefs() {
        Path repo = town.rig("alpha").resolve(".repo.git");
        assertEquals("true", git(repo, "rev-parse", "--is-bare-repository"));
        assertEquals("true", git(repo, "rev-parse", "--is-shallow-repository"));
        assertEquals("+refs/heads/*:refs/remotes/origin/*", git(repo, "config", "remote.origin.fetch"));
        assertEquals(town.gitUrl("alpha"), git(repo, "config", "remote.origin.url"));
        assertEquals(git(repo, "rev-parse", "main"), git(repo, "rev-parse", "refs/remotes/origin/main"));
        assertEquals("4", git(town.upstream("alpha"), "rev-list", "--count", "main"), "upstream has history");
        assertEquals("1", git(repo, "rev-list", "--count", "main"), "the clone is cut at depth 1");
        assertEquals("contributor", git(repo, "config", "beads.role"));
        assertEquals("al", git(repo, "config", "beads.issue-prefix"));
    }

    @Test
    void betaIsAPartialCloneThatLacksOldBlobs() {
        Path repo = town.rig("beta").resolve(".repo.git");
        assertEquals("true", git(repo, "config", "remote.origin.promisor"));
        assertEquals("blob:none", git(repo, "config", "remote.origin.partialclonefilter"));
        assertTrue(git(repo, "rev-list", "--objects", "--all", "--missing=print").lines().anyMatch(l -> l.startsWith("?")),
                "old README versions stay on the promisor remote");
    }

    @Test
    void theTownRootIsARepositoryWithGtsHookAndIgnores() throws IOException {
        Path root = town.root();
        assertEquals("maintainer", git(root, "config", "beads.role"));
        assertTrue(Files.isExecutable(root.resolve(".git/hooks/post-checkout")));
        assertEquals("1", git(root, "rev-list", "--count", "HEAD"));
        assertTrue(git(root, "status", "--porcelain").contains("M mayor/rigs.json"), "modified like gt leaves it");
        for (String skipped : town.skippedFiles())
            assertEquals("", git(root, "ls-files", "--others", "--exclude-standard", "--", skipped), skipped + " is ignored");
        assertEquals("CLAUDE.md", Files.readSymbolicLink(root.resolve("AGENTS.md")).toString());
        assertFalse(Files.exists(root.resolve("mayor/last-session")), "a dangling link");
        assertTrue(git(root.resolve("plugins/p/vendor/lib"), "log", "--oneline").contains("vendored lib"));
    }

    @Test
    void worktreesAreOnTheirBranchesWithPolecatCommitsInRepoGit() throws IOException {
        Path repo = town.rig("beta").resolve(".repo.git");
        String list = git(repo, "worktree", "list", "--porcelain");
        assertEquals(3, town.worktrees().keySet().stream().filter(p -> p.startsWith("beta/")).count());
        town.worktrees().forEach((rel, branch) -> {
            if (!rel.startsWith("beta/")) return;
            Path wt = town.root().resolve(rel);
            assertTrue(list.contains("worktree " + wt + "\n"), rel + " listed");
            assertEquals(branch, git(wt, "rev-parse", "--abbrev-ref", "HEAD"));
            if (rel.contains("/polecats/")) {
                assertTrue(branch.startsWith("polecat/"), branch);
                assertEquals("1", git(repo, "rev-list", "--count", "main.." + branch), "a commit not on main");
            }
        });
        assertEquals("main", town.worktrees().get("beta/refinery/rig"));
    }

    @Test
    void mayorAndCrewAreSeparateShallowClonesWithUnpushedWork() throws IOException {
        Path mayor = town.rig("alpha").resolve("mayor/rig");
        assertEquals("true", git(mayor, "rev-parse", "--is-shallow-repository"));
        // gt clones it with --reference-if-able .repo.git, which git declines for a shallow reference.
        assertFalse(Files.exists(mayor.resolve(".git/objects/info/alternates")));
        assertEquals("1", git(mayor, "rev-list", "--count", "origin/main..HEAD"));

        Path crew = town.rig("alpha").resolve("crew").resolve(TestTown.CREW);
        assertEquals("true", git(crew, "rev-parse", "--is-shallow-repository"));
        assertEquals("crew/" + TestTown.CREW, git(crew, "rev-parse", "--abbrev-ref", "HEAD"));
        assertEquals("1", git(crew, "rev-list", "--count", "origin/main..HEAD"));
        assertEquals("?? .beads/\n?? .gitignore\n?? mail/", git(crew, "status", "--porcelain"), "gt's files are untracked");
        assertEquals(2, git(crew, "stash", "list").lines().count(), "two stash entries");
    }

    @Test
    void aPolecatHoldsInProgressWork() {
        Path busy = town.rig("alpha").resolve("polecats/" + TestTown.POLECATS.get(0) + "/alpha");
        String status = git(busy, "status", "--porcelain");
        assertTrue(status.contains(" M src/file1.txt"), status);
        assertTrue(status.contains("A  notes/plan.md"), status);
        assertTrue(status.contains("?? wip.txt") && status.contains("?? build.log"), status);
        assertTrue(Files.isRegularFile(busy.resolve(".beads/redirect")), "gt's redirect for bd");
    }

    @Test
    void emptyRigHasABareRepoWithoutCommits() {
        Path repo = town.rig("gamma").resolve(".repo.git");
        assertEquals("true", git(repo, "rev-parse", "--is-bare-repository"));
        assertEquals("", git(repo, "for-each-ref"));
        assertFalse(Files.exists(town.rig("gamma").resolve("refinery")));
        assertTrue(Files.isRegularFile(town.rig("gamma").resolve("config.json")));
    }

    @Test
    void everyDatabaseHasHistoryABranchAndAStagedAndUnstagedWorkingSet() {
        assertEquals(List.of("hq", "alpha", "beta", "gamma"), town.databases());
        for (String db : town.databases()) {
            Path dbDir = town.doltDb(db);
            assertTrue(Files.isDirectory(dbDir.resolve(".dolt")), db);
            assertEquals("name\nfeature\nmain\n", sql(dbDir, "select name from dolt_branches order by name"));
            assertEquals("4", sql(dbDir, "select count(*) from dolt_log").lines().skip(1).findFirst().orElseThrow(),
                    db + ": init + 3 commits on main");
            assertEquals("1", sql(dbDir, "select count(*) from dolt_log('main..feature')").lines().skip(1)
                    .findFirst().orElseThrow(), db + ": feature has its own commit");
            assertEquals("table_name,staged\nissues,1\nissues,0\nlabels,0\n",
                    sql(dbDir, "select table_name, staged from dolt_status order by table_name, staged desc"));
            assertTrue(sql(dbDir, "show create table dependencies").contains("FOREIGN KEY"), db);
        }
    }

    @Test
    void filesAreWhereTheDocSaysWithTheirModes() throws IOException {
        for (String rel : town.keptFiles()) assertTrue(Files.exists(town.root().resolve(rel), java.nio.file.LinkOption.NOFOLLOW_LINKS), rel);
        for (String rel : town.skippedFiles()) assertTrue(Files.exists(town.root().resolve(rel), java.nio.file.LinkOption.NOFOLLOW_LINKS), rel);
        assertTrue(town.skippedFiles().containsAll(List.of("daemon/dolt.pid", ".runtime/locks/l.lock",
                "alpha/.runtime/locks/x.lock", "daemon/dolt-state.json", "daemon/control.fifo")));
        for (String rel : town.emptyDirs()) assertTrue(Files.isDirectory(town.root().resolve(rel)), rel);
        assertEquals("rw-------", mode("daemon/daemon.env"));
        assertEquals("rwxr-xr-x", mode("plugins/p/run.sh"));
        assertTrue(Files.readString(town.doltData().resolve("config.yaml")).contains("port: " + town.doltPort()));
        assertTrue(Files.readString(town.rig("alpha").resolve("config.json")).contains(town.gitUrl("alpha")));
        assertFalse(town.upstreamDir().startsWith(town.root()), "upstreams live outside the town");
    }

    @Test
    void townStateCoversKeptPathsAndOnlyThose() {
        TownState state = TownState.capture(town.root());
        for (String rel : town.keptFiles()) assertTrue(state.facts().containsKey("path:" + rel), rel);
        for (String rel : town.emptyDirs()) assertTrue(state.facts().get("path:" + rel).startsWith("d "), rel);
        for (String rel : town.skippedFiles()) assertFalse(state.facts().containsKey("path:" + rel), rel);
        assertTrue(state.facts().containsKey("path:alpha/polecats/furiosa/alpha/build.log"), "an untracked log is the agent's");
        assertTrue(state.facts().containsKey("path:alpha/refinery/rig/Cargo.lock"), "a tracked lock file is the project's");
        assertTrue(state.facts().get("path:alpha/.repo.git/shallow").startsWith("f "));
        assertTrue(state.facts().get("path:AGENTS.md").equals("l -> CLAUDE.md"));
        assertTrue(state.facts().get("worktrees:alpha/.repo.git").contains("branch refs/heads/polecat/nux-"));
        assertTrue(state.facts().get("status:alpha/crew/max").contains("stash@{1}: On crew/max: crew: first idea"));
        assertTrue(state.facts().get("refs:alpha/crew/max/.git").contains("refs/stash"));
        assertTrue(state.facts().get("dolt:hq:rows:STAGED:issues").contains("hq-4"));
        assertFalse(state.facts().get("dolt:hq:rows:main:issues").contains("hq-4"));
        assertTrue(state.facts().get("dolt:hq:rows:WORKING:labels").contains("unstaged-label"));
    }

    @Test
    void townStateIsStableAndSeesChanges() throws IOException {
        TestTown own = TownBuilder.create().rigs("alpha").build(dir.resolve("changes"));
        TownState before = TownState.capture(own.root());
        TownState.assertSame(before, TownState.capture(own.root()));

        Files.writeString(own.root().resolve("daemon/dolt.log"), "more log\n"); // skipped: no difference
        TownState.assertSame(before, TownState.capture(own.root()));

        Files.writeString(own.root().resolve("mayor/town.json"), "{}\n");
        TestTools.dolt(own.doltDb("alpha"), "sql", "-q", "update issues set title = 'changed' where id = 'al-1'");
        git(own.rig("alpha").resolve("crew").resolve(TestTown.CREW), "commit", "--allow-empty", "-m", "more");
        String diff = before.diff(TownState.capture(own.root()));
        assertTrue(diff.contains("path:mayor/town.json"), diff);
        assertTrue(diff.contains("dolt:alpha:rows:WORKING:issues"), diff);
        assertTrue(diff.contains("dolt:alpha:roots"), diff);
        assertTrue(diff.contains("refs:alpha/crew/max/.git"), diff);
        assertFalse(diff.contains("dolt:hq:"), diff);
    }

    @Test
    void doltServerStartsAnswersAndStops() {
        TestTown own = TownBuilder.create().rigs("alpha").build(dir.resolve("server"));
        TestDoltServer server = own.startDoltServer();
        try (server) {
            String dbs = server.query("show databases");
            for (String db : own.databases()) assertTrue(dbs.contains(db + "\n"), dbs);
            assertTrue(server.query("select count(*) from `alpha/feature`.issues").contains("4"));
        }
        assertFalse(server.isAlive());
        assertTrue(TestTools.await(() -> !accepts(own.doltPort()), Duration.ofSeconds(10), 50), "port released");
    }

    /**
     * The fact the product relies on (dolt 1.86.4): `dolt sql -q "call dolt_backup('sync-url', ...)"` (what
     * `dolt backup sync-url` runs) inside .dolt-data/<db> works while the town's sql-server runs, and the
     * backup holds every branch and the working set.
     */
    @Test
    void doltBackupSyncWorksWhileServerRuns() {
        TestTown own = TownBuilder.create().rigs("alpha").build(dir.resolve("backup"));
        Map<String, String> before = new TreeMap<>();
        DoltFacts.capture(own.doltDb("alpha"), before);
        Path backup = dir.resolve("backup/alpha-backup");
        try (TestDoltServer server = own.startDoltServer()) {
            TestTools.dolt(own.doltDb("alpha"), "sql", "-q", "call dolt_backup('sync-url', 'file://" + backup + "')");
            assertTrue(server.isAlive());
        }
        assertTrue(Files.isRegularFile(backup.resolve("manifest")));
        Path restoreDir = dir.resolve("backup/restored");
        TestTools.check(List.of(TestTools.dolt(), "backup", "restore", "file://" + backup, "alpha"),
                mkdirs(restoreDir));
        Map<String, String> after = new TreeMap<>();
        DoltFacts.capture(restoreDir.resolve("alpha"), after);
        assertEquals(before, after);
    }

    private static boolean accepts(int port) {
        try (Socket s = new Socket()) {
            s.connect(new InetSocketAddress("127.0.0.1", port), 500);
            return true;
        } catch (IOException e) {
            return false;
        }
    }

    private static Path mkdirs(Path p) {
        try {
            return Files.createDirectories(p);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    private String mode(String rel) throws IOException {
        return PosixFilePermissions.toString(Files.getPosixFilePermissions(town.root().resolve(rel)));
    }

    private static String git(Path cwd, String... args) {
        return TestTools.git(cwd, args).strip();
    }

    private static String sql(Path dbDir, String query) {
        return TestTools.dolt(dbDir, "sql", "-r", "csv", "-q", query);
    }
}

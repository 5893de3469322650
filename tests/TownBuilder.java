import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.stream.Collectors;

/**
 * Builds a realistic Gas Town on disk, in the shape the real gt made ../shared/fixtures/real-town: town
 * config, runtime and volatile files, one dolt data dir with hq + one database per rig (branches, commits,
 * staged and unstaged changes), and per rig a bare .repo.git (shallow; the partial rigs a blob:none partial
 * clone) with refinery and polecat worktrees, a separate shallow mayor clone and a crew clone with unpushed
 * commits and two stash entries. Like gt, it writes files into the work trees that no commit holds
 * (.beads/redirect, .claude/commands, CLAUDE.md, the crew .gitignore), leaves an agent's in-progress work
 * in a polecat (a modified, a staged and an untracked file), makes the town root a git repository with a
 * post-checkout hook, and leaves empty directories, symlinks (one dangling), a socket, a fifo and a nested
 * repository in a place nobody lists (plugins/p/vendor/lib).
 *
 * <pre>
 * TestTown town = TownBuilder.create().rigs("alpha", "beta").emptyRig("gamma").build(tempDir);
 * </pre>
 *
 * Real git and real dolt; no server runs when build() returns. The town goes in {@code dir/town},
 * the rigs' upstream repos in {@code dir/upstream} (outside the town, as a real remote would be).
 * Measured here: about 1 s for the default two rigs (0.65 s for one), so every test builds its own
 * town. A build-once-and-copy cache was not worth it: worktree .git files, the gitdir files under
 * .repo.git/worktrees, config.json git_url and .dolt-data/config.yaml data_dir hold absolute paths.
 */
final class TownBuilder {
    private List<String> rigs = List.of("alpha", "beta");
    private final List<String> emptyRigs = new ArrayList<>();
    /** Rigs added like `gt rig add --filter blob:none`: their .repo.git lacks old blobs (beta by default). */
    private Set<String> partialRigs = Set.of("beta");

    private TownBuilder() {}

    static TownBuilder create() {
        return new TownBuilder();
    }

    /** The rigs with a full git setup (default alpha, beta). */
    TownBuilder rigs(String... names) {
        this.rigs = List.of(names);
        return this;
    }

    /** Which of the rigs are blob:none partial clones (default beta); none() for none. */
    TownBuilder partial(String... names) {
        this.partialRigs = Set.of(names);
        return this;
    }

    /** Adds a rig whose .repo.git is `git init --bare` (no commits), for edge cases. */
    TownBuilder emptyRig(String name) {
        emptyRigs.add(name);
        return this;
    }

    TestTown build(Path dir) {
        return new Build(dir).run();
    }

    /** One build: the paths, plus what was written where, for TestTown. */
    private final class Build {
        private final Path root;
        private final Path upstreamDir;
        private final Path scratch;
        private final int port = TestTools.freePort();
        private final List<String> kept = new ArrayList<>();
        private final List<String> skipped = new ArrayList<>();
        private final List<String> emptyDirs = new ArrayList<>();
        private final Map<String, String> worktrees = new LinkedHashMap<>();
        // Branch suffix like gt's polecat/<name>-<ts>; base36 millis keeps it short.
        private final String ts = Long.toString(System.currentTimeMillis(), 36);

        Build(Path dir) {
            this.root = dir.resolve("town");
            this.upstreamDir = dir.resolve("upstream");
            this.scratch = dir.resolve("scratch");
        }

        TestTown run() {
            try {
                Files.createDirectories(root);
                Files.createDirectories(upstreamDir);
                townFiles();
                for (String rig : rigs) fullRig(rig);
                for (String rig : emptyRigs) emptyRig(rig);
                doltDatabases();
                nestedRepo();
                townRepo();
                TestTools.deleteRecursively(scratch);
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
            return new TestTown(root, upstreamDir, rigs, emptyRigs, port, worktrees, kept, skipped, emptyDirs);
        }

        // ---- town-level files ----

        private void townFiles() throws IOException {
            List<String> all = allRigs();
            keep("mayor/town.json", """
                    {"type":"town","version":2,"name":"testtown","owner":"mayor@example.com",\
                    "public_name":"Test Town","created_at":"2026-04-01T10:00:00Z"}
                    """);
            keep("mayor/rigs.json", "{\"version\":1,\"rigs\":{" + all.stream()
                    .map(r -> "\"" + r + "\":{\"git_url\":\"" + gitUrl(r) + "\",\"added_at\":\"2026-04-01T10:05:00Z\","
                            + "\"beads\":{\"repo\":\"local\",\"prefix\":\"" + prefix(r) + "\"}}")
                    .collect(Collectors.joining(",")) + "}}\n");
            keep("mayor/daemon.json", "{\"type\":\"daemon-patrol-config\",\"version\":1,"
                    + "\"env\":{\"GT_DOLT_PORT\":\"" + port + "\"}}\n");
            keep("mayor/overseer.json", "{\"name\":\"Test Overseer\",\"email\":\"overseer@example.com\"}\n");
            keep("settings/config.json", "{\"type\":\"town-settings\",\"version\":1,\"default_agent\":\"claude\"}\n");
            keep("settings/escalation.json", "{\"routes\":[{\"severity\":\"high\",\"to\":\"mayor\"}]}\n");
            keep("settings/themes/x.json", "{\"name\":\"x\",\"status_bg\":\"#123456\"}\n");
            keep("plugins/p/plugin.json", "{\"name\":\"p\",\"version\":\"1.0.0\"}\n");
            keep("plugins/p/run.sh", "#!/bin/sh\necho plugin p\n", "rwxr-xr-x");
            keep("deacon/.claude/settings.json", "{\"permissions\":{\"allow\":[\"Bash(gt:*)\"]}}\n");
            keep("CLAUDE.md", "# Gas Town\n\nYou are an agent in this town. Run `gt prime`.\n");
            symlink("AGENTS.md", "CLAUDE.md");
            symlink("mayor/last-session", "sessions/gone.json");   // dangling, as links left by a dead session are
            emptyDir("deacon/dogs/boot");
            keep(".events.jsonl", "{\"type\":\"boot\"}\n{\"type\":\"halt\"}\n");
            skip(".events.jsonl.lock", "");
            skip("daemon/dolt-state.json", "{\"running\":true,\"pid\":4242,\"port\":" + port + "}\n");
            socket("daemon/gt.sock");
            fifo("daemon/control.fifo");
            keep(".claude/settings.json", "{\"hooks\":{}}\n");
            keep(".beads/metadata.json", beadsMetadata("hq"));
            keep(".beads/config.yaml", "issue-prefix: \"hq\"\n");
            keep(".beads/issues.jsonl", "{\"id\":\"hq-1\",\"title\":\"first\",\"status\":\"open\"}\n"
                    + "{\"id\":\"hq-2\",\"title\":\"second\",\"status\":\"open\"}\n");
            keep(".beads/formulas/f.toml", "formula = \"f\"\n[[steps]]\nid = \"one\"\n");
            keep(".beads/dolt/x", "a file in a directory nobody listed\n");
            keep(".dolt-data/config.yaml", doltConfigYaml(), "rw-------"); // gt writes it 0600
            keep("daemon/daemon.env", "GT_DOLT_PORT=" + port + "\nANTHROPIC_API_KEY=sk-test-not-real\n", "rw-------");
            skip("daemon/dolt.pid", "12345\n");
            skip("daemon/dolt.log", "Starting server\n");
            skip("daemon/dolt.lock", "");
            skip("daemon/daemon.pid", "12346\n");
            keep("daemon/state.json", "{\"running\":true}\n");
            keep("daemon/scripts/run.sh", "#!/bin/sh\nexit 0\n", "rwxr-xr-x");
            skip(".runtime/pids/x.pid", "12347\n");
            skip(".runtime/heartbeats/h.json", "{\"at\":\"2026-04-01T10:00:00Z\"}\n");
            skip(".runtime/locks/l.lock", "");
            keep(".runtime/deacon/paused.json", "{\"paused\":false}\n");
            keep(".runtime/scheduler-state.json", "{\"last_run\":\"2026-04-01T10:00:00Z\"}\n");
            keep(".runtime/queue-state.json", "{\"pending\":[]}\n");
        }

        /** The listener config gt writes (doltserver.writeServerConfig), on loopback and our port. */
        private String doltConfigYaml() {
            return """
                    # Dolt SQL server configuration — managed by Gas Town (gt dolt start)
                    log_level: warning

                    listener:
                      port: %d
                      host: 127.0.0.1
                      max_connections: 1000
                      read_timeout_millis: 300000
                      write_timeout_millis: 300000

                    data_dir: "%s"

                    behavior:
                      dolt_transaction_commit: false
                      auto_gc_behavior:
                        enable: true
                        archive_level: 1
                    """.formatted(port, root.resolve(".dolt-data"));
        }

        private String beadsMetadata(String db) {
            return "{\"database\":\"dolt\",\"backend\":\"dolt\",\"dolt_mode\":\"server\",\"dolt_database\":\""
                    + db + "\",\"dolt_server_host\":\"127.0.0.1\",\"dolt_server_port\":" + port + "}\n";
        }

        // ---- rigs ----

        private void rigFiles(String rig) throws IOException {
            keep(rig + "/config.json", "{\"type\":\"rig\",\"version\":1,\"name\":\"" + rig + "\",\"git_url\":\""
                    + gitUrl(rig) + "\",\"push_url\":\"" + gitUrl(rig) + "\",\"default_branch\":\""
                    + TestTown.DEFAULT_BRANCH + "\",\"created_at\":\"2026-04-01T10:05:00Z\","
                    + "\"beads\":{\"repo\":\"local\",\"prefix\":\"" + prefix(rig) + "\"}}\n");
            keep(rig + "/settings/config.json", "{\"type\":\"rig-settings\",\"version\":1,"
                    + "\"namepool\":{\"names\":[\"furiosa\",\"nux\",\"slit\"]}}\n");
            keep(rig + "/plugins/rp/plugin.json", "{\"name\":\"rp\"}\n");
            keep(rig + "/.beads/metadata.json", beadsMetadata(rig));
            keep(rig + "/.beads/config.yaml", "issue-prefix: \"" + prefix(rig) + "\"\n");
            keep(rig + "/.gitignore", ".repo.git/\n.beads/\n.runtime/\ncrew/\nmayor/\npolecats/\nrefinery/\nsettings/\nwitness/\nplugins/\nconfig.json\n");
            keep(rig + "/.runtime/overlay/o.txt", "overlay for " + rig + "\n");
            keep(rig + "/.runtime/setup-hooks/h.sh", "#!/bin/sh\necho setup " + rig + "\n", "rwxr-xr-x");
            keep(rig + "/.runtime/namepool-state.json", "{\"in_use\":[\"furiosa\",\"nux\"]}\n");
            skip(rig + "/.runtime/locks/x.lock", "");
            Files.createDirectories(root.resolve(rig).resolve("witness"));
        }

        private void fullRig(String rig) throws IOException {
            rigFiles(rig);
            Path rigDir = root.resolve(rig);
            makeUpstream(rig, 4);

            // .repo.git: what `gt rig add` makes (gastown internal/git configureRefspec): a shallow
            // single-branch bare clone, a refspec, and a depth-1 fetch of the default branch so
            // refs/remotes/origin/main exists (polecat spawns branch off origin/<default>).
            Path repo = rigDir.resolve(".repo.git");
            String main = TestTown.DEFAULT_BRANCH;
            if (partialRigs.contains(rig)) {
                // gt rig add --filter blob:none: every commit and tree, blobs only as checkouts need them
                git(rigDir, "clone", "--quiet", "--bare", "--filter=blob:none", gitUrl(rig), repo.toString());
                git(repo, "config", "remote.origin.fetch", "+refs/heads/*:refs/remotes/origin/*");
                git(repo, "fetch", "--quiet", "origin", main + ":refs/remotes/origin/" + main);
            } else {
                git(rigDir, "clone", "--quiet", "--bare", "--single-branch", "--depth", "1", gitUrl(rig), repo.toString());
                git(repo, "config", "remote.origin.fetch", "+refs/heads/*:refs/remotes/origin/*");
                git(repo, "fetch", "--quiet", "--depth", "1", "origin", main + ":refs/remotes/origin/" + main);
            }
            git(repo, "config", "beads.issue-prefix", prefix(rig));
            git(repo, "config", "beads.role", "contributor");

            worktree(repo, rigDir.resolve("refinery/rig"), null, TestTown.DEFAULT_BRANCH);
            for (String polecat : TestTown.POLECATS) {
                Path wt = rigDir.resolve("polecats").resolve(polecat).resolve(rig);
                worktree(repo, wt, "polecat/" + polecat + "-" + ts, "origin/" + TestTown.DEFAULT_BRANCH);
                commitFile(wt, "work/" + polecat + ".txt", polecat + " was here\n", "polecat " + polecat + ": work");
            }
            for (String wt : worktrees.keySet()) if (wt.startsWith(rig + "/")) gtFiles(rigDir.getParent().resolve(wt), true);
            // An agent's in-progress work: a modified tracked file, a staged new file, untracked files (one of
            // them named like a log: git shows it, so it is the agent's, not volatile).
            Path busy = rigDir.resolve("polecats/" + TestTown.POLECATS.get(0) + "/" + rig);
            Files.writeString(busy.resolve("src/file1.txt"), "an edit in progress\n", java.nio.file.StandardOpenOption.APPEND);
            write(busy.resolve("notes/plan.md"), "# plan\n", null);
            git(busy, "add", "notes/plan.md");
            write(busy.resolve("wip.txt"), "uncommitted\n", null);
            write(busy.resolve("build.log"), "agent's build output, untracked\n", null);

            // mayor/rig: a separate shallow clone, made as gt does with --reference-if-able .repo.git.
            // git refuses a SHALLOW reference ("reference repository is shallow", only a notice with
            // -if-able), so like a real town's mayor clone it ends up without alternates.
            Path mayor = rigDir.resolve("mayor/rig");
            git(rigDir, "clone", "--quiet", "--single-branch", "--depth", "1", "--reference-if-able", repo.toString(),
                    gitUrl(rig), mayor.toString());
            commitFile(mayor, "MAYOR_NOTES.md", "mayor's unpushed note for " + rig + "\n", "mayor: notes");
            gtFiles(mayor, false);

            // crew/<name>: a separate shallow clone on its own branch, plus files only the crew dir holds.
            Path crew = rigDir.resolve("crew").resolve(TestTown.CREW);
            git(rigDir, "clone", "--quiet", "--single-branch", "--depth", "1", gitUrl(rig), crew.toString());
            git(crew, "checkout", "--quiet", "-b", "crew/" + TestTown.CREW);
            commitFile(crew, "crew.txt", "crew work on " + rig + "\n", "crew: unpushed work");
            // Two stash entries: `git stash list` reads the reflog of refs/stash, which no plain bundle holds.
            Files.writeString(crew.resolve("crew.txt"), "first idea\n");
            git(crew, "stash", "push", "--quiet", "-m", "crew: first idea");
            Files.writeString(crew.resolve("crew.txt"), "second idea\n");
            git(crew, "stash", "push", "--quiet", "-m", "crew: second idea");
            String crewRel = rig + "/crew/" + TestTown.CREW;
            gtFiles(crew, true);
            keep(crewRel + "/.gitignore", ".runtime/\n.claude/\nstate.json\nCLAUDE.md\n");
            keep(crewRel + "/state.json", "{\"name\":\"" + TestTown.CREW + "\",\"rig\":\"" + rig + "\"}\n");
            keep(crewRel + "/mail/inbox.jsonl", "{\"from\":\"mayor\",\"subject\":\"hello\"}\n");
            emptyDir(crewRel + "/mail/archive");
        }

        private void emptyRig(String rig) throws IOException {
            rigFiles(rig);
            makeUpstream(rig, 0);
            Path repo = root.resolve(rig).resolve(".repo.git");
            git(root, "init", "--quiet", "--bare", "--initial-branch", TestTown.DEFAULT_BRANCH, repo.toString());
            git(repo, "remote", "add", "origin", gitUrl(rig));
            git(repo, "config", "remote.origin.fetch", "+refs/heads/*:refs/remotes/origin/*");
        }

        /** A bare upstream with {@code commits} commits on main (several, so a depth-1 clone IS shallow). */
        private void makeUpstream(String rig, int commits) throws IOException {
            Path bare = upstreamDir.resolve(rig + ".git");
            if (commits == 0) {
                git(upstreamDir, "init", "--quiet", "--bare", "--initial-branch", TestTown.DEFAULT_BRANCH, bare.toString());
                return;
            }
            Path src = scratch.resolve(rig);
            Files.createDirectories(src);
            git(src, "init", "--quiet", "--initial-branch", TestTown.DEFAULT_BRANCH);
            for (int i = 1; i <= commits; i++) {
                write(src.resolve("README.md"), "# " + rig + ", version " + i + "\n", null);   // old versions: blobs a partial clone lacks
                if (i == 1) write(src.resolve("Cargo.lock"), "# tracked, although named like a lock file\n", null);
                git(src, "add", "README.md", "Cargo.lock");
                commitFile(src, "src/file" + i + ".txt", "content " + i + " of " + rig + "\n", rig + ": commit " + i);
            }
            git(scratch, "clone", "--quiet", "--bare", src.toString(), bare.toString());
            git(bare, "config", "uploadpack.allowFilter", "true");
            git(bare, "config", "uploadpack.allowAnySHA1InWant", "true");
        }

        private void worktree(Path repo, Path path, String newBranch, String start) {
            if (newBranch == null) {
                git(repo, "worktree", "add", "--quiet", path.toString(), start);
            } else {
                git(repo, "worktree", "add", "--quiet", "-b", newBranch, path.toString(), start);
            }
            worktrees.put(root.relativize(path).toString(), newBranch == null ? start : newBranch);
        }

        private void commitFile(Path workTree, String rel, String content, String message) throws IOException {
            write(workTree.resolve(rel), content, null);
            git(workTree, "add", rel);
            git(workTree, "commit", "--quiet", "-m", message);
        }

        /** What gt writes into a work tree and no commit holds (untracked there): bd's redirect, agent commands. */
        private void gtFiles(Path workTree, boolean redirect) throws IOException {
            String rel = root.relativize(workTree).toString();
            if (redirect) keep(rel + "/.beads/redirect", "../../.beads\n");
            keep(rel + "/.claude/commands/done.md", "# /done\nFinish the hooked work.\n");
            keep(rel + "/CLAUDE.md", "# " + rel + "\nRun `gt prime`.\n");
        }

        /** A repository in a place no layout names: its commits, branch and untracked file must come back. */
        private void nestedRepo() throws IOException {
            Path lib = root.resolve("plugins/p/vendor/lib");
            Files.createDirectories(lib);
            git(lib, "init", "--quiet", "--initial-branch", "trunk");
            commitFile(lib, "lib.sh", "echo lib\n", "vendored lib");
            keep("plugins/p/vendor/lib/local-patch.diff", "--- a/lib.sh\n+++ b/lib.sh\n");
        }

        /**
         * `gt install --git`: the town root is a repository (gt commits rig registrations to it), with gt's
         * .gitignore (runtime state, the data dir, worktrees and clones), a post-checkout hook and beads.role.
         */
        private void townRepo() throws IOException {
            keep(".gitignore", """
                    **/*.lock
                    **/*.flock
                    **/locks/
                    **/*.pid
                    .events.jsonl
                    daemon/
                    .dolt-data/
                    **/.runtime/
                    **/polecats/
                    **/crew/
                    **/mayor/rig/
                    **/refinery/rig/
                    """);
            git(root, "init", "--quiet", "--initial-branch", TestTown.DEFAULT_BRANCH);
            git(root, "config", "beads.role", "maintainer");
            git(root, "add", ".gitignore", "mayor/town.json", "mayor/rigs.json", "CLAUDE.md");
            git(root, "commit", "--quiet", "-m", "chore: register rigs");
            write(root.resolve(".git/hooks/post-checkout"), "#!/bin/sh\n# gt: keep the town root on main\nexit 0\n", "rwxr-xr-x");
            Files.writeString(root.resolve("mayor/rigs.json"), "\n", java.nio.file.StandardOpenOption.APPEND);   // modified, like gt's
        }

        private void symlink(String rel, String target) throws IOException {
            Path link = root.resolve(rel);
            Files.createDirectories(link.getParent());
            Files.createSymbolicLink(link, Path.of(target));
            kept.add(rel);
        }

        private void emptyDir(String rel) throws IOException {
            Files.createDirectories(root.resolve(rel));
            emptyDirs.add(rel);
        }

        /** A unix socket file, as a running daemon leaves one: the backup skips it. */
        private void socket(String rel) throws IOException {
            Path path = root.resolve(rel);
            Files.createDirectories(path.getParent());
            try (var ch = java.nio.channels.ServerSocketChannel.open(java.net.StandardProtocolFamily.UNIX)) {
                ch.bind(java.net.UnixDomainSocketAddress.of(path));
                skipped.add(rel);
            } catch (IOException e) {
                // a unix socket path is limited to about 108 bytes: a deep temp dir gets none
            }
        }

        private void fifo(String rel) throws IOException {
            Files.createDirectories(root.resolve(rel).getParent());
            TestTools.check(List.of("mkfifo", root.resolve(rel).toString()), root);
            skipped.add(rel);
        }

        // ---- dolt ----

        /**
         * hq + one database per rig, created like gt does with the server (CREATE DATABASE -> .dolt-data/<db>/.dolt),
         * here through one embedded `dolt sql` run in .dolt-data so it stays fast. Each database: tables with
         * foreign keys, three commits on main, branch `feature` with its own commit, and on main a staged
         * change (issues) plus unstaged ones (issues, labels).
         */
        private void doltDatabases() {
            StringBuilder sql = new StringBuilder();
            for (String db : databases()) sql.append(doltScript(db, prefix(db)));
            TestTools.check(List.of(TestTools.dolt(), "sql"), root.resolve(".dolt-data"), Map.of(), sql.toString(),
                    Duration.ofMinutes(2));
        }

        private String doltScript(String db, String p) {
            return """
                    CREATE DATABASE `%1$s`;
                    USE `%1$s`;
                    CREATE TABLE issues (id VARCHAR(64) PRIMARY KEY, title VARCHAR(255) NOT NULL,
                      status VARCHAR(32) NOT NULL, priority INT NOT NULL);
                    CREATE TABLE dependencies (issue_id VARCHAR(64) NOT NULL, depends_on_id VARCHAR(64) NOT NULL,
                      type VARCHAR(32) NOT NULL, PRIMARY KEY (issue_id, depends_on_id),
                      FOREIGN KEY (issue_id) REFERENCES issues(id), FOREIGN KEY (depends_on_id) REFERENCES issues(id));
                    CREATE TABLE labels (issue_id VARCHAR(64) NOT NULL, label VARCHAR(64) NOT NULL,
                      PRIMARY KEY (issue_id, label), FOREIGN KEY (issue_id) REFERENCES issues(id));
                    INSERT INTO issues VALUES ('%2$s-1', 'set up %1$s', 'open', 1), ('%2$s-2', 'write docs', 'open', 2);
                    CALL DOLT_COMMIT('-Am', 'bd: create schema and first issues');
                    INSERT INTO issues VALUES ('%2$s-3', 'fix the build', 'in_progress', 0);
                    INSERT INTO dependencies VALUES ('%2$s-2', '%2$s-1', 'blocks');
                    CALL DOLT_COMMIT('-am', 'bd: add %2$s-3 and a dependency');
                    INSERT INTO labels VALUES ('%2$s-3', 'urgent');
                    UPDATE issues SET status = 'closed' WHERE id = '%2$s-1';
                    CALL DOLT_COMMIT('-am', 'bd: close %2$s-1');
                    CALL DOLT_BRANCH('%3$s');
                    USE `%1$s/%3$s`;
                    INSERT INTO issues VALUES ('%2$s-10', 'feature-only issue', 'open', 3);
                    INSERT INTO dependencies VALUES ('%2$s-10', '%2$s-3', 'related');
                    CALL DOLT_COMMIT('-am', 'bd: feature work');
                    USE `%1$s`;
                    INSERT INTO issues VALUES ('%2$s-4', 'staged issue', 'open', 2);
                    CALL DOLT_ADD('issues');
                    UPDATE issues SET priority = 4 WHERE id = '%2$s-2';
                    INSERT INTO labels VALUES ('%2$s-4', 'unstaged-label');
                    """.formatted(db, p, TestTown.DOLT_BRANCH);
        }

        // ---- helpers ----

        private List<String> allRigs() {
            List<String> all = new ArrayList<>(rigs);
            all.addAll(emptyRigs);
            return all;
        }

        private List<String> databases() {
            List<String> dbs = new ArrayList<>(List.of("hq"));
            dbs.addAll(allRigs());
            return dbs;
        }

        private String gitUrl(String rig) {
            return "file://" + upstreamDir.resolve(rig + ".git");
        }

        private String prefix(String rigOrDb) {
            return rigOrDb.equals("hq") ? "hq" : rigOrDb.substring(0, Math.min(2, rigOrDb.length()));
        }

        private void keep(String rel, String content) throws IOException {
            keep(rel, content, null);
        }

        private void keep(String rel, String content, String perms) throws IOException {
            write(root.resolve(rel), content, perms);
            kept.add(rel);
        }

        private void skip(String rel, String content) throws IOException {
            write(root.resolve(rel), content, null);
            skipped.add(rel);
        }

        private void write(Path file, String content, String perms) throws IOException {
            Files.createDirectories(file.getParent());
            Files.writeString(file, content);
            if (perms != null) Files.setPosixFilePermissions(file, PosixFilePermissions.fromString(perms));
        }

        private void git(Path cwd, String... args) {
            TestTools.git(cwd, args);
        }
    }
}

import java.io.IOException;
import java.io.InputStream;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.nio.file.attribute.BasicFileAttributes;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.SortedMap;
import java.util.TreeMap;
import java.util.TreeSet;
import java.util.stream.Stream;

/**
 * What a user sees of a real town, captured as comparable facts (key -> text), for {@link RealTownTest}:
 * the file tree, every git directory and work tree, and the databases as the town's dolt sql-server serves
 * them. Also the fixture's own views (views/git.txt, views/dolt.txt) captured the way its make.sh did.
 *
 * <p>Every git command runs with GIT_OPTIONAL_LOCKS=0: looking at a town must not rewrite an index.
 */
final class TownView {
    private TownView() {}

    // ---- the file tree ----

    /**
     * Every path of a town, and what the skip list left out of it.
     *
     * @param paths   town-relative path -> "d 755", "f 640 size=N sha256=... mtime=S" or "l -> target".
     *                Left out: git directories' objects/, refs/, packed-refs (see {@link #git}), databases'
     *                .dolt directories (see the dolt views) and the skip list's paths.
     * @param skipped the paths the skip list names (pid, lock, log, fifo, ...), directories without their content
     */
    record Tree(SortedMap<String, String> paths, List<String> skipped) {}

    private static final Set<String> LOCK_DIRS = Set.of("locks", ".locks", "pids", "heartbeats");

    static Tree tree(Path root) {
        SortedMap<String, String> paths = new TreeMap<>();
        List<String> skipped = new ArrayList<>();
        try {
            walk(root, root, Files.exists(root.resolve(".git"), LinkOption.NOFOLLOW_LINKS) ? root : null, false, paths, skipped);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        return new Tree(paths, List.copyOf(skipped));
    }

    /** The product's skip list (R2Town.java SkipList), written down independently of the product. */
    static boolean inSkipList(String rel, String name, BasicFileAttributes a, Path p) {
        return a.isOther()
                || name.endsWith(".pid") || name.endsWith(".lock") || name.endsWith(".flock")
                || (a.isDirectory() && LOCK_DIRS.contains(name)) || name.equals("heartbeat.json")
                || (a.isRegularFile() && name.endsWith(".log"))
                || rel.equals("daemon/dolt-state.json")
                || (a.isDirectory() && rel.endsWith(".beads/backup"))
                || (a.isDirectory() && name.equals(".dolt") && !Files.isDirectory(p.resolve("noms")))   // .dolt-data/.dolt
                || (!rel.contains("/") && (Set.of(".r2-restore", "lost+found").contains(name) || name.startsWith(".r2-aside-")));
    }

    private static void walk(Path root, Path dir, Path workTree, boolean inGitDir, SortedMap<String, String> paths,
                             List<String> skipped) throws IOException {
        List<Path> children;
        try (Stream<Path> s = Files.list(dir)) {
            children = s.sorted().toList();
        }
        boolean gitDir = isGitDir(dir);
        for (Path p : children) {
            String rel = root.relativize(p).toString();
            String name = p.getFileName().toString();
            BasicFileAttributes a = Files.readAttributes(p, BasicFileAttributes.class, LinkOption.NOFOLLOW_LINKS);
            if (gitDir && Set.of("objects", "refs", "packed-refs").contains(name)) continue;
            if (a.isDirectory() && name.equals(".dolt") && Files.isDirectory(p.resolve("noms"))) continue;
            if (inSkipList(rel, name, a, p) && !keptByGit(workTree, inGitDir, p, a)) {
                skipped.add(rel);
                continue;
            }
            if (a.isSymbolicLink()) {
                paths.put(rel, "l -> " + Files.readSymbolicLink(p));
            } else if (a.isDirectory()) {
                paths.put(rel, "d " + mode(p));
                boolean innerGitDir = inGitDir || isGitDir(p);
                Path innerWorkTree = !innerGitDir && Files.exists(p.resolve(".git"), LinkOption.NOFOLLOW_LINKS) ? p : workTree;
                walk(root, p, innerWorkTree, innerGitDir, paths, skipped);
            } else {
                paths.put(rel, "f " + mode(p) + " size=" + a.size() + " sha256=" + sha256(p)
                        + " mtime=" + a.lastModifiedTime().toMillis() / 1000);
            }
        }
    }

    /** Inside a work tree, git's view wins over the skip list: a path git tracks or shows as untracked is kept. */
    private static boolean keptByGit(Path workTree, boolean inGitDir, Path p, BasicFileAttributes a) {
        if (workTree == null || inGitDir || a.isOther()) return false;
        var r = TestTools.run(List.of("git", "ls-files", "--cached", "--others", "--exclude-standard", "--",
                workTree.relativize(p).toString()), workTree, NO_LOCKS, null, TestTools.DEFAULT_TIMEOUT);
        return r.ok() && !r.stdout().isBlank();
    }

    static boolean isGitDir(Path dir) {
        return Files.isRegularFile(dir.resolve("HEAD"), LinkOption.NOFOLLOW_LINKS)
                && Files.isDirectory(dir.resolve("objects"), LinkOption.NOFOLLOW_LINKS)
                && Files.isDirectory(dir.resolve("refs"), LinkOption.NOFOLLOW_LINKS);
    }

    /** Permission bits in octal, as find's %m prints them ("755", "640", "777" for a symlink). */
    static String mode(Path p) throws IOException {
        return Integer.toOctalString((Integer) Files.getAttribute(p, "unix:mode", LinkOption.NOFOLLOW_LINKS) & 07777);
    }

    static String sha256(Path file) {
        try (InputStream in = Files.newInputStream(file)) {
            MessageDigest md = MessageDigest.getInstance("SHA-256");
            byte[] buf = new byte[1 << 16];
            for (int n; (n = in.read(buf)) > 0; ) md.update(buf, 0, n);
            return HexFormat.of().formatHex(md.digest());
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }

    // ---- git ----

    private static final Map<String, String> NO_LOCKS = Map.of("GIT_OPTIONAL_LOCKS", "0");

    /** Runs git in cwd (no optional locks, no fsmonitor) and returns stdout; throws on failure. */
    static String git(Path cwd, String... args) {
        List<String> cmd = new ArrayList<>(List.of("git", "-c", "core.fsmonitor=false"));
        cmd.addAll(List.of(args));
        return TestTools.check(cmd, cwd, NO_LOCKS, null, TestTools.DEFAULT_TIMEOUT).stdout();
    }

    /** Like {@link #git} but never throws: the output, or "exit N: stderr". */
    static String gitOrError(Path cwd, String... args) {
        List<String> cmd = new ArrayList<>(List.of("git", "-c", "core.fsmonitor=false"));
        cmd.addAll(List.of(args));
        var r = TestTools.run(cmd, cwd, NO_LOCKS, null, TestTools.DEFAULT_TIMEOUT);
        return r.ok() ? r.stdout() : "exit " + r.exitCode() + ": " + r.stderr().strip();
    }

    /** The git directories (with objects of their own) and the work trees (with a .git) of a town. */
    record GitPlaces(List<Path> gitDirs, List<Path> workTrees) {}

    static GitPlaces gitPlaces(Path root) {
        List<Path> gitDirs = new ArrayList<>();
        List<Path> workTrees = new ArrayList<>();
        try {
            findGit(root, gitDirs, workTrees);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        return new GitPlaces(gitDirs, workTrees);
    }

    private static void findGit(Path dir, List<Path> gitDirs, List<Path> workTrees) throws IOException {
        if (isGitDir(dir)) {
            gitDirs.add(dir);
            return;
        }
        if (Files.exists(dir.resolve(".git"), LinkOption.NOFOLLOW_LINKS)) workTrees.add(dir);
        List<Path> children;
        try (Stream<Path> s = Files.list(dir)) {
            children = s.filter(p -> Files.isDirectory(p, LinkOption.NOFOLLOW_LINKS))
                    .filter(p -> !p.getFileName().toString().equals(".dolt")).sorted().toList();
        }
        for (Path p : children) findGit(p, gitDirs, workTrees);
    }

    /**
     * Every git fact of a town, keyed "repo <git dir>: <what>" and "worktree <dir>: <what>":
     * refs (with symrefs), local config, hooks, info/, shallow, worktree list and the set of objects every
     * ref, reflog and index reaches (missing ones of a partial clone marked '?'); for each work tree its
     * HEAD, `git status --porcelain=v2`, `git stash list`.
     */
    static SortedMap<String, String> git(Path root) {
        SortedMap<String, String> facts = new TreeMap<>();
        GitPlaces places = gitPlaces(root);
        for (Path g : places.gitDirs()) {
            String key = "repo " + root.relativize(g) + ": ";
            String gd = "--git-dir=" + g;
            facts.put(key + "refs", git(g, gd, "for-each-ref", "--format=%(objectname) %(refname) %(symref)"));
            facts.put(key + "HEAD", gitOrError(g, gd, "symbolic-ref", "-q", "HEAD") + gitOrError(g, gd, "rev-parse", "-q", "--verify", "HEAD"));
            facts.put(key + "config --local", git(g, gd, "config", "--local", "-l"));
            facts.put(key + "hooks", filesIn(g.resolve("hooks"), name -> !name.endsWith(".sample")));
            facts.put(key + "info/", filesIn(g.resolve("info"), name -> true));
            facts.put(key + "shallow", Files.isRegularFile(g.resolve("shallow")) ? read(g.resolve("shallow")) : "(not shallow)");
            facts.put(key + "worktree list", git(g, gd, "worktree", "list", "--porcelain"));
            String objects = git(g, gd, "rev-list", "--objects", "--all", "--reflog", "--indexed-objects", "--missing=print");
            List<String> sorted = objects.lines().sorted().distinct().toList();
            long missing = sorted.stream().filter(l -> l.startsWith("?")).count();
            facts.put(key + "objects", sorted.size() + " reachable (" + missing + " missing, on the promisor remote), sha256 "
                    + sha256Of(String.join("\n", sorted)));
        }
        for (Path w : places.workTrees()) {
            String key = "worktree " + (w.equals(root) ? "." : root.relativize(w).toString()) + ": ";
            facts.put(key + "HEAD", gitOrError(w, "rev-parse", "--abbrev-ref", "HEAD") + gitOrError(w, "rev-parse", "HEAD"));
            facts.put(key + "status", git(w, "status", "--porcelain=v2", "--branch"));
            facts.put(key + "status --untracked-files=all", git(w, "status", "--porcelain=v2", "--untracked-files=all"));
            facts.put(key + "stash list", git(w, "stash", "list", "--format=%H %gd %gs"));
        }
        return facts;
    }

    private static String filesIn(Path dir, java.util.function.Predicate<String> include) {
        if (!Files.isDirectory(dir, LinkOption.NOFOLLOW_LINKS)) return "(no directory)";
        StringBuilder sb = new StringBuilder();
        try (Stream<Path> s = Files.list(dir)) {
            for (Path p : s.sorted().toList()) {
                String name = p.getFileName().toString();
                if (!include.test(name)) continue;
                sb.append(name).append(' ').append(mode(p));
                if (Files.isRegularFile(p, LinkOption.NOFOLLOW_LINKS)) sb.append(' ').append(sha256(p));
                sb.append('\n');
            }
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        return sb.toString();
    }

    /**
     * views/git.txt as the fixture's make.sh wrote it: its own commands, run by bash in the town, with the
     * town's parent replaced by the path the fixture was built at.
     */
    static String fixtureGitView(Path town, String fixturePrefix) {
        String script = """
                set +e
                rigs=$(for d in */; do [[ -d $d.repo.git ]] && echo "${d%/}"; done)
                { for r in $rigs; do echo "## $r/.repo.git"; git -C "$r/.repo.git" for-each-ref --format='%(objectname) %(refname)'
                    git -C "$r/.repo.git" worktree list --porcelain | grep -v '^HEAD'; git -C "$r/.repo.git" config --local -l | sort; done
                  for g in $(find . \\( -path ./.git -o -name .repo.git -o -path ./.dolt-data \\) -prune -o -name .git -print | sort) ./.git; do
                    d=${g%/.git}; echo "## $d HEAD $(git -C "$d" rev-parse --abbrev-ref HEAD 2>&1) $(git -C "$d" rev-parse HEAD 2>&1)"
                    [[ -d $g ]] && { git -C "$d" for-each-ref --format='%(objectname) %(refname)'; git -C "$d" config --local -l | sort; ls "$g/hooks" | grep -v '\\.sample$'; }
                  done; } 2>&1
                true   # like make.sh (set +e): a probe that finds nothing (no hooks) is not an error
                """;
        Map<String, String> env = new LinkedHashMap<>(NO_LOCKS);
        env.put("LC_ALL", "C");
        String out = TestTools.check(List.of("bash", "-c", script), town, env, null, TestTools.DEFAULT_TIMEOUT).stdout();
        return out.replace(town.getParent().toString() + "/", fixturePrefix + "/");
    }

    // ---- dolt, through the running server ----

    /** Runs SQL through the town's dolt sql-server as root and returns the CSV. */
    static String sql(Path cwd, int port, String query) {
        return TestTools.check(List.of(TestTools.dolt(), "--host", "127.0.0.1", "--port", String.valueOf(port), "--no-tls",
                "-u", "root", "--password", "", "sql", "-r", "csv", "-q", query), cwd).stdout();
    }

    /**
     * views/dolt.txt as make.sh wrote it (databases; per database its branch heads, commit count and the row
     * count of every table), read through the server on port. One count query per database instead of one
     * per table; the same lines.
     */
    static String doltView(Path cwd, int port) {
        StringBuilder sb = new StringBuilder();
        String databases = sql(cwd, port, "show databases");
        sb.append(databases);
        for (String db : rows(databases)) {
            if (db.equals("information_schema") || db.equals("mysql")) continue;
            String use = "use `" + db + "`; ";
            sb.append(sql(cwd, port, use + "select name, hash from dolt_branches"));
            sb.append(db).append(" commits ").append(last(sql(cwd, port, use + "select count(*) from dolt_log"))).append('\n');
            List<String> tables = rows(sql(cwd, port, use + "show tables"));
            if (tables.isEmpty()) continue;
            List<String> counts = new ArrayList<>();
            for (String t : tables) counts.add("select '" + t + "' as t, count(*) as n from `" + t + "`");
            Map<String, String> count = new TreeMap<>();
            for (String row : rows(sql(cwd, port, use + String.join(" union all ", counts)))) {
                int comma = row.lastIndexOf(',');
                count.put(row.substring(0, comma), row.substring(comma + 1));
            }
            for (String t : tables) sb.append(db).append('.').append(t).append(' ').append(count.get(t)).append('\n');
        }
        return sb.toString();
    }

    /** Per database: dolt_status (the working set as the server sees it) and the head/staged/working roots. */
    static SortedMap<String, String> doltWorkingSets(Path cwd, int port, List<String> databases) {
        SortedMap<String, String> facts = new TreeMap<>();
        for (String db : databases) {
            facts.put("sql " + db + ": dolt_status", sql(cwd, port,
                    "use `" + db + "`; select table_name, staged, status from dolt_status order by table_name, staged"));
            facts.put("sql " + db + ": roots", sql(cwd, port, "use `" + db + "`; select @@`" + db + "_head` as head, @@`"
                    + db + "_staged` as staged, @@`" + db + "_working` as working"));
        }
        return facts;
    }

    private static List<String> rows(String csv) {
        List<String> lines = csv.lines().filter(l -> !l.isEmpty()).toList();
        return lines.isEmpty() ? List.of() : lines.subList(1, lines.size());
    }

    private static String last(String csv) {
        List<String> lines = csv.lines().filter(l -> !l.isEmpty()).toList();
        return lines.isEmpty() ? "" : lines.get(lines.size() - 1);
    }

    // ---- comparing ----

    /** A readable difference of two fact maps ("" when equal): what is missing, what is new, what changed. */
    static String diff(Map<String, String> expected, Map<String, String> actual) {
        StringBuilder sb = new StringBuilder();
        Set<String> keys = new TreeSet<>(expected.keySet());
        keys.addAll(actual.keySet());
        int shown = 0;
        for (String k : keys) {
            String a = expected.get(k);
            String b = actual.get(k);
            if (a != null && a.equals(b)) continue;
            if (++shown > 40 || sb.length() > 8000) {
                sb.append("... (more differences)\n");
                break;
            }
            if (b == null) sb.append("- missing: ").append(k).append('\n').append(indent(head(a)));
            else if (a == null) sb.append("+ new:     ").append(k).append('\n').append(indent(head(b)));
            else sb.append("~ changed: ").append(k).append('\n').append(indent(head(lineDiff(a, b))));
        }
        return sb.toString();
    }

    /** The lines of two texts that differ, as "- only in expected" / "+ only in actual" ("" when equal). */
    static String lineDiff(String expected, String actual) {
        List<String> e = expected.lines().toList();
        List<String> a = actual.lines().toList();
        StringBuilder sb = new StringBuilder();
        for (String l : e) if (!a.contains(l)) sb.append("- ").append(l).append('\n');
        for (String l : a) if (!e.contains(l)) sb.append("+ ").append(l).append('\n');
        if (sb.length() == 0 && !e.equals(a)) sb.append("(same lines, another order)\n");
        return sb.toString();
    }

    /** The first lines of a long value. */
    private static String head(String value) {
        List<String> lines = value.lines().toList();
        return lines.size() <= 12 ? value : String.join("\n", lines.subList(0, 12)) + "\n... (" + (lines.size() - 12) + " more lines)";
    }

    private static String indent(String value) {
        StringBuilder sb = new StringBuilder();
        for (String line : value.split("\n", -1)) if (!line.isEmpty()) sb.append("    ").append(line).append('\n');
        return sb.length() == 0 ? "    <empty>\n" : sb.toString();
    }

    static String read(Path p) {
        try {
            return Files.readString(p, StandardCharsets.UTF_8);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    static String sha256Of(String s) {
        try {
            return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(s.getBytes(StandardCharsets.UTF_8)));
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }
}

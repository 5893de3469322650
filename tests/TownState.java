import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.nio.file.attribute.BasicFileAttributes;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.Collections;
import java.util.List;
import java.util.Set;
import java.util.SortedMap;
import java.util.TreeMap;
import java.util.TreeSet;
import java.util.stream.Stream;

/**
 * A comparable, printable description of a town: what a restore must bring back. Each fact is a key
 * (which thing) and a text value (its state); two states are equal when all facts are. Use
 * {@link #assertSame} for a readable diff instead of a wall of text.
 *
 * <ul>
 *   <li>{@code path:<path>} every directory, file and symlink of the town: type and mode; a file's size,
 *       sha256 and mtime (seconds); a link's target. Git directories' files (HEAD, index, config, hooks,
 *       logs/, worktrees/) are paths like any other, so they must come back byte for byte. Left out, by
 *       this class's own rules (independent of the product's skip list): git objects/refs/packed-refs
 *       (see refs), databases' .dolt (see dolt), and what is volatile by nature: *.pid, *.lock, *.flock,
 *       *.log, locks/ .locks/ pids/ heartbeats/ dirs, sockets and fifos, daemon/dolt-state.json,
 *       .dolt-data/.dolt, .beads/backup/. Inside a work tree, a file git tracks or lists as untracked is
 *       never left out (a tracked Cargo.lock, an agent's untracked build.log).
 *   <li>{@code refs:<git dir>} every ref with its object and, for a symbolic one, its target.
 *   <li>{@code worktrees:<git dir>} `git worktree list --porcelain` of a repository with linked worktrees.
 *   <li>{@code status:<work tree>} `git status --porcelain=v2 --branch`, `git stash list` and HEAD.
 *   <li>{@code dolt:<db>:...} branches and hashes, the head/staged/working root hashes, dolt_status, and
 *       the rows of every table on every branch and in the staged and working sets. Read with the server
 *       STOPPED (dolt runs embedded in the database dir).
 * </ul>
 */
record TownState(SortedMap<String, String> facts) {

    TownState {
        facts = Collections.unmodifiableSortedMap(new TreeMap<>(facts));
    }

    static TownState capture(Path root) {
        SortedMap<String, String> facts = new TreeMap<>();
        try {
            walk(root, root, root.resolve(".git").toFile().exists() ? root : null, false, facts);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        return new TownState(facts);
    }

    /** Only the facts whose key starts with {@code prefix}, e.g. "dolt:hq:" or "path:". */
    TownState only(String prefix) {
        SortedMap<String, String> out = new TreeMap<>();
        facts.forEach((k, v) -> { if (k.startsWith(prefix)) out.put(k, v); });
        return new TownState(out);
    }

    /** All facts but those whose key starts with {@code prefix}. */
    TownState without(String prefix) {
        SortedMap<String, String> out = new TreeMap<>();
        facts.forEach((k, v) -> { if (!k.startsWith(prefix)) out.put(k, v); });
        return new TownState(out);
    }

    /** A readable difference from {@code other} ("" when equal): missing, extra and changed facts. */
    String diff(TownState other) {
        StringBuilder sb = new StringBuilder();
        Set<String> keys = new TreeSet<>(facts.keySet());
        keys.addAll(other.facts.keySet());
        for (String k : keys) {
            String a = facts.get(k);
            String b = other.facts.get(k);
            if (a == null) sb.append("+ only in actual:   ").append(k).append('\n').append(indent(b));
            else if (b == null) sb.append("- only in expected: ").append(k).append('\n').append(indent(a));
            else if (!a.equals(b)) {
                sb.append("~ differs: ").append(k).append('\n')
                        .append("  expected:\n").append(indent(a)).append("  actual:\n").append(indent(b));
            }
        }
        return sb.toString();
    }

    /** Throws an AssertionError listing only what differs. */
    static void assertSame(TownState expected, TownState actual) {
        String diff = expected.diff(actual);
        if (!diff.isEmpty()) throw new AssertionError("town states differ:\n" + diff);
    }

    @Override
    public String toString() {
        StringBuilder sb = new StringBuilder();
        facts.forEach((k, v) -> sb.append(k).append('\n').append(indent(v)));
        return sb.toString();
    }

    private static String indent(String value) {
        StringBuilder sb = new StringBuilder();
        for (String line : value.split("\n", -1)) {
            if (!line.isEmpty()) sb.append("    ").append(line).append('\n');
        }
        return sb.length() == 0 ? "    <empty>\n" : sb.toString();
    }

    // ---- the walk ----

    private static final Set<String> VOLATILE_DIRS = Set.of("locks", ".locks", "pids", "heartbeats");

    /**
     * @param workTree the innermost work tree holding dir, or null
     * @param inGitDir dir lies inside a git directory
     */
    private static void walk(Path root, Path dir, Path workTree, boolean inGitDir, SortedMap<String, String> facts)
            throws IOException {
        if (dir.equals(workTree)) workTreeFacts(root, dir, facts);
        if (TownView.isGitDir(dir)) gitDirFacts(root, dir, facts);
        if (Files.isDirectory(dir.resolve(".dolt/noms"))) DoltFacts.capture(dir, facts);
        List<Path> children;
        try (Stream<Path> s = Files.list(dir)) {
            children = s.sorted().toList();
        }
        for (Path p : children) {
            String rel = root.relativize(p).toString();
            String name = p.getFileName().toString();
            BasicFileAttributes a = Files.readAttributes(p, BasicFileAttributes.class, LinkOption.NOFOLLOW_LINKS);
            if (dir.equals(root) && (name.equals(".r2-restore") || name.startsWith(".r2-aside-"))) continue;
            if (TownView.isGitDir(dir) && Set.of("objects", "refs", "packed-refs").contains(name)) continue;
            if (name.equals(".dolt") && a.isDirectory()) continue;
            if (isVolatile(rel, name, a) && !(workTree != null && !inGitDir && gitShows(workTree, p))) continue;
            if (a.isSymbolicLink()) {
                facts.put("path:" + rel, "l -> " + Files.readSymbolicLink(p));
            } else if (a.isDirectory()) {
                facts.put("path:" + rel, "d " + mode(p));
                boolean gitDir = inGitDir || TownView.isGitDir(p);
                Path innerWorkTree = !gitDir && Files.exists(p.resolve(".git"), LinkOption.NOFOLLOW_LINKS) ? p : workTree;
                walk(root, p, innerWorkTree, gitDir, facts);
            } else if (a.isRegularFile() && isWorktreeLink(p)) {
                // A worktree's .git file and its gitdir back-link name absolute paths: compared with the root
                // replaced, so a town restored under another root must have them pointed there.
                facts.put("path:" + rel, "f " + mode(p) + " link " + Files.readString(p).replace(root + "/", "$ROOT/").strip()
                        + " mtime " + a.lastModifiedTime().toMillis() / 1000);
            } else if (a.isRegularFile()) {
                facts.put("path:" + rel, "f " + mode(p) + " " + a.size() + " " + TownView.sha256(p) + " mtime "
                        + a.lastModifiedTime().toMillis() / 1000);
            } else {
                facts.put("path:" + rel, "other (socket, fifo or device)");
            }
        }
    }

    private static boolean isWorktreeLink(Path p) {
        String name = p.getFileName().toString();
        return name.equals(".git") || (name.equals("gitdir") && p.getParent().getParent() != null
                && p.getParent().getParent().getFileName().toString().equals("worktrees"));
    }

    private static boolean isVolatile(String rel, String name, BasicFileAttributes a) {
        return a.isOther() || name.endsWith(".pid") || name.endsWith(".lock") || name.endsWith(".flock")
                || (a.isRegularFile() && name.endsWith(".log")) || name.equals("heartbeat.json")
                || (a.isDirectory() && VOLATILE_DIRS.contains(name)) || rel.equals("daemon/dolt-state.json")
                || (a.isDirectory() && name.equals("backup") && rel.endsWith(".beads/backup"));
    }

    /** True when git tracks the path or lists it as untracked in its work tree. */
    private static boolean gitShows(Path workTree, Path p) {
        var r = TestTools.run(List.of("git", "--no-optional-locks", "ls-files", "--cached", "--others", "--exclude-standard",
                "--", workTree.relativize(p).toString()), workTree);
        return r.ok() && !r.stdout().isBlank();
    }


    // ---- git ----

    private static void gitDirFacts(Path root, Path gitDir, SortedMap<String, String> facts) {
        String key = root.relativize(gitDir).toString();
        facts.put("refs:" + key, TestTools.git(gitDir, "--git-dir=" + gitDir, "for-each-ref",
                "--format=%(objectname) %(refname) %(symref)"));
        if (Files.isDirectory(gitDir.resolve("worktrees")))
            facts.put("worktrees:" + key, TestTools.git(gitDir, "--git-dir=" + gitDir, "worktree", "list", "--porcelain")
                    .replace(root + "/", "$ROOT/"));
    }

    private static void workTreeFacts(Path root, Path workTree, SortedMap<String, String> facts) {
        String key = root.equals(workTree) ? "." : root.relativize(workTree).toString();
        var head = TestTools.run(List.of("git", "rev-parse", "HEAD"), workTree);
        facts.put("status:" + key, "HEAD " + (head.ok() ? head.stdout().strip() : "<none>") + "\n"
                + TestTools.git(workTree, "--no-optional-locks", "status", "--porcelain=v2", "--branch")
                + "stash:\n" + TestTools.git(workTree, "stash", "list"));
    }

    // ---- files ----

    private static String mode(Path p) throws IOException {
        return PosixFilePermissions.toString(Files.getPosixFilePermissions(p, LinkOption.NOFOLLOW_LINKS));
    }
}

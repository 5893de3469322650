import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.Collections;
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
 * A comparable, printable description of a town: what a restore must bring back. Each fact is a key
 * (which thing) and a text value (its state); two states are equal when all facts are. Use
 * {@link #assertSame} for a readable diff instead of a wall of text.
 *
 * <ul>
 *   <li>{@code dolt:<db>:...} branches and hashes, the head/staged/working root hashes, dolt_status,
 *       and the rows of every table on every branch and in the staged and working sets. Read with the
 *       server STOPPED (dolt runs embedded in .dolt-data/<db>).
 *   <li>{@code git:<repo>:...} for .repo.git, mayor/rig and crew/*: refs with hashes, the shallow file,
 *       remote.* config, HEAD.
 *   <li>{@code worktree:<path>} for every worktree of every .repo.git: branch and HEAD commit.
 *   <li>{@code file:<path>} sha256 and POSIX mode of every file a backup keeps: all files except git
 *       and dolt internals, worktrees and clones (but crew state.json and mail/), and the skip rules of
 *       gastown-town.md (pids, heartbeats, locks, logs, daemon/state.json, daemon/scripts/, .beads/dolt/).
 * </ul>
 */
record TownState(SortedMap<String, String> facts) {

    TownState {
        facts = Collections.unmodifiableSortedMap(new TreeMap<>(facts));
    }

    static TownState capture(Path root) {
        SortedMap<String, String> facts = new TreeMap<>();
        try {
            for (Path db : doltDatabases(root)) DoltFacts.capture(db, facts);
            for (Path rig : rigs(root)) gitFacts(root, rig, facts);
            fileFacts(root, root, facts);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        return new TownState(facts);
    }

    /** Only the facts whose key starts with {@code prefix}, e.g. "dolt:hq:" or "file:". */
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

    // ---- discovery ----

    private static List<Path> doltDatabases(Path root) throws IOException {
        Path data = root.resolve(".dolt-data");
        if (!Files.isDirectory(data)) return List.of();
        try (Stream<Path> s = Files.list(data)) {
            return s.filter(p -> Files.isDirectory(p.resolve(".dolt")) && !p.getFileName().toString().startsWith("."))
                    .sorted().toList();
        }
    }

    /** Rig dirs: top-level dirs holding a .repo.git. */
    private static List<Path> rigs(Path root) throws IOException {
        try (Stream<Path> s = Files.list(root)) {
            return s.filter(p -> Files.isDirectory(p.resolve(".repo.git"))).sorted().toList();
        }
    }

    // ---- git ----

    private static void gitFacts(Path root, Path rig, SortedMap<String, String> facts) throws IOException {
        Path bare = rig.resolve(".repo.git");
        repoFacts(root, bare, bare, facts);
        worktreeFacts(root, bare, facts);
        List<Path> clones = new ArrayList<>();
        if (Files.exists(rig.resolve("mayor/rig/.git"))) clones.add(rig.resolve("mayor/rig"));
        Path crewDir = rig.resolve("crew");
        if (Files.isDirectory(crewDir)) {
            try (Stream<Path> s = Files.list(crewDir)) {
                s.filter(p -> Files.isDirectory(p.resolve(".git"))).sorted().forEach(clones::add);
            }
        }
        for (Path clone : clones) repoFacts(root, clone, clone.resolve(".git"), facts);
    }

    private static void repoFacts(Path root, Path repo, Path gitDir, SortedMap<String, String> facts)
            throws IOException {
        String key = "git:" + root.relativize(repo) + ":";
        facts.put(key + "refs", TestTools.git(repo, "for-each-ref", "--format=%(refname) %(objectname)"));
        Path shallow = gitDir.resolve("shallow");
        facts.put(key + "shallow", Files.exists(shallow) ? Files.readString(shallow) : "<not shallow>");
        var remotes = TestTools.run(List.of("git", "config", "--get-regexp", "^remote\\."), repo);
        // exit 1 = no remote.* keys at all, which is a fact too
        facts.put(key + "remotes", remotes.exitCode() == 1 ? "<none>" : sortedLines(remotes.assertOk().stdout()));
        var head = TestTools.run(List.of("git", "symbolic-ref", "-q", "HEAD"), repo);
        facts.put(key + "HEAD", head.ok() ? head.stdout().trim() : TestTools.git(repo, "rev-parse", "HEAD").trim());
    }

    /** From `git worktree list --porcelain`: one fact per worktree (the bare repo's own entry is left out). */
    private static void worktreeFacts(Path root, Path bare, SortedMap<String, String> facts) {
        String out = TestTools.git(bare, "worktree", "list", "--porcelain");
        for (String block : out.split("\n\n")) {
            Map<String, String> f = new LinkedHashMap<>();
            for (String line : block.strip().split("\n")) {
                int sp = line.indexOf(' ');
                f.put(sp < 0 ? line : line.substring(0, sp), sp < 0 ? "" : line.substring(sp + 1));
            }
            if (!f.containsKey("worktree") || f.containsKey("bare")) continue;
            Path path = Path.of(f.remove("worktree"));
            String rel = path.startsWith(root) ? root.relativize(path).toString() : path.toString();
            StringBuilder v = new StringBuilder();
            f.forEach((k, val) -> v.append(k).append(val.isEmpty() ? "" : " " + val).append('\n'));
            facts.put("worktree:" + rel, v.toString());
        }
    }

    // ---- files ----

    private static final Set<String> SKIP_DIRS = Set.of(
            ".runtime/pids", ".runtime/heartbeats", ".runtime/locks", "daemon/scripts");

    private static void fileFacts(Path root, Path dir, SortedMap<String, String> facts) throws IOException {
        List<Path> children;
        try (Stream<Path> s = Files.list(dir)) {
            children = s.sorted().toList();
        }
        for (Path p : children) {
            String rel = root.relativize(p).toString();
            String name = p.getFileName().toString();
            if (Files.isSymbolicLink(p)) {
                facts.put("file:" + rel, "symlink -> " + Files.readSymbolicLink(p));
            } else if (Files.isDirectory(p)) {
                if (skipDir(root, p, rel, name)) continue;
                if (Files.exists(p.resolve(".git"))) {
                    crewExtras(root, p, facts); // a clone or worktree: git facts cover it
                    continue;
                }
                fileFacts(root, p, facts);
            } else if (!skipFile(rel, name)) {
                facts.put("file:" + rel, fileFact(p));
            }
        }
    }

    private static boolean skipDir(Path root, Path p, String rel, String name) {
        if (name.equals(".repo.git") || name.equals(".git")) return true;
        if (p.getParent().equals(root.resolve(".dolt-data"))) return true; // databases, .doltcfg, .dolt
        if (name.equals("dolt") && p.getParent().getFileName().toString().equals(".beads")) return true;
        // town .runtime/{pids,heartbeats,locks}, rig .runtime/locks, daemon/scripts
        return SKIP_DIRS.contains(rel) || rel.endsWith("/.runtime/locks");
    }

    private static boolean skipFile(String rel, String name) {
        return name.endsWith(".pid") || name.endsWith(".lock") || name.endsWith(".log")
                || rel.equals("daemon/state.json");
    }

    /** A crew clone holds files no bundle has: state.json and mail/ (kept); other clones hold none. */
    private static void crewExtras(Path root, Path clone, SortedMap<String, String> facts) throws IOException {
        if (!clone.getParent().getFileName().toString().equals("crew")) return;
        Path state = clone.resolve("state.json");
        if (Files.isRegularFile(state)) facts.put("file:" + root.relativize(state), fileFact(state));
        Path mail = clone.resolve("mail");
        if (Files.isDirectory(mail)) {
            try (Stream<Path> s = Files.walk(mail)) {
                for (Path f : s.filter(Files::isRegularFile).sorted().toList()) {
                    facts.put("file:" + root.relativize(f), fileFact(f));
                }
            }
        }
    }

    private static String fileFact(Path file) throws IOException {
        try {
            byte[] digest = MessageDigest.getInstance("SHA-256").digest(Files.readAllBytes(file));
            return "sha256 " + HexFormat.of().formatHex(digest) + " mode "
                    + PosixFilePermissions.toString(Files.getPosixFilePermissions(file));
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }

    private static String sortedLines(String s) {
        return String.join("\n", new TreeSet<>(List.of(s.strip().split("\n")))) + "\n";
    }
}

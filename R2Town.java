// The town: what a snapshot holds (part of R2Common, included with //SOURCES).
//   Town       the scan: every path under the town root, minus the skip list; databases and git
//              repositories found by what they are, wherever they are
//   SkipList   the one list of what is not backed up, each entry with its reason (docs/sync.md shows it)
//
// A snapshot holds the whole town root. Three tools share the work, and each path is captured once:
// a Dolt database's .dolt by `dolt backup`, a git directory's objects/refs by a chain of packs, and everything
// else (work trees, git directories' other files, config, runtime state, empty dirs, symlinks) as files.

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.*;
import java.nio.file.attribute.BasicFileAttributes;
import java.nio.file.attribute.PosixFileAttributes;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.*;
import java.util.regex.Pattern;
import java.util.stream.Collectors;
import java.util.stream.Stream;

/**
 * What the scan found. Paths are town-relative with '/' separators.
 *
 * @param scanFile  every directory, regular file and symlink to archive, in PathOrder, as TownEntry records
 *                  (a file, so that a town of a million paths costs disk, not memory)
 * @param paths     how many entries the scan file holds
 * @param skipped   how many paths each skip-list entry left out (for the log)
 * @param scannedAt when the scan started
 */
record Town(Path root, List<DoltDatabase> databases, List<GitDir> gitDirs, List<WorkTree> workTrees,
            Path scanFile, long paths, Map<String, Integer> skipped, java.time.Instant scannedAt) {
    /** gt recognises a town by this file; nothing else is ever backed up. */
    static final String TOWN_MARKER = "mayor/town.json";
    /** This tool's own directories at the town root, and the filesystem's: never part of the town. */
    static final Set<String> OWN_DIRS = Set.of(".r2-restore", RestoreState.FAILED_ON_VOLUME, "lost+found");
    static final String ASIDE_PREFIX = ".r2-aside-";

    /** A Dolt database: a directory holding .dolt/noms. */
    record DoltDatabase(String name, String path) {}

    /** A git directory with an object store of its own (a bare repo, a clone's .git, a submodule's). */
    record GitDir(String path) {}

    /** A checked-out tree: a directory with a .git file or directory. gitDir is where its .git leads. */
    record WorkTree(String path, Path gitDir) {}

    /** Refuses a root that is not a town, before anything is read or written (exit 2). */
    static void requireTown(Path root) {
        if (!isTown(root)) throw new R2Exception(R2Common.EXIT_USAGE, notATown(root));
    }

    static boolean isTown(Path root) {
        return Files.isRegularFile(root.resolve(TOWN_MARKER));
    }

    static String notATown(Path root) {
        return "GT_TOWN_ROOT " + root + " is not a Gas Town (no " + TOWN_MARKER + "); refusing to back it up. "
                + "Point GT_TOWN_ROOT (or --town-root) at the town root.";
    }

    /** Walks the whole town once, writing what it finds into scanFile. */
    static Town scan(Path root, Path scanFile) throws IOException {
        if (!Files.isDirectory(root))
            throw new R2Exception(R2Common.EXIT_USAGE, "town root " + root + " is not a directory (GT_TOWN_ROOT)");
        java.time.Instant started = java.time.Instant.now();
        Files.createDirectories(scanFile.getParent());
        try (java.io.DataOutputStream out = EntryFiles.write(Files.newOutputStream(scanFile, StandardOpenOption.CREATE_NEW))) {
            Scan scan = new Scan(root, out);
            scan.walk(root, Files.exists(root.resolve(".git"), LinkOption.NOFOLLOW_LINKS) ? root : null, null);
            EntryFiles.end(out);
            return new Town(root, List.copyOf(scan.databases), List.copyOf(scan.gitDirs), List.copyOf(scan.workTrees),
                    scanFile, scan.paths, Collections.unmodifiableMap(scan.skipped), started);
        }
    }

    /** Town-relative path with '/' separators. */
    String relative(Path p) {
        return relative(root, p);
    }

    /** A path as the manifest names it: town-relative when inside the town (also via its real path), else absolute. */
    String named(Path p) throws IOException {
        if (p.startsWith(root)) return relative(p);
        Path real = root.toRealPath();
        return p.startsWith(real) ? relative(real, p) : p.toString();
    }


    static String relative(Path root, Path p) {
        return root.relativize(p).toString();   // '/' separated on the Unix filesystems towns live on; a backslash is a name's own
    }

    static boolean isGitDir(Path dir) {
        return Files.isRegularFile(dir.resolve("HEAD"), LinkOption.NOFOLLOW_LINKS)
                && Files.isDirectory(dir.resolve("objects"), LinkOption.NOFOLLOW_LINKS)
                && Files.isDirectory(dir.resolve("refs"), LinkOption.NOFOLLOW_LINKS);
    }

    static boolean isDoltDatabase(Path dir) {
        return Files.isDirectory(dir.resolve(".dolt").resolve("noms"), LinkOption.NOFOLLOW_LINKS);
    }

    /** True when the root holds anything but lost+found and this tool's own staging. */
    static boolean holdsData(Path root) throws IOException {
        if (!Files.isDirectory(root)) return false;
        try (Stream<Path> s = Files.list(root)) {
            return s.anyMatch(p -> !OWN_DIRS.contains(p.getFileName().toString()));
        }
    }

    /** One walk of the town: a directory at a time, knowing the innermost work tree and git dir above it. */
    private static final class Scan {
        private final Path root;
        private final java.io.DataOutputStream out;
        private final List<DoltDatabase> databases = new ArrayList<>();
        private final List<GitDir> gitDirs = new ArrayList<>();
        private final List<WorkTree> workTrees = new ArrayList<>();
        private final Map<String, Integer> skipped = new TreeMap<>();
        /**
         * Files with more than one name, by inode, until each name was seen: the first name holds the content. At
         * most MAX_LINKED at once (a pnpm node_modules links every file to a store outside the town, whose names the
         * scan never sees): past that, a file's other names are stored as files, their content still stored once.
         */
        private final Map<Object, HardLinks> linked = new HashMap<>();
        private static final int MAX_LINKED = 100_000;
        private long paths;

        private record HardLinks(String first, int[] left) {}

        Scan(Path root, java.io.DataOutputStream out) {
            this.root = root;
            this.out = out;
        }

        /**
         * @param workTree the innermost work tree holding dir (null: none)
         * @param gitDir   the git directory dir lies in (null: not inside one)
         */
        void walk(Path dir, Path workTree, Path gitDir) throws IOException {
            if (workTree != null && workTree.equals(dir)) workTrees.add(new WorkTree(relative(root, dir), gitDirOf(dir)));
            for (Path child : children(dir)) {
                String rel = relative(root, child);
                Stat attrs;
                try {
                    attrs = Stat.of(child);
                } catch (NoSuchFileException e) {
                    continue;   // removed while walking
                }
                SkipList.Entry skip = SkipList.match(rel, child, attrs);
                if (skip != null && (skip.always() || !trackedOrUntracked(workTree, gitDir, child, attrs))) {
                    skipped.merge(skip.pattern(), 1, Integer::sum);
                    continue;
                }
                if (attrs.isSymbolicLink() || attrs.isDirectory() || attrs.isRegularFile()) {
                    entry(rel, attrs, gitDir != null && child.equals(gitDir.resolve("config"))).write(out);
                    paths++;
                }
                if (attrs.isDirectory()) {
                    Path innerGitDir = gitDir;
                    if (isGitDir(child)) {
                        gitDirs.add(new GitDir(rel));
                        innerGitDir = child;
                    }
                    if (isDoltDatabase(child)) databases.add(new DoltDatabase(SafePath.requireName(child.getFileName().toString(),
                            "database name"), rel));
                    Path innerWorkTree = innerGitDir == null && Files.exists(child.resolve(".git"), LinkOption.NOFOLLOW_LINKS)
                            ? child : workTree;
                    walk(child, innerWorkTree, innerGitDir);
                }
            }
        }

        /**
         * What the scan records of a path: type, mode, size and mtime (what tells the next cycle it did not change;
         * not the inode, which a restore changes). A file's second name is a hard link to its first.
         */
        private TownEntry entry(String rel, Stat a, boolean gitConfig) {
            char type = a.isDirectory() ? TownEntry.DIR : a.isSymbolicLink() ? TownEntry.SYMLINK : TownEntry.FILE;
            // A symlink's mtime comes back at microseconds (lutimes): recorded so, a restored one is unchanged.
            long mtime = type == TownEntry.SYMLINK ? a.mtime() / 1000 * 1000 : a.mtime();
            String target = null;
            if (type == TownEntry.FILE && a.nlink() > 1 && !gitConfig) {
                HardLinks seen = linked.get(a.fileKey());
                if (seen == null) {
                    if (linked.size() < MAX_LINKED) linked.put(a.fileKey(), new HardLinks(rel, new int[]{a.nlink() - 1}));
                } else {
                    type = TownEntry.HARDLINK;
                    target = seen.first();
                    if (--seen.left()[0] == 0) linked.remove(a.fileKey());
                }
            }
            return new TownEntry(rel, type, a.mode() & 0777, mtime, type == TownEntry.FILE ? a.size() : 0, false, gitConfig, target, null);
        }

        private static List<Path> children(Path dir) throws IOException {
            try {
                return FileTrees.sortedChildren(dir);
            } catch (NoSuchFileException | NotDirectoryException e) {
                return List.of();   // removed while walking
            }
        }

        /**
         * Git's view wins over the skip list inside a work tree: a file git tracks, or shows as untracked,
         * is the work's (a Cargo.lock, an agent's new notes.log), and `git status` must read the same after a
         * restore. Asked only for paths the skip list names, so a cycle runs git here rarely.
         */
        private static boolean trackedOrUntracked(Path workTree, Path gitDir, Path path, BasicFileAttributes attrs) {
            if (workTree == null || gitDir != null || !(attrs.isRegularFile() || attrs.isDirectory() || attrs.isSymbolicLink()))
                return false;
            ProcResult r = Git.run(workTree, List.of(), "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--",
                    relative(workTree, path));
            return r.ok() && !r.stdout().isEmpty();
        }

        /** The git directory a work tree's .git leads to (a directory, or the target of a "gitdir:" file). */
        private static Path gitDirOf(Path workTree) {
            Path dotGit = workTree.resolve(".git");
            if (Files.isDirectory(dotGit, LinkOption.NOFOLLOW_LINKS)) return dotGit;
            try {
                String text = Files.readString(dotGit, StandardCharsets.UTF_8).strip();
                if (!text.startsWith("gitdir:")) return null;
                Path target = Path.of(text.substring("gitdir:".length()).strip());
                return workTree.resolve(target).normalize();
            } catch (IOException | RuntimeException e) {
                return null;
            }
        }
    }
}

/**
 * A path's attributes from one lstat: what the skip list tests (as BasicFileAttributes), and the mode, link count,
 * inode and nanosecond mtime that the scan records.
 */
record Stat(int mode, int nlink, Object fileKey, long size, long mtime) implements BasicFileAttributes {
    private static final int TYPE = 0170000;

    static Stat of(Path p) throws IOException {
        Map<String, Object> a = Files.readAttributes(p, "unix:mode,nlink,dev,ino,size,lastModifiedTime", LinkOption.NOFOLLOW_LINKS);
        return new Stat((Integer) a.get("mode"), (Integer) a.get("nlink"), List.of(a.get("dev"), a.get("ino")), (Long) a.get("size"),
                ((java.nio.file.attribute.FileTime) a.get("lastModifiedTime")).to(java.util.concurrent.TimeUnit.NANOSECONDS));
    }

    @Override public java.nio.file.attribute.FileTime lastModifiedTime() { return java.nio.file.attribute.FileTime.from(mtime, java.util.concurrent.TimeUnit.NANOSECONDS); }
    @Override public java.nio.file.attribute.FileTime lastAccessTime() { return lastModifiedTime(); }
    @Override public java.nio.file.attribute.FileTime creationTime() { return lastModifiedTime(); }
    @Override public boolean isRegularFile() { return (mode & TYPE) == 0100000; }
    @Override public boolean isDirectory() { return (mode & TYPE) == 0040000; }
    @Override public boolean isSymbolicLink() { return (mode & TYPE) == 0120000; }
    @Override public boolean isOther() { return !isRegularFile() && !isDirectory() && !isSymbolicLink(); }
}

/**
 * The one list of what a snapshot leaves out. Everything else under the town root is backed up, also
 * files and directories nobody has seen yet. Each entry: what it matches, and why it is safe to leave.
 * Inside a git work tree, a path git tracks or shows as untracked is kept even when an entry matches, unless
 * the entry is marked always: what another tool stores, what a tar cannot hold, and this tool's own dirs.
 */
final class SkipList {
    /** An entry: a test on a path (its town-relative name, its file name, its attributes) and the reason. */
    record Entry(String pattern, String reason, boolean always, Rule rule) {}

    interface Rule {
        boolean matches(String rel, String name, BasicFileAttributes attrs, Path path);
    }

    static final List<Entry> ENTRIES = List.of(
            new Entry("sockets, fifos, device nodes", "endpoints of running processes, not data; a tar cannot hold them", true,
                    (rel, name, a, p) -> a.isOther()),
            new Entry("*.pid", "process ids of processes that do not outlive the machine", false,
                    (rel, name, a, p) -> name.endsWith(".pid")),
            new Entry("*.lock, *.flock", "locks of processes that do not outlive the machine (git's index.lock too)", false,
                    (rel, name, a, p) -> name.endsWith(".lock") || name.endsWith(".flock")),
            new Entry("locks/, .locks/, pids/ directories", "whole directories of such locks and pids (.runtime/locks, .beads/.locks); gt and bd make them again", false,
                    (rel, name, a, p) -> a.isDirectory() && Set.of("locks", ".locks", "pids").contains(name)),
            new Entry("heartbeats/, heartbeat.json", "liveness stamps of running agents; rewritten while they run", false,
                    (rel, name, a, p) -> (a.isDirectory() && name.equals("heartbeats")) || name.equals("heartbeat.json")),
            new Entry("*.log", "logs of processes that ran; gt and dolt start new ones", false,
                    (rel, name, a, p) -> a.isRegularFile() && name.endsWith(".log")),
            new Entry("daemon/dolt-state.json", "the running dolt server's pid, port and start time", false,
                    (rel, name, a, p) -> rel.equals("daemon/dolt-state.json")),
            new Entry(".dolt/ of a database", "stored by `dolt backup` (dolt/<name>.backup), consistent while the server runs", true,
                    (rel, name, a, p) -> a.isDirectory() && name.equals(".dolt") && Files.isDirectory(p.resolve("noms"))),
            new Entry(".dolt/ without a database (.dolt-data/.dolt)", "dolt server state: sql-server.info names a live pid and port", true,
                    (rel, name, a, p) -> a.isDirectory() && name.equals(".dolt")),
            new Entry("objects/, refs/, packed-refs of a git directory", "stored by the repository's chain of packs (git/<path>.packs)", true,
                    (rel, name, a, p) -> Town.isGitDir(p.getParent()) && Set.of("objects", "refs", "packed-refs").contains(name)),
            new Entry(".beads/backup/", "bd's own dolt backup of a database that `dolt backup` already stores", false,
                    (rel, name, a, p) -> a.isDirectory() && name.equals("backup") && p.getParent().getFileName().toString().equals(".beads")),
            new Entry(".r2-restore/, .r2-aside-*/, .r2-restore-failed.json, lost+found/ at the root",
                    "this tool's restore staging, what a forced restore moved aside, the failed-restore marker, and the "
                    + "filesystem's own recovery dir: not the town", true,
                    (rel, name, a, p) -> !rel.contains("/") && (Town.OWN_DIRS.contains(name) || name.startsWith(Town.ASIDE_PREFIX))));

    private SkipList() {}

    /** The entry that leaves a path out, or null when it is backed up. */
    static Entry match(String rel, Path path, BasicFileAttributes attrs) {
        String name = path.getFileName().toString();
        for (Entry e : ENTRIES)
            if (e.rule().matches(rel, name, attrs, path)) return e;
        return null;
    }
}

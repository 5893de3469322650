// Git: how a git directory is captured (GitCapture) and restored (GitRepo): its objects as a chain of packs, its
// refs, and a work tree's state (part of R2Common, included with //SOURCES; git itself runs through Git, in
// R2Proc.java). Everything else in a git directory (HEAD, index, config, hooks, info/, logs/, shallow, worktrees/)
// is archived as files by the town scan, so it comes back byte for byte.
//
// Why the objects are packed here and not by `git bundle create --all`: that command fetches every blob a
// partial clone left on its promisor remote (or fails offline), and it carries neither the reflog (stash
// entries past the newest) nor the index (what is staged). `git pack-objects` does all three. Each pack goes
// up with the index git wrote for it, so a restore places both instead of hashing every object again (`git
// index-pack`: 2.3 s for 300 MiB here); the manifest's sha256 of both, checked while they download, is what
// says they are the ones backed up. A repo that keeps every object in one pack (after a clone or a gc) starts
// its chain with that very pack, uploaded from where it is: pack-objects would write the same bytes again
// (1.6 s for 300 MiB here).

import java.io.*;
import java.nio.charset.StandardCharsets;
import java.nio.file.*;
import java.util.*;
import java.util.stream.Collectors;
import java.util.stream.Stream;
import java.time.Duration;
import java.time.Instant;

final class GitRepo {
    private GitRepo() {}

    /** Every ref (name -> object) and, of those, the symbolic ones (name -> the ref they name). */
    record Refs(Map<String, String> refs, Map<String, String> symrefs) {}

    static Refs refs(Path gitDir) {
        Map<String, String> refs = new TreeMap<>();
        Map<String, String> symrefs = new TreeMap<>();
        for (String line : git(gitDir, "for-each-ref", "--format=%(objectname) %(refname) %(symref)").lines().toList()) {
            String[] parts = line.split(" ", 3);
            if (parts.length < 2) continue;
            refs.put(parts[1], parts[0]);
            if (parts.length == 3 && !parts[2].isBlank()) symrefs.put(parts[1], parts[2].strip());
        }
        return new Refs(refs, symrefs);
    }

    /** True for a partial clone: some of its objects live only on a promisor remote. */
    static boolean promisor(Path gitDir) throws IOException {
        Path packs = gitDir.resolve("objects/pack");
        if (!Files.isDirectory(packs)) return false;
        try (Stream<Path> s = Files.list(packs)) {
            return s.anyMatch(p -> p.getFileName().toString().endsWith(".promisor"));
        }
    }

    /**
     * What decides a chain's content: the refs, the shallow boundary, every HEAD, index and the stash's
     * reflog. Equal fingerprints in two cycles mean the previous snapshot's chain still holds it all.
     */
    static String fingerprint(Path gitDir, Refs refs) throws IOException {
        var md = Sha256.digest();
        refs.refs().forEach((k, v) -> md.update((v + " " + k + " " + refs.symrefs().getOrDefault(k, "") + "\n").getBytes(StandardCharsets.UTF_8)));
        List<Path> parts = new ArrayList<>(List.of(gitDir.resolve("shallow"), gitDir.resolve("HEAD"), gitDir.resolve("index"),
                gitDir.resolve("logs/refs/stash")));
        Path worktrees = gitDir.resolve("worktrees");
        if (Files.isDirectory(worktrees))
            for (Path wt : FileTrees.sortedChildren(worktrees)) parts.addAll(List.of(wt.resolve("HEAD"), wt.resolve("index")));
        for (Path p : parts) {
            md.update((gitDir.relativize(p) + "\0").getBytes(StandardCharsets.UTF_8));
            if (Files.isRegularFile(p)) {
                try (InputStream in = Files.newInputStream(p)) {
                    byte[] buf = new byte[1 << 16];
                    for (int n; (n = in.read(buf)) > 0; ) md.update(buf, 0, n);
                } catch (NoSuchFileException e) {
                    // removed while reading: it is not part of the state
                }
            }
        }
        return Sha256.hex(md.digest());
    }

    /**
     * Writes a pack of a git directory and git's index of it: one pack of every object the refs, the reflogs,
     * the indexes and every worktree's HEAD reach, except what the prerequisites reach (commits the links
     * before this one hold: none for the first link). A partial clone's missing blobs stay on its promisor
     * remote. Writes local + ".pack" and local + ".idx"; returns their entries (snapshot paths name + ".pack"
     * and name + ".idx") and how many objects the pack holds.
     */
    static Pack writePack(Path gitDir, Collection<String> tips, List<String> prerequisites, Path local, String name)
            throws IOException {
        String revs = tips.stream().distinct().map(sha -> sha + "\n").collect(Collectors.joining())
                + prerequisites.stream().map(sha -> "^" + sha + "\n").collect(Collectors.joining());
        Files.createDirectories(local.getParent());
        Path base = Path.of(local + "-new");
        ByteArrayOutputStream checksum = new ByteArrayOutputStream();
        // Small pack windows: by default git maps whole packs, and a 300 MiB repo's pack then shows as 300 MiB
        // of RSS (70 MiB with these, as fast). One pack whatever the repo's pack.packSizeLimit, and no .rev file.
        Git.pipe(gitDir, List.of("--git-dir=" + gitDir, "-c", "core.packedGitWindowSize=16m",
                "-c", "core.packedGitLimit=64m", "-c", "pack.packSizeLimit=0", "-c", "pack.writeReverseIndex=false"),
                List.of("pack-objects", "--quiet", "--revs", "--all", "--reflog", "--indexed-objects", "--missing=allow-promisor",
                "--delta-base-offset", base.toString()), revs.getBytes(StandardCharsets.UTF_8), checksum);
        String written = checksum.toString(StandardCharsets.UTF_8).strip();
        if (!PACK_CHECKSUM.matcher(written).matches())
            throw new R2Exception(R2Common.EXIT_FAILED, "git pack-objects in " + gitDir + " wrote no single pack: " + written);
        Path pack = Path.of(local + ".pack");
        Path index = Path.of(local + ".idx");
        Files.move(Path.of(base + "-" + written + ".pack"), pack);
        Files.move(Path.of(base + "-" + written + ".idx"), index);
        return new Pack(Sha256.ofFile(pack, name + ".pack"), pack, Sha256.ofFile(index, name + ".idx"), index, packObjectCount(pack));
    }

    /**
     * The first link of a repository whose objects are all in one pack (fresh from a clone or a gc): that pack
     * and git's index of it, hashed where they are and uploaded from there, where pack-objects, reusing every
     * object as it is, would write the same pack again at seconds per GiB. Git never changes a pack once
     * named; a repack that removes it before its upload ends fails that upload, and the next sync starts
     * afresh. Empty when objects are anywhere else too (loose, another pack, a pack being written, alternates,
     * a promisor remote) or a tip is not in the repo: pack-objects then decides what belongs.
     */
    static Optional<Pack> onlyPack(Path gitDir, Collection<String> tips, String name) throws IOException {
        Optional<Path> only = onlyPackFile(gitDir.resolve("objects"));
        if (only.isEmpty() || !allPresent(gitDir, tips)) return Optional.empty();
        Path pack = only.get();
        String packName = pack.getFileName().toString();
        Path index = pack.resolveSibling(packName.replaceFirst("\\.pack$", ".idx"));
        int hashBytes = (packName.length() - "pack-".length() - ".pack".length()) / 2;
        if (hashBytes != 20 && hashBytes != 32) return Optional.empty();
        try {
            // An index ends with its pack's checksum, then its own.
            if (!Arrays.equals(read(pack, -hashBytes, hashBytes), read(index, -2L * hashBytes, hashBytes))) return Optional.empty();
            return Optional.of(new Pack(Sha256.ofFile(pack, name + ".pack"), pack, Sha256.ofFile(index, name + ".idx"), index,
                    packObjectCount(pack)));
        } catch (NoSuchFileException e) {
            return Optional.empty();   // removed by a repack meanwhile
        }
    }

    /** The one pack of an objects directory that keeps nothing anywhere else; empty otherwise. */
    private static Optional<Path> onlyPackFile(Path objects) throws IOException {
        if (Files.exists(objects.resolve("info/alternates")) || !Files.isDirectory(objects.resolve("pack"))) return Optional.empty();
        try (DirectoryStream<Path> dirs = Files.newDirectoryStream(objects, p -> LOOSE_DIR.matcher(p.getFileName().toString()).matches())) {
            for (Path dir : dirs) {
                try (DirectoryStream<Path> loose = Files.newDirectoryStream(dir)) {
                    if (loose.iterator().hasNext()) return Optional.empty();
                }
            }
        }
        List<Path> packs = new ArrayList<>();
        try (DirectoryStream<Path> files = Files.newDirectoryStream(objects.resolve("pack"))) {
            for (Path file : files) {
                String n = file.getFileName().toString();
                if (n.endsWith(".promisor") || n.startsWith("tmp_")) return Optional.empty();
                if (n.endsWith(".pack")) packs.add(file);
            }
        }
        return packs.size() == 1 ? Optional.of(packs.get(0)) : Optional.empty();
    }

    /** Loose objects live in objects/ab/cdef...: a directory per first byte. */
    private static final java.util.regex.Pattern LOOSE_DIR = java.util.regex.Pattern.compile("[0-9a-f]{2}");

    /** True when the git directory has every one of these objects. */
    private static boolean allPresent(Path gitDir, Collection<String> objects) {
        if (objects.isEmpty()) return true;
        String in = objects.stream().distinct().map(sha -> sha + "\n").collect(Collectors.joining());
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        Git.pipe(gitDir, List.of("--git-dir=" + gitDir), List.of("cat-file", "--batch-check=%(objectname)"),
                in.getBytes(StandardCharsets.UTF_8), out);
        return out.toString(StandardCharsets.UTF_8).lines().noneMatch(l -> l.endsWith(" missing"));
    }

    /** A SHA-1 or SHA-256 repository's pack checksum, as git names the pack. */
    private static final java.util.regex.Pattern PACK_CHECKSUM = java.util.regex.Pattern.compile("[0-9a-f]{40}|[0-9a-f]{64}");

    record Pack(FileEntry pack, Path packFile, FileEntry index, Path indexFile, long objects) {}

    /** A pack starts "PACK", version, object count (big-endian 32-bit). */
    private static long packObjectCount(Path pack) throws IOException {
        byte[] header = read(pack, 0, 12);
        return header.length < 12 ? -1 : Integer.toUnsignedLong(java.nio.ByteBuffer.wrap(header).getInt(8));
    }

    /** Up to length bytes of a file from offset (from the end when offset is negative). */
    private static byte[] read(Path file, long offset, int length) throws IOException {
        try (var ch = java.nio.channels.FileChannel.open(file, StandardOpenOption.READ)) {
            java.nio.ByteBuffer buf = java.nio.ByteBuffer.allocate(length);
            ch.read(buf, offset >= 0 ? offset : Math.max(0, ch.size() + offset));
            return Arrays.copyOf(buf.array(), buf.position());
        }
    }

    /**
     * The commits, of those given, that this git directory has (a tag is followed to its commit): the
     * prerequisites a new link may name. Whatever a force-push or gc removed is no longer one.
     */
    static List<String> commitsPresent(Path gitDir, Collection<String> objects) {
        if (objects.isEmpty()) return List.of();
        String in = objects.stream().distinct().map(sha -> sha + "^{commit}\n").collect(Collectors.joining());
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        Git.pipe(gitDir, List.of("--git-dir=" + gitDir), List.of("cat-file", "--batch-check=%(objectname) %(objecttype)"),
                in.getBytes(StandardCharsets.UTF_8), out);
        return out.toString(StandardCharsets.UTF_8).lines().map(l -> l.split(" "))
                .filter(f -> f.length == 2 && f[1].equals("commit")).map(f -> f[0]).distinct().sorted().collect(Collectors.toList());
    }

    // --- work trees -------------------------------------------------------------------------------

    /** What `git status` shows of a work tree, counted, with a hash of the whole porcelain v2 listing. */
    record Status(int staged, int modified, int untracked, String sha256) {
        String counts() {
            return staged + " staged, " + modified + " modified, " + untracked + " untracked";
        }
    }

    /** The work tree's HEAD, branch and status. The work tree is found from cwd, or named by gitArgs. */
    static WorkTreeFacts inspect(String path, String gitDir, Path cwd, List<String> gitArgs) {
        ProcResult branch = Git.run(cwd, gitArgs, "symbolic-ref", "-q", "HEAD");
        ProcResult head = Git.run(cwd, gitArgs, "rev-parse", "-q", "--verify", "HEAD");
        Status s = status(cwd, gitArgs);
        return new WorkTreeFacts(path, gitDir, head.ok() ? head.stdout().strip() : null,
                branch.ok() ? branch.stdout().strip() : null, s.staged(), s.modified(), s.untracked(), s.sha256());
    }

    /**
     * `git status --porcelain=v2` as the operator reads it (an untracked directory is one entry). A submodule counts
     * by its commit alone: asking what its work tree holds starts a git in it, under its own config, whose drivers
     * Git did not list. The submodule is a work tree of the town: its own status says what it holds.
     */
    static Status status(Path cwd, List<String> gitArgs) {
        String out = Git.check(cwd, gitArgs, "status", "--porcelain=v2", "-z", "--ignore-submodules=dirty").stdout();
        int staged = 0, modified = 0, untracked = 0;
        String[] fields = out.split("\0");
        for (int i = 0; i < fields.length; i++) {
            String f = fields[i];
            if (f.length() < 4) continue;
            char kind = f.charAt(0);
            if (kind == '?') untracked++;
            else if (kind == '1' || kind == '2' || kind == 'u') {
                if (f.charAt(2) != '.') staged++;
                if (f.charAt(3) != '.') modified++;
                if (kind == '2') i++;   // a rename's original path follows as a field of its own
            }
        }
        return new Status(staged, modified, untracked, Sha256.of(out.getBytes(StandardCharsets.UTF_8)));
    }

    // --- restore ------------------------------------------------------------------------------------

    /**
     * Rebuilds a git directory whose files (HEAD, config, index, logs/, ...) are already in place: puts each
     * link's pack and index into objects/pack (a format 3 link, a bundle, is unbundled: each bundle's
     * prerequisites are in the links before it), writes the refs as they were (symbolic ones too), marks a
     * partial clone's packs as coming from its promisor remote, then checks refs and `git fsck` (check says
     * how deep). The link files (downloaded: snapshot path -> local file) are moved, not copied. Runs no hook
     * and writes no reflog entry.
     */
    static void restore(Path gitDir, RepoFacts repo, java.util.function.Function<String, Path> downloaded, Check check)
            throws IOException {
        // The git directory's other files came from the file index: none of what is written here may be a symlink.
        for (String dir : List.of("objects/pack", "objects/info", "refs/heads", "refs/tags"))
            Files.createDirectories(SafePath.requireInside(gitDir, dir, "git directory part"));
        // A pack and its index end with checksums as long as the repo's object ids (SHA-1 or SHA-256).
        int hashBytes = repo.chain().stream().allMatch(ChainLink::bundle) ? 0
                : git(gitDir, "rev-parse", "--show-object-format").strip().equals("sha256") ? 32 : 20;
        for (ChainLink link : repo.chain()) {
            if (link.bundle()) git(gitDir, "bundle", "unbundle", downloaded.apply(link.file()).toString());
            else placePack(gitDir, downloaded.apply(link.file()), downloaded.apply(link.index()), link.file(), hashBytes);
        }
        if (repo.promisor() && !repo.chain().isEmpty()) markPromisorPacks(gitDir);
        writeRefs(gitDir, repo);
        Refs restored = refs(gitDir);
        if (!restored.refs().equals(repo.refs()) || !restored.symrefs().equals(repo.symrefs()))
            throw new SnapshotDamaged("repo " + repo.path() + " restored with refs that differ from the manifest");
        List<String> fsckCommand = new ArrayList<>(List.of("fsck", "--no-dangling", "--no-progress"));
        if (check == Check.CONNECTIVITY) fsckCommand.add("--connectivity-only");
        ProcResult fsck = Git.run(gitDir, List.of("--git-dir=" + gitDir), fsckCommand.toArray(String[]::new));
        if (fsck.ok()) return;
        // A repo the sync could not read was carried over from an older snapshot: its objects are that
        // snapshot's, its files (reflogs, index) this one's, so they may name objects it lacks. Said, not fatal.
        if (repo.carriedFrom() == null)
            throw new SnapshotDamaged("git fsck of " + repo.path() + ": " + fsck.tail());
        Log.warn("restore: repo " + repo.path() + " is the copy carried over from " + repo.carriedFrom() + " (the sync could "
                + "not read it); its reflogs or index name objects that copy lacks: " + fsck.tail());
    }

    /**
     * How deep a restore checks a rebuilt git directory. CONNECTIVITY: every object the refs, reflogs and indexes
     * name is there (the packs' bytes are the ones backed up: their sha256 was checked while they downloaded).
     * EVERY_OBJECT: also each object hashed again and parsed (`git fsck`; what --verify runs, as it is slower).
     */
    enum Check { CONNECTIVITY, EVERY_OBJECT }

    /**
     * Puts a pack and its index into objects/pack under the name git gives them (pack-{the pack's checksum}),
     * the index last: git finds a pack by its index. Git refuses a pack whose index was written for another;
     * a mismatch is said here first, naming the link.
     */
    private static void placePack(Path gitDir, Path pack, Path index, String link, int hashBytes) throws IOException {
        // A pack ends with its checksum; an index (v1 and v2) with the pack's checksum, then its own.
        String checksum = HexFormat.of().formatHex(read(pack, -hashBytes, hashBytes));
        String indexed = HexFormat.of().formatHex(read(index, -2L * hashBytes, hashBytes));
        if (!checksum.equals(indexed))
            throw new SnapshotDamaged("chain link " + link + ": its index is not the index of its pack");
        Path packs = gitDir.resolve("objects/pack");
        if (Files.exists(packs.resolve("pack-" + checksum + ".idx"))) return;   // an earlier link held this very pack
        Files.move(pack, packs.resolve("pack-" + checksum + ".pack"));
        Files.move(index, packs.resolve("pack-" + checksum + ".idx"));
    }

    private static void writeRefs(Path gitDir, RepoFacts repo) throws IOException {
        StringBuilder packed = new StringBuilder();
        repo.refs().forEach((name, object) -> {
            if (!repo.symrefs().containsKey(name)) packed.append(object).append(' ').append(name).append('\n');
        });
        Files.writeString(SafePath.requireInside(gitDir, "packed-refs", "packed-refs"), packed.toString(), StandardCharsets.UTF_8);
        for (Map.Entry<String, String> symref : repo.symrefs().entrySet()) {
            Path file = SafePath.requireInside(gitDir, symref.getKey(), "ref");
            Files.createDirectories(file.getParent());
            Files.writeString(file, "ref: " + symref.getValue() + "\n", StandardCharsets.UTF_8);
        }
    }

    private static void markPromisorPacks(Path gitDir) throws IOException {
        for (Path pack : FileTrees.sortedChildren(gitDir.resolve("objects/pack"))) {
            String name = pack.getFileName().toString();
            if (!name.endsWith(".pack")) continue;
            Path marker = pack.resolveSibling(name.substring(0, name.length() - ".pack".length()) + ".promisor");
            if (!Files.exists(marker)) Files.createFile(marker);
        }
    }

    /** Runs git on a git directory and returns its stdout; a non-zero exit is an error naming the command. */
    static String git(Path gitDir, String... args) {
        return Git.check(gitDir, List.of("--git-dir=" + gitDir), args).stdout();
    }
}

/**
 * When a repository's chain starts over. Each cycle that changes a repo adds a link: a pack of what is new
 * since the chain's tips; a restore applies them in order. A long chain is folded: its increments are
 * replaced by one pack of everything since the first (re-uploading only the increments), and once the
 * increments outweigh half the first link, a new full pack starts a new chain.
 */
final class PackChain {
    /** Links in a chain before the increments are folded into one. */
    static final int MAX_LINKS = 32;

    private PackChain() {}

    /** Keep the first `keep` links of the chain; write the next one with these prerequisites (none: a full pack). */
    record Plan(int keep, List<String> prerequisites) {}

    /** sizes: the bytes each link of the chain holds, in order. */
    static Plan plan(Path gitDir, List<ChainLink> chain, List<Long> sizes) {
        if (chain.isEmpty()) return new Plan(0, List.of());
        long first = sizes.get(0);
        long increments = sizes.stream().skip(1).mapToLong(Long::longValue).sum();
        if (increments > first / 2) return new Plan(0, List.of());
        int keep = chain.size() >= MAX_LINKS ? 1 : chain.size();
        List<String> tips = chain.subList(0, keep).stream().flatMap(l -> l.tips().stream()).collect(Collectors.toList());
        List<String> prerequisites = GitRepo.commitsPresent(gitDir, tips);
        return prerequisites.isEmpty() ? new Plan(0, List.of()) : new Plan(keep, prerequisites);
    }
}

/**
 * How a git directory gets into a snapshot: its objects and refs as a chain of packs (PackChain), and what each of
 * its work trees holds that no commit does, recorded beside it. (Its other files, HEAD, config, index, hooks, are in
 * the file packs; GitRepo.restore rebuilds it, and Rebuild compares its work trees.)
 */
final class GitCapture {
    private GitCapture() {}

    /**
     * What each work tree holds that no commit does (staged, modified, untracked files), by the git directory
     * its .git leads to. Read just before the files are packed, so the counts describe the packs.
     */
    static Map<Path, List<WorkTreeFacts>> inspectWorkTrees(Town town, Snapshot snapshot) {
        Map<Path, List<WorkTreeFacts>> byRepo = new HashMap<>();
        for (Town.WorkTree wt : town.workTrees()) {
            Path dir = town.root().resolve(wt.path());
            try {
                if (wt.gitDir() == null || !Files.isDirectory(wt.gitDir()))
                    throw new IOException("its .git leads to " + (wt.gitDir() == null ? "nothing readable" : wt.gitDir()) + ", which is missing");
                Path common = commonDir(wt.gitDir());
                byRepo.computeIfAbsent(common, k -> new ArrayList<>()).add(GitRepo.inspect(wt.path(), town.named(wt.gitDir()), dir, List.of()));
            } catch (IOException | R2Exception e) {
                // Its files are packed all the same; only the record of its git state is missing.
                Log.warn("sync " + snapshot.timestamp() + ": work tree " + SafePath.shown(wt.path()) + ": git state not recorded: " + R2Cli.messageChain(e));
            }
        }
        return byRepo;
    }

    /** A linked worktree's git directory names the repository it belongs to in commondir. */
    private static Path commonDir(Path gitDir) throws IOException {
        Path commondir = gitDir.resolve("commondir");
        if (!Files.isRegularFile(commondir)) return gitDir.toRealPath();
        return gitDir.resolve(Files.readString(commondir).strip()).normalize().toRealPath();
    }

    /**
     * Every git directory's objects and refs as a chain of packs: unchanged, the previous snapshot's chain;
     * changed, that chain plus a pack of what is new since (PackChain says when to start over).
     */
    static void packRepos(Town town, Map<Path, List<WorkTreeFacts>> workTrees, Snapshot snapshot, Manifest base) {
        for (Town.GitDir gitDir : town.gitDirs()) {
            String repoPath = gitDir.path();
            RepoFacts before = base == null ? null : base.repo(repoPath).orElse(null);
            List<FileEntry> beforeFiles = before == null ? List.of()
                    : before.chain().stream().flatMap(l -> base.filesOf(l).stream()).collect(Collectors.toList());
            snapshot.attempt("repo " + repoPath, beforeFiles, null, before, () -> {
                Instant t = Instant.now();
                Path dir = town.root().resolve(repoPath);
                GitRepo.Refs refs = GitRepo.refs(dir);
                String fingerprint = GitRepo.fingerprint(dir, refs);
                List<WorkTreeFacts> trees = workTrees.getOrDefault(dir.toRealPath(), List.of());
                boolean chainStored = before != null && beforeFiles.stream().allMatch(snapshot::stored);
                List<ChainLink> links;
                if (!hasObjects(dir)) {
                    links = List.of();
                    Log.info("sync " + snapshot.timestamp() + ": git " + repoPath + " has no objects yet; recorded");
                } else if (chainStored && !before.empty() && fingerprint.equals(before.fingerprint())) {
                    links = before.chain();
                    beforeFiles.forEach(snapshot::reuse);
                    Log.info("sync " + snapshot.timestamp() + ": git " + repoPath + " unchanged since " + base.timestamp());
                } else {
                    links = extendChain(dir, repoPath, refs, chainStored ? before.chain() : List.of(), base, snapshot);
                    Log.info("sync " + snapshot.timestamp() + ": git " + repoPath + " " + refs.refs().size() + " refs, chain of "
                            + links.size() + " packs, in " + Log.seconds(Duration.between(t, Instant.now())));
                }
                snapshot.repos().add(new RepoFacts(repoPath, links, refs.refs(), refs.symrefs(), GitRepo.promisor(dir),
                        fingerprint, trees, null));
            });
        }
    }

    /**
     * The chain after this cycle: the kept part of the previous one (base's), and a pack of what it lacks (if
     * anything). A chain started afresh from a repo that keeps everything in one pack begins with that pack.
     */
    private static List<ChainLink> extendChain(Path dir, String repoPath, GitRepo.Refs refs, List<ChainLink> chain, Manifest base,
                                        Snapshot snapshot) throws IOException {
        List<Long> sizes = chain.stream().map(l -> base.filesOf(l).stream().mapToLong(FileEntry::size).sum())
                .collect(Collectors.toList());
        PackChain.Plan plan = PackChain.plan(dir, chain, sizes);
        List<ChainLink> links = new ArrayList<>(chain.subList(0, plan.keep()));
        links.forEach(l -> base.filesOf(l).forEach(snapshot::reuse));
        String name = Keys.gitPacks(repoPath) + "/" + links.size();
        Optional<GitRepo.Pack> own = plan.prerequisites().isEmpty() ? GitRepo.onlyPack(dir, refs.refs().values(), name) : Optional.empty();
        if (own.isPresent())
            Log.info("sync " + snapshot.timestamp() + ": git " + repoPath + " keeps every object in one pack: that pack goes up as it is");
        GitRepo.Pack pack = own.isPresent() ? own.get()
                : GitRepo.writePack(dir, refs.refs().values(), plan.prerequisites(), snapshot.dir().resolve(name), name);
        if (own.isEmpty() && pack.objects() == 0 && plan.keep() == chain.size() && !chain.isEmpty()) {
            // only refs moved: the chain holds every object, the manifest the refs
            Files.delete(pack.packFile());
            Files.delete(pack.indexFile());
            return links;
        }
        snapshot.add(pack.pack(), pack.packFile());
        snapshot.add(pack.index(), pack.indexFile());
        links.add(new ChainLink(pack.pack().path(), pack.index().path(), plan.prerequisites(),
                GitRepo.commitsPresent(dir, refs.refs().values())));
        return links;
    }

    /** False for a git directory that holds no object yet (`git init` and nothing since). */
    private static boolean hasObjects(Path gitDir) throws IOException {
        try (Stream<Path> s = Files.walk(gitDir.resolve("objects"), 2)) {
            return s.anyMatch(p -> Files.isRegularFile(p) && !p.getParent().getFileName().toString().equals("info"));
        }
    }
}

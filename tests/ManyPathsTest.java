import org.junit.jupiter.api.Test;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.FileVisitResult;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.nio.file.SimpleFileVisitor;
import java.nio.file.attribute.BasicFileAttributes;
import java.time.Duration;
import java.util.*;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Collectors;

import static org.junit.jupiter.api.Assertions.*;

/**
 * A town of more than 200,000 paths round-trips with exactly the JVM options the repo's scripts ship (their
 * //JAVA_OPTIONS, -Xmx128m): a first sync, a second one after a small change, a restore onto an empty volume on a
 * new machine, --verify, and the first sync from the restored volume. Each step must exit 0 without an
 * OutOfMemoryError, and is checked by what it uploaded. A test of memory and correctness, not of time: the steps
 * get generous timeouts, and their durations are printed, never asserted.
 *
 * <p>The town: mayor/town.json and a rig alpha with four crew checkouts, each a git repository whose tracked
 * vendor/ holds 20,000 small files (different in each checkout) and whose ignored node_modules/ holds 30,000 tiny
 * files, the same in every checkout (so each of those contents must be stored once, not four times), plus hard
 * links: two names in each node_modules, and one file with three names across the rig.
 *
 * <p>Product.java starts the product's main classes with no JVM option at all (the JVM's default heap, a quarter
 * of the machine's memory), so this test starts them itself, with the options read from the scripts'
 * //JAVA_OPTIONS lines, which is the java command line JBang builds for them (the suite's classpath in place of
 * JBang's). JAVA_TOOL_OPTIONS and its kin are removed from the environment, so nothing else is added. The suite's
 * own JVM gets the same //JAVA_OPTIONS (through its //SOURCES of the scripts), so this test streams the file index
 * and compares the trees a directory at a time: it never holds 200,000 entries either.
 */
class ManyPathsTest {
    private static final String TOWN = "many-paths";
    private static final int CHECKOUTS = 4;
    private static final int VENDOR_LIBS = 200;
    private static final int VENDOR_FILES = 100;    // 20,000 tracked files per checkout
    private static final int MODULES = 1000;
    private static final int MODULE_FILES = 30;     // 30,000 ignored files per checkout, the same in each
    private static final Duration STEP_TIMEOUT = Duration.ofMinutes(30);
    private static final Pattern FILES_LINE = Pattern.compile(
            ": files: (\\d+) paths, (\\d+) read again \\((\\d+) of them held by a pack already\\), .* in (\\d+) new packs \\(");
    private static final Pattern UPLOADED_LINE = Pattern.compile(": uploaded (\\d+) files \\((.+?) in (\\d+) objects\\), (\\d+) already stored");

    private final S3Server s3 = S3Server.shared();

    @Test
    void aTownOfMoreThan200000PathsRoundTripsUnderTheShippedHeap() throws Exception {
        Path dir = TestTools.tempDir("many-paths-");
        Path volume = Files.createDirectories(TestTools.tempDir("many-paths-volume-").resolve("data"));
        List<Path> scratch = new ArrayList<>();
        try {
            long t0 = System.nanoTime();
            Built town = build(dir.resolve("town"));
            long walked = countPaths(town.root());
            System.out.printf("      ManyPathsTest: built %,d paths (%,d files written; %,d paths outside git object stores) in %.1f s%n",
                    town.paths(), town.files(), walked, (System.nanoTime() - t0) / 1e9);
            assertTrue(town.paths() >= 200_000, "at least 200,000 paths: " + town.paths());
            assertEquals(expectedLinkGroups(), hardLinkGroups(town.root()), "the hard links as built");

            String bucket = s3.newBucket();
            BucketView view = BucketView.of(s3, bucket, TOWN);
            String objects = view.keys().objects();
            Product here = Product.of(town.root(), s3, bucket, TOWN);
            scratch.add(here.scratch());

            // ---- sync 1: everything goes up; every node_modules content once ----
            TestTools.ProcResult first = run("sync 1", here, "R2Sync", "--immediate");
            String ts1 = view.latest().orElseThrow().timestamp();
            Manifest m1 = view.manifest(ts1);
            assertEquals(Manifest.FORMAT, m1.formatVersion());
            assertTrue(m1.problems().isEmpty(), m1.problems().toString());
            long[] files1 = filesLine(first);
            assertTrue(files1[2] >= (CHECKOUTS - 1L) * MODULES * MODULE_FILES,
                    "the node_modules contents of three checkouts are held by a pack already: " + line(first, ": files: "));
            SortedMap<String, Long> after1 = view.sizes(objects);
            assertEquals(after1.size(), uploadedObjects(first), "a first sync uploads every object the bucket holds: " + line(first, ": uploaded "));

            // The index, streamed (the suite's JVM runs with the same 128 MiB heap: it cannot hold 200,000 entries).
            List<Path> pieces1 = pieces(view, ts1, scratch);
            assertEquals(List.of(), compareWithIndex(town.root(), pieces1), "the index names every path of the town, and no other");
            long entries1 = 0;
            long racy1 = 0;
            long fileBytes = 0;
            Set<String> hardLinks = new HashSet<>();
            Map<String, TownEntry.Blob> moduleBlobs = new HashMap<>();   // node_modules/<path> -> its blob in c0
            List<String> moduleMismatch = new ArrayList<>();
            Map<String, Integer> packNumbers = new HashMap<>();
            Map<Long, Long> placeBySha = new HashMap<>();                 // a sha256's first 8 bytes -> pack and offset
            Map<Long, Long> lengthByPlace = new HashMap<>();
            List<String> twice = new ArrayList<>();
            try (IndexReader index = IndexReader.index(pieces1)) {
                for (TownEntry e; (e = index.next()) != null; ) {
                    entries1++;
                    if (e.racy()) racy1++;
                    if (e.type() == TownEntry.HARDLINK) hardLinks.add(e.path());
                    if (e.type() != TownEntry.FILE) continue;
                    fileBytes += e.size();
                    TownEntry.Blob b = e.blob();
                    long place = ((long) packNumbers.computeIfAbsent(b.pack(), k -> packNumbers.size()) << 40) | b.offset();
                    Long known = placeBySha.putIfAbsent(Long.parseUnsignedLong(b.sha256().substring(0, 16), 16), place);
                    if (known != null && known != place && twice.size() < 5) twice.add(e.path() + " (" + b.sha256() + ")");
                    lengthByPlace.put(place, b.length());
                    int at = e.path().indexOf("/node_modules/");
                    if (at < 0 || !e.path().startsWith("alpha/crew/c") || e.path().contains("/.bin/")) continue;
                    String module = e.path().substring(at + "/node_modules/".length());
                    TownEntry.Blob c0 = moduleBlobs.putIfAbsent(module, b);
                    if (c0 != null && !c0.equals(b) && moduleMismatch.size() < 5) moduleMismatch.add(e.path() + ": " + b + " vs " + c0);
                }
            }
            assertEquals(walked, entries1, "the index holds every path of the town");
            assertEquals(walked, files1[0], "the sync saw every path of the town: " + line(first, ": files: "));
            assertEquals(new HashSet<>(town.linkedNames()), hardLinks, "the second names of a file are recorded as hard links");
            assertEquals(List.of(), moduleMismatch, "node_modules contents stored once for all checkouts");
            assertEquals(List.of(), twice, "contents stored in more than one place");
            // The packs hold those frames and nothing else: not a byte for a second copy.
            long packBytes = m1.filesUnder("files/packs").stream().mapToLong(FileEntry::size).sum();
            long frameBytes = lengthByPlace.values().stream().mapToLong(Long::longValue).sum();
            System.out.printf("      ManyPathsTest: sync 1: %,d index entries in %d pieces (%,d racy), %,d bytes in file entries, "
                            + "%,d distinct contents in %,d pack bytes (%d packs)%n", entries1, pieces1.size(), racy1, fileBytes,
                    placeBySha.size(), packBytes, m1.filesUnder("files/packs").size());
            assertEquals(frameBytes, packBytes, "the packs are exactly the frames the index names");
            assertTrue(packBytes < fileBytes / 2, "packs of " + packBytes + " bytes for " + fileBytes + " bytes of files");
            moduleBlobs = null;
            placeBySha = null;
            lengthByPlace = null;

            // ---- sync 2 after a small change in one checkout: a small pack and a few index pieces ----
            Path c2 = town.root().resolve(checkout(2));
            Files.writeString(c2.resolve("vendor/lib007/f42.txt"), "an edit to a tracked file\n", java.nio.file.StandardOpenOption.APPEND);
            Files.writeString(c2.resolve("node_modules/pkg0500/f07.js"), "module.exports = 'patched in c2';\n");
            Files.writeString(c2.resolve("NOTES.md"), "# notes\nwork in progress\n");
            Set<String> edited = Set.of(checkout(2) + "/vendor/lib007/f42.txt", checkout(2) + "/node_modules/pkg0500/f07.js",
                    checkout(2) + "/NOTES.md");
            TestTools.ProcResult second = run("sync 2", here, "R2Sync", "--immediate");
            String ts2 = view.latest().orElseThrow().timestamp();
            assertNotEquals(ts1, ts2);
            Manifest m2 = view.manifest(ts2);
            assertTrue(m2.problems().isEmpty(), m2.problems().toString());
            long[] files2 = filesLine(second);
            assertEquals(walked + 1, files2[0], line(second, ": files: "));
            assertTrue(files2[1] <= edited.size() + 1 + racy1, "only the edits, their directory and the paths racy at sync 1 ("
                    + racy1 + ") are read again: " + line(second, ": files: "));
            assertEquals(1, files2[3], "one new pack: " + line(second, ": files: "));
            SortedMap<String, Long> after2 = view.sizes(objects);
            SortedMap<String, Long> new2 = added(after1, after2);
            Map<String, Long> newPacks2 = under(new2, objects + PackWriter.DIR);
            Map<String, Long> newPieces2 = under(new2, objects + IndexWriter.DIR);
            System.out.printf("      ManyPathsTest: sync 2 added %d objects (%,d bytes): %s%n", new2.size(),
                    new2.values().stream().mapToLong(Long::longValue).sum(), new2);
            assertEquals(1, newPacks2.size(), "one new pack: " + new2);
            assertTrue(newPacks2.values().iterator().next() < 64 * 1024, "the new pack is small: " + newPacks2);
            assertTrue(!newPieces2.isEmpty() && newPieces2.size() <= 6, newPieces2.size() + " of " + m2.fileIndex().size() + " index pieces changed");
            assertEquals(Map.of(), minus(new2, newPacks2, newPieces2), "nothing else is new (no git pack: no repo changed)");
            assertEquals(new2.size(), uploadedObjects(second), "uploaded exactly the new objects: " + line(second, ": uploaded "));

            List<Path> pieces2 = pieces(view, ts2, scratch);
            Set<String> allowed2 = new HashSet<>(edited);
            allowed2.add(checkout(2));   // NOTES.md is new in it
            List<String> unexpected2 = new ArrayList<>();
            Set<String> changed2 = new TreeSet<>();
            compareIndexes(pieces1, pieces2, (before, now) -> {
                String p = (now != null ? now : before).path();
                if (allowed2.contains(p)) {
                    changed2.add(p);
                    if (p.endsWith("/NOTES.md") || now.type() != TownEntry.FILE) return;
                    if (before.blob().sha256().equals(now.blob().sha256())) unexpected2.add(p + " has not its new content");
                } else if (before == null || !before.racy()) {
                    if (unexpected2.size() < 20) unexpected2.add(before + " -> " + now);
                }
            });
            assertEquals(List.of(), unexpected2, "entries changed by sync 2 that no edit explains");
            assertTrue(changed2.containsAll(edited), "the edits are in the index: " + changed2);

            // ---- restore onto an empty volume on a new machine ----
            Map<String, TownState> gitFacts = new TreeMap<>();
            for (int c = 0; c < CHECKOUTS; c++) gitFacts.put(checkout(c), gitFacts(town.root().resolve(checkout(c))));
            Product fresh = Product.of(volume, s3, bucket, TOWN).onNewMachine();
            scratch.add(fresh.scratch());
            TestTools.ProcResult restore = run("restore", fresh, "R2Restore");
            assertTrue(restore.stderr().contains("restored from snapshot " + ts2), restore.stderr());
            assertFalse(Files.exists(volume.resolve(".r2-restore")), "staging removed");
            List<String> treeDiffs = new ArrayList<>();
            long compared = compareTrees(town.root(), volume, "", treeDiffs);
            System.out.printf("      ManyPathsTest: restore: %,d paths compared with the town%n", compared);
            assertEquals(List.of(), treeDiffs, "the restored tree differs (path, type, mode, size, mtime or content)");
            assertEquals(walked + 1, compared, "every path came back");
            assertEquals(expectedLinkGroups(), hardLinkGroups(volume), "hard links come back as one inode with several names");
            for (int c = 0; c < CHECKOUTS; c++) {
                TownState want = gitFacts.get(checkout(c));
                TownState got = gitFacts(volume.resolve(checkout(c)));
                assertEquals("", want.diff(got), checkout(c) + ": refs, HEAD and git status as backed up");
            }

            // ---- --verify ----
            TestTools.ProcResult verify = run("verify", fresh, "R2Restore", "--verify");
            assertTrue(verify.stderr().contains("verify: snapshot " + ts2 + " is complete and restores"), verify.stderr());

            // ---- the first sync from the restored volume: no new content ----
            TestTools.ProcResult third = run("sync 3 (restored volume)", fresh, "R2Sync", "--immediate");
            String ts3 = view.latest().orElseThrow().timestamp();
            assertNotEquals(ts2, ts3);
            assertTrue(view.manifest(ts3).problems().isEmpty(), view.manifest(ts3).problems().toString());
            SortedMap<String, Long> new3 = added(after2, view.sizes(objects));
            System.out.printf("      ManyPathsTest: sync 3 added %d objects (%,d bytes): %s%n", new3.size(),
                    new3.values().stream().mapToLong(Long::longValue).sum(), new3);
            assertEquals(Map.of(), under(new3, objects + PackWriter.DIR), "no new pack: the restored town holds no new content");
            long[] files3 = filesLine(third);
            assertEquals(walked + 1, files3[0], line(third, ": files: "));
            assertEquals(0, files3[3], line(third, ": files: "));
            assertEquals(new3.size(), uploadedObjects(third), "uploaded exactly the new objects: " + line(third, ": uploaded "));
            List<Path> pieces3 = pieces(view, ts3, scratch);
            long[] racy2 = {0};
            try (IndexReader index = IndexReader.index(pieces2)) {
                for (TownEntry e; (e = index.next()) != null; ) if (e.racy()) racy2[0]++;
            }
            List<String> unexpected3 = new ArrayList<>();
            long[] reread3 = {0};
            compareIndexes(pieces2, pieces3, (before, now) -> {
                boolean sameContent = before != null && now != null && before.type() == now.type()
                        && Objects.equals(before.blob() == null ? null : before.blob().sha256(), now.blob() == null ? null : now.blob().sha256());
                if (before != null && before.racy() && sameContent) reread3[0]++;
                else if (unexpected3.size() < 20) unexpected3.add(before + " -> " + now);
            });
            System.out.printf("      ManyPathsTest: sync 3: %d entries racy at sync 2, %d recorded again with the same content%n", racy2[0], reread3[0]);
            assertEquals(List.of(), unexpected3, "index entries the restore changed (only racy ones may be read again)");
            assertTrue(files3[1] <= racy2[0], "only the paths racy at sync 2 (" + racy2[0] + ") are read again: " + line(third, ": files: "));
            assertEquals(Map.of(), minus(new3, under(new3, objects + IndexWriter.DIR)), "nothing but index pieces may be new after a restore");
        } finally {
            TestTools.deleteRecursively(dir);
            TestTools.deleteRecursively(volume.getParent());
            scratch.forEach(TestTools::deleteRecursively);
        }
    }

    // ---------------------------------------------------------------------------------------------
    // The product, with the scripts' JVM options
    // ---------------------------------------------------------------------------------------------

    /**
     * Runs one of the product's main classes as the scripts do: java, the script's //JAVA_OPTIONS, the classpath,
     * the main class. Prints its log and asserts exit 0 and no OutOfMemoryError. GNU time, when present, adds one
     * line with the process's peak RSS (it passes nothing to the JVM).
     */
    private static TestTools.ProcResult run(String step, Product p, String main, String... args) {
        List<String> cmd = new ArrayList<>();
        if (Files.isExecutable(Path.of("/usr/bin/time"))) cmd.addAll(List.of("/usr/bin/time", "-f", "GNU time: peak RSS %M KiB, %e s"));
        cmd.add(TestTools.java());
        cmd.addAll(shippedOptions(main + ".java"));
        cmd.addAll(List.of("-cp", System.getProperty("java.class.path"), main));
        cmd.addAll(List.of(args));
        Map<String, String> env = new HashMap<>(p.env());
        for (String v : List.of("JAVA_TOOL_OPTIONS", "JDK_JAVA_OPTIONS", "_JAVA_OPTIONS")) env.put(v, TestTools.UNSET);
        long t0 = System.nanoTime();
        TestTools.ProcResult r = TestTools.run(cmd, p.scratch(), env, null, STEP_TIMEOUT);
        System.out.printf("      ManyPathsTest %s: %s %s, exit %d in %.1f s%n", step, main, String.join(" ", shippedOptions(main + ".java")),
                r.exitCode(), (System.nanoTime() - t0) / 1e9);
        r.stderr().lines().forEach(l -> System.out.println("      ManyPathsTest " + step + " | " + l));
        System.out.flush();
        assertFalse((r.stdout() + r.stderr()).contains("OutOfMemoryError"), step + ": OutOfMemoryError:\n" + TestTools.tail(r.stderr(), 8000));
        assertEquals(0, r.exitCode(), step + " exit code:\n" + TestTools.tail(r.stderr(), 8000));
        return r;
    }

    /** The JVM options a script ships: its //JAVA_OPTIONS lines, which JBang puts on the java command line. */
    private static List<String> shippedOptions(String script) {
        try {
            List<String> options = Files.readAllLines(TestTools.repo().resolve(script)).stream()
                    .filter(l -> l.startsWith("//JAVA_OPTIONS "))
                    .flatMap(l -> Arrays.stream(l.substring("//JAVA_OPTIONS ".length()).trim().split("\\s+")))
                    .toList();
            assertTrue(options.stream().anyMatch(o -> o.startsWith("-Xmx")), script + " ships a heap cap: " + options);
            return options;
        } catch (IOException e) {
            throw new java.io.UncheckedIOException(e);
        }
    }

    private static String line(TestTools.ProcResult r, String marker) {
        return r.stderr().lines().filter(l -> l.contains(marker)).findFirst()
                .orElseThrow(() -> new AssertionError("no line with '" + marker + "' in\n" + r.stderr()));
    }

    /** The "files:" line: paths, read again, held by a pack already, new packs. */
    private static long[] filesLine(TestTools.ProcResult r) {
        Matcher m = FILES_LINE.matcher(line(r, ": files: "));
        assertTrue(m.find(), line(r, ": files: "));
        return new long[] {Long.parseLong(m.group(1)), Long.parseLong(m.group(2)), Long.parseLong(m.group(3)), Long.parseLong(m.group(4))};
    }

    /** The objects count of the "uploaded" line. */
    private static long uploadedObjects(TestTools.ProcResult r) {
        Matcher m = UPLOADED_LINE.matcher(line(r, ": uploaded "));
        assertTrue(m.find(), line(r, ": uploaded "));
        return Long.parseLong(m.group(3));
    }

    // ---------------------------------------------------------------------------------------------
    // What the bucket and the index say
    // ---------------------------------------------------------------------------------------------

    private static SortedMap<String, Long> added(SortedMap<String, Long> before, SortedMap<String, Long> after) {
        SortedMap<String, Long> out = new TreeMap<>(after);
        out.keySet().removeAll(before.keySet());
        return out;
    }

    private static Map<String, Long> under(Map<String, Long> keys, String prefix) {
        return keys.entrySet().stream().filter(e -> e.getKey().startsWith(prefix))
                .collect(Collectors.toMap(Map.Entry::getKey, Map.Entry::getValue, (a, b) -> a, TreeMap::new));
    }

    @SafeVarargs
    private static Map<String, Long> minus(Map<String, Long> keys, Map<String, Long>... parts) {
        Map<String, Long> out = new TreeMap<>(keys);
        for (Map<String, Long> part : parts) out.keySet().removeAll(part.keySet());
        return out;
    }

    /** A snapshot's file index pieces, downloaded into a new scratch dir, in order. */
    private static List<Path> pieces(BucketView view, String timestamp, List<Path> scratch) {
        Path dir = TestTools.tempDir("many-paths-index-");
        scratch.add(dir);
        return view.manifest(timestamp).fileIndex().stream().map(p -> view.download(timestamp, p, dir)).toList();
    }

    /** Streams two indexes side by side (both in path order): each path added, removed or recorded differently. */
    private static void compareIndexes(List<Path> a, List<Path> b, java.util.function.BiConsumer<TownEntry, TownEntry> differs)
            throws IOException {
        try (IndexReader x = IndexReader.index(a); IndexReader y = IndexReader.index(b)) {
            TownEntry before = x.next();
            TownEntry now = y.next();
            while (before != null || now != null) {
                int cmp = before == null ? 1 : now == null ? -1 : PathOrder.compare(before.path(), now.path());
                if (cmp < 0) {
                    differs.accept(before, null);
                    before = x.next();
                } else if (cmp > 0) {
                    differs.accept(null, now);
                    now = y.next();
                } else {
                    if (!before.equals(now)) differs.accept(before, now);
                    before = x.next();
                    now = y.next();
                }
            }
        }
    }

    // ---------------------------------------------------------------------------------------------
    // Trees
    // ---------------------------------------------------------------------------------------------

    /**
     * A directory's entry names, sorted; left out: a git directory's object store (objects/, refs/, packed-refs), and
     * at the town root what the product keeps there for itself (its writer id, restore staging: Town.OWN_DIRS).
     */
    private static List<String> names(Path dir, boolean root) throws IOException {
        boolean gitDir = Town.isGitDir(dir);
        try (var s = Files.list(dir)) {
            return s.map(p -> p.getFileName().toString())
                    .filter(n -> !(gitDir && (n.equals("objects") || n.equals("refs") || n.equals("packed-refs"))))
                    .filter(n -> !(root && (Town.OWN_DIRS.contains(n) || n.startsWith(Town.ASIDE_PREFIX))))
                    .sorted().toList();
        }
    }

    /** Walks a tree in the file index's order (a directory, then what it holds), git object stores left out. */
    private static void walk(Path dir, String rel, java.util.function.Consumer<String> visit) throws IOException {
        for (String name : names(dir, rel.isEmpty())) {
            Path p = dir.resolve(name);
            visit.accept(join(rel, name));
            if (Files.isDirectory(p, LinkOption.NOFOLLOW_LINKS)) walk(p, join(rel, name), visit);
        }
    }

    /** The paths a walk of the town finds and the index does not name, and the other way round (the first 20). */
    private static List<String> compareWithIndex(Path root, List<Path> pieces) throws IOException {
        List<String> diffs = new ArrayList<>();
        try (IndexReader index = IndexReader.index(pieces)) {
            TownEntry[] next = {index.next()};
            walk(root, "", rel -> {
                while (next[0] != null && PathOrder.compare(next[0].path(), rel) < 0) {
                    if (diffs.size() < 20) diffs.add("only in the index: " + next[0].path());
                    next[0] = index.next();
                }
                if (next[0] != null && next[0].path().equals(rel)) next[0] = index.next();
                else if (diffs.size() < 20) diffs.add("not in the index: " + rel);
            });
            for (; next[0] != null && diffs.size() < 20; next[0] = index.next()) diffs.add("only in the index: " + next[0].path());
        }
        return diffs;
    }

    /** Every path under root, git object stores left out (what the product's scan counts here). */
    private static long countPaths(Path root) throws IOException {
        long[] n = {0};
        walk(root, "", rel -> n[0]++);
        return n[0];
    }

    /**
     * Walks two trees side by side, one directory listing at a time: every path must be in both, with the same type,
     * mode, size, mtime (nanoseconds, as the product's scan records it), content or link target. Returns the number
     * of paths compared; the first 20 differences go into diffs.
     */
    private static long compareTrees(Path a, Path b, String rel, List<String> diffs) throws IOException {
        List<String> left = names(a, rel.isEmpty());
        List<String> right = names(b, rel.isEmpty());
        if (!left.equals(right)) {
            Set<String> only = new TreeSet<>(left);
            only.removeAll(right);
            only.forEach(n -> diffs.add("missing: " + join(rel, n)));
            Set<String> extra = new TreeSet<>(right);
            extra.removeAll(left);
            extra.forEach(n -> diffs.add("extra: " + join(rel, n)));
        }
        Set<String> there = new HashSet<>(right);
        long n = 0;
        for (String name : left) {
            if (diffs.size() >= 20) return n;
            if (!there.contains(name)) continue;
            n++;
            String r = join(rel, name);
            Path x = a.resolve(name);
            Path y = b.resolve(name);
            Map<String, Object> ax = Files.readAttributes(x, "unix:mode,size,lastModifiedTime", LinkOption.NOFOLLOW_LINKS);
            Map<String, Object> ay = Files.readAttributes(y, "unix:mode,size,lastModifiedTime", LinkOption.NOFOLLOW_LINKS);
            int mx = (Integer) ax.get("mode");
            int my = (Integer) ay.get("mode");
            long tx = ((java.nio.file.attribute.FileTime) ax.get("lastModifiedTime")).to(java.util.concurrent.TimeUnit.NANOSECONDS);
            long ty = ((java.nio.file.attribute.FileTime) ay.get("lastModifiedTime")).to(java.util.concurrent.TimeUnit.NANOSECONDS);
            if (mx != my) {
                diffs.add(r + ": mode " + Integer.toOctalString(mx) + " -> " + Integer.toOctalString(my));
                continue;
            }
            boolean directory = (mx & 0170000) == 0040000;
            boolean symlink = (mx & 0170000) == 0120000;
            if (symlink) {
                if (!Files.readSymbolicLink(x).equals(Files.readSymbolicLink(y))) diffs.add(r + ": link target");
            } else if (directory) {
                n += compareTrees(x, y, r, diffs);
            } else if (!ax.get("size").equals(ay.get("size"))) {
                diffs.add(r + ": size " + ax.get("size") + " -> " + ay.get("size"));
            } else if (!Arrays.equals(Files.readAllBytes(x), Files.readAllBytes(y))) {
                diffs.add(r + ": content");
            }
            if (tx != ty && !symlink) diffs.add(r + ": mtime " + tx + " -> " + ty);
        }
        return n;
    }

    private static String join(String rel, String name) {
        return rel.isEmpty() ? name : rel + "/" + name;
    }

    /** A checkout's refs, HEAD and git status as TownState records them (its path facts left out). */
    private static TownState gitFacts(Path checkout) {
        return TownState.capture(checkout).without("path:");
    }

    // ---------------------------------------------------------------------------------------------
    // Hard links
    // ---------------------------------------------------------------------------------------------

    /** The names of every file with more than one, grouped by inode (git object stores left out). */
    private static Set<List<String>> hardLinkGroups(Path root) throws IOException {
        Map<Object, List<String>> byInode = new HashMap<>();
        Files.walkFileTree(root, new SimpleFileVisitor<>() {
            @Override
            public FileVisitResult preVisitDirectory(Path d, BasicFileAttributes attrs) {
                boolean objects = d.getFileName().toString().equals("objects") && d.getParent().getFileName().toString().equals(".git");
                return objects ? FileVisitResult.SKIP_SUBTREE : FileVisitResult.CONTINUE;
            }

            @Override
            public FileVisitResult visitFile(Path f, BasicFileAttributes attrs) throws IOException {
                if (attrs.isRegularFile() && (Integer) Files.getAttribute(f, "unix:nlink", LinkOption.NOFOLLOW_LINKS) > 1)
                    byInode.computeIfAbsent(attrs.fileKey(), k -> new ArrayList<>()).add(root.relativize(f).toString());
                return FileVisitResult.CONTINUE;
            }
        });
        return byInode.values().stream().map(l -> l.stream().sorted().toList()).collect(Collectors.toSet());
    }

    /** The hard links the builder makes: two names in each checkout's node_modules, and one file with three names. */
    private static Set<List<String>> expectedLinkGroups() {
        Set<List<String>> groups = new HashSet<>();
        for (int c = 0; c < CHECKOUTS; c++)
            for (int k = 0; k < 2; k++)
                groups.add(List.of(checkout(c) + "/node_modules/.bin/tool" + k, checkout(c) + "/node_modules/" + modulePath(k, 0)));
        groups.add(List.of(checkout(0) + "/LICENSE", checkout(1) + "/LICENSE", "alpha/shared/LICENSE"));
        return groups;
    }

    // ---------------------------------------------------------------------------------------------
    // The town
    // ---------------------------------------------------------------------------------------------

    /** A built town: its root, the paths and files written, and the names that are second names of a file. */
    private record Built(Path root, long paths, long files, List<String> linkedNames) {}

    private static String checkout(int c) {
        return "alpha/crew/c" + c;
    }

    private static String modulePath(int module, int file) {
        return String.format(Locale.ROOT, "pkg%04d/f%02d.js", module, file);
    }

    /** Writes the town from Java (a process per checkout for git, never one per file). */
    private static Built build(Path root) throws IOException {
        long[] count = {0, 0};   // paths, files
        Writer w = (rel, content) -> {
            Files.write(root.resolve(rel), content);
            count[0]++;
            count[1]++;
        };
        Dirs mk = rel -> {
            Files.createDirectories(root.resolve(rel));
            count[0]++;
        };
        Files.createDirectories(root);
        mk.dir("mayor");
        w.write("mayor/town.json", utf8("{\"type\":\"town\",\"version\":2,\"name\":\"manypaths\",\"owner\":\"mayor@example.com\","
                + "\"public_name\":\"Many Paths\",\"created_at\":\"2026-04-01T10:00:00Z\"}\n"));
        mk.dir("alpha");
        w.write("alpha/config.json", utf8("{\"type\":\"rig\",\"version\":1,\"name\":\"alpha\"}\n"));
        mk.dir("alpha/crew");
        mk.dir("alpha/shared");
        w.write("alpha/shared/LICENSE", utf8("MIT License\n\nCopyright (c) 2026 the many paths\n"));

        List<String> linkedNames = new ArrayList<>();
        for (int c = 0; c < CHECKOUTS; c++) {
            String co = checkout(c);
            mk.dir(co);
            w.write(co + "/.gitignore", utf8("node_modules/\n"));
            w.write(co + "/package.json", utf8("{\"name\":\"c" + c + "\",\"private\":true}\n"));
            // vendor/: 20,000 small files, different in each checkout.
            mk.dir(co + "/vendor");
            for (int lib = 0; lib < VENDOR_LIBS; lib++) {
                String libDir = String.format(Locale.ROOT, "%s/vendor/lib%03d", co, lib);
                mk.dir(libDir);
                for (int f = 0; f < VENDOR_FILES; f++) {
                    byte[] tail = new byte[32];
                    new Random(((long) c << 32) + lib * 1000L + f).nextBytes(tail);
                    w.write(String.format(Locale.ROOT, "%s/f%02d.txt", libDir, f),
                            utf8("vendor c" + c + " lib" + lib + " file" + f + " " + HexFormat.of().formatHex(tail) + "\n"));
                }
            }
            // node_modules/: the same 30,000 contents in every checkout (a seeded random tail, so they compress like code).
            mk.dir(co + "/node_modules");
            for (int m = 0; m < MODULES; m++) {
                String module = co + "/node_modules/" + modulePath(m, 0).substring(0, modulePath(m, 0).indexOf('/'));
                mk.dir(module);
                for (int f = 0; f < MODULE_FILES; f++) {
                    byte[] tail = new byte[100];
                    new Random(m * 1000L + f).nextBytes(tail);
                    w.write(co + "/node_modules/" + modulePath(m, f), utf8("module.exports = {name: 'pkg" + m + "', file: " + f
                            + "};\n// " + HexFormat.of().formatHex(tail) + "\n"));
                }
            }
            // Two names for one inode, as a package manager's hard-linked store makes: the .bin name comes first in the
            // walk, so the package's own name is the second one.
            mk.dir(co + "/node_modules/.bin");
            for (int k = 0; k < 2; k++) {
                Files.createLink(root.resolve(co + "/node_modules/.bin/tool" + k), root.resolve(co + "/node_modules/" + modulePath(k, 0)));
                count[0]++;
                linkedNames.add(co + "/node_modules/" + modulePath(k, 0));
            }
        }
        // One file with three names: two tracked, in two checkouts (the first name in the walk is c0's), and one in the rig.
        for (int c = 0; c < 2; c++) {
            Files.createLink(root.resolve(checkout(c) + "/LICENSE"), root.resolve("alpha/shared/LICENSE"));
            count[0]++;
        }
        linkedNames.add(checkout(1) + "/LICENSE");
        linkedNames.add("alpha/shared/LICENSE");

        // Each checkout a repository: one `git add -A` and one commit (node_modules/ is ignored). 20,000 loose objects
        // make the commit start `git gc --auto`: in the foreground, so it is done (objects packed, refs in packed-refs)
        // when the commit returns, never running in the background while the product scans the town.
        for (int c = 0; c < CHECKOUTS; c++) {
            Path co = root.resolve(checkout(c));
            git(co, "init", "--quiet");
            git(co, "add", "-A");
            git(co, "-c", "gc.autoDetach=false", "commit", "--quiet", "-m", "vendor c" + c);
        }
        String status = git(root.resolve(checkout(0)), "status", "--porcelain", "--ignored");
        assertEquals("!! node_modules/\n", status, "node_modules/ is ignored, vendor/ committed");
        return new Built(root, count[0], count[1], linkedNames);
    }

    private static String git(Path cwd, String... args) {
        return TestTools.check(TestTools.list("git", List.of(args)), cwd, Map.of(), null, Duration.ofMinutes(10)).stdout();
    }

    private static byte[] utf8(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }

    private interface Writer {
        void write(String rel, byte[] content) throws IOException;
    }

    private interface Dirs {
        void dir(String rel) throws IOException;
    }
}

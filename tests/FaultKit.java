import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.io.InputStream;
import java.io.UncheckedIOException;
import java.nio.channels.FileChannel;
import java.nio.channels.FileLock;
import java.nio.charset.StandardCharsets;
import java.nio.file.FileVisitResult;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.nio.file.SimpleFileVisitor;
import java.nio.file.StandardOpenOption;
import java.nio.file.attribute.BasicFileAttributes;
import java.nio.file.attribute.PosixFilePermissions;
import java.security.MessageDigest;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HashMap;
import java.util.HashSet;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.SortedMap;
import java.util.TreeMap;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.function.BooleanSupplier;
import java.util.function.Function;
import java.util.stream.Collectors;
import java.util.stream.Stream;
import software.amazon.awssdk.core.sync.RequestBody;
import software.amazon.awssdk.services.s3.S3Client;
import software.amazon.awssdk.services.s3.model.NoSuchKeyException;
import software.amazon.awssdk.services.s3.model.S3Object;

/**
 * Support for the fault suite ({@link FaultSuite}): the fault tally, product processes that can be killed -9 with
 * their children, a "lane" (a town, its bucket, a FaultProxy in front of S3, and the product's local
 * dirs), a view of the bucket through an independent S3 client, and tree hashes for "untouched" checks.
 */
final class FaultKit {
    private FaultKit() {}

    static final ObjectMapper JSON = new ObjectMapper();

    // ---------------------------------------------------------------------------------------------
    // The tally: every injected fault, whether the product survived it, and whether data was lost.
    // ---------------------------------------------------------------------------------------------

    /** A failed check that means data was lost or damaged (latest snapshot unusable, volume changed). */
    static final class DataLoss extends AssertionError {
        DataLoss(String message) {
            super(message);
        }
    }

    interface Body {
        void run() throws Exception;
    }

    static final class Tally {
        final AtomicInteger injected = new AtomicInteger();
        final AtomicInteger survived = new AtomicInteger();
        final AtomicInteger dataLost = new AtomicInteger();
        final Map<String, Integer> perGroup = new ConcurrentHashMap<>();

        Group group(String name) {
            return new Group(this, name);
        }

        String line() {
            return "fault suite: " + injected + " faults injected, " + survived + " survived, " + dataLost + " data lost";
        }
    }

    /** The faults of one test method; {@link #check()} fails the test with every fault that was not survived. */
    static final class Group {
        private final Tally tally;
        private final String name;
        private final List<String> failures = Collections.synchronizedList(new ArrayList<>());

        Group(Tally tally, String name) {
            this.tally = tally;
            this.name = name;
        }

        /** Runs one injected fault and its checks; a failure is recorded and the group goes on. */
        void fault(String fault, Body body) {
            tally.injected.incrementAndGet();
            tally.perGroup.merge(name, 1, Integer::sum);
            long t0 = System.nanoTime();
            String verdict;
            try {
                body.run();
                tally.survived.incrementAndGet();
                verdict = "survived ";
            } catch (org.opentest4j.TestAbortedException e) {
                tally.injected.decrementAndGet(); // not injected after all: the test is skipped, not faked
                tally.perGroup.merge(name, -1, Integer::sum);
                throw e;
            } catch (DataLoss e) {
                tally.dataLost.incrementAndGet();
                failures.add(fault + ": DATA LOST: " + e.getMessage());
                verdict = "DATA LOST";
            } catch (Throwable e) {
                StringBuilder msg = new StringBuilder(fault + ": " + e);
                if (!(e instanceof AssertionError)) msg.append('\n').append(AllTests.trimmedTrace(e));
                failures.add(msg.toString());
                verdict = "FAILED   ";
            }
            System.out.printf("      fault %s %-14s %s (%.1f s)%n", verdict, name, fault, (System.nanoTime() - t0) / 1e9);
            System.out.flush();
        }

        /** A setup or closing check that injects no fault: a failure fails the group but counts nothing. */
        void step(String what, Body body) {
            long t0 = System.nanoTime();
            String verdict = "ok       ";
            try {
                body.run();
            } catch (org.opentest4j.TestAbortedException e) {
                throw e;
            } catch (Throwable e) {
                StringBuilder msg = new StringBuilder(what + ": " + e);
                if (!(e instanceof AssertionError)) msg.append('\n').append(AllTests.trimmedTrace(e));
                failures.add(msg.toString());
                verdict = "FAILED   ";
            }
            System.out.printf("      step  %s %-14s %s (%.1f s)%n", verdict, name, what, (System.nanoTime() - t0) / 1e9);
            System.out.flush();
        }

        /** A failure outside any fault (a lane that could not be set up): fails the group, counts nothing. */
        void error(String what, Throwable e) {
            failures.add(what + ": " + e + "\n" + AllTests.trimmedTrace(e));
            System.out.println("      ERROR " + name + " " + what + ": " + e);
        }

        void check() {
            if (!failures.isEmpty())
                throw new AssertionError(failures.size() + " fault(s) not survived in " + name + ":\n"
                        + String.join("\n\n", failures));
        }
    }

    // ---------------------------------------------------------------------------------------------
    // Product processes
    // ---------------------------------------------------------------------------------------------

    private static volatile Path cdsArchive;

    /**
     * The product's main classes as child JVMs, tuned for short runs (C1 only, serial GC, and a class
     * data archive of the suite's own first product run). The code and classpath are the suite's.
     */
    static List<String> jvm(String main, List<String> args, boolean dumpArchive) {
        List<String> cmd = new ArrayList<>(List.of(TestTools.java(), "-XX:TieredStopAtLevel=1", "-XX:CICompilerCount=1",
                "-XX:+UseSerialGC", "-XX:-UsePerfData", "-Xmx512m"));
        Path cds = cdsArchive;
        if (dumpArchive) cmd.add("-XX:ArchiveClassesAtExit=" + archivePath());
        else if (cds != null) cmd.add("-XX:SharedArchiveFile=" + cds);
        cmd.addAll(List.of("-cp", System.getProperty("java.class.path"), main));
        cmd.addAll(args);
        return cmd;
    }

    private static Path archivePath() {
        return Path.of(System.getProperty("java.io.tmpdir"), "fault-suite-" + ProcessHandle.current().pid() + ".jsa");
    }

    private static final Object ARCHIVE_WRITER = new Object();
    private static boolean archiveAsked;

    /**
     * Starts a lane's first product JVM through {@code start}, told whether it writes the class-data archive: the
     * suite's first one to ask does (whichever lane that is), the others wait for it and then map the archive.
     */
    static <T> T archivingFirst(Function<Boolean, T> start) {
        synchronized (ARCHIVE_WRITER) {
            if (!archiveAsked) {
                archiveAsked = true;
                try {
                    return start.apply(true);
                } finally {
                    archiveDumped();
                }
            }
        }
        return start.apply(false);
    }

    /** After the archive-dumping run: use the archive from now on (if the JVM wrote one). */
    private static void archiveDumped() {
        Path p = archivePath();
        if (Files.isRegularFile(p)) {
            cdsArchive = p;
            p.toFile().deleteOnExit();
        }
    }

    /** A product process with stdout and stderr in files (so logs can be watched and searched). */
    static final class Running implements AutoCloseable {
        final Process process;
        final Path out;
        final Path err;
        final List<String> args;
        final long startNanos = System.nanoTime();

        private Running(Process process, Path out, Path err, List<String> args) {
            this.process = process;
            this.out = out;
            this.err = err;
            this.args = args;
        }

        static Running start(List<String> cmd, Map<String, String> env, Path dir) {
            try {
                Files.createDirectories(dir);
                String tag = cmd.get(cmd.indexOf("-cp") + 2) + "-" + System.nanoTime();
                Path out = dir.resolve(tag + ".out");
                Path err = dir.resolve(tag + ".err");
                ProcessBuilder pb = new ProcessBuilder(cmd).directory(dir.toFile())
                        .redirectOutput(out.toFile()).redirectError(err.toFile())
                        .redirectInput(ProcessBuilder.Redirect.from(new java.io.File("/dev/null")));
                pb.environment().put("GIT_TERMINAL_PROMPT", "0");
                pb.environment().putAll(env);
                return new Running(pb.start(), out, err, List.copyOf(cmd));
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
        }

        boolean alive() {
            return process.isAlive();
        }

        String stdout() {
            return read(out);
        }

        String stderr() {
            return read(err);
        }

        /** Waits for the exit; on timeout kills the tree and throws. */
        TestTools.ProcResult await(Duration timeout) {
            try {
                if (!process.waitFor(timeout.toMillis(), TimeUnit.MILLISECONDS)) {
                    kill9();
                    throw new AssertionError("timed out after " + timeout + ": " + args.subList(args.indexOf("-cp") + 2, args.size())
                            + "\n--- stderr ---\n" + TestTools.tail(stderr(), 4000));
                }
            } catch (InterruptedException e) {
                kill9();
                Thread.currentThread().interrupt();
                throw new AssertionError("interrupted");
            }
            return new TestTools.ProcResult(args, process.exitValue(), stdout(), stderr());
        }

        /** Waits up to {@code d} and returns true when the process is still running after it. */
        boolean stillRunningAfter(Duration d) {
            try {
                return !process.waitFor(d.toMillis(), TimeUnit.MILLISECONDS);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                return false;
            }
        }

        /**
         * kill -9 of the JVM and every process it started (dolt, git), the way a container dies: the JVM
         * is stopped first (SIGSTOP) so it cannot start a new child while its children are listed.
         */
        void kill9() {
            ProcessHandle h = process.toHandle();
            if (!h.isAlive()) return;
            try {
                new ProcessBuilder("kill", "-STOP", String.valueOf(h.pid())).start().waitFor(5, TimeUnit.SECONDS);
            } catch (IOException e) {
                // then kill without the freeze
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
            List<ProcessHandle> all = new ArrayList<>(h.descendants().collect(Collectors.toList()));
            h.destroyForcibly();
            all.forEach(ProcessHandle::destroyForcibly);
            all.add(h);
            for (ProcessHandle p : all) {
                try {
                    p.onExit().get(10, TimeUnit.SECONDS);
                } catch (Exception e) {
                    // reported by the caller's checks if it matters
                }
            }
        }

        @Override
        public void close() {
            kill9();
        }

        private static String read(Path p) {
            try {
                return Files.exists(p) ? Files.readString(p, StandardCharsets.UTF_8) : "";
            } catch (IOException e) {
                return "<unreadable: " + e + ">";
            }
        }
    }

    /** Polls until {@code condition} holds or the process ends (or the deadline passes); returns the condition. */
    static boolean awaitWhileRunning(Running run, BooleanSupplier condition, Duration timeout) {
        TestTools.await(() -> condition.getAsBoolean() || !run.alive(), timeout, 1);
        return condition.getAsBoolean();
    }

    // ---------------------------------------------------------------------------------------------
    // The bucket, seen through an independent S3 client (never through the proxy)
    // ---------------------------------------------------------------------------------------------

    /** latest.json as stored: its raw bytes, the snapshot it names, and the machine that wrote it (its writer id). */
    record Pointer(byte[] raw, String timestamp, String manifestSha256, String writer) {
        static Pointer parse(byte[] raw) {
            try {
                JsonNode n = JSON.readTree(raw);
                return new Pointer(raw, n.path("timestamp").asText(null), n.path("manifestSha256").asText(null),
                        n.path("writer").asText(null));
            } catch (IOException e) {
                return new Pointer(raw, null, null, null);
            }
        }

        boolean sameBytes(Pointer other) {
            return other != null && java.util.Arrays.equals(raw, other.raw);
        }
    }

    static final class Store {
        final S3Client s3;

        Store(S3Client s3) {
            this.s3 = s3;
        }

        static String town(String townId) {
            return "gastown/" + townId + "/";
        }

        static String snapshot(String townId, String ts) {
            return town(townId) + "snapshots/" + ts + "/";
        }

        /** Keys of every object under prefix, sorted. */
        List<String> keys(String bucket, String prefix) {
            return new ArrayList<>(list(bucket, prefix).keySet());
        }

        /** Key -> size of every object under prefix. */
        SortedMap<String, Long> list(String bucket, String prefix) {
            SortedMap<String, Long> out = new TreeMap<>();
            for (S3Object o : s3.listObjectsV2Paginator(b -> b.bucket(bucket).prefix(prefix)).contents())
                out.put(o.key(), o.size());
            return out;
        }

        byte[] get(String bucket, String key) {
            try {
                return s3.getObjectAsBytes(b -> b.bucket(bucket).key(key)).asByteArray();
            } catch (NoSuchKeyException e) {
                return null;
            }
        }

        /** sha256 and size of an object, streamed (big objects stay out of memory); null when missing. */
        String[] hash(String bucket, String key) {
            try (InputStream in = s3.getObject(b -> b.bucket(bucket).key(key))) {
                MessageDigest md = MessageDigest.getInstance("SHA-256");
                byte[] buf = new byte[1 << 16];
                long size = 0;
                for (int n; (n = in.read(buf)) > 0; ) {
                    md.update(buf, 0, n);
                    size += n;
                }
                return new String[] {HexFormat.of().formatHex(md.digest()), String.valueOf(size)};
            } catch (NoSuchKeyException e) {
                return null;
            } catch (Exception e) {
                throw new IllegalStateException("cannot read " + key + ": " + e, e);
            }
        }

        void put(String bucket, String key, byte[] data) {
            s3.putObject(b -> b.bucket(bucket).key(key), RequestBody.fromBytes(data));
        }

        void delete(String bucket, String key) {
            s3.deleteObject(b -> b.bucket(bucket).key(key));
        }

        Pointer pointer(String bucket, String townId) {
            byte[] raw = get(bucket, town(townId) + "latest.json");
            return raw == null ? null : Pointer.parse(raw);
        }

        /** Snapshot timestamp -> its keys (relative to the snapshot prefix). */
        SortedMap<String, List<String>> snapshots(String bucket, String townId) {
            String base = town(townId) + "snapshots/";
            SortedMap<String, List<String>> out = new TreeMap<>();
            for (String key : list(bucket, base).keySet()) {
                String rest = key.substring(base.length());
                int slash = rest.indexOf('/');
                String ts = slash < 0 ? rest : rest.substring(0, slash);
                out.computeIfAbsent(ts, k -> new ArrayList<>()).add(slash < 0 ? "" : rest.substring(slash + 1));
            }
            return out;
        }

        /** Objects under the town's incremental/ that no snapshot's manifest names (what a killed sync uploaded). */
        List<String> unnamedObjects(String bucket, String townId) {
            Keys keys = new Keys(townId);
            Set<String> named = new HashSet<>();
            snapshots(bucket, townId).forEach((ts, files) -> {
                if (files.contains(Keys.MANIFEST))
                    R2Common.fromJson(get(bucket, keys.object(ts, Keys.MANIFEST)), Manifest.class, "manifest " + ts)
                            .objects().forEach(o -> named.add(keys.object(o)));
            });
            return list(bucket, keys.objects()).keySet().stream().filter(k -> !named.contains(k)).collect(Collectors.toList());
        }

        JsonNode manifest(String bucket, String townId, String ts) {
            byte[] raw = get(bucket, snapshot(townId, ts) + "manifest.json");
            if (raw == null) return null;
            try {
                return JSON.readTree(raw);
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
        }

        /**
         * The snapshot is whole: its manifest is the one the pointer pins (when given), and every file it
         * lists is there with the size and sha256 it records. Anything else is data loss.
         */
        void assertIntact(String bucket, String townId, String ts, String pinnedSha) {
            String base = snapshot(townId, ts);
            byte[] manifest = get(bucket, base + "manifest.json");
            if (manifest == null) throw new DataLoss("snapshot " + ts + " has no manifest.json");
            if (pinnedSha != null && !sha256(manifest).equals(pinnedSha))
                throw new DataLoss("manifest.json of " + ts + " is not the one latest.json pins");
            JsonNode files;
            try {
                files = JSON.readTree(manifest).path("files");
            } catch (IOException e) {
                throw new DataLoss("manifest.json of " + ts + " does not parse: " + e);
            }
            if (!files.isArray() || files.size() == 0) throw new DataLoss("manifest.json of " + ts + " lists no files");
            for (JsonNode f : files) {
                String path = f.path("path").asText();
                JsonNode pieces = f.path("pieces");
                if (pieces.isMissingNode()) {
                    assertObject(bucket, townId, ts, path, f.path("sha256").asText(), f.path("size").asLong());
                    continue;
                }
                // Stored in pieces: each piece an object of pieces.size bytes (the last one shorter), and the file's
                // sha256 that of the pieces' sha256s, one per line.
                long pieceSize = pieces.path("size").asLong();
                long left = f.path("size").asLong();
                StringBuilder list = new StringBuilder();
                for (JsonNode piece : pieces.path("sha256")) {
                    assertObject(bucket, townId, ts, path, piece.asText(), Math.min(pieceSize, left));
                    left -= Math.min(pieceSize, left);
                    list.append(piece.asText()).append('\n');
                }
                if (left != 0 || !sha256(list.toString().getBytes(StandardCharsets.UTF_8)).equals(f.path("sha256").asText()))
                    throw new DataLoss(ts + "/" + path + ": its pieces do not make up its manifest entry");
            }
        }

        private void assertObject(String bucket, String townId, String ts, String path, String sha256, long size) {
            String[] got = hash(bucket, town(townId) + "incremental/" + path + "/" + sha256);
            if (got == null) throw new DataLoss(ts + "/" + path + " is missing (object " + sha256 + ")");
            if (!got[0].equals(sha256) || Long.parseLong(got[1]) != size)
                throw new DataLoss(ts + "/" + path + " does not match its manifest entry (object " + sha256 + ")");
        }
    }

    static String sha256(byte[] data) {
        try {
            return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(data));
        } catch (Exception e) {
            throw new IllegalStateException(e);
        }
    }

    // ---------------------------------------------------------------------------------------------
    // Trees: "untouched" means every entry's type, mode, size, content and link target are the same.
    // ---------------------------------------------------------------------------------------------

    /** Path (relative, "" for the root) -> description, for every entry under root, links not followed. */
    static SortedMap<String, String> tree(Path root, Set<String> skipDirs) {
        SortedMap<String, String> out = new TreeMap<>();
        if (!Files.exists(root, LinkOption.NOFOLLOW_LINKS)) return out;
        try {
            Files.walkFileTree(root, new SimpleFileVisitor<>() {
                @Override
                public FileVisitResult preVisitDirectory(Path dir, BasicFileAttributes attrs) throws IOException {
                    String rel = root.relativize(dir).toString();
                    if (skipDirs.contains(rel)) return FileVisitResult.SKIP_SUBTREE;
                    out.put(rel + "/", "dir " + mode(dir));
                    return FileVisitResult.CONTINUE;
                }

                @Override
                public FileVisitResult visitFile(Path file, BasicFileAttributes attrs) throws IOException {
                    String rel = root.relativize(file).toString();
                    if (attrs.isSymbolicLink()) out.put(rel, "link -> " + Files.readSymbolicLink(file));
                    else if (attrs.isRegularFile()) out.put(rel, "file " + mode(file) + " " + attrs.size() + " " + fileSha(file));
                    else out.put(rel, "other");
                    return FileVisitResult.CONTINUE;
                }
            });
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        return out;
    }

    static SortedMap<String, String> tree(Path root) {
        return tree(root, Set.of());
    }

    /** Throws DataLoss listing what changed between two tree() results. */
    static void assertUntouched(String what, SortedMap<String, String> before, SortedMap<String, String> after) {
        String diff = TownView.diff(before, after);
        if (!diff.isEmpty()) throw new DataLoss(what + " changed:\n" + diff);
    }

    private static String mode(Path p) throws IOException {
        return PosixFilePermissions.toString(Files.getPosixFilePermissions(p, LinkOption.NOFOLLOW_LINKS));
    }

    static String fileSha(Path file) {
        return TownView.sha256(file);
    }

    /** True when nobody holds the OS lock on the file (we take it for a moment and let it go). */
    static boolean lockFree(Path lockFile) {
        if (!Files.exists(lockFile)) return true;
        try (FileChannel ch = FileChannel.open(lockFile, StandardOpenOption.WRITE)) {
            FileLock lock = ch.tryLock();
            if (lock == null) return false;
            lock.release();
            return true;
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    static List<String> children(Path dir) {
        if (!Files.isDirectory(dir)) return List.of();
        try (Stream<Path> s = Files.list(dir)) {
            return s.map(p -> p.getFileName().toString()).sorted().collect(Collectors.toList());
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    /** Every file under dir (relative paths), for "what is left" messages. */
    static List<String> filesUnder(Path dir) {
        if (!Files.isDirectory(dir)) return List.of();
        try (Stream<Path> s = Files.walk(dir)) {
            return s.filter(p -> !p.equals(dir)).map(p -> dir.relativize(p).toString()).sorted().collect(Collectors.toList());
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    // ---------------------------------------------------------------------------------------------
    // A small filesystem made for a test: tmpfs, else a loop-mounted ext4 image (both need root).
    // ---------------------------------------------------------------------------------------------

    record SmallFs(Path dir, String kind, Path image) implements AutoCloseable {
        /** Mounts a filesystem of {@code size} (e.g. "24m"); aborts the test (skipped, not faked) when impossible. */
        static SmallFs mount(String size) {
            Path dir = TestTools.tempDir("fault-smallfs-");
            TestTools.ProcResult tmpfs = TestTools.run(List.of("mount", "-t", "tmpfs", "-o", "size=" + size + ",mode=0755",
                    "tmpfs", dir.toString()), dir);
            if (tmpfs.ok()) return new SmallFs(dir, "tmpfs", null);
            Path image = TestTools.tempDir("fault-fsimage-").resolve("fs.img");
            TestTools.ProcResult loop = TestTools.run(List.of("sh", "-c", "truncate -s \"$1\" \"$2\" && mkfs.ext4 -q -F \"$2\" "
                    + "&& mount -o loop \"$2\" \"$3\" && rm -rf \"$3/lost+found\"", "sh", size.replace("k", "K").replace("m", "M"),
                    image.toString(), dir.toString()), dir);
            if (loop.ok()) return new SmallFs(dir, "ext4 loop", image);
            org.junit.jupiter.api.Assumptions.abort("cannot mount a small filesystem here: tmpfs: " + tmpfs.stderr().strip()
                    + "; loop ext4: " + loop.stderr().strip());
            throw new IllegalStateException("unreachable");
        }

        @Override
        public void close() {
            TestTools.ProcResult r = TestTools.run(List.of("umount", dir.toString()), dir.getParent());
            if (!r.ok()) TestTools.run(List.of("umount", "-l", dir.toString()), dir.getParent());
            if (image != null) TestTools.deleteRecursively(image.getParent());
        }
    }

    /** A map literal that keeps insertion order and allows many entries. */
    static Map<String, String> env(Map<String, String> base, String... kv) {
        Map<String, String> out = new LinkedHashMap<>(base);
        for (int i = 0; i < kv.length; i += 2) out.put(kv[i], kv[i + 1]);
        return out;
    }

    static Map<String, String> copy(Map<String, String> m) {
        return new HashMap<>(m);
    }
}

import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestInstance;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.FileTime;
import java.time.Duration;
import java.time.Instant;
import java.util.*;
import java.util.stream.Collectors;

import static org.junit.jupiter.api.Assertions.*;

/**
 * R2Restore: sync a realistic town, destroy it, restore it, and prove it is the same town; and refuse
 * every broken or hostile backup without touching the volume.
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class R2RestoreTest {
    private static final String TOWN = "town-r";
    private final S3Server s3 = S3Server.shared();
    private TestTown town;
    private Path dir;
    private TownState before;
    /** A bucket holding one good snapshot of the town, never modified (tests copy it to change it). */
    private String pristine;
    private String snapshot;

    @BeforeAll
    void syncTown() {
        dir = TestTools.tempDir("restore-test-");
        town = TownBuilder.create().rigs("alpha", "beta").emptyRig("gamma").build(dir);
        pristine = s3.newBucket();
        try (TestDoltServer server = town.startDoltServer()) {
            product(pristine, town.root()).sync("--immediate").assertOk();
        }
        before = TownState.capture(town.root());
        snapshot = view(pristine).latest().orElseThrow().timestamp();
    }

    @AfterAll
    void cleanUp() {
        TestTools.deleteRecursively(dir);
    }

    private Product product(String bucket, Path root) {
        return Product.of(root, s3, bucket, TOWN);
    }

    private BucketView view(String bucket) {
        return BucketView.of(s3, bucket, TOWN);
    }

    private static void writeFile(Path file, String content) {
        try {
            Files.createDirectories(file.getParent());
            Files.writeString(file, content);
        } catch (IOException e) {
            throw new java.io.UncheckedIOException(e);
        }
    }

    /** A file of random bytes, written a MiB at a time. */
    private static void writeRandom(Path file, long size) throws IOException {
        Random random = new Random(size);
        byte[] chunk = new byte[1 << 20];
        try (java.io.OutputStream out = Files.newOutputStream(file)) {
            for (long left = size; left > 0; left -= chunk.length) {
                random.nextBytes(chunk);
                out.write(chunk, 0, (int) Math.min(chunk.length, left));
            }
        }
    }

    /** A fresh, empty volume for one restore. */
    private Path emptyVolume() {
        try {
            return Files.createDirectories(TestTools.tempDir("volume-").resolve("data"));
        } catch (IOException e) {
            throw new java.io.UncheckedIOException(e);
        }
    }

    /** A new bucket holding a copy of every object of the pristine one. */
    private String copyOfPristine() {
        return copyOf(pristine);
    }

    private String copyOf(String source) {
        String bucket = s3.newBucket();
        BucketView from = view(source);
        BucketView to = view(bucket);
        for (String key : from.keys("")) to.put(key, from.get(key));
        return bucket;
    }

    @Test
    void aRestoredTownIsTheTownThatWasBackedUp() {
        Path volume = emptyVolume();
        // A new machine: HOME is empty, no git or dolt identity; the suite's own identities are not visible.
        TestTools.ProcResult r = product(pristine, volume).onNewMachine().restore().assertOk();
        assertTrue(r.stderr().contains("restored from snapshot " + snapshot), r.stderr());
        TownState.assertSame(before, TownState.capture(volume));
        // One line per work tree says what in-progress work came back.
        assertTrue(r.stderr().contains("work tree alpha/polecats/furiosa/alpha (polecat/furiosa-"), r.stderr());
        assertTrue(r.stderr().lines().anyMatch(l -> l.contains("work tree alpha/polecats/furiosa/alpha")
                && l.contains("1 staged, 1 modified, 5 untracked, as backed up")), r.stderr());
        assertFalse(r.stderr().contains("WARN  restore: work tree"), r.stderr());

        assertFalse(Files.exists(volume.resolve(".r2-restore")), "staging removed");
        assertTrue(Files.isRegularFile(volume.resolve("mayor/town.json")));
        for (String skipped : town.skippedFiles()) assertFalse(Files.exists(volume.resolve(skipped)), skipped + " must not come back");
        // Worktrees were built in staging and moved: their links must point at the volume, not at staging.
        String worktrees = TestTools.git(volume.resolve("alpha/.repo.git"), "worktree", "list", "--porcelain");
        assertFalse(worktrees.contains(".r2-restore"), worktrees);
        for (String wt : town.worktrees().keySet())
            TestTools.git(volume.resolve(wt), "status", "--short");   // a working worktree
        // The remote is the rig's real upstream again, and fetching from it works.
        TestTools.git(volume.resolve("alpha/mayor/rig"), "fetch", "--quiet", "origin");
        TestTools.git(volume.resolve("alpha/.repo.git"), "fetch", "--quiet", "origin");
        // The databases come back clean.
        for (String db : town.databases()) {
            TestTools.dolt(volume.resolve(".dolt-data").resolve(db), "fsck");
            TestTools.dolt(volume.resolve(".dolt-data").resolve(db), "constraints", "verify", "--all", "--output-only");
        }
    }

    /**
     * Snapshots of format 3 (gastown-r2 0.3) stored each chain link as a bundle: they still restore, and a
     * sync over one extends its chains with packs (a chain then starts with a bundle), which restore too.
     */
    @Test
    void aFormat3SnapshotWithBundlesRestoresAndItsChainsGrowWithPacks() throws Exception {
        String bucket = copyOfPristine();
        BucketView v = view(bucket);
        rewriteManifest(v, manifest -> {
            var files = (com.fasterxml.jackson.databind.node.ArrayNode) manifest.get("files");
            for (var repo : manifest.get("repos")) {
                var chain = repo.get("chain");
                if (chain.isEmpty()) continue;
                // What 0.3 wrote: a v2 bundle, the refs then the same pack, under git/<path>.bundle/0.
                var link = (com.fasterxml.jackson.databind.node.ObjectNode) chain.get(0);
                ByteArrayOutputStream bundle = new ByteArrayOutputStream();
                bundle.writeBytes("# v2 git bundle\n".getBytes(StandardCharsets.UTF_8));
                repo.get("refs").fields().forEachRemaining(ref -> bundle.writeBytes(
                        (ref.getValue().asText() + " " + ref.getKey() + "\n").getBytes(StandardCharsets.UTF_8)));
                bundle.write('\n');
                bundle.writeBytes(v.get(v.objectKey(snapshot, link.get("file").asText())));
                String path = link.get("file").asText().replace(".packs/0.pack", ".bundle/0");
                String sha256 = Sha256.of(bundle.toByteArray());
                v.put(v.keys().object(new FileEntry(path, bundle.size(), sha256)), bundle.toByteArray());
                for (Iterator<com.fasterxml.jackson.databind.JsonNode> it = files.elements(); it.hasNext(); ) {
                    String p = it.next().get("path").asText();
                    if (p.equals(link.get("file").asText()) || p.equals(link.get("index").asText())) it.remove();
                }
                files.addObject().put("path", path).put("size", bundle.size()).put("sha256", sha256);
                link.put("file", path).remove("index");
                ((com.fasterxml.jackson.databind.node.ObjectNode) repo).set("bundles", chain);
                ((com.fasterxml.jackson.databind.node.ObjectNode) repo).remove("chain");
            }
            toTarPacks(v, manifest);
            manifest.put("formatVersion", 3);
        });

        Path volume = emptyVolume();
        product(bucket, volume).onNewMachine().restore().assertOk();
        TownState.assertSame(before, TownState.capture(volume));

        // A commit on the restored town: the next snapshot's chain is that bundle, then a pack.
        Path rig = volume.resolve("alpha/mayor/rig");
        writeFile(rig.resolve("after-format-3.txt"), "new\n");
        TestTools.git(rig, "add", "after-format-3.txt");
        TestTools.git(rig, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "--quiet", "-m", "after format 3");
        product(bucket, volume).sync("--immediate").assertOk();
        String next = v.latest().orElseThrow().timestamp();
        Manifest m = v.manifest(next);
        assertEquals(Manifest.FORMAT, m.formatVersion());
        List<ChainLink> chain = m.repo("alpha/mayor/rig/.git").orElseThrow().chain();
        assertEquals(2, chain.size(), chain.toString());
        assertTrue(chain.get(0).bundle() && !chain.get(1).bundle(), chain.toString());
        TownState after = TownState.capture(volume);
        Path again = emptyVolume();
        product(bucket, again).onNewMachine().restore().assertOk();
        TownState.assertSame(after, TownState.capture(again));
    }

    /** Rewrites the pristine snapshot's manifest in a bucket (latest.json pinned to the new one), as an older or damaged backup holds it. */
    /**
     * The town's files as 0.5 and older stored them: a tar pack and files/index.json.gz naming the pack of each path
     * (made from this snapshot's format 6 index and packs), in place of the content packs and the index pieces.
     */
    private void toTarPacks(BucketView v, com.fasterxml.jackson.databind.node.ObjectNode manifest) {
        try {
            Map<String, byte[]> packs = new HashMap<>();
            Map<String, byte[]> contents = new HashMap<>();
            ByteArrayOutputStream tarBytes = new ByteArrayOutputStream();
            var index = R2Common.JSON.createObjectNode();
            var entries = index.putArray("entries");
            try (var tar = new org.apache.commons.compress.archivers.tar.TarArchiveOutputStream(tarBytes)) {
                tar.setLongFileMode(org.apache.commons.compress.archivers.tar.TarArchiveOutputStream.LONGFILE_POSIX);
                for (TownEntry e : v.indexEntries(snapshot, TestTools.tempDir("tar-index-"))) {
                    var te = switch (e.type()) {
                        case TownEntry.DIR -> new org.apache.commons.compress.archivers.tar.TarArchiveEntry(e.path() + "/",
                                org.apache.commons.compress.archivers.tar.TarConstants.LF_DIR);
                        case TownEntry.SYMLINK -> new org.apache.commons.compress.archivers.tar.TarArchiveEntry(e.path(),
                                org.apache.commons.compress.archivers.tar.TarConstants.LF_SYMLINK);
                        default -> new org.apache.commons.compress.archivers.tar.TarArchiveEntry(e.path());
                    };
                    byte[] data = null;
                    if (e.type() == TownEntry.SYMLINK) te.setLinkName(e.target());
                    if (e.type() == TownEntry.FILE) {
                        byte[] pack = packs.computeIfAbsent(e.blob().pack(), id -> v.get(v.objectKey(snapshot, PackWriter.DIR + id)));
                        data = com.github.luben.zstd.Zstd.decompress(Arrays.copyOfRange(pack, (int) e.blob().offset(),
                                (int) (e.blob().offset() + e.blob().length())), (int) e.size());
                        contents.put(e.path(), data);
                    }
                    if (e.type() == TownEntry.HARDLINK) data = contents.get(e.target());   // 0.5 stored each name as a file
                    te.setMode((te.getMode() & ~0777) | e.mode());
                    te.setLastModifiedTime(java.nio.file.attribute.FileTime.from(e.mtime(), java.util.concurrent.TimeUnit.NANOSECONDS));
                    if (data != null) te.setSize(data.length);
                    tar.putArchiveEntry(te);
                    if (data != null) tar.write(data);
                    tar.closeArchiveEntry();
                    entries.addObject().put("path", e.path()).put("pack", "files/legacy.tar").put("size", e.size()).put("signature", "x");
                }
            }
            ByteArrayOutputStream gz = new ByteArrayOutputStream();
            try (var out = new java.util.zip.GZIPOutputStream(gz)) {
                R2Common.JSON.writeValue(out, index);
            }
            var files = (com.fasterxml.jackson.databind.node.ArrayNode) manifest.get("files");
            for (Iterator<com.fasterxml.jackson.databind.JsonNode> it = files.elements(); it.hasNext(); )
                if (it.next().get("path").asText().startsWith("files/")) it.remove();
            for (FileEntry f : List.of(new FileEntry("files/legacy.tar", tarBytes.size(), Sha256.of(tarBytes.toByteArray())),
                    new FileEntry(Keys.FILE_INDEX, gz.size(), Sha256.of(gz.toByteArray())))) {
                v.put(v.keys().object(f), f.path().endsWith(".tar") ? tarBytes.toByteArray() : gz.toByteArray());
                files.addObject().put("path", f.path()).put("size", f.size()).put("sha256", f.sha256());
            }
            manifest.remove("fileIndex");
        } catch (IOException e) {
            throw new java.io.UncheckedIOException(e);
        }
    }

    private void rewriteManifest(BucketView v, java.util.function.Consumer<com.fasterxml.jackson.databind.node.ObjectNode> edit) {
        String manifestKey = v.keys().object(snapshot, Keys.MANIFEST);
        try {
            var manifest = (com.fasterxml.jackson.databind.node.ObjectNode) R2Common.JSON.readTree(v.get(manifestKey));
            edit.accept(manifest);
            byte[] json = R2Common.JSON.writeValueAsBytes(manifest);
            v.put(manifestKey, json);
            v.put(v.keys().latest(), R2Common.toJson(new Pointer(snapshot, Sha256.of(json))));
        } catch (IOException e) {
            throw new java.io.UncheckedIOException(e);
        }
    }

    /**
     * A blob damaged inside a git pack whose sha256 the manifest agrees with (a backup written wrong, not one
     * corrupted in transit): a restore checks connectivity, which never reads a blob; --verify hashes every
     * object again and refuses it, naming the repo.
     */
    @Test
    void verifyHashesEveryGitObjectAgain() throws Exception {
        String bucket = copyOfPristine();
        BucketView v = view(bucket);
        String packPath = Keys.gitPacks("alpha/.repo.git") + "/0.pack";
        Path scratch = TestTools.tempDir("verify-");
        Path pack = v.download(snapshot, packPath, scratch);
        Path index = v.download(snapshot, Keys.gitPacks("alpha/.repo.git") + "/0.idx", scratch);
        // `git verify-pack -v`: sha1 type size size-in-pack offset; the biggest blob's zlib stream gets a byte flipped.
        String[] blob = TestTools.git(scratch, "verify-pack", "-v", index.toString()).lines().map(l -> l.trim().split("\\s+"))
                .filter(f -> f.length >= 5 && f[1].equals("blob")).max(Comparator.comparingLong(f -> Long.parseLong(f[3]))).orElseThrow();
        byte[] data = Files.readAllBytes(pack);
        data[(int) (Long.parseLong(blob[4]) + Long.parseLong(blob[3]) / 2)] ^= 0x5a;
        String sha256 = Sha256.of(data);
        v.put(v.keys().object(new FileEntry(packPath, data.length, sha256)), data);
        rewriteManifest(v, manifest -> manifest.get("files").forEach(f -> {
            if (f.get("path").asText().equals(packPath)) ((com.fasterxml.jackson.databind.node.ObjectNode) f).put("sha256", sha256);
        }));
        TestTools.deleteRecursively(scratch);

        Path volume = emptyVolume();
        TestTools.ProcResult verify = product(bucket, volume).restore("--verify");
        assertEquals(1, verify.exitCode(), verify.stderr());
        assertTrue(verify.stderr().contains("git fsck of alpha/.repo.git"), verify.stderr());
        assertEquals(TreeHash.of(emptyVolume()), TreeHash.of(volume), "--verify touches nothing");
        // What the boot-time restore checks (bytes as backed up, refs, connectivity) does not read that blob.
        product(bucket, volume).restore().assertOk();
    }

    /**
     * Selection is by exclusion: a town holding things nobody listed (a new top-level tree, an empty dir,
     * odd names, modes, a dangling link, an old mtime) comes back whole, restored on a new machine into the
     * same path after the town was destroyed.
     */
    @Test
    void aTownWithThingsNobodyListedComesBackWhole() throws Exception {
        Path own = TestTools.tempDir("unlisted-");
        TestTown t = TownBuilder.create().rigs("alpha").build(own);
        Path root = t.root();
        writeFile(root.resolve("newthing/deep/file"), "nobody listed me\n");
        Files.createDirectories(root.resolve("another"));
        writeFile(root.resolve("newthing/line\nbreak.txt"), "a newline in the name\n");
        writeFile(root.resolve("newthing/ünïcode ✓ name.md"), "unicode\n");
        writeFile(root.resolve("newthing/back\\slash.txt"), "a backslash is a character of a name on Linux\n");
        Files.createLink(root.resolve("newthing/second-name.txt"), root.resolve("newthing/deep/file"));
        writeFile(root.resolve("newthing/secret.key"), "k\n");
        Files.setPosixFilePermissions(root.resolve("newthing/secret.key"), java.nio.file.attribute.PosixFilePermissions.fromString("rw-------"));
        Files.setPosixFilePermissions(root.resolve("newthing/deep"), java.nio.file.attribute.PosixFilePermissions.fromString("rwx------"));
        Files.setLastModifiedTime(root.resolve("newthing/deep/file"), java.nio.file.attribute.FileTime.fromMillis(1_000_000_000_000L));
        Files.createSymbolicLink(root.resolve("newthing/points-nowhere"), Path.of("../missing/target"));
        Files.createSymbolicLink(root.resolve("newthing/points-outside"), Path.of("/etc/hostname"));
        writeFile(root.resolve("alpha/.runtime/new-kind/state.bin"), "runtime state of a kind nobody listed\n");
        String bucket = s3.newBucket();
        Product p = product(bucket, root);
        p.sync("--immediate").assertOk();
        TownState expected = TownState.capture(root);
        TestTools.deleteRecursively(root);
        Files.createDirectories(root);

        TestTools.ProcResult r = p.onNewMachine().restore().assertOk();
        TownState.assertSame(expected, TownState.capture(root));
        assertTrue(Files.isRegularFile(root.resolve("newthing/line\nbreak.txt")));
        assertTrue(Files.isRegularFile(root.resolve("newthing/back\\slash.txt")));
        assertEquals(Files.getAttribute(root.resolve("newthing/deep/file"), "unix:ino"),
                Files.getAttribute(root.resolve("newthing/second-name.txt"), "unix:ino"), "a hard link comes back as one");
        assertTrue(r.stderr().lines().noneMatch(l -> l.startsWith("break.txt")), "no name forges a log line:\n" + r.stderr());
        TestTools.deleteRecursively(own);
    }

    /**
     * A repo fresh from a gc keeps every object in one pack: its chain starts with that very pack (not one
     * written again), the repos that keep loose objects get packs of their own, and the town comes back whole
     * on a new machine.
     */
    @Test
    void aRepoKeptInOnePackGoesUpAsThatPackAndComesBack() throws Exception {
        Path own = TestTools.tempDir("one-pack-");
        TestTown t = TownBuilder.create().rigs("alpha").build(own);
        Path root = t.root();
        Path repo = root.resolve("alpha/.repo.git");
        TestTools.git(repo, "gc", "--quiet", "--prune=now");
        List<Path> packs;
        try (var s = Files.list(repo.resolve("objects/pack"))) {
            packs = s.filter(f -> f.toString().endsWith(".pack")).toList();
        }
        assertEquals(1, packs.size(), "after gc --prune=now the repo keeps one pack");
        String bucket = s3.newBucket();
        Product p = product(bucket, root);
        String log = p.sync("--immediate").assertOk().stderr();
        assertTrue(log.contains("git alpha/.repo.git keeps every object in one pack: that pack goes up as it is"), log);
        try (var s = Files.list(root.resolve("alpha/mayor/rig/.git/objects"))) {
            assertTrue(s.anyMatch(d -> d.getFileName().toString().matches("[0-9a-f]{2}")), "the rig clone keeps loose objects");
        }
        assertFalse(log.contains("git alpha/mayor/rig/.git keeps every object"), "a repo with loose objects gets a pack written for it");
        Manifest m = view(bucket).manifest(view(bucket).latest().orElseThrow().timestamp());
        FileEntry first = m.file(m.repo("alpha/.repo.git").orElseThrow().chain().get(0).file()).orElseThrow();
        assertEquals(Sha256.ofFile(packs.get(0), "pack").sha256(), first.sha256(), "the repo's own pack went up");
        TownState expected = TownState.capture(root);
        TestTools.deleteRecursively(root);
        Files.createDirectories(root);

        p.onNewMachine().restore().assertOk();
        TownState.assertSame(expected, TownState.capture(root));
        TestTools.deleteRecursively(own);
    }

    @Test
    void aVolumeThatHoldsDataIsNotTouched() {
        String tree = TreeHash.of(town.root());
        TestTools.ProcResult r = product(pristine, town.root()).restore().assertOk();
        assertTrue(r.stderr().contains("takes priority"), r.stderr());
        assertEquals(tree, TreeHash.of(town.root()));
    }

    @Test
    void noBackupAtAllIsANormalFirstBoot() {
        Path volume = emptyVolume();
        TestTools.ProcResult r = product(s3.newBucket(), volume).restore();
        assertEquals(0, r.exitCode(), r.stderr());
        assertTrue(r.stderr().contains("no backup"), r.stderr());
        assertEquals(TreeHash.of(emptyVolume()), TreeHash.of(volume), "nothing written");
    }

    @Test
    void aFileOverSixteenMiBGoesUpInPiecesAndEachPieceIsVerifiedOnTheWayBack() throws Exception {
        Path ownDir = TestTools.tempDir("pieces-");
        TestTown own = TownBuilder.create().rigs("alpha").build(ownDir);
        // Incompressible: the file pack holding the untracked file, and the git pack holding the commit, are as large.
        long model = 2 * Pieces.SIZE + (5 << 20);
        Path modelFile = own.root().resolve("alpha/crew/max/model.bin");
        writeRandom(modelFile, model);
        Path mayor = own.root().resolve("alpha/mayor/rig");
        Path weightsFile = mayor.resolve("weights.bin");
        writeRandom(weightsFile, Pieces.SIZE + (3 << 20));
        TestTools.git(mayor, "add", "weights.bin");
        TestTools.git(mayor, "commit", "--quiet", "-m", "weights");
        // Written well before the first scan: a path changed within 2 s of a scan is packed again by the next sync,
        // and every snapshot below is to share these two files' pieces.
        FileTime before = FileTime.from(Instant.now().minus(Duration.ofMinutes(1)));
        Files.setLastModifiedTime(modelFile, before);
        Files.setLastModifiedTime(weightsFile, before);
        TownState town = TownState.capture(own.root());
        String bucket = s3.newBucket();
        product(bucket, own.root()).sync("--immediate").assertOk();

        BucketView v = view(bucket);
        String ts = v.latest().orElseThrow().timestamp();
        Manifest m = v.manifest(ts);
        List<FileEntry> pieced = m.files().stream().filter(f -> f.pieces() != null).collect(Collectors.toList());
        assertTrue(pieced.stream().anyMatch(f -> f.path().equals("git/alpha/mayor/rig/.git.packs/0.pack")), "the mayor's git pack: " + pieced);
        FileEntry pack = pieced.stream().filter(f -> f.path().startsWith("files/") && f.size() > model).findFirst()
                .orElseThrow(() -> new AssertionError("the file pack holding model.bin: " + pieced));
        assertEquals(3, pack.parts().size());
        Map<String, Long> stored = v.sizes(v.keys().objects());
        for (FileEntry f : pieced) {
            assertEquals((f.size() + Pieces.SIZE - 1) / Pieces.SIZE, f.pieces().sha256().size(), f.path());
            assertFalse(stored.containsKey(v.keys().object(f)), f.path() + " is not stored whole");
            for (FileEntry.Part part : f.parts())
                assertEquals(Sha256.of(v.get(v.keys().object(part.object()))), part.object().sha256(), "each piece holds what its sha256 says");
        }
        stored.forEach((key, size) -> assertTrue(size <= Pieces.SIZE, key + ": no object is over a piece"));
        // Unchanged (a path changed within 2 s of a scan is read again at the next one): no piece goes up again.
        product(bucket, own.root()).sync("--immediate").assertOk();
        Map<String, Long> afterTwo = v.sizes(v.keys().objects());
        product(bucket, own.root()).sync("--immediate").assertOk();
        List<String> added = v.keys(v.keys().objects()).stream().filter(k -> !afterTwo.containsKey(k)).collect(Collectors.toList());
        assertEquals(List.of(), added.stream().filter(k -> k.contains("/files/packs/") || k.contains(".pack/")).collect(Collectors.toList()),
                "unchanged files and repos upload nothing");
        assertTrue(v.manifest(v.latest().orElseThrow().timestamp()).files().containsAll(pieced), "its files in pieces are reused");

        Path volume = emptyVolume();
        product(bucket, volume).onNewMachine().restore().assertOk();
        TownState.assertSame(town, TownState.capture(volume));

        String missingPiece = copyOf(bucket);
        view(missingPiece).delete(v.keys().object(pack.parts().get(1).object()));
        assertRefused(missingPiece, pack.path() + " (piece 2 of 3)", "missing");
        String corruptPiece = copyOf(bucket);
        String last = v.keys().object(pack.parts().get(2).object());
        byte[] data = v.get(last);
        data[1] ^= 0x5a;
        view(corruptPiece).put(last, data);
        assertRefused(corruptPiece, pack.path() + " (piece 3 of 3)", "sha256");
        TestTools.deleteRecursively(ownDir);
    }

    @Test
    void aCorruptedObjectIsRefusedAndTheVolumeStaysUntouched() {
        String bucket = copyOfPristine();
        BucketView v = view(bucket);
        String key = v.objectKey(snapshot, "git/alpha.packs/0.pack");
        byte[] data = v.get(key);
        data[data.length / 2] ^= 0x5a;
        v.put(key, data);
        assertRefused(bucket, "git/alpha.packs/0.pack", "sha256");
    }

    @Test
    void aTruncatedObjectIsRefused() {
        String bucket = copyOfPristine();
        BucketView v = view(bucket);
        FileEntry largest = v.manifest(snapshot).filesUnder("dolt/hq.backup").stream()
                .max(Comparator.comparingLong(FileEntry::size)).orElseThrow();
        String key = v.objectKey(snapshot, largest.path());
        byte[] data = v.get(key);
        v.put(key, Arrays.copyOf(data, data.length - 100));
        assertRefused(bucket, largest.path(), "bytes");
    }

    @Test
    void aDownloadStopsAtTheSizeTheManifestNames() {
        // An object made 8 MiB longer than its entry: the download reads one byte past the size and stops.
        String bucket = copyOfPristine();
        BucketView v = view(bucket);
        FileEntry piece = v.manifest(snapshot).file(v.manifest(snapshot).fileIndex().get(0)).orElseThrow();
        String key = v.objectKey(snapshot, piece.path());
        byte[] longer = Arrays.copyOf(v.get(key), (int) piece.size() + (8 << 20));
        v.put(key, longer);
        assertRefused(bucket, piece.path(), "has " + (piece.size() + 1) + " bytes, the manifest says " + piece.size());
    }

    @Test
    void aMissingObjectIsRefused() {
        String bucket = copyOfPristine();
        BucketView v = view(bucket);
        String piece = v.manifest(snapshot).fileIndex().get(0);
        v.delete(v.objectKey(snapshot, piece));
        assertRefused(bucket, piece, "missing");
    }

    @Test
    void aManifestThatLiesIsRefused() throws Exception {
        // The manifest claims another hash for a file, and an object under that hash holds the real bytes;
        // latest.json is re-pinned so only the lie remains.
        String bucket = copyOfPristine();
        BucketView v = view(bucket);
        Manifest m = v.manifest(snapshot);
        String piece = m.fileIndex().get(0);
        List<FileEntry> files = new ArrayList<>();
        for (FileEntry f : m.files()) {
            if (!f.path().equals(piece)) {
                files.add(f);
                continue;
            }
            FileEntry lie = new FileEntry(f.path(), f.size(), Sha256.of("lie".getBytes()));
            v.put(v.keys().object(lie), v.get(v.keys().object(f)));
            files.add(lie);
        }
        Manifest lying = new Manifest(m.formatVersion(), m.tool(), m.townId(), m.timestamp(), m.createdAt(), m.townRoot(), m.versions(),
                m.history(), files, m.fileIndex(), m.databases(), m.repos(), m.problems());
        byte[] json = R2Common.toJson(lying);
        v.put(v.keys().object(snapshot, Keys.MANIFEST), json);
        v.put(v.keys().latest(), R2Common.toJson(new Pointer(snapshot, Sha256.of(json))));
        assertRefused(bucket, piece, "sha256");
    }

    @Test
    void aManifestThatLatestJsonDoesNotPinIsRefused() {
        String bucket = copyOfPristine();
        BucketView v = view(bucket);
        String key = v.keys().object(snapshot, Keys.MANIFEST);
        v.put(key, (new String(v.get(key), StandardCharsets.UTF_8) + "\n").getBytes(StandardCharsets.UTF_8));
        assertRefused(bucket, "manifest.json", "pins");
    }

    @Test
    void aMalformedLatestJsonIsRefused() {
        String bucket = copyOfPristine();
        view(bucket).put(view(bucket).keys().latest(), "{\"timestamp\": 42".getBytes(StandardCharsets.UTF_8));
        assertRefused(bucket, "latest.json", "not valid");
    }

    @Test
    void aFileIndexNamingAPathThatClimbsOutIsRefused() throws Exception {
        for (String path : List.of("../escaped.txt", "/abs/escaped.txt", "settings/../../escaped.txt", "settings//x"))
            assertRefused(withIndex(List.of(HostileIndex.file(path, "x"))), "file index", "unsafe path in the file index");
    }

    @Test
    void anIndexThatWritesThroughASymlinkIsRefused() throws Exception {
        // A symlink is data and may point anywhere (a dangling one comes back as it was); nothing is ever written
        // through one. It points at a canary dir of the test's own, which must stay empty.
        Path canary = Files.createDirectories(TestTools.tempDir("canary"));
        String bucket = withIndex(List.of(HostileIndex.symlink("settings/evil", canary.toString()),
                HostileIndex.file("settings/evil/passwd", "x")));
        assertRefused(bucket, "settings/evil/passwd", "is not a directory of the snapshot");
        assertEquals(List.of(), children(canary), "nothing written into the symlink's target");
    }

    @Test
    void aHardLinkToASymlinkOrOutsideIsRefused() throws Exception {
        Path canary = Files.createDirectories(TestTools.tempDir("canary"));
        Files.writeString(canary.resolve("secret"), "outside");
        String bucket = withIndex(List.of(HostileIndex.symlink("settings/evil", canary.resolve("secret").toString()),
                HostileIndex.hardLink("settings/zz-link", "settings/evil")));
        assertRefused(bucket, "settings/zz-link", "not a file of the snapshot");
        assertRefused(withIndex(List.of(HostileIndex.hardLink("settings/zz-link", "../escaped.txt"))), "file index", "unsafe hard link target");
        assertEquals(List.of(canary.resolve("secret")), children(canary));
        assertEquals("outside", Files.readString(canary.resolve("secret")));
    }

    @Test
    void aRepoOrADatabaseWhereTheIndexPutsASymlinkIsRefused() throws Exception {
        // The index makes `evil` a symlink to a canary dir; the manifest names a git directory, then a database, there.
        Path canary = Files.createDirectories(TestTools.tempDir("canary"));
        String repoAtLink = withIndex(List.of(HostileIndex.symlink("evil", canary.toString())), m -> {
            List<RepoFacts> repos = new ArrayList<>(m.repos());
            repos.add(new RepoFacts("evil", List.of(), Map.of("refs/heads/main", "0".repeat(40)),
                    Map.of(), false, "x", List.of(), null));
            return repos;
        }, null);
        assertRefused(repoAtLink, "evil", "passes through a symlink");
        String dbAtLink = withIndex(List.of(HostileIndex.symlink("evil", canary.toString())), null, m -> {
            DatabaseFacts hq = m.databases().get(0);
            List<DatabaseFacts> dbs = new ArrayList<>(m.databases());
            dbs.add(new DatabaseFacts(hq.name(), "evil/" + hq.name(), hq.backup(), hq.serverRunning(), hq.branches(), hq.root()));
            return dbs;
        });
        assertRefused(dbAtLink, "evil/", "passes through a symlink");
        assertEquals(List.of(), children(canary), "nothing written into the symlink's target");
    }

    @Test
    void aSymbolicRefThatNamesNoRefIsRefused() {
        // Its value is written into the ref file as it is: only a ref under refs/ may be named.
        String bucket = copyOfPristine();
        BucketView v = view(bucket);
        rewriteManifest(v, manifest -> {
            var repo = (com.fasterxml.jackson.databind.node.ObjectNode) manifest.get("repos").get(0);
            String ref = repo.get("refs").fieldNames().next();
            repo.putObject("symrefs").put(ref, "config");
        });
        assertRefused(bucket, "manifest.json", "not a ref under refs/");
    }

    @Test
    void aContentLargerThanItsEntryOrNotItsSha256IsRefused() throws Exception {
        // A small pack frame that unpacks to 8 MiB of zeros, listed as a 10-byte file: never more than 10 bytes written.
        assertRefused(withIndex(List.of(HostileIndex.file("settings/bomb", new byte[8 << 20], 10))), "settings/bomb", "bytes");
        assertRefused(withIndex(List.of(HostileIndex.fileWithSha("settings/lie", "x", Sha256.of("y".getBytes())))),
                "settings/lie", "does not match its sha256");
    }

    @Test
    void aSnapshotLargerThanTheVolumeIsRefusedBeforeAnythingIsWritten() throws Exception {
        assertRefused(withIndex(List.of(HostileIndex.file("settings/huge", "x".getBytes(), 1L << 50))), "restore", "free");
    }

    @Test
    void anIndexNamingAPackTheManifestDoesNotListIsRefused() throws Exception {
        assertRefused(withIndex(List.of(HostileIndex.fileInPack("settings/x", "other-pack"))), "other-pack", "does not list");
    }

    /** Runs a restore onto an empty volume and asserts it fails naming the culprit, writing nothing. */
    private void assertRefused(String bucket, String culprit, String reason) {
        Path volume = emptyVolume();
        Path canary = volume.getParent().resolve("escaped.txt");
        Product p = product(bucket, volume);
        TestTools.ProcResult r = p.restore();
        assertEquals(1, r.exitCode(), r.stderr());
        assertTrue(r.stderr().contains(culprit) && r.stderr().contains(reason), "names " + culprit + " and '" + reason + "':\n" + r.stderr());
        assertOnlyTheFailureRecorded(volume, r);
        assertFalse(Files.exists(canary), "nothing written outside the volume");
        assertTrue(Files.exists(p.stateDir().resolve(RestoreState.FAILED)), "the failure is recorded for the sync");
        // The container goes on: `gt up` makes a fresh, empty town, which must not bury the good snapshots.
        TestTools.ProcResult sync = p.sync("--immediate");
        assertEquals(2, sync.exitCode(), "no town yet: " + sync.stderr());
        writeFile(volume.resolve("mayor/town.json"), "{}\n");
        sync = p.sync("--immediate");
        assertEquals(1, sync.exitCode(), sync.stderr());
        assertTrue(sync.stderr().contains("a restore of town " + p.env().get("TOWN_ID") + " failed"), "a sync refuses to back up over the good snapshots:\n" + sync.stderr());
    }

    @Test
    void snapshotOptionRestoresAnOlderSnapshot() throws Exception {
        Path copyDir = TestTools.tempDir("older-");
        TestTown own = TownBuilder.create().rigs("alpha").build(copyDir);
        String bucket = s3.newBucket();
        Product p = product(bucket, own.root());
        p.sync("--immediate").assertOk();
        String older = view(bucket).latest().orElseThrow().timestamp();
        TownState olderState = TownState.capture(own.root());
        Files.writeString(own.root().resolve("settings/config.json"), "{\"changed\":true}\n");
        TestTools.dolt(own.doltDb("hq"), "sql", "-q", "create table later(id int primary key)");
        TestTools.dolt(own.doltDb("hq"), "commit", "-Am", "later");
        p.sync("--immediate").assertOk();

        Path volume = emptyVolume();
        product(bucket, volume).restore("--snapshot", older).assertOk();
        TownState.assertSame(olderState, TownState.capture(volume));
        TestTools.deleteRecursively(copyDir);
    }

    @Test
    void anUnusableLatestSnapshotFallsBackToTheNewestOlderOneLoudly() throws Exception {
        String bucket = copyOfPristine();
        BucketView v = view(bucket);
        // A second, newer snapshot of the same town with a change of its own, then corrupt what only it holds.
        writeFile(town.root().resolve("settings/fallback-note"), "newer\n");
        // Restores from the pristine bucket made their volumes its writer: the class's town takes it back.
        product(bucket, town.root()).sync("--immediate", "--take-over").assertOk();
        Files.delete(town.root().resolve("settings/fallback-note"));   // the town is the class's pristine one
        String newest = v.latest().orElseThrow().timestamp();
        assertNotEquals(snapshot, newest);
        Set<String> older = v.manifest(snapshot).files().stream().map(f -> v.keys().object(f)).collect(Collectors.toSet());
        String key = v.manifest(newest).files().stream().map(f -> v.keys().object(f)).filter(k -> !older.contains(k))
                .findFirst().orElseThrow(() -> new AssertionError("the newer snapshot holds something of its own"));
        byte[] data = v.get(key);
        data[10] ^= 1;
        v.put(key, data);

        Path volume = emptyVolume();
        try (HeartbeatReceiver api = new HeartbeatReceiver()) {
            TestTools.ProcResult r = product(bucket, volume).with("GASTOWN_API_URL", api.baseUrl()).restore().assertOk();
            assertTrue(r.stderr().contains("FALLBACK"), r.stderr());
            assertTrue(r.stderr().contains("restored from snapshot " + snapshot), r.stderr());
            var body = R2Common.JSON.readTree(api.awaitRequests(1, Duration.ofSeconds(10)).get(0).body());
            assertEquals("restore", body.path("event").asText());
            assertEquals("fallback", body.path("status").asText());
            assertTrue(body.path("fallback").asBoolean());
            assertEquals(snapshot, body.path("snapshot").asText());
        }
        TownState.assertSame(before, TownState.capture(volume));

        // The snapshot passed over stays, whatever the history policy says, until an operator releases it.
        Product restored = product(bucket, volume);
        String list = restored.restore("--list").assertOk().stdout();
        assertTrue(list.contains("held: " + newest), list);
        for (int i = 0; i < 4; i++) restored.sync("--immediate").assertOk();
        assertTrue(v.manifestExists(newest), "the held snapshot outlives the policy's last 3");
        restored.restore("--release-held").assertOk();
        restored.sync("--immediate").assertOk();
        assertFalse(v.manifestExists(newest), "released, the policy removes it");
    }

    @Test
    void aNewestSnapshotThatFailsWithoutProofOfDamageIsNeverPassedOver() throws Exception {
        // A snapshot a newer version wrote (a format this one does not read) is no damaged one: falling back to an older
        // town would bury it. The restore fails, the volume untouched, and says what to do.
        String bucket = copyOfPristine();
        BucketView v = view(bucket);
        // Restores from the pristine bucket made their volumes its writer: the class's town takes it back.
        product(bucket, town.root()).sync("--immediate", "--take-over").assertOk();
        String newest = v.latest().orElseThrow().timestamp();
        String key = v.keys().object(newest, Keys.MANIFEST);
        var manifest = (com.fasterxml.jackson.databind.node.ObjectNode) R2Common.JSON.readTree(v.get(key));
        manifest.put("formatVersion", Manifest.FORMAT + 1);
        byte[] json = R2Common.JSON.writeValueAsBytes(manifest);
        v.put(key, json);
        v.put(v.keys().latest(), R2Common.toJson(new Pointer(newest, Sha256.of(json))));
        Path volume = emptyVolume();
        TestTools.ProcResult r = product(bucket, volume).restore();
        assertEquals(1, r.exitCode(), r.stderr());
        assertTrue(r.stderr().contains("nothing shows it is damaged") && !r.stderr().contains("FALLBACK"), r.stderr());
        assertOnlyTheFailureRecorded(volume, r);
    }

    /**
     * A failed restore leaves the volume as it was but for its marker at the root (which keeps every sync from
     * publishing the town that `gt up` then makes there); the marker says what failed.
     */
    private void assertOnlyTheFailureRecorded(Path volume, TestTools.ProcResult r) {
        Path marker = volume.resolve(RestoreState.FAILED_ON_VOLUME);
        try {
            assertTrue(Files.readString(marker).contains("\"error\""), "the failure is recorded on the volume:\n" + r.stderr());
            Files.delete(marker);
        } catch (IOException e) {
            throw new AssertionError("no failed-restore marker on the volume:\n" + r.stderr(), e);
        }
        assertEquals(TreeHash.of(emptyVolume()), TreeHash.of(volume), "the volume is untouched:\n" + r.stderr());
    }

    @Test
    void anErrorInARestoreIsAFailedRestoreNeverAFallback() throws Exception {
        // A real OutOfMemoryError in the newest snapshot's restore, with an older good one there to fall back to:
        // restored into another root, a linked worktree's gitdir file is read whole to point it at the new root, and
        // one of 64 MiB (sparse in the town) does not fit a 48 MiB heap. An Error says nothing about the snapshot.
        Path own = TestTools.tempDir("restore-error-");
        TestTown t = TownBuilder.create().rigs("alpha").partial().build(own);
        String bucket = s3.newBucket();
        Product p = product(bucket, t.root());
        p.sync("--immediate").assertOk();
        String older = view(bucket).latest().orElseThrow().timestamp();
        try (java.io.RandomAccessFile gitdir = new java.io.RandomAccessFile(
                t.rig("alpha").resolve(".repo.git/worktrees/alpha/gitdir").toFile(), "rw")) {
            gitdir.setLength(64L << 20);
        }
        p.sync("--immediate").assertOk();
        assertNotEquals(older, view(bucket).latest().orElseThrow().timestamp());

        Path volume = emptyVolume();
        try (HeartbeatReceiver api = new HeartbeatReceiver()) {
            Product restore = product(bucket, volume).with("GASTOWN_API_URL", api.baseUrl()).with("JAVA_TOOL_OPTIONS", "-Xmx48m");
            TestTools.ProcResult r = restore.restore();
            assertEquals(1, r.exitCode(), r.stderr());
            assertTrue(r.stderr().contains("OutOfMemoryError"), r.stderr());
            assertFalse(r.stderr().contains("FALLBACK") || r.stderr().contains("restored from snapshot"), r.stderr());
            var body = R2Common.JSON.readTree(api.awaitRequests(1, Duration.ofSeconds(10)).get(0).body());
            assertEquals("failed", body.path("status").asText(), body.toString());
            assertTrue(body.path("error").asText().contains("OutOfMemoryError"), body.toString());
            assertTrue(Files.exists(restore.stateDir().resolve(RestoreState.FAILED)), "the failure is recorded for the sync");
            assertOnlyTheFailureRecorded(volume, r);
        }
        TestTools.deleteRecursively(own);
    }

    @Test
    void listTellsTheTruthAsATableAndAsJson() throws Exception {
        Product p = product(pristine, emptyVolume());
        BucketView v = view(pristine);
        long bytes = v.manifest(snapshot).files().stream().mapToLong(f -> v.get(v.keys().object(f)).length).sum();
        var rows = R2Common.JSON.readTree(p.restore("--list", "--json").assertOk().stdout());
        assertEquals(1, rows.size());
        assertEquals(snapshot, rows.get(0).path("timestamp").asText());
        assertTrue(rows.get(0).path("latest").asBoolean());
        assertEquals("complete", rows.get(0).path("state").asText());
        assertEquals(bytes, rows.get(0).path("bytes").asLong());
        Manifest m = v.manifest(snapshot);
        assertEquals(m.files().size(), rows.get(0).path("files").asInt());
        assertEquals(bytes, rows.get(0).path("newBytes").asLong(), "the first snapshot added all it holds");
        assertEquals("last, hourly, daily", rows.get(0).path("keptBy").asText());
        String table = p.restore("--list").assertOk().stdout();
        assertTrue(table.lines().anyMatch(l -> l.startsWith(snapshot) && l.contains("complete") && l.contains("latest")), table);
    }

    @Test
    void verifySaysYesForAGoodSnapshotAndNoForABadOneTouchingNothing() {
        Path volume = emptyVolume();
        Product good = product(pristine, volume);
        TestTools.ProcResult ok = good.restore("--verify").assertOk();
        assertTrue(ok.stderr().contains("restores"), ok.stderr());
        assertEquals(TreeHash.of(emptyVolume()), TreeHash.of(volume));

        String bucket = copyOfPristine();
        BucketView v = view(bucket);
        String key = v.objectKey(snapshot, "git/beta/crew/max/.git.packs/0.pack");
        byte[] data = v.get(key);
        data[data.length - 1] ^= 1;
        v.put(key, data);
        TestTools.ProcResult bad = product(bucket, volume).restore("--verify");
        assertEquals(1, bad.exitCode(), bad.stderr());
        assertTrue(bad.stderr().contains("git/beta/crew/max/.git.packs"), bad.stderr());
        assertEquals(TreeHash.of(emptyVolume()), TreeHash.of(volume));
    }

    @Test
    void aRestoreKilledHalfWayIsCompletedByTheNextRun() throws Exception {
        // Kill -9 at three moments: while downloading, while rebuilding in staging, and as late as we can see.
        List<String> moments = List.of(".r2-restore/download", ".r2-restore/town/.dolt-data", ".r2-restore/moving.json");
        for (String moment : moments) {
            Path volume = emptyVolume();
            Product p = product(pristine, volume);
            try (Product.Started restore = p.start("R2Restore")) {
                TestTools.await(() -> Files.exists(volume.resolve(moment)) || !restore.process().isAlive(), Duration.ofSeconds(60), 1);
                restore.close();   // SIGKILL to the JVM and its dolt/git children
            }
            assertFalse(Files.exists(volume.resolve("mayor/town.json")) && Files.exists(volume.resolve(".r2-restore"))
                    && !Files.exists(volume.resolve(".r2-restore/moving.json")), "a half town never looks complete");
            TestTools.ProcResult again = p.restore().assertOk();
            TownState.assertSame(before, TownState.capture(volume));
            assertFalse(Files.exists(volume.resolve(".r2-restore")), moment + ": staging gone\n" + again.stderr());
        }
    }

    private static List<Path> children(Path dir) throws IOException {
        try (var s = Files.list(dir)) {
            return s.sorted().collect(Collectors.toList());
        }
    }

    // --- hostile file indexes ------------------------------------------------------------------------

    /**
     * A copy of the pristine bucket whose file index also holds these entries (in path order among the real ones),
     * in one piece written as raw bytes (so it can say what a well-behaved sync never would), with their contents in
     * one more pack; the manifest and the pointer are re-pinned to match.
     */
    private String withIndex(List<HostileIndex.Raw> hostile) throws IOException {
        return withIndex(hostile, null, null);
    }

    /** The same, with the manifest's repos and databases as repos and databases make them (null: as they are). */
    private String withIndex(List<HostileIndex.Raw> hostile, java.util.function.Function<Manifest, List<RepoFacts>> repos,
                             java.util.function.Function<Manifest, List<DatabaseFacts>> databases) throws IOException {
        String bucket = copyOfPristine();
        BucketView v = view(bucket);
        Manifest m = v.manifest(snapshot);
        HostileIndex index = new HostileIndex(v.indexEntries(snapshot, TestTools.tempDir("index")), hostile);
        byte[] piece = index.piece();
        byte[] pack = index.pack();
        FileEntry pieceEntry = new FileEntry(IndexWriter.DIR + Sha256.of(piece), piece.length, Sha256.of(piece));
        FileEntry packEntry = new FileEntry(PackWriter.DIR + HostileIndex.PACK, pack.length, Sha256.of(pack));
        v.put(v.keys().object(pieceEntry), piece);
        v.put(v.keys().object(packEntry), pack);
        List<FileEntry> files = new ArrayList<>();
        for (FileEntry f : m.files()) if (!m.fileIndex().contains(f.path())) files.add(f);
        files.add(pieceEntry);
        files.add(packEntry);
        byte[] json = R2Common.toJson(new Manifest(m.formatVersion(), m.tool(), m.townId(), m.timestamp(), m.createdAt(),
                m.townRoot(), m.versions(), m.history(), files, List.of(pieceEntry.path()),
                databases == null ? m.databases() : databases.apply(m), repos == null ? m.repos() : repos.apply(m), m.problems()));
        v.put(v.keys().object(snapshot, Keys.MANIFEST), json);
        v.put(v.keys().latest(), R2Common.toJson(new Pointer(snapshot, Sha256.of(json))));
        return bucket;
    }
}

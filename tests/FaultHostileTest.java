import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.SortedMap;
import java.util.TreeMap;
import java.util.function.Consumer;
import java.util.function.Function;
import org.junit.jupiter.api.Test;

/**
 * Hostile or broken backups: refused with a clear error, nothing written outside staging. Each one is a damaged copy
 * of the template (a small town synced once) in a bucket of its own, restored into an empty root or with --force over
 * a town, next to a canary dir.
 */
class FaultHostileTest extends FaultSuite {
    /** A small town synced once: the template that hostile and broken backups are made from. */
    private Lane template;
    private Map<String, byte[]> templateObjects;
    private String templateTs;

    @Override
    void start() {
        submit(() -> {
            template = lane("template", TownBuilder.create().rigs());
            template.firstSync();
            templateTs = template.pointer().timestamp();
            templateObjects = new TreeMap<>();
            String prefix = FaultKit.Store.town(template.townId);
            for (String key : store.list(template.bucket, prefix).keySet())
                templateObjects.put(key.substring(prefix.length()), store.get(template.bucket, key));
            hostileBackups(group("hostile"));
        }, "hostile");
    }

    @Test
    void hostileAndBrokenBackupsAreRefusedAndTouchNothing() {
        check("hostile");
    }

    private void hostileBackups(FaultKit.Group g) {
        String snap = "snapshots/" + templateTs + "/";
        String piece = fileIndexOf(templateObjects).get(0);
        hostile(g, "truncated object (a file pack cut in half)", "(truncated or replaced)", false,
                o -> o.put(objectOf(o, packOf(o)), java.util.Arrays.copyOf(o.get(objectOf(o, packOf(o))), o.get(objectOf(o, packOf(o))).length / 2)));
        hostile(g, "corrupted object (one byte of a dolt/hq.backup table file flipped)", "does not match its sha256", true,
                o -> o.get(objectOf(o, largestUnder(o, "dolt/hq.backup")))[100] ^= 0x5a);
        hostile(g, "missing object (the first piece of the file index deleted)", piece, false,
                o -> o.remove(objectOf(o, piece)));
        hostile(g, "manifest with a wrong checksum (an object under that hash holds other bytes)", "does not match its sha256", true,
                o -> {
                    String pack = packOf(o);
                    o.put("incremental/" + pack + "/" + "0".repeat(64), o.get(objectOf(o, pack)));
                    editManifest(o, m -> fileEntry(m, pack).put("sha256", "0".repeat(64)));
                });
        hostile(g, "manifest with a wrong size (of a piece of the file index)", "the manifest says", false,
                o -> editManifest(o, m -> fileEntry(m, piece).put("size", 12345)));
        hostile(g, "malformed latest.json", "latest.json is not valid", true,
                o -> o.put("latest.json", "{\"timestamp\": \"2026".getBytes(StandardCharsets.UTF_8)));
        hostile(g, "latest.json that is JSON but names no snapshot", "latest.json is not valid", false,
                o -> o.put("latest.json", "{\"timestamp\": \"../../etc\"}".getBytes(StandardCharsets.UTF_8)));
        hostile(g, "malformed manifest.json (pinned by latest.json)", "manifest.json of " + templateTs + " is not valid", true,
                o -> {
                    o.put(snap + "manifest.json", "{\"formatVersion\": 3, \"files\": [".getBytes(StandardCharsets.UTF_8));
                    pin(o);
                });
        hostile(g, "manifest.json replaced without the pointer", "is not the one latest.json pins", false,
                o -> {
                    byte[] m = o.get(snap + "manifest.json");
                    o.put(snap + "manifest.json", (new String(m, StandardCharsets.UTF_8) + "\n").getBytes(StandardCharsets.UTF_8));
                });
        // A piece of the file index whose path climbs out, in the files and in fileIndex alike.
        hostile(g, "manifest listing a file outside the snapshot", "unsafe file path", true,
                o -> editManifest(o, m -> {
                    String outside = "../../other-town/" + piece;
                    fileEntry(m, piece).put("path", outside);
                    ArrayNode fileIndex = (ArrayNode) m.get("fileIndex");
                    for (int i = 0; i < fileIndex.size(); i++) if (fileIndex.get(i).asText().equals(piece)) fileIndex.set(i, outside);
                }));
        hostile(g, "latest.json naming a deleted snapshot (the only one)", "manifest.json of " + templateTs + " is missing", false,
                o -> o.keySet().removeIf(k -> k.startsWith(snap)));
        g.fault("hostile: latest.json naming a deleted snapshot, an older one intact: refused, then a loud fallback", () -> {
            Map<String, byte[]> objects = new TreeMap<>(templateObjects);
            objects.put("latest.json", "{\"timestamp\": \"20990101T000000Z\"}".getBytes(StandardCharsets.UTF_8));
            String bucket = s3.newBucket();
            objects.forEach((k, v) -> store.put(bucket, FaultKit.Store.town(template.townId) + k, v));
            Path base = TestTools.tempDir("fault-hostile-");
            try {
                TestTools.ProcResult r = template.restoreFrom(bucket, base.resolve("town"), base.resolve("state"));
                if (r.exitCode() != 0) throw new AssertionError("exit " + r.exitCode() + "\n" + r.stderr());
                assertMentions(r.stderr(), "manifest.json of 20990101T000000Z is missing");
                assertMentions(r.stderr(), "FALLBACK");
                String diff = template.states.get(templateTs).diff(TownState.capture(base.resolve("town")));
                if (!diff.isEmpty()) throw new FaultKit.DataLoss("the fallback restore differs from " + templateTs + ":\n" + diff);
            } finally {
                TestTools.deleteRecursively(base);
            }
        });
        hostile(g, "latest.json missing while a snapshot exists", "latest.json is missing although snapshots exist", true,
                o -> o.remove("latest.json"));
        // File indexes with hostile entries (and a pack with their contents), which a restore reads; the manifest and
        // the pointer are fixed up, so only the index is hostile. The canary dir beside the town must stay unchanged.
        hostileIndex(g, "entry with ../ climbing out", "unsafe path in the file index",
                c -> List.of(HostileIndex.file("../../../canary/pwned-dotdot", "pwned")));
        hostileIndex(g, "absolute path", "unsafe path in the file index",
                c -> List.of(HostileIndex.file(c.resolve("pwned-absolute").toString(), "pwned")));
        // A symlink is data and may point anywhere; writing through one is what is refused.
        hostileIndex(g, "symlink pointing outside (absolute), then a file through it", "is not a directory of the snapshot",
                c -> List.of(HostileIndex.symlink("settings/evil", c.toString()), HostileIndex.file("settings/evil/pwned-symlink", "pwned")));
        hostileIndex(g, "symlink pointing outside (relative), then a file through it", "is not a directory of the snapshot",
                c -> List.of(HostileIndex.symlink("settings/evil", "../../../canary"), HostileIndex.file("settings/evil/pwned-symlink", "pwned")));
        hostileIndex(g, "write through a symlink inside the town", "is not a directory of the snapshot",
                c -> List.of(HostileIndex.symlink("settings/loop", "."), HostileIndex.file("settings/loop/pwned-through", "pwned")));
        // A hard link target that climbs out does not parse; a file outside is reached through a symlink of the snapshot.
        hostileIndex(g, "hard link to a file outside (a symlink to it)", "not a file of the snapshot",
                c -> List.of(HostileIndex.symlink("settings/evil", c.resolve("secret.txt").toString()),
                        HostileIndex.hardLink("settings/hl", "settings/evil")));
        hostileIndex(g, "hard link to /etc/passwd", "unsafe hard link target", c -> List.of(HostileIndex.hardLink("settings/passwd", "/etc/passwd")));
        // The index has no device nodes or fifos: an entry whose type byte says one (as tar and ls write them).
        hostileIndex(g, "character device node", "unknown entry type", c -> List.of(HostileIndex.ofType("settings/null", 'c')));
        hostileIndex(g, "block device node", "unknown entry type", c -> List.of(HostileIndex.ofType("settings/disk", 'b')));
        hostileIndex(g, "fifo", "unknown entry type", c -> List.of(HostileIndex.ofType("settings/pipe", 'p')));
        // 16 MiB of zeros in a frame of a few hundred bytes, listed as 4096 bytes: never more than that is written.
        hostileIndex(g, "oversized entry (a bomb: 16 MiB unpacked from its pack, 4096 bytes listed)", "4096 bytes",
                c -> List.of(HostileIndex.file("plugins/bomb.bin", new byte[16 << 20], 4096)));
        hostileIndex(g, "entry appearing twice (overwrite)", "twice",
                c -> List.of(HostileIndex.file(".runtime/twice.json", "one"), HostileIndex.file(".runtime/twice.json", "two")));
        hostile(g, "a dolt backup file named with ../", "unsafe file path", true,
                o -> editManifest(o, m -> fileEntry(m, largestUnder(o, "dolt/hq.backup")).put("path", "dolt/hq.backup/../../../canary/pwned-dolt")));
        hostile(g, "a dolt backup whose manifest is not dolt's", "dolt backup restore hq failed", false,
                o -> replaceFile(o, "dolt/hq.backup/manifest", "not a backup".getBytes(StandardCharsets.UTF_8)));
        hostile(g, "pack cut short (hashes fixed up)", "past the end of pack", false, o -> {
            byte[] pack = o.get(objectOf(o, packOf(o)));
            replaceFile(o, packOf(o), java.util.Arrays.copyOf(pack, Math.min(3000, pack.length / 2)));
        });
        // A pack holds contents, not paths (what a tar pack could lack): the content the index names for a path is not
        // the one at its place in the pack.
        hostileIndex(g, "content other than the one the file index names for a path", "does not match its sha256",
                c -> List.of(HostileIndex.fileWithSha("settings/lie.json", "pwned", FaultKit.sha256("{}".getBytes(StandardCharsets.UTF_8)))));
        hostile(g, "a missing link of a chain of packs", ".packs/0.pack", false, o -> o.remove(objectOf(o, fileEntries(o).stream()
                .map(f -> f.path("path").asText()).filter(p -> p.endsWith(".packs/0.pack")).findFirst().orElseThrow())));
        hostile(g, "a git pack with another pack's index (hashes fixed up)", "is not the index of its pack", false, o -> {
            List<String> indexes = fileEntries(o).stream().map(f -> f.path("path").asText()).filter(p -> p.endsWith(".idx")).toList();
            replaceFile(o, indexes.get(0), o.get(objectOf(o, indexes.get(1))));
        });
        hostile(g, "a deleted dolt table file", "dolt/hq.backup", true,
                o -> o.remove(objectOf(o, largestUnder(o, "dolt/hq.backup"))));
    }

    /**
     * A hostile file index: the template's entries, a benign file, and what {@code content} adds (given the canary
     * dir), in one piece written as raw bytes (a well-behaved sync never writes such an index), with the contents
     * of the added files in one more pack; the manifest lists the piece as the whole index, and the pack.
     */
    private void hostileIndex(FaultKit.Group g, String name, String mention, Function<Path, List<HostileIndex.Raw>> content) {
        hostile(g, "an index with " + name, mention, name.length() % 2 == 0, (o, canary) -> {
            List<HostileIndex.Raw> entries = new ArrayList<>(List.of(HostileIndex.file("settings/ok.json", "{}")));
            entries.addAll(content.apply(canary));
            HostileIndex index = new HostileIndex(indexEntriesOf(o), entries);
            byte[] piece = index.piece();
            byte[] pack = index.pack();
            String piecePath = IndexWriter.DIR + FaultKit.sha256(piece);
            String packPath = PackWriter.DIR + HostileIndex.PACK;
            o.put("incremental/" + piecePath + "/" + FaultKit.sha256(piece), piece);
            o.put("incremental/" + packPath + "/" + FaultKit.sha256(pack), pack);
            List<String> before = fileIndexOf(o);
            editManifest(o, m -> {
                ArrayNode files = (ArrayNode) m.get("files");
                for (int i = files.size() - 1; i >= 0; i--)
                    if (before.contains(files.get(i).path("path").asText())) files.remove(i);
                files.addObject().put("path", piecePath).put("size", piece.length).put("sha256", FaultKit.sha256(piece));
                files.addObject().put("path", packPath).put("size", pack.length).put("sha256", FaultKit.sha256(pack));
                m.putArray("fileIndex").add(piecePath);
            });
        });
    }

    /** The template snapshot's first file pack (a path of its manifest). */
    private static String packOf(Map<String, byte[]> objects) {
        return fileEntries(objects).stream().map(f -> f.path("path").asText()).filter(p -> p.startsWith(PackWriter.DIR))
                .findFirst().orElseThrow();
    }

    /** The pieces of the template snapshot's file index, in order (paths of its manifest). */
    private static List<String> fileIndexOf(Map<String, byte[]> objects) {
        List<String> pieces = new ArrayList<>();
        manifestOf(objects).path("fileIndex").forEach(p -> pieces.add(p.asText()));
        if (pieces.isEmpty()) throw new AssertionError("the template manifest has no fileIndex");
        return pieces;
    }

    /** Every entry of the template snapshot's file index, in order, read as a restore reads it. */
    private static List<TownEntry> indexEntriesOf(Map<String, byte[]> objects) {
        Path dir = TestTools.tempDir("fault-index-");
        try {
            List<Path> pieces = new ArrayList<>();
            for (String piece : fileIndexOf(objects)) {
                Path local = dir.resolve(String.valueOf(pieces.size()));
                Files.write(local, objects.get(objectOf(objects, piece)));
                pieces.add(local);
            }
            List<TownEntry> entries = new ArrayList<>();
            try (IndexReader index = IndexReader.index(pieces)) {
                for (TownEntry e; (e = index.next()) != null; ) entries.add(e);
            }
            return entries;
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        } finally {
            TestTools.deleteRecursively(dir);
        }
    }

    /** The largest file under a dir of the template snapshot (a database's biggest table file). */
    private static String largestUnder(Map<String, byte[]> objects, String dir) {
        return fileEntries(objects).stream().filter(f -> f.path("path").asText().startsWith(dir + "/"))
                .max(java.util.Comparator.comparingLong(f -> f.path("size").asLong())).orElseThrow().path("path").asText();
    }

    /** Where one file of the template snapshot lives: incremental/<path>/<sha256> (town-relative). */
    private static String objectOf(Map<String, byte[]> objects, String path) {
        return fileEntries(objects).stream().filter(f -> f.path("path").asText().equals(path))
                .map(f -> "incremental/" + path + "/" + f.path("sha256").asText()).findFirst()
                .orElseThrow(() -> new AssertionError("the template snapshot has no file " + path));
    }

    private static List<com.fasterxml.jackson.databind.JsonNode> fileEntries(Map<String, byte[]> objects) {
        List<com.fasterxml.jackson.databind.JsonNode> files = new ArrayList<>();
        manifestOf(objects).path("files").forEach(files::add);
        return files;
    }

    /** The template snapshot's manifest (as the objects hold it now). */
    private static JsonNode manifestOf(Map<String, byte[]> objects) {
        String key = objects.keySet().stream().filter(k -> k.startsWith("snapshots/") && k.endsWith("/manifest.json")).findFirst().orElseThrow();
        try {
            return FaultKit.JSON.readTree(objects.get(key));
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    private void hostile(FaultKit.Group g, String name, String mention, boolean force, Consumer<Map<String, byte[]>> mutate) {
        hostile(g, name, mention, force, (o, canary) -> mutate.accept(o));
    }

    /**
     * Restores a damaged copy of the template snapshot into a town (an empty root, or with --force one
     * that holds data) next to a canary dir: the restore must fail naming the problem, and nothing under
     * their common parent may change (no staging left, nothing written outside it, the town untouched).
     */
    private void hostile(FaultKit.Group g, String name, String mention, boolean force,
                         java.util.function.BiConsumer<Map<String, byte[]>, Path> mutate) {
        g.fault("hostile: " + name, () -> {
            Path base = TestTools.tempDir("fault-hostile-");
            try {
                Path root = base.resolve("town");
                Path canary = base.resolve("canary");
                Files.createDirectories(canary);
                Files.writeString(canary.resolve("secret.txt"), "canary\n");
                if (force) writeSentinelTown(root);
                else Files.createDirectories(root);
                Map<String, byte[]> objects = new TreeMap<>();
                templateObjects.forEach((k, v) -> objects.put(k, v.clone()));
                mutate.accept(objects, canary);
                String bucket = s3.newBucket();
                objects.forEach((k, v) -> store.put(bucket, FaultKit.Store.town(template.townId) + k, v));
                SortedMap<String, String> before = FaultKit.tree(base);
                Path state = TestTools.tempDir("fault-state-");
                TestTools.ProcResult r = template.restoreFrom(bucket, root, state, force ? new String[] {"--force"} : new String[0]);
                if (r.exitCode() == 0) {
                    // A restore that went through: whatever it wrote is compared in full (no failure marker to expect).
                    FaultKit.assertUntouched("the town and its surroundings", before, FaultKit.tree(base));
                    throw new AssertionError("a hostile backup was not refused (exit 0)\n" + TestTools.tail(r.stderr(), 2500));
                }
                // Refused: nothing changed but the failure recorded at the town root (and in the state dir and the bucket).
                assertUntouchedAfterFailedRestore("the town and its surroundings", before, base, root, state, bucket, template.townId);
                if (r.exitCode() != 1)
                    throw new AssertionError("a hostile backup was not refused (exit " + r.exitCode() + ")\n" + TestTools.tail(r.stderr(), 2500));
                assertMentions(r.stderr(), mention);
                if (r.stderr().contains("\tat ")) throw new AssertionError("stack trace:\n" + r.stderr());
                if (!Files.exists(state.resolve("restore-failed.json")))
                    throw new AssertionError("no restore-failed.json marker after a failed restore");
            } finally {
                TestTools.deleteRecursively(base);
            }
        });
    }

    private void replaceFile(Map<String, byte[]> objects, String path, byte[] data) {
        objects.put("incremental/" + path + "/" + FaultKit.sha256(data), data);
        editManifest(objects, m -> fileEntry(m, path).put("size", data.length).put("sha256", FaultKit.sha256(data)));
    }

    private void editManifest(Map<String, byte[]> objects, Consumer<ObjectNode> edit) {
        String key = "snapshots/" + templateTs + "/manifest.json";
        try {
            ObjectNode m = (ObjectNode) FaultKit.JSON.readTree(objects.get(key));
            edit.accept(m);
            objects.put(key, FaultKit.JSON.writerWithDefaultPrettyPrinter().writeValueAsBytes(m));
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        pin(objects);
    }

    /** Makes latest.json pin the (edited) manifest, so only the part under test is broken. */
    private void pin(Map<String, byte[]> objects) {
        byte[] manifest = objects.get("snapshots/" + templateTs + "/manifest.json");
        String pointer = "{\n  \"timestamp\" : \"" + templateTs + "\",\n  \"manifestSha256\" : \"" + FaultKit.sha256(manifest) + "\"\n}";
        objects.put("latest.json", pointer.getBytes(StandardCharsets.UTF_8));
    }

    private static ObjectNode fileEntry(ObjectNode manifest, String path) {
        for (JsonNode f : (ArrayNode) manifest.get("files"))
            if (f.path("path").asText().equals(path)) return (ObjectNode) f;
        throw new AssertionError("no " + path + " in the template manifest");
    }
}

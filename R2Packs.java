// File packs: every path of the town outside the skip list, stored incrementally (part of R2Common,
// included with //SOURCES). A cycle packs only the paths that changed since the previous snapshot into
// new tars ("packs"); the file index says which pack holds each path. A path whose type, mode, size, mtime
// and inode are as they were is not read again: the index entry of the previous snapshot is kept.
//   PathStat    what the scan saw of a path, enough to tell it did not change
//   FileIndex   path -> pack, the object files/index.json.gz of every snapshot
//   FilePacks   which paths go into new packs this cycle, and restoring the town from packs

import java.io.*;
import java.nio.file.*;
import java.time.Instant;
import java.util.*;
import java.util.stream.Collectors;
import java.util.zip.GZIPInputStream;
import java.util.zip.GZIPOutputStream;

/** A path as the scan saw it: its size, and a signature (type, mode, size, mtime, inode) that changes with it. */
record PathStat(long size, String signature, Instant modified) {}

/**
 * Which pack holds each path. An entry's signature is the path's PathStat when it was packed; it is only
 * compared with the next scan's, never trusted for restore (the pack's tar entry is what is restored).
 */
record FileIndex(List<FileIndex.Entry> entries) {
    record Entry(String path, String pack, long size, String signature) {
        Entry {
            Town.requireSafeRelative(path, "path in the file index");
            Town.requireSafeRelative(pack, "pack in the file index");
        }
    }

    FileIndex {
        entries = entries == null ? List.of() : List.copyOf(entries);
    }

    Map<String, Entry> byPath() {
        Map<String, Entry> map = new HashMap<>();
        for (Entry e : entries)
            if (map.put(e.path(), e) != null) throw new IllegalArgumentException("path listed twice in the file index: " + e.path());
        return map;
    }

    FileEntry write(Path file) throws IOException {
        Sha256.HashingOutputStream hashing;
        try (OutputStream out = Files.newOutputStream(file, StandardOpenOption.CREATE_NEW)) {
            hashing = new Sha256.HashingOutputStream(new BufferedOutputStream(out, 1 << 16));
            try (GZIPOutputStream gz = new GZIPOutputStream(hashing)) {
                R2Common.JSON.writeValue(gz, this);
            }
        }
        return hashing.entry(Keys.FILE_INDEX);
    }

    static FileIndex read(Path file) {
        try (InputStream in = new GZIPInputStream(new BufferedInputStream(Files.newInputStream(file)))) {
            FileIndex index = R2Common.JSON.readValue(in, FileIndex.class);
            index.byPath();
            return index;
        } catch (IOException | RuntimeException e) {
            throw new R2Exception(R2Common.EXIT_FAILED, Keys.FILE_INDEX + " is unreadable: " + R2Cli.messageChain(e), e);
        }
    }
}

final class FilePacks {
    /** A pack is closed at this size: packs download in parallel, and a partly dead one is repacked cheaply. */
    static final long PACK_BYTES = 32L << 20;
    /** A pack more than half dead (and by at least SMALL_PACK) has its live paths packed again: its space comes back. */
    static final double MAX_DEAD = 0.5;
    /** Packs smaller than this are merged once there are more than MAX_SMALL_PACKS of them. */
    static final long SMALL_PACK = 1L << 20;
    static final int MAX_SMALL_PACKS = 16;
    /** A path changed this close to the scan may change again within the same mtime: it is read again next cycle. */
    static final long RACY_MILLIS = 2000;

    private FilePacks() {}

    /**
     * The result of one cycle: the new index (with its local file), the packs written this cycle (with local
     * files, to upload), the packs of earlier snapshots still in use, and how many paths were packed again.
     */
    record Packed(FileIndex indexObject, FileEntry index, Path indexFile, Map<FileEntry, Path> written, List<FileEntry> kept,
                  int packedPaths, int unchangedPaths) {}

    /**
     * Packs what changed. previous: the last snapshot's index and pack entries (null: pack everything);
     * stored: whether a pack is still in the bucket (a pack that is gone has its paths packed again).
     */
    static Packed pack(Town town, FileIndex previous, Map<String, FileEntry> previousPacks, java.util.function.Predicate<FileEntry> stored,
                       Path workDir, String packPrefix) throws IOException {
        Map<String, FileIndex.Entry> before = previous == null ? Map.of() : previous.byPath();
        long racyBefore = town.scannedAt().toEpochMilli() - RACY_MILLIS;
        Map<String, FileIndex.Entry> kept = new TreeMap<>();
        List<String> changed = new ArrayList<>();
        for (String path : town.files()) {
            PathStat stat = town.stats().get(path);
            FileIndex.Entry old = before.get(path);
            FileEntry pack = old == null ? null : previousPacks.get(old.pack());
            if (old != null && stat != null && old.signature().equals(stat.signature()) && pack != null && stored.test(pack))
                kept.put(path, old);
            else
                changed.add(path);
        }
        // Packs mostly dead, or too many small ones: their live paths go into this cycle's packs.
        Map<String, Long> live = new HashMap<>();
        kept.values().forEach(e -> live.merge(e.pack(), tarBytes(e.size()), Long::sum));
        List<String> small = live.keySet().stream().filter(p -> previousPacks.get(p).size() < SMALL_PACK).collect(Collectors.toList());
        Set<String> repack = new HashSet<>(small.size() > MAX_SMALL_PACKS ? small : List.of());
        live.forEach((pack, bytes) -> {
            long dead = previousPacks.get(pack).size() - bytes;
            if (dead > MAX_DEAD * previousPacks.get(pack).size() && dead >= SMALL_PACK) repack.add(pack);
        });
        kept.values().removeIf(e -> {
            if (!repack.contains(e.pack())) return false;
            changed.add(e.path());
            return true;
        });
        int unchanged = kept.size();
        List<FileIndex.Entry> entries = new ArrayList<>(kept.values());
        Map<FileEntry, Path> written = new LinkedHashMap<>();
        for (List<String> group : groups(changed, town)) {
            String name = packPrefix + "-" + written.size() + ".tar";
            Path local = workDir.resolve(name);
            Files.createDirectories(local.getParent());
            Tars.Written w = Tars.write(town.root(), group, town.redacted(), local, name);
            written.put(w.entry(), local);
            for (String path : group) {
                if (w.missing().contains(path)) continue;   // gone since the scan: the town no longer holds it
                PathStat stat = town.stats().get(path);
                boolean racy = stat.modified().toEpochMilli() >= racyBefore;
                entries.add(new FileIndex.Entry(path, name, stat.size(), racy ? "racy" : stat.signature()));
            }
        }
        Set<String> keptPacks = entries.stream().map(FileIndex.Entry::pack).collect(Collectors.toSet());
        List<FileEntry> keptEntries = previousPacks.values().stream().filter(p -> keptPacks.contains(p.path()))
                .sorted(Comparator.comparing(FileEntry::path)).collect(Collectors.toList());
        entries.sort(Comparator.comparing(FileIndex.Entry::path));
        Path indexFile = workDir.resolve(Keys.FILE_INDEX);
        Files.createDirectories(indexFile.getParent());
        FileIndex index = new FileIndex(entries);
        return new Packed(index, index.write(indexFile), indexFile, written, keptEntries, changed.size(), unchanged);
    }

    /** What an entry takes in a tar: a header block and its content padded to whole blocks. */
    private static long tarBytes(long size) {
        return 512 + (size + 511) / 512 * 512;
    }

    /** Changed paths in tar order, cut into packs of about PACK_BYTES. */
    private static List<List<String>> groups(List<String> changed, Town town) {
        List<List<String>> groups = new ArrayList<>();
        List<String> current = new ArrayList<>();
        long bytes = 0;
        for (String path : new TreeSet<>(changed)) {
            long size = town.stats().get(path).size();
            if (!current.isEmpty() && bytes + size > PACK_BYTES) {
                groups.add(current);
                current = new ArrayList<>();
                bytes = 0;
            }
            current.add(path);
            bytes += size;
        }
        if (!current.isEmpty()) groups.add(current);
        return groups;
    }

    /**
     * Rebuilds every path of the index in townDir from the downloaded packs: from each pack, exactly the
     * paths the index says it holds (a pack also holds paths that later snapshots packed again). Directory
     * modes and mtimes go into dirs, for the caller to apply last. A path the index names and its pack lacks
     * fails the restore.
     */
    static void restore(FileIndex index, java.util.function.Function<String, Path> downloaded, Path townDir, Tars.DirMetadata dirs)
            throws IOException {
        Map<String, Set<String>> byPack = new TreeMap<>();
        for (FileIndex.Entry e : index.entries()) byPack.computeIfAbsent(e.pack(), k -> new HashSet<>()).add(e.path());
        for (Map.Entry<String, Set<String>> pack : byPack.entrySet()) {
            Set<String> found = Tars.extract(downloaded.apply(pack.getKey()), pack.getKey(), townDir, dirs, pack.getValue());
            Set<String> lacking = new TreeSet<>(pack.getValue());
            lacking.removeAll(found);
            if (!lacking.isEmpty())
                throw new R2Exception(R2Common.EXIT_FAILED, pack.getKey() + " lacks " + lacking.size() + " path(s) the file index puts in it, e.g. "
                        + Log.escape(lacking.iterator().next()));
        }
    }
}

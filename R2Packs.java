// File packs (manifest format 6): every path of the town outside the skip list, stored by content (part of
// R2Common, included with //SOURCES). Nothing here holds the town in memory, whatever its number of paths: the
// scan is a file of sorted entries, the file index a stream of pieces, the catalog of stored contents a sorted
// file on disk, and a restore is driven by the index as it streams.
//   PathOrder    the one order of town paths: a directory, then everything under it
//   TownEntry    one path: as the scan saw it, and as the file index records it (with where its content is)
//   EntryFiles   entries written and read as a stream (the scan's file, the index's pieces)
//   IndexWriter  the file index cut into pieces at boundaries its paths choose, so an edit changes one piece
//   IndexReader  the pieces read back in order, every entry checked
//   PackWriter   packs of zstd-compressed contents: a content is stored once, however many paths hold it
//   BlobCatalog  which pack holds each content (sha256 -> place): a sorted file in the state dir, for dedup
//   FilePacks    one cycle (the scan merged with the previous index), and restoring a town from packs

import com.github.luben.zstd.ZstdCompressCtx;
import com.github.luben.zstd.ZstdDecompressCtx;
import com.github.luben.zstd.ZstdInputStream;
import com.github.luben.zstd.ZstdOutputStream;

import java.io.*;
import java.nio.ByteBuffer;
import java.nio.channels.Channels;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.*;
import java.nio.file.attribute.BasicFileAttributeView;
import java.nio.file.attribute.FileTime;
import java.nio.file.attribute.PosixFilePermission;
import java.nio.file.attribute.PosixFilePermissions;
import java.security.MessageDigest;
import java.util.*;
import java.util.concurrent.*;
import java.util.concurrent.atomic.AtomicReference;
import java.util.function.Function;
import java.util.function.Predicate;
import java.util.regex.Pattern;
import java.util.stream.Collectors;
import java.util.stream.Stream;
import java.time.Duration;
import java.time.Instant;

/**
 * Writes the file index as pieces of zstd-compressed entries. A piece ends after a path whose hash picks it (about
 * every PIECE_ENTRIES paths) or at MAX_ENTRIES: an edit, an added or a removed path changes the piece it falls in,
 * and every other piece is the same object as the last snapshot's. Each piece is named by its sha256.
 */
final class IndexWriter implements Closeable {
    static final int MIN_ENTRIES = 256;
    static final int PIECE_ENTRIES = 4096;
    static final int MAX_ENTRIES = 32768;
    static final String DIR = "files/index/";
    private final Path dir;
    private final List<FileEntry> pieces = new ArrayList<>();
    private final Map<FileEntry, Path> locals = new LinkedHashMap<>();
    private Sha256.HashingOutputStream hashing;
    private DataOutputStream out;
    private Path current;
    private int count;
    private String last;
    private long entries;

    IndexWriter(Path workDir) throws IOException {
        this.dir = Files.createDirectories(workDir.resolve(DIR));
    }

    void add(TownEntry entry) throws IOException {
        if (last != null && PathOrder.compare(last, entry.path()) >= 0)
            throw new IllegalStateException("file index out of order: " + entry.path() + " after " + last);
        if (out == null) open();
        entry.write(out);
        last = entry.path();
        count++;
        entries++;
        int mixed = entry.path().hashCode() * 0x9E3779B1;
        if (count >= MAX_ENTRIES || (count >= MIN_ENTRIES && (mixed >>> 20) % PIECE_ENTRIES == 0)) closePiece();
    }

    long entries() {
        return entries;
    }

    /** The pieces in order, each with the local file it goes up from. An empty town still has one (empty) piece. */
    Map<FileEntry, Path> finish() throws IOException {
        if (out == null && pieces.isEmpty()) open();
        if (out != null) closePiece();
        return locals;
    }

    private void open() throws IOException {
        current = dir.resolve("piece-" + pieces.size());
        hashing = new Sha256.HashingOutputStream(Files.newOutputStream(current, StandardOpenOption.CREATE_NEW));
        out = EntryFiles.write(new ZstdOutputStream(hashing, 3));
        count = 0;
    }

    private void closePiece() throws IOException {
        EntryFiles.end(out);
        out.close();
        FileEntry hashed = hashing.entry("piece");
        FileEntry piece = new FileEntry(DIR + hashed.sha256(), hashed.size(), hashed.sha256(), hashed.pieces());
        Path named = dir.resolve(hashed.sha256());
        Files.move(current, named, StandardCopyOption.REPLACE_EXISTING);
        pieces.add(piece);
        locals.put(piece, named);
        out = null;
    }

    @Override
    public void close() throws IOException {
        if (out != null) out.close();
    }
}

/**
 * Reads the entries of index pieces (or of a scan file) in order. Every entry is checked as it is read: a safe
 * path, strictly after the one before (so no path twice), complete when it is an index entry. A piece that is
 * cut, damaged or out of order fails the read, naming the piece.
 */
final class IndexReader implements Closeable {
    private final Iterator<Path> files;
    private final boolean compressed;
    private final boolean index;
    private DataInputStream in;
    private Path current;
    private String last;

    private IndexReader(List<Path> files, boolean compressed, boolean index) {
        this.files = files.iterator();
        this.compressed = compressed;
        this.index = index;
    }

    /** The file index of a snapshot, from its pieces in order. */
    static IndexReader index(List<Path> pieces) {
        return new IndexReader(pieces, true, true);
    }

    /** What a scan wrote (uncompressed, entries without content). */
    static IndexReader scan(Path file) {
        return new IndexReader(List.of(file), false, false);
    }

    /** The next entry, or null after the last one. */
    TownEntry next() {
        try {
            while (true) {
                if (in == null) {
                    if (!files.hasNext()) return null;
                    current = files.next();
                    InputStream raw = Files.newInputStream(current);
                    in = EntryFiles.read(compressed ? new ZstdInputStream(raw) : raw, current.getFileName().toString());
                }
                TownEntry e = TownEntry.read(in);
                if (e == null) {
                    in.close();
                    in = null;
                    continue;
                }
                if (index) e.requireComplete();
                if (last != null && PathOrder.compare(last, e.path()) >= 0)
                    throw new IllegalArgumentException("path " + Log.escape(e.path()) + " after " + Log.escape(last) + " (out of order or twice)");
                last = e.path();
                return e;
            }
        } catch (IOException | RuntimeException e) {
            String what = index ? "file index piece " + (current == null ? "" : current.getFileName()) : "scan file";
            throw new SnapshotDamaged(what + " is unreadable: " + R2Cli.messageChain(e), e);
        }
    }

    @Override
    public void close() throws IOException {
        if (in != null) in.close();
    }
}

/**
 * Writes contents into packs: each content one zstd frame, appended; a pack is closed at PACK_BYTES, and a content
 * that large goes into a pack of its own. A pack is named by this sync (a timestamp and a random part, so two
 * syncs never name one alike) and stored under files/packs/{id}.
 */
final class PackWriter implements Closeable {
    static final long PACK_BYTES = 32L << 20;
    static final String DIR = "files/packs/";
    static final int LEVEL = 3;
    private final Path dir;
    private final String prefix;
    private final Map<FileEntry, Path> written = new LinkedHashMap<>();
    private final Set<String> ids = new HashSet<>();
    /** One compression context for every small content: a new one per call costs more than compressing a small file. */
    private final ZstdCompressCtx zstd = new ZstdCompressCtx().setLevel(LEVEL).setContentSize(true);
    private Sha256.HashingOutputStream out;
    private String id;
    private long offset;

    PackWriter(Path workDir, String prefix) throws IOException {
        this.dir = Files.createDirectories(workDir.resolve(DIR));
        this.prefix = prefix;
    }

    /**
     * Loads zstd's native library (60-170 ms in a new JVM: it is unpacked from its jar first), for a caller to run beside
     * work that does not need it yet.
     */
    static Void loadZstd() {
        try (ZstdCompressCtx ctx = new ZstdCompressCtx()) {
            ctx.compress(new byte[1]);
        }
        return null;
    }

    /** Stores content held in memory; returns where. */
    TownEntry.Blob add(byte[] data, String sha256) throws IOException {
        byte[] frame = zstd.compress(data);
        if (out != null && offset + frame.length > PACK_BYTES) closePack();
        if (out == null) open();
        TownEntry.Blob blob = new TownEntry.Blob(sha256, id, offset, frame.length);
        out.write(frame);
        offset += frame.length;
        return blob;
    }

    /**
     * Stores a large file's content as it is read now, in a pack of its own; returns where, with the sha256 of what
     * was read (the file may have changed since it was hashed) and the size read.
     */
    Stored addFile(Path file, long maxSize) throws IOException {
        closePack();
        open();
        MessageDigest md = Sha256.digest();
        long size = 0;
        long start = offset;
        CountingOutputStream counting = new CountingOutputStream(out);
        try (InputStream in = Files.newInputStream(file, LinkOption.NOFOLLOW_LINKS);
             ZstdOutputStream z = new ZstdOutputStream(new NonClosing(counting), LEVEL)) {
            byte[] buf = new byte[1 << 16];
            for (int n; (n = in.read(buf)) > 0; ) {
                md.update(buf, 0, n);
                z.write(buf, 0, n);
                size += n;
                if (size > maxSize) throw new IOException(file + " grew past " + maxSize + " bytes while being read");
            }
        }
        offset += counting.count;
        TownEntry.Blob blob = new TownEntry.Blob(Sha256.hex(md.digest()), id, start, counting.count);
        closePack();
        return new Stored(blob, size);
    }

    record Stored(TownEntry.Blob blob, long size) {}

    boolean wrote(String pack) {
        return ids.contains(pack);
    }

    /** The packs written, with their local files (each closed). */
    Map<FileEntry, Path> finish() throws IOException {
        closePack();
        return written;
    }

    private void open() throws IOException {
        id = prefix + "-" + ids.size();
        ids.add(id);
        out = new Sha256.HashingOutputStream(new BufferedOutputStream(Files.newOutputStream(dir.resolve(id), StandardOpenOption.CREATE_NEW), 1 << 16));
        offset = 0;
    }

    private void closePack() throws IOException {
        if (out == null) return;
        out.close();
        written.put(out.entry(DIR + id), dir.resolve(id));
        out = null;
    }

    @Override
    public void close() throws IOException {
        zstd.close();
        if (out != null) out.close();
    }

    private static final class CountingOutputStream extends FilterOutputStream {
        long count;

        CountingOutputStream(OutputStream out) {
            super(out);
        }

        @Override
        public void write(int b) throws IOException {
            out.write(b);
            count++;
        }

        @Override
        public void write(byte[] b, int off, int len) throws IOException {
            out.write(b, off, len);
            count += len;
        }
    }

    private static final class NonClosing extends FilterOutputStream {
        NonClosing(OutputStream out) {
            super(out);
        }

        @Override
        public void write(byte[] b, int off, int len) throws IOException {
            out.write(b, off, len);
        }

        @Override
        public void close() throws IOException {
            out.flush();
        }
    }
}

/**
 * Which pack holds each content this town stored: fixed-size records sorted by sha256 in a file, with every
 * SPARSE-th key in memory to find a block, and the contents added since in a bounded map that is merged into a new
 * file when it fills. Memory stays flat however many contents the town holds. Local state only: it is derived from
 * the file index (and made again from it when missing), and a place it gives is used only for a pack that the
 * snapshot being built may name.
 */
final class BlobCatalog implements Closeable {
    private static final int SHA = 32;
    private static final int PACK = 48;
    static final int RECORD = SHA + PACK + 8 + 8;
    private static final int SPARSE = 64;
    private static final int PENDING = 50_000;
    private final Path work;
    private Path file;
    private FileChannel channel;
    private long count;
    private byte[][] keys = new byte[0][];
    private final Map<String, TownEntry.Blob> pending = new HashMap<>();
    private int generation;

    private BlobCatalog(Path file, Path work) throws IOException {
        this.work = Files.createDirectories(work);
        open(file);
    }

    /** The catalog in file (none: empty); merges write their files into work. */
    static BlobCatalog open(Path file, Path work) throws IOException {
        return new BlobCatalog(file != null && Files.isRegularFile(file) ? file : null, work);
    }

    /** A catalog made from a file index: every content its entries name. */
    static BlobCatalog of(IndexReader index, Path work) throws IOException {
        BlobCatalog catalog = new BlobCatalog(null, work);
        for (TownEntry e; (e = index.next()) != null; )
            if (e.type() == TownEntry.FILE) catalog.add(e.blob());
        return catalog;
    }

    TownEntry.Blob find(String sha256) throws IOException {
        TownEntry.Blob b = pending.get(sha256);
        if (b != null || count == 0) return b;
        byte[] key = HexFormat.of().parseHex(sha256);
        int lo = 0;
        int hi = keys.length - 1;
        while (lo < hi) {   // the last block whose first key is <= key
            int mid = (lo + hi + 1) >>> 1;
            if (Arrays.compareUnsigned(keys[mid], key) <= 0) lo = mid;
            else hi = mid - 1;
        }
        long first = (long) lo * SPARSE;
        int n = (int) Math.min(SPARSE, count - first);
        ByteBuffer block = ByteBuffer.allocate(n * RECORD);
        channel.read(block, first * RECORD);
        byte[] records = block.array();
        for (int i = 0; i < n; i++) {
            int cmp = Arrays.compareUnsigned(records, i * RECORD, i * RECORD + SHA, key, 0, SHA);
            if (cmp == 0) return decode(records, i * RECORD);
            if (cmp > 0) break;
        }
        return null;
    }

    void add(TownEntry.Blob blob) throws IOException {
        pending.putIfAbsent(blob.sha256(), blob);
        if (pending.size() >= PENDING) merge(work.resolve("catalog-" + (++generation)), null);
    }

    /** Writes everything into out, keeping only contents in packs that keep accepts. */
    void finishInto(Path out, Predicate<String> keep) throws IOException {
        Files.createDirectories(out.getParent());
        Path tmp = out.resolveSibling(out.getFileName() + ".tmp");
        merge(tmp, keep);
        channel.close();
        Files.move(tmp, out, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
        open(out);
    }

    /** Merges the file and the pending contents into out; keep (null: every pack) says which packs' contents stay. */
    private void merge(Path out, Predicate<String> keep) throws IOException {
        List<Map.Entry<String, TownEntry.Blob>> added = new ArrayList<>(pending.entrySet());
        added.sort(Map.Entry.comparingByKey());
        try (DataOutputStream w = new DataOutputStream(new BufferedOutputStream(Files.newOutputStream(out), 1 << 16))) {
            InputStream oldIn = count == 0 ? InputStream.nullInputStream()
                    : new BufferedInputStream(Channels.newInputStream(channel.position(0)), 1 << 16);
            byte[] record = new byte[RECORD];
            long left = count;
            boolean haveOld = left > 0 && readRecord(oldIn, record);
            int i = 0;
            byte[] lastWritten = null;
            while (haveOld || i < added.size()) {
                byte[] next;
                byte[] newKey = i < added.size() ? HexFormat.of().parseHex(added.get(i).getKey()) : null;
                int cmp = !haveOld ? 1 : newKey == null ? -1 : Arrays.compareUnsigned(record, 0, SHA, newKey, 0, SHA);
                if (cmp <= 0) {
                    next = record.clone();
                    left--;
                    haveOld = left > 0 && readRecord(oldIn, record);
                    if (cmp == 0) i++;
                } else {
                    next = encode(added.get(i++).getValue());
                }
                if (lastWritten != null && Arrays.compareUnsigned(lastWritten, 0, SHA, next, 0, SHA) == 0) continue;
                if (keep != null && !keep.test(decode(next, 0).pack())) continue;
                w.write(next);
                lastWritten = next;
            }
        }
        pending.clear();
        if (channel != null) channel.close();
        Path before = file;
        open(out);
        if (before != null && before.startsWith(work)) Files.deleteIfExists(before);
    }

    private static boolean readRecord(InputStream in, byte[] record) throws IOException {
        return in.readNBytes(record, 0, RECORD) == RECORD;
    }

    private void open(Path f) throws IOException {
        file = f;
        if (f == null) {
            channel = null;
            count = 0;
            keys = new byte[0][];
            return;
        }
        channel = FileChannel.open(f, StandardOpenOption.READ);
        if (channel.size() % RECORD != 0) {
            channel.close();
            throw new IOException(f + " is not a catalog (size " + channel.size() + ")");
        }
        count = channel.size() / RECORD;
        keys = new byte[(int) ((count + SPARSE - 1) / SPARSE)][];
        for (int b = 0; b < keys.length; b++) {
            ByteBuffer key = ByteBuffer.allocate(SHA);
            channel.read(key, (long) b * SPARSE * RECORD);
            keys[b] = key.array();
        }
    }

    private static byte[] encode(TownEntry.Blob blob) {
        ByteBuffer b = ByteBuffer.allocate(RECORD);
        b.put(HexFormat.of().parseHex(blob.sha256()));
        byte[] pack = blob.pack().getBytes(StandardCharsets.US_ASCII);
        b.put(pack).put(new byte[PACK - pack.length]);
        b.putLong(blob.offset()).putLong(blob.length());
        return b.array();
    }

    private static TownEntry.Blob decode(byte[] records, int at) {
        ByteBuffer b = ByteBuffer.wrap(records, at, RECORD);
        byte[] sha = new byte[SHA];
        b.get(sha);
        byte[] pack = new byte[PACK];
        b.get(pack);
        int len = 0;
        while (len < PACK && pack[len] != 0) len++;
        return new TownEntry.Blob(HexFormat.of().formatHex(sha), new String(pack, 0, len, StandardCharsets.US_ASCII), b.getLong(), b.getLong());
    }

    @Override
    public void close() throws IOException {
        if (channel != null) channel.close();
    }
}

final class FilePacks {
    /** A file up to this size is read once into memory (hashed, then compressed); a larger one is streamed twice. */
    static final int SMALL_FILE = 1 << 20;
    /** A path changed this close to the scan may change again within the same mtime: it is read again next cycle. */
    static final long RACY_NANOS = 2_000_000_000L;
    /** Packs smaller than this are merged once there are more than MAX_SMALL_PACKS of them. */
    static final long SMALL_PACK = 1L << 20;
    static final int MAX_SMALL_PACKS = 16;
    /** A pack more than half dead (and by at least SMALL_PACK) has its live contents stored again: its space comes back. */
    static final double MAX_DEAD = 0.5;
    /** Files written at once by a restore. */
    static final int WRITERS = 4;

    private FilePacks() {}

    /**
     * The outcome of one cycle: the index pieces and new packs (with local files), the packs used with the bytes of
     * each that the index points at (a content two paths share counts twice: an estimate that errs towards live), and
     * counts.
     */
    record Packed(Map<FileEntry, Path> index, Map<FileEntry, Path> written, Map<String, Long> liveBytes, long paths, long changed,
                  long deduplicated, long newBytes) {
        Set<String> packsUsed() {
            return liveBytes.keySet();
        }
    }

    /**
     * Packs what changed since the previous index, walking the scan and that index side by side (both in path
     * order). A path the scan sees as the index recorded it keeps its entry; any other has its content hashed, and
     * stored only when no pack the snapshot may use holds it already. usable: the previous snapshot's packs still
     * in the bucket (minus those to be merged); catalog: where each stored content is.
     */
    static Packed pack(Town town, IndexReader previous, Set<String> usable, BlobCatalog catalog, Path workDir, String packPrefix)
            throws IOException {
        long racyAfter = town.scannedAt().getEpochSecond() * 1_000_000_000L + town.scannedAt().getNano() - RACY_NANOS;
        Map<String, Long> used = new HashMap<>();
        Set<String> vanished = new HashSet<>();
        long changed = 0;
        long deduplicated = 0;
        long newBytes = 0;
        try (IndexReader scan = IndexReader.scan(town.scanFile());
             IndexWriter index = new IndexWriter(workDir);
             PackWriter packs = new PackWriter(workDir, packPrefix)) {
            TownEntry before = previous == null ? null : previous.next();
            for (TownEntry now; (now = scan.next()) != null; ) {
                while (before != null && PathOrder.compare(before.path(), now.path()) < 0) before = previous.next();
                boolean racy = now.mtime() >= racyAfter;
                if (before != null && before.path().equals(now.path()) && before.unchangedFrom(now)
                        && (before.type() != TownEntry.FILE || usable.contains(before.blob().pack()))) {
                    index.add(before);
                    if (before.blob() != null) used.merge(before.blob().pack(), before.blob().length(), Long::sum);
                    continue;
                }
                changed++;
                Path source = town.root().resolve(now.path());
                TownEntry entry;
                try {
                    entry = switch (now.type()) {
                        case TownEntry.SYMLINK -> now.withTarget(Files.readSymbolicLink(source).toString(), racy);
                        case TownEntry.HARDLINK -> vanished.contains(now.target()) ? null : now.racy(racy);
                        case TownEntry.FILE -> null;
                        default -> now.racy(racy);
                    };
                    if (now.type() == TownEntry.FILE) {
                        Content c = store(now, source, racy, usable, catalog, packs);
                        entry = c.entry();
                        if (c.isNew()) newBytes += entry.size();
                        else deduplicated++;
                    }
                } catch (FileSystemException e) {
                    // Removed, or replaced by another kind of path, since the scan: the town no longer holds what the
                    // scan saw there (the next scan sees what is there now). Any other failure (a file we may not read)
                    // fails the sync: a backup that silently left a file out would say it holds the town.
                    if (!(e instanceof NoSuchFileException) && stillThere(source, now.type())) throw e;
                    vanished.add(now.path());
                    continue;
                }
                index.add(entry);
                if (entry.blob() != null) used.merge(entry.blob().pack(), entry.blob().length(), Long::sum);
            }
            Map<FileEntry, Path> written = packs.finish();
            return new Packed(index.finish(), written, used, index.entries(), changed, deduplicated, newBytes);
        }
    }

    private record Content(TownEntry entry, boolean isNew) {}

    private static boolean stillThere(Path source, char type) {
        return type == TownEntry.SYMLINK ? Files.isSymbolicLink(source) : Files.isRegularFile(source, LinkOption.NOFOLLOW_LINKS);
    }

    /** A file's content: found where a usable pack holds it already, or stored now. */
    private static Content store(TownEntry now, Path source, boolean racy, Set<String> usable, BlobCatalog catalog,
                                 PackWriter packs) throws IOException {
        if (now.size() <= SMALL_FILE || now.gitConfig()) {
            byte[] data = read(source, now);
            String sha = Sha256.of(data);
            TownEntry.Blob found = usableBlob(catalog.find(sha), usable, packs);
            // A size other than the scan's: the file changed while it was read; the next cycle reads it again.
            boolean moved = data.length != now.size();
            if (found != null) return new Content(now.withContent(data.length, found, racy || moved), false);
            TownEntry.Blob stored = packs.add(data, sha);
            catalog.add(stored);
            return new Content(now.withContent(data.length, stored, racy || moved), true);
        }
        Hashed hashed = hash(source);
        TownEntry.Blob found = usableBlob(catalog.find(hashed.sha256()), usable, packs);
        if (found != null) return new Content(now.withContent(hashed.size(), found, racy || hashed.size() != now.size()), false);
        PackWriter.Stored stored = packs.addFile(source, Long.MAX_VALUE);
        catalog.add(stored.blob());
        boolean moved = !stored.blob().sha256().equals(hashed.sha256()) || stored.size() != now.size();
        return new Content(now.withContent(stored.size(), stored.blob(), racy || moved), true);
    }

    private record Hashed(String sha256, long size) {}

    /** A large file's sha256 and size, streamed. */
    private static Hashed hash(Path file) throws IOException {
        MessageDigest md = Sha256.digest();
        long size = 0;
        try (InputStream in = Files.newInputStream(file, LinkOption.NOFOLLOW_LINKS)) {
            byte[] buf = new byte[1 << 16];
            for (int n; (n = in.read(buf)) > 0; size += n) md.update(buf, 0, n);
        }
        return new Hashed(Sha256.hex(md.digest()), size);
    }

    private static TownEntry.Blob usableBlob(TownEntry.Blob found, Set<String> usable, PackWriter packs) {
        return found != null && (usable.contains(found.pack()) || packs.wrote(found.pack())) ? found : null;
    }

    /** A small file's bytes; a git config with URL credentials removed (it may hold a token in a remote URL). */
    private static byte[] read(Path source, TownEntry now) throws IOException {
        if (now.gitConfig()) {
            if (Files.size(source) > SMALL_FILE) throw new IOException(now.path() + " is larger than 1 MiB, too large for a git config");
            return Log.redactUrl(Files.readString(source, StandardCharsets.UTF_8)).getBytes(StandardCharsets.UTF_8);
        }
        try (InputStream in = Files.newInputStream(source, LinkOption.NOFOLLOW_LINKS)) {
            return in.readNBytes(SMALL_FILE + 1);
        }
    }

    /**
     * The previous snapshot's packs whose contents are stored again this cycle: every small one once there are too
     * many of them, and each one mostly dead (liveBytes: what the previous cycle counted; empty when unknown).
     */
    static Set<String> packsToMerge(Collection<FileEntry> packs, Map<String, Long> liveBytes) {
        List<String> small = packs.stream().filter(p -> p.size() < SMALL_PACK).map(p -> packId(p.path())).toList();
        Set<String> merge = new HashSet<>(small.size() > MAX_SMALL_PACKS ? small : List.of());
        for (FileEntry p : packs) {
            Long live = liveBytes.get(packId(p.path()));
            long dead = live == null ? 0 : p.size() - Math.min(live, p.size());
            if (dead > MAX_DEAD * p.size() && dead >= SMALL_PACK) merge.add(packId(p.path()));
        }
        return merge;
    }

    static String packId(String snapshotPath) {
        return snapshotPath.substring(PackWriter.DIR.length());
    }

    // ---------------------------------------------------------------------------------------------
    // Restore
    // ---------------------------------------------------------------------------------------------

    /**
     * Rebuilds every path of the index in townDir, streaming the index: directories and symlinks as they come,
     * files WRITERS at a time, hard links last. Nothing is written outside townDir: an entry's directory must be a
     * directory this restore made (so never a symlink or a file), a file is created new and never through a link,
     * and the snapshot's files must fit the volume before anything is written. Each content is checked against its
     * size and sha256 as it is written. Directory modes and mtimes are the caller's to apply last (applyDirectories).
     */
    static void restore(List<Path> pieces, Function<String, Path> packFile, Path townDir) throws IOException {
        requireRoom(pieces, townDir);
        Path root = townDir.toRealPath();
        ExecutorService pool = new ThreadPoolExecutor(WRITERS, WRITERS, 0, TimeUnit.SECONDS, new ArrayBlockingQueue<>(1024),
                new ThreadPoolExecutor.CallerRunsPolicy());
        AtomicReference<Throwable> failure = new AtomicReference<>();
        Deque<String> dirs = new ArrayDeque<>();
        try (IndexReader index = IndexReader.index(pieces)) {
            for (TownEntry e; (e = index.next()) != null && failure.get() == null; ) {
                if (Thread.currentThread().isInterrupted()) throw new R2Exception(R2Common.EXIT_FAILED, "restore: stopped");
                requireDirectoryOf(e, dirs);
                Path target = root.resolve(e.path());
                switch (e.type()) {
                    case TownEntry.DIR -> {
                        Files.createDirectory(target);
                        dirs.push(e.path());
                    }
                    case TownEntry.SYMLINK -> {
                        Files.createSymbolicLink(target, Path.of(e.target()));
                        setMtime(target, e.mtime(), true);
                    }
                    case TownEntry.FILE -> {
                        TownEntry file = e;
                        Path pack = packFile.apply(e.blob().pack());
                        pool.execute(() -> {
                            try {
                                if (failure.get() == null) writeFile(file, pack, target);
                            } catch (Throwable t) {
                                failure.compareAndSet(null, t);
                            }
                        });
                    }
                    default -> { }   // hard links once every file is there
                }
            }
        } finally {
            pool.shutdown();
            awaitQuietly(pool);
        }
        if (failure.get() != null) throw asFailure(failure.get());
        linkHardLinks(pieces, root);
    }

    /** An entry's directory must be one this restore made: the town root, or a directory entry above it in the walk. */
    private static void requireDirectoryOf(TownEntry e, Deque<String> dirs) {
        String parent = PathOrder.parent(e.path());
        while (!dirs.isEmpty() && !dirs.peek().equals(parent)) dirs.pop();
        if (!parent.isEmpty() && dirs.isEmpty())
            throw refuse(e.path(), "its directory " + Log.escape(parent) + " is not a directory of the snapshot (a symlink, a file, or missing)");
    }

    /** Refuses a snapshot whose files would not fit the volume, before anything is written. */
    private static void requireRoom(List<Path> pieces, Path townDir) throws IOException {
        long bytes = 0;
        try (IndexReader index = IndexReader.index(pieces)) {
            for (TownEntry e; (e = index.next()) != null; ) if (e.type() == TownEntry.FILE) bytes += e.size();
        }
        long free = Files.getFileStore(townDir).getUsableSpace();
        if (bytes > free)
            throw new R2Exception(R2Common.EXIT_FAILED, "restore: the snapshot's files need " + Log.bytes(bytes) + " but "
                    + townDir + " has " + Log.bytes(free) + " free; make room or restore onto a larger volume");
    }

    private static void writeFile(TownEntry e, Path pack, Path target) throws IOException {
        TownEntry.Blob blob = e.blob();
        MessageDigest md = Sha256.digest();
        try (FileChannel in = FileChannel.open(pack, StandardOpenOption.READ);
             OutputStream out = Files.newOutputStream(target, StandardOpenOption.CREATE_NEW, StandardOpenOption.WRITE, LinkOption.NOFOLLOW_LINKS)) {
            if (blob.offset() + blob.length() > in.size())
                throw refuse(e.path(), "its content lies past the end of pack " + blob.pack());
            if (blob.length() <= SMALL_FILE && e.size() <= SMALL_FILE) {
                ByteBuffer frame = ByteBuffer.allocate((int) blob.length());
                while (frame.hasRemaining() && in.read(frame, blob.offset() + frame.position()) > 0) { }
                byte[] data = decompress(e, frame.array());
                md.update(data);
                out.write(data);
            } else {
                copyStreamed(e, new ZstdInputStream(new BufferedInputStream(Channels.newInputStream(in.position(blob.offset())), 1 << 16)),
                        md, out);
            }
        }
        if (!Sha256.hex(md.digest()).equals(blob.sha256())) throw refuse(e.path(), "its content does not match its sha256");
        Files.setPosixFilePermissions(target, permissions(e.mode()));
        setMtime(target, e.mtime(), false);
    }

    /** One decompression context per restore thread: a new one per file costs more than a small file's content. */
    private static final ThreadLocal<ZstdDecompressCtx> UNZSTD = ThreadLocal.withInitial(ZstdDecompressCtx::new);

    private static byte[] decompress(TownEntry e, byte[] frame) {
        try {
            byte[] data = UNZSTD.get().decompress(frame, (int) e.size());
            if (data.length != e.size()) throw refuse(e.path(), "its content is " + data.length + " bytes, not " + e.size());
            return data;
        } catch (RuntimeException ex) {
            if (ex instanceof R2Exception r) throw r;
            throw refuse(e.path(), "its content does not unpack into its " + e.size() + " bytes (" + ex.getMessage() + ")");
        }
    }

    /** Copies exactly e.size() bytes; a content longer or shorter than its entry says is refused. */
    private static void copyStreamed(TownEntry e, InputStream z, MessageDigest md, OutputStream out) throws IOException {
        byte[] buf = new byte[1 << 16];
        long left = e.size();
        try (InputStream in = z) {
            while (left > 0) {
                int n = in.read(buf, 0, (int) Math.min(buf.length, left));
                if (n < 0) break;
                md.update(buf, 0, n);
                out.write(buf, 0, n);
                left -= n;
            }
            if (left == 0 && in.read() >= 0) throw refuse(e.path(), "its content is longer than " + e.size() + " bytes");
        } catch (IOException ex) {
            throw refuse(e.path(), "its content cannot be decompressed (" + ex.getMessage() + ")");
        }
        if (left > 0) throw refuse(e.path(), "its content ends " + left + " bytes short");
    }

    /** Each hard link, to a file of the snapshot listed before it; never to a symlink or a directory. */
    private static void linkHardLinks(List<Path> pieces, Path root) throws IOException {
        try (IndexReader index = IndexReader.index(pieces)) {
            for (TownEntry e; (e = index.next()) != null; ) {
                if (e.type() != TownEntry.HARDLINK) continue;
                if (PathOrder.compare(e.target(), e.path()) >= 0) throw refuse(e.path(), "hard link to a path after it");
                Path target;
                Path link;
                try {
                    target = SafePath.requireInside(root, e.target(), "hard link target");
                    link = SafePath.requireInside(root, e.path(), "hard link");
                } catch (R2Exception ex) {
                    throw refuse(e.path(), "hard link to " + Log.escape(e.target()) + ", which is not a file of the snapshot: " + ex.getMessage());
                }
                if (!Files.isRegularFile(target, LinkOption.NOFOLLOW_LINKS))
                    throw refuse(e.path(), "hard link to " + Log.escape(e.target()) + ", which is not a file of the snapshot");
                Files.createLink(link, target);
            }
        }
    }

    /** Directory modes and mtimes, once nothing more is written into them. */
    static void applyDirectories(List<Path> pieces, Path townDir) throws IOException {
        Path root = townDir.toRealPath();
        try (IndexReader index = IndexReader.index(pieces)) {
            for (TownEntry e; (e = index.next()) != null; ) {
                if (e.type() != TownEntry.DIR) continue;
                Path dir = root.resolve(e.path());
                if (!Files.isDirectory(dir, LinkOption.NOFOLLOW_LINKS)) continue;
                Files.setPosixFilePermissions(dir, permissions(e.mode()));
                setMtime(dir, e.mtime(), false);
            }
        }
    }

    private static void setMtime(Path p, long nanos, boolean link) throws IOException {
        FileTime t = FileTime.from(nanos, TimeUnit.NANOSECONDS);
        if (link) Files.getFileAttributeView(p, BasicFileAttributeView.class, LinkOption.NOFOLLOW_LINKS).setTimes(t, null, null);
        else Files.setLastModifiedTime(p, t);
    }

    static Set<PosixFilePermission> permissions(int mode) {
        StringBuilder sb = new StringBuilder();
        String rwx = "rwxrwxrwx";
        for (int i = 0; i < 9; i++) sb.append((mode & (1 << (8 - i))) != 0 ? rwx.charAt(i) : '-');
        return PosixFilePermissions.fromString(sb.toString());
    }

    private static void awaitQuietly(ExecutorService pool) {
        boolean interrupted = false;
        while (true) {
            try {
                if (pool.awaitTermination(1, TimeUnit.MINUTES)) break;
            } catch (InterruptedException e) {
                interrupted = true;
                pool.shutdownNow();
            }
        }
        if (interrupted) Thread.currentThread().interrupt();
    }

    private static RuntimeException asFailure(Throwable t) throws IOException {
        if (t instanceof IOException io) throw io;
        if (t instanceof RuntimeException re) return re;
        if (t instanceof Error err) throw err;
        return new R2Exception(R2Common.EXIT_FAILED, String.valueOf(t), t);
    }

    private static R2Exception refuse(String path, String why) {
        return new SnapshotDamaged("file index: refusing " + Log.escape(path) + ": " + why);
    }
}

/**
 * One cycle of the town's files: the scan merged with the previous snapshot's file index (FilePacks.pack), what
 * changed packed anew. This machine keeps the last published index (its pieces) and the catalog of stored contents
 * in the state dir, for the next cycle; a new machine downloads the index and makes the catalog from it.
 */
final class FileCapture {
    private final Config config;
    private final ObjectStore store;

    FileCapture(Config config, ObjectStore store) {
        this.config = config;
        this.store = store;
    }

    /**
     * Every path of the town outside the skip list: what changed since the previous snapshot's file index into new
     * packs (a content some pack holds already is not stored again), the rest as that index had it.
     */
    void pack(Town town, Snapshot snapshot, Manifest base) throws IOException {
        Instant t = Instant.now();
        List<Path> previous = previousIndex(base, snapshot);
        Map<String, FileEntry> basePacks = new HashMap<>();
        if (previous != null) base.filesUnder("files/packs").forEach(f -> basePacks.put(FilePacks.packId(f.path()), f));
        Set<String> merging = FilePacks.packsToMerge(basePacks.values(), previous == null ? Map.of() : liveBytes(base));
        Set<String> usable = basePacks.entrySet().stream().filter(e -> !merging.contains(e.getKey()) && snapshot.stored(e.getValue()))
                .map(Map.Entry::getKey).collect(Collectors.toSet());
        String prefix = snapshot.timestamp() + "-" + HexFormat.of().toHexDigits(new java.security.SecureRandom().nextInt());
        FilePacks.Packed packed;
        try (BlobCatalog catalog = catalog(base, previous, snapshot.dir());
             IndexReader before = previous == null ? null : IndexReader.index(previous)) {
            packed = FilePacks.pack(town, before, usable, catalog, snapshot.dir(), prefix);
            Path keptBefore = previous == null ? null : fileState("file-catalog").resolve(catalogName(base.fileIndex()));
            boolean sameIndex = previous != null && packed.index().keySet().stream().map(FileEntry::path).toList().equals(base.fileIndex());
            if (sameIndex && packed.written().isEmpty() && Files.isRegularFile(keptBefore)) {
                snapshot.catalog = keptBefore;   // nothing changed: the catalog kept for that index is this one's (no rewrite)
            } else {
                snapshot.catalog = snapshot.dir().resolve("catalog");
                catalog.finishInto(snapshot.catalog, packed.packsUsed()::contains);
            }
            snapshot.liveBytes = packed.liveBytes();
        }
        packed.written().forEach(snapshot::add);
        basePacks.forEach((id, f) -> {
            if (packed.packsUsed().contains(id)) snapshot.reuse(f);
        });
        packed.index().forEach(snapshot::add);
        snapshot.fileIndex = packed.index();
        Log.info("sync " + snapshot.timestamp() + ": files: " + packed.paths() + " paths, " + packed.changed() + " read again ("
                + packed.deduplicated() + " of them held by a pack already), " + Log.bytes(packed.newBytes()) + " of new content in "
                + packed.written().size() + " new packs (" + Log.bytes(packed.written().keySet().stream().mapToLong(FileEntry::size).sum())
                + ")" + (merging.isEmpty() ? "" : ", " + merging.size() + " small or mostly dead packs merged") + ", in "
                + Log.seconds(Duration.between(t, Instant.now())));
        if (!town.skipped().isEmpty())
            Log.info("sync " + snapshot.timestamp() + ": left out by the skip list: " + town.skipped().entrySet().stream()
                    .map(e -> e.getValue() + " x " + e.getKey()).collect(Collectors.joining("; ")));
    }

    /** Where this machine keeps the last published file index (its pieces) and catalog, for the next sync. */
    private Path fileState(String what) {
        return config.stateDir().resolve(what).resolve(config.townId());
    }

    /**
     * The previous snapshot's file index pieces, in order: kept in the state dir by the sync that published it (each
     * checked against its sha256), else downloaded there; null packs everything (no previous snapshot, one of an
     * older format, or an index that cannot be had).
     */
    private List<Path> previousIndex(Manifest base, Snapshot snapshot) {
        if (base == null) return null;
        if (!base.contentPacks()) {
            Log.info("sync " + snapshot.timestamp() + ": the previous snapshot " + base.timestamp() + " keeps its files in format "
                    + base.formatVersion() + " tar packs; this one stores every file anew, in content packs");
            return null;
        }
        try {
            Path dir = Files.createDirectories(fileState("file-index"));
            List<Path> pieces = new ArrayList<>();
            List<Parallel.Task> downloads = new ArrayList<>();
            for (String path : base.fileIndex()) {
                FileEntry piece = base.file(path).orElseThrow();
                Path local = dir.resolve(piece.sha256());
                pieces.add(local);
                if (Files.isRegularFile(local) && Sha256.ofFile(local, path).equals(piece)) continue;
                Files.deleteIfExists(local);
                downloads.addAll(store.downloads(Keys.of(config, base), piece, local, base.timestamp(), null));
            }
            Parallel.run(Snapshots.TRANSFERS, downloads);
            return pieces;
        } catch (R2Exception | IOException | java.util.NoSuchElementException e) {
            Log.warn("sync " + snapshot.timestamp() + ": the file index of " + base.timestamp() + " is unusable, reading every "
                    + "file again: " + e.getMessage());
            return null;
        }
    }

    /**
     * Where each stored content is: the catalog this machine kept for the previous snapshot's index, or one made
     * from that index now (a new machine, or the first sync after a restore).
     */
    private BlobCatalog catalog(Manifest base, List<Path> previous, Path work) throws IOException {
        if (previous == null) return BlobCatalog.open(null, work.resolve("catalog-work"));
        Path kept = fileState("file-catalog").resolve(catalogName(base.fileIndex()));
        if (Files.isRegularFile(kept)) return BlobCatalog.open(kept, work.resolve("catalog-work"));
        try (IndexReader index = IndexReader.index(previous)) {
            return BlobCatalog.of(index, work.resolve("catalog-work"));
        }
    }

    private static String catalogName(List<String> fileIndex) {
        return Sha256.of(String.join("\n", fileIndex).getBytes(StandardCharsets.UTF_8)) + ".catalog";
    }

    /** How much of each pack the previous snapshot's index points at, as its sync counted; empty when not kept here. */
    @SuppressWarnings("unchecked")
    private Map<String, Long> liveBytes(Manifest base) {
        Path file = fileState("file-catalog").resolve(catalogName(base.fileIndex()) + ".live");
        try {
            if (!Files.isRegularFile(file)) return Map.of();
            Map<String, Number> read = R2Common.JSON.readValue(file.toFile(), Map.class);
            Map<String, Long> live = new HashMap<>();
            read.forEach((pack, bytes) -> live.put(pack, bytes.longValue()));
            return live;
        } catch (IOException | RuntimeException e) {
            Log.warn("sync: " + file + " is unreadable, no pack is merged for being mostly dead this time: " + e.getMessage());
            return Map.of();
        }
    }

    /** Once published, the snapshot's file index and catalog stay in the state dir for the next sync; older ones go. */
    void keep(Snapshot snapshot) {
        try {
            Path indexDir = Files.createDirectories(fileState("file-index"));
            Set<String> names = new HashSet<>();
            for (Map.Entry<FileEntry, Path> piece : snapshot.fileIndex.entrySet()) {
                names.add(piece.getKey().sha256());
                Files.move(piece.getValue(), indexDir.resolve(piece.getKey().sha256()), StandardCopyOption.REPLACE_EXISTING);
            }
            removeAllBut(indexDir, names);
            Path catalogDir = Files.createDirectories(fileState("file-catalog"));
            String name = catalogName(snapshot.fileIndex.keySet().stream().map(FileEntry::path).toList());
            Files.move(snapshot.catalog, catalogDir.resolve(name), StandardCopyOption.REPLACE_EXISTING);
            FileTrees.writeAtomically(catalogDir.resolve(name + ".live"), R2Common.toJson(snapshot.liveBytes));
            removeAllBut(catalogDir, Set.of(name, name + ".live"));
        } catch (IOException e) {
            Log.warn("sync " + snapshot.timestamp() + ": cannot keep the file index in " + config.stateDir() + " (the next sync "
                    + "downloads it): " + e.getMessage());
        }
    }

    private static void removeAllBut(Path dir, Set<String> names) throws IOException {
        try (Stream<Path> s = Files.list(dir)) {
            for (Path p : s.filter(p -> !names.contains(p.getFileName().toString())).toList()) Files.deleteIfExists(p);
        }
    }
}

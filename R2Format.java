// What the bucket holds (part of R2Common, included with //SOURCES): the one place that says how a town's backup is
// laid out and what every record in it means. A reader of an old snapshot, a writer of a new one and a hostile
// bucket all meet here: every record checks what it is given as it is built.
//   Keys        the key layout under gastown/{town_id}/
//   Pointer     latest.json: the current snapshot, its manifest's sha256, the writer
//   Writer      which machine writes a town's snapshots (the id latest.json names)
//   Held        held.json: snapshots kept whatever the history policy says
//   Manifest    a snapshot: its format version, files (FileEntry, Pieces), databases, repos, problems, history
//   Sha256      how a FileEntry names content (and Hasher, for content as it passes)
//   TownEntry   one path of the file index (format 6), in PathOrder, written and read as EntryFiles

import com.fasterxml.jackson.annotation.JsonAlias;

import java.io.*;
import java.nio.channels.Channels;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.*;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.time.*;
import java.time.format.DateTimeFormatter;
import java.util.*;
import java.util.regex.Pattern;
import java.util.stream.Collectors;

/**
 * The key layout. Everything of a town lives under gastown/{town_id}/. A snapshot is one object,
 * snapshots/{timestamp}/manifest.json, naming the files it is made of; each file is an immutable object
 * under incremental/{its path in the snapshot}/{sha256}, shared by every snapshot that holds the same
 * content; in a sealed snapshot (format 7 with a keyId) under incremental/s/{HMAC of its sha256} (Seal.name), which
 * says nothing of its path or content. latest.json names the current snapshot.
 *
 * @param seal the key objects are named (and sealed) by; null for unsealed snapshots
 */
record Keys(String townId, Seal seal) {
    Keys(String townId) {
        this(townId, null);
    }

    static final DateTimeFormatter TIMESTAMP = DateTimeFormatter.ofPattern("yyyyMMdd'T'HHmmss'Z'").withZone(ZoneOffset.UTC);
    static final Pattern TIMESTAMP_FORM = Pattern.compile("\\d{8}T\\d{6}Z");
    static final String MANIFEST = "manifest.json";
    /** Which tar pack held each path of the town, in formats 3 to 5 (format 6: Manifest.fileIndex, R2Packs.java). */
    static final String FILE_INDEX = "files/index.json.gz";

    /** The keys new objects of the config's town are written under: sealed by the current key when the town has one. */
    static Keys of(Config config) {
        Keyring ring = Keyring.of(config);
        return new Keys(config.townId(), ring == null ? null : ring.current());
    }

    /** The keys a snapshot's objects live under: by the key it was sealed with (from the keyring), or unsealed. */
    static Keys of(Config config, Manifest manifest) {
        if (manifest.keyId() == null) return new Keys(config.townId());
        Keyring ring = Keyring.of(config);
        if (ring == null)
            throw new R2Exception(R2Common.EXIT_USAGE, "snapshot " + manifest.timestamp() + " is sealed with key " + manifest.keyId()
                    + ", and no key is set: set R2_ENCRYPTION_KEY to the town's key");
        return new Keys(config.townId(), ring.byId(manifest.keyId(), "snapshot " + manifest.timestamp()));
    }

    /** The id of the key objects are sealed with, or null for unsealed keys. */
    String keyId() {
        return seal == null ? null : seal.id();
    }

    /** The size an object of plainSize bytes has in the bucket. */
    long storedSize(long plainSize) {
        return seal == null ? plainSize : seal.sealedSize(plainSize);
    }

    String town() {
        return "gastown/" + townId + "/";
    }

    String latest() {
        return town() + "latest.json";
    }

    String snapshots() {
        return town() + "snapshots/";
    }

    /** A failed restore of the town, recorded for every machine (RestoreState). */
    String restoreFailed() {
        return town() + "restore-failed.json";
    }

    /**
     * Written, sealed, by the first sealed sync: from then on the town's backups are sealed, and an unsealed latest.json
     * or manifest is refused (one could be planted by anyone with write access).
     */
    String sealedMarker() {
        return town() + "sealed.json";
    }

    /** The snapshots kept whatever the history policy says, and why (Held). */
    String held() {
        return town() + "held.json";
    }

    String snapshot(String timestamp) {
        return snapshots() + timestamp + "/";
    }

    String object(String timestamp, String path) {
        return snapshot(timestamp) + path;
    }

    String objects() {
        return town() + "incremental/";
    }

    /** Where a snapshot file lives: by content, so an unchanged file is stored once for every snapshot. */
    String object(FileEntry file) {
        return seal == null ? objects() + file.path() + "/" + file.sha256() : objects() + "s/" + seal.name(file.sha256());
    }

    /** The snapshot timestamp a key belongs to, or null for keys outside snapshots/. */
    String timestampOf(String key) {
        if (!key.startsWith(snapshots())) return null;
        String rest = key.substring(snapshots().length());
        int slash = rest.indexOf('/');
        String ts = slash < 0 ? rest : rest.substring(0, slash);
        return TIMESTAMP_FORM.matcher(ts).matches() ? ts : null;
    }

    static String format(Instant instant) {
        return TIMESTAMP.format(instant);
    }

    static Instant parse(String timestamp) {
        return Instant.from(TIMESTAMP.parse(timestamp));
    }

    /** A database in the town's data dir as dolt/{name}.backup/; one anywhere else as dolt/{its town path}.backup/. */
    static String doltBackup(String name, String path) {
        return path.equals(".dolt-data/" + name) ? "dolt/" + name + ".backup" : "dolt/" + path + ".backup";
    }

    /**
     * A rig's shared {rig}/.repo.git as git/{rig}.packs/{n}.pack and {n}.idx; any other git directory as
     * git/{its town path}.packs/. (Format 3 chains were bundles: git/{rig}.bundle/{n}.)
     */
    static String gitPacks(String gitDirPath) {
        String[] parts = gitDirPath.split("/");
        return parts.length == 2 && parts[1].equals(".repo.git") ? "git/" + parts[0] + ".packs" : "git/" + gitDirPath + ".packs";
    }
}

/** latest.json: names the current snapshot and pins its manifest, so pointer -> manifest -> files is checkable. */
record Pointer(String timestamp, String manifestSha256, String writer) {
    Pointer {
        if (timestamp == null || !Keys.TIMESTAMP_FORM.matcher(timestamp).matches())
            throw new IllegalArgumentException("timestamp must look like 20260217T120000Z, not " + timestamp);
        if (manifestSha256 != null && !Sha256.HEX.matcher(manifestSha256).matches())
            throw new IllegalArgumentException("manifestSha256 is not a sha256: " + manifestSha256);
        if (writer != null && !Writer.ID.matcher(writer).matches())
            throw new IllegalArgumentException("writer is not a writer id: " + writer);
    }

    /** A pointer as versions before 0.6 wrote it: no writer named (the next sync adopts the town). */
    Pointer(String timestamp, String manifestSha256) {
        this(timestamp, manifestSha256, null);
    }
}

/**
 * Which machine writes a town's snapshots: an id made from the machine's name (FLY_MACHINE_ID, else the host name)
 * and the town root, the same at every start of the same machine, which every sync names in latest.json. A sync
 * that finds latest.json written under another id refuses: two machines on one town, or a mis-provisioned TOWN_ID,
 * would otherwise interleave silently. A restore, or an operator's --take-over, makes its machine the writer. Kept
 * in nothing on the volume: a backup never changes the town.
 */
final class Writer {
    static final Pattern ID = Pattern.compile("[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}");

    private Writer() {}

    /** This machine's writer id for the town at townRoot. */
    static String of(Path townRoot) {
        return UUID.nameUUIDFromBytes((host() + "\n" + townRoot.toAbsolutePath().normalize()).getBytes(StandardCharsets.UTF_8)).toString();
    }

    /** The machine's name, for people reading a marker. */
    static String host() {
        String fly = System.getenv("FLY_MACHINE_ID");
        if (fly != null && !fly.isBlank()) return fly;
        try {
            return java.net.InetAddress.getLocalHost().getHostName();
        } catch (IOException e) {
            return "unknown";
        }
    }
}

/**
 * held.json: snapshots kept whatever the history policy says, each with why (a fallback restore passed over it, as
 * damaged; its objects may still hold work worth recovering by hand). Only an operator removes an entry.
 */
record Held(Map<String, String> snapshots) {
    Held {
        snapshots = snapshots == null ? Map.of() : Collections.unmodifiableMap(new TreeMap<>(snapshots));
        for (String ts : snapshots.keySet())
            if (!Keys.TIMESTAMP_FORM.matcher(ts).matches()) throw new IllegalArgumentException("not a snapshot timestamp: " + ts);
    }

    Held with(String timestamp, String why) {
        Map<String, String> more = new TreeMap<>(snapshots);
        more.put(timestamp, why);
        return new Held(more);
    }
}

/**
 * One file of a snapshot: path relative to the snapshot prefix, size and sha256. A file over Pieces.SIZE
 * bytes is stored as pieces (format 5): then sha256 is that of its pieces' sha256s (Pieces.digest).
 */
record FileEntry(String path, long size, String sha256, Pieces pieces) {
    FileEntry {
        SafePath.requireRelative(path, "file path in manifest");
        if (size < 0) throw new IllegalArgumentException("negative size for " + path);
        if (sha256 == null || !Sha256.HEX.matcher(sha256).matches())
            throw new IllegalArgumentException("not a sha256 for " + path + ": " + sha256);
        if (pieces != null && (pieces.sha256().size() < 2 || pieces.sha256().size() != (size + pieces.size() - 1) / pieces.size()))
            throw new IllegalArgumentException(path + ": " + pieces.sha256().size() + " pieces of " + pieces.size()
                    + " bytes cannot hold " + size + " bytes");
        if (pieces != null && !sha256.equals(pieces.digest()))
            throw new IllegalArgumentException(path + ": its sha256 is not the digest of its pieces");
    }

    /** A file stored as one object. */
    FileEntry(String path, long size, String sha256) {
        this(path, size, sha256, null);
    }

    /** The objects it is stored as, each with where it begins in the file: itself, or its pieces in order. */
    List<Part> parts() {
        if (pieces == null) return List.of(new Part(this, 0));
        List<Part> parts = new ArrayList<>();
        for (int i = 0; i < pieces.sha256().size(); i++) {
            long offset = i * pieces.size();
            parts.add(new Part(new FileEntry(path, Math.min(pieces.size(), size - offset), pieces.sha256().get(i)), offset));
        }
        return parts;
    }

    record Part(FileEntry object, long offset) {}
}

/**
 * How a file over SIZE bytes is stored: as objects of `size` bytes each (the last one shorter), in order, each
 * named by its sha256. Small objects go up in one request each, at once and resumably, never as a multipart
 * upload, and come down in parallel, each verified as it streams.
 */
record Pieces(long size, List<String> sha256) {
    static final long SIZE = 16L << 20;

    Pieces {
        if (size < (1L << 20)) throw new IllegalArgumentException("pieces of " + size + " bytes (at least 1 MiB)");
        sha256 = sha256 == null ? List.of() : List.copyOf(sha256);
        for (String s : sha256)
            if (!Sha256.HEX.matcher(s).matches()) throw new IllegalArgumentException("not a sha256 for a piece: " + s);
    }

    /** What names a file stored in pieces: the sha256 of its pieces' sha256s, one per line. */
    String digest() {
        return Sha256.of((String.join("\n", sha256) + "\n").getBytes(StandardCharsets.UTF_8));
    }
}

record Versions(String gt, String dolt, String git) {}

/**
 * What restore needs about a Dolt database besides its backup: its name and town path, the directory of
 * the snapshot its `dolt backup` files are under, the branch heads it held, and the root hash of the backup
 * (equal roots mean equal databases, working sets included).
 */
record DatabaseFacts(String name, String path, String backup, boolean serverRunning, Map<String, String> branches, String root) {
    DatabaseFacts {
        SafePath.requireName(name, "database name");
        SafePath.requireRelative(path, "database path");
        SafePath.requireRelative(backup, "database backup dir");
        if (!path.equals(name) && !path.endsWith("/" + name)) throw new IllegalArgumentException("database " + name + " at " + path);
        branches = branches == null ? Map.of() : Collections.unmodifiableMap(new TreeMap<>(branches));
    }
}

/**
 * A checked-out tree and what it held: HEAD, branch, and `git status` counted (staged, modified, untracked)
 * with the sha256 of its porcelain v2 listing. gitDir: where its .git leads, town-relative (absolute when
 * outside the town).
 */
record WorkTreeFacts(String path, String gitDir, String head, String branch, int staged, int modified, int untracked,
                     String status) {
    WorkTreeFacts {
        if (!path.isEmpty()) SafePath.requireRelative(path, "work tree path");
        if (gitDir == null || !gitDir.startsWith("/")) SafePath.requireRelative(gitDir, "work tree git dir");
    }

    String summary() {
        String at = branch != null ? branch.replaceFirst("^refs/heads/", "") : head != null ? "detached " + head : "no commit yet";
        return SafePath.shown(path) + " (" + at + "): " + staged + " staged, " + modified + " modified, " + untracked + " untracked";
    }
}

/**
 * One link of a repository's chain: a pack as `git pack-objects` writes one (file) with its index (index, the
 * .idx: restore puts both into objects/pack as they are, instead of hashing every object again), the commits it
 * needs already present (none for the first link), and the commits its refs reached (what the next link may
 * take as given). A link a format 3 snapshot wrote is a v2 bundle (header, then the pack) and has no index.
 */
record ChainLink(String file, String index, List<String> prerequisites, List<String> tips) {
    ChainLink {
        SafePath.requireRelative(file, "chain link");
        if (index != null) SafePath.requireRelative(index, "chain link index");
        prerequisites = prerequisites == null ? List.of() : List.copyOf(prerequisites);
        tips = tips == null ? List.of() : List.copyOf(tips);
    }

    boolean bundle() {
        return index == null;
    }

    List<String> files() {
        return bundle() ? List.of(file) : List.of(file, index);
    }
}

/**
 * A git directory (a bare repo, a clone's .git): its chain (a link holding every object, then increments,
 * applied in order; empty when it has no objects to carry; "bundles" in format 3), every ref, the symbolic
 * ones, whether it is a partial clone, the fingerprint that says its chain is unchanged, and the work trees
 * whose .git leads to it. Its other files (HEAD, index, config, hooks, ...) are in the file packs.
 */
record RepoFacts(String path, @JsonAlias("bundles") List<ChainLink> chain, Map<String, String> refs, Map<String, String> symrefs, boolean promisor,
                 String fingerprint, List<WorkTreeFacts> workTrees, String carriedFrom) {
    RepoFacts {
        SafePath.requireRelative(path, "repo path");
        chain = chain == null ? List.of() : List.copyOf(chain);
        refs = refs == null ? Map.of() : Collections.unmodifiableMap(new TreeMap<>(refs));
        symrefs = symrefs == null ? Map.of() : Collections.unmodifiableMap(new TreeMap<>(symrefs));
        workTrees = workTrees == null ? List.of() : List.copyOf(workTrees);
        for (Map.Entry<String, String> ref : refs.entrySet()) {
            if (!SafePath.requireRelative(ref.getKey(), "ref name").startsWith("refs/"))
                throw new IllegalArgumentException("ref " + ref.getKey() + " of " + path + " is not under refs/");
            if (!OBJECT_ID.matcher(ref.getValue()).matches())
                throw new IllegalArgumentException("ref " + ref.getKey() + " of " + path + " names no object id: " + ref.getValue());
        }
        // A symbolic ref's value is written into the ref file as it is: it must name a ref, nothing else.
        for (String target : symrefs.values())
            if (!SafePath.requireRelative(target, "symbolic ref target").startsWith("refs/"))
                throw new IllegalArgumentException("a symbolic ref of " + path + " names " + target + ", not a ref under refs/");
        if (!refs.keySet().containsAll(symrefs.keySet())) throw new IllegalArgumentException("symbolic ref without a ref in " + path);
    }

    static final Pattern OBJECT_ID = Pattern.compile("[0-9a-f]{40}|[0-9a-f]{64}");

    boolean empty() {
        return chain.isEmpty();
    }

    RepoFacts carriedFrom(String timestamp) {
        return new RepoFacts(path, chain, refs, symrefs, promisor, fingerprint, workTrees, timestamp);
    }
}

/** Something the sync could not back up; the snapshot is published with it listed (docs/sync.md#partial-snapshots). */
record Problem(String part, String error, String carriedFrom) {}

/**
 * A snapshot's manifest. formatVersion names the layout: 6 is incremental (every file an object under
 * incremental/ shared between snapshots, or for a file over Pieces.SIZE its pieces: packs of the town's file
 * contents, each content stored once, and the file index in pieces that fileIndex lists in order (R2Packs.java);
 * a chain of git packs with their indexes per git directory; each database's `dolt backup` files); 5 is the same
 * with the town's files in tar packs and one file index (files/index.json.gz; read); 4 is 5 with every file one
 * object (read, and a later snapshot may still reuse such objects); 3 is 4 with bundles for chain links (read, and
 * a later chain may still start with them); 2 held the whole town in per-snapshot tars, 1 was the keep-list layout.
 * history: the policy the sync that wrote it applied (what --list shows each snapshot is kept by).
 */
record Manifest(int formatVersion, String tool, String townId, String timestamp, String createdAt, String townRoot,
                Versions versions, HistoryPolicy history, List<FileEntry> files, List<String> fileIndex, List<DatabaseFacts> databases,
                List<RepoFacts> repos, List<Problem> problems, String keyId) {
    /** The format this version writes; it reads OLDEST_READ to FORMAT. */
    static final int FORMAT = 7;
    /** The first format that may be sealed: keyId names the key its objects are sealed (and named) with. */
    static final int SEALED = 7;
    static final int OLDEST_READ = 3;
    /** The first format whose town files are content packs with a file index in pieces (fileIndex). */
    static final int CONTENT_PACKS = 6;

    Manifest {
        if (!reads(formatVersion)) throw new UnreadableFormat(formatVersion);
        if (timestamp == null || !Keys.TIMESTAMP_FORM.matcher(timestamp).matches())
            throw new IllegalArgumentException("bad timestamp " + timestamp);
        files = files == null ? List.of() : List.copyOf(files);
        fileIndex = fileIndex == null ? List.of() : List.copyOf(fileIndex);
        databases = databases == null ? List.of() : List.copyOf(databases);
        repos = repos == null ? List.of() : List.copyOf(repos);
        problems = problems == null ? List.of() : List.copyOf(problems);
        Set<String> seen = new HashSet<>();
        for (FileEntry f : files)
            if (!seen.add(f.path())) throw new IllegalArgumentException("file listed twice: " + f.path());
        if (formatVersion >= CONTENT_PACKS) {
            if (fileIndex.isEmpty()) throw new IllegalArgumentException("no file index (fileIndex is empty)");
            for (String piece : fileIndex)
                if (!seen.contains(piece)) throw new IllegalArgumentException("file index piece " + piece + " is not among the files");
        } else if (!seen.contains(Keys.FILE_INDEX)) {
            throw new IllegalArgumentException("no file index (" + Keys.FILE_INDEX + ")");
        }
        for (DatabaseFacts db : databases)
            if (!seen.contains(db.backup() + "/manifest")) throw new IllegalArgumentException("database " + db.name() + " has no backup manifest");
        for (RepoFacts repo : repos)
            for (ChainLink link : repo.chain())
                for (String file : link.files())
                    if (!seen.contains(file)) throw new IllegalArgumentException("repo " + repo.path() + " has no file " + file);
        if (townRoot == null || !townRoot.startsWith("/")) throw new IllegalArgumentException("townRoot must be an absolute path: " + townRoot);
        if (keyId != null && (formatVersion < SEALED || !keyId.matches("[0-9a-f]{16}"))) throw new IllegalArgumentException("bad keyId " + keyId);
    }

    /** A manifest without a key (every format before 7, and 7 unsealed). */
    Manifest(int formatVersion, String tool, String townId, String timestamp, String createdAt, String townRoot, Versions versions,
             HistoryPolicy history, List<FileEntry> files, List<String> fileIndex, List<DatabaseFacts> databases,
             List<RepoFacts> repos, List<Problem> problems) {
        this(formatVersion, tool, townId, timestamp, createdAt, townRoot, versions, history, files, fileIndex, databases, repos, problems, null);
    }

    boolean contentPacks() {
        return formatVersion >= CONTENT_PACKS;
    }

    boolean sealed() {
        return keyId != null;
    }

    Optional<FileEntry> file(String path) {
        return files.stream().filter(f -> f.path().equals(path)).findFirst();
    }

    /** A chain link's files, as this snapshot lists them. */
    List<FileEntry> filesOf(ChainLink link) {
        return link.files().stream().map(f -> file(f).orElseThrow()).collect(Collectors.toList());
    }

    /** The files under a directory of the snapshot (a database's backup). */
    List<FileEntry> filesUnder(String dir) {
        return files.stream().filter(f -> f.path().startsWith(dir + "/")).collect(Collectors.toList());
    }

    Optional<DatabaseFacts> database(String path) {
        return databases.stream().filter(d -> d.path().equals(path)).findFirst();
    }

    Optional<RepoFacts> repo(String path) {
        return repos.stream().filter(r -> r.path().equals(path)).findFirst();
    }

    long totalBytes() {
        return files.stream().mapToLong(FileEntry::size).sum();
    }

    /** Every object under incremental/ the snapshot uses: each file, or each piece of a file stored in pieces. */
    List<FileEntry> objects() {
        return files.stream().flatMap(f -> f.parts().stream()).map(FileEntry.Part::object).collect(Collectors.toList());
    }

    boolean complete() {
        return problems.isEmpty();
    }

    static boolean reads(int format) {
        return format >= OLDEST_READ && format <= FORMAT;
    }

    /** The format version of manifest JSON, read before anything else, or -1 when it has none. */
    static int formatOf(byte[] json) {
        try {
            return R2Common.JSON.readTree(json).path("formatVersion").asInt(-1);
        } catch (IOException e) {
            return -1;
        }
    }

    /** A manifest in a format this version cannot read: refused by name, never misread. */
    static final class UnreadableFormat extends IllegalArgumentException {
        UnreadableFormat(int format) {
            super("manifest format " + format + " is not a format this tool reads (" + OLDEST_READ + " to " + FORMAT + ")"
                    + (format == 1 ? "; format 1 snapshots were written by gastown-r2 0.1 and restore with it"
                    : format == 2 ? "; format 2 snapshots were written by gastown-r2 0.2 and restore with it" : ""));
        }
    }
}

final class Sha256 {
    static final Pattern HEX = Pattern.compile("[0-9a-f]{64}");

    private Sha256() {}

    static MessageDigest digest() {
        try {
            return MessageDigest.getInstance("SHA-256");
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }

    static String hex(byte[] digest) {
        return HexFormat.of().formatHex(digest);
    }

    /** What HEX matches, without a regex: a file index checks a sha256 per entry. */
    static boolean isHex(String s) {
        if (s == null || s.length() != 64) return false;
        for (int i = 0; i < 64; i++) {
            char c = s.charAt(i);
            if (!(c >= '0' && c <= '9') && !(c >= 'a' && c <= 'f')) return false;
        }
        return true;
    }

    static String of(byte[] data) {
        return hex(digest().digest(data));
    }

    /**
     * Streams an object into target at offset (a file stored in pieces is written piece by piece, in parallel),
     * hashing while writing; returns what arrived: its size and plain sha256. It stops one byte past the size
     * expected (a body longer than the manifest says is refused by its size, never written whole).
     */
    static FileEntry copyInto(InputStream in, Path target, long offset, FileEntry expected, Progress progress) throws IOException {
        MessageDigest md = digest();
        long size = 0;
        long limit = expected.size() + 1;
        try (FileChannel channel = FileChannel.open(target, StandardOpenOption.CREATE, StandardOpenOption.WRITE)) {
            channel.position(offset);
            OutputStream out = new BufferedOutputStream(Channels.newOutputStream(channel), 1 << 16);
            byte[] buf = new byte[1 << 16];
            for (int n; size < limit && (n = in.read(buf, 0, (int) Math.min(buf.length, limit - size))) > 0; ) {
                out.write(buf, 0, n);
                md.update(buf, 0, n);
                size += n;
                if (progress != null) progress.add(n);
            }
            out.flush();
        }
        return new FileEntry(expected.path(), size, hex(md.digest()));
    }

    /** Streams a file once, returning its entry under the given snapshot path. */
    static FileEntry ofFile(Path file, String snapshotPath) throws IOException {
        Hasher hasher = new Hasher();
        try (InputStream in = Files.newInputStream(file)) {
            byte[] buf = new byte[1 << 16];
            for (int n; (n = in.read(buf)) > 0; ) hasher.update(buf, 0, n);
        }
        return hasher.entry(snapshotPath);
    }

    /**
     * Hashes content as it passes, the way a FileEntry names it: up to Pieces.SIZE bytes by its sha256;
     * more, by pieces of Pieces.SIZE bytes, each hashed once (Pieces.digest names the whole).
     */
    static final class Hasher {
        private final MessageDigest md = digest();
        private final List<String> pieces = new ArrayList<>();
        private long count;

        void update(byte[] b, int off, int len) {
            while (len > 0) {
                int n = (int) Math.min(len, Pieces.SIZE - count % Pieces.SIZE);
                md.update(b, off, n);
                count += n;
                off += n;
                len -= n;
                if (count % Pieces.SIZE == 0) pieces.add(hex(md.digest()));
            }
        }

        /** The entry of what passed; call once, at the end. */
        FileEntry entry(String snapshotPath) {
            if (count == 0 || count % Pieces.SIZE != 0) pieces.add(hex(md.digest()));
            if (pieces.size() == 1) return new FileEntry(snapshotPath, count, pieces.get(0));
            Pieces p = new Pieces(Pieces.SIZE, pieces);
            return new FileEntry(snapshotPath, count, p.digest(), p);
        }
    }

    /** An output stream that hashes what passes through it (as Hasher does), so a file is hashed while written. */
    static final class HashingOutputStream extends FilterOutputStream {
        private final Hasher hasher = new Hasher();
        private final byte[] one = new byte[1];

        HashingOutputStream(OutputStream out) {
            super(out);
        }

        @Override
        public void write(int b) throws IOException {
            one[0] = (byte) b;
            write(one, 0, 1);
        }

        @Override
        public void write(byte[] b, int off, int len) throws IOException {
            out.write(b, off, len);
            hasher.update(b, off, len);
        }

        FileEntry entry(String snapshotPath) {
            return hasher.entry(snapshotPath);
        }
    }
}

/**
 * The order of town paths: as a walk that lists a directory's sorted children right after it gives them. It
 * is string order with '/' before every other character, so "a", "a/b", "a.txt".
 */
final class PathOrder {
    private PathOrder() {}

    static int compare(String a, String b) {
        int n = Math.min(a.length(), b.length());
        for (int i = 0; i < n; i++) {
            char x = a.charAt(i);
            char y = b.charAt(i);
            if (x != y) {
                if (x == '/') return -1;
                if (y == '/') return 1;
                return x - y;
            }
        }
        return a.length() - b.length();
    }

    static String parent(String path) {
        int slash = path.lastIndexOf('/');
        return slash < 0 ? "" : path.substring(0, slash);
    }
}

/**
 * One path of the town. type: FILE, DIR, SYMLINK, or HARDLINK (a second name of a file listed earlier: target).
 * mode: the permission bits; mtime in nanoseconds; size of a file's content. racy: changed so close to its scan
 * that it may change again within the same mtime, so the next cycle reads it again. gitConfig (scan only): a git
 * directory's config, stored with URL credentials removed. blob: where a file's content is stored.
 */
record TownEntry(String path, char type, int mode, long mtime, long size, boolean racy, boolean gitConfig, String target,
                 Blob blob) {
    static final char FILE = 'f';
    static final char DIR = 'd';
    static final char SYMLINK = 'l';
    static final char HARDLINK = 'h';
    private static final Pattern PACK_ID = Pattern.compile("[0-9A-Za-z][0-9A-Za-z-]{0,63}");

    /** A file's content: its sha256, and the pack, offset and compressed length it is stored at. */
    record Blob(String sha256, String pack, long offset, long length) {
        Blob {
            if (!Sha256.isHex(sha256)) throw new IllegalArgumentException("not a sha256: " + sha256);
            if (pack == null || !PACK_ID.matcher(pack).matches()) throw new IllegalArgumentException("not a pack id: " + pack);
            if (offset < 0 || length < 0) throw new IllegalArgumentException("negative offset or length in pack " + pack);
        }
    }

    TownEntry {
        SafePath.requireRelative(path, "path in the file index");
        if (type != FILE && type != DIR && type != SYMLINK && type != HARDLINK)
            throw new IllegalArgumentException("unknown entry type '" + type + "' for " + path);
        if (mode < 0 || mode > 0777) throw new IllegalArgumentException("mode " + Integer.toOctalString(mode) + " for " + path);
        if (size < 0) throw new IllegalArgumentException("negative size for " + path);
        if (type == HARDLINK) SafePath.requireRelative(target, "hard link target of " + path);
        if (type == SYMLINK && target != null && (target.isEmpty() || target.indexOf('\0') >= 0))
            throw new IllegalArgumentException("empty symlink target for " + path);
    }

    /**
     * True when the scan saw the path as it was when this entry was made: its content need not be read again. (A git
     * config is stored with credentials removed, so its entry's size is not the file's: its mtime tells.)
     */
    boolean unchangedFrom(TownEntry scanned) {
        return !racy && type == scanned.type && mode == scanned.mode && mtime == scanned.mtime
                && (size == scanned.size || scanned.gitConfig) && (type != HARDLINK || target.equals(scanned.target));
    }

    TownEntry withContent(long contentSize, Blob stored, boolean racyNow) {
        return new TownEntry(path, type, mode, mtime, contentSize, racyNow, false, null, stored);
    }

    TownEntry withTarget(String linkTarget, boolean racyNow) {
        return new TownEntry(path, type, mode, mtime, size, racyNow, false, linkTarget, null);
    }

    TownEntry racy(boolean racyNow) {
        return new TownEntry(path, type, mode, mtime, size, racyNow, false, target, blob);
    }

    /** Checks what only a complete index entry must hold (a scan's entries have no content yet). */
    TownEntry requireComplete() {
        if (type == FILE && blob == null) throw new IllegalArgumentException("file " + path + " has no content");
        if (type == SYMLINK && target == null) throw new IllegalArgumentException("symlink " + path + " has no target");
        return this;
    }

    void write(DataOutputStream out) throws IOException {
        out.writeUTF(path);
        out.writeByte(type);
        out.writeShort(mode);
        out.writeLong(mtime);
        out.writeLong(size);
        out.writeByte((racy ? 1 : 0) | (gitConfig ? 2 : 0));
        if (type == FILE && blob != null) {
            out.writeBoolean(true);
            out.write(HexFormat.of().parseHex(blob.sha256()));
            out.writeUTF(blob.pack());
            out.writeLong(blob.offset());
            out.writeLong(blob.length());
        } else if (type == FILE) {
            out.writeBoolean(false);
        } else if (type == SYMLINK || type == HARDLINK) {
            out.writeBoolean(target != null);
            if (target != null) out.writeUTF(target);
        }
    }

    /** The next entry, or null at the end marker. */
    static TownEntry read(DataInputStream in) throws IOException {
        String path = in.readUTF();
        if (path.isEmpty()) return null;
        char type = (char) in.readUnsignedByte();
        int mode = in.readUnsignedShort();
        long mtime = in.readLong();
        long size = in.readLong();
        int flags = in.readUnsignedByte();
        String target = null;
        Blob blob = null;
        if (type == FILE) {
            if (in.readBoolean()) {
                byte[] sha = new byte[32];
                in.readFully(sha);
                blob = new Blob(HexFormat.of().formatHex(sha), in.readUTF(), in.readLong(), in.readLong());
            }
        } else if (type == SYMLINK || type == HARDLINK) {
            if (in.readBoolean()) target = in.readUTF();
        }
        return new TownEntry(path, type, mode, mtime, size, (flags & 1) != 0, (flags & 2) != 0, target, blob);
    }
}

/** Entries as a stream in a file: a header, the entries, an end marker (so a cut file is told from a whole one). */
final class EntryFiles {
    private static final int MAGIC = 0x47545232;   // "GTR2"
    static final int VERSION = 1;

    private EntryFiles() {}

    static DataOutputStream write(OutputStream out) throws IOException {
        DataOutputStream data = new DataOutputStream(new BufferedOutputStream(out, 1 << 16));
        data.writeInt(MAGIC);
        data.writeByte(VERSION);
        return data;
    }

    static void end(DataOutputStream out) throws IOException {
        out.writeUTF("");
        out.flush();
    }

    static DataInputStream read(InputStream in, String source) throws IOException {
        DataInputStream data = new DataInputStream(new BufferedInputStream(in, 1 << 16));
        if (data.readInt() != MAGIC) throw new IOException(source + " is not a gastown-r2 entry file");
        int version = data.readUnsignedByte();
        if (version != VERSION) throw new IOException(source + " is in entry format " + version + ", not " + VERSION);
        return data;
    }
}

/** The history policy a sync applied, as its manifest records it (R2History says what it keeps). */
record HistoryPolicy(int last, int hourly, int daily) {
    String describe() {
        return "the last " + last + ", hourly for " + hourly + " hours, daily for " + daily + " days";
    }
}

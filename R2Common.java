///usr/bin/env jbang "$0" "$@" ; exit $?
//JAVA 17+
//DEPS software.amazon.awssdk:bom:2.57.8@pom
//DEPS software.amazon.awssdk:s3
//DEPS software.amazon.awssdk:url-connection-client
//DEPS info.picocli:picocli:4.7.7
//DEPS com.fasterxml.jackson.core:jackson-databind:2.18.2
//DEPS org.apache.commons:commons-compress:1.28.0
//DEPS com.github.luben:zstd-jni:1.5.7-6
//DEPS org.slf4j:slf4j-nop:1.7.36
//SOURCES R2Store.java
//SOURCES R2Tar.java
//SOURCES R2Town.java
//SOURCES R2Git.java
//SOURCES R2Dolt.java
//SOURCES R2Packs.java
//SOURCES R2History.java
//SOURCES R2Rebuild.java
//SOURCES R2Verify.java

// The shared vocabulary of R2Sync and R2Restore. Contents, in order:
//   1. R2Common      version, exit codes, JSON mapper
//   2. Config        R2Options (the picocli mixin of connection options) -> Config (immutable)
//   3. Keys          the key layout under gastown/{town_id}/
//   4. Manifest      Pointer (latest.json), Manifest and the facts it records
//   5. Hashing       sha256 of files and of streams being written
//   6. Processes     Proc: honest subprocesses, with no secret in their environment; Parallel: independent tasks
//                    on a bounded pool; Background: one task beside the caller's work
//   7. Local state   FileTrees, RestoreState (the failed-restore marker, the interrupted-move marker)
//   8. Reporting     Log (timestamped, secret-free, escaped stderr lines), Progress, Heartbeat
//   9. CLI wiring    R2Exception, R2Cli.run
// Each other concept has a file of its own: R2Store.java (the object store), R2Tar.java (tar writing and
// hostile-archive refusal), R2Town.java (what a snapshot holds: the scan and its skip list), R2Git.java
// (how git runs, chains of git packs, and work-tree state), R2Dolt.java (dolt backups and the dolt identity
// restores run with), R2Packs.java (files stored incrementally: packs and the file index), R2History.java
// (which snapshots are kept, and garbage collection of the objects none of them uses).

import com.fasterxml.jackson.annotation.JsonAlias;
import com.fasterxml.jackson.annotation.JsonInclude;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.SerializationFeature;
import picocli.CommandLine;
import picocli.CommandLine.Option;

import java.io.*;
import java.net.HttpURLConnection;
import java.net.URI;
import java.nio.channels.Channels;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.*;
import java.nio.file.attribute.BasicFileAttributes;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.time.*;
import java.time.format.DateTimeFormatter;
import java.util.*;
import java.util.concurrent.*;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Collectors;
import java.util.stream.Stream;

// ---------------------------------------------------------------------------------------------
// 1. R2Common
// ---------------------------------------------------------------------------------------------

final class R2Common {
    static final String VERSION = "gastown-r2 0.6.0";

    /** Exit codes shared by both commands (restic's spirit: few, and each one a script can act on). */
    static final int EXIT_OK = 0;
    static final int EXIT_FAILED = 1;
    static final int EXIT_USAGE = 2;
    /** A snapshot was published, but some part of the town could not be backed up (see its problems). */
    static final int EXIT_PARTIAL = 3;

    static final ObjectMapper JSON = new ObjectMapper()
            .enable(SerializationFeature.INDENT_OUTPUT)
            .disable(DeserializationFeature.FAIL_ON_UNKNOWN_PROPERTIES)
            .setSerializationInclusion(JsonInclude.Include.NON_NULL);

    private R2Common() {}

    static byte[] toJson(Object value) {
        try {
            return JSON.writeValueAsBytes(value);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    /** Parses JSON into a record; malformed input is an expected failure that names its source. */
    static <T> T fromJson(byte[] json, Class<T> type, String source) {
        try {
            return JSON.readValue(json, type);
        } catch (IOException | IllegalArgumentException e) {
            String reason = e.getMessage() == null ? e.toString() : e.getMessage().lines().findFirst().orElse("");
            throw new R2Exception(R2Common.EXIT_FAILED, source + " is not valid: " + reason);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Config
// ---------------------------------------------------------------------------------------------

/** Connection and town options shared by both commands; each reads an env var and a flag overrides it. */
final class R2Options {
    @Option(names = "--endpoint", defaultValue = "${env:R2_ENDPOINT}", paramLabel = "URL",
            description = "R2 (S3) endpoint, e.g. https://<account>.r2.cloudflarestorage.com, or file:///dir "
                    + "for a local-directory store (env R2_ENDPOINT).")
    String endpoint;

    @Option(names = "--access-key-id", defaultValue = "${env:R2_ACCESS_KEY_ID}", paramLabel = "ID",
            description = "R2 access key id (env R2_ACCESS_KEY_ID).")
    String accessKeyId;

    @Option(names = "--secret-access-key", defaultValue = "${env:R2_SECRET_ACCESS_KEY}", paramLabel = "SECRET",
            showDefaultValue = CommandLine.Help.Visibility.NEVER,
            description = "R2 secret access key (env R2_SECRET_ACCESS_KEY, or a file named by "
                    + "R2_SECRET_ACCESS_KEY_FILE). Never printed.")
    String secretAccessKey;

    @Option(names = "--bucket", defaultValue = "${env:R2_BUCKET}", paramLabel = "NAME",
            description = "Bucket holding the backups (env R2_BUCKET).")
    String bucket;

    @Option(names = "--region", defaultValue = "${env:R2_REGION:-auto}", paramLabel = "REGION",
            description = "The region requests are signed for: auto for R2; an S3 server that refuses auto (versitygw, "
                    + "AWS) wants its own, e.g. us-east-1 (env R2_REGION, default ${DEFAULT-VALUE}).")
    String region;

    @Option(names = "--town-id", defaultValue = "${env:TOWN_ID}", paramLabel = "ID",
            description = "Town id; keys live under gastown/<id>/ (env TOWN_ID).")
    String townId;

    @Option(names = "--town-root", defaultValue = "${env:GT_TOWN_ROOT:-/home/gt/data}", paramLabel = "DIR",
            description = "The town's root directory (env GT_TOWN_ROOT, default ${DEFAULT-VALUE}).")
    Path townRoot;

    @Option(names = "--api-url", defaultValue = "${env:GASTOWN_API_URL}", paramLabel = "URL",
            description = "Gastown cloud API base URL for status reports; unset disables them (env GASTOWN_API_URL).")
    String apiUrl;

    @Option(names = "--api-token", defaultValue = "${env:GASTOWN_API_TOKEN}", paramLabel = "TOKEN",
            showDefaultValue = CommandLine.Help.Visibility.NEVER,
            description = "Bearer token for the cloud API (env GASTOWN_API_TOKEN, or a file named by "
                    + "GASTOWN_API_TOKEN_FILE). Never printed.")
    String apiToken;

    @Option(names = "--state-dir", defaultValue = "${env:R2_STATE_DIR:-/tmp/r2-state}", paramLabel = "DIR",
            description = "Local state of this machine: the last sync's outcome and the failed-restore marker "
                    + "(env R2_STATE_DIR, default ${DEFAULT-VALUE}).")
    Path stateDir;

    @Option(names = "--debug", description = "Print stack traces of unexpected errors.")
    boolean debug;

    private static final Pattern TOWN_ID = Pattern.compile("[A-Za-z0-9][A-Za-z0-9._-]{0,127}");
    private static final Pattern BUCKET = Pattern.compile("[a-z0-9][a-z0-9.-]{1,62}");
    private static final Pattern REGION = Pattern.compile("[a-z0-9][a-z0-9-]{0,63}");

    /** Validates every setting and returns the immutable config; a bad setting is a usage error (exit 2). */
    Config toConfig() {
        R2Cli.debug = debug;
        String secret = orFile(secretAccessKey, "R2_SECRET_ACCESS_KEY_FILE");
        String token = orFile(apiToken, "GASTOWN_API_TOKEN_FILE");
        Log.addSecret(secret);
        Log.addSecret(token);

        URI endpointUri = parseUri(require(endpoint, "R2_ENDPOINT", "--endpoint"), "R2_ENDPOINT");
        boolean localStore = "file".equals(endpointUri.getScheme());
        if (!localStore) {
            if (!"https".equals(endpointUri.getScheme()) && !"http".equals(endpointUri.getScheme()))
                throw usage("R2_ENDPOINT must be an http(s):// URL or file:///dir, not " + Log.redactUrl(endpoint));
            if (endpointUri.getUserInfo() != null)
                throw usage("R2_ENDPOINT must not carry credentials; use R2_ACCESS_KEY_ID and R2_SECRET_ACCESS_KEY");
            require(accessKeyId, "R2_ACCESS_KEY_ID", "--access-key-id");
            require(secret, "R2_SECRET_ACCESS_KEY", "--secret-access-key");
            if (!BUCKET.matcher(require(bucket, "R2_BUCKET", "--bucket")).matches())
                throw usage("R2_BUCKET is not a valid bucket name: " + bucket);
            if (!REGION.matcher(require(region, "R2_REGION", "--region")).matches())
                throw usage("R2_REGION is not a region name (auto, us-east-1, ...): " + region);
        }
        if (!TOWN_ID.matcher(require(townId, "TOWN_ID", "--town-id")).matches())
            throw usage("TOWN_ID may hold only letters, digits, '.', '_' and '-': " + townId);
        if (townRoot == null || townRoot.toString().isBlank())
            throw usage("GT_TOWN_ROOT is empty (or --town-root)");
        URI api = null;
        if (apiUrl != null && !apiUrl.isBlank()) {
            api = parseUri(apiUrl, "GASTOWN_API_URL");
            if (!"https".equals(api.getScheme()) && !"http".equals(api.getScheme()))
                throw usage("GASTOWN_API_URL must be an http(s):// URL");
        }
        return new Config(endpointUri, localStore ? null : accessKeyId, localStore ? null : secret,
                localStore ? "local" : bucket, localStore ? null : region.trim(), townId, townRoot.toAbsolutePath().normalize(), api, token,
                stateDir.toAbsolutePath().normalize());
    }

    private static String require(String value, String env, String flag) {
        if (value == null || value.isBlank()) throw usage(env + " is not set (or pass " + flag + ")");
        return value.trim();
    }

    private static URI parseUri(String value, String env) {
        try {
            URI uri = new URI(value.trim());
            if (uri.getScheme() == null) throw new IllegalArgumentException("no scheme");
            return uri;
        } catch (Exception e) {
            throw usage(env + " is not a valid URL: " + Log.redactUrl(value));
        }
    }

    /** The value, or the content of the file an env var names (for secrets mounted as files). */
    private static String orFile(String value, String fileEnv) {
        if (value != null && !value.isBlank()) return value;
        String file = System.getenv(fileEnv);
        if (file == null || file.isBlank()) return value;
        try {
            return Files.readString(Path.of(file)).trim();
        } catch (IOException e) {
            throw usage(fileEnv + " names a file that cannot be read: " + file);
        }
    }

    static R2Exception usage(String message) {
        return new R2Exception(R2Common.EXIT_USAGE, message);
    }
}

/** Validated settings, passed along instead of the command objects. toString never shows secrets. */
record Config(URI endpoint, String accessKeyId, String secretAccessKey, String bucket, String region, String townId,
              Path townRoot, URI apiUrl, String apiToken, Path stateDir) {
    boolean localStore() {
        return "file".equals(endpoint.getScheme());
    }

    Keys keys() {
        return new Keys(townId);
    }

    @Override
    public String toString() {
        return "Config[endpoint=" + endpoint + ", bucket=" + bucket + ", region=" + region + ", townId=" + townId + ", townRoot=" + townRoot + "]";
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Keys
// ---------------------------------------------------------------------------------------------

/**
 * The key layout. Everything of a town lives under gastown/{town_id}/. A snapshot is one object,
 * snapshots/{timestamp}/manifest.json, naming the files it is made of; each file is an immutable object
 * under incremental/{its path in the snapshot}/{sha256}, shared by every snapshot that holds the same
 * content. latest.json names the current snapshot.
 */
record Keys(String townId) {
    static final DateTimeFormatter TIMESTAMP = DateTimeFormatter.ofPattern("yyyyMMdd'T'HHmmss'Z'").withZone(ZoneOffset.UTC);
    static final Pattern TIMESTAMP_FORM = Pattern.compile("\\d{8}T\\d{6}Z");
    static final String MANIFEST = "manifest.json";
    /** Which tar pack held each path of the town, in formats 3 to 5 (format 6: Manifest.fileIndex, R2Packs.java). */
    static final String FILE_INDEX = "files/index.json.gz";

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
        return objects() + file.path() + "/" + file.sha256();
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

// ---------------------------------------------------------------------------------------------
// 4. Manifest
// ---------------------------------------------------------------------------------------------

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

    /** What held.json says; none yet is an empty hold. One that does not parse holds nothing back: said loudly. */
    static Held read(ObjectStore store, Keys keys) {
        Optional<Versioned> json = store.get(keys.held());
        if (json.isEmpty()) return new Held(Map.of());
        return R2Common.fromJson(json.get().data(), Held.class, "held.json");
    }
}

/**
 * One file of a snapshot: path relative to the snapshot prefix, size and sha256. A file over Pieces.SIZE
 * bytes is stored as pieces (format 5): then sha256 is that of its pieces' sha256s (Pieces.digest).
 */
record FileEntry(String path, long size, String sha256, Pieces pieces) {
    FileEntry {
        Town.requireSafeRelative(path, "file path in manifest");
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
        Town.requireSafeName(name, "database name");
        Town.requireSafeRelative(path, "database path");
        Town.requireSafeRelative(backup, "database backup dir");
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
        if (!path.isEmpty()) Town.requireSafeRelative(path, "work tree path");
        if (gitDir == null || !gitDir.startsWith("/")) Town.requireSafeRelative(gitDir, "work tree git dir");
    }

    String summary() {
        String at = branch != null ? branch.replaceFirst("^refs/heads/", "") : head != null ? "detached " + head : "no commit yet";
        return Town.shown(path) + " (" + at + "): " + staged + " staged, " + modified + " modified, " + untracked + " untracked";
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
        Town.requireSafeRelative(file, "chain link");
        if (index != null) Town.requireSafeRelative(index, "chain link index");
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
        Town.requireSafeRelative(path, "repo path");
        chain = chain == null ? List.of() : List.copyOf(chain);
        refs = refs == null ? Map.of() : Collections.unmodifiableMap(new TreeMap<>(refs));
        symrefs = symrefs == null ? Map.of() : Collections.unmodifiableMap(new TreeMap<>(symrefs));
        workTrees = workTrees == null ? List.of() : List.copyOf(workTrees);
        for (Map.Entry<String, String> ref : refs.entrySet()) {
            if (!Town.requireSafeRelative(ref.getKey(), "ref name").startsWith("refs/"))
                throw new IllegalArgumentException("ref " + ref.getKey() + " of " + path + " is not under refs/");
            if (!OBJECT_ID.matcher(ref.getValue()).matches())
                throw new IllegalArgumentException("ref " + ref.getKey() + " of " + path + " names no object id: " + ref.getValue());
        }
        // A symbolic ref's value is written into the ref file as it is: it must name a ref, nothing else.
        for (String target : symrefs.values())
            if (!Town.requireSafeRelative(target, "symbolic ref target").startsWith("refs/"))
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
                List<RepoFacts> repos, List<Problem> problems) {
    /** The format this version writes; it reads OLDEST_READ to FORMAT. */
    static final int FORMAT = 6;
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
    }

    boolean contentPacks() {
        return formatVersion >= CONTENT_PACKS;
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

// ---------------------------------------------------------------------------------------------
// 5. Hashing
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// 6. Processes
// ---------------------------------------------------------------------------------------------

record ProcResult(List<String> args, int exitCode, String stdout, String stderr) {
    boolean ok() {
        return exitCode == 0;
    }

    /** The last lines of stderr (or stdout), for error messages. */
    String tail() {
        String text = stderr.isBlank() ? stdout : stderr;
        List<String> lines = text.strip().lines().collect(Collectors.toList());
        return String.join(" | ", lines.subList(Math.max(0, lines.size() - 3), lines.size()));
    }
}

/**
 * Runs a command as an argument list (never through a shell), reads stdout and stderr at the same time,
 * and enforces a timeout. Every running child is tracked so a shutdown can end them all.
 */
final class Proc {
    private static final Set<Process> RUNNING = ConcurrentHashMap.newKeySet();
    private static final ExecutorService READERS = Executors.newCachedThreadPool(r -> {
        Thread t = new Thread(r, "proc-reader");
        t.setDaemon(true);
        return t;
    });
    static final Duration DEFAULT_TIMEOUT = Duration.ofMinutes(30);

    private Proc() {}

    static ProcResult run(Path cwd, String... args) {
        return run(cwd, DEFAULT_TIMEOUT, List.of(args));
    }

    /**
     * What a child keeps of our environment: these names (and LC_*) only, never the whole of it. Our environment
     * holds the R2 keys and the API token (and *_FILE pointers to them); a list of what to pass on, rather than
     * of what to remove, keeps out every secret added later too, from git, dolt, gt and whatever they run. The
     * GIT_CONFIG_* and DOLT_* ones point git and dolt at the machine's own config (tests/run sets them).
     */
    private static final Set<String> PASSED_ON = Set.of("PATH", "HOME", "LANG", "TZ", "TMPDIR", "USER", "LOGNAME",
            "GIT_CONFIG_GLOBAL", "GIT_CONFIG_NOSYSTEM", "DOLT_ROOT_PATH", "DOLT_DISABLE_EVENT_FLUSH");

    static boolean passedOn(String name) {
        return PASSED_ON.contains(name) || name.startsWith("LC_");
    }

    /** Environment every child gets on top of what it keeps of ours (DoltHome sets dolt's config dir here). */
    private static final Map<String, String> ENV = new ConcurrentHashMap<>();

    static void setEnv(String name, String value) {
        ENV.put(name, value);
    }

    static ProcResult run(Path cwd, Duration timeout, List<String> args) {
        return run(cwd, timeout, args, Map.of());
    }

    /** Runs with env added to the child's environment (Git's hardening, the version probe's HOME). */
    static ProcResult run(Path cwd, Duration timeout, List<String> args, Map<String, String> env) {
        Process p = start(cwd, args, env);
        try {
            p.getOutputStream().close();
        } catch (IOException e) {
            // the child closed its stdin first; its output says what happened
        }
        return finish(p, timeout, args, READERS.submit(() -> readCapped(p.getInputStream())),
                READERS.submit(() -> readCapped(p.getErrorStream())));
    }

    /**
     * Runs a command with stdin given and stdout streamed into out (for output too large to hold, such as
     * a pack); a non-zero exit is an error carrying the end of stderr.
     */
    static void pipe(Path cwd, List<String> args, byte[] stdin, OutputStream out) {
        pipe(cwd, args, Map.of(), stdin, out);
    }

    static void pipe(Path cwd, List<String> args, Map<String, String> env, byte[] stdin, OutputStream out) {
        Process p = start(cwd, args, env);
        Future<String> err = READERS.submit(() -> readCapped(p.getErrorStream()));
        Future<Void> feed = READERS.submit(() -> {
            try (OutputStream in = p.getOutputStream()) {
                in.write(stdin);
            }
            return null;
        });
        try (InputStream from = p.getInputStream()) {
            from.transferTo(out);
        } catch (IOException e) {
            p.destroyForcibly();
            RUNNING.remove(p);
            throw new R2Exception(R2Common.EXIT_FAILED, String.join(" ", args) + ": " + e.getMessage(), e);
        }
        ProcResult r = finish(p, DEFAULT_TIMEOUT, args, CompletableFuture.completedFuture(""), err);
        try {
            feed.get();
        } catch (InterruptedException | ExecutionException e) {
            // a child that exits without reading all its input has said why on stderr
        }
        if (!r.ok())
            throw new R2Exception(R2Common.EXIT_FAILED, String.join(" ", args) + ": exit " + r.exitCode() + ": " + r.tail());
    }

    private static Process start(Path cwd, List<String> args, Map<String, String> env) {
        ProcessBuilder pb = new ProcessBuilder(args);
        if (cwd != null) pb.directory(cwd.toFile());
        pb.environment().keySet().removeIf(name -> !passedOn(name));
        pb.environment().putAll(ENV);
        pb.environment().putAll(env);
        pb.redirectInput(ProcessBuilder.Redirect.PIPE);
        Process p;
        try {
            p = pb.start();
        } catch (IOException e) {
            throw new R2Exception(R2Common.EXIT_FAILED, "cannot run " + args.get(0) + ": " + e.getMessage());
        }
        RUNNING.add(p);
        return p;
    }

    /** Waits for a started child within the timeout and collects what its readers read. */
    private static ProcResult finish(Process p, Duration timeout, List<String> args, Future<String> out, Future<String> err) {
        try {
            if (!p.waitFor(timeout.toMillis(), TimeUnit.MILLISECONDS)) {
                p.destroyForcibly();
                throw new R2Exception(R2Common.EXIT_FAILED, String.join(" ", args) + ": timed out after " + timeout);
            }
            if (shuttingDown)
                throw new R2Exception(R2Common.EXIT_FAILED, String.join(" ", args) + ": stopped by shutdown");
            return new ProcResult(List.copyOf(args), p.exitValue(), out.get(), err.get());
        } catch (InterruptedException e) {
            // Stopped (a sibling task failed): the child and what it started end before the caller cleans up.
            kill(p);
            try {
                p.waitFor(10, TimeUnit.SECONDS);
            } catch (InterruptedException again) {
                // already stopping
            }
            Thread.currentThread().interrupt();
            throw new R2Exception(R2Common.EXIT_FAILED, String.join(" ", args) + ": interrupted");
        } catch (ExecutionException e) {
            p.destroyForcibly();
            if (e.getCause() instanceof Error error) throw error;   // a reader out of memory: not this command's failure
            throw new R2Exception(R2Common.EXIT_FAILED, String.join(" ", args) + ": " + e.getMessage());
        } finally {
            RUNNING.remove(p);
        }
    }

    /** Like run, but a non-zero exit is an error carrying the command, the code and the end of its output. */
    static ProcResult check(Path cwd, String... args) {
        return check(cwd, DEFAULT_TIMEOUT, List.of(args));
    }

    static ProcResult check(Path cwd, Duration timeout, List<String> args) {
        return check(cwd, timeout, args, Map.of());
    }

    static ProcResult check(Path cwd, Duration timeout, List<String> args, Map<String, String> env) {
        ProcResult r = run(cwd, timeout, args, env);
        if (!r.ok())
            throw new R2Exception(R2Common.EXIT_FAILED, String.join(" ", args) + ": exit " + r.exitCode() + ": " + r.tail());
        return r;
    }

    /** Set once the JVM is shutting down: a child that fails from then on was killed, not broken. */
    static volatile boolean shuttingDown;

    /** Ends every running child and its descendants (used on shutdown). */
    static void killAll() {
        shuttingDown = true;
        RUNNING.forEach(Proc::kill);
    }

    /** Kills a child and everything it started (dolt and git start helpers of their own). */
    private static void kill(Process p) {
        p.descendants().forEach(ProcessHandle::destroyForcibly);
        p.destroyForcibly();
    }

    /**
     * Runs action (on a JVM signal thread) each time this process receives SIG{name}, e.g. "USR1". Through
     * sun.misc.Signal, which the JDK keeps for exactly this; reached reflectively because javac 17 warns of every
     * direct use at every build, and no option silences it.
     */
    static void onSignal(String name, Runnable action) {
        try {
            Class<?> signal = Class.forName("sun.misc.Signal");
            Class<?> handler = Class.forName("sun.misc.SignalHandler");
            Object onSignal = java.lang.reflect.Proxy.newProxyInstance(handler.getClassLoader(), new Class<?>[]{handler},
                    (proxy, method, args) -> switch (method.getName()) {
                        case "handle" -> {
                            action.run();
                            yield null;
                        }
                        case "hashCode" -> System.identityHashCode(proxy);
                        case "equals" -> proxy == args[0];
                        default -> "SIG" + name + " handler";
                    });
            signal.getMethod("handle", signal, handler).invoke(null, signal.getConstructor(String.class).newInstance(name), onSignal);
        } catch (ReflectiveOperationException e) {
            throw new IllegalStateException("cannot handle SIG" + name + ": " + e, e);
        }
    }

    /**
     * The first line a command prints, or "unknown" when it is missing or fails. It runs in dir, which is also its
     * HOME: a directory of our own outside the town. gt finds a town from its cwd or from GT_TOWN_ROOT / GT_ROOT
     * (which no child gets), and `gt version` run in a town writes into it: a backup must not change what it backs up.
     */
    static String versionOf(Path dir, String... args) {
        try {
            ProcResult r = run(dir, Duration.ofSeconds(20), List.of(args), Map.of("HOME", dir.toString()));
            return r.ok() ? r.stdout().lines().findFirst().orElse("unknown").strip() : "unknown";
        } catch (R2Exception e) {
            return "unknown";
        }
    }

    private static String readCapped(InputStream in) throws IOException {
        final int cap = 4 << 20;   // output we parse is small; a runaway child must not exhaust memory
        ByteArrayOutputStream buf = new ByteArrayOutputStream();
        byte[] chunk = new byte[8192];
        for (int n; (n = in.read(chunk)) > 0; )
            if (buf.size() < cap) buf.write(chunk, 0, Math.min(n, cap - buf.size()));
        return buf.toString(StandardCharsets.UTF_8);
    }
}

/**
 * Independent tasks on a bounded pool: all run, or the first failure is thrown once the others have stopped
 * (interrupted, and their processes killed), so the caller may clean up what they wrote.
 */
final class Parallel {
    interface Task {
        void run() throws IOException;
    }

    private Parallel() {}

    static void run(int threads, List<Task> tasks) throws IOException {
        if (tasks.isEmpty()) return;
        ExecutorService pool = Executors.newFixedThreadPool(Math.min(threads, tasks.size()));
        try {
            List<Future<?>> futures = new ArrayList<>();
            for (Task t : tasks) futures.add(pool.submit(() -> {
                t.run();
                return null;
            }));
            for (Future<?> f : futures) {
                try {
                    f.get();
                } catch (ExecutionException e) {
                    futures.forEach(other -> other.cancel(true));
                    stop(pool);
                    throw failureOf(e);
                } catch (InterruptedException e) {
                    stop(pool);
                    Thread.currentThread().interrupt();
                    throw new R2Exception(R2Common.EXIT_FAILED, "interrupted");
                }
            }
        } finally {
            pool.shutdownNow();
        }
    }

    /**
     * Interrupts the pool's tasks and waits until they have ended, even when the caller was interrupted (a cycle
     * abandoned): what they ran (a dolt writing its backup dir) is over before the next sync starts it again.
     */
    static void stop(ExecutorService pool) {
        pool.shutdownNow();
        boolean interrupted = Thread.interrupted();
        try {
            if (!pool.awaitTermination(2, TimeUnit.MINUTES)) Log.warn("tasks still running 2 minutes after they were stopped");
        } catch (InterruptedException e) {
            interrupted = true;
        } finally {
            if (interrupted) Thread.currentThread().interrupt();
        }
    }

    /** A task's failure, to be thrown as the caller's own. */
    static IOException failureOf(ExecutionException e) {
        if (e.getCause() instanceof IOException io) return io;
        if (e.getCause() instanceof RuntimeException re) throw re;
        if (e.getCause() instanceof Error error) throw error;   // an OutOfMemoryError stays one: no failure to fall back from
        throw new R2Exception(R2Common.EXIT_FAILED, String.valueOf(e.getCause()), e.getCause());
    }
}

/**
 * One task run beside the caller's own work. join() waits for its result (its failure thrown as the caller's);
 * closing it before that stops it (its processes killed) and waits until it has.
 */
final class Background<T> implements AutoCloseable {
    interface Task<T> {
        T call() throws IOException;
    }

    private final ExecutorService pool = Executors.newSingleThreadExecutor();
    private final Future<T> future;

    private Background(Task<T> task) {
        future = pool.submit(task::call);
    }

    static <T> Background<T> start(Task<T> task) {
        return new Background<>(task);
    }

    T join() throws IOException {
        try {
            return future.get();
        } catch (ExecutionException e) {
            throw Parallel.failureOf(e);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new R2Exception(R2Common.EXIT_FAILED, "interrupted");
        }
    }

    @Override
    public void close() {
        Parallel.stop(pool);
    }
}

// ---------------------------------------------------------------------------------------------
// 7. Local files and state
// ---------------------------------------------------------------------------------------------

final class FileTrees {
    private FileTrees() {}

    /** Deletes a tree without following links out of it; read-only directories are made writable first. */
    static void delete(Path dir) throws IOException {
        if (!Files.exists(dir, LinkOption.NOFOLLOW_LINKS)) return;
        // A walk that deletes as it goes (a directory once it is empty): a staged town of a million paths is never listed whole.
        Files.walkFileTree(dir, new SimpleFileVisitor<>() {
            @Override
            public FileVisitResult preVisitDirectory(Path d, BasicFileAttributes attrs) {
                d.toFile().setWritable(true);
                return FileVisitResult.CONTINUE;
            }

            @Override
            public FileVisitResult visitFile(Path file, BasicFileAttributes attrs) throws IOException {
                Files.deleteIfExists(file);
                return FileVisitResult.CONTINUE;
            }

            @Override
            public FileVisitResult visitFileFailed(Path file, IOException e) throws IOException {
                if (e instanceof NoSuchFileException) return FileVisitResult.CONTINUE;
                throw e;
            }

            @Override
            public FileVisitResult postVisitDirectory(Path d, IOException e) throws IOException {
                if (e != null && !(e instanceof NoSuchFileException)) throw e;
                Files.deleteIfExists(d);
                return FileVisitResult.CONTINUE;
            }
        });
    }

    static void deleteQuietly(Path dir) {
        try {
            delete(dir);
        } catch (IOException e) {
            Log.warn("cannot remove " + dir + ": " + e.getMessage());
        }
    }

    /** Writes a small file through a temp file and a rename, so a reader never sees half of it. */
    static void writeAtomically(Path file, byte[] data) throws IOException {
        Files.createDirectories(file.getParent());
        Path tmp = file.resolveSibling(file.getFileName() + ".tmp");
        try {
            Files.write(tmp, data);
            Files.move(tmp, file, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
        } catch (IOException e) {
            Files.deleteIfExists(tmp);   // a full disk leaves no half-written file behind
            throw e;
        }
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
 * Local state shared by restore, sync and status, in the state dir; and the failed-restore marker. A failed restore
 * is recorded in three places, each enough to stop every sync from backing up an empty or half-restored town over
 * the good snapshots: the state dir (this machine), the volume (the next container on it, after `gt up` filled it)
 * and the bucket (any machine of the town). A successful restore or an operator (r2-restore --forget-failure)
 * removes all three. The staging marker makes the next start finish a restore interrupted while moving into place.
 */
final class RestoreState {
    static final String FAILED = "restore-failed.json";
    /** The marker at the town root (never backed up: Town.OWN_DIRS). */
    static final String FAILED_ON_VOLUME = ".r2-restore-failed.json";
    static final String LAST_SYNC = "last-sync.json";
    private static final String MOVING = "moving.json";

    private RestoreState() {}

    static void recordFailure(Config config, ObjectStore store, String error) {
        byte[] json = R2Common.toJson(Map.of("townId", config.townId(), "at", Instant.now().toString(),
                "machine", Writer.host(), "error", Log.redact(error)));
        for (Path marker : List.of(config.stateDir().resolve(FAILED), config.townRoot().resolve(FAILED_ON_VOLUME))) {
            try {
                FileTrees.writeAtomically(marker, json);
            } catch (IOException e) {
                Log.warn("restore: cannot record the failure in " + marker + ": " + e.getMessage());
            }
        }
        try {
            store.putBytes(config.keys().restoreFailed(), json);
        } catch (RuntimeException e) {
            Log.warn("restore: cannot record the failure in the bucket: " + R2Cli.messageChain(e));
        }
    }

    /** Removes every marker; a bucket that cannot be reached keeps its marker (said), and the sync still refuses. */
    static void clearFailure(Config config, ObjectStore store) {
        for (Path marker : List.of(config.stateDir().resolve(FAILED), config.townRoot().resolve(FAILED_ON_VOLUME))) {
            try {
                Files.deleteIfExists(marker);
            } catch (IOException e) {
                Log.warn("cannot remove " + marker + ": " + e.getMessage());
            }
        }
        try {
            store.delete(List.of(config.keys().restoreFailed()));
        } catch (RuntimeException e) {
            Log.warn("cannot remove the failed-restore marker from the bucket: " + R2Cli.messageChain(e));
        }
    }

    /** The local marker of a failed restore (this machine's state dir, or the volume), if any. */
    static Optional<Path> failure(Config config) {
        for (Path marker : List.of(config.stateDir().resolve(FAILED), config.townRoot().resolve(FAILED_ON_VOLUME)))
            if (Files.exists(marker, LinkOption.NOFOLLOW_LINKS)) return Optional.of(marker);
        return Optional.empty();
    }

    static void markMoving(Path staging, String timestamp) throws IOException {
        FileTrees.writeAtomically(staging.resolve(MOVING), R2Common.toJson(Map.of("snapshot", timestamp)));
    }

    /**
     * Removes the staging dir with the moving marker last: a restore killed while cleaning up is then
     * finished by the next start (nothing left to move, the rest removed) instead of leaving files behind.
     */
    static void removeStaging(Path staging) throws IOException {
        for (Path child : Town.sortedChildren(staging))
            if (!child.getFileName().toString().equals(MOVING)) FileTrees.delete(child);
        FileTrees.delete(staging);
    }

    static boolean moving(Path staging) {
        return Files.isRegularFile(staging.resolve(MOVING));
    }

    static String movingSnapshot(Path staging) throws IOException {
        return R2Common.JSON.readTree(Files.readAllBytes(staging.resolve(MOVING))).path("snapshot").asText("unknown");
    }
}

// ---------------------------------------------------------------------------------------------
// 8. Reporting
// ---------------------------------------------------------------------------------------------

/** Timestamped log lines on stderr. Every line passes through the secret filter. */
final class Log {
    private static final Set<String> SECRETS = ConcurrentHashMap.newKeySet();
    private static final Pattern URL_CREDENTIAL = Pattern.compile("(?i)\\b([a-z][a-z0-9+.-]*://)[^/@\\s]+@");
    static volatile PrintStream out = System.err;

    private Log() {}

    static void addSecret(String secret) {
        if (secret != null && secret.length() >= 4) SECRETS.add(secret);
    }

    static void info(String message) {
        line("INFO ", message);
    }

    static void warn(String message) {
        line("WARN ", message);
    }

    static void error(String message) {
        line("ERROR", message);
    }

    private static void line(String level, String message) {
        out.println(Instant.now().truncatedTo(java.time.temporal.ChronoUnit.MILLIS) + " " + level + " " + escape(redact(message)));
        out.flush();
    }

    /**
     * One log line stays one line: control characters (a newline in a file name or in TOWN_ID) are printed
     * as escapes, so nothing from the town or the environment can forge a line of its own.
     */
    static String escape(String text) {
        if (text == null) return null;
        StringBuilder sb = new StringBuilder(text.length());
        for (int i = 0; i < text.length(); i++) {
            char c = text.charAt(i);
            if (c == '\n') sb.append("\\n");
            else if (c == '\r') sb.append("\\r");
            else if (c == '\t') sb.append("\\t");
            else if (c < 0x20 || c == 0x7f || c == 0x85 || c == 0x2028 || c == 0x2029) sb.append(String.format("\\u%04x", (int) c));
            else sb.append(c);
        }
        return sb.toString();
    }

    /** Removes known secrets and any credential embedded in a URL. */
    static String redact(String text) {
        if (text == null) return null;
        String result = redactUrl(text);
        for (String secret : SECRETS) result = result.replace(secret, "***");
        return result;
    }

    static String redactUrl(String text) {
        return text == null ? null : URL_CREDENTIAL.matcher(text).replaceAll("$1***@");
    }

    static String bytes(long n) {
        if (n < 1024) return n + " B";
        if (n < 1024 * 1024) return String.format(Locale.ROOT, "%.1f KiB", n / 1024.0);
        if (n < 1024L * 1024 * 1024) return String.format(Locale.ROOT, "%.1f MiB", n / 1024.0 / 1024);
        return String.format(Locale.ROOT, "%.2f GiB", n / 1024.0 / 1024 / 1024);
    }

    static String seconds(Duration d) {
        return String.format(Locale.ROOT, "%.1fs", d.toMillis() / 1000.0);
    }
}

/**
 * Progress of a long transfer. On a terminal it redraws one line (bytes, rate, time left); in a daemon or a
 * container log it stays silent, because the phase line that follows says all that matters.
 */
final class Progress {
    static final boolean INTERACTIVE = System.console() != null && System.getenv("R2_NO_PROGRESS") == null;
    private final String label;
    private final long total;
    private final long startNanos = System.nanoTime();
    private long done;
    private long lastDrawNanos;

    Progress(String label, long total) {
        this.label = label;
        this.total = total;
    }

    synchronized void add(long bytes) {
        done += bytes;
        long now = System.nanoTime();
        if (!INTERACTIVE || now - lastDrawNanos < 200_000_000L) return;
        lastDrawNanos = now;
        double secs = Math.max(0.001, (now - startNanos) / 1e9);
        double rate = done / secs;
        long left = rate > 0 ? (long) ((total - done) / rate) : 0;
        System.err.printf(Locale.ROOT, "\r%s %s / %s  %s/s  %ds left   ", label, Log.bytes(done), Log.bytes(total),
                Log.bytes((long) rate), left);
    }

    void finish() {
        if (INTERACTIVE && lastDrawNanos != 0) System.err.print("\r\033[K");
    }
}

/**
 * Status reports to the cloud API: POST {api}/api/gastown/heartbeat. A failure is logged, never fatal.
 * HttpURLConnection, not java.net.http: that client's selector thread waits in native code, and a JVM exiting with
 * such a thread waits 0.3 s for it, at the end of every flush and restore.
 */
final class Heartbeat {
    static final String PATH = "/api/gastown/heartbeat";
    private final URI endpoint;
    private final String token;

    Heartbeat(Config config) {
        this.endpoint = config.apiUrl() == null ? null
                : URI.create(config.apiUrl().toString().replaceAll("/+$", "") + PATH);
        this.token = config.apiToken();
    }

    boolean enabled() {
        return endpoint != null;
    }

    void send(Map<String, Object> body) {
        if (endpoint == null) return;
        HttpURLConnection http = null;
        try {
            byte[] json = R2Common.toJson(body);
            http = (HttpURLConnection) endpoint.toURL().openConnection();
            http.setConnectTimeout(5_000);
            http.setReadTimeout(10_000);
            http.setInstanceFollowRedirects(false);
            http.setRequestMethod("POST");
            http.setRequestProperty("Content-Type", "application/json");
            if (token != null && !token.isBlank()) http.setRequestProperty("Authorization", "Bearer " + token);
            http.setDoOutput(true);
            http.setFixedLengthStreamingMode(json.length);
            try (OutputStream out = http.getOutputStream()) {
                out.write(json);
            }
            int status = http.getResponseCode();
            if (status / 100 != 2)
                Log.warn("heartbeat: " + Log.redactUrl(endpoint.toString()) + " answered HTTP " + status);
        } catch (IOException e) {
            Log.warn("heartbeat: cannot reach " + Log.redactUrl(endpoint.toString()) + ": " + e.getMessage());
        } finally {
            if (http != null) http.disconnect();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 9. CLI wiring
// ---------------------------------------------------------------------------------------------

/** An expected failure: only its message is shown, and it carries the exit code. */
class R2Exception extends RuntimeException {
    final int exitCode;

    R2Exception(int exitCode, String message) {
        super(message);
        this.exitCode = exitCode;
    }

    R2Exception(int exitCode, String message, Throwable cause) {
        super(message, cause);
        this.exitCode = exitCode;
    }
}

/**
 * Proof that a snapshot in the bucket is damaged: an object missing, bytes that are not what the manifest says, a
 * manifest or file index that does not parse or says what no sync writes. Only this lets a restore fall back to an
 * older snapshot; any other failure (the network, the local disk, a bug) fails the restore and leaves the choice to
 * an operator, so that no transient error buries the newest snapshot.
 */
final class SnapshotDamaged extends R2Exception {
    SnapshotDamaged(String message) {
        super(R2Common.EXIT_FAILED, message);
    }

    SnapshotDamaged(String message, Throwable cause) {
        super(R2Common.EXIT_FAILED, message, cause);
    }

    /** True when the failure, or one of its causes, proves damage. */
    static boolean proven(Throwable failure) {
        for (Throwable t = failure; t != null; t = t.getCause() == t ? null : t.getCause())
            if (t instanceof SnapshotDamaged) return true;
        return false;
    }
}

final class R2Cli {
    static volatile boolean debug;

    private R2Cli() {}

    /** Runs a command with the shared handlers: usage errors exit 2, expected failures print one line. */
    static int run(Object command, String... args) {
        CommandLine cmd = new CommandLine(command);
        cmd.setParameterExceptionHandler((ex, a) -> {
            CommandLine c = ex.getCommandLine();
            c.getErr().println(Log.escape(Log.redact("error: " + ex.getMessage())));
            c.getErr().println("Try '" + c.getCommandName() + " --help' for more information.");
            return R2Common.EXIT_USAGE;
        });
        cmd.setExecutionExceptionHandler((ex, c, parseResult) -> {
            if (ex instanceof R2Exception r2) {
                Log.error(messageChain(r2));
                return r2.exitCode;
            }
            return unexpected(ex, c);
        });
        try {
            return cmd.execute(args);
        } catch (Error e) {
            // picocli hands its handler exceptions only; an Error (an OutOfMemoryError) ends a command the same way.
            return unexpected(e, cmd);
        }
    }

    /** A bug, or the JVM in trouble: one line, the stack trace only under --debug, exit 1. */
    private static int unexpected(Throwable ex, CommandLine c) {
        Log.error("unexpected error: " + (ex instanceof Error ? ex.getClass().getSimpleName() + ": " : "") + messageChain(ex)
                + " (this is a bug; rerun with --debug for details)");
        if (debug) {
            StringWriter sw = new StringWriter();
            ex.printStackTrace(new PrintWriter(sw));
            c.getErr().println(Log.redact(sw.toString()));
        }
        return R2Common.EXIT_FAILED;
    }

    /** The message chain joined by ": ", each cause added once. */
    static String messageChain(Throwable e) {
        StringBuilder sb = new StringBuilder(String.valueOf(e.getMessage() == null ? e.getClass().getSimpleName() : e.getMessage()));
        for (Throwable c = e.getCause(); c != null && c != c.getCause(); c = c.getCause())
            if (c.getMessage() != null && !sb.toString().contains(c.getMessage())) sb.append(": ").append(c.getMessage());
        return sb.toString();
    }
}

/** Durations as operators write them: 300 (seconds), 30s, 5m, 1h, 500ms, or ISO-8601 (PT5M). */
final class DurationConverter implements CommandLine.ITypeConverter<Duration> {
    private static final Pattern SIMPLE = Pattern.compile("(\\d+)(ms|s|m|h)?");

    @Override
    public Duration convert(String value) {
        Matcher m = SIMPLE.matcher(value.trim());
        if (m.matches()) {
            long n = Long.parseLong(m.group(1));
            String unit = m.group(2) == null ? "s" : m.group(2);
            return switch (unit) {
                case "ms" -> Duration.ofMillis(n);
                case "m" -> Duration.ofMinutes(n);
                case "h" -> Duration.ofHours(n);
                default -> Duration.ofSeconds(n);
            };
        }
        try {
            return Duration.parse(value.trim());
        } catch (RuntimeException e) {
            throw new CommandLine.TypeConversionException("'" + value + "' is not a duration (e.g. 30s, 5m, 1h)");
        }
    }

    static String format(Duration d) {
        if (d.toMillis() % 1000 != 0) return d.toMillis() + "ms";
        long s = d.getSeconds();
        if (s % 3600 == 0) return s / 3600 + "h";
        if (s % 60 == 0) return s / 60 + "m";
        return s + "s";
    }
}

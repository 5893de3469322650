///usr/bin/env jbang "$0" "$@" ; exit $?
//JAVA 17+
//DEPS software.amazon.awssdk:bom:2.57.8@pom
//DEPS software.amazon.awssdk:s3
//DEPS software.amazon.awssdk:apache5-client
//DEPS info.picocli:picocli:4.7.7
//DEPS com.fasterxml.jackson.core:jackson-databind:2.18.2
//DEPS org.apache.commons:commons-compress:1.28.0
//DEPS org.slf4j:slf4j-nop:1.7.36
//SOURCES R2Store.java
//SOURCES R2Tar.java

// The shared vocabulary of R2Sync and R2Restore. Contents, in order:
//   1. R2Common      version, exit codes, JSON mapper
//   2. Config        R2Options (the picocli mixin of connection options) -> Config (immutable)
//   3. Keys          the key layout under gastown/{town_id}/
//   4. Manifest      Pointer (latest.json), Manifest and the facts it records
//   5. Hashing       sha256 of files and of streams being written
//   6. Processes     Proc: honest subprocesses
//   7. Town          discovery of databases, rigs, repos, and the keep lists for config/runtime tars
//   8. Reporting     Log (timestamped, secret-free stderr lines), Progress, Heartbeat
//   9. CLI wiring    R2Exception, R2Cli.run
// The object store (R2Store.java) and the tar writer/extractor (R2Tar.java) have files of their own.

import com.fasterxml.jackson.annotation.JsonInclude;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.SerializationFeature;
import picocli.CommandLine;
import picocli.CommandLine.Option;

import java.io.*;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
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
    static final String VERSION = "gastown-r2 0.1.0";

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
                localStore ? "local" : bucket, townId, townRoot.toAbsolutePath().normalize(), api, token,
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
record Config(URI endpoint, String accessKeyId, String secretAccessKey, String bucket, String townId,
              Path townRoot, URI apiUrl, String apiToken, Path stateDir) {
    boolean localStore() {
        return "file".equals(endpoint.getScheme());
    }

    Keys keys() {
        return new Keys(townId);
    }

    @Override
    public String toString() {
        return "Config[endpoint=" + endpoint + ", bucket=" + bucket + ", townId=" + townId + ", townRoot=" + townRoot + "]";
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Keys
// ---------------------------------------------------------------------------------------------

/**
 * The key layout. Everything of a town lives under gastown/{town_id}/; a snapshot's files live under
 * snapshots/{timestamp}/ at the paths its manifest lists. Until latest.json names a snapshot, its prefix
 * is a staging area that nothing refers to.
 */
record Keys(String townId) {
    static final DateTimeFormatter TIMESTAMP = DateTimeFormatter.ofPattern("yyyyMMdd'T'HHmmss'Z'").withZone(ZoneOffset.UTC);
    static final Pattern TIMESTAMP_FORM = Pattern.compile("\\d{8}T\\d{6}Z");
    static final String MANIFEST = "manifest.json";
    /** Written first with If-None-Match so two writers can never share a snapshot prefix. */
    static final String CLAIM = "claim.json";
    static final String CONFIG_TAR = "config.tar";
    static final String RUNTIME_TAR = "runtime.tar";

    String town() {
        return "gastown/" + townId + "/";
    }

    String latest() {
        return town() + "latest.json";
    }

    String snapshots() {
        return town() + "snapshots/";
    }

    String snapshot(String timestamp) {
        return snapshots() + timestamp + "/";
    }

    String object(String timestamp, String path) {
        return snapshot(timestamp) + path;
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

    static String doltBackup(String database) {
        return "dolt/" + database + ".backup";
    }

    /** A rig's .repo.git bundles as git/{rig}.bundle; a separate clone as git/{its town path}.bundle. */
    static String bundle(String rig, String repoPath) {
        return repoPath.equals(rig + "/.repo.git") ? "git/" + rig + ".bundle" : "git/" + repoPath + ".bundle";
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Manifest
// ---------------------------------------------------------------------------------------------

/** latest.json: names the current snapshot and pins its manifest, so pointer -> manifest -> files is checkable. */
record Pointer(String timestamp, String manifestSha256) {
    Pointer {
        if (timestamp == null || !Keys.TIMESTAMP_FORM.matcher(timestamp).matches())
            throw new IllegalArgumentException("timestamp must look like 20260217T120000Z, not " + timestamp);
        if (manifestSha256 != null && !Sha256.HEX.matcher(manifestSha256).matches())
            throw new IllegalArgumentException("manifestSha256 is not a sha256: " + manifestSha256);
    }
}

/** One file of a snapshot: path relative to the snapshot prefix, size and sha256. */
record FileEntry(String path, long size, String sha256) {
    FileEntry {
        if (path == null || path.isEmpty() || path.startsWith("/") || path.contains("\\")
                || Arrays.asList(path.split("/")).contains("..") || path.contains("//"))
            throw new IllegalArgumentException("unsafe file path in manifest: " + path);
        if (size < 0) throw new IllegalArgumentException("negative size for " + path);
        if (sha256 == null || !Sha256.HEX.matcher(sha256).matches())
            throw new IllegalArgumentException("not a sha256 for " + path + ": " + sha256);
    }
}

record Versions(String gt, String dolt, String git) {}

/**
 * What restore needs about a Dolt database besides its backup: its name, its file, the branch heads it
 * held, and the root hash of the backup (equal roots mean equal databases, working sets included).
 */
record DatabaseFacts(String name, String file, boolean serverRunning, Map<String, String> branches, String root) {
    DatabaseFacts {
        Town.requireSafeName(name, "database name");
        branches = branches == null ? Map.of() : Collections.unmodifiableMap(new TreeMap<>(branches));
    }
}

/** A worktree of a bare repo: path relative to the town root (or absolute when outside it). */
record WorktreeFacts(String path, String branch, String head) {}

/** A git config entry (remote.* and branch.*); URLs are stored with any credential removed. */
record ConfigEntry(String key, String value) {}

/**
 * A git repository: a rig's bare .repo.git or a separate clone (mayor/rig, crew/*). Records what a bundle
 * lacks: the shallow boundary, HEAD, remotes and branch config, and the worktrees.
 */
record RepoFacts(String path, String rig, boolean bare, String file, String head, List<String> shallow,
                 Map<String, String> refs, List<ConfigEntry> config, List<WorktreeFacts> worktrees,
                 String carriedFrom) {
    RepoFacts {
        Town.requireSafeRelative(path, "repo path");
        shallow = shallow == null ? List.of() : List.copyOf(shallow);
        refs = refs == null ? Map.of() : Collections.unmodifiableMap(new TreeMap<>(refs));
        config = config == null ? List.of() : List.copyOf(config);
        worktrees = worktrees == null ? List.of() : List.copyOf(worktrees);
    }

    boolean empty() {
        return file == null;
    }

    RepoFacts carriedFrom(String timestamp) {
        return new RepoFacts(path, rig, bare, file, head, shallow, refs, config, worktrees, timestamp);
    }
}

/** Something the sync could not back up; the snapshot is published with it listed (see README). */
record Problem(String part, String error, String carriedFrom) {}

record Manifest(int formatVersion, String tool, String townId, String timestamp, String createdAt,
                Versions versions, List<FileEntry> files, List<DatabaseFacts> databases, List<RepoFacts> repos,
                List<Problem> problems) {
    static final int FORMAT = 1;

    Manifest {
        if (formatVersion != FORMAT) throw new IllegalArgumentException("unsupported manifest formatVersion " + formatVersion);
        if (timestamp == null || !Keys.TIMESTAMP_FORM.matcher(timestamp).matches())
            throw new IllegalArgumentException("bad timestamp " + timestamp);
        files = files == null ? List.of() : List.copyOf(files);
        databases = databases == null ? List.of() : List.copyOf(databases);
        repos = repos == null ? List.of() : List.copyOf(repos);
        problems = problems == null ? List.of() : List.copyOf(problems);
        Set<String> seen = new HashSet<>();
        for (FileEntry f : files)
            if (!seen.add(f.path())) throw new IllegalArgumentException("file listed twice: " + f.path());
        for (DatabaseFacts db : databases)
            if (!seen.contains(db.file())) throw new IllegalArgumentException("database " + db.name() + " has no file entry");
        for (RepoFacts repo : repos)
            if (!repo.empty() && !seen.contains(repo.file())) throw new IllegalArgumentException("repo " + repo.path() + " has no file entry");
    }

    Optional<FileEntry> file(String path) {
        return files.stream().filter(f -> f.path().equals(path)).findFirst();
    }

    Optional<DatabaseFacts> database(String name) {
        return databases.stream().filter(d -> d.name().equals(name)).findFirst();
    }

    Optional<RepoFacts> repo(String path) {
        return repos.stream().filter(r -> r.path().equals(path)).findFirst();
    }

    long totalBytes() {
        return files.stream().mapToLong(FileEntry::size).sum();
    }

    boolean complete() {
        return problems.isEmpty();
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

    static String of(byte[] data) {
        return hex(digest().digest(data));
    }

    /** Streams a file once, returning its entry (size and sha256) under the given snapshot path. */
    static FileEntry ofFile(Path file, String snapshotPath) throws IOException {
        MessageDigest md = digest();
        long size = 0;
        try (InputStream in = Files.newInputStream(file)) {
            byte[] buf = new byte[1 << 16];
            for (int n; (n = in.read(buf)) > 0; ) {
                md.update(buf, 0, n);
                size += n;
            }
        }
        return new FileEntry(snapshotPath, size, hex(md.digest()));
    }

    /** Streams into a new file, hashing while writing; returns what arrived. */
    static FileEntry copyToFile(InputStream in, Path target, String snapshotPath, Progress progress) throws IOException {
        try (OutputStream file = Files.newOutputStream(target, StandardOpenOption.CREATE_NEW)) {
            HashingOutputStream out = new HashingOutputStream(new BufferedOutputStream(file, 1 << 16));
            byte[] buf = new byte[1 << 16];
            for (int n; (n = in.read(buf)) > 0; ) {
                out.write(buf, 0, n);
                if (progress != null) progress.add(n);
            }
            out.flush();
            return out.entry(snapshotPath);
        }
    }

    /** An output stream that hashes and counts what passes through it, so a file is hashed while written. */
    static final class HashingOutputStream extends FilterOutputStream {
        private final MessageDigest md = digest();
        private long count;

        HashingOutputStream(OutputStream out) {
            super(out);
        }

        @Override
        public void write(int b) throws IOException {
            out.write(b);
            md.update((byte) b);
            count++;
        }

        @Override
        public void write(byte[] b, int off, int len) throws IOException {
            out.write(b, off, len);
            md.update(b, off, len);
            count += len;
        }

        FileEntry entry(String snapshotPath) {
            return new FileEntry(snapshotPath, count, hex(md.digest()));
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

    static ProcResult run(Path cwd, Duration timeout, List<String> args) {
        ProcessBuilder pb = new ProcessBuilder(args);
        if (cwd != null) pb.directory(cwd.toFile());
        pb.environment().put("GIT_TERMINAL_PROMPT", "0");
        pb.redirectInput(ProcessBuilder.Redirect.PIPE);
        Process p;
        try {
            p = pb.start();
        } catch (IOException e) {
            throw new R2Exception(R2Common.EXIT_FAILED, "cannot run " + args.get(0) + ": " + e.getMessage());
        }
        RUNNING.add(p);
        try {
            p.getOutputStream().close();
            Future<String> out = READERS.submit(() -> readCapped(p.getInputStream()));
            Future<String> err = READERS.submit(() -> readCapped(p.getErrorStream()));
            if (!p.waitFor(timeout.toMillis(), TimeUnit.MILLISECONDS)) {
                p.destroyForcibly();
                throw new R2Exception(R2Common.EXIT_FAILED, String.join(" ", args) + ": timed out after " + timeout);
            }
            if (shuttingDown)
                throw new R2Exception(R2Common.EXIT_FAILED, String.join(" ", args) + ": stopped by shutdown");
            return new ProcResult(List.copyOf(args), p.exitValue(), out.get(), err.get());
        } catch (InterruptedException e) {
            p.destroyForcibly();
            Thread.currentThread().interrupt();
            throw new R2Exception(R2Common.EXIT_FAILED, String.join(" ", args) + ": interrupted");
        } catch (IOException | ExecutionException e) {
            p.destroyForcibly();
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
        ProcResult r = run(cwd, timeout, args);
        if (!r.ok())
            throw new R2Exception(R2Common.EXIT_FAILED, String.join(" ", args) + ": exit " + r.exitCode() + ": " + r.tail());
        return r;
    }

    /** Set once the JVM is shutting down: a child that fails from then on was killed, not broken. */
    static volatile boolean shuttingDown;

    /** Ends every running child and its descendants (used on shutdown). */
    static void killAll() {
        shuttingDown = true;
        for (Process p : RUNNING) {
            p.descendants().forEach(ProcessHandle::destroyForcibly);
            p.destroyForcibly();
        }
    }

    /** The first line a command prints, or "unknown" when it is missing or fails. */
    static String versionOf(String... args) {
        try {
            ProcResult r = run(null, Duration.ofSeconds(20), List.of(args));
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

// ---------------------------------------------------------------------------------------------
// 7. Town
// ---------------------------------------------------------------------------------------------

/** A rig: a top-level directory holding a bare .repo.git, plus its separate clones (mayor/rig, crew/*). */
record Rig(String name, Path dir, List<Path> clones) {
    Path repo() {
        return dir.resolve(".repo.git");
    }
}

/**
 * Discovery of what a town holds: every Dolt database (.dolt-data/<db>/.dolt), every rig and its
 * separate clones (a directory with a .git DIRECTORY; worktrees have a .git file and live in .repo.git),
 * and the keep lists that decide what goes into config.tar and runtime.tar.
 */
record Town(Path root, List<String> databases, List<Rig> rigs) {
    static final String DOLT_DATA = ".dolt-data";
    /** This tool's own directories inside the town root: never part of the town's data. */
    static final Set<String> OWN_DIRS = Set.of(".r2-restore", "lost+found");
    private static final Pattern SAFE_NAME = Pattern.compile("[A-Za-z0-9_][A-Za-z0-9_.-]*");
    private static final int CLONE_SEARCH_DEPTH = 4;

    static Town discover(Path root) throws IOException {
        if (!Files.isDirectory(root))
            throw new R2Exception(R2Common.EXIT_USAGE, "town root " + root + " is not a directory (GT_TOWN_ROOT)");
        List<String> databases = new ArrayList<>();
        Path doltData = root.resolve(DOLT_DATA);
        if (Files.isDirectory(doltData))
            for (Path db : sortedChildren(doltData))
                if (Files.isDirectory(db.resolve(".dolt")) && SAFE_NAME.matcher(db.getFileName().toString()).matches())
                    databases.add(db.getFileName().toString());
        List<Rig> rigs = new ArrayList<>();
        for (Path dir : sortedChildren(root)) {
            String name = dir.getFileName().toString();
            if (name.startsWith(".") || !Files.isDirectory(dir.resolve(".repo.git"))) continue;
            requireSafeName(name, "rig name");
            List<Path> clones = new ArrayList<>();
            findClones(dir, 0, clones);
            rigs.add(new Rig(name, dir, clones));
        }
        return new Town(root, List.copyOf(databases), List.copyOf(rigs));
    }

    /** Town-relative path with '/' separators. */
    String relative(Path p) {
        return root.relativize(p).toString().replace(File.separatorChar, '/');
    }

    private static void findClones(Path dir, int depth, List<Path> found) throws IOException {
        if (depth > 0 && Files.isDirectory(dir.resolve(".git"), LinkOption.NOFOLLOW_LINKS)) {
            found.add(dir);
            return;   // a clone's own subdirectories are its content
        }
        if (depth >= CLONE_SEARCH_DEPTH || Files.isRegularFile(dir.resolve(".git"))) return;   // worktree
        for (Path child : sortedChildren(dir)) {
            String name = child.getFileName().toString();
            if (name.equals(".repo.git") || name.equals(".git") || name.equals(".runtime") || name.equals(".beads")) continue;
            if (Files.isDirectory(child, LinkOption.NOFOLLOW_LINKS)) findClones(child, depth + 1, found);
        }
    }

    static List<Path> sortedChildren(Path dir) throws IOException {
        try (Stream<Path> s = Files.list(dir)) {
            return s.sorted().collect(Collectors.toList());
        }
    }

    static String requireSafeName(String name, String what) {
        if (name == null || !SAFE_NAME.matcher(name).matches())
            throw new IllegalArgumentException("unsafe " + what + ": " + name);
        return name;
    }

    static String requireSafeRelative(String path, String what) {
        if (path == null || path.isEmpty() || path.startsWith("/")
                || Arrays.asList(path.split("/")).contains("..") || path.contains("\\"))
            throw new IllegalArgumentException("unsafe " + what + ": " + path);
        return path;
    }

    /** True when the root holds anything but lost+found and this tool's own staging. */
    static boolean holdsData(Path root) throws IOException {
        if (!Files.isDirectory(root)) return false;
        try (Stream<Path> s = Files.list(root)) {
            return s.anyMatch(p -> !OWN_DIRS.contains(p.getFileName().toString()));
        }
    }

    // --- keep lists -----------------------------------------------------------------------------

    /** Which of the town's files a tar keeps: include globs, then skip globs that always win. */
    enum KeepList {
        CONFIG(List.of(
                "mayor/*.json", "*/config.json",
                "settings/**", "*/settings/**", "plugins/**", "*/plugins/**",
                "CLAUDE.md", "**/CLAUDE.md", ".claude/**", "**/.claude/**", ".opencode/**", "**/.opencode/**",
                ".beads/**", "*/.beads/**",
                ".dolt-data/config.yaml", ".dolt-data/.doltcfg/**", "daemon/daemon.env",
                "*/crew/*/state.json", "*/crew/*/mail/**")),
        RUNTIME(List.of(".runtime/**", "*/.runtime/**"));

        /** Never kept: pid files, heartbeats, locks, logs, sockets, beads' embedded dolt, daemon state. */
        static final List<String> SKIP = List.of(
                "**.pid", "**.lock", "**.log", "**.sock",
                "**/pids/**", "**/heartbeats/**", "**/locks/**", "pids/**", "heartbeats/**", "locks/**",
                ".beads/dolt/**", "*/.beads/dolt/**", "daemon/state.json", "daemon/scripts/**");

        private final List<PathMatcher> include;
        private static final List<PathMatcher> SKIP_MATCHERS = matchers(SKIP);

        KeepList(List<String> globs) {
            this.include = matchers(globs);
        }

        boolean keeps(String relativePath) {
            Path p = Path.of(relativePath);
            return include.stream().anyMatch(m -> m.matches(p)) && SKIP_MATCHERS.stream().noneMatch(m -> m.matches(p));
        }

        private static List<PathMatcher> matchers(List<String> globs) {
            FileSystem fs = FileSystems.getDefault();
            return globs.stream().map(g -> fs.getPathMatcher("glob:" + g)).collect(Collectors.toList());
        }
    }

    /**
     * Walks the town and returns the town-relative paths of the files and symlinks a keep list keeps,
     * sorted. The walk does not enter git data (.repo.git, .git), Dolt stores, or the work trees of
     * worktrees and clones (git restores those), except the crew files that no bundle holds.
     */
    List<String> select(KeepList list) throws IOException {
        Set<Path> gitTrees = new HashSet<>();
        for (Rig rig : rigs) gitTrees.addAll(rig.clones());
        List<String> kept = new ArrayList<>();
        Files.walkFileTree(root, new SimpleFileVisitor<>() {
            @Override
            public FileVisitResult preVisitDirectory(Path dir, BasicFileAttributes attrs) {
                if (dir.equals(root)) return FileVisitResult.CONTINUE;
                String name = dir.getFileName().toString();
                String rel = relative(dir);
                if (name.equals(".git") || name.equals(".repo.git") || OWN_DIRS.contains(rel)
                        || (rel.startsWith(DOLT_DATA + "/") && Files.isDirectory(dir.resolve(".dolt")))
                        || name.equals(".dolt"))
                    return FileVisitResult.SKIP_SUBTREE;
                if (Files.isRegularFile(dir.resolve(".git"))) return FileVisitResult.SKIP_SUBTREE;   // worktree
                if (gitTrees.contains(dir)) {
                    for (String crewOnly : List.of("state.json", "mail"))
                        collectUnder(dir.resolve(crewOnly), list, kept);
                    return FileVisitResult.SKIP_SUBTREE;
                }
                return FileVisitResult.CONTINUE;
            }

            @Override
            public FileVisitResult visitFile(Path file, BasicFileAttributes attrs) {
                String rel = relative(file);
                if ((attrs.isRegularFile() || attrs.isSymbolicLink()) && list.keeps(rel)) kept.add(rel);
                return FileVisitResult.CONTINUE;
            }

            @Override
            public FileVisitResult visitFileFailed(Path file, IOException e) throws IOException {
                if (e instanceof NoSuchFileException) return FileVisitResult.CONTINUE;   // removed while walking
                throw e;
            }
        });
        Collections.sort(kept);
        return kept;
    }

    private void collectUnder(Path start, KeepList list, List<String> kept) {
        if (!Files.exists(start, LinkOption.NOFOLLOW_LINKS)) return;
        try (Stream<Path> s = Files.walk(start)) {
            s.filter(p -> Files.isRegularFile(p, LinkOption.NOFOLLOW_LINKS) || Files.isSymbolicLink(p))
                    .map(this::relative).filter(list::keeps).forEach(kept::add);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }
}

/** Facts about the town's Dolt server and databases, read through the dolt CLI. */
final class DoltServer {
    private DoltServer() {}

    /** True when a dolt sql-server serves .dolt-data (it leaves sql-server.info with its pid there). */
    static boolean running(Town town) {
        Path info = town.root().resolve(Town.DOLT_DATA).resolve(".dolt").resolve("sql-server.info");
        try {
            String pid = Files.readString(info).split(":", 2)[0].trim();
            return ProcessHandle.of(Long.parseLong(pid)).map(ProcessHandle::isAlive).orElse(false);
        } catch (IOException | RuntimeException e) {
            return false;
        }
    }

    /** Branch name -> commit hash, through the running server when there is one (the CLI finds it). */
    static Map<String, String> branches(Path dbDir) throws IOException {
        ProcResult r = Proc.check(dbDir, "dolt", "sql", "-r", "json", "-q", "select name, hash from dolt_branches");
        Map<String, String> branches = new TreeMap<>();
        for (var row : R2Common.JSON.readTree(r.stdout()).path("rows"))
            branches.put(row.path("name").asText(), row.path("hash").asText());
        return branches;
    }

    /** The root hash in a file:// backup's manifest ("5:__DOLT__:<lock>:<root>:..."). */
    static String backupRoot(Path backupDir) throws IOException {
        String[] fields = Files.readString(backupDir.resolve("manifest")).trim().split(":");
        if (fields.length < 4) throw new IOException("unexpected dolt backup manifest in " + backupDir);
        return fields[3];
    }
}

/** Reads what a git repository holds that a bundle does not carry. */
final class GitRepo {
    private GitRepo() {}

    static RepoFacts inspect(Town town, String rig, Path repo, String bundlePath) throws IOException {
        boolean bare = !Files.exists(repo.resolve(".git"));
        Path gitDir = bare ? repo : repo.resolve(".git");
        Map<String, String> refs = refs(repo);
        ProcResult symbolic = Proc.run(repo, "git", "symbolic-ref", "-q", "HEAD");
        String head = symbolic.ok() ? symbolic.stdout().strip() : git(repo, "rev-parse", "HEAD").strip();
        Path shallowFile = gitDir.resolve("shallow");
        List<String> shallow = Files.exists(shallowFile)
                ? Files.readAllLines(shallowFile).stream().map(String::strip).filter(l -> !l.isEmpty()).collect(Collectors.toList())
                : List.of();
        List<ConfigEntry> config = new ArrayList<>();
        ProcResult cfg = Proc.run(repo, "git", "config", "--local", "--get-regexp", "^(remote|branch)\\.");
        for (String line : cfg.stdout().lines().collect(Collectors.toList())) {
            String[] kv = line.split(" ", 2);
            config.add(new ConfigEntry(kv[0], Log.redactUrl(kv.length > 1 ? kv[1] : "")));
        }
        List<WorktreeFacts> worktrees = bare ? worktrees(town, repo) : List.of();
        return new RepoFacts(town.relative(repo), rig, bare, refs.isEmpty() ? null : bundlePath, head, shallow, refs,
                config, worktrees, null);
    }

    /** The worktrees of a bare repo (not the repo itself), path made town-relative where it lies inside. */
    private static List<WorktreeFacts> worktrees(Town town, Path repo) {
        List<WorktreeFacts> result = new ArrayList<>();
        String path = null;
        String head = null;
        String branch = null;
        boolean bareEntry = false;
        List<String> lines = new ArrayList<>(git(repo, "worktree", "list", "--porcelain").lines().collect(Collectors.toList()));
        lines.add("");
        for (String line : lines) {
            if (line.isBlank()) {
                if (path != null && !bareEntry) {
                    Path p = Path.of(path);
                    String where = p.startsWith(town.root()) ? town.relative(p) : p.toString();
                    result.add(new WorktreeFacts(where, branch, head));
                }
                path = head = branch = null;
                bareEntry = false;
            } else if (line.startsWith("worktree ")) path = line.substring(9);
            else if (line.startsWith("HEAD ")) head = line.substring(5);
            else if (line.startsWith("branch ")) branch = line.substring(7);
            else if (line.equals("bare")) bareEntry = true;
        }
        return result;
    }

    /** Every ref of a repository and the object it names. */
    static Map<String, String> refs(Path repo) {
        Map<String, String> refs = new TreeMap<>();
        for (String line : git(repo, "for-each-ref", "--format=%(objectname) %(refname)").lines().collect(Collectors.toList())) {
            String[] parts = line.split(" ", 2);
            if (parts.length == 2) refs.put(parts[1], parts[0]);
        }
        return refs;
    }

    /** Runs git in a directory and returns its stdout; a non-zero exit is an error naming the command. */
    static String git(Path repo, String... args) {
        List<String> cmd = new ArrayList<>(List.of("git"));
        cmd.addAll(List.of(args));
        return Proc.check(repo, Proc.DEFAULT_TIMEOUT, cmd).stdout();
    }
}

final class FileTrees {
    private FileTrees() {}

    /** Deletes a tree without following links out of it; read-only directories are made writable first. */
    static void delete(Path dir) throws IOException {
        if (!Files.exists(dir, LinkOption.NOFOLLOW_LINKS)) return;
        try (Stream<Path> s = Files.walk(dir)) {
            for (Path p : s.sorted(Comparator.reverseOrder()).collect(Collectors.toList())) {
                if (!Files.isSymbolicLink(p) && Files.isDirectory(p)) p.toFile().setWritable(true);
                Files.deleteIfExists(p);
            }
        }
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
        Files.write(tmp, data);
        Files.move(tmp, file, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
    }
}

/**
 * Local state shared by restore, sync and status, in the state dir. restore-failed.json stops the sync
 * from backing up an empty or half-restored town over the good snapshots after a failed restore; the
 * staging marker makes the next start finish a restore that was interrupted while moving into place.
 */
final class RestoreState {
    static final String FAILED = "restore-failed.json";
    static final String LAST_SYNC = "last-sync.json";
    private static final String MOVING = "moving.json";

    private RestoreState() {}

    static void recordFailure(Config config, String error) {
        try {
            FileTrees.writeAtomically(config.stateDir().resolve(FAILED), R2Common.toJson(Map.of(
                    "townId", config.townId(), "at", Instant.now().toString(), "error", Log.redact(error))));
        } catch (IOException e) {
            Log.warn("restore: cannot record the failure in " + config.stateDir() + ": " + e.getMessage());
        }
    }

    static void clearFailure(Config config) {
        try {
            Files.deleteIfExists(config.stateDir().resolve(FAILED));
        } catch (IOException e) {
            Log.warn("cannot remove " + config.stateDir().resolve(FAILED) + ": " + e.getMessage());
        }
    }

    static Optional<Path> failure(Config config) {
        Path marker = config.stateDir().resolve(FAILED);
        return Files.exists(marker) ? Optional.of(marker) : Optional.empty();
    }

    static void markMoving(Path staging, String timestamp) throws IOException {
        FileTrees.writeAtomically(staging.resolve(MOVING), R2Common.toJson(Map.of("snapshot", timestamp)));
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
        out.println(Instant.now().truncatedTo(java.time.temporal.ChronoUnit.MILLIS) + " " + level + " " + redact(message));
        out.flush();
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

/** Status reports to the cloud API: POST {api}/api/gastown/heartbeat. A failure is logged, never fatal. */
final class Heartbeat {
    static final String PATH = "/api/gastown/heartbeat";
    private final URI endpoint;
    private final String token;
    private final HttpClient http = HttpClient.newBuilder().connectTimeout(Duration.ofSeconds(5)).build();

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
        try {
            HttpRequest.Builder req = HttpRequest.newBuilder(endpoint).timeout(Duration.ofSeconds(10))
                    .header("Content-Type", "application/json")
                    .POST(HttpRequest.BodyPublishers.ofByteArray(R2Common.toJson(body)));
            if (token != null && !token.isBlank()) req.header("Authorization", "Bearer " + token);
            HttpResponse<Void> resp = http.send(req.build(), HttpResponse.BodyHandlers.discarding());
            if (resp.statusCode() / 100 != 2)
                Log.warn("heartbeat: " + Log.redactUrl(endpoint.toString()) + " answered HTTP " + resp.statusCode());
        } catch (IOException e) {
            Log.warn("heartbeat: cannot reach " + Log.redactUrl(endpoint.toString()) + ": " + e.getMessage());
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            Log.warn("heartbeat: interrupted");
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

final class R2Cli {
    static volatile boolean debug;

    private R2Cli() {}

    /** Runs a command with the shared handlers: usage errors exit 2, expected failures print one line. */
    static int run(Object command, String... args) {
        CommandLine cmd = new CommandLine(command);
        cmd.setParameterExceptionHandler((ex, a) -> {
            CommandLine c = ex.getCommandLine();
            c.getErr().println(Log.redact("error: " + ex.getMessage()));
            c.getErr().println("Try '" + c.getCommandName() + " --help' for more information.");
            return R2Common.EXIT_USAGE;
        });
        cmd.setExecutionExceptionHandler((ex, c, parseResult) -> {
            if (ex instanceof R2Exception r2) {
                Log.error(messageChain(r2));
                return r2.exitCode;
            }
            Log.error("unexpected error: " + messageChain(ex) + " (this is a bug; rerun with --debug for details)");
            if (debug) {
                StringWriter sw = new StringWriter();
                ex.printStackTrace(new PrintWriter(sw));
                c.getErr().println(Log.redact(sw.toString()));
            }
            return R2Common.EXIT_FAILED;
        });
        return cmd.execute(args);
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

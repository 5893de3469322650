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
//DEPS com.google.crypto.tink:tink:1.18.0
//SOURCES R2Proc.java
//SOURCES R2Seal.java
//SOURCES R2Format.java
//SOURCES R2Store.java
//SOURCES R2Report.java
//SOURCES R2Snapshots.java
//SOURCES R2Town.java
//SOURCES R2Packs.java
//SOURCES R2Tar.java
//SOURCES R2Git.java
//SOURCES R2Dolt.java
//SOURCES R2History.java
//SOURCES R2Rebuild.java
//SOURCES R2Verify.java

// The ground floor of R2Sync, R2Restore, R2Status and R2Prune: what every other file may use, and nothing above it.
//   1. R2Common      version, exit codes, JSON mapper
//   2. Config        R2Options (the picocli mixin of connection options) -> Config (immutable)
//   3. Local files   FileTrees; SafePath, the one rule for a path a snapshot names
//   4. Logging       Log (timestamped, secret-free, escaped stderr lines), Progress
//   5. CLI wiring    R2Exception, SnapshotDamaged, R2Cli.run, DurationConverter
// Each other concept has a file of its own, listed above from the bottom of the house up (a file uses only those
// before it): R2Proc (child processes, parallel work, how a run ends), R2Seal (the town's keys: encryption and
// object names), R2Format (what the bucket holds), R2Store
// (the object store), R2Report (heartbeat, last-sync.json, restore markers), R2Snapshots (a town's snapshots in the
// store: latest.json, listing, building, upload, publish, download), R2Town (the scan and its skip list), R2Packs
// (files stored by content), R2Tar (formats 3-5), R2Git and R2Dolt (how each is captured and restored),
// R2History (retention and garbage collection), R2Rebuild (what a restore does before touching the volume),
// R2Verify (continuous verification).

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
    static final String VERSION = "gastown-r2 0.7.0";

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

    @Option(names = "--session-token", defaultValue = "${env:R2_SESSION_TOKEN}", paramLabel = "TOKEN",
            showDefaultValue = CommandLine.Help.Visibility.NEVER,
            description = "The session token of a temporary R2 credential (one scoped to the town's prefix, without delete: "
                    + "docs/security.md) (env R2_SESSION_TOKEN, or a file named by R2_SESSION_TOKEN_FILE). Never printed.")
    String sessionToken;

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

    @Option(names = "--encryption-key", defaultValue = "${env:R2_ENCRYPTION_KEY}", paramLabel = "KEY",
            showDefaultValue = CommandLine.Help.Visibility.NEVER,
            description = "The town's key: 32 bytes in base64 (openssl rand -base64 32). Every object a backup stores is then "
                    + "encrypted and authenticated with it, and a snapshot not sealed with it is refused (env R2_ENCRYPTION_KEY, "
                    + "or a file named by R2_ENCRYPTION_KEY_FILE). Never printed.")
    String encryptionKey;

    @Option(names = "--encryption-keyring", defaultValue = "${env:R2_ENCRYPTION_KEYRING}", paramLabel = "KEYS",
            showDefaultValue = CommandLine.Help.Visibility.NEVER,
            description = "Older keys, comma-separated, that still open the snapshots sealed before the last rotation (env "
                    + "R2_ENCRYPTION_KEYRING, or a file named by R2_ENCRYPTION_KEYRING_FILE). Never printed.")
    String encryptionKeyring;

    @Option(names = "--state-dir", defaultValue = "${env:R2_STATE_DIR:-/tmp/r2-state}", paramLabel = "DIR",
            description = "Local state of this machine: the last sync's outcome and the failed-restore marker "
                    + "(env R2_STATE_DIR, default ${DEFAULT-VALUE}).")
    Path stateDir;

    @Option(names = "--debug", description = "Print stack traces of unexpected errors.")
    boolean debug;   // read by R2Cli.run from the arguments: it must work before any option is valid

    private static final Pattern TOWN_ID = Pattern.compile("[A-Za-z0-9][A-Za-z0-9._-]{0,127}");
    private static final Pattern BUCKET = Pattern.compile("[a-z0-9][a-z0-9.-]{1,62}");
    private static final Pattern REGION = Pattern.compile("[a-z0-9][a-z0-9-]{0,63}");

    /** Validates every setting and returns the immutable config; a bad setting is a usage error (exit 2). */
    Config toConfig() {
        Map<String, Path> credentialFiles = new HashMap<>();
        String keyId = orFile(accessKeyId, "R2_ACCESS_KEY_ID_FILE", credentialFiles);
        String secret = orFile(secretAccessKey, "R2_SECRET_ACCESS_KEY_FILE", credentialFiles);
        String session = orFile(sessionToken, "R2_SESSION_TOKEN_FILE", credentialFiles);
        String token = orFile(apiToken, "GASTOWN_API_TOKEN_FILE");
        String key = orFile(encryptionKey, "R2_ENCRYPTION_KEY_FILE");
        String keyring = blankToNull(orFile(encryptionKeyring, "R2_ENCRYPTION_KEYRING_FILE"));
        List<String> olderKeys = keyring == null ? List.of() : List.of(keyring.split("[,\\s]+"));
        Log.addSecret(secret);
        Log.addSecret(session);
        Log.addSecret(token);
        Log.addSecret(key);
        olderKeys.forEach(Log::addSecret);

        URI endpointUri = parseUri(require(endpoint, "R2_ENDPOINT", "--endpoint"), "R2_ENDPOINT");
        boolean localStore = "file".equals(endpointUri.getScheme());
        if (!localStore) {
            if (!"https".equals(endpointUri.getScheme()) && !"http".equals(endpointUri.getScheme()))
                throw usage("R2_ENDPOINT must be an http(s):// URL or file:///dir, not " + Log.redactUrl(endpoint));
            if (endpointUri.getUserInfo() != null)
                throw usage("R2_ENDPOINT must not carry credentials; use R2_ACCESS_KEY_ID and R2_SECRET_ACCESS_KEY");
            require(keyId, "R2_ACCESS_KEY_ID", "--access-key-id");
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
        return new Config(endpointUri, localStore ? null : keyId, localStore ? null : secret, localStore ? null : blankToNull(session),
                localStore ? Map.of() : Map.copyOf(credentialFiles),
                localStore ? "local" : bucket, localStore ? null : region.trim(), townId, townRoot.toAbsolutePath().normalize(), api, token,
                stateDir.toAbsolutePath().normalize(), blankToNull(key), olderKeys);
    }

    private static String blankToNull(String value) {
        return value == null || value.isBlank() ? null : value.trim();
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
        return orFile(value, fileEnv, new HashMap<>());
    }

    /** As orFile, noting in files which file a value came from (the store reads a credential's files again). */
    private static String orFile(String value, String fileEnv, Map<String, Path> files) {
        if (value != null && !value.isBlank()) return value;
        String file = System.getenv(fileEnv);
        if (file == null || file.isBlank()) return value;
        files.put(fileEnv, Path.of(file));
        return readSecretFile(Path.of(file), fileEnv);
    }

    /** A secret mounted as a file, trimmed; one that cannot be read is a configuration error. */
    static String readSecretFile(Path file, String fileEnv) {
        try {
            return Files.readString(file).trim();
        } catch (IOException e) {
            throw usage(fileEnv + " names a file that cannot be read: " + file);
        }
    }

    static R2Exception usage(String message) {
        return new R2Exception(R2Common.EXIT_USAGE, message);
    }
}

/** --interval: the daemon syncs by it, and the status judges the loss window by it. */
final class IntervalOption {
    @Option(names = "--interval", defaultValue = "${env:R2_SYNC_INTERVAL:-5m}", converter = DurationConverter.class,
            paramLabel = "DURATION", description = "Time between the daemon's syncs, e.g. 5m, 30s (env R2_SYNC_INTERVAL, default ${DEFAULT-VALUE}).")
    Duration interval;

    Duration value() {
        if (interval.isZero() || interval.isNegative()) throw R2Options.usage("--interval must be positive");
        return interval;
    }
}

/** --work-dir: where a sync builds its snapshot and a verification its trial restore. */
final class WorkDirOption {
    @Option(names = "--work-dir", defaultValue = "${env:R2_WORK_DIR:-/tmp/r2-sync-work}", paramLabel = "DIR",
            description = "Where snapshots are built before upload and --verify builds its trial restore; needs room for one "
                    + "snapshot. Cleaned after every use (env R2_WORK_DIR, default ${DEFAULT-VALUE}).")
    Path dir;
}

/** Validated settings, passed along instead of the command objects. toString never shows secrets. */
record Config(URI endpoint, String accessKeyId, String secretAccessKey, String sessionToken, Map<String, Path> credentialFiles, String bucket, String region, String townId,
              Path townRoot, URI apiUrl, String apiToken, Path stateDir, String encryptionKey, List<String> olderKeys) {
    boolean localStore() {
        return "file".equals(endpoint.getScheme());
    }

    boolean sealed() {
        return encryptionKey != null;
    }

    @Override
    public String toString() {
        return "Config[endpoint=" + endpoint + ", bucket=" + bucket + ", region=" + region + ", townId=" + townId + ", townRoot=" + townRoot + "]";
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Local files and the path rule
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

    /** A directory's children in PathOrder (by name), the order of the scan and of the file index. */
    static List<Path> sortedChildren(Path dir) throws IOException {
        try (Stream<Path> s = Files.list(dir)) {
            return s.sorted(Comparator.comparing(p -> p.getFileName().toString())).collect(Collectors.toList());
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
 * The one path-safety rule. Every path a snapshot names (a manifest, a file index, a database, a ref) is a safe
 * relative path before it is used, and every path a restore writes or links to is inside the town (requireInside).
 */
final class SafePath {
    private static final Pattern SAFE_NAME = Pattern.compile("[A-Za-z0-9_][A-Za-z0-9_.-]*");

    private SafePath() {}

    /** A town-relative path as a log line shows it: the root itself is "(town root)". */
    static String shown(String rel) {
        return rel.isEmpty() ? "(town root)" : rel;
    }

    static String requireName(String name, String what) {
        if (name == null || !SAFE_NAME.matcher(name).matches())
            throw new IllegalArgumentException("unsafe " + what + ": " + name);
        return name;
    }

    /**
     * The one rule for a path a manifest or file index names: relative, '/'-separated, no empty part, no "." or "..",
     * no NUL. A backslash is a character of a name like any other (a town may hold `a\b`: refusing it would let
     * one file name stop every backup). One pass over the characters: a file index of a million paths is checked
     * entry by entry.
     */
    static String requireRelative(String path, String what) {
        if (path == null || path.isEmpty()) throw new IllegalArgumentException("unsafe " + what + ": " + path);
        int partStart = 0;
        for (int i = 0; i <= path.length(); i++) {
            char c = i < path.length() ? path.charAt(i) : '/';
            if (c == '\0') throw new IllegalArgumentException("unsafe " + what + ": " + path);
            if (c != '/') continue;
            int len = i - partStart;
            boolean dots = len > 0 && len <= 2 && path.charAt(partStart) == '.' && (len == 1 || path.charAt(partStart + 1) == '.');
            if (len == 0 || dots)
                throw new IllegalArgumentException("unsafe " + what + ": " + path);
            partStart = i + 1;
        }
        return path;
    }

    /**
     * The one rule for a path a restore writes or links to: rel must be a safe relative path (requireRelative),
     * every part of it but the last must be a directory under root reached without passing a symlink, and the last
     * part, if it exists, must not be a symlink. Then nothing written at the result lands outside root. Returns
     * root.resolve(rel).
     */
    static Path requireInside(Path root, String rel, String what) {
        requireRelative(rel, what);
        Path current = root;
        String[] parts = rel.split("/");
        for (int i = 0; i < parts.length; i++) {
            current = current.resolve(parts[i]);
            if (Files.isSymbolicLink(current))
                throw new SnapshotDamaged("refusing " + what + " " + Log.escape(rel) + ": it passes through a symlink");
            if (i < parts.length - 1 && Files.exists(current, LinkOption.NOFOLLOW_LINKS) && !Files.isDirectory(current, LinkOption.NOFOLLOW_LINKS))
                throw new SnapshotDamaged("refusing " + what + " " + Log.escape(rel) + ": it passes through a file");
        }
        return current;
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Logging and progress
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

// ---------------------------------------------------------------------------------------------
// 5. CLI wiring
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
    private R2Cli() {}

    /** Runs a command with the shared handlers: usage errors exit 2, expected failures print one line. */
    static int run(Object command, String... args) {
        boolean debug = List.of(args).contains("--debug");
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
            return unexpected(ex, c, debug);
        });
        try {
            return cmd.execute(args);
        } catch (Error e) {
            // picocli hands its handler exceptions only; an Error (an OutOfMemoryError) ends a command the same way.
            return unexpected(e, cmd, debug);
        }
    }

    /** A bug, or the JVM in trouble: one line, the stack trace only under --debug, exit 1. */
    private static int unexpected(Throwable ex, CommandLine c, boolean debug) {
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

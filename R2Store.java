// The object store: one interface, two implementations (part of R2Common, included with //SOURCES).
//   ObjectStore       what sync and restore need from a bucket
//   S3ObjectStore     Cloudflare R2 (or any S3-compatible server) through the AWS SDK v2, R2 settings
//   DirObjectStore    a local directory (R2_ENDPOINT=file:///dir): the embedded default, no account needed
//   SealedStore       either of them, every object sealed on the way in and opened on the way out (R2Seal.java)

import software.amazon.awssdk.auth.credentials.AwsBasicCredentials;
import software.amazon.awssdk.auth.credentials.AwsCredentials;
import software.amazon.awssdk.auth.credentials.AwsCredentialsProvider;
import software.amazon.awssdk.auth.credentials.AwsSessionCredentials;
import software.amazon.awssdk.awscore.retry.AwsRetryStrategy;
import software.amazon.awssdk.core.checksums.RequestChecksumCalculation;
import software.amazon.awssdk.core.checksums.ResponseChecksumValidation;
import software.amazon.awssdk.core.exception.SdkClientException;
import software.amazon.awssdk.core.exception.SdkException;
import software.amazon.awssdk.core.ResponseInputStream;
import software.amazon.awssdk.core.sync.RequestBody;
import software.amazon.awssdk.http.urlconnection.UrlConnectionHttpClient;
import software.amazon.awssdk.regions.Region;
import software.amazon.awssdk.services.s3.S3Client;
import software.amazon.awssdk.services.s3.S3Configuration;
import software.amazon.awssdk.services.s3.model.*;

import java.io.*;
import java.nio.channels.Channels;
import java.nio.channels.FileChannel;
import java.nio.channels.FileLock;
import java.nio.file.*;
import java.time.Duration;
import java.util.*;
import java.util.concurrent.*;
import java.util.stream.Collectors;
import java.util.stream.Stream;

/** An object, its size and when it was last written, as listed. */
record StoredObject(String key, long size, java.time.Instant modified) {}

/** An object's bytes with the ETag a conditional write must name, and the key it was sealed with (null: not sealed). */
record Versioned(byte[] data, String etag, String keyId) {
    Versioned(byte[] data, String etag) {
        this(data, etag, null);
    }
}

/** A multipart upload started and never completed or aborted (what a sync of a version before 0.5 killed mid-upload left). */
record PendingUpload(String key, String uploadId, java.time.Instant initiated) {}

/**
 * The store refused a delete (S3: HTTP 403 AccessDenied, for the request or for a key of it; R2: a bucket lock rule
 * that still protects the object; a directory store: no permission): the credential may write but not delete, as
 * the sandbox's is meant to be (docs/security.md). Nothing of the batch is taken for deleted; the history policy and
 * garbage collection are then left to r2-prune.
 */
final class DeleteRefused extends R2Exception {
    /** What R2 answers for an object a bucket lock rule still protects (reported as HTTP 409; docs/security.md). */
    static final String LOCKED = "ObjectLockedByBucketPolicy";

    DeleteRefused(String key, String detail) {
        super(R2Common.EXIT_FAILED, "store: delete " + key + " refused (" + detail + "): " + (detail.contains(LOCKED)
                ? "a bucket lock rule protects it still" : "the credential cannot delete"));
    }
}

/** A conditional write lost: someone else wrote the object since we read it. */
final class PreconditionFailed extends R2Exception {
    PreconditionFailed(String key) {
        super(R2Common.EXIT_FAILED, "conditional write of " + key + " refused: it changed since it was read");
    }
}

interface ObjectStore extends AutoCloseable {
    /** Uploads object.size() bytes of file from offset (a whole file, or one piece of it), whose sha256 is object's. */
    void putFile(String key, Path file, long offset, FileEntry object, Progress progress);

    void putBytes(String key, byte[] data);

    /** Writes only if the object's ETag is still expectedEtag (null: only if it does not exist); returns the new ETag. */
    String putIfMatch(String key, byte[] data, String expectedEtag);

    /** A small object (latest.json, a manifest) read whole; one larger than MAX_SMALL_OBJECT is refused, not read. */
    Optional<Versioned> get(String key);

    /** What a manifest of a town of millions of paths stays far below (its files are packs and index pieces). */
    long MAX_SMALL_OBJECT = 64L << 20;

    static byte[] readSmall(InputStream in, String key) throws IOException {
        byte[] data = in.readNBytes((int) MAX_SMALL_OBJECT + 1);
        if (data.length > MAX_SMALL_OBJECT)
            throw new R2Exception(R2Common.EXIT_FAILED, "store: " + key + " is larger than " + Log.bytes(MAX_SMALL_OBJECT)
                    + ", more than a manifest or latest.json can be; refusing to read it");
        return data;
    }

    /**
     * Streams an object into target from offset (created if missing), hashing while writing; returns what
     * arrived (size, sha256). Missing objects fail.
     */
    FileEntry download(String key, Path target, long offset, FileEntry expected, Progress progress);

    /**
     * The downloads of a snapshot file into target (which must not exist yet), one per object it is stored as (to
     * run in parallel), each checked against the manifest as it streams; `of` names the snapshot in errors.
     */
    default List<Parallel.Task> downloads(Keys keys, FileEntry file, Path target, String of, Progress progress) {
        List<FileEntry.Part> parts = file.parts();
        List<Parallel.Task> tasks = new ArrayList<>();
        for (int i = 0; i < parts.size(); i++) {
            FileEntry expected = parts.get(i).object();
            long offset = parts.get(i).offset();
            String what = file.path() + (parts.size() > 1 ? " (piece " + (i + 1) + " of " + parts.size() + ")" : "") + " of " + of;
            tasks.add(() -> {
                FileEntry got;
                try {
                    got = download(keys.object(expected), target, offset, expected, progress);
                } catch (R2Exception e) {
                    throw new R2Exception(e.exitCode, what + ": " + e.getMessage(), e);
                }
                if (got.size() != expected.size())
                    throw new SnapshotDamaged(what + " has " + got.size() + " bytes, the manifest says "
                            + expected.size() + " (truncated or replaced)");
                if (!got.sha256().equals(expected.sha256()))
                    throw new SnapshotDamaged(what + " does not match its sha256 in the manifest (corrupted)");
            });
        }
        return tasks;
    }

    List<StoredObject> list(String prefix);

    void delete(Collection<String> keys);

    List<PendingUpload> pendingUploads(String prefix);

    void abort(PendingUpload upload);

    @Override
    void close();

    static ObjectStore open(Config config) {
        ObjectStore bucket = config.localStore() ? new DirObjectStore(Path.of(config.endpoint())) : new S3ObjectStore(config);
        return new SealedStore(bucket, Keyring.of(config));
    }
}

/** R2 through the AWS SDK v2 with the settings R2 needs (see shared docs: checksums, path style, region auto). */
final class S3ObjectStore implements ObjectStore {
    private final String bucket;
    /**
     * Built in the background from the moment the store is opened: in a new JVM the build takes 0.2-0.4 s (half
     * of it the TLS set-up), which a run spends on its own start-up instead of waiting; the first request waits
     * for the rest.
     */
    private final CompletableFuture<S3Client> client;

    S3ObjectStore(Config config) {
        this.bucket = config.bucket();
        this.client = CompletableFuture.supplyAsync(() -> build(config));
    }

    private S3Client s3() {
        try {
            return client.join();
        } catch (CompletionException e) {
            throw e.getCause() instanceof RuntimeException r ? r : e;
        }
    }

    private static S3Client build(Config config) {
        return S3Client.builder()
                .endpointOverride(config.endpoint())
                .region(Region.of(config.region()))
                .credentialsProvider(new R2Credentials(config))
                .serviceConfiguration(S3Configuration.builder()
                        .pathStyleAccessEnabled(true)
                        .chunkedEncodingEnabled(false)
                        .build())
                .requestChecksumCalculation(RequestChecksumCalculation.WHEN_REQUIRED)
                .responseChecksumValidation(ResponseChecksumValidation.WHEN_REQUIRED)
                // The JDK's HttpURLConnection (streaming a body of known length, keeping connections alive): a new
                // process's first request comes 0.2 s sooner than through Apache's client, which has more to load.
                .httpClientBuilder(UrlConnectionHttpClient.builder()
                        .connectionTimeout(Duration.ofSeconds(10))
                        .socketTimeout(Duration.ofSeconds(60)))
                .overrideConfiguration(o -> o
                        // Standard retries: exponential backoff with jitter, bounded attempts.
                        .retryStrategy(AwsRetryStrategy.standardRetryStrategy().toBuilder().maxAttempts(5).build())
                        .apiCallAttemptTimeout(Duration.ofMinutes(5))
                        .apiCallTimeout(Duration.ofMinutes(20)))
                .build();
    }

    @Override
    public void putFile(String key, Path file, long offset, FileEntry object, Progress progress) {
        // R2 verifies the checksum before it stores the object; a content provider reopens the slice, so the
        // SDK can retry from its start.
        String checksum = Base64.getEncoder().encodeToString(HexFormat.of().parseHex(object.sha256()));
        call("put " + key, () -> s3().putObject(b -> b.bucket(bucket).key(key).checksumSHA256(checksum).contentLength(object.size()),
                RequestBody.fromContentProvider(() -> slice(file, offset, object.size()), object.size(), "application/octet-stream")));
        if (progress != null) progress.add(object.size());
    }

    private static InputStream slice(Path file, long offset, long length) {
        try {
            return BoundedInputStream.slice(file, offset, length);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    @Override
    public void putBytes(String key, byte[] data) {
        call("put " + key, () -> s3().putObject(b -> b.bucket(bucket).key(key), RequestBody.fromBytes(data)));
    }

    @Override
    public String putIfMatch(String key, byte[] data, String expectedEtag) {
        try {
            return s3().putObject(b -> {
                b.bucket(bucket).key(key);
                if (expectedEtag == null) b.ifNoneMatch("*");
                else b.ifMatch(expectedEtag);
            }, RequestBody.fromBytes(data)).eTag();
        } catch (S3Exception e) {
            if (e.statusCode() == 412 || e.statusCode() == 409) throw new PreconditionFailed(key);
            throw wrap("put " + key, e);
        } catch (SdkException e) {
            throw wrap("put " + key, e);
        }
    }

    @Override
    public Optional<Versioned> get(String key) {
        try {
            return Optional.of(readBody(key, (body, response) -> new Versioned(ObjectStore.readSmall(body, key), response.eTag())));
        } catch (NoSuchKeyException e) {
            return Optional.empty();
        }
    }

    @Override
    public FileEntry download(String key, Path target, long offset, FileEntry expected, Progress progress) {
        try {
            return readBody(key, (body, response) -> {
                try {
                    return Sha256.copyInto(body, target, offset, expected, progress);
                } catch (IOException e) {
                    throw new R2Exception(R2Common.EXIT_FAILED, "download " + key + " to " + target + ": " + e.getMessage(), e);
                }
            });
        } catch (NoSuchKeyException e) {
            throw new SnapshotDamaged("s3: " + key + " is missing");
        }
    }

    /** Tries of one read whose body breaks off mid-stream (the SDK retries only the request itself). */
    static final int DOWNLOAD_ATTEMPTS = 4;

    interface BodyReader<T> {
        T read(InputStream body, GetObjectResponse response) throws IOException;
    }

    /**
     * Reads an object's body; one that breaks off or ends short of its Content-Length (HttpURLConnection just
     * ends the stream when the connection closes early) is read again from the start: a transient cut must not
     * make a restore fall back to an older snapshot. A missing object throws NoSuchKeyException.
     */
    private <T> T readBody(String key, BodyReader<T> reader) {
        for (int attempt = 1; ; attempt++) {
            try (ResponseInputStream<GetObjectResponse> in = s3().getObject(b -> b.bucket(bucket).key(key))) {
                return reader.read(new BodyStream(in, in.response().contentLength()), in.response());
            } catch (BodyBroken e) {
                String why = e.getCause().getMessage();
                if (attempt >= DOWNLOAD_ATTEMPTS)
                    throw new R2Exception(R2Common.EXIT_FAILED, "s3: get " + key + ": the download broke off " + attempt
                            + " times: " + why, e.getCause());
                Log.warn("s3: get " + key + ": the download broke off (" + why + "); retrying (" + attempt + "/" + DOWNLOAD_ATTEMPTS + ")");
                try {
                    Thread.sleep(ThreadLocalRandom.current().nextLong(100L << attempt));   // backoff with jitter
                } catch (InterruptedException ie) {
                    Thread.currentThread().interrupt();
                    throw new R2Exception(R2Common.EXIT_FAILED, "s3: get " + key + ": interrupted");
                }
            } catch (NoSuchKeyException e) {
                throw e;
            } catch (SdkException e) {
                throw wrap("get " + key, e);
            } catch (IOException e) {
                throw new R2Exception(R2Common.EXIT_FAILED, "s3: get " + key + ": " + e.getMessage(), e);
            }
        }
    }

    /** A read from a response body failed: the connection broke, not the local disk (whose errors stay IOExceptions). */
    private static final class BodyBroken extends RuntimeException {
        BodyBroken(IOException cause) {
            super(cause);
        }
    }

    /**
     * A response body whose read failures are BodyBroken, so a read can tell them from write failures; one that
     * ends before its Content-Length is broken too.
     */
    private static final class BodyStream extends FilterInputStream {
        private final Long expected;
        private long received;

        BodyStream(InputStream in, Long expected) {
            super(in);
            this.expected = expected;
        }

        @Override
        public int read() {
            byte[] one = new byte[1];
            return read(one, 0, 1) < 0 ? -1 : one[0] & 0xff;
        }

        @Override
        public int read(byte[] b, int off, int len) {
            int n;
            try {
                n = in.read(b, off, len);
            } catch (IOException e) {
                throw new BodyBroken(e);
            }
            if (n > 0) received += n;
            if (n < 0 && expected != null && received < expected)
                throw new BodyBroken(new EOFException("the body ended after " + received + " of " + expected + " bytes"));
            return n;
        }
    }

    @Override
    public List<StoredObject> list(String prefix) {
        return call("list " + prefix, () -> s3().listObjectsV2Paginator(b -> b.bucket(bucket).prefix(prefix)).contents()
                .stream().map(o -> new StoredObject(o.key(), o.size(), o.lastModified())).collect(Collectors.toList()));
    }

    @Override
    public void delete(Collection<String> keys) {
        List<String> all = new ArrayList<>(keys);
        for (int i = 0; i < all.size(); i += 1000) {
            List<ObjectIdentifier> batch = all.subList(i, Math.min(all.size(), i + 1000)).stream()
                    .map(k -> ObjectIdentifier.builder().key(k).build()).collect(Collectors.toList());
            DeleteObjectsResponse r;
            try {
                r = call("delete objects", () -> s3().deleteObjects(b -> b.bucket(bucket).delete(d -> d.objects(batch).quiet(true))));
            } catch (R2Exception e) {
                if (e.getCause() instanceof S3Exception s3e) {
                    String code = s3e.awsErrorDetails() == null ? null : s3e.awsErrorDetails().errorCode();
                    if (s3e.statusCode() == 403 || DeleteRefused.LOCKED.equals(code))
                        throw new DeleteRefused(batch.get(0).key(), "HTTP " + s3e.statusCode() + (code == null ? "" : " " + code));
                }
                throw e;
            }
            if (r.hasErrors() && !r.errors().isEmpty()) {
                S3Error first = r.errors().get(0);
                // AWS answers a batch it may not carry out key by key; R2 refuses the whole request (above).
                if ("AccessDenied".equals(first.code()) || DeleteRefused.LOCKED.equals(first.code()))
                    throw new DeleteRefused(first.key(), first.code());
                throw new R2Exception(R2Common.EXIT_FAILED, "s3: delete " + first.key() + ": " + first.message());
            }
        }
    }

    @Override
    public List<PendingUpload> pendingUploads(String prefix) {
        return call("list uploads " + prefix, () -> s3().listMultipartUploadsPaginator(b -> b.bucket(bucket).prefix(prefix))
                .uploads().stream().map(u -> new PendingUpload(u.key(), u.uploadId(), u.initiated())).collect(Collectors.toList()));
    }

    @Override
    public void abort(PendingUpload upload) {
        try {
            s3().abortMultipartUpload(b -> b.bucket(bucket).key(upload.key()).uploadId(upload.uploadId()));
        } catch (NoSuchUploadException e) {
            // already gone
        } catch (SdkException e) {
            Log.warn("s3: abort upload of " + upload.key() + ": " + e.getMessage());
        }
    }

    @Override
    public void close() {
        client.thenAccept(S3Client::close);   // once built, if it is still being built
    }

    private static <T> T call(String what, java.util.function.Supplier<T> action) {
        try {
            return action.get();
        } catch (SdkException e) {
            throw wrap(what, e);
        } catch (UncheckedIOException e) {
            throw new R2Exception(R2Common.EXIT_FAILED, "s3: " + what + ": " + e.getCause().getMessage(), e);
        }
    }

    private static R2Exception wrap(String what, SdkException e) {
        String detail;
        if (e instanceof S3Exception s3e && s3e.awsErrorDetails() != null)
            detail = "HTTP " + s3e.statusCode() + " " + s3e.awsErrorDetails().errorCode();
        else if (e instanceof SdkClientException)
            detail = "cannot reach the store: " + firstLine(R2Cli.messageChain(e));
        else detail = firstLine(e.getMessage());
        return new R2Exception(R2Common.EXIT_FAILED, "s3: " + what + ": " + detail, e);
    }

    private static String firstLine(String s) {
        return s == null ? "" : s.lines().findFirst().orElse("");
    }
}

/**
 * The R2 credential: as configured, and where it came from files (R2_ACCESS_KEY_ID_FILE, R2_SECRET_ACCESS_KEY_FILE,
 * R2_SESSION_TOKEN_FILE), read again from them at most once a minute. A temporary credential (the sandbox's, scoped to
 * the town's prefix without delete) lasts at most 7 days and is replaced in its files before then: a daemon that runs
 * for months follows without a restart.
 */
final class R2Credentials implements AwsCredentialsProvider {
    private static final long REREAD_NANOS = 60_000_000_000L;
    private final Config config;
    private AwsCredentials current;
    private long readAt;

    R2Credentials(Config config) {
        this.config = config;
        this.current = credentials(config.accessKeyId(), config.secretAccessKey(), config.sessionToken());
        this.readAt = System.nanoTime();
    }

    @Override
    public synchronized AwsCredentials resolveCredentials() {
        if (!config.credentialFiles().isEmpty() && System.nanoTime() - readAt > REREAD_NANOS) {
            readAt = System.nanoTime();
            try {
                String id = read("R2_ACCESS_KEY_ID_FILE", config.accessKeyId());
                String secret = read("R2_SECRET_ACCESS_KEY_FILE", config.secretAccessKey());
                String token = read("R2_SESSION_TOKEN_FILE", config.sessionToken());
                Log.addSecret(secret);
                Log.addSecret(token);
                current = credentials(id, secret, token);
            } catch (R2Exception e) {
                Log.warn("s3: " + e.getMessage() + "; going on with the credential read before");
            }
        }
        return current;
    }

    private String read(String fileEnv, String configured) {
        Path file = config.credentialFiles().get(fileEnv);
        return file == null ? configured : R2Options.readSecretFile(file, fileEnv);
    }

    private static AwsCredentials credentials(String id, String secret, String token) {
        return token == null || token.isBlank() ? AwsBasicCredentials.create(id, secret) : AwsSessionCredentials.create(id, secret, token);
    }
}

/** An InputStream that ends after a number of bytes (one piece of a file). */
final class BoundedInputStream extends FilterInputStream {
    private long left;

    /** length bytes of file from offset. */
    static InputStream slice(Path file, long offset, long length) throws IOException {
        FileChannel ch = FileChannel.open(file, StandardOpenOption.READ);
        ch.position(offset);
        return new BoundedInputStream(Channels.newInputStream(ch), length);
    }

    BoundedInputStream(InputStream in, long length) {
        super(in);
        this.left = length;
    }

    @Override
    public int read() throws IOException {
        if (left <= 0) return -1;
        int b = in.read();
        if (b >= 0) left--;
        return b;
    }

    @Override
    public int read(byte[] b, int off, int len) throws IOException {
        if (left <= 0) return -1;
        int n = in.read(b, off, (int) Math.min(len, left));
        if (n > 0) left -= n;
        return n;
    }
}

/**
 * A local directory as the store: keys are files under the root. Writes go to a temp file and are renamed
 * into place; conditional writes hold a file lock; the ETag is the content's sha256.
 */
final class DirObjectStore implements ObjectStore {
    private final Path root;

    DirObjectStore(Path root) {
        this.root = root.toAbsolutePath().normalize();
        try {
            Files.createDirectories(this.root);
        } catch (IOException e) {
            throw new R2Exception(R2Common.EXIT_FAILED, "store directory " + root + ": " + e.getMessage(), e);
        }
    }

    private Path path(String key) {
        Path p = root.resolve(key).normalize();
        if (!p.startsWith(root) || key.contains("..") || key.startsWith(".tmp"))
            throw new IllegalArgumentException("unsafe key " + key);
        return p;
    }

    @Override
    public void putFile(String key, Path file, long offset, FileEntry object, Progress progress) {
        writeAtomically(key, tmp -> {
            try (InputStream in = BoundedInputStream.slice(file, offset, object.size())) {
                Files.copy(in, tmp, StandardCopyOption.REPLACE_EXISTING);
            }
        });
        if (progress != null) progress.add(object.size());
    }

    @Override
    public void putBytes(String key, byte[] data) {
        writeAtomically(key, tmp -> Files.write(tmp, data));
    }

    @Override
    public String putIfMatch(String key, byte[] data, String expectedEtag) {
        try (FileChannel ch = FileChannel.open(root.resolve(".lock"), StandardOpenOption.CREATE, StandardOpenOption.WRITE);
             FileLock ignored = ch.lock()) {
            String current = get(key).map(Versioned::etag).orElse(null);
            if (!Objects.equals(current, expectedEtag)) throw new PreconditionFailed(key);
            putBytes(key, data);
            return etag(data);
        } catch (IOException e) {
            throw new R2Exception(R2Common.EXIT_FAILED, "store: lock " + root + ": " + e.getMessage(), e);
        }
    }

    @Override
    public Optional<Versioned> get(String key) {
        try {
            byte[] data;
            try (InputStream in = Files.newInputStream(path(key))) {
                data = ObjectStore.readSmall(in, key);
            }
            return Optional.of(new Versioned(data, etag(data)));
        } catch (NoSuchFileException e) {
            return Optional.empty();
        } catch (IOException e) {
            throw new R2Exception(R2Common.EXIT_FAILED, "store: read " + key + ": " + e.getMessage(), e);
        }
    }

    @Override
    public FileEntry download(String key, Path target, long offset, FileEntry expected, Progress progress) {
        Path source = path(key);
        if (!Files.isRegularFile(source)) throw new SnapshotDamaged("store: " + key + " is missing");
        try (InputStream in = Files.newInputStream(source)) {
            return Sha256.copyInto(in, target, offset, expected, progress);
        } catch (IOException e) {
            throw new R2Exception(R2Common.EXIT_FAILED, "store: read " + key + ": " + e.getMessage(), e);
        }
    }

    @Override
    public List<StoredObject> list(String prefix) {
        if (!Files.isDirectory(root)) return List.of();
        try (Stream<Path> s = Files.walk(root)) {
            return s.filter(Files::isRegularFile)
                    .map(p -> root.relativize(p).toString().replace(File.separatorChar, '/'))
                    .filter(k -> k.startsWith(prefix) && !k.equals(".lock") && !k.startsWith(".tmp"))
                    .sorted()
                    .map(k -> new StoredObject(k, path(k).toFile().length(), java.time.Instant.ofEpochMilli(path(k).toFile().lastModified())))
                    .collect(Collectors.toList());
        } catch (IOException e) {
            throw new R2Exception(R2Common.EXIT_FAILED, "store: list " + prefix + ": " + e.getMessage(), e);
        }
    }

    @Override
    public void delete(Collection<String> keys) {
        for (String key : keys) {
            try {
                Files.deleteIfExists(path(key));
            } catch (java.nio.file.AccessDeniedException e) {
                throw new DeleteRefused(key, "no permission");
            } catch (IOException e) {
                throw new R2Exception(R2Common.EXIT_FAILED, "store: delete " + key + ": " + e.getMessage(), e);
            }
        }
    }

    /** Temp files of writers that died; a directory store has no other kind of pending upload. */
    @Override
    public List<PendingUpload> pendingUploads(String prefix) {
        Path tmpDir = root.resolve(".tmp");
        if (!Files.isDirectory(tmpDir)) return List.of();
        try (Stream<Path> s = Files.list(tmpDir)) {
            return s.map(p -> new PendingUpload(p.getFileName().toString(), p.toString(),
                    java.time.Instant.ofEpochMilli(p.toFile().lastModified()))).collect(Collectors.toList());
        } catch (IOException e) {
            return List.of();
        }
    }

    @Override
    public void abort(PendingUpload upload) {
        try {
            Files.deleteIfExists(Path.of(upload.uploadId()));
        } catch (IOException e) {
            Log.warn("store: remove " + upload.uploadId() + ": " + e.getMessage());
        }
    }

    @Override
    public void close() {}

    private interface Writer {
        void write(Path tmp) throws IOException;
    }

    private void writeAtomically(String key, Writer writer) {
        Path target = path(key);
        try {
            Files.createDirectories(target.getParent());
            Path tmpDir = Files.createDirectories(root.resolve(".tmp"));
            Path tmp = Files.createTempFile(tmpDir, "put", ".part");
            try {
                writer.write(tmp);
                Files.move(tmp, target, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
            } finally {
                Files.deleteIfExists(tmp);
            }
        } catch (IOException e) {
            throw new R2Exception(R2Common.EXIT_FAILED, "store: write " + key + ": " + e.getMessage(), e);
        }
    }

    private static String etag(byte[] data) {
        return "\"" + Sha256.of(data) + "\"";
    }
}

/**
 * A store whose objects are sealed with the town's key (R2Seal.java): what goes up is encrypted and authenticated, with
 * its key in the bucket as associated data; what comes down is opened with the key its header names and checked as it
 * streams. An unsealed object (written before the town had a key) reads as it is, marked (Versioned.keyId null): the
 * caller decides whether it may be trusted. Without a keyring it writes as the store below does, and a sealed object
 * it reads is refused with what to set (exit 2). Large objects go through a temp file: the upload can then be retried
 * from its start and carries the sealed bytes' sha256 for R2 to check, and memory stays flat.
 */
final class SealedStore implements ObjectStore {
    private final ObjectStore bucket;
    private final Keyring keyring;

    SealedStore(ObjectStore bucket, Keyring keyring) {
        this.bucket = bucket;
        this.keyring = keyring;
    }

    @Override
    public void putFile(String key, Path file, long offset, FileEntry object, Progress progress) {
        if (keyring == null) {
            bucket.putFile(key, file, offset, object, progress);
            return;
        }
        Path sealed = null;
        try {
            sealed = Files.createTempFile("r2-sealed-", null);
            java.security.MessageDigest md = Sha256.digest();
            try (InputStream in = BoundedInputStream.slice(file, offset, object.size());
                 OutputStream out = new java.security.DigestOutputStream(new BufferedOutputStream(Files.newOutputStream(sealed), 1 << 16), md);
                 OutputStream sealing = keyring.current().sealing(out, key)) {
                in.transferTo(sealing);
            }
            bucket.putFile(key, sealed, 0, new FileEntry(object.path(), Files.size(sealed), Sha256.hex(md.digest())), null);
            if (progress != null) progress.add(object.size());
        } catch (IOException e) {
            throw new R2Exception(R2Common.EXIT_FAILED, "seal " + key + ": " + e.getMessage(), e);
        } finally {
            if (sealed != null) FileTrees.deleteQuietly(sealed);
        }
    }

    @Override
    public void putBytes(String key, byte[] data) {
        bucket.putBytes(key, keyring == null ? data : keyring.current().seal(data, key));
    }

    @Override
    public String putIfMatch(String key, byte[] data, String expectedEtag) {
        return bucket.putIfMatch(key, keyring == null ? data : keyring.current().seal(data, key), expectedEtag);
    }

    @Override
    public Optional<Versioned> get(String key) {
        Optional<Versioned> raw = bucket.get(key);
        if (raw.isEmpty()) return raw;
        String keyId = Seal.keyIdOf(raw.get().data());
        if (keyId == null) return raw;
        Seal seal = sealOf(keyId, key);
        byte[] data = raw.get().data();
        try (InputStream in = seal.opening(new ByteArrayInputStream(data, Seal.HEADER, data.length - Seal.HEADER), key)) {
            return Optional.of(new Versioned(in.readAllBytes(), raw.get().etag(), keyId));
        } catch (Seal.Tampered e) {
            throw new SnapshotDamaged(e.getMessage(), e);
        } catch (IOException e) {
            throw new R2Exception(R2Common.EXIT_FAILED, "open " + key + ": " + e.getMessage(), e);
        }
    }

    @Override
    public FileEntry download(String key, Path target, long offset, FileEntry expected, Progress progress) {
        if (keyring == null) return bucket.download(key, target, offset, expected, progress);
        Path sealed = null;
        try {
            sealed = Files.createTempFile("r2-sealed-", null);
            // What comes down is checked after it is opened (against expected), so its own sha256 is not known here.
            bucket.download(key, sealed, 0, new FileEntry(expected.path(), keyring.current().sealedSize(expected.size()), "0".repeat(64)), null);
            try (InputStream in = new BufferedInputStream(Files.newInputStream(sealed), 1 << 16)) {
                byte[] head = in.readNBytes(Seal.HEADER);
                String keyId = Seal.keyIdOf(head);
                InputStream body = keyId == null ? new SequenceInputStream(new ByteArrayInputStream(head), in) : sealOf(keyId, key).opening(in, key);
                return Sha256.copyInto(body, target, offset, expected, progress);
            }
        } catch (Seal.Tampered e) {
            throw new SnapshotDamaged(e.getMessage(), e);
        } catch (IOException e) {
            throw new R2Exception(R2Common.EXIT_FAILED, "download " + key + " to " + target + ": " + e.getMessage(), e);
        } finally {
            if (sealed != null) FileTrees.deleteQuietly(sealed);
        }
    }

    private Seal sealOf(String keyId, String key) {
        if (keyring == null)
            throw new R2Exception(R2Common.EXIT_USAGE, key + " is sealed with key " + keyId + ", and no key is set: set R2_ENCRYPTION_KEY "
                    + "(or R2_ENCRYPTION_KEY_FILE) to the town's key");
        return keyring.byId(keyId, key);
    }

    @Override
    public List<StoredObject> list(String prefix) {
        return bucket.list(prefix);
    }

    @Override
    public void delete(Collection<String> keys) {
        bucket.delete(keys);
    }

    @Override
    public List<PendingUpload> pendingUploads(String prefix) {
        return bucket.pendingUploads(prefix);
    }

    @Override
    public void abort(PendingUpload upload) {
        bucket.abort(upload);
    }

    @Override
    public void close() {
        bucket.close();
    }
}

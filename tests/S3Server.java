import java.io.IOException;
import java.io.UncheckedIOException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.SecureRandom;
import java.time.Duration;
import java.util.HexFormat;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import software.amazon.awssdk.auth.credentials.AwsBasicCredentials;
import software.amazon.awssdk.auth.credentials.StaticCredentialsProvider;
import software.amazon.awssdk.core.checksums.RequestChecksumCalculation;
import software.amazon.awssdk.core.checksums.ResponseChecksumValidation;
import software.amazon.awssdk.regions.Region;
import software.amazon.awssdk.services.s3.S3Client;
import software.amazon.awssdk.services.s3.S3Configuration;

/**
 * A real S3-compatible server for tests: S3Proxy (filesystem blob store) in its own process on
 * 127.0.0.1, with AWS v2/v4 signature checks and a random secret. Its fat jar carries its own AWS SDK,
 * Jackson and logback, so it never goes on our classpath.
 *
 * <p>One server is shared by the whole suite ({@link #shared()}, stopped by a shutdown hook); each
 * test takes a fresh bucket ({@link #newBucket()}).
 */
final class S3Server implements AutoCloseable {
    private static final Duration STARTUP_TIMEOUT = Duration.ofSeconds(60);
    private static final AtomicInteger BUCKETS = new AtomicInteger();
    private static S3Server shared;

    private final Path dir;
    private final Process process;
    private final int port;
    private final String accessKey;
    private final String secretKey;

    /** The suite-wide server, started on first use and stopped when the JVM exits. */
    static synchronized S3Server shared() {
        if (shared == null) {
            S3Server server = start();
            Runtime.getRuntime().addShutdownHook(new Thread(server::close, "s3server-stop"));
            shared = server;
        }
        return shared;
    }

    /** Starts a private server; the caller closes it. */
    static S3Server start() {
        Path dir = TestTools.tempDir("s3proxy-");
        byte[] secret = new byte[20];
        new SecureRandom().nextBytes(secret);
        return new S3Server(dir, TestTools.freePort(), "test-access-key", HexFormat.of().formatHex(secret));
    }

    private S3Server(Path dir, int port, String accessKey, String secretKey) {
        this.dir = dir;
        this.port = port;
        this.accessKey = accessKey;
        this.secretKey = secretKey;
        try {
            Path basedir = Files.createDirectories(dir.resolve("blobs"));
            Path props = dir.resolve("s3proxy.conf");
            Files.writeString(props, String.join("\n",
                    "s3proxy.endpoint=" + endpoint(),
                    "s3proxy.authorization=aws-v2-or-v4",
                    "s3proxy.identity=" + accessKey,
                    "s3proxy.credential=" + secretKey,
                    "jclouds.provider=filesystem",
                    "jclouds.filesystem.basedir=" + basedir,
                    ""));
            Path log = dir.resolve("s3proxy.log");
            process = new ProcessBuilder(TestTools.java(), "-Xmx256m", "-XX:TieredStopAtLevel=1",
                    "-jar", TestTools.s3proxyJar().toString(), "--properties", props.toString())
                    .directory(dir.toFile())
                    .redirectErrorStream(true)
                    .redirectOutput(log.toFile())
                    .start();
            if (!TestTools.await(this::answers, STARTUP_TIMEOUT, 50)) {
                String tail = TestTools.tail(Files.readString(log), 3000);
                close();
                throw new IllegalStateException("S3Proxy did not answer on " + endpoint() + "\n" + tail);
            }
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    /** True once the server answers HTTP at all (an unsigned request gets a 403, which is fine). */
    private boolean answers() {
        if (!process.isAlive()) return true; // stop waiting; the caller sees the dead process
        try {
            HttpResponse<Void> r = HttpClient.newHttpClient().send(
                    HttpRequest.newBuilder(URI.create(endpoint() + "/")).timeout(Duration.ofSeconds(2)).build(),
                    HttpResponse.BodyHandlers.discarding());
            return r.statusCode() > 0;
        } catch (IOException e) {
            return false;
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            return false;
        }
    }

    String endpoint() {
        return "http://127.0.0.1:" + port;
    }

    String accessKey() {
        return accessKey;
    }

    String secretKey() {
        return secretKey;
    }

    /**
     * Where the filesystem blob store keeps bucket {@code bucket}: one directory per bucket, objects as
     * files under it. (Checked: S3Proxy 4.1.0 also serves a bucket made by just creating this dir.)
     */
    Path bucketDir(String bucket) {
        return dir.resolve("blobs").resolve(bucket);
    }

    /** Creates a bucket through the S3 API. */
    void createBucket(String name) {
        try (S3Client s3 = client()) {
            s3.createBucket(b -> b.bucket(name));
        }
    }

    /** Creates and returns a bucket with a name no other test of this JVM uses. */
    String newBucket() {
        String name = "test-" + ProcessHandle.current().pid() + "-" + BUCKETS.incrementAndGet();
        createBucket(name);
        return name;
    }

    /** An S3 client configured like the product's R2 client (path style, checksums only when required). */
    S3Client client() {
        return S3Client.builder()
                .endpointOverride(URI.create(endpoint()))
                .region(Region.of("auto"))
                .credentialsProvider(StaticCredentialsProvider.create(AwsBasicCredentials.create(accessKey, secretKey)))
                .serviceConfiguration(S3Configuration.builder()
                        .pathStyleAccessEnabled(true)
                        .chunkedEncodingEnabled(false)
                        .build())
                .requestChecksumCalculation(RequestChecksumCalculation.WHEN_REQUIRED)
                .responseChecksumValidation(ResponseChecksumValidation.WHEN_REQUIRED)
                .build();
    }

    /** Environment variables in the shape the sandbox provisions (R2_*), for running the product CLIs. */
    Map<String, String> r2Env(String bucket) {
        return Map.of(
                "R2_ENDPOINT", endpoint(),
                "R2_ACCESS_KEY_ID", accessKey,
                "R2_SECRET_ACCESS_KEY", secretKey,
                "R2_BUCKET", bucket);
    }

    /** Stops the server (SIGTERM, then kill) and removes its data. */
    @Override
    public void close() {
        process.destroy();
        try {
            if (!process.waitFor(5, TimeUnit.SECONDS)) {
                process.destroyForcibly().waitFor(5, TimeUnit.SECONDS);
            }
        } catch (InterruptedException e) {
            process.destroyForcibly();
            Thread.currentThread().interrupt();
        }
        TestTools.deleteRecursively(dir);
    }

    @Override
    public String toString() {
        return "S3Server[" + endpoint() + ", data " + dir + "]";
    }
}

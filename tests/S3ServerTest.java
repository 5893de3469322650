import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.file.Files;
import java.time.Duration;
import java.util.List;
import org.junit.jupiter.api.Test;
import software.amazon.awssdk.auth.credentials.AwsBasicCredentials;
import software.amazon.awssdk.auth.credentials.StaticCredentialsProvider;
import software.amazon.awssdk.core.sync.RequestBody;
import software.amazon.awssdk.regions.Region;
import software.amazon.awssdk.services.s3.S3Client;
import software.amazon.awssdk.services.s3.model.S3Exception;
import software.amazon.awssdk.services.s3.model.S3Object;

/** The test servers are real: S3Proxy speaks S3 with signatures, the heartbeat receiver speaks HTTP. */
class S3ServerTest {

    @Test
    void putGetListThroughRealS3Proxy() {
        S3Server server = S3Server.shared();
        String bucket = server.newBucket();
        try (S3Client s3 = server.client()) {
            s3.putObject(b -> b.bucket(bucket).key("gastown/town1/manifest.json"), RequestBody.fromString("{\"v\":1}"));
            s3.putObject(b -> b.bucket(bucket).key("gastown/town1/files.tar.zst"), RequestBody.fromBytes(new byte[70_000]));
            s3.putObject(b -> b.bucket(bucket).key("gastown/town2/manifest.json"), RequestBody.fromString("{}"));

            List<String> keys = s3.listObjectsV2(b -> b.bucket(bucket).prefix("gastown/town1/")).contents().stream()
                    .map(S3Object::key).toList();
            assertEquals(List.of("gastown/town1/files.tar.zst", "gastown/town1/manifest.json"), keys);
            assertEquals("{\"v\":1}", s3.getObjectAsBytes(b -> b.bucket(bucket).key("gastown/town1/manifest.json"))
                    .asUtf8String());
            S3Exception missing = assertThrows(S3Exception.class,
                    () -> s3.headObject(b -> b.bucket(bucket).key("gastown/town1/nope")));
            assertEquals(404, missing.statusCode());
        }
        // The filesystem blob store keeps one directory per bucket: the data really went to disk.
        assertTrue(Files.isRegularFile(server.bucketDir(bucket).resolve("gastown/town1/manifest.json")));
    }

    @Test
    void wrongSecretIsRejected() {
        S3Server server = S3Server.shared();
        String bucket = server.newBucket();
        try (S3Client bad = S3Client.builder()
                .endpointOverride(URI.create(server.endpoint()))
                .region(Region.of("auto"))
                .forcePathStyle(true)
                .credentialsProvider(StaticCredentialsProvider.create(
                        AwsBasicCredentials.create(server.accessKey(), "wrong-" + server.secretKey())))
                .build()) {
            S3Exception e = assertThrows(S3Exception.class, () -> bad.listObjectsV2(b -> b.bucket(bucket)));
            assertEquals(403, e.statusCode());
        }
    }

    @Test
    void heartbeatReceiverRecordsPostWithBodyAndBearerToken() throws Exception {
        try (HeartbeatReceiver receiver = new HeartbeatReceiver()) {
            HttpClient http = HttpClient.newHttpClient();
            HttpRequest post = HttpRequest.newBuilder(URI.create(receiver.baseUrl() + "/api/towns/t1/heartbeat"))
                    .header("Authorization", "Bearer tok-123")
                    .header("Content-Type", "application/json")
                    .POST(HttpRequest.BodyPublishers.ofString("{\"status\":\"ok\"}"))
                    .build();
            assertEquals(200, http.send(post, HttpResponse.BodyHandlers.ofString()).statusCode());

            HeartbeatReceiver.Request r = receiver.awaitRequests(1, Duration.ofSeconds(5)).get(0);
            assertEquals("POST", r.method());
            assertEquals("/api/towns/t1/heartbeat", r.path());
            assertEquals("Bearer tok-123", r.header("Authorization"));
            assertEquals("{\"status\":\"ok\"}", r.body());

            receiver.respondWith(503); // a failing API
            assertEquals(503, http.send(post, HttpResponse.BodyHandlers.ofString()).statusCode());
            assertEquals(2, receiver.awaitRequests(2, Duration.ofSeconds(5)).size());
        }
    }
}

import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestInstance;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.*;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.*;

/**
 * Sealed backups (R2_ENCRYPTION_KEY): what an attacker with the bucket sees and can do, and what the operator sees of a
 * wrong or missing key, a rotation and the first sealed sync over an unsealed bucket. Real town, real S3 server.
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class SealedBackupTest {
    private static final String TOWN = "town-sealed";
    private static final String KEY = Base64.getEncoder().encodeToString("the town's key, 32 bytes long!!!".getBytes(StandardCharsets.US_ASCII));
    private static final String OTHER_KEY = Base64.getEncoder().encodeToString("another key, also 32 bytes long!".getBytes(StandardCharsets.US_ASCII));
    private static final String MARKER = "a-secret-only-the-town-knows-7f3a9c";
    private final S3Server s3 = S3Server.shared();
    private TestTown town;
    private Path dir;
    private TownState before;
    /** A bucket holding one sealed snapshot of the town, never modified (tests copy it to change it). */
    private String sealed;

    @BeforeAll
    void syncTown() throws IOException {
        dir = TestTools.tempDir("sealed-test-");
        town = TownBuilder.create().rigs("alpha").build(dir);
        Files.writeString(town.root().resolve("alpha/mayor/rig/notes.txt"), MARKER + "\n");   // an agent's uncommitted work
        Files.writeString(town.root().resolve("mayor/secret.env"), "TOKEN=" + MARKER + "\n");
        sealed = s3.newBucket();
        product(sealed, town.root(), KEY).sync("--immediate").assertOk();
        before = TownState.capture(town.root());
    }

    @AfterAll
    void cleanUp() {
        TestTools.deleteRecursively(dir);
    }

    private Product product(String bucket, Path root, String key) {
        return Product.of(root, s3, bucket, TOWN).with("R2_ENCRYPTION_KEY", key);
    }

    private BucketView view(String bucket) {
        return BucketView.of(s3, bucket, TOWN);
    }

    private String copyOf(String source) {
        String bucket = s3.newBucket();
        BucketView from = view(source);
        BucketView to = view(bucket);
        for (String key : from.keys("")) to.put(key, from.get(key));
        return bucket;
    }

    private static Path emptyVolume() {
        try {
            return Files.createDirectories(TestTools.tempDir("volume-").resolve("data"));
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    /** The sha256 of every regular file of the town (what an unsealed bucket would name its objects by). */
    private Set<String> contentHashes() throws IOException {
        Set<String> hashes = new HashSet<>();
        try (Stream<Path> s = Files.walk(town.root())) {
            for (Path p : s.filter(Files::isRegularFile).toList()) hashes.add(Sha256.of(Files.readAllBytes(p)));
        }
        return hashes;
    }

    @Test
    void theBucketHoldsNoPlainByteOfTheTownAndNoNameOfItsContent() throws IOException {
        BucketView v = view(sealed);
        Set<String> hashes = contentHashes();
        byte[] marker = MARKER.getBytes(StandardCharsets.UTF_8);
        List<String> keys = v.keys("");
        assertTrue(keys.size() > 5, keys.toString());
        for (String key : keys) {
            byte[] data = v.get(key);
            assertEquals(-1, indexOf(data, marker), key + " holds the marker in plain");
            assertEquals(-1, indexOf(data, "alpha".getBytes(StandardCharsets.UTF_8)), key + " holds a rig's name in plain");
            for (String part : key.split("/")) assertFalse(hashes.contains(part), key + " is named by the sha256 of a town file");
            assertFalse(key.contains("alpha") || key.contains(".dolt") || key.contains("git/"), key + " names a path of the town");
        }
        // latest.json and the manifest are sealed too: not JSON to anyone without the key.
        assertThrows(R2Exception.class, () -> R2Common.fromJson(v.get(v.keys().latest()), Pointer.class, "latest.json"));

        // With the key, on a new machine, the town comes back as it was.
        Path volume = emptyVolume();
        product(copyOf(sealed), volume, KEY).onNewMachine().restore().assertOk();
        TownState.assertSame(before, TownState.capture(volume));
        assertEquals(MARKER + "\n", Files.readString(volume.resolve("alpha/mayor/rig/notes.txt")));
    }

    @Test
    void aByteChangedInAnyObjectIsRefusedNamingIt() {
        BucketView v = view(sealed);
        String pointer = v.keys().latest();
        String manifest = v.keys().object(latestTimestamp(v), Keys.MANIFEST);
        String pack = v.keys(v.keys().objects()).stream().max(Comparator.comparing(k -> v.get(k).length)).orElseThrow();
        for (String culprit : List.of(pointer, manifest, pack)) {
            String bucket = copyOf(sealed);
            byte[] data = view(bucket).get(culprit);
            data[data.length / 2] ^= 1;
            view(bucket).put(culprit, data);
            Path volume = emptyVolume();
            TestTools.ProcResult r = product(bucket, volume, KEY).restore();
            assertEquals(1, r.exitCode(), culprit + ": " + r.stderr());
            assertTrue(r.stderr().contains(culprit + " fails authentication"), culprit + " is named:\n" + r.stderr());
            assertFalse(Files.exists(volume.resolve("mayor/town.json")), "nothing restored from a tampered snapshot");
        }
    }

    @Test
    void aWrongOrMissingKeyIsAConfigurationErrorInOneLine() {
        for (String key : new String[] {OTHER_KEY, ""}) {
            Path volume = emptyVolume();
            TestTools.ProcResult r = product(copyOf(sealed), volume, key).restore();
            assertEquals(2, r.exitCode(), r.stderr());
            List<String> errors = r.stderr().lines().filter(l -> l.contains(" ERROR ")).toList();
            assertEquals(1, errors.size(), r.stderr());
            assertTrue(errors.get(0).contains("latest.json is sealed with key") && errors.get(0).contains("R2_ENCRYPTION_KEY"), errors.get(0));
            assertFalse(r.stderr().contains(KEY) || (!key.isEmpty() && r.stderr().contains(key)), "no key is printed");
            assertFalse(Files.exists(volume.resolve("mayor/town.json")), "the volume is untouched");
        }
        // A sync with the wrong key publishes nothing over the sealed snapshots.
        String bucket = copyOf(sealed);
        String latest = latestTimestamp(view(bucket));
        TestTools.ProcResult sync = product(bucket, town.root(), OTHER_KEY).sync("--immediate");
        assertEquals(2, sync.exitCode(), sync.stderr());
        assertEquals(latest, latestTimestamp(view(bucket)));
    }

    @Test
    void aPlantedUnsealedSnapshotIsRefused() {
        // Whoever can write the bucket (without the key) plants a snapshot of their own, made by this very tool unsealed.
        String planted = s3.newBucket();
        Product.of(town.root(), s3, planted, TOWN).sync("--immediate").assertOk();
        String bucket = copyOf(sealed);
        BucketView from = view(planted);
        BucketView to = view(bucket);
        for (String key : from.keys("")) to.put(key, from.get(key));   // latest.json replaced, its snapshot and objects added
        Path volume = emptyVolume();
        TestTools.ProcResult r = product(bucket, volume, KEY).restore();
        assertEquals(1, r.exitCode(), r.stderr());
        assertTrue(r.stderr().contains("latest.json is not sealed, but town " + TOWN + "'s backups are"), r.stderr());
        assertFalse(Files.exists(volume.resolve("mayor/town.json")), "the planted town is not restored");
    }

    @Test
    void aRotatedKeyKeepsTheOlderSnapshotsRestorableFromTheKeyring() throws IOException {
        String bucket = copyOf(sealed);
        String old = latestTimestamp(view(bucket));
        Path root = emptyVolume();
        product(bucket, root, KEY).restore().assertOk();
        Files.writeString(root.resolve("mayor/after-rotation.txt"), "new\n");
        TownState rotatedTown = TownState.capture(root);
        Product rotated = product(bucket, root, OTHER_KEY).with("R2_ENCRYPTION_KEYRING", KEY);
        TestTools.ProcResult sync = rotated.sync("--immediate").assertOk();
        assertTrue(sync.stderr().contains("stores every object anew"), sync.stderr());
        String now = latestTimestamp(view(bucket));
        assertNotEquals(old, now);
        String oldKey = Seal.of(TOWN, KEY, "key").id();
        String newKey = Seal.of(TOWN, OTHER_KEY, "key").id();
        assertEquals(newKey, manifest(bucket, now).keyId(), "new objects are sealed with the new key");

        // --list says which key each snapshot needs.
        String list = rotated.restore("--list").assertOk().stdout();
        assertTrue(list.lines().anyMatch(l -> l.startsWith(old) && l.contains(oldKey)), list);
        assertTrue(list.lines().anyMatch(l -> l.startsWith(now) && l.contains(newKey)), list);

        // The older snapshot restores with the keyring, the newer with the new key.
        Path volume = emptyVolume();
        rotated.with("GT_TOWN_ROOT", volume.toString()).restore("--snapshot", old).assertOk();
        TownState.assertSame(before, TownState.capture(volume));
        Path latest = emptyVolume();
        product(bucket, latest, OTHER_KEY).restore().assertOk();
        TownState.assertSame(rotatedTown, TownState.capture(latest));
        // Without the old key in the keyring, the older snapshot is refused by name: exit 2.
        TestTools.ProcResult r = product(bucket, emptyVolume(), OTHER_KEY).restore("--snapshot", old);
        assertEquals(2, r.exitCode(), r.stderr());
        assertTrue(r.stderr().contains("is sealed with key " + oldKey), r.stderr());
    }

    @Test
    void theFirstSyncWithAKeyOverAnUnsealedBucketSealsAndKeepsTheOlderSnapshots() {
        String bucket = s3.newBucket();
        Path root = emptyVolume();
        product(copyOf(sealed), root, KEY).restore().assertOk();
        Product unsealed = Product.of(root, s3, bucket, TOWN);
        unsealed.sync("--immediate").assertOk();
        String before = view(bucket).latest().orElseThrow().timestamp();
        assertNull(view(bucket).manifest(before).keyId(), "no key: unsealed");

        Product keyed = product(bucket, root, KEY);
        keyed.sync("--immediate").assertOk();
        String after = latestTimestamp(view(bucket));
        assertNotEquals(before, after);
        assertEquals(Seal.of(TOWN, KEY, "key").id(), manifest(bucket, after).keyId());
        assertTrue(view(bucket).manifestExists(before), "the unsealed snapshot stays until the history policy retires it");
        String list = keyed.restore("--list").assertOk().stdout();
        assertTrue(list.lines().anyMatch(l -> l.startsWith(before) && l.contains("unsealed")), list);
        Path volume = emptyVolume();
        keyed.with("GT_TOWN_ROOT", volume.toString()).restore().assertOk();
        TownState.assertSame(TownState.capture(root), TownState.capture(volume));
    }

    @Test
    void theDaemonsVerificationReadsSealedObjectsBack() throws Exception {
        String bucket = copyOf(sealed);
        Product p = product(bucket, town.root(), KEY).with("R2_VERIFY_EVERY", "2s");
        Path last = p.stateDir().resolve(Verification.LAST);
        try (Product.Started daemon = p.start("R2Sync", "--interval", "1s")) {
            assertTrue(TestTools.await(() -> Files.isRegularFile(last), Duration.ofSeconds(120), 200), daemon.output());
            var result = R2Common.JSON.readTree(Files.readString(last));
            assertEquals("ok", result.path("status").asText(), result + "\n" + daemon.output());
            assertTrue(result.path("objectsRead").asLong() > 0, "a share of the sealed objects was opened and read back: " + result);
        }
    }

    /** A sealed object opened with the key its header names (of KEY and OTHER_KEY), as the product would. */
    private static byte[] open(BucketView v, String key) {
        byte[] data = v.get(key);
        String id = Seal.keyIdOf(data);
        if (id == null) return data;
        for (String k : List.of(KEY, OTHER_KEY)) {
            Seal seal = Seal.of(TOWN, k, "key");
            if (!seal.id().equals(id)) continue;
            try (java.io.InputStream in = seal.opening(new java.io.ByteArrayInputStream(data, Seal.HEADER, data.length - Seal.HEADER), key)) {
                return in.readAllBytes();
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
        }
        throw new AssertionError(key + " is sealed with a key this test does not know: " + id);
    }

    private static String latestTimestamp(BucketView v) {
        return R2Common.fromJson(open(v, v.keys().latest()), Pointer.class, "latest.json").timestamp();
    }

    private Manifest manifest(String bucket, String timestamp) {
        BucketView v = view(bucket);
        return R2Common.fromJson(open(v, v.keys().object(timestamp, Keys.MANIFEST)), Manifest.class, "manifest");
    }

    private static int indexOf(byte[] data, byte[] part) {
        outer:
        for (int i = 0; i + part.length <= data.length; i++) {
            for (int j = 0; j < part.length; j++) if (data[i + j] != part[j]) continue outer;
            return i;
        }
        return -1;
    }
}

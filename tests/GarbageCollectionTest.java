import org.junit.jupiter.api.Test;

import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.FileTime;
import java.time.Duration;
import java.time.Instant;
import java.util.*;
import java.util.stream.Collectors;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.*;

/**
 * Which snapshots the history policy keeps, and garbage collection of the objects none of them uses: an
 * object goes only when no kept snapshot names it and it is older than the grace period (objects are aged
 * by setting the mtime S3Proxy's filesystem store reports as LastModified).
 */
class GarbageCollectionTest {
    private final S3Server s3 = S3Server.shared();

    @Test
    void thePolicyKeepsTheLastNAndTheNewestOfEachHourAndDay() {
        List<String> timestamps = List.of(
                "20261130T090000Z", "20261130T230000Z",                        // two on the 30th
                "20261201T100000Z", "20261201T100500Z",                        // two in one hour of the 1st
                "20261202T070000Z", "20261202T080000Z", "20261202T080500Z", "20261202T081000Z");
        Map<String, String> kept = Retention.keep(new HistoryPolicy(2, 3, 3), timestamps);
        assertEquals(Map.of(
                "20261202T081000Z", "last, hourly, daily",
                "20261202T080500Z", "last",
                "20261202T070000Z", "hourly",
                "20261201T100500Z", "hourly, daily",
                "20261130T230000Z", "daily"), kept);
        assertEquals(Set.of("20261202T081000Z"), Retention.keep(new HistoryPolicy(1, 0, 0), timestamps).keySet());
    }

    @Test
    void datedByTheStoreAFloodUnderMadeUpNamesTakesOneHourAndOneDay() {
        // r2-prune dates each snapshot by when the store received its manifest: ten made in one minute, named three
        // days ahead one hour apart, count for that one minute's hour and day.
        Map<String, Instant> received = new HashMap<>();
        received.put("20261201T100000Z", Instant.parse("2026-12-01T10:00:05Z"));
        received.put("20261202T090000Z", Instant.parse("2026-12-02T09:00:05Z"));
        for (int i = 0; i < 10; i++)
            received.put(Keys.format(Instant.parse("2026-12-05T00:00:00Z").plus(Duration.ofHours(i))), Instant.parse("2026-12-02T12:00:00Z"));
        HistoryPolicy policy = new HistoryPolicy(1, 2, 2);
        assertEquals(Map.of(
                "20261205T090000Z", "last, hourly, daily",
                "20261202T090000Z", "hourly",
                "20261201T100000Z", "daily"), Retention.keep(policy, received));
        // By their names the flood takes both hourly places, and the day before drops out.
        assertEquals(Set.of("20261205T090000Z", "20261205T080000Z", "20261202T090000Z"), Retention.keep(policy, received.keySet()).keySet());
    }

    @Test
    void anObjectGoesOnlyWhenNoKeptSnapshotUsesItAndItIsOlderThanTheGracePeriod() throws Exception {
        Path dir = TestTools.tempDir("gc-");
        TestTown town = TownBuilder.create().rigs("alpha").build(dir.resolve("town-dir"));
        String bucket = s3.newBucket();
        BucketView view = BucketView.of(s3, bucket, "town-gc");
        Product p = Product.of(town.root(), s3, bucket, "town-gc")
                .with("R2_KEEP_SNAPSHOTS", "1").with("R2_KEEP_HOURLY", "0").with("R2_KEEP_DAILY", "0");
        p.sync("--immediate").assertOk();
        Manifest first = view.manifest(view.latest().orElseThrow().timestamp());
        Files.writeString(town.root().resolve("settings/gc-note"), "a change\n");
        TestTools.ProcResult second = p.sync("--immediate").assertOk();
        Manifest kept = view.manifest(view.latest().orElseThrow().timestamp());
        assertEquals(List.of(kept.timestamp()), view.completeSnapshots(), "--keep 1: the first snapshot is gone");
        Set<String> onlyFirst = keys(view, first);
        onlyFirst.removeAll(keys(view, kept));
        assertFalse(onlyFirst.isEmpty(), "the change replaced the first snapshot's pack and index");
        // Young: a sync still uploading may be about to use such an object, so it stays.
        assertTrue(second.stderr().contains("unused but younger than 6h kept"), second.stderr());
        assertTrue(view.keys(view.keys().objects()).containsAll(onlyFirst));

        // Seven hours later (every object aged), one unused object is young: another machine's upload in flight.
        Path store = s3.bucketDir(bucket);
        try (Stream<Path> files = Files.walk(store.resolve(view.keys().objects()))) {
            for (Path f : files.filter(Files::isRegularFile).toList())
                Files.setLastModifiedTime(f, FileTime.from(Instant.now().minus(Duration.ofHours(7))));
        }
        byte[] inFlight = "an object of a sync that has not published yet".getBytes();
        String inFlightKey = view.keys().object(new FileEntry("files/in-flight.tar", inFlight.length, Sha256.of(inFlight)));
        view.put(inFlightKey, inFlight);
        TestTools.ProcResult third = p.sync("--immediate").assertOk();
        assertTrue(third.stderr().matches("(?s).*garbage collection removed [1-9]\\d* unused object.*"), third.stderr());
        List<String> stored = view.keys(view.keys().objects());
        for (String key : onlyFirst) assertFalse(stored.contains(key), key + " is unused and old: deleted");
        assertTrue(stored.contains(inFlightKey), "a young unused object is kept");
        Manifest latest = view.manifest(view.latest().orElseThrow().timestamp());
        assertTrue(stored.containsAll(keys(view, latest)), "everything the kept snapshot names is there, however old");

        Path volume = Files.createDirectories(dir.resolve("restored"));
        Product.of(volume, s3, bucket, "town-gc").onNewMachine().restore().assertOk();
        TownState.assertSame(TownState.capture(town.root()), TownState.capture(volume));
        TestTools.deleteRecursively(dir);
    }

    private static Set<String> keys(BucketView view, Manifest m) {
        return m.objects().stream().map(o -> view.keys().object(o)).collect(Collectors.toCollection(TreeSet::new));
    }
}

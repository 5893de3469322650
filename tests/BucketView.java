import software.amazon.awssdk.core.ResponseBytes;
import software.amazon.awssdk.services.s3.S3Client;
import software.amazon.awssdk.services.s3.model.NoSuchKeyException;
import software.amazon.awssdk.services.s3.model.S3Object;

import java.io.IOException;
import java.io.OutputStream;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Optional;
import java.util.TreeSet;
import java.util.stream.Collectors;

/**
 * What a bucket holds for one town, read with an independent S3 client (not the product's store code),
 * in the product's vocabulary: latest.json as a Pointer, manifests as Manifest records.
 */
record BucketView(S3Client s3, String bucket, String townId) {

    static BucketView of(S3Server server, String bucket, String townId) {
        return new BucketView(server.client(), bucket, townId);
    }

    Keys keys() {
        return new Keys(townId);
    }

    Optional<byte[]> find(String key) {
        try {
            ResponseBytes<?> bytes = s3.getObjectAsBytes(b -> b.bucket(bucket).key(key));
            return Optional.of(bytes.asByteArray());
        } catch (NoSuchKeyException e) {
            return Optional.empty();
        }
    }

    byte[] get(String key) {
        return find(key).orElseThrow(() -> new AssertionError("missing object " + key));
    }

    void put(String key, byte[] data) {
        s3.putObject(b -> b.bucket(bucket).key(key), software.amazon.awssdk.core.sync.RequestBody.fromBytes(data));
    }

    void delete(String key) {
        s3.deleteObject(b -> b.bucket(bucket).key(key));
    }

    /** Every object's size under the prefix, by key. */
    java.util.SortedMap<String, Long> sizes(String prefix) {
        java.util.SortedMap<String, Long> sizes = new java.util.TreeMap<>();
        s3.listObjectsV2Paginator(b -> b.bucket(bucket).prefix(prefix)).contents().forEach(o -> sizes.put(o.key(), o.size()));
        return sizes;
    }

    /** Every key under the town's prefix (or the whole bucket with ""), sorted. */
    List<String> keys(String prefix) {
        return s3.listObjectsV2Paginator(b -> b.bucket(bucket).prefix(prefix)).contents().stream()
                .map(S3Object::key).sorted().collect(Collectors.toList());
    }

    Optional<Pointer> latest() {
        return find(keys().latest()).map(b -> R2Common.fromJson(b, Pointer.class, "latest.json"));
    }

    Manifest manifest(String timestamp) {
        return R2Common.fromJson(get(keys().object(timestamp, Keys.MANIFEST)), Manifest.class, "manifest " + timestamp);
    }

    boolean manifestExists(String timestamp) {
        return find(keys().object(timestamp, Keys.MANIFEST)).isPresent();
    }

    /** Timestamps of every snapshot prefix, complete or not, oldest first. */
    List<String> prefixes() {
        return keys(keys().snapshots()).stream().map(k -> keys().timestampOf(k))
                .collect(Collectors.toCollection(TreeSet::new)).stream().collect(Collectors.toList());
    }

    /** Timestamps of snapshots that have a manifest, oldest first. */
    List<String> completeSnapshots() {
        return prefixes().stream().filter(ts -> find(keys().object(ts, Keys.MANIFEST)).isPresent()).collect(Collectors.toList());
    }

    /** The object a snapshot's file lives in (under incremental/, shared with other snapshots); its first piece if in pieces. */
    String objectKey(String timestamp, String path) {
        return objectKeys(timestamp, path).get(0);
    }

    /** The objects a snapshot's file lives in: itself, or its pieces in order. */
    List<String> objectKeys(String timestamp, String path) {
        FileEntry f = manifest(timestamp).file(path).orElseThrow(() -> new AssertionError(timestamp + " has no file " + path));
        return f.parts().stream().map(p -> keys().object(p.object())).collect(Collectors.toList());
    }

    /** Downloads a snapshot file to dir/<path>. */
    Path download(String timestamp, String path, Path dir) {
        Path target = dir.resolve(path);
        try {
            Files.createDirectories(target.getParent());
            try (OutputStream out = Files.newOutputStream(target)) {
                for (String key : objectKeys(timestamp, path)) out.write(get(key));
            }
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        return target;
    }

    /** Downloads every file of a snapshot dir (a database's backup) to dir/<prefix>/. */
    Path downloadDir(String timestamp, String prefix, Path dir) {
        for (FileEntry f : manifest(timestamp).filesUnder(prefix)) download(timestamp, f.path(), dir);
        return dir.resolve(prefix);
    }

    /** Every town path the snapshot's file index names (what its packs hold for it). */
    List<String> packedPaths(String timestamp, Path scratch) {
        return indexEntries(timestamp, scratch).stream().map(TownEntry::path).collect(Collectors.toList());
    }

    /** Every entry of the snapshot's file index, in order. */
    List<TownEntry> indexEntries(String timestamp, Path scratch) {
        List<Path> pieces = manifest(timestamp).fileIndex().stream().map(p -> download(timestamp, p, scratch)).collect(Collectors.toList());
        List<TownEntry> entries = new java.util.ArrayList<>();
        try (IndexReader index = IndexReader.index(pieces)) {
            for (TownEntry e; (e = index.next()) != null; ) entries.add(e);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        return entries;
    }
}

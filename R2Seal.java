// Sealing (part of R2Common, included with //SOURCES): with a town key set (R2_ENCRYPTION_KEY), every object a backup
// stores is encrypted and authenticated with it, and objects are named by a keyed hash of their content, so the bucket
// says nothing of what the town holds and nobody without the key can plant a snapshot the town would restore.
//   Keyring   the key new objects are sealed with (R2_ENCRYPTION_KEY) and older keys still read (R2_ENCRYPTION_KEYRING)
//   Seal      one key: its id, the name of a content, and an object sealed and opened as a stream
//
// The cryptography is Google Tink's, never our own: AES-256-GCM-HKDF streaming AEAD (1 MiB segments, so an object of
// any size streams with flat memory), with the object's key in the bucket as associated data (an object copied under
// another name, or another town's, fails to open). The subkeys come from the operator's key by HKDF-SHA256; object
// names are HMAC-SHA256 of the content's sha256. A sealed object starts with MAGIC and the id of the key that sealed
// it, so a reader picks the key from the keyring, and an unsealed object (written before the town had a key) is told
// from a sealed one.

import com.google.crypto.tink.subtle.AesGcmHkdfStreaming;
import com.google.crypto.tink.subtle.Hkdf;

import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;
import java.io.*;
import java.nio.charset.StandardCharsets;
import java.security.GeneralSecurityException;
import java.util.*;
import java.util.concurrent.ConcurrentHashMap;

/** The town's keys: the current one seals, every one opens. Null from of() when the town has no key. */
final class Keyring {
    private static final Map<String, Keyring> OPENED = new ConcurrentHashMap<>();
    private final Seal current;
    private final Map<String, Seal> byId = new LinkedHashMap<>();

    private Keyring(String townId, String key, List<String> older) {
        current = Seal.of(townId, key, "R2_ENCRYPTION_KEY");
        byId.put(current.id(), current);
        for (String k : older) {
            Seal s = Seal.of(townId, k, "R2_ENCRYPTION_KEYRING");
            byId.putIfAbsent(s.id(), s);
        }
    }

    /** The keyring of the config's town, made once per process; null when no key is set (backups are then unsealed). */
    static Keyring of(Config config) {
        if (config.encryptionKey() == null) {
            if (!config.olderKeys().isEmpty())
                throw R2Options.usage("R2_ENCRYPTION_KEYRING is set but R2_ENCRYPTION_KEY is not: the current key seals, the keyring only opens");
            return null;
        }
        return OPENED.computeIfAbsent(config.townId() + "\n" + config.encryptionKey() + "\n" + String.join(",", config.olderKeys()),
                k -> new Keyring(config.townId(), config.encryptionKey(), config.olderKeys()));
    }

    Seal current() {
        return current;
    }

    Set<String> ids() {
        return byId.keySet();
    }

    /** The key with this id; one the keyring lacks is a configuration error (exit 2), said with what to set. */
    Seal byId(String id, String what) {
        Seal s = byId.get(id);
        if (s == null)
            throw new R2Exception(R2Common.EXIT_USAGE, what + " is sealed with key " + id + ", which neither R2_ENCRYPTION_KEY (key "
                    + current.id() + ") nor R2_ENCRYPTION_KEYRING holds: set the town's key (a rotated-out key goes into R2_ENCRYPTION_KEYRING)");
        return s;
    }
}

/** One key of a town. */
final class Seal {
    static final byte[] MAGIC = "GTR2SEAL".getBytes(StandardCharsets.US_ASCII);
    static final int ID_BYTES = 8;
    static final int HEADER = MAGIC.length + ID_BYTES;
    private static final int SEGMENT = 1 << 20;

    private final String id;
    private final AesGcmHkdfStreaming aead;
    private final byte[] nameKey;

    private Seal(String id, AesGcmHkdfStreaming aead, byte[] nameKey) {
        this.id = id;
        this.aead = aead;
        this.nameKey = nameKey;
    }

    /** A key as the operator provisions it: 32 random bytes in base64 (`openssl rand -base64 32`). */
    static Seal of(String townId, String base64, String setting) {
        byte[] key;
        try {
            key = Base64.getDecoder().decode(base64.trim());
        } catch (IllegalArgumentException e) {
            throw R2Options.usage(setting + " is not base64 (make a key with: openssl rand -base64 32)");
        }
        if (key.length != 32) throw R2Options.usage(setting + " must be 32 bytes in base64, not " + key.length + " (openssl rand -base64 32)");
        try {
            byte[] salt = ("gastown-r2 town " + townId).getBytes(StandardCharsets.UTF_8);
            byte[] id = Hkdf.computeHkdf("HMACSHA256", key, salt, "gastown-r2 key id".getBytes(StandardCharsets.UTF_8), ID_BYTES);
            byte[] objects = Hkdf.computeHkdf("HMACSHA256", key, salt, "gastown-r2 objects".getBytes(StandardCharsets.UTF_8), 32);
            byte[] names = Hkdf.computeHkdf("HMACSHA256", key, salt, "gastown-r2 names".getBytes(StandardCharsets.UTF_8), 32);
            return new Seal(HexFormat.of().formatHex(id), new AesGcmHkdfStreaming(objects, "HmacSha256", 32, SEGMENT, 0), names);
        } catch (GeneralSecurityException e) {
            throw new IllegalStateException("this JVM lacks AES-GCM or HMAC-SHA256: " + e, e);
        }
    }

    String id() {
        return id;
    }

    /** The name of a content in the bucket: HMAC-SHA256 of its sha256, so equal contents share it and nothing else shows. */
    String name(String sha256) {
        try {
            Mac mac = Mac.getInstance("HmacSHA256");
            mac.init(new SecretKeySpec(nameKey, "HmacSHA256"));
            return HexFormat.of().formatHex(mac.doFinal(sha256.getBytes(StandardCharsets.US_ASCII)));
        } catch (GeneralSecurityException e) {
            throw new IllegalStateException(e);
        }
    }

    /** The size of a plain object of plainSize bytes once sealed. */
    long sealedSize(long plainSize) {
        return HEADER + aead.expectedCiphertextSize(plainSize);
    }

    /** Writes the header, then returns the stream that seals what is written to it into out (close it to finish). */
    OutputStream sealing(OutputStream out, String objectKey) throws IOException {
        out.write(MAGIC);
        out.write(HexFormat.of().parseHex(id));
        try {
            return aead.newEncryptingStream(out, objectKey.getBytes(StandardCharsets.UTF_8));
        } catch (GeneralSecurityException e) {
            throw new IOException("cannot seal " + objectKey + ": " + e.getMessage(), e);
        }
    }

    /** Opens a sealed stream whose header was read already; a byte changed anywhere makes a read fail (Opened). */
    InputStream opening(InputStream sealedBody, String objectKey) throws IOException {
        try {
            return new Opened(aead.newDecryptingStream(sealedBody, objectKey.getBytes(StandardCharsets.UTF_8)), objectKey);
        } catch (GeneralSecurityException e) {
            throw new Tampered(objectKey, e);
        }
    }

    byte[] seal(byte[] plain, String objectKey) {
        ByteArrayOutputStream out = new ByteArrayOutputStream(plain.length + 64);
        try (OutputStream s = sealing(out, objectKey)) {
            s.write(plain);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        return out.toByteArray();
    }

    /** The key id a sealed object names in its header, or null when the bytes are not sealed (an object from before). */
    static String keyIdOf(byte[] head) {
        if (head.length < HEADER || !Arrays.equals(head, 0, MAGIC.length, MAGIC, 0, MAGIC.length)) return null;
        return HexFormat.of().formatHex(head, MAGIC.length, HEADER);
    }

    /** A sealed object that fails to open: changed after it was sealed, or sealed under another name or town. */
    static final class Tampered extends IOException {
        Tampered(String objectKey, Exception cause) {
            super(objectKey + " fails authentication: it was changed, or was not sealed by this town's backup with its key ("
                    + cause.getMessage() + ")", cause);
        }
    }

    /** A decrypting stream whose failures say which object failed and why (Tink's say "Tag mismatch"). */
    private static final class Opened extends FilterInputStream {
        private final String objectKey;

        Opened(InputStream in, String objectKey) {
            super(in);
            this.objectKey = objectKey;
        }

        @Override
        public int read() throws IOException {
            byte[] one = new byte[1];
            return read(one, 0, 1) < 0 ? -1 : one[0] & 0xff;
        }

        @Override
        public int read(byte[] b, int off, int len) throws IOException {
            try {
                return in.read(b, off, len);
            } catch (IOException e) {
                throw new Tampered(objectKey, e);
            }
        }
    }
}

import com.github.luben.zstd.Zstd;

import java.io.ByteArrayOutputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;

/**
 * A file index piece that says what a well-behaved sync never would: the entries of a real snapshot's index plus
 * hostile ones, written as raw bytes in the index's wire format (TownEntry.write) without any of its checks, and
 * the pack holding the hostile entries' contents.
 */
final class HostileIndex {
    static final String PACK = "hostile-pack";

    /** An entry as raw fields; content is the bytes that go into the pack (compressed), claimedSize what it says. */
    record Raw(String path, char type, String target, byte[] content, long claimedSize, String sha256, String pack) {}

    static Raw file(String path, String content) {
        return file(path, content.getBytes(StandardCharsets.UTF_8), content.length());
    }

    static Raw file(String path, byte[] content, long claimedSize) {
        return new Raw(path, TownEntry.FILE, null, content, claimedSize, Sha256.of(content), PACK);
    }

    static Raw fileWithSha(String path, String content, String sha256) {
        byte[] data = content.getBytes(StandardCharsets.UTF_8);
        return new Raw(path, TownEntry.FILE, null, data, data.length, sha256, PACK);
    }

    static Raw fileInPack(String path, String pack) {
        return new Raw(path, TownEntry.FILE, null, new byte[1], 1, Sha256.of(new byte[1]), pack);
    }

    static Raw symlink(String path, String target) {
        return new Raw(path, TownEntry.SYMLINK, target, null, 0, null, null);
    }

    static Raw hardLink(String path, String target) {
        return new Raw(path, TownEntry.HARDLINK, target, null, 0, null, null);
    }

    /** An entry of a type the index has no such thing as (a device node 'c' or 'b', a fifo 'p'): its type byte only. */
    static Raw ofType(String path, char type) {
        return new Raw(path, type, null, null, 0, null, null);
    }

    private final byte[] piece;
    private final byte[] pack;

    /** The real entries and the hostile ones, merged in path order (hostile paths replace real ones they equal). */
    HostileIndex(List<TownEntry> real, List<Raw> hostile) {
        try {
            ByteArrayOutputStream packBytes = new ByteArrayOutputStream();
            ByteArrayOutputStream raw = new ByteArrayOutputStream();
            DataOutputStream out = new DataOutputStream(raw);
            out.writeInt(0x47545232);
            out.writeByte(EntryFiles.VERSION);
            List<Raw> left = new ArrayList<>(hostile);
            left.sort((a, b) -> PathOrder.compare(a.path(), b.path()));
            for (TownEntry e : real) {
                while (!left.isEmpty() && PathOrder.compare(left.get(0).path(), e.path()) <= 0) {
                    Raw h = left.remove(0);
                    write(out, h, packBytes);
                    if (h.path().equals(e.path())) e = null;
                    if (e == null) break;
                }
                if (e != null) e.write(out);
            }
            for (Raw h : left) write(out, h, packBytes);
            out.writeUTF("");
            out.flush();
            piece = Zstd.compress(raw.toByteArray(), 3);
            pack = packBytes.toByteArray();
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    byte[] piece() {
        return piece;
    }

    byte[] pack() {
        return pack;
    }

    private static void write(DataOutputStream out, Raw h, ByteArrayOutputStream pack) throws IOException {
        out.writeUTF(h.path());
        out.writeByte(h.type());
        out.writeShort(0644);
        out.writeLong(1_700_000_000_000_000_000L);
        out.writeLong(h.claimedSize());
        out.writeByte(0);
        if (h.type() == TownEntry.FILE) {
            byte[] frame = Zstd.compress(h.content(), 3);
            out.writeBoolean(true);
            out.write(HexFormat.of().parseHex(h.sha256()));
            out.writeUTF(h.pack());
            out.writeLong(pack.size());
            out.writeLong(frame.length);
            pack.write(frame);
        } else if (h.type() == TownEntry.SYMLINK || h.type() == TownEntry.HARDLINK) {
            out.writeBoolean(true);
            out.writeUTF(h.target());
        }
    }
}

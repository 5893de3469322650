import java.io.ByteArrayOutputStream;
import java.nio.charset.StandardCharsets;
import org.apache.commons.compress.archivers.tar.TarArchiveEntry;
import org.apache.commons.compress.archivers.tar.TarConstants;

/**
 * Builds tar archives with hostile entries, header by header, so nothing normalizes them away: names
 * with '..' or a leading '/', symlinks and hard links pointing anywhere, device nodes, fifos, and
 * headers that claim more bytes than follow (a tar bomb). Long names get a GNU long-name entry.
 */
final class HostileTar {
    private final ByteArrayOutputStream out = new ByteArrayOutputStream();
    private final java.util.List<String> names = new java.util.ArrayList<>();

    HostileTar dir(String name) {
        return entry(name, TarConstants.LF_DIR, null, new byte[0], 0755, 0, 0);
    }

    HostileTar file(String name, String content) {
        return entry(name, TarConstants.LF_NORMAL, null, content.getBytes(StandardCharsets.UTF_8), 0644, 0, 0);
    }

    HostileTar symlink(String name, String target) {
        return entry(name, TarConstants.LF_SYMLINK, target, new byte[0], 0777, 0, 0);
    }

    HostileTar hardlink(String name, String target) {
        return entry(name, TarConstants.LF_LINK, target, new byte[0], 0644, 0, 0);
    }

    HostileTar charDevice(String name, int major, int minor) {
        return entry(name, TarConstants.LF_CHR, null, new byte[0], 0666, major, minor);
    }

    HostileTar blockDevice(String name, int major, int minor) {
        return entry(name, TarConstants.LF_BLK, null, new byte[0], 0660, major, minor);
    }

    HostileTar fifo(String name) {
        return entry(name, TarConstants.LF_FIFO, null, new byte[0], 0644, 0, 0);
    }

    /** A regular-file header claiming {@code claimed} bytes, followed by only 4 KiB of zeros. */
    HostileTar bomb(String name, long claimed) {
        names.add(name);
        TarArchiveEntry e = new TarArchiveEntry(name, TarConstants.LF_NORMAL, true);
        e.setSize(claimed);
        e.setMode(0100644);
        e.setModTime(0);
        header(e);
        out.writeBytes(new byte[4096]);
        return this;
    }

    /** The archive with its end-of-archive blocks. */
    byte[] bytes() {
        ByteArrayOutputStream copy = new ByteArrayOutputStream();
        copy.writeBytes(out.toByteArray());
        copy.writeBytes(new byte[1024]);
        return copy.toByteArray();
    }

    /** The entry names in the order written (a file index that names them makes a restore read them). */
    java.util.List<String> names() {
        return java.util.List.copyOf(names);
    }

    private HostileTar entry(String name, byte flag, String link, byte[] data, int perm, int major, int minor) {
        names.add(name);
        if (name.getBytes(StandardCharsets.UTF_8).length > 99) longName(TarConstants.LF_GNUTYPE_LONGNAME, name);
        if (link != null && link.getBytes(StandardCharsets.UTF_8).length > 99) longName(TarConstants.LF_GNUTYPE_LONGLINK, link);
        TarArchiveEntry e = new TarArchiveEntry(truncate(name), flag, true);
        if (link != null) e.setLinkName(truncate(link));
        e.setSize(data.length);
        e.setMode(modeBits(flag) | perm);
        e.setModTime(0);
        if (flag == TarConstants.LF_CHR || flag == TarConstants.LF_BLK) {
            e.setDevMajor(major);
            e.setDevMinor(minor);
        }
        header(e);
        out.writeBytes(data);
        pad(data.length);
        return this;
    }

    private void longName(byte flag, String name) {
        byte[] data = (name + "\0").getBytes(StandardCharsets.UTF_8);
        TarArchiveEntry e = new TarArchiveEntry("././@LongLink", flag, true);
        e.setSize(data.length);
        header(e);
        out.writeBytes(data);
        pad(data.length);
    }

    private void header(TarArchiveEntry e) {
        byte[] block = new byte[512];
        e.writeEntryHeader(block);
        out.writeBytes(block);
    }

    private void pad(int length) {
        int rest = length % 512;
        if (rest != 0) out.writeBytes(new byte[512 - rest]);
    }

    private static String truncate(String s) {
        byte[] b = s.getBytes(StandardCharsets.UTF_8);
        return b.length <= 99 ? s : new String(b, 0, 99, StandardCharsets.UTF_8);
    }

    private static int modeBits(byte flag) {
        return switch (flag) {
            case TarConstants.LF_DIR -> 040000;
            case TarConstants.LF_SYMLINK -> 0120000;
            case TarConstants.LF_CHR -> 020000;
            case TarConstants.LF_BLK -> 060000;
            case TarConstants.LF_FIFO -> 010000;
            default -> 0100000;
        };
    }
}

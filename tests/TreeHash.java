import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.List;
import java.util.stream.Collectors;
import java.util.stream.Stream;

/**
 * A fingerprint of every entry under a directory (path, type, mode, mtime, size, content hash, link
 * target), to prove a tool left a tree exactly as it was. Equal strings mean an untouched tree. The root's
 * own attributes are left out: a tool may create and remove its staging dir there, which moves the
 * root's mtime but changes nothing a user keeps.
 */
final class TreeHash {
    private TreeHash() {}

    static String of(Path root) {
        if (!Files.exists(root)) return "<absent>";
        try (Stream<Path> s = Files.walk(root)) {
            List<Path> all = s.filter(p -> !p.equals(root)).sorted().collect(Collectors.toList());
            StringBuilder sb = new StringBuilder();
            for (Path p : all) {
                sb.append(root.relativize(p)).append(' ');
                if (Files.isSymbolicLink(p)) {
                    sb.append("link ").append(Files.readSymbolicLink(p));
                } else {
                    sb.append(PosixFilePermissions.toString(Files.getPosixFilePermissions(p, LinkOption.NOFOLLOW_LINKS)))
                            .append(' ').append(Files.getLastModifiedTime(p, LinkOption.NOFOLLOW_LINKS).toMillis());
                    if (Files.isRegularFile(p, LinkOption.NOFOLLOW_LINKS))
                        sb.append(' ').append(Files.size(p)).append(' ').append(Sha256.of(Files.readAllBytes(p)));
                    else sb.append(" dir");
                }
                sb.append('\n');
            }
            return Sha256.of(sb.toString().getBytes(java.nio.charset.StandardCharsets.UTF_8)) + " (" + all.size() + " entries)";
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }
}

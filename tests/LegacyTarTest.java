import org.apache.commons.compress.archivers.tar.TarArchiveEntry;
import org.apache.commons.compress.archivers.tar.TarArchiveOutputStream;
import org.junit.jupiter.api.Test;

import java.io.IOException;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Set;
import java.util.stream.Collectors;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.*;

/**
 * The extractor of tar packs (snapshots of formats 3 to 5) refuses, on its own, names that climb out of the town:
 * its callers' checks (the tar index's path rule) are not what keeps such an entry from being written.
 */
class LegacyTarTest {
    @Test
    void theExtractorRefusesNamesThatClimbOutWhateverTheIndexSays() throws IOException {
        Path base = TestTools.tempDir("legacy-tar-");
        // The absolute name points into the test's own dir: a broken extractor writes there, never into the machine's.
        for (String name : List.of("../x", base.resolve("canary/x").toString(), "a/../../x")) {
            Path dir = Files.createDirectories(base.resolve("case"));
            Path dest = Files.createDirectories(dir.resolve("staging/town"));
            Path tar = dir.resolve("pack.tar");
            try (OutputStream out = Files.newOutputStream(tar); TarArchiveOutputStream t = new TarArchiveOutputStream(out)) {
                TarArchiveEntry e = new TarArchiveEntry(name, true);   // the name as given, "../" kept
                byte[] data = "escaped\n".getBytes(StandardCharsets.UTF_8);
                e.setSize(data.length);
                t.putArchiveEntry(e);
                t.write(data);
                t.closeArchiveEntry();
            }
            R2Exception refused = assertThrows(R2Exception.class,
                    () -> Tars.extract(tar, "files/legacy.tar", dest, new Tars.DirMetadata(), new java.util.HashSet<>(List.of(name.replaceAll("^/+", ""), name))));
            assertTrue(refused.getMessage().contains("refusing entry '" + name + "'"), refused.getMessage());
            try (Stream<Path> s = Files.walk(base)) {
                assertEquals(List.of(base, dir, dir.resolve("pack.tar"), dir.resolve("staging"), dest),
                        s.sorted().collect(Collectors.toList()), name + ": nothing written anywhere");
            }
            TestTools.deleteRecursively(dir);
        }
        TestTools.deleteRecursively(base);
    }
}

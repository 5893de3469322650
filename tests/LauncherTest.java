import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

/**
 * The repo's launcher (./jbang) runs a script from the java command line JBang printed for it last, while
 * nothing it depends on changed. Operators edit the scripts in place: an edit must take effect at the next
 * start, and a JBang cache emptied under it must not break a start.
 */
class LauncherTest {

    @Test
    void anEditToASharedSourceTakesEffectAtTheNextStartAndAnEmptiedJbangCacheIsRebuilt() throws Exception {
        Path dir = TestTools.tempDir("launcher-");
        try {
            // A copy of the repo's launcher and scripts, so the edit never touches the repo under test.
            Path repo = Files.createDirectories(dir.resolve("repo"));
            Path source = TestTools.repo();
            for (String file : List.of("jbang", "jbang-catalog.json", "tools/install-jbang.sh", "tools/versions.sh"))
                Files.copy(source.resolve(file), Files.createDirectories(repo.resolve(file).getParent()).resolve(Path.of(file).getFileName()));
            try (var files = Files.list(source)) {
                for (Path java : files.filter(p -> p.toString().endsWith(".java")).toList()) Files.copy(java, repo.resolve(java.getFileName()));
            }
            Map<String, String> env = Map.of("JBANG_CACHE_DIR", dir.resolve("jbang-cache").toString());
            assertEquals("gastown-r2 0.4.0", version(repo, env));
            assertEquals("gastown-r2 0.4.0", version(repo, env), "the second start, from the recorded command line");

            Path common = repo.resolve("R2Common.java");
            Files.writeString(common, Files.readString(common).replace("\"gastown-r2 0.4.0\"", "\"gastown-r2 0.4.0-edited\""));
            assertEquals("gastown-r2 0.4.0-edited", version(repo, env), "an edit to a //SOURCES file takes effect");

            TestTools.deleteRecursively(dir.resolve("jbang-cache"));
            assertEquals("gastown-r2 0.4.0-edited", version(repo, env), "JBang's emptied cache is built again");
        } finally {
            TestTools.deleteRecursively(dir);
        }
    }

    private static String version(Path repo, Map<String, String> env) {
        TestTools.ProcResult r = TestTools.run(List.of(repo.resolve("jbang").toString(), repo.resolve("R2Status.java").toString(), "--version"),
                repo, env, null, Duration.ofMinutes(3)).assertOk();
        assertTrue(r.stdout().lines().count() == 1, r.stdout());
        return r.stdout().trim();
    }
}

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
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
 * start, a JBang cache emptied under it must not break a start, and what JBang's environment adds to a script's
 * options must reach it. It also gives each script a class-data archive, built from the classes an earlier run
 * loaded, which must never change what a run prints.
 */
class LauncherTest {

    @Test
    void anEditToASharedSourceTakesEffectAtTheNextStartAndAnEmptiedJbangCacheIsRebuilt() throws Exception {
        Path dir = TestTools.tempDir("launcher-");
        try {
            Path repo = copyOfRepo(dir);
            Map<String, String> env = Map.of("JBANG_CACHE_DIR", dir.resolve("jbang-cache").toString());
            assertEquals(R2Common.VERSION, version(repo, env));
            assertEquals(R2Common.VERSION, version(repo, env), "the second start, from the recorded command line");

            Path common = repo.resolve("R2Common.java");
            Files.writeString(common, Files.readString(common).replace("\"" + R2Common.VERSION + "\"", "\"" + R2Common.VERSION + "-edited\""));
            assertEquals(R2Common.VERSION + "-edited", version(repo, env), "an edit to a //SOURCES file takes effect");

            TestTools.deleteRecursively(dir.resolve("jbang-cache"));
            assertEquals(R2Common.VERSION + "-edited", version(repo, env), "JBang's emptied cache is built again");
        } finally {
            TestTools.deleteRecursively(dir);
        }
    }

    @Test
    void aClassDataArchiveIsBuiltFromAnEarlierRunAndNeverChangesWhatARunPrints() throws Exception {
        Path dir = TestTools.tempDir("launcher-cds-");
        try {
            Path repo = copyOfRepo(dir);
            Map<String, String> env = ownCache(repo, dir);
            Path lib = Path.of(TestTools.run(List.of("bash", repo.resolve("tools/install-jbang.sh").toString()), repo).assertOk().stdout().strip());
            Path record = dir.resolve("cache").resolve(lib.getParent().getFileName()).resolve("launches/R2Status.java");
            Path classes = Path.of(record + ".classes");
            Path archive = Path.of(record + ".jsa");

            assertEquals(R2Common.VERSION, version(repo, env), "the first start records the command line");
            assertFalse(Files.exists(classes), "the recording start lists nothing");
            assertEquals(R2Common.VERSION + "\n", quietVersion(repo, env), "the second start lists the classes it loads");
            assertTrue(Files.size(classes) > 0, "a class list");
            assertEquals(R2Common.VERSION + "\n", quietVersion(repo, env), "the third start builds the archive in the background");
            assertTrue(TestTools.await(() -> Files.exists(archive), Duration.ofMinutes(2), 200), "the archive is built");
            assertEquals(R2Common.VERSION + "\n", quietVersion(repo, env), "a start with the archive");

            // The archive fits the recorded JVM and classpath: with -Xshare:on a JVM refuses to start otherwise.
            String command = Files.readAllLines(record).get(1).replace(" __gastown_r2_arguments__", "");
            List<String> strict = new java.util.ArrayList<>(List.of(command.split(" ")));
            strict.addAll(1, List.of("-Xshare:on", "-XX:SharedArchiveFile=" + archive));
            strict.add("--version");
            assertEquals(R2Common.VERSION, TestTools.run(strict, repo).assertOk().stdout().strip());

            // A damaged archive is ignored without a word.
            Files.write(archive, new byte[4096]);
            assertEquals(R2Common.VERSION + "\n", quietVersion(repo, env), "a start with a damaged archive");
        } finally {
            TestTools.deleteRecursively(dir);
        }
    }

    @Test
    void anOptionGivenThroughJbangsEnvironmentReachesTheScriptOnceItIsRecorded() throws Exception {
        Path dir = TestTools.tempDir("launcher-env-");
        try {
            Path repo = copyOfRepo(dir);
            Map<String, String> env = ownCache(repo, dir);
            assertEquals(R2Common.VERSION, version(repo, env), "the first start records the command line");

            // JBang adds these to a script's JVM options: JBANG_RUNTIME_OPTIONS up to 0.134, JBANG_APP_RUNTIME_OPTIONS from 0.135 on.
            Map<String, String> withFlags = new java.util.HashMap<>(env);
            withFlags.put("JBANG_RUNTIME_OPTIONS", "-XX:+PrintCommandLineFlags");
            withFlags.put("JBANG_APP_RUNTIME_OPTIONS", "-XX:+PrintCommandLineFlags");
            String printed = startVersion(repo, withFlags).stdout();
            assertTrue(printed.contains("-XX:+PrintCommandLineFlags"), "the option reached the script's JVM: " + printed);
            assertTrue(printed.endsWith(R2Common.VERSION + "\n"), printed);

            assertEquals(R2Common.VERSION, version(repo, env), "without it again, the JVM prints no flags");
        } finally {
            TestTools.deleteRecursively(dir);
        }
    }

    /** The environment of a launcher whose records (and archives) live in a cache of this test's own, beside the same JBang. */
    private static Map<String, String> ownCache(Path repo, Path dir) throws java.io.IOException {
        Path lib = Path.of(TestTools.run(List.of("bash", repo.resolve("tools/install-jbang.sh").toString()), repo).assertOk().stdout().strip());
        Path cache = dir.resolve("cache");
        Files.createDirectories(cache.resolve(lib.getParent().getFileName()));
        Files.createSymbolicLink(cache.resolve(lib.getParent().getFileName()).resolve("lib"), lib);
        return Map.of("JBANG_CACHE_DIR", dir.resolve("jbang-cache").toString(), "GASTOWN_R2_CACHE", cache.toString());
    }

    /** A copy of the repo's launcher and scripts, so an edit never touches the repo under test. */
    private static Path copyOfRepo(Path dir) throws java.io.IOException {
        Path repo = Files.createDirectories(dir.resolve("repo"));
        Path source = TestTools.repo();
        for (String file : List.of("jbang", "jbang-catalog.json", "tools/install-jbang.sh", "tools/versions.sh", "tools/build-class-data.sh"))
            Files.copy(source.resolve(file), Files.createDirectories(repo.resolve(file).getParent()).resolve(Path.of(file).getFileName()));
        try (var files = Files.list(source)) {
            for (Path java : files.filter(p -> p.toString().endsWith(".java")).toList()) Files.copy(java, repo.resolve(java.getFileName()));
        }
        return repo;
    }

    private static String version(Path repo, Map<String, String> env) {
        TestTools.ProcResult r = startVersion(repo, env);
        assertTrue(r.stdout().lines().count() == 1, r.stdout());
        return r.stdout().trim();
    }

    /** A start from the recorded command line: the version, and not a word on stderr (no JBang, no JVM warning). */
    private static String quietVersion(Path repo, Map<String, String> env) {
        TestTools.ProcResult r = startVersion(repo, env);
        assertEquals("", r.stderr());
        return r.stdout();
    }

    private static TestTools.ProcResult startVersion(Path repo, Map<String, String> env) {
        return TestTools.run(List.of(repo.resolve("jbang").toString(), repo.resolve("R2Status.java").toString(), "--version"),
                repo, env, null, Duration.ofMinutes(3)).assertOk();
    }
}

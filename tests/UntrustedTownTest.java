import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestInstance;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.FileTime;
import java.nio.file.attribute.PosixFilePermissions;
import java.time.Duration;
import java.time.Instant;
import java.util.*;
import java.util.stream.Collectors;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.*;

/**
 * A town is data, never a program to run, and never a place to leak a secret into: a sync, a restore and a
 * --verify of a town whose repository names programs in its own config run none of them; no child process (git,
 * dolt, gt) sees a secret of ours; the version probe runs outside the town and leaves nothing in it. Real git, real
 * dolt, the real S3 server; gt is a stand-in, and git and dolt are wrapped by scripts that record what each child
 * was started with (/proc/self/environ, its cwd) before they run the real one.
 */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
class UntrustedTownTest {
    private final S3Server s3 = S3Server.shared();
    private Path dir;

    @BeforeAll
    void makeDir() {
        dir = TestTools.tempDir("untrusted-town-");
    }

    @AfterAll
    void cleanUp() {
        TestTools.deleteRecursively(dir);
    }

    @Test
    void noProgramARepositorysConfigNamesRunsInASyncARestoreOrAVerify() throws IOException {
        Path own = Files.createDirectories(dir.resolve("hostile-config"));
        TestTown town = TownBuilder.create().rigs("alpha").partial().build(own);
        Path crew = town.rig("alpha").resolve("crew/" + TestTown.CREW);
        // A tracked file the filter is bound to, committed before the repo names any program (the test's own git
        // would run them too).
        Files.writeString(crew.resolve("notes.txt"), "the crew's notes\n");
        TestTools.git(crew, "add", "notes.txt");
        TestTools.git(crew, "commit", "-qm", "notes");

        // The programs: one script outside the town that says it ran. Named by core.fsmonitor in .git/config, and
        // as a clean/smudge filter in a file .git/config includes, bound to *.txt by .gitattributes. The filter's name
        // holds a "=", which `git -c filter.<name>.clean=` cannot carry (git splits at the first "=").
        Path marker = own.resolve("ran.log");
        Path program = own.resolve("program.sh");
        Files.writeString(program, "#!/bin/sh\necho \"$0 $*\" >> '" + marker + "'\nexec cat\n");
        Files.setPosixFilePermissions(program, PosixFilePermissions.fromString("rwxr-xr-x"));
        Files.writeString(crew.resolve(".git/extra.cfg"), "[filter \"no=tes\"]\n\tclean = " + program + " clean\n"
                + "\tsmudge = " + program + " smudge\n\trequired = true\n");
        Files.writeString(crew.resolve(".git/config"), Files.readString(crew.resolve(".git/config"))
                + "[include]\n\tpath = extra.cfg\n[core]\n\tfsmonitor = " + program + "\n");
        Files.writeString(crew.resolve(".gitattributes"), "*.txt filter=no=tes\n");
        // Stat-dirty: git must read it again to know it is unchanged, through the clean filter.
        Files.setLastModifiedTime(crew.resolve("notes.txt"), FileTime.from(Instant.parse("2024-01-01T00:00:00Z")));

        String bucket = s3.newBucket();
        BucketView view = BucketView.of(s3, bucket, "town-1");
        Product.of(town.root(), s3, bucket, "town-1").sync("--immediate").assertOk();
        assertFalse(Files.exists(marker), "the sync ran a program the repo names: " + readQuietly(marker));
        // The sync did ask git about that work tree (its status is recorded), and packed the repo's objects.
        Manifest m = view.manifest(view.latest().orElseThrow().timestamp());
        RepoFacts repo = m.repo("alpha/crew/max/.git").orElseThrow();
        assertTrue(repo.workTrees().stream().anyMatch(w -> w.path().equals("alpha/crew/max") && w.status() != null), repo.toString());

        Path volume = Files.createDirectories(dir.resolve("hostile-config-volume/data"));
        Product onNewMachine = Product.of(volume, s3, bucket, "town-1").onNewMachine();
        TestTools.ProcResult restore = onNewMachine.restore().assertOk();
        assertFalse(Files.exists(marker), "the restore ran a program the backup names: " + readQuietly(marker));
        // Every restored file is stat-dirty (new inodes): the status that compared the work tree read notes.txt.
        assertTrue(restore.stderr().contains("work tree alpha/crew/max ("), "the restore compared the work tree:\n" + restore.stderr());
        assertTrue(Files.readString(volume.resolve("alpha/crew/max/.git/extra.cfg")).contains(program.toString()),
                "the restored repo still names the program (a restore gives back what was backed up)");

        onNewMachine.restore("--verify").assertOk();
        assertFalse(Files.exists(marker), "--verify ran a program the backup names: " + readQuietly(marker));
    }

    @Test
    void noChildGetsASecretAndTheVersionProbeRunsOutsideTheTownAndLeavesNothingInIt() throws IOException {
        Path own = Files.createDirectories(dir.resolve("secrets"));
        TestTown town = TownBuilder.create().rigs("alpha").partial().build(own);
        Path children = Files.createDirectories(own.resolve("children"));
        Path bin = Files.createDirectories(own.resolve("bin"));
        for (String tool : List.of("git", "dolt")) wrap(bin, tool, onPath(tool), children);
        // gt finds a town from GT_TOWN_ROOT or GT_ROOT, else from its cwd; `gt version` run in a town writes there.
        writeScript(bin.resolve("gt"), "#!/bin/sh\n" + record(children)
                + "echo probe > \"${GT_TOWN_ROOT:-${GT_ROOT:-$PWD}}/gt-was-here\"\necho 'gt version 0.0.0-standin'\n");

        Path secretFile = own.resolve("r2-secret");
        String secret = s3.r2Env("x").get("R2_SECRET_ACCESS_KEY");
        Files.writeString(secretFile, secret + "\n");
        String token = "api-token-" + UUID.randomUUID();
        String later = "a-secret-added-later-" + UUID.randomUUID();
        String bucket = s3.newBucket();
        BucketView view = BucketView.of(s3, bucket, "town-1");
        Set<String> before = townPaths(town.root());
        try (HeartbeatReceiver api = new HeartbeatReceiver()) {
            Product p = Product.of(town.root(), s3, bucket, "town-1")
                    .with("R2_SECRET_ACCESS_KEY", null).with("R2_SECRET_ACCESS_KEY_FILE", secretFile.toString())
                    .with("GASTOWN_API_URL", api.baseUrl()).with("GASTOWN_API_TOKEN", token)
                    .with("R2_SOME_FUTURE_KEY", later).with("GT_ROOT", town.root().toString())
                    .with("PATH", bin + ":" + System.getenv("PATH"));
            // Started from inside the town, as from an operator's shell there: the probe must still run outside it.
            p.runIn(town.root(), "R2Sync", "--immediate").assertOk();
            api.awaitRequests(1, Duration.ofSeconds(10));
            assertEquals("Bearer " + token, api.requests().get(0).header("Authorization"), "the token was in use");
        }
        Manifest m = view.manifest(view.latest().orElseThrow().timestamp());
        assertEquals("gt version 0.0.0-standin", m.versions().gt(), "the probe ran the stand-in");

        List<Child> seen = children(children);
        for (String tool : List.of("git", "dolt", "gt"))
            assertTrue(seen.stream().anyMatch(c -> c.tool().equals(tool)), tool + " ran as a child: " + seen);
        String accessKey = s3.r2Env("x").get("R2_ACCESS_KEY_ID");
        for (Child c : seen) {
            for (String value : List.of(secret, accessKey, token, later, secretFile.toString()))
                assertTrue(c.environ().stream().noneMatch(v -> v.contains(value)), c.tool() + " " + c.args() + " got a secret: " + c.environ());
            for (String variable : c.environ()) {
                String name = variable.split("=", 2)[0];
                assertFalse(name.startsWith("R2_") || name.startsWith("GASTOWN_") || name.startsWith("GT_") || name.equals("TOWN_ID")
                        || name.startsWith("AWS_") || name.endsWith("_FILE"), c.tool() + " got " + name);
            }
            assertTrue(c.environ().stream().anyMatch(v -> v.startsWith("PATH=" + bin)), c.tool() + " keeps PATH: " + c.environ());
        }
        // The probe: outside the town, and nothing of it left in the town.
        Child gt = seen.stream().filter(c -> c.tool().equals("gt")).findFirst().orElseThrow();
        assertEquals("version", gt.args());
        assertFalse(Path.of(gt.cwd()).startsWith(town.root()), "gt version ran in the town: " + gt.cwd());
        try (Stream<Path> s = Files.walk(town.root())) {
            assertEquals(List.of(), s.filter(p -> p.getFileName().toString().equals("gt-was-here")).toList());
        }
        assertEquals(before, townPaths(town.root()), "the sync added or removed a path of the town");
    }

    /** A child as its wrapper recorded it: the tool, its arguments, its cwd and its environment (NAME=value each). */
    record Child(String tool, String args, String cwd, List<String> environ) {}

    /** The shell lines that record what this process was started with, in files of its own in dir (named by its pid). */
    private static String record(Path dir) {
        return "f='" + dir + "'/$$\nbasename \"$0\" > \"$f.tool\"\nprintf '%s' \"$*\" > \"$f.args\"\npwd -P > \"$f.cwd\"\n"
                + "cp /proc/$$/environ \"$f.environ\"\n";
    }

    private static void wrap(Path bin, String tool, Path real, Path dir) throws IOException {
        writeScript(bin.resolve(tool), "#!/bin/sh\n" + record(dir) + "exec '" + real + "' \"$@\"\n");
    }

    private static void writeScript(Path file, String text) throws IOException {
        Files.writeString(file, text);
        Files.setPosixFilePermissions(file, PosixFilePermissions.fromString("rwxr-xr-x"));
    }

    private static Path onPath(String tool) {
        return Arrays.stream(System.getenv("PATH").split(":")).map(d -> Path.of(d, tool)).filter(Files::isExecutable)
                .findFirst().orElseThrow(() -> new IllegalStateException(tool + " is not on PATH"));
    }

    private static List<Child> children(Path dir) throws IOException {
        List<Child> children = new ArrayList<>();
        try (Stream<Path> s = Files.list(dir)) {
            for (Path tool : s.filter(p -> p.toString().endsWith(".tool")).sorted().toList()) {
                String pid = tool.toString().substring(0, tool.toString().length() - ".tool".length());
                children.add(new Child(Files.readString(tool).strip(), Files.readString(Path.of(pid + ".args")),
                        Files.readString(Path.of(pid + ".cwd")).strip(),
                        List.of(Files.readString(Path.of(pid + ".environ")).split("\0"))));
            }
        }
        return children;
    }

    /** Every path of the town, but inside dolt's own stores (every dolt command writes there). */
    private static Set<String> townPaths(Path root) throws IOException {
        try (Stream<Path> s = Files.walk(root)) {
            return s.map(p -> root.relativize(p).toString()).filter(p -> !p.matches("(.*/)?\\.dolt(/.*)?"))
                    .collect(Collectors.toCollection(TreeSet::new));
        }
    }

    /** What the programs wrote (for a failure's message); empty when none ran. */
    private static String readQuietly(Path file) {
        try {
            return Files.exists(file) ? Files.readString(file) : "";
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }
}

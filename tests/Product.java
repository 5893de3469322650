import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * The product's commands run as real processes, configured the way the sandbox configures them: by
 * environment variables. Each Product has its own lock file, work dir and state dir, so tests never
 * share local state by accident. The child JVM runs the classes this suite compiled (R2Sync, R2Restore,
 * R2Status, R2Prune), which are the repo's scripts; the sandbox tests run them through JBang too.
 *
 * <pre>
 * Product p = Product.of(town.root(), s3, bucket, "town-1");
 * p.sync("--immediate").assertOk();
 * </pre>
 */
final class Product {
    static final Duration TIMEOUT = Duration.ofMinutes(5);
    private final Map<String, String> env;
    private final Path scratch;

    private Product(Map<String, String> env, Path scratch) {
        this.env = Map.copyOf(env);
        this.scratch = scratch;
    }

    /** The product configured for a town, a bucket of the S3 server, and a town id. */
    static Product of(Path townRoot, S3Server s3, String bucket, String townId) {
        Path scratch = TestTools.tempDir("product-");
        Map<String, String> env = new HashMap<>(s3.r2Env(bucket));
        env.put("TOWN_ID", townId);
        env.put("GT_TOWN_ROOT", townRoot.toString());
        env.put("R2_SYNC_LOCK", scratch.resolve("r2-sync.lock").toString());
        env.put("R2_WORK_DIR", scratch.resolve("work").toString());
        env.put("R2_STATE_DIR", scratch.resolve("state").toString());
        env.put("R2_NO_PROGRESS", "1");
        return new Product(env, scratch);
    }

    /** A copy with one setting changed (null removes it, as if the env var were unset). */
    Product with(String name, String value) {
        Map<String, String> copy = new HashMap<>(env);
        if (value == null) copy.put(name, "");
        else copy.put(name, value);
        return new Product(copy, scratch);
    }

    /**
     * The product as it runs on a NEW machine: HOME is an empty directory (it is not on the volume), and no
     * global or system git config and no dolt config exist. The suite's own identities are not visible.
     */
    Product onNewMachine() {
        Map<String, String> copy = new HashMap<>(env);
        Path home = scratch.resolve("new-machine-home-" + System.nanoTime());
        try {
            Files.createDirectories(home);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        copy.put("HOME", home.toString());
        copy.put("GIT_CONFIG_GLOBAL", TestTools.UNSET);
        copy.put("GIT_CONFIG_NOSYSTEM", "1");
        copy.put("DOLT_ROOT_PATH", TestTools.UNSET);
        copy.put("XDG_CONFIG_HOME", TestTools.UNSET);
        return new Product(copy, scratch);
    }

    Map<String, String> env() {
        return env;
    }

    Path scratch() {
        return scratch;
    }

    Path stateDir() {
        return Path.of(env.get("R2_STATE_DIR"));
    }

    TestTools.ProcResult sync(String... args) {
        return run("R2Sync", args);
    }

    TestTools.ProcResult restore(String... args) {
        return run("R2Restore", args);
    }

    TestTools.ProcResult run(String mainClass, String... args) {
        return runIn(scratch, mainClass, args);
    }

    /** Runs a command with its working directory in cwd (an operator's shell may well be in the town). */
    TestTools.ProcResult runIn(Path cwd, String mainClass, String... args) {
        return TestTools.run(command(mainClass, args), cwd, env, null, TIMEOUT);
    }

    /** Starts a command in the background (the daemon); stderr goes to the returned log file. */
    Started start(String mainClass, String... args) {
        Path log = scratch.resolve(mainClass + "-" + System.nanoTime() + ".log");
        ProcessBuilder pb = new ProcessBuilder(command(mainClass, args)).directory(scratch.toFile())
                .redirectErrorStream(true).redirectOutput(log.toFile());
        TestTools.applyEnv(pb.environment(), env);
        try {
            return new Started(pb.start(), log);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    /** A background product process and its log. close() kills it and everything it started. */
    record Started(Process process, Path log) implements AutoCloseable {
        String output() {
            try {
                return Files.readString(log);
            } catch (IOException e) {
                return "";
            }
        }

        @Override
        public void close() {
            process.descendants().forEach(ProcessHandle::destroyForcibly);
            process.destroyForcibly();
            try {
                process.waitFor();
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }
    }

    private static List<String> command(String mainClass, String... args) {
        List<String> cmd = new ArrayList<>(List.of(TestTools.java(), "-cp", System.getProperty("java.class.path"), mainClass));
        cmd.addAll(List.of(args));
        return cmd;
    }
}

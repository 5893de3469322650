import java.io.IOException;
import java.io.InputStream;
import java.io.UncheckedIOException;
import java.net.InetAddress;
import java.net.ServerSocket;
import java.nio.charset.StandardCharsets;
import java.nio.file.FileVisitResult;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.nio.file.SimpleFileVisitor;
import java.nio.file.attribute.BasicFileAttributes;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.function.BooleanSupplier;

/**
 * Small helpers shared by the tests: where the tools are, temp dirs, free ports, polling with a
 * deadline, and an honest subprocess runner (argument list, no shell; stdout and stderr read at the
 * same time so a chatty child never blocks on a full pipe; a timeout that kills).
 */
final class TestTools {
    private TestTools() {}

    static final Duration DEFAULT_TIMEOUT = Duration.ofMinutes(2);

    /** The outcome of one subprocess. */
    record ProcResult(List<String> args, int exitCode, String stdout, String stderr) {
        boolean ok() {
            return exitCode == 0;
        }

        /** Returns this when the exit code is 0, else throws with everything needed to debug. */
        ProcResult assertOk() {
            if (!ok()) {
                throw new IllegalStateException("command failed (exit " + exitCode + "): " + String.join(" ", args)
                        + "\n--- stderr (end) ---\n" + tail(stderr, 4000)
                        + "\n--- stdout (end) ---\n" + tail(stdout, 2000));
            }
            return this;
        }
    }

    /** The dolt binary: $DOLT_BIN (set by tests/run), else "dolt" from PATH. */
    static String dolt() {
        String bin = System.getenv("DOLT_BIN");
        return bin != null && !bin.isBlank() ? bin : "dolt";
    }

    /** The S3Proxy fat jar from $S3PROXY_JAR (set by tests/run from tools/install-tools.sh). */
    static Path s3proxyJar() {
        String jar = System.getenv("S3PROXY_JAR");
        if (jar == null || jar.isBlank() || !Files.isRegularFile(Path.of(jar))) {
            throw new IllegalStateException("S3PROXY_JAR is not set or missing; run the tests with tests/run");
        }
        return Path.of(jar);
    }

    /** The java launcher of the running JVM, for child JVMs (S3Proxy). */
    static String java() {
        return Path.of(System.getProperty("java.home"), "bin", "java").toString();
    }

    // ---- subprocesses ----

    static ProcResult run(List<String> args, Path cwd) {
        return run(args, cwd, Map.of(), null, DEFAULT_TIMEOUT);
    }

    /** Runs and throws unless the exit code is 0. */
    static ProcResult check(List<String> args, Path cwd) {
        return run(args, cwd).assertOk();
    }

    static ProcResult check(List<String> args, Path cwd, Map<String, String> env, String stdin, Duration timeout) {
        return run(args, cwd, env, stdin, timeout).assertOk();
    }

    /** An env value that removes the variable from the child's environment instead of setting it. */
    static final String UNSET = "\0unset";

    /** Applies env to a child's environment: UNSET removes a variable, any other value sets it. */
    static void applyEnv(Map<String, String> target, Map<String, String> env) {
        env.forEach((k, v) -> {
            if (UNSET.equals(v)) target.remove(k);
            else target.put(k, v);
        });
    }

    /**
     * Runs {@code args} in {@code cwd} with {@code env} added to this JVM's environment, feeding
     * {@code stdin} (may be null: empty stdin), and waits at most {@code timeout} before killing it.
     */
    static ProcResult run(List<String> args, Path cwd, Map<String, String> env, String stdin, Duration timeout) {
        ProcessBuilder pb = new ProcessBuilder(args).directory(cwd.toFile());
        pb.environment().put("GIT_TERMINAL_PROMPT", "0"); // git must never wait on a prompt
        applyEnv(pb.environment(), env);
        Process p;
        try {
            p = pb.start();
        } catch (IOException e) {
            throw new UncheckedIOException("cannot start " + args, e);
        }
        CompletableFuture<String> out = readAsync(p.getInputStream());
        CompletableFuture<String> err = readAsync(p.getErrorStream());
        try (var in = p.getOutputStream()) {
            if (stdin != null) in.write(stdin.getBytes(StandardCharsets.UTF_8));
        } catch (IOException e) {
            // The child may exit without reading its stdin; its exit code tells the story.
        }
        try {
            if (!p.waitFor(timeout.toMillis(), TimeUnit.MILLISECONDS)) {
                p.descendants().forEach(ProcessHandle::destroyForcibly);
                p.destroyForcibly().waitFor();
                throw new IllegalStateException("timed out after " + timeout + ": " + String.join(" ", args)
                        + "\n--- stderr (end) ---\n" + tail(err.getNow(""), 4000));
            }
            return new ProcResult(List.copyOf(args), p.exitValue(), out.join(), err.join());
        } catch (InterruptedException e) {
            p.destroyForcibly();
            Thread.currentThread().interrupt();
            throw new IllegalStateException("interrupted: " + args, e);
        }
    }

    private static CompletableFuture<String> readAsync(InputStream in) {
        return CompletableFuture.supplyAsync(() -> {
            try (in) {
                return new String(in.readAllBytes(), StandardCharsets.UTF_8);
            } catch (IOException e) {
                return "<unreadable: " + e + ">";
            }
        }, runnable -> {
            Thread t = new Thread(runnable, "proc-reader");
            t.setDaemon(true);
            t.start();
        });
    }

    static String tail(String s, int max) {
        return s.length() <= max ? s : "..." + s.substring(s.length() - max);
    }

    // ---- temp dirs, ports, waiting ----

    /** The repo: $GASTOWN_R2_REPO, else where tests/run's JBang launcher lives, else up from the working dir. */
    static Path repo() {
        List<Path> candidates = new ArrayList<>();
        Optional.ofNullable(System.getenv("GASTOWN_R2_REPO")).ifPresent(p -> candidates.add(Path.of(p)));
        Optional.ofNullable(System.getenv("JBANG_LAUNCH_CMD")).ifPresent(p -> candidates.add(Path.of(p).toAbsolutePath().getParent()));
        for (Path p = Path.of("").toAbsolutePath(); p != null; p = p.getParent()) candidates.add(p);
        return candidates.stream().filter(p -> p != null && Files.isRegularFile(p.resolve("startup.sh"))
                        && Files.isRegularFile(p.resolve("R2Sync.java"))).findFirst()
                .map(p -> {
                    try {
                        return p.toRealPath();
                    } catch (IOException e) {
                        throw new UncheckedIOException(e);
                    }
                })
                .orElseThrow(() -> new IllegalStateException("cannot find the repo (startup.sh); run with tests/run"));
    }

    /**
     * A new temp dir. Under $GASTOWN_R2_TEST_TMP when set (tests/run sets it and removes it on exit,
     * so nothing leaks even when a test forgets to clean up), else under java.io.tmpdir.
     */
    static Path tempDir(String prefix) {
        try {
            String base = System.getenv("GASTOWN_R2_TEST_TMP");
            if (base != null && !base.isBlank()) {
                Files.createDirectories(Path.of(base));
                return Files.createTempDirectory(Path.of(base), prefix).toRealPath();
            }
            return Files.createTempDirectory(prefix).toRealPath();
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    /** Deletes a tree; symlinks are removed, never followed. Missing paths are fine. */
    static void deleteRecursively(Path root) {
        if (!Files.exists(root, LinkOption.NOFOLLOW_LINKS)) return;
        try {
            Files.walkFileTree(root, new SimpleFileVisitor<>() {
                @Override
                public FileVisitResult visitFile(Path file, BasicFileAttributes attrs) throws IOException {
                    Files.delete(file);
                    return FileVisitResult.CONTINUE;
                }

                @Override
                public FileVisitResult postVisitDirectory(Path dir, IOException e) throws IOException {
                    if (e != null) throw e;
                    Files.delete(dir);
                    return FileVisitResult.CONTINUE;
                }
            });
        } catch (IOException e) {
            throw new UncheckedIOException("cannot delete " + root, e);
        }
    }

    /** A port free right now on 127.0.0.1 (another process could take it; good enough for tests). */
    static int freePort() {
        try (ServerSocket s = new ServerSocket(0, 1, InetAddress.getLoopbackAddress())) {
            s.setReuseAddress(true);
            return s.getLocalPort();
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    /** Polls {@code condition} every {@code pollMillis} until it holds; false when the deadline passes. */
    static boolean await(BooleanSupplier condition, Duration timeout, long pollMillis) {
        long deadline = System.nanoTime() + timeout.toNanos();
        while (true) {
            if (condition.getAsBoolean()) return true;
            if (System.nanoTime() - deadline >= 0) return false;
            try {
                // A poll interval inside a deadline-bounded wait, not a synchronization by sleeping.
                TimeUnit.MILLISECONDS.sleep(pollMillis);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                return false;
            }
        }
    }

    /** Runs git in {@code cwd} and returns its stdout; throws on a non-zero exit. */
    static String git(Path cwd, String... args) {
        return check(list("git", List.of(args)), cwd).stdout();
    }

    /** Runs dolt in {@code cwd} and returns its stdout; throws on a non-zero exit. */
    static String dolt(Path cwd, String... args) {
        return check(list(dolt(), List.of(args)), cwd).stdout();
    }

    /** Flattens strings and lists of strings into one argument list. */
    static List<String> list(Object... parts) {
        List<String> out = new ArrayList<>();
        for (Object o : parts) {
            if (o instanceof List<?> l) l.forEach(x -> out.add(String.valueOf(x)));
            else out.add(String.valueOf(o));
        }
        return out;
    }
}

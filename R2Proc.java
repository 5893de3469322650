// Processes (part of R2Common, included with //SOURCES): how this tool runs other programs and its own work in
// parallel, and how a run ends.
//   Proc        a child process as an argument list (never a shell), with a timeout, with no secret in its
//               environment (an allowlist), tracked so that a shutdown kills it and what it started
//   Parallel    independent tasks on a bounded pool: all run, or the first failure stops the rest
//   Background  one task beside the caller's own work
//   Git         the one way git runs: nothing a repository's config names (hooks, fsmonitor, filters) runs
//   Lifetime    how a run is ending: shutting down (SIGTERM) or abandoning a cycle for a final sync
//   SyncLock    the machine-wide lock that serializes syncs

import java.io.*;
import java.nio.channels.FileChannel;
import java.nio.channels.FileLock;
import java.nio.channels.OverlappingFileLockException;
import java.nio.charset.StandardCharsets;
import java.nio.file.*;
import java.time.Duration;
import java.util.*;
import java.util.concurrent.*;
import java.util.stream.Collectors;

record ProcResult(List<String> args, int exitCode, String stdout, String stderr) {
    boolean ok() {
        return exitCode == 0;
    }

    /** The last lines of stderr (or stdout), for error messages. */
    String tail() {
        String text = stderr.isBlank() ? stdout : stderr;
        List<String> lines = text.strip().lines().collect(Collectors.toList());
        return String.join(" | ", lines.subList(Math.max(0, lines.size() - 3), lines.size()));
    }
}

/**
 * Runs a command as an argument list (never through a shell), reads stdout and stderr at the same time,
 * and enforces a timeout. Every running child is tracked so a shutdown can end them all.
 */
final class Proc {
    private static final Set<Process> RUNNING = ConcurrentHashMap.newKeySet();
    private static final ExecutorService READERS = Executors.newCachedThreadPool(r -> {
        Thread t = new Thread(r, "proc-reader");
        t.setDaemon(true);
        return t;
    });
    static final Duration DEFAULT_TIMEOUT = Duration.ofMinutes(30);

    private Proc() {}

    static ProcResult run(Path cwd, String... args) {
        return run(cwd, DEFAULT_TIMEOUT, List.of(args));
    }

    /**
     * What a child keeps of our environment: these names (and LC_*) only, never the whole of it. Our environment
     * holds the R2 keys and the API token (and *_FILE pointers to them); a list of what to pass on, rather than
     * of what to remove, keeps out every secret added later too, from git, dolt, gt and whatever they run. The
     * GIT_CONFIG_* and DOLT_* ones point git and dolt at the machine's own config (tests/run sets them).
     */
    private static final Set<String> PASSED_ON = Set.of("PATH", "HOME", "LANG", "TZ", "TMPDIR", "USER", "LOGNAME",
            "GIT_CONFIG_GLOBAL", "GIT_CONFIG_NOSYSTEM", "DOLT_ROOT_PATH", "DOLT_DISABLE_EVENT_FLUSH");

    static boolean passedOn(String name) {
        return PASSED_ON.contains(name) || name.startsWith("LC_");
    }

    /** Environment every child gets on top of what it keeps of ours (DoltHome sets dolt's config dir here). */
    private static final Map<String, String> ENV = new ConcurrentHashMap<>();

    static void setEnv(String name, String value) {
        ENV.put(name, value);
    }

    static ProcResult run(Path cwd, Duration timeout, List<String> args) {
        return run(cwd, timeout, args, Map.of());
    }

    /** Runs with env added to the child's environment (Git's hardening, the version probe's HOME). */
    static ProcResult run(Path cwd, Duration timeout, List<String> args, Map<String, String> env) {
        Process p = start(cwd, args, env);
        try {
            p.getOutputStream().close();
        } catch (IOException e) {
            // the child closed its stdin first; its output says what happened
        }
        return finish(p, timeout, args, READERS.submit(() -> readCapped(p.getInputStream())),
                READERS.submit(() -> readCapped(p.getErrorStream())));
    }

    /**
     * Runs a command with stdin given and stdout streamed into out (for output too large to hold, such as
     * a pack); a non-zero exit is an error carrying the end of stderr.
     */
    static void pipe(Path cwd, List<String> args, byte[] stdin, OutputStream out) {
        pipe(cwd, args, Map.of(), stdin, out);
    }

    static void pipe(Path cwd, List<String> args, Map<String, String> env, byte[] stdin, OutputStream out) {
        Process p = start(cwd, args, env);
        Future<String> err = READERS.submit(() -> readCapped(p.getErrorStream()));
        Future<Void> feed = READERS.submit(() -> {
            try (OutputStream in = p.getOutputStream()) {
                in.write(stdin);
            }
            return null;
        });
        try (InputStream from = p.getInputStream()) {
            from.transferTo(out);
        } catch (IOException e) {
            p.destroyForcibly();
            RUNNING.remove(p);
            throw new R2Exception(R2Common.EXIT_FAILED, String.join(" ", args) + ": " + e.getMessage(), e);
        }
        ProcResult r = finish(p, DEFAULT_TIMEOUT, args, CompletableFuture.completedFuture(""), err);
        try {
            feed.get();
        } catch (InterruptedException | ExecutionException e) {
            // a child that exits without reading all its input has said why on stderr
        }
        if (!r.ok())
            throw new R2Exception(R2Common.EXIT_FAILED, String.join(" ", args) + ": exit " + r.exitCode() + ": " + r.tail());
    }

    private static Process start(Path cwd, List<String> args, Map<String, String> env) {
        ProcessBuilder pb = new ProcessBuilder(args);
        if (cwd != null) pb.directory(cwd.toFile());
        pb.environment().keySet().removeIf(name -> !passedOn(name));
        pb.environment().putAll(ENV);
        pb.environment().putAll(env);
        pb.redirectInput(ProcessBuilder.Redirect.PIPE);
        Process p;
        try {
            p = pb.start();
        } catch (IOException e) {
            throw new R2Exception(R2Common.EXIT_FAILED, "cannot run " + args.get(0) + ": " + e.getMessage());
        }
        RUNNING.add(p);
        return p;
    }

    /** Waits for a started child within the timeout and collects what its readers read. */
    private static ProcResult finish(Process p, Duration timeout, List<String> args, Future<String> out, Future<String> err) {
        try {
            if (!p.waitFor(timeout.toMillis(), TimeUnit.MILLISECONDS)) {
                p.destroyForcibly();
                throw new R2Exception(R2Common.EXIT_FAILED, String.join(" ", args) + ": timed out after " + timeout);
            }
            if (shuttingDown)
                throw new R2Exception(R2Common.EXIT_FAILED, String.join(" ", args) + ": stopped by shutdown");
            return new ProcResult(List.copyOf(args), p.exitValue(), out.get(), err.get());
        } catch (InterruptedException e) {
            // Stopped (a sibling task failed): the child and what it started end before the caller cleans up.
            kill(p);
            try {
                p.waitFor(10, TimeUnit.SECONDS);
            } catch (InterruptedException again) {
                // already stopping
            }
            Thread.currentThread().interrupt();
            throw new R2Exception(R2Common.EXIT_FAILED, String.join(" ", args) + ": interrupted");
        } catch (ExecutionException e) {
            p.destroyForcibly();
            if (e.getCause() instanceof Error error) throw error;   // a reader out of memory: not this command's failure
            throw new R2Exception(R2Common.EXIT_FAILED, String.join(" ", args) + ": " + e.getMessage());
        } finally {
            RUNNING.remove(p);
        }
    }

    /** Like run, but a non-zero exit is an error carrying the command, the code and the end of its output. */
    static ProcResult check(Path cwd, String... args) {
        return check(cwd, DEFAULT_TIMEOUT, List.of(args));
    }

    static ProcResult check(Path cwd, Duration timeout, List<String> args) {
        return check(cwd, timeout, args, Map.of());
    }

    static ProcResult check(Path cwd, Duration timeout, List<String> args, Map<String, String> env) {
        ProcResult r = run(cwd, timeout, args, env);
        if (!r.ok())
            throw new R2Exception(R2Common.EXIT_FAILED, String.join(" ", args) + ": exit " + r.exitCode() + ": " + r.tail());
        return r;
    }

    /** Set once the JVM is shutting down (Lifetime.shutDown): a child that fails from then on was killed, not broken. */
    private static volatile boolean shuttingDown;

    static void shutdownStarted() {
        shuttingDown = true;
    }

    /** Ends every running child and its descendants (used on shutdown). */
    static void killAll() {
        shuttingDown = true;
        RUNNING.forEach(Proc::kill);
    }

    /** Kills a child and everything it started (dolt and git start helpers of their own). */
    private static void kill(Process p) {
        p.descendants().forEach(ProcessHandle::destroyForcibly);
        p.destroyForcibly();
    }

    /**
     * Runs action (on a JVM signal thread) each time this process receives SIG{name}, e.g. "USR1". Through
     * sun.misc.Signal, which the JDK keeps for exactly this; reached reflectively because javac 17 warns of every
     * direct use at every build, and no option silences it.
     */
    static void onSignal(String name, Runnable action) {
        try {
            Class<?> signal = Class.forName("sun.misc.Signal");
            Class<?> handler = Class.forName("sun.misc.SignalHandler");
            Object onSignal = java.lang.reflect.Proxy.newProxyInstance(handler.getClassLoader(), new Class<?>[]{handler},
                    (proxy, method, args) -> switch (method.getName()) {
                        case "handle" -> {
                            action.run();
                            yield null;
                        }
                        case "hashCode" -> System.identityHashCode(proxy);
                        case "equals" -> proxy == args[0];
                        default -> "SIG" + name + " handler";
                    });
            signal.getMethod("handle", signal, handler).invoke(null, signal.getConstructor(String.class).newInstance(name), onSignal);
        } catch (ReflectiveOperationException e) {
            throw new IllegalStateException("cannot handle SIG" + name + ": " + e, e);
        }
    }

    /**
     * The first line a command prints, or "unknown" when it is missing or fails. It runs in dir, which is also its
     * HOME: a directory of our own outside the town. gt finds a town from its cwd or from GT_TOWN_ROOT / GT_ROOT
     * (which no child gets), and `gt version` run in a town writes into it: a backup must not change what it backs up.
     */
    static String versionOf(Path dir, String... args) {
        try {
            ProcResult r = run(dir, Duration.ofSeconds(20), List.of(args), Map.of("HOME", dir.toString()));
            return r.ok() ? r.stdout().lines().findFirst().orElse("unknown").strip() : "unknown";
        } catch (R2Exception e) {
            return "unknown";
        }
    }

    private static String readCapped(InputStream in) throws IOException {
        final int cap = 4 << 20;   // output we parse is small; a runaway child must not exhaust memory
        ByteArrayOutputStream buf = new ByteArrayOutputStream();
        byte[] chunk = new byte[8192];
        for (int n; (n = in.read(chunk)) > 0; )
            if (buf.size() < cap) buf.write(chunk, 0, Math.min(n, cap - buf.size()));
        return buf.toString(StandardCharsets.UTF_8);
    }
}

/**
 * Independent tasks on a bounded pool: all run, or the first failure is thrown once the others have stopped
 * (interrupted, and their processes killed), so the caller may clean up what they wrote.
 */
final class Parallel {
    interface Task {
        void run() throws IOException;
    }

    private Parallel() {}

    static void run(int threads, List<Task> tasks) throws IOException {
        if (tasks.isEmpty()) return;
        ExecutorService pool = Executors.newFixedThreadPool(Math.min(threads, tasks.size()));
        try {
            List<Future<?>> futures = new ArrayList<>();
            for (Task t : tasks) futures.add(pool.submit(() -> {
                t.run();
                return null;
            }));
            for (Future<?> f : futures) {
                try {
                    f.get();
                } catch (ExecutionException e) {
                    futures.forEach(other -> other.cancel(true));
                    stop(pool);
                    throw failureOf(e);
                } catch (InterruptedException e) {
                    stop(pool);
                    Thread.currentThread().interrupt();
                    throw new R2Exception(R2Common.EXIT_FAILED, "interrupted");
                }
            }
        } finally {
            pool.shutdownNow();
        }
    }

    /**
     * Interrupts the pool's tasks and waits until they have ended, even when the caller was interrupted (a cycle
     * abandoned): what they ran (a dolt writing its backup dir) is over before the next sync starts it again.
     */
    static void stop(ExecutorService pool) {
        pool.shutdownNow();
        boolean interrupted = Thread.interrupted();
        try {
            if (!pool.awaitTermination(2, TimeUnit.MINUTES)) Log.warn("tasks still running 2 minutes after they were stopped");
        } catch (InterruptedException e) {
            interrupted = true;
        } finally {
            if (interrupted) Thread.currentThread().interrupt();
        }
    }

    /** A task's failure, to be thrown as the caller's own. */
    static IOException failureOf(ExecutionException e) {
        if (e.getCause() instanceof IOException io) return io;
        if (e.getCause() instanceof RuntimeException re) throw re;
        if (e.getCause() instanceof Error error) throw error;   // an OutOfMemoryError stays one: no failure to fall back from
        throw new R2Exception(R2Common.EXIT_FAILED, String.valueOf(e.getCause()), e.getCause());
    }
}

/**
 * One task run beside the caller's own work. join() waits for its result (its failure thrown as the caller's);
 * closing it before that stops it (its processes killed) and waits until it has.
 */
final class Background<T> implements AutoCloseable {
    interface Task<T> {
        T call() throws IOException;
    }

    private final ExecutorService pool = Executors.newSingleThreadExecutor();
    private final Future<T> future;

    private Background(Task<T> task) {
        future = pool.submit(task::call);
    }

    static <T> Background<T> start(Task<T> task) {
        return new Background<>(task);
    }

    T join() throws IOException {
        try {
            return future.get();
        } catch (ExecutionException e) {
            throw Parallel.failureOf(e);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new R2Exception(R2Common.EXIT_FAILED, "interrupted");
        }
    }

    @Override
    public void close() {
        Parallel.stop(pool);
    }
}

/**
 * How a run is ending, one per command run, passed where a failure must be told from a stop: shutting down (the JVM
 * ends: SIGTERM, SIGINT), or abandoning the cycle in flight (the daemon stops, or a final sync follows). A cycle that
 * ends for either is abandoned, not failed: nothing is reported as broken.
 */
final class Lifetime {
    private volatile boolean shuttingDown;
    private volatile boolean abandoning;

    void shutDown() {
        shuttingDown = true;
        Proc.shutdownStarted();
    }

    boolean shuttingDown() {
        return shuttingDown;
    }

    void abandon() {
        abandoning = true;
    }

    /** The final sync starts: what follows is a cycle like any other. */
    void resume() {
        abandoning = false;
    }

    boolean abandoning() {
        return abandoning;
    }
}

/**
 * The machine-wide sync lock: an OS file lock, so a dead holder releases it with its death and a stale
 * lock file is harmless. A second sync waits (bounded) rather than skipping: a shutdown flush must run.
 */
final class SyncLock implements AutoCloseable {
    private final FileChannel channel;
    private final FileLock lock;

    private SyncLock(FileChannel channel, FileLock lock) {
        this.channel = channel;
        this.lock = lock;
    }

    static SyncLock acquire(Path file, Duration wait) throws IOException {
        if (file.getParent() != null) Files.createDirectories(file.getParent());
        FileChannel channel = FileChannel.open(file, StandardOpenOption.CREATE, StandardOpenOption.WRITE, StandardOpenOption.READ);
        long deadline = System.nanoTime() + wait.toNanos();
        boolean announced = false;
        try {
            while (true) {
                FileLock lock = tryLock(channel);
                if (lock != null) {
                    channel.truncate(0).write(java.nio.ByteBuffer.wrap((ProcessHandle.current().pid() + "\n").getBytes(StandardCharsets.UTF_8)), 0);
                    return new SyncLock(channel, lock);
                }
                if (!announced) {
                    Log.info("sync: another sync holds " + file + "; waiting up to " + DurationConverter.format(wait));
                    announced = true;
                }
                if (System.nanoTime() > deadline)
                    throw new R2Exception(R2Common.EXIT_FAILED, "sync: another sync still holds " + file + " after "
                            + DurationConverter.format(wait) + " (see --lock-wait)");
                Thread.sleep(100);   // polling an OS lock: there is no event to wait on
            }
        } catch (InterruptedException e) {
            channel.close();
            Thread.currentThread().interrupt();
            throw new R2Exception(R2Common.EXIT_FAILED, "sync: interrupted while waiting for " + file);
        } catch (IOException | RuntimeException e) {
            channel.close();
            throw e;
        }
    }

    private static FileLock tryLock(FileChannel channel) throws IOException {
        try {
            return channel.tryLock();
        } catch (OverlappingFileLockException e) {
            return null;   // held by another thread of this JVM
        }
    }

    @Override
    public void close() throws IOException {
        lock.release();
        channel.close();
    }
}

/**
 * The one way this tool runs git. A town's repository is data, never a program to run: its config, and every file
 * that config includes (include, includeIf, config.worktree), can name programs git runs unasked (docs/guarantees.md):
 * core.fsmonitor whenever the index is read, hooks, a filter driver on a file that is stat-dirty, diff drivers, a
 * credential helper, askpass, ssh, or the upload-pack a partial clone's lazy fetch runs. Every git command gets
 * settings at git's command-line level, which wins over every config file, that stop each of them; a command that
 * may read a work tree's files through .gitattributes also gets every filter and diff driver the repository's
 * config defines emptied, found by listing that config (a listing run the same way). The settings go in
 * GIT_CONFIG_COUNT/KEY/VALUE rather than `-c`: a driver's name may hold a "=", which `-c` cannot carry.
 */
final class Git {
    private Git() {}

    /** Settings that stop every program a repository's config can name for the commands this tool runs. */
    private static final List<Map.Entry<String, String>> HARDENING = List.of(
            Map.entry("core.fsmonitor", "false"),
            Map.entry("core.hooksPath", "/dev/null"),
            Map.entry("credential.helper", ""),   // an empty value clears the list of helpers
            Map.entry("core.askPass", ""),
            Map.entry("core.sshCommand", "false"),
            Map.entry("core.pager", "cat"),
            Map.entry("core.editor", ":"),        // git's own "no editor"
            Map.entry("gpg.program", "false"),
            Map.entry("gpg.ssh.program", "false"),
            Map.entry("gpg.x509.program", "false"));

    /** Emptying these stops a driver (an empty command is no command); a required filter that did not run is fatal. */
    private static final List<Map.Entry<String, String>> FILTER_OFF = List.of(Map.entry("clean", ""), Map.entry("smudge", ""),
            Map.entry("process", ""), Map.entry("required", "false"));
    private static final List<Map.Entry<String, String>> DIFF_OFF = List.of(Map.entry("textconv", ""), Map.entry("command", ""));

    /** Commands that never read a work tree's file through .gitattributes: no driver can run, no listing needed. */
    private static final Set<String> NO_DRIVERS = Set.of("cat-file", "config", "for-each-ref", "fsck", "bundle", "ls-files",
            "pack-objects", "rev-parse", "symbolic-ref");

    /**
     * Runs `git {options} {command}`: options pick the repository (--git-dir=, --work-tree=; none: found from cwd)
     * and carry settings of our own, command starts with the subcommand.
     */
    static ProcResult run(Path cwd, List<String> options, String... command) {
        return Proc.run(cwd, Proc.DEFAULT_TIMEOUT, args(options, List.of(command)), env(cwd, options, command[0]));
    }

    /** Like run, but a non-zero exit is an error naming the command. */
    static ProcResult check(Path cwd, List<String> options, String... command) {
        return Proc.check(cwd, Proc.DEFAULT_TIMEOUT, args(options, List.of(command)), env(cwd, options, command[0]));
    }

    /** Feeds stdin and streams stdout into out (Proc.pipe). */
    static void pipe(Path cwd, List<String> options, List<String> command, byte[] stdin, OutputStream out) {
        Proc.pipe(cwd, args(options, command), env(cwd, options, command.get(0)), stdin, out);
    }

    private static List<String> args(List<String> options, List<String> command) {
        List<String> args = new ArrayList<>(List.of("git"));
        args.addAll(options);
        args.addAll(command);
        return args;
    }

    private static Map<String, String> env(Path cwd, List<String> options, String subcommand) {
        List<Map.Entry<String, String>> settings = new ArrayList<>(HARDENING);
        if (!NO_DRIVERS.contains(subcommand)) settings.addAll(driversOff(cwd, options));
        Map<String, String> env = new HashMap<>();
        env.put("GIT_CONFIG_COUNT", String.valueOf(settings.size()));
        for (int i = 0; i < settings.size(); i++) {
            env.put("GIT_CONFIG_KEY_" + i, settings.get(i).getKey());
            env.put("GIT_CONFIG_VALUE_" + i, settings.get(i).getValue());
        }
        env.put("GIT_ALLOW_PROTOCOL", "");     // no transport at all: a lazy fetch runs what the remote's config names
        env.put("GIT_OPTIONAL_LOCKS", "0");    // reading never rewrites an agent's index
        env.put("GIT_TERMINAL_PROMPT", "0");
        return env;
    }

    /** Settings that empty every filter and diff driver the repository's config defines, whichever file defines it. */
    private static List<Map.Entry<String, String>> driversOff(Path cwd, List<String> options) {
        ProcResult listing = run(cwd, options, "config", "-z", "--name-only", "--get-regexp", "^(filter|diff)\\.");
        if (!listing.ok() && listing.exitCode() != 1)   // 1: no such key
            throw new R2Exception(R2Common.EXIT_FAILED, "git config in " + cwd + ": exit " + listing.exitCode() + ": " + listing.tail());
        List<Map.Entry<String, String>> off = new ArrayList<>();
        Set<String> drivers = new LinkedHashSet<>();
        for (String key : listing.stdout().split("\0"))   // "filter.<name>.clean" names driver "filter.<name>"; "diff.renames" none
            if (key.indexOf('.') < key.lastIndexOf('.')) drivers.add(key.substring(0, key.lastIndexOf('.')));
        for (String driver : drivers)
            for (Map.Entry<String, String> setting : driver.startsWith("filter.") ? FILTER_OFF : DIFF_OFF)
                off.add(Map.entry(driver + "." + setting.getKey(), setting.getValue()));
        return off;
    }
}

import java.io.IOException;
import java.io.UncheckedIOException;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.concurrent.TimeUnit;

/**
 * A running `dolt sql-server --config config.yaml` with cwd .dolt-data, as gt starts it. Started by
 * {@link TestTown#startDoltServer()}; {@link #close()} stops it (SIGTERM, wait, then SIGKILL).
 *
 * <p>Fact checked with dolt 1.86.4: while this server runs, {@code cd .dolt-data/<db> && dolt sql -q
 * "call dolt_backup('sync-url', 'file:///abs')"} (what {@code dolt backup sync-url} runs) WORKS. The server
 * writes .dolt-data/.dolt/sql-server.info and the CLI routes the call through it; the backup restores with
 * all branches and the staged and unstaged working set. TownBuilderTest#doltBackupSyncWorksWhileServerRuns
 * keeps that checked.
 */
final class TestDoltServer implements AutoCloseable {
    private static final Duration STARTUP_TIMEOUT = Duration.ofSeconds(30);

    private final Process process;
    private final Path dataDir;
    private final int port;
    private final Path log;
    private final Thread killOnExit;

    static TestDoltServer start(Path dataDir, int port) {
        return new TestDoltServer(dataDir, port);
    }

    private TestDoltServer(Path dataDir, int port) {
        this.dataDir = dataDir;
        this.port = port;
        try {
            // Outside the town: the town's own daemon/dolt.log is a file the backup must skip, and we
            // do not want our log to change what a test captures.
            this.log = Files.createTempFile(TestTools.tempDir("dolt-log-"), "sql-server", ".log");
            process = new ProcessBuilder(TestTools.dolt(), "sql-server", "--config", "config.yaml")
                    .directory(dataDir.toFile())
                    .redirectErrorStream(true)
                    .redirectOutput(log.toFile())
                    .start();
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        // A test that dies without close() must not leave a server holding the data dir.
        killOnExit = new Thread(process::destroyForcibly, "dolt-sql-server-kill");
        Runtime.getRuntime().addShutdownHook(killOnExit);
        if (!TestTools.await(() -> !process.isAlive() || acceptsConnections(), STARTUP_TIMEOUT, 50)
                || !process.isAlive()) {
            String tail = logTail();
            close();
            throw new IllegalStateException("dolt sql-server did not start on port " + port + "\n" + tail);
        }
        // A TCP accept comes before the databases are loaded; one query proves it serves.
        query("select 1");
    }

    private boolean acceptsConnections() {
        try (Socket s = new Socket()) {
            s.connect(new InetSocketAddress("127.0.0.1", port), 500);
            return true;
        } catch (IOException e) {
            return false;
        }
    }

    /** Runs {@code sql} through the server as root (no password) and returns the CSV output. */
    String query(String sql) {
        return TestTools.check(List.of(TestTools.dolt(), "--host", "127.0.0.1", "--port", String.valueOf(port),
                        "--no-tls", "-u", "root", "-p", "", "sql", "-r", "csv", "-q", sql),
                dataDir).stdout();
    }

    int port() {
        return port;
    }

    long pid() {
        return process.pid();
    }

    boolean isAlive() {
        return process.isAlive();
    }

    String logTail() {
        try {
            return TestTools.tail(Files.readString(log), 3000);
        } catch (IOException e) {
            return "<no log: " + e + ">";
        }
    }

    @Override
    public void close() {
        process.destroy(); // SIGTERM: dolt shuts down cleanly and releases its locks
        try {
            if (!process.waitFor(15, TimeUnit.SECONDS)) {
                process.destroyForcibly().waitFor(5, TimeUnit.SECONDS);
            }
        } catch (InterruptedException e) {
            process.destroyForcibly();
            Thread.currentThread().interrupt();
        }
        TestTools.deleteRecursively(log.getParent());
        try {
            Runtime.getRuntime().removeShutdownHook(killOnExit);
        } catch (IllegalStateException alreadyShuttingDown) {
            // the hook runs anyway; the process is gone
        }
    }
}

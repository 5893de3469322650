import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.TimeUnit;

/**
 * A real HTTP server standing in for the cloud API that receives heartbeats: the JDK's HttpServer on
 * 127.0.0.1, a free port. It records every request and answers with a status code the test chooses
 * (200 by default; set 500 or 401 to simulate a failing API).
 */
final class HeartbeatReceiver implements AutoCloseable {

    /** One received request. Header names are lower-cased; each maps to its first value. */
    record Request(String method, String path, Map<String, String> headers, String body) {
        String header(String name) {
            return headers.get(name.toLowerCase(java.util.Locale.ROOT));
        }
    }

    private final HttpServer server;
    private final List<Request> requests = new ArrayList<>();
    private int status = 200;
    private String responseBody = "{\"ok\":true}";

    HeartbeatReceiver() {
        try {
            server = HttpServer.create(new InetSocketAddress(InetAddress.getLoopbackAddress(), 0), 0);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        server.createContext("/", this::handle);
        server.start();
    }

    private void handle(HttpExchange ex) throws IOException {
        try (ex) {
            String body = new String(ex.getRequestBody().readAllBytes(), StandardCharsets.UTF_8);
            Map<String, String> headers = new TreeMap<>();
            ex.getRequestHeaders().forEach((k, v) -> headers.put(k.toLowerCase(java.util.Locale.ROOT), v.get(0)));
            String path = ex.getRequestURI().getRawPath()
                    + (ex.getRequestURI().getRawQuery() == null ? "" : "?" + ex.getRequestURI().getRawQuery());
            int code;
            byte[] reply;
            synchronized (this) {
                requests.add(new Request(ex.getRequestMethod(), path, Map.copyOf(headers), body));
                code = status;
                reply = responseBody.getBytes(StandardCharsets.UTF_8);
                notifyAll();
            }
            ex.getResponseHeaders().set("Content-Type", "application/json");
            ex.sendResponseHeaders(code, reply.length == 0 ? -1 : reply.length);
            if (reply.length > 0) ex.getResponseBody().write(reply);
        }
    }

    /** e.g. http://127.0.0.1:41234 (no trailing slash). */
    String baseUrl() {
        return "http://127.0.0.1:" + server.getAddress().getPort();
    }

    /** Answer every following request with {@code code} (e.g. 500 to simulate an outage). */
    synchronized HeartbeatReceiver respondWith(int code) {
        this.status = code;
        return this;
    }

    synchronized HeartbeatReceiver respondWith(int code, String body) {
        this.status = code;
        this.responseBody = body;
        return this;
    }

    /** A snapshot of the requests received so far, in arrival order. */
    synchronized List<Request> requests() {
        return List.copyOf(requests);
    }

    /**
     * Waits until at least {@code n} requests arrived and returns them; throws AssertionError with
     * what did arrive when the timeout passes first.
     */
    synchronized List<Request> awaitRequests(int n, Duration timeout) {
        long deadline = System.nanoTime() + timeout.toNanos();
        while (requests.size() < n) {
            long left = deadline - System.nanoTime();
            if (left <= 0) {
                throw new AssertionError("expected " + n + " requests within " + timeout + ", got "
                        + requests.size() + ": " + requests);
            }
            try {
                TimeUnit.NANOSECONDS.timedWait(this, left); // woken by handle()
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new AssertionError("interrupted while waiting for requests", e);
            }
        }
        return List.copyOf(requests);
    }

    @Override
    public void close() {
        server.stop(0);
    }
}

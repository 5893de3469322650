import java.io.BufferedInputStream;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Semaphore;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.function.Predicate;

/**
 * A small fault-injecting TCP proxy on 127.0.0.1 between the product and the S3 server. It forwards
 * bytes unchanged (so SigV4 signatures stay valid) except one hop-by-hop header: every request goes out
 * with {@code Connection: close}, so each connection carries exactly one request and a fault hits
 * exactly the request it was aimed at. It parses each request's head (method, target, headers) to log
 * the request sequence and to match rules; the first rule that matches and has uses left acts:
 *
 * <ul>
 *   <li>{@code fail(503, "SlowDown")}: answer with an S3 XML error, never forwarding
 *   <li>{@code stall(d)}: wait d (or until released), then forward
 *   <li>{@code hold()}: keep the request until {@link Rule#release}; the test kills the client meanwhile.
 *       Released with forward=false the connection is reset and the request never reaches the server
 *   <li>{@code holdResponse()}: forward the request, keep the server's answer (the write happened, the
 *       client never hears of it)
 *   <li>{@code reset()}: reset the connection (SO_LINGER 0) instead of forwarding
 *   <li>{@code resetAfterForward()}: forward, read the answer, then reset (a lost acknowledgement)
 *   <li>{@code cutResponse(n)}: forward, but close after n bytes of the response body
 * </ul>
 *
 * Bounded: at most 64 connections at once, every socket has a 2-minute read timeout, holds end by
 * themselves after 2 minutes, and all threads are daemons. {@link #close()} stops everything.
 */
final class FaultProxy implements AutoCloseable {
    static final Duration MAX_HOLD = Duration.ofMinutes(2);
    private static final int IO_TIMEOUT_MS = (int) Duration.ofMinutes(2).toMillis();
    private static final int MAX_CONNECTIONS = 64;
    private static final int MAX_HEAD = 64 * 1024;

    /** One request as the proxy saw it. Header names are lower-cased. */
    record Request(int index, String method, String target, Map<String, String> headers, long atNanos) {
        String path() {
            int q = target.indexOf('?');
            return q < 0 ? target : target.substring(0, q);
        }

        String query() {
            int q = target.indexOf('?');
            return q < 0 ? "" : target.substring(q + 1);
        }

        /** True when the query has parameter {@code name} (with or without a value). */
        boolean hasParam(String name) {
            for (String p : query().split("&")) {
                if (p.equals(name) || p.startsWith(name + "=")) return true;
            }
            return false;
        }

        /** The object key (path-style: /bucket/key), "" for bucket-level requests. */
        String key() {
            String p = URLDecoder.decode(path().replace("+", "%2B"), StandardCharsets.UTF_8);
            int slash = p.indexOf('/', 1);
            return slash < 0 ? "" : p.substring(slash + 1);
        }

        boolean isCopy() {
            return headers.containsKey("x-amz-copy-source");
        }

        @Override
        public String toString() {
            return "#" + index + " " + method + " " + target;
        }
    }

    /** One line of the request log: the request and what happened to it. */
    record Entry(Request request, String outcome) {
        @Override
        public String toString() {
            return request + " -> " + outcome;
        }
    }

    enum Kind { PASS, ERROR, STALL, HOLD, HOLD_RESPONSE, RESET, RESET_AFTER_FORWARD, CUT_RESPONSE }

    /** A fault aimed at the requests a predicate picks. Configure it fluently right after {@link #on}. */
    final class Rule {
        private final String label;
        private final Predicate<Request> when;
        private volatile Kind kind = Kind.PASS;
        private volatile int status;
        private volatile String code;
        private volatile Duration delay = Duration.ZERO;
        private volatile long cutAfter;
        private final AtomicInteger remaining = new AtomicInteger(1);
        private final List<Request> hits = new CopyOnWriteArrayList<>();
        private final CountDownLatch held = new CountDownLatch(1);
        private final CountDownLatch released = new CountDownLatch(1);
        private volatile boolean forwardOnRelease;

        private Rule(String label, Predicate<Request> when) {
            this.label = label;
            this.when = when;
        }

        Rule fail(int status, String code) {
            this.kind = Kind.ERROR;
            this.status = status;
            this.code = code;
            return this;
        }

        Rule stall(Duration d) {
            this.kind = Kind.STALL;
            this.delay = d;
            return this;
        }

        Rule hold() {
            this.kind = Kind.HOLD;
            return this;
        }

        Rule holdResponse() {
            this.kind = Kind.HOLD_RESPONSE;
            return this;
        }

        Rule reset() {
            this.kind = Kind.RESET;
            return this;
        }

        Rule resetAfterForward() {
            this.kind = Kind.RESET_AFTER_FORWARD;
            return this;
        }

        Rule cutResponse(long bodyBytes) {
            this.kind = Kind.CUT_RESPONSE;
            this.cutAfter = bodyBytes;
            return this;
        }

        /** Acts on the next n matching requests (default 1). */
        Rule times(int n) {
            remaining.set(n);
            return this;
        }

        /** Acts on every matching request. */
        Rule always() {
            remaining.set(Integer.MAX_VALUE);
            return this;
        }

        /** The requests this rule acted on. */
        List<Request> hits() {
            return List.copyOf(hits);
        }

        /** Waits until a request is being held (hold/holdResponse); false when the deadline passes. */
        boolean awaitHeld(Duration timeout) {
            try {
                return held.await(timeout.toMillis(), TimeUnit.MILLISECONDS);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                return false;
            }
        }

        /** Ends a hold (or a stall): forward=true delivers it, false resets the connection. */
        void release(boolean forward) {
            forwardOnRelease = forward;
            remaining.set(0);
            released.countDown();
        }

        /** True while (or after) a request is held by this rule. */
        boolean isHeld() {
            return held.getCount() == 0;
        }

        private boolean claim(Request r) {
            if (!when.test(r)) return false;
            while (true) {
                int left = remaining.get();
                if (left <= 0) return false;
                if (left == Integer.MAX_VALUE || remaining.compareAndSet(left, left - 1)) {
                    hits.add(r);
                    return true;
                }
            }
        }

        /** Waits for release at most {@code max}; returns true when released (false: timed out). */
        private boolean awaitRelease(Duration max) {
            try {
                return released.await(max.toMillis(), TimeUnit.MILLISECONDS);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                return false;
            }
        }

        @Override
        public String toString() {
            return label + " " + kind;
        }
    }

    private final InetSocketAddress upstream;
    private final ServerSocket server;
    private final ExecutorService threads = Executors.newCachedThreadPool(r -> {
        Thread t = new Thread(r, "fault-proxy");
        t.setDaemon(true);
        return t;
    });
    private final Semaphore slots = new Semaphore(MAX_CONNECTIONS);
    private final Set<Socket> open = ConcurrentHashMap.newKeySet();
    private final List<Rule> rules = new CopyOnWriteArrayList<>();
    private final List<Entry> log = Collections.synchronizedList(new ArrayList<>());
    private final AtomicInteger counter = new AtomicInteger();
    private volatile boolean closed;

    /** A proxy forwarding to the S3 server at {@code upstreamEndpoint} (http://127.0.0.1:port). */
    FaultProxy(String upstreamEndpoint) {
        java.net.URI uri = java.net.URI.create(upstreamEndpoint);
        if (!InetAddress.getLoopbackAddress().getHostAddress().equals(uri.getHost()) && !"localhost".equals(uri.getHost()))
            throw new IllegalArgumentException("FaultProxy forwards to loopback only, not " + uri.getHost());
        this.upstream = new InetSocketAddress(InetAddress.getLoopbackAddress(), uri.getPort());
        try {
            server = new ServerSocket(0, 50, InetAddress.getLoopbackAddress());
        } catch (IOException e) {
            throw new java.io.UncheckedIOException(e);
        }
        threads.execute(this::acceptLoop);
    }

    String endpoint() {
        return "http://127.0.0.1:" + server.getLocalPort();
    }

    /** A new rule for the requests {@code when} picks; rules are tried in the order they were added. */
    Rule on(String label, Predicate<Request> when) {
        Rule rule = new Rule(label, when);
        rules.add(rule);
        return rule;
    }

    /** Releases every hold (dropping the held requests) and forgets all rules. */
    void clearRules() {
        for (Rule r : rules) r.release(false);
        rules.clear();
    }

    /** Every request seen so far, in arrival order, with what happened to it. */
    List<Entry> log() {
        synchronized (log) {
            return List.copyOf(log);
        }
    }

    void clearLog() {
        log.clear();
    }

    /** The request log as text, one request per line (for failure messages). */
    String logText() {
        StringBuilder sb = new StringBuilder();
        for (Entry e : log()) sb.append(e).append('\n');
        return sb.toString();
    }

    // ---- predicates for S3 requests (path-style: /bucket/key) ----

    // A snapshot file's key is incremental/<its path>/<sha256>: predicates match a part of the key.

    /** A plain object PUT (not a copy, not a part) of a key containing {@code part}. */
    static Predicate<Request> put(String part) {
        return r -> r.method().equals("PUT") && !r.isCopy() && !r.hasParam("partNumber") && r.key().contains(part);
    }

    static Predicate<Request> get(String part) {
        return r -> r.method().equals("GET") && !r.key().isEmpty() && r.key().contains(part);
    }

    /** The batch delete of retention: POST /bucket?delete. */
    static Predicate<Request> deleteObjects() {
        return r -> r.method().equals("POST") && r.key().isEmpty() && r.hasParam("delete");
    }

    /** ListObjectsV2 (GET /bucket?list-type=2...). */
    static Predicate<Request> listObjects() {
        return r -> r.method().equals("GET") && r.key().isEmpty() && r.hasParam("list-type");
    }

    /** ListMultipartUploads (GET /bucket?uploads...). */
    static Predicate<Request> listUploads() {
        return r -> r.method().equals("GET") && r.key().isEmpty() && r.hasParam("uploads");
    }

    // ---- the proxy ----

    private void acceptLoop() {
        while (!closed) {
            Socket client;
            try {
                client = server.accept();
            } catch (IOException e) {
                return; // closed
            }
            if (!slots.tryAcquire()) {
                reset(client);
                continue;
            }
            open.add(client);
            threads.execute(() -> {
                try {
                    handle(client);
                } catch (IOException | RuntimeException e) {
                    // the client or the server went away; nothing to report beyond the log
                } finally {
                    closeQuietly(client);
                    open.remove(client);
                    slots.release();
                }
            });
        }
    }

    private void handle(Socket client) throws IOException {
        client.setSoTimeout(IO_TIMEOUT_MS);
        InputStream in = new BufferedInputStream(client.getInputStream(), 1 << 16);
        byte[] headBytes = readHead(in);
        if (headBytes == null) return;
        String head = new String(headBytes, StandardCharsets.ISO_8859_1);
        String[] lines = head.split("\r\n");
        String[] requestLine = lines[0].split(" ");
        if (requestLine.length < 3) return;
        Map<String, String> headers = new LinkedHashMap<>();
        StringBuilder rewritten = new StringBuilder(lines[0]).append("\r\n");
        for (int i = 1; i < lines.length; i++) {
            String line = lines[i];
            if (line.isEmpty()) continue;
            int colon = line.indexOf(':');
            String name = colon < 0 ? line : line.substring(0, colon).trim().toLowerCase(Locale.ROOT);
            headers.putIfAbsent(name, colon < 0 ? "" : line.substring(colon + 1).trim());
            if (name.equals("connection") || name.equals("keep-alive")) continue;
            rewritten.append(line).append("\r\n");
        }
        rewritten.append("Connection: close\r\n\r\n");
        Request request = new Request(counter.getAndIncrement(), requestLine[0], requestLine[1], Map.copyOf(headers), System.nanoTime());
        Rule rule = null;
        for (Rule r : rules) {
            if (r.claim(request)) {
                rule = r;
                break;
            }
        }
        Kind kind = rule == null ? Kind.PASS : rule.kind;
        switch (kind) {
            case ERROR -> {
                drainBody(in, headers);
                byte[] body = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>" + rule.code
                        + "</Code><Message>injected by FaultProxy</Message><RequestId>fault-" + request.index()
                        + "</RequestId></Error>").getBytes(StandardCharsets.UTF_8);
                boolean head_ = request.method().equals("HEAD");
                String response = "HTTP/1.1 " + rule.status + " " + reason(rule.status) + "\r\n"
                        + "Content-Type: application/xml\r\nContent-Length: " + body.length + "\r\n"
                        + "x-amz-request-id: fault-" + request.index() + "\r\nConnection: close\r\n\r\n";
                OutputStream out = client.getOutputStream();
                out.write(response.getBytes(StandardCharsets.ISO_8859_1));
                if (!head_) out.write(body);
                out.flush();
                record(request, "injected " + rule.status + " " + rule.code);
                return;
            }
            case RESET -> {
                record(request, "injected reset");
                reset(client);
                return;
            }
            case STALL -> {
                record(request, "stalled " + rule.delay.toMillis() + " ms");
                rule.awaitRelease(rule.delay);
            }
            case HOLD -> {
                record(request, "held");
                rule.held.countDown();
                boolean released = rule.awaitRelease(MAX_HOLD);
                if (!released || !rule.forwardOnRelease || closed) {
                    record(request, "dropped after hold");
                    reset(client);
                    return;
                }
            }
            default -> { }
        }
        forward(client, in, rewritten.toString().getBytes(StandardCharsets.ISO_8859_1), request, rule, kind);
    }

    private void forward(Socket client, InputStream in, byte[] head, Request request, Rule rule, Kind kind) throws IOException {
        try (Socket up = new Socket()) {
            open.add(up);
            try {
                up.connect(upstream, 10_000);
                up.setSoTimeout(IO_TIMEOUT_MS);
                OutputStream upOut = up.getOutputStream();
                upOut.write(head);
                upOut.flush();
                // Request body: pumped as it comes; the client's end (or death) ends the server's input.
                threads.execute(() -> {
                    try {
                        in.transferTo(upOut);
                        upOut.flush();
                        up.shutdownOutput();
                    } catch (IOException e) {
                        closeQuietly(up); // client died mid-body: the server sees a broken request
                    }
                });
                InputStream upIn = new BufferedInputStream(up.getInputStream(), 1 << 16);
                OutputStream out = client.getOutputStream();
                byte[] responseHead;
                int status;
                while (true) {
                    responseHead = readHead(upIn);
                    if (responseHead == null) {
                        record(request, "server closed without an answer");
                        return;
                    }
                    status = statusOf(responseHead);
                    if (status >= 200 || status < 100) break;
                    out.write(responseHead); // 100 Continue
                    out.flush();
                }
                record(request, String.valueOf(status) + (kind == Kind.PASS ? "" : " (" + kind + ")"));
                switch (kind) {
                    case HOLD_RESPONSE -> {
                        byte[] body = upIn.readAllBytes();
                        rule.held.countDown();
                        boolean released = rule.awaitRelease(MAX_HOLD);
                        if (!released || !rule.forwardOnRelease || closed) {
                            record(request, "answer " + status + " dropped after hold");
                            reset(client);
                            return;
                        }
                        out.write(responseHead);
                        out.write(body);
                        out.flush();
                    }
                    case RESET_AFTER_FORWARD -> {
                        upIn.readAllBytes();
                        record(request, "answer " + status + " replaced by a reset");
                        reset(client);
                    }
                    case CUT_RESPONSE -> {
                        out.write(responseHead);
                        byte[] body = upIn.readNBytes((int) Math.min(Integer.MAX_VALUE, rule.cutAfter));
                        out.write(body);
                        out.flush();
                        record(request, "answer " + status + " cut after " + body.length + " body bytes");
                        client.shutdownOutput(); // a clean end of stream, short of Content-Length
                    }
                    default -> {
                        out.write(responseHead);
                        upIn.transferTo(out);
                        out.flush();
                    }
                }
            } finally {
                open.remove(up);
            }
        }
    }

    private void record(Request request, String outcome) {
        log.add(new Entry(request, outcome));
    }

    /** Reads up to and including the blank line that ends an HTTP head; null at a clean end of stream. */
    private static byte[] readHead(InputStream in) throws IOException {
        ByteArrayOutputStream buf = new ByteArrayOutputStream(1024);
        int state = 0; // matched chars of \r\n\r\n
        while (true) {
            int b = in.read();
            if (b < 0) return buf.size() == 0 ? null : buf.toByteArray();
            buf.write(b);
            if (buf.size() > MAX_HEAD) throw new IOException("head too large");
            state = switch (state) {
                case 0, 2 -> b == '\r' ? state + 1 : 0;
                case 1, 3 -> b == '\n' ? state + 1 : (b == '\r' ? 1 : 0);
                default -> 0;
            };
            if (state == 4) return buf.toByteArray();
        }
    }

    private static int statusOf(byte[] head) {
        String first = new String(head, StandardCharsets.ISO_8859_1).split("\r\n", 2)[0];
        String[] parts = first.split(" ");
        try {
            return parts.length > 1 ? Integer.parseInt(parts[1]) : -1;
        } catch (NumberFormatException e) {
            return -1;
        }
    }

    /** Reads and drops a request body that will not be forwarded (unless the client waits for 100-continue). */
    private static void drainBody(InputStream in, Map<String, String> headers) throws IOException {
        if ("100-continue".equalsIgnoreCase(headers.getOrDefault("expect", ""))) return;
        String length = headers.get("content-length");
        if (length == null) return;
        long n = Long.parseLong(length.trim());
        in.skipNBytes(Math.min(n, 256L << 20));
    }

    private static String reason(int status) {
        return switch (status) {
            case 500 -> "Internal Server Error";
            case 502 -> "Bad Gateway";
            case 503 -> "Service Unavailable";
            case 504 -> "Gateway Timeout";
            case 403 -> "Forbidden";
            case 404 -> "Not Found";
            default -> "Error";
        };
    }

    private static void reset(Socket s) {
        try {
            s.setSoLinger(true, 0);
        } catch (IOException e) {
            // already closed
        }
        closeQuietly(s);
    }

    private static void closeQuietly(Socket s) {
        try {
            s.close();
        } catch (IOException e) {
            // nothing to do
        }
    }

    @Override
    public void close() {
        closed = true;
        for (Rule r : rules) r.release(false);
        try {
            server.close();
        } catch (IOException e) {
            // already closed
        }
        for (Socket s : open) reset(s);
        threads.shutdownNow();
    }
}

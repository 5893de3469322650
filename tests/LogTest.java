import org.junit.jupiter.api.Test;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;

import static org.junit.jupiter.api.Assertions.*;

/**
 * The logger itself keeps secrets out of every line, whatever its caller passed it: a git error quoting a remote URL
 * with a token in it, an exception message holding a configured secret. (Callers redact too; this proves the last
 * line of defence on its own.)
 */
class LogTest {
    @Test
    void aSecretOrACredentialInAUrlNeverReachesALogLine() {
        String secret = "s3cr3t-" + System.nanoTime();
        Log.addSecret(secret);
        ByteArrayOutputStream captured = new ByteArrayOutputStream();
        PrintStream before = Log.out;
        Log.out = new PrintStream(captured, true, StandardCharsets.UTF_8);
        try {
            Log.error("git fetch: fatal: unable to access 'https://agent:ghp_token123@github.com/o/r.git/': 403");
            Log.warn("dolt: exit 1: remote 'aws://user:" + secret + "@bucket/db' refused");
            Log.info(R2Cli.messageChain(new R2Exception(1, "sync: s3 put failed", new IllegalStateException("signature for " + secret))));
        } finally {
            Log.out = before;
        }
        String text = captured.toString(StandardCharsets.UTF_8);
        assertEquals(3, text.lines().count(), text);
        assertFalse(text.contains("ghp_token123"), text);
        assertFalse(text.contains(secret), text);
        assertTrue(text.contains("https://***@github.com/o/r.git/") && text.contains("***"), text);
    }
}

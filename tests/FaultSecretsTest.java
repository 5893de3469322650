import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.SecureRandom;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.stream.Collectors;
import org.junit.jupiter.api.Test;

/**
 * Secrets never appear in any output: the R2 secret key, the API token, a credential in a git remote URL and one in
 * the API URL, searched for in every byte of output (--debug stack traces included), every heartbeat body, every
 * stored object and every local state file.
 */
class FaultSecretsTest extends FaultSuite {
    @Override
    void start() {
        submit(() -> secrets(group("secrets")), "secrets");
    }

    @Test
    void secretsNeverAppearInLogsHeartbeatsManifestsOrStackTraces() {
        check("secrets");
    }

    private void secrets(FaultKit.Group g) throws IOException {
        Lane lane = lane("secrets", TownBuilder.create().rigs("alpha"));
        HeartbeatReceiver api = new HeartbeatReceiver();
        closeAtEnd.add(api);
        String token = "gtk_" + HexFormat.of().formatHex(new SecureRandom().generateSeed(16));
        String urlSecret = "ghp_" + HexFormat.of().formatHex(new SecureRandom().generateSeed(16));
        String hbPassword = "hbpw_" + HexFormat.of().formatHex(new SecureRandom().generateSeed(8));
        String credentialUrl = "https://fault-user:" + urlSecret + "@git.example.invalid/alpha.git";
        for (String repo : List.of("alpha/.repo.git", "alpha/mayor/rig", "alpha/crew/max"))
            TestTools.git(lane.town.root().resolve(repo), "remote", "set-url", "origin", credentialUrl);
        lane.setSyncEnv("GASTOWN_API_URL", api.baseUrl(), "GASTOWN_API_TOKEN", token);
        List<String> secrets = List.of(s3.secretKey(), token, urlSecret, hbPassword);

        g.step("a normal sync, restore, verify and list, all searched", () -> {
            TestTools.ProcResult sync = lane.firstSync();
            assertNoSecret(secrets, "sync", sync);
            Path root = TestTools.tempDir("fault-secret-restore-");
            Map<String, String> apiEnv = Map.of("GASTOWN_API_URL", api.baseUrl(), "GASTOWN_API_TOKEN", token);
            for (String[] args : List.of(new String[0], new String[] {"--verify"}, new String[] {"--list"}, new String[] {"--list", "--json"})) {
                TestTools.ProcResult r = lane.restore(args.length == 0 ? root.resolve("town") : root.resolve("other"), apiEnv, args);
                if (r.exitCode() != 0) throw new AssertionError("restore " + List.of(args) + " failed:\n" + r.stderr());
                assertNoSecret(secrets, "restore " + List.of(args), r);
            }
            if (api.requests().stream().noneMatch(q -> ("Bearer " + token).equals(q.header("authorization"))))
                throw new AssertionError("the token never reached the API, so the search would prove nothing");
            // The git configs go into the file packs with the credential cut out of the URL (the search below
            // proves the secret itself is nowhere in the bucket). A pack holds zstd frames: read as they unpack.
            String packs = store.keys(lane.bucket, "gastown/" + lane.townId + "/incremental/files/").stream().filter(k -> k.contains(PACK))
                    .map(k -> new String(unpacked(store.get(lane.bucket, k)), StandardCharsets.ISO_8859_1)).collect(Collectors.joining());
            if (!packs.contains("https://***@git.example.invalid/alpha.git"))
                throw new AssertionError("no file pack holds the git config with the (redacted) credential URL");
        });
        g.fault("secrets: a storage failure under --debug", () -> {
            lane.touch(true);
            lane.proxy.on("fault", FaultProxy.put("/manifest.json")).fail(403, "AccessDenied");
            try {
                TestTools.ProcResult r = lane.sync("--debug");
                if (r.exitCode() != 1) throw new AssertionError("exit " + r.exitCode());
                assertNoSecret(secrets, "sync --debug", r);
            } finally {
                lane.proxy.clearRules();
            }
        });
        g.fault("secrets: an unexpected error under --debug prints a stack trace without them", () -> {
            Path bad = lane.town.root().resolve(".dolt-data/bad db");
            Files.createDirectories(bad.resolve(".dolt/noms"));
            try {
                TestTools.ProcResult r = lane.sync("--debug");
                if (r.exitCode() == 0) throw new AssertionError("expected the unsafe database name to fail the sync");
                if (!r.stderr().contains("\tat ")) throw new AssertionError("--debug printed no stack trace:\n" + r.stderr());
                assertNoSecret(secrets, "sync --debug", r);
            } finally {
                TestTools.deleteRecursively(bad);
            }
        });
        g.fault("secrets: a credential in the API URL, the API down", () -> {
            int port = TestTools.freePort();
            lane.touch(true);
            TestTools.ProcResult r = lane.sync(Map.of("GASTOWN_API_URL", "http://hb-user:" + hbPassword + "@127.0.0.1:" + port));
            if (r.exitCode() != 0) throw new AssertionError("a heartbeat that cannot be sent must not fail the sync (exit "
                    + r.exitCode() + ")\n" + TestTools.tail(r.stderr(), 2000));
            assertNoSecret(secrets, "sync", r);
        });
        g.fault("secrets: a credential in R2_ENDPOINT is refused without echoing it", () -> {
            TestTools.ProcResult r = lane.sync(Map.of("R2_ENDPOINT", "http://ak:" + hbPassword + "@127.0.0.1:9"));
            if (r.exitCode() != 2) throw new AssertionError("exit " + r.exitCode() + ", expected 2 (config)");
            assertNoSecret(secrets, "sync", r);
        });
        g.step("every heartbeat body, stored object and local state file searched", () -> {
            List<String> leaks = new ArrayList<>();
            for (HeartbeatReceiver.Request q : api.requests())
                leaks.addAll(find(secrets, "heartbeat body " + q.path(), q.body().getBytes(StandardCharsets.UTF_8)));
            // File packs and index pieces (in the bucket, and the index kept in the state dir) are zstd: searched as
            // stored and as they unpack.
            for (String key : store.list(lane.bucket, "").keySet()) leaks.addAll(find(secrets, "object " + key, unpacked(store.get(lane.bucket, key))));
            try (var s = Files.walk(lane.local)) {
                for (Path p : s.filter(Files::isRegularFile).collect(Collectors.toList()))
                    leaks.addAll(find(secrets, "local file " + lane.local.relativize(p), unpacked(Files.readAllBytes(p))));
            }
            if (!leaks.isEmpty()) throw new AssertionError("secrets leaked:\n" + String.join("\n", leaks));
        });
    }

    /** Every byte of a process's stdout and stderr, searched for every secret. */
    private static void assertNoSecret(List<String> secrets, String what, TestTools.ProcResult r) {
        List<String> leaks = new ArrayList<>(find(secrets, what + " stdout", r.stdout().getBytes(StandardCharsets.UTF_8)));
        leaks.addAll(find(secrets, what + " stderr", r.stderr().getBytes(StandardCharsets.UTF_8)));
        if (!leaks.isEmpty()) throw new AssertionError("secrets leaked:\n" + String.join("\n", leaks));
    }

    /**
     * The bytes as stored, followed (when they are zstd frames: a file pack, a piece of the file index) by what they
     * unpack to, as far as they unpack: a secret compressed is still a secret.
     */
    private static byte[] unpacked(byte[] data) {
        if (data.length < 4 || (data[0] & 0xff) != 0x28 || (data[1] & 0xff) != 0xb5 || (data[2] & 0xff) != 0x2f || (data[3] & 0xff) != 0xfd)
            return data;
        java.io.ByteArrayOutputStream out = new java.io.ByteArrayOutputStream();
        out.writeBytes(data);
        try (var in = new com.github.luben.zstd.ZstdInputStream(new java.io.ByteArrayInputStream(data))) {
            byte[] buf = new byte[1 << 16];
            for (int n; (n = in.read(buf)) > 0; ) out.write(buf, 0, n);
        } catch (IOException e) {
            // a piece of a larger pack: what unpacked so far is searched
        }
        return out.toByteArray();
    }

    private static List<String> find(List<String> secrets, String where, byte[] data) {
        List<String> found = new ArrayList<>();
        String text = new String(data, StandardCharsets.ISO_8859_1);
        for (String s : secrets) if (text.contains(s)) found.add(where + " contains secret " + s.substring(0, 4) + "...");
        return found;
    }
}

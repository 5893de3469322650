///usr/bin/env jbang "$0" "$@" ; exit $?
//JAVA 17+
//DEPS org.junit.jupiter:junit-jupiter-engine:5.11.4
//DEPS org.junit.jupiter:junit-jupiter-params:5.11.4
//DEPS org.junit.platform:junit-platform-launcher:1.11.4
//DEPS software.amazon.awssdk:bom:2.57.8@pom
//DEPS software.amazon.awssdk:s3
//DEPS org.slf4j:slf4j-nop:1.7.36
//
// Test support (package-less; one concept per file):
//SOURCES TestTools.java
//SOURCES S3Server.java
//SOURCES HeartbeatReceiver.java
//SOURCES TestTown.java
//SOURCES TestDoltServer.java
//SOURCES TownBuilder.java
//SOURCES TownState.java
//SOURCES DoltFacts.java
//SOURCES TownView.java
// The fault suite's shared part (its classes are tests/Fault*Test.java):
//SOURCES FaultSuite.java
//SOURCES FaultKit.java
//SOURCES FaultProxy.java
//
// Every test class: a new tests/<Name>Test.java is picked up by this glob (JBang 0.132.1 expands it).
//SOURCES *Test.java
//
// Code under test (their own //DEPS come along; one version per artifact across all files):
//SOURCES ../R2Sync.java
//SOURCES ../R2Restore.java
//SOURCES ../R2Status.java
//SOURCES ../R2Prune.java
//SOURCES Product.java
//SOURCES BucketView.java
//SOURCES TreeHash.java
//SOURCES HostileIndex.java

import static org.junit.platform.engine.discovery.ClassNameFilter.includeClassNamePatterns;
import static org.junit.platform.engine.discovery.DiscoverySelectors.selectClass;
import static org.junit.platform.engine.discovery.DiscoverySelectors.selectClasspathRoots;
import static org.junit.platform.engine.discovery.DiscoverySelectors.selectMethod;

import java.io.PrintStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.stream.Collectors;
import org.junit.platform.engine.DiscoverySelector;
import org.junit.platform.engine.TestExecutionResult;
import org.junit.platform.engine.support.descriptor.ClassSource;
import org.junit.platform.engine.support.descriptor.MethodSource;
import org.junit.platform.launcher.LauncherDiscoveryRequest;
import org.junit.platform.launcher.TestExecutionListener;
import org.junit.platform.launcher.TestIdentifier;
import org.junit.platform.launcher.TestPlan;
import org.junit.platform.launcher.core.LauncherDiscoveryRequestBuilder;
import org.junit.platform.launcher.core.LauncherFactory;

/**
 * Runs the test suite on the JUnit Platform and prints one line per test as it finishes, then the
 * closing line "N passed, N failed, N skipped". Exit code 1 when a test failed or none ran.
 *
 * <p>Arguments select tests: {@code FooTest} (a class) or {@code FooTest#method} (one method);
 * none means every *Test class compiled into this script.
 */
public class AllTests {
    private static final PrintStream OUT = System.out;
    private static volatile Set<String> planned = Set.of();

    public static void main(String[] args) throws Exception {
        List<DiscoverySelector> selectors = new ArrayList<>();
        for (String arg : args) {
            DiscoverySelector selector = selector(arg);
            if (selector == null) {
                OUT.println("no test class " + arg.replaceFirst("#.*", "") + " (tests/<Name>Test.java, package-less)");
                finish(new Reporter());
            }
            selectors.add(selector);
        }
        LauncherDiscoveryRequestBuilder request = LauncherDiscoveryRequestBuilder.request();
        if (selectors.isEmpty()) {
            // JBang compiles every //SOURCES file into one jar (or dir): scan it for *Test classes.
            Path compiled = Path.of(AllTests.class.getProtectionDomain().getCodeSource().getLocation().toURI());
            request.selectors(selectClasspathRoots(Set.of(compiled))).filters(includeClassNamePatterns(".*Test"));
        } else {
            request.selectors(selectors);
        }
        LauncherDiscoveryRequest discovery = request.build();

        Reporter reporter = new Reporter();
        LauncherFactory.create().execute(discovery, reporter);
        finish(reporter);
    }

    /** Prints the closing line and exits: 1 when a test failed or none ran. */
    private static void finish(Reporter reporter) throws java.io.IOException {
        String summary = reporter.passed + " passed, " + reporter.failed + " failed, " + reporter.skipped + " skipped";
        String summaryFile = System.getenv("ALLTESTS_SUMMARY_FILE"); // lets tests/run tell a crash from a result
        if (summaryFile != null && !summaryFile.isBlank()) Files.writeString(Path.of(summaryFile), summary + "\n");
        if (reporter.passed + reporter.failed == 0) OUT.println("no test ran (check the selection)");
        OUT.println(summary);
        OUT.flush();
        System.exit(reporter.failed > 0 || reporter.passed + reporter.failed == 0 ? 1 : 0);
    }

    /**
     * The test classes this run executes, known from its start (empty when AllTests does not run them): lets the
     * classes of one suite start their work together (the fault suite's lanes).
     */
    static Set<String> plannedClasses() {
        return planned;
    }

    private static DiscoverySelector selector(String arg) {
        int hash = arg.indexOf('#');
        try {
            if (hash < 0) return selectClass(Class.forName(arg));
            return selectMethod(Class.forName(arg.substring(0, hash)), arg.substring(hash + 1));
        } catch (ClassNotFoundException e) {
            return null;
        }
    }

    /** Prints each test as it finishes and counts the outcomes. */
    static final class Reporter implements TestExecutionListener {
        int passed;
        int failed;
        int skipped;
        private TestPlan plan;
        private final Map<String, Long> started = new ConcurrentHashMap<>();

        @Override
        public void testPlanExecutionStarted(TestPlan testPlan) {
            this.plan = testPlan;
            planned = testPlan.getRoots().stream().flatMap(root -> testPlan.getDescendants(root).stream())
                    .flatMap(id -> id.getSource().stream()).filter(ClassSource.class::isInstance)
                    .map(source -> ((ClassSource) source).getClassName()).collect(Collectors.toUnmodifiableSet());
        }

        @Override
        public void executionStarted(TestIdentifier id) {
            started.put(id.getUniqueId(), System.nanoTime());
        }

        @Override
        public void executionSkipped(TestIdentifier id, String reason) {
            // A skipped class skips all its tests: count each of them.
            long tests = id.isTest() ? 1 : plan.getDescendants(id).stream().filter(TestIdentifier::isTest).count();
            skipped += (int) tests;
            OUT.printf("SKIP  %s  (%s)%n", name(id), reason);
        }

        @Override
        public void executionFinished(TestIdentifier id, TestExecutionResult result) {
            Long t0 = started.remove(id.getUniqueId());
            double seconds = t0 == null ? 0 : (System.nanoTime() - t0) / 1e9;
            TestExecutionResult.Status status = result.getStatus();
            if (id.isTest()) {
                if (status == TestExecutionResult.Status.SUCCESSFUL) passed++;
                else if (status == TestExecutionResult.Status.ABORTED) skipped++;
                else failed++;
                String label = switch (status) {
                    case SUCCESSFUL -> "PASS";
                    case ABORTED -> "SKIP";
                    case FAILED -> "FAIL";
                };
                OUT.printf("%s  %s  (%.2f s)%n", label, name(id), seconds);
            } else if (status == TestExecutionResult.Status.FAILED) {
                // A class-level failure (@BeforeAll, constructor): its tests never ran, count it once.
                failed++;
                OUT.printf("FAIL  %s [container]  (%.2f s)%n", name(id), seconds);
            }
            if (status != TestExecutionResult.Status.SUCCESSFUL) {
                result.getThrowable().ifPresent(t -> OUT.print(indent(trimmedTrace(t))));
            }
            OUT.flush();
        }

        private String name(TestIdentifier id) {
            if (id.getSource().orElse(null) instanceof MethodSource m) {
                String display = id.getDisplayName();
                String method = m.getMethodName();
                // Parameterized and repeated tests: keep the invocation's display name.
                return m.getClassName() + "." + method + (display.startsWith(method + "(") ? "" : " " + display);
            }
            return id.getLegacyReportingName();
        }
    }

    /** The exception and its causes, without the JUnit and reflection frames below the test. */
    static String trimmedTrace(Throwable t) {
        StringBuilder sb = new StringBuilder();
        String prefix = "";
        for (Throwable c = t; c != null; c = c.getCause(), prefix = "Caused by: ") {
            sb.append(prefix).append(c).append('\n');
            int shown = 0;
            for (StackTraceElement e : c.getStackTrace()) {
                String cls = e.getClassName();
                boolean harness = cls.startsWith("org.junit.") || cls.startsWith("jdk.internal.reflect.")
                        || cls.startsWith("java.lang.reflect.") || cls.startsWith("sun.reflect.");
                if (harness && shown > 0) break; // below the test method: only the harness calling it
                if (harness) continue;             // above it: the assertion helpers
                if (++shown > 15) {
                    sb.append("\t...\n");
                    break;
                }
                sb.append("\tat ").append(e).append('\n');
            }
            if (c.getCause() == c) break;
        }
        return sb.toString();
    }

    private static String indent(String s) {
        return s.lines().map(l -> "      " + l + "\n").reduce("", String::concat);
    }
}

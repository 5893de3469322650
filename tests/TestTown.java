import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

/**
 * A town built by {@link TownBuilder}, and what the builder put in it.
 *
 * @param root            the town root (has mayor/town.json)
 * @param upstreamDir     bare "upstream" repos, one per rig ({@code <rig>.git}), OUTSIDE the town root
 * @param rigs            rigs with a full git setup (shallow .repo.git, worktrees, clones)
 * @param emptyRigs       rigs whose .repo.git has no commits (no worktrees, no clones)
 * @param doltPort        the port in .dolt-data/config.yaml and the .beads/metadata.json files
 * @param worktrees       worktree path relative to root -> branch, e.g. alpha/refinery/rig -> main
 * @param keptFiles       files and symlinks (relative) the builder wrote that a backup must keep
 * @param skippedFiles    volatile files (relative: pids, locks, logs, a socket, a fifo) a backup must skip
 * @param emptyDirs       empty directories (relative) a backup must keep
 */
record TestTown(Path root, Path upstreamDir, List<String> rigs, List<String> emptyRigs, int doltPort,
                Map<String, String> worktrees, List<String> keptFiles, List<String> skippedFiles, List<String> emptyDirs) {

    static final List<String> POLECATS = List.of("furiosa", "nux");
    static final String CREW = "max";
    static final String DEFAULT_BRANCH = "main";
    /** The dolt branch (besides main) every database has, with a commit of its own. */
    static final String DOLT_BRANCH = "feature";

    TestTown {
        rigs = List.copyOf(rigs);
        emptyRigs = List.copyOf(emptyRigs);
        worktrees = Map.copyOf(worktrees);
        keptFiles = List.copyOf(keptFiles);
        skippedFiles = List.copyOf(skippedFiles);
        emptyDirs = List.copyOf(emptyDirs);
    }

    /** Every rig, full and empty. */
    List<String> allRigs() {
        List<String> all = new ArrayList<>(rigs);
        all.addAll(emptyRigs);
        return all;
    }

    /** Dolt database names: hq, then one per rig. */
    List<String> databases() {
        List<String> dbs = new ArrayList<>(List.of("hq"));
        dbs.addAll(allRigs());
        return dbs;
    }

    Path rig(String name) {
        return root.resolve(name);
    }

    Path doltData() {
        return root.resolve(".dolt-data");
    }

    Path doltDb(String db) {
        return doltData().resolve(db);
    }

    Path upstream(String rig) {
        return upstreamDir.resolve(rig + ".git");
    }

    /** The rig's git_url (and push_url) as written in its config.json. */
    String gitUrl(String rig) {
        return "file://" + upstream(rig);
    }

    /** Starts `dolt sql-server` on .dolt-data the way gt does; close() the handle to stop it. */
    TestDoltServer startDoltServer() {
        return TestDoltServer.start(doltData(), doltPort);
    }
}

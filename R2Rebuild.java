// The rebuild of a snapshot (part of R2Common, included with //SOURCES): what a restore, --verify and the daemon's
// scheduled verification do before anything touches the volume. Download every object of the snapshot and check
// it against the manifest, the manifest against latest.json; then build the whole town in a directory of its own
// (databases, files, git directories), checked as it is built.

import java.io.IOException;
import java.nio.file.*;
import java.time.Duration;
import java.time.Instant;
import java.util.*;
import java.util.stream.Collectors;

final class Rebuild {
    /** Repositories rebuilt at once (each a git process). */
    static final int REBUILDS = 2;

    private Rebuild() {}

    /**
     * A full trial restore of a snapshot in a temporary directory of workDir, every git object hashed again, removed
     * afterwards: what --verify and the daemon's scheduled verification run. Returns the snapshot's manifest.
     */
    static Manifest trial(Snapshots snapshots, Config config, Pointer latestPointer, String timestamp, Path workDir) throws IOException {
        Files.createDirectories(workDir);
        Path trial = Files.createTempDirectory(workDir, "r2-verify-");
        try {
            Snapshots.Downloaded prepared = download(snapshots, latestPointer, timestamp, trial.resolve("download"));
            build(prepared, trial.resolve("town"), config.townRoot(), GitRepo.Check.EVERY_OBJECT);
            return prepared.manifest();
        } finally {
            FileTrees.delete(trial);
        }
    }

    /** The snapshot downloaded and checked (Snapshots.download), zstd's native library loaded beside it for the files. */
    static Snapshots.Downloaded download(Snapshots snapshots, Pointer latest, String timestamp, Path dir) throws IOException {
        try (Background<Void> zstd = Background.start(PackWriter::loadZstd)) {
            Snapshots.Downloaded downloaded = snapshots.download(latest, timestamp, dir);
            zstd.join();
            return downloaded;
        }
    }

    /**
     * Builds the whole town in townDir, in two lanes at once: the databases (each by `dolt backup restore` in
     * a directory of its own: dolt, run in a directory, reads every database it finds there), and the files
     * from the packs followed by every git directory from its chain of packs (its HEAD, config and index are
     * files from the packs by then; repositories two at a time). Then the databases move into the town, the
     * work trees' state is compared with the manifest, and last the directories get their modes and mtimes.
     * Files hold the town's final paths (a worktree's .git file names the final root), so nothing needs
     * rewriting after the move.
     */
    static void build(Snapshots.Downloaded prepared, Path townDir, Path finalRoot, GitRepo.Check gitCheck) throws IOException {
        Instant t = Instant.now();
        Manifest manifest = prepared.manifest();
        Files.createDirectories(townDir);
        Tars.DirMetadata dirs = new Tars.DirMetadata();   // formats 3 to 5 only
        Path databases = prepared.dir().resolve("dolt-restore");
        Parallel.run(2, List.of(
                () -> {
                    for (DatabaseFacts db : manifest.databases())
                        DoltServer.restore(prepared.file(db.backup()), databases.resolve(db.path()), db, gitCheck == GitRepo.Check.EVERY_OBJECT);
                },
                () -> {
                    restoreFiles(prepared, townDir, dirs);
                    if (!finalRoot.toString().equals(manifest.townRoot())) relinkWorktrees(manifest, townDir, finalRoot);
                    Parallel.run(REBUILDS, manifest.repos().stream().<Parallel.Task>map(repo -> () -> {
                        Path gitDir = SafePath.requireInside(townDir, repo.path(), "repo");
                        GitRepo.restore(gitDir, repo, prepared::file, gitCheck);
                        warnAboutRedactedCredentials(repo, gitDir);
                    }).collect(Collectors.toList()));
                }));
        for (DatabaseFacts db : manifest.databases())
            moveInto(databases.resolve(db.path()).resolve(db.name()), SafePath.requireInside(townDir, db.path(), "database"));
        compareWorkTrees(manifest, townDir);
        if (manifest.contentPacks()) FilePacks.applyDirectories(indexPieces(prepared), townDir);
        else dirs.apply();
        Log.info("restore: snapshot " + prepared.timestamp() + ": " + manifest.databases().size() + " databases and "
                + manifest.repos().size() + " git repositories rebuilt and verified in staging in "
                + Log.seconds(Duration.between(t, Instant.now())));
    }

    /** The town's files from their packs, as the snapshot's format stores them. */
    private static void restoreFiles(Snapshots.Downloaded prepared, Path townDir, Tars.DirMetadata dirs) throws IOException {
        Manifest manifest = prepared.manifest();
        if (!manifest.contentPacks()) {
            TarPacks.restore(TarIndex.read(prepared.file(Keys.FILE_INDEX)), prepared::file, townDir, dirs);
            return;
        }
        Set<String> packs = manifest.filesUnder("files/packs").stream().map(f -> FilePacks.packId(f.path())).collect(Collectors.toSet());
        FilePacks.restore(indexPieces(prepared), id -> {
            if (!packs.contains(id))
                throw new SnapshotDamaged("file index: names pack " + Log.escape(id) + ", which the manifest does not list");
            return prepared.file(PackWriter.DIR + id);
        }, townDir);
    }

    private static List<Path> indexPieces(Snapshots.Downloaded prepared) {
        return prepared.manifest().fileIndex().stream().map(prepared::file).collect(Collectors.toList());
    }

    /** Moves a restored database into the town; the packs may have made its directory already (its other files). */
    private static void moveInto(Path restored, Path target) throws IOException {
        Files.createDirectories(target.getParent());
        if (!Files.exists(target, LinkOption.NOFOLLOW_LINKS)) {
            Files.move(restored, target, StandardCopyOption.ATOMIC_MOVE);
            return;
        }
        for (Path child : FileTrees.sortedChildren(restored)) {
            Path to = target.resolve(child.getFileName().toString());
            if (Files.exists(to, LinkOption.NOFOLLOW_LINKS))
                throw new SnapshotDamaged("restore: " + to + " comes both from the packs and from the database's backup");
            Files.move(child, to, StandardCopyOption.ATOMIC_MOVE);
        }
    }

    /**
     * A town restored under another root (the volume mounted elsewhere): git's worktree links are absolute,
     * so they are pointed at the new root, as `git worktree repair` would. Other absolute paths the town's
     * own files hold (dolt's data_dir in .dolt-data/config.yaml) are the operator's to change: say so.
     */
    private static void relinkWorktrees(Manifest manifest, Path townDir, Path finalRoot) throws IOException {
        String from = manifest.townRoot() + "/";
        String to = finalRoot + "/";
        for (RepoFacts repo : manifest.repos())
            for (WorkTreeFacts wt : repo.workTrees()) {
                if (wt.path().isEmpty() || Path.of(wt.gitDir()).isAbsolute()) continue;
                rewritePrefix(SafePath.requireInside(townDir, wt.path() + "/.git", "worktree link"), "gitdir: " + from, "gitdir: " + to);
                rewritePrefix(SafePath.requireInside(townDir, wt.gitDir() + "/gitdir", "worktree link"), from, to);
            }
        Log.warn("restore: snapshot " + manifest.timestamp() + " was taken of " + manifest.townRoot() + " and is restored into "
                + finalRoot + ": worktree links now name the new root, but files of the town that name the old one (such as "
                + "data_dir in .dolt-data/config.yaml) must be changed by hand before `gt up`");
    }

    /** Replaces a file's leading prefix (a one-line link file), keeping its mtime. */
    private static void rewritePrefix(Path file, String from, String to) throws IOException {
        if (!Files.isRegularFile(file, LinkOption.NOFOLLOW_LINKS)) return;
        String text = Files.readString(file);
        if (!text.startsWith(from)) return;
        var mtime = Files.getLastModifiedTime(file);
        Files.writeString(file, to + text.substring(from.length()));
        Files.setLastModifiedTime(file, mtime);
    }

    /** Backups never hold a credential from a remote URL; say where one must be set again. */
    private static void warnAboutRedactedCredentials(RepoFacts repo, Path gitDir) throws IOException {
        Path config = gitDir.resolve("config");
        if (!Files.isRegularFile(config)) return;
        for (String line : Files.readAllLines(config))
            if (line.contains("***@"))
                Log.warn("restore: " + repo.path() + "/config: " + line.strip() + " held a credential, which backups never store; set it again");
    }

    /**
     * Prints what each work tree holds, as `git status` sees it in staging, and warns where it differs
     * from the manifest (a file that changed while the sync ran): the operator sees in-progress work came back.
     * `git status` runs no program the backup names (no filter driver, no fsmonitor: see Git).
     */
    private static void compareWorkTrees(Manifest manifest, Path townDir) {
        for (RepoFacts repo : manifest.repos()) {
            for (WorkTreeFacts wt : repo.workTrees()) {
                if (Path.of(wt.gitDir()).isAbsolute()) {
                    Log.warn("restore: work tree " + SafePath.shown(wt.path()) + " belongs to " + wt.gitDir() + ", outside the town: its files "
                            + "are restored, its git directory is not");
                    continue;
                }
                GitRepo.Status now = GitRepo.status(townDir, List.of("--git-dir=" + townDir.resolve(wt.gitDir()),
                        "--work-tree=" + townDir.resolve(wt.path())));
                if (now.sha256().equals(wt.status()))
                    Log.info("restore: work tree " + wt.summary() + ", as backed up");
                else
                    Log.warn("restore: work tree " + wt.summary() + " when backed up, but " + now.counts()
                            + " now (a file changed while the sync ran?)");
            }
        }
    }

}

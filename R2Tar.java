// Tar packs: how snapshots of manifest formats 3 to 5 stored the town's files (part of R2Common, included with
// //SOURCES). This version writes format 6 (R2Packs.java) and reads these to restore older snapshots:
//   TarIndex   path -> pack, the object files/index.json.gz of those snapshots
//   TarPacks   restoring a town from their tars
//   Tars       extraction that refuses hostile archives (and the writing the tests use to make them)

import org.apache.commons.compress.archivers.tar.TarArchiveEntry;
import org.apache.commons.compress.archivers.tar.TarArchiveInputStream;
import org.apache.commons.compress.archivers.tar.TarConstants;

import java.io.*;
import java.nio.file.*;
import java.util.*;
import java.util.zip.GZIPInputStream;

final class Tars {
    /** Refuse archives with more entries than this: a tar of tiny entries is a bomb of its own kind. */
    static final int MAX_ENTRIES = 2_000_000;

    private Tars() {}

    /** Directory modes and mtimes, applied after everything else is written into the directories. */
    static final class DirMetadata {
        private final Map<Path, TarArchiveEntry> dirs = new TreeMap<>(Comparator.reverseOrder());

        /** Deepest first, so a read-only directory is set last and a child's write does not move a parent's mtime. */
        void apply() throws IOException {
            for (Map.Entry<Path, TarArchiveEntry> d : dirs.entrySet()) {
                if (!Files.isDirectory(d.getKey(), LinkOption.NOFOLLOW_LINKS)) continue;
                Files.setPosixFilePermissions(d.getKey(), FilePacks.permissions(d.getValue().getMode() & 0777));
                Files.setLastModifiedTime(d.getKey(), d.getValue().getLastModifiedTime());
            }
        }
    }

    /**
     * Extracts a tar into dest, refusing anything that could write outside it: absolute names, '..', a
     * path through a symlink or a file, an entry written twice, a hard link to anything but a file earlier
     * in the archive, device nodes and fifos, sparse entries, and entries larger than the archive itself
     * (a tar bomb). A symlink is data and may point anywhere, but nothing is ever written through one.
     * File modes and mtimes are kept; directories' go into dirs, for the caller to apply when the tree is
     * complete. Only the entries named in wanted are written (a pack holds paths that later snapshots packed
     * again); the names found are returned. A refused archive throws; what was written stays inside dest.
     */
    static Set<String> extract(Path tarFile, String archive, Path dest, DirMetadata dirs, Set<String> wanted) throws IOException {
        Set<String> found = new HashSet<>();
        Path destReal = dest.toRealPath();
        long budget = Files.size(tarFile);
        Set<String> regularFiles = new HashSet<>();
        int count = 0;
        try (TarArchiveInputStream in = new TarArchiveInputStream(new BufferedInputStream(Files.newInputStream(tarFile), 1 << 16))) {
            for (TarArchiveEntry e; (e = nextEntry(in, archive)) != null; ) {
                if (Thread.currentThread().isInterrupted()) throw new R2Exception(R2Common.EXIT_FAILED, archive + ": extraction stopped");
                if (++count > MAX_ENTRIES) throw refuse(archive, e.getName(), "more than " + MAX_ENTRIES + " entries");
                String name = e.getName();
                if (!wanted.contains(stripSlash(name))) continue;
                Path target = safeTarget(archive, destReal, name);
                if (!found.add(stripSlash(name))) throw refuse(archive, name, "appears twice");
                if (e.isDirectory()) {
                    createDirs(archive, destReal, target, name);
                    dirs.dirs.put(target, e);
                } else if (e.isSymbolicLink()) {
                    String link = e.getLinkName();
                    if (link == null || link.isEmpty() || link.contains("\0")) throw refuse(archive, name, "empty symlink target");
                    createDirs(archive, destReal, target.getParent(), name);
                    try {
                        Files.createSymbolicLink(target, Path.of(link));
                    } catch (FileAlreadyExistsException ex) {
                        throw refuse(archive, name, "appears twice");
                    }
                } else if (e.isLink()) {
                    String linkName = stripSlash(e.getLinkName());
                    if (!regularFiles.contains(linkName))
                        throw refuse(archive, name, "hard link to '" + e.getLinkName() + "', which is not a file earlier in the archive");
                    createDirs(archive, destReal, target.getParent(), name);
                    Files.copy(safeTarget(archive, destReal, linkName), target, LinkOption.NOFOLLOW_LINKS);
                    regularFiles.add(stripSlash(name));
                } else if (isRegularFile(e)) {
                    if (e.getSize() > budget)
                        throw refuse(archive, name, "claims " + e.getSize() + " bytes, more than the archive holds");
                    budget -= e.getSize();
                    createDirs(archive, destReal, target.getParent(), name);
                    writeEntry(archive, in, e, target);
                    regularFiles.add(stripSlash(name));
                } else {
                    throw refuse(archive, name, "unsupported entry type (device, fifo or sparse file)");
                }
            }
        } catch (EOFException e) {
            throw new SnapshotDamaged(archive + ": truncated archive");
        }
        return found;
    }

    /**
     * Only these are regular files. TarArchiveEntry.isFile() is true for every type that is not a
     * directory (device nodes and fifos too), so it cannot tell a device node from a file.
     */
    private static boolean isRegularFile(TarArchiveEntry e) {
        byte flag = e.getLinkFlag();
        return (flag == TarConstants.LF_NORMAL || flag == TarConstants.LF_OLDNORM || flag == TarConstants.LF_CONTIG)
                && !e.isSparse() && !e.isDirectory();
    }

    /** The next entry; a header that cannot be read (a cut or damaged archive) is refused with the archive's name. */
    private static TarArchiveEntry nextEntry(TarArchiveInputStream in, String archive) {
        try {
            return in.getNextEntry();
        } catch (IOException | RuntimeException e) {
            throw new SnapshotDamaged(archive + ": truncated or damaged archive: " + e.getMessage());
        }
    }

    private static void writeEntry(String archive, TarArchiveInputStream in, TarArchiveEntry e, Path target) throws IOException {
        long written;
        try (OutputStream out = Files.newOutputStream(target, StandardOpenOption.CREATE_NEW, LinkOption.NOFOLLOW_LINKS)) {
            written = in.transferTo(out);
        } catch (FileAlreadyExistsException ex) {
            throw refuse(archive, e.getName(), "appears twice");
        }
        if (written != e.getSize()) throw new SnapshotDamaged(archive + ": truncated at entry " + e.getName());
        Files.setPosixFilePermissions(target, FilePacks.permissions(e.getMode() & 0777));
        Files.setLastModifiedTime(target, e.getLastModifiedTime());
    }

    /** The one path rule (SafePath) for an entry's name, as tar writes it ("./a", "dir/"); an absolute name is refused. */
    private static Path safeTarget(String archive, Path destReal, String name) {
        if (name.startsWith("/")) throw refuse(archive, name, "absolute path");
        try {
            return destReal.resolve(SafePath.requireRelative(stripSlash(name), "tar entry"));
        } catch (IllegalArgumentException e) {
            throw refuse(archive, name, "not a safe relative path (empty, '.', '..' or NUL)");
        }
    }

    /** Creates dirs, refusing when an existing component is a symlink (a link planted to redirect writes). */
    private static void createDirs(String archive, Path destReal, Path dir, String name) throws IOException {
        Path current = destReal;
        for (Path part : destReal.relativize(dir)) {
            current = current.resolve(part);
            if (Files.isSymbolicLink(current)) throw refuse(archive, name, "path passes through a symlink");
            if (!Files.exists(current, LinkOption.NOFOLLOW_LINKS)) Files.createDirectory(current);
            else if (!Files.isDirectory(current, LinkOption.NOFOLLOW_LINKS)) throw refuse(archive, name, "path passes through a file");
        }
    }

    private static String stripSlash(String name) {
        String s = name;
        while (s.startsWith("./")) s = s.substring(2);
        while (s.endsWith("/")) s = s.substring(0, s.length() - 1);
        return s;
    }

    private static R2Exception refuse(String archive, String entry, String why) {
        return new R2Exception(R2Common.EXIT_FAILED, archive + ": refusing entry '" + entry + "': " + why);
    }
}

/** Which tar pack holds each path (formats 3 to 5). Read whole: snapshots in it are from before towns grew large. */
record TarIndex(List<TarIndex.Entry> entries) {
    record Entry(String path, String pack, long size, String signature) {
        Entry {
            SafePath.requireRelative(path, "path in the file index");
            SafePath.requireRelative(pack, "pack in the file index");
        }
    }

    TarIndex {
        entries = entries == null ? List.of() : List.copyOf(entries);
    }

    static TarIndex read(Path file) {
        try (InputStream in = new GZIPInputStream(new BufferedInputStream(Files.newInputStream(file)))) {
            TarIndex index = R2Common.JSON.readValue(in, TarIndex.class);
            Set<String> seen = new HashSet<>();
            for (Entry e : index.entries())
                if (!seen.add(e.path())) throw new IllegalArgumentException("path listed twice in the file index: " + e.path());
            return index;
        } catch (IOException | RuntimeException e) {
            throw new SnapshotDamaged(Keys.FILE_INDEX + " is unreadable: " + R2Cli.messageChain(e), e);
        }
    }
}

final class TarPacks {
    private TarPacks() {}

    /**
     * Rebuilds every path of the index in townDir from the downloaded packs: from each pack, exactly the
     * paths the index says it holds (a pack also holds paths that later snapshots packed again). Directory
     * modes and mtimes go into dirs, for the caller to apply last. A path the index names and its pack lacks
     * fails the restore.
     */
    static void restore(TarIndex index, java.util.function.Function<String, Path> downloaded, Path townDir, Tars.DirMetadata dirs)
            throws IOException {
        Map<String, Set<String>> byPack = new TreeMap<>();
        for (TarIndex.Entry e : index.entries()) byPack.computeIfAbsent(e.pack(), k -> new HashSet<>()).add(e.path());
        for (Map.Entry<String, Set<String>> pack : byPack.entrySet()) {
            Set<String> found = Tars.extract(downloaded.apply(pack.getKey()), pack.getKey(), townDir, dirs, pack.getValue());
            Set<String> lacking = new TreeSet<>(pack.getValue());
            lacking.removeAll(found);
            if (!lacking.isEmpty())
                throw new SnapshotDamaged(pack.getKey() + " lacks " + lacking.size() + " path(s) the file index puts in it, e.g. "
                        + Log.escape(lacking.iterator().next()));
        }
    }
}

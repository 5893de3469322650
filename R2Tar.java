// Tar: deterministic writing of town paths, and extraction that refuses hostile archives
// (part of R2Common, included with //SOURCES).

import org.apache.commons.compress.archivers.tar.TarArchiveEntry;
import org.apache.commons.compress.archivers.tar.TarArchiveInputStream;
import org.apache.commons.compress.archivers.tar.TarArchiveOutputStream;
import org.apache.commons.compress.archivers.tar.TarConstants;

import java.io.*;
import java.nio.channels.Channels;
import java.nio.channels.FileChannel;
import java.nio.file.*;
import java.nio.file.attribute.PosixFilePermission;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.*;

final class Tars {
    /** Refuse archives with more entries than this: a tar of tiny entries is a bomb of its own kind. */
    static final int MAX_ENTRIES = 2_000_000;

    private Tars() {}

    /** A tar written: its entry (size, sha256) and the paths that were gone by the time they were read. */
    record Written(FileEntry entry, Set<String> missing) {}

    /**
     * Writes exactly the given town-relative paths (directories, files, symlinks) into a tar, hashing while
     * writing. Entries are sorted and carry mode and mtime but no owner, so the same files give the same
     * bytes. A path in redacted is a small text file written with URL credentials removed.
     */
    static Written write(Path root, List<String> paths, Set<String> redacted, Path tarFile, String name) throws IOException {
        Sha256.HashingOutputStream hashing;
        Set<String> missing = new HashSet<>();
        try (OutputStream file = Files.newOutputStream(tarFile, StandardOpenOption.CREATE_NEW)) {
            hashing = new Sha256.HashingOutputStream(new BufferedOutputStream(file, 1 << 16));
            try (TarArchiveOutputStream tar = new TarArchiveOutputStream(hashing)) {
                tar.setLongFileMode(TarArchiveOutputStream.LONGFILE_POSIX);
                tar.setBigNumberMode(TarArchiveOutputStream.BIGNUMBER_POSIX);
                tar.setAddPaxHeadersForNonAsciiNames(true);
                for (String rel : new TreeSet<>(paths)) {
                    Path source = root.resolve(rel);
                    try {
                        if (Files.isSymbolicLink(source)) writeSymlink(source, rel, tar);
                        else if (Files.isDirectory(source, LinkOption.NOFOLLOW_LINKS)) writeDir(source, rel + "/", tar);
                        else if (redacted.contains(rel)) writeRedacted(source, rel, tar);
                        else if (Files.isRegularFile(source, LinkOption.NOFOLLOW_LINKS)) writeFile(source, rel, tar);
                        else missing.add(rel);
                    } catch (NoSuchFileException e) {
                        missing.add(rel);   // removed since the scan: the town no longer holds it
                    }
                }
                tar.finish();
            }
        }
        return new Written(hashing.entry(name), missing);
    }

    /** A directory entry ("name/"): empty directories come back because they are written too. */
    private static void writeDir(Path p, String name, TarArchiveOutputStream tar) throws IOException {
        TarArchiveEntry e = new TarArchiveEntry(name, TarConstants.LF_DIR);
        e.setMode(TarArchiveEntry.DEFAULT_DIR_MODE & ~0777 | mode(p));
        e.setLastModifiedTime(Files.getLastModifiedTime(p, LinkOption.NOFOLLOW_LINKS));
        tar.putArchiveEntry(e);
        tar.closeArchiveEntry();
    }

    /** Git's config may hold a token inside a remote URL: the archive gets the file with it removed. */
    private static void writeRedacted(Path source, String rel, TarArchiveOutputStream tar) throws IOException {
        if (Files.size(source) > (1 << 20))
            throw new IOException(rel + " is larger than 1 MiB, too large for a git config");
        byte[] data = Log.redactUrl(Files.readString(source, java.nio.charset.StandardCharsets.UTF_8))
                .getBytes(java.nio.charset.StandardCharsets.UTF_8);
        TarArchiveEntry e = new TarArchiveEntry(rel);
        e.setSize(data.length);
        e.setMode(TarArchiveEntry.DEFAULT_FILE_MODE & ~0777 | mode(source));
        e.setLastModifiedTime(Files.getLastModifiedTime(source));
        tar.putArchiveEntry(e);
        tar.write(data);
        tar.closeArchiveEntry();
    }

    private static void writeSymlink(Path source, String rel, TarArchiveOutputStream tar) throws IOException {
        TarArchiveEntry e = new TarArchiveEntry(rel, TarConstants.LF_SYMLINK);
        e.setLinkName(Files.readSymbolicLink(source).toString());
        e.setLastModifiedTime(Files.getLastModifiedTime(source, LinkOption.NOFOLLOW_LINKS));
        tar.putArchiveEntry(e);
        tar.closeArchiveEntry();
    }

    private static void writeFile(Path source, String rel, TarArchiveOutputStream tar) throws IOException {
        try (FileChannel ch = FileChannel.open(source, StandardOpenOption.READ)) {
            // The size is taken once from the open file; a file that shrinks while being read (a live town)
            // is padded so the archive stays well-formed, and the next cycle captures it again.
            long size = ch.size();
            TarArchiveEntry e = new TarArchiveEntry(rel);
            e.setSize(size);
            e.setMode(TarArchiveEntry.DEFAULT_FILE_MODE & ~0777 | mode(source));
            e.setLastModifiedTime(Files.getLastModifiedTime(source));
            tar.putArchiveEntry(e);
            InputStream in = Channels.newInputStream(ch);
            byte[] buf = new byte[1 << 16];
            long left = size;
            while (left > 0) {
                int n = in.read(buf, 0, (int) Math.min(buf.length, left));
                if (n < 0) {
                    Log.warn("tar: " + rel + " shrank while being read; padded");
                    Arrays.fill(buf, (byte) 0);
                    n = (int) Math.min(buf.length, left);
                }
                tar.write(buf, 0, n);
                left -= n;
            }
            tar.closeArchiveEntry();
        }
    }

    private static int mode(Path p) throws IOException {
        int mode = 0;
        for (PosixFilePermission perm : Files.getPosixFilePermissions(p, LinkOption.NOFOLLOW_LINKS))
            mode |= 1 << (8 - perm.ordinal());
        return mode;
    }

    /** Directory modes and mtimes, applied after everything else is written into the directories. */
    static final class DirMetadata {
        private final Map<Path, TarArchiveEntry> dirs = new TreeMap<>(Comparator.reverseOrder());

        /** Deepest first, so a read-only directory is set last and a child's write does not move a parent's mtime. */
        void apply() throws IOException {
            for (Map.Entry<Path, TarArchiveEntry> d : dirs.entrySet()) {
                if (!Files.isDirectory(d.getKey(), LinkOption.NOFOLLOW_LINKS)) continue;
                Files.setPosixFilePermissions(d.getKey(), perms(d.getValue().getMode() & 0777));
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
            throw new R2Exception(R2Common.EXIT_FAILED, archive + ": truncated archive");
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
            throw new R2Exception(R2Common.EXIT_FAILED, archive + ": truncated or damaged archive: " + e.getMessage());
        }
    }

    private static void writeEntry(String archive, TarArchiveInputStream in, TarArchiveEntry e, Path target) throws IOException {
        long written;
        try (OutputStream out = Files.newOutputStream(target, StandardOpenOption.CREATE_NEW, LinkOption.NOFOLLOW_LINKS)) {
            written = in.transferTo(out);
        } catch (FileAlreadyExistsException ex) {
            throw refuse(archive, e.getName(), "appears twice");
        }
        if (written != e.getSize()) throw new R2Exception(R2Common.EXIT_FAILED, archive + ": truncated at entry " + e.getName());
        Files.setPosixFilePermissions(target, perms(e.getMode() & 0777));
        Files.setLastModifiedTime(target, e.getLastModifiedTime());
    }

    private static Path safeTarget(String archive, Path destReal, String name) {
        String clean = stripSlash(name);
        if (clean.isEmpty() || clean.startsWith("/") || clean.contains("\0") || name.startsWith("/"))
            throw refuse(archive, name, "absolute or empty path");
        for (String part : clean.split("/"))
            if (part.equals("..")) throw refuse(archive, name, "path climbs out with '..'");
        Path target = destReal.resolve(clean).normalize();
        if (!target.startsWith(destReal) || target.equals(destReal)) throw refuse(archive, name, "path escapes the town");
        return target;
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

    private static Set<PosixFilePermission> perms(int mode) {
        StringBuilder sb = new StringBuilder();
        String rwx = "rwxrwxrwx";
        for (int i = 0; i < 9; i++) sb.append((mode & (1 << (8 - i))) != 0 ? rwx.charAt(i) : '-');
        return PosixFilePermissions.fromString(sb.toString());
    }

    private static R2Exception refuse(String archive, String entry, String why) {
        return new R2Exception(R2Common.EXIT_FAILED, archive + ": refusing entry '" + entry + "': " + why);
    }
}

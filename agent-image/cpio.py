#!/usr/bin/env python3
"""Writes a directory tree as a reproducible newc cpio archive on stdout.

Sorted paths, sequential inode numbers, uid/gid 0, one fixed mtime: the same tree gives the
same bytes on any machine (GNU cpio is not installed here, and busybox cpio copies inode
numbers and times from the build machine).
Usage: cpio.py ROOT SOURCE_DATE_EPOCH
"""
import os
import stat
import sys

root, mtime = sys.argv[1], int(sys.argv[2])
out = sys.stdout.buffer


def entry(name, mode, data, ino, nlink=1):
    name_b = name.encode() + b"\0"
    hdr = "070701" + "".join(f"{v:08X}" for v in (
        ino, mode, 0, 0, nlink, mtime, len(data), 0, 0, 0, 0, len(name_b), 0))
    out.write(hdr.encode() + name_b)
    out.write(b"\0" * ((4 - (110 + len(name_b)) % 4) % 4))
    out.write(data)
    out.write(b"\0" * ((4 - len(data) % 4) % 4))


paths = []
for d, dirs, files in os.walk(root):
    for n in dirs + files:
        paths.append(os.path.relpath(os.path.join(d, n), root))
ino = 1
for p in sorted(paths):
    full = os.path.join(root, p)
    st = os.lstat(full)
    perm = stat.S_IMODE(st.st_mode)
    if stat.S_ISDIR(st.st_mode):
        entry(p, stat.S_IFDIR | perm, b"", ino, 2)
    elif stat.S_ISLNK(st.st_mode):
        entry(p, stat.S_IFLNK | 0o777, os.readlink(full).encode(), ino)
    elif stat.S_ISREG(st.st_mode):
        with open(full, "rb") as f:
            entry(p, stat.S_IFREG | perm, f.read(), ino)
    else:
        sys.exit(f"cpio.py: {p}: unsupported file type")
    ino += 1
entry("TRAILER!!!", 0, b"", 0)

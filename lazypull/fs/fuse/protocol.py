"""The FUSE kernel protocol (include/uapi/linux/fuse.h): opcodes, flags, struct layouts."""

from __future__ import annotations

import struct

# opcodes
LOOKUP, FORGET, GETATTR, SETATTR, READLINK = 1, 2, 3, 4, 5
OPEN, READ, WRITE, STATFS, RELEASE = 14, 15, 16, 17, 18
GETXATTR, LISTXATTR, FLUSH, INIT, OPENDIR, READDIR, RELEASEDIR = 22, 23, 25, 26, 27, 28, 29
MKNOD, MKDIR, UNLINK, RMDIR, CREATE = 8, 9, 10, 11, 35
ACCESS, INTERRUPT, DESTROY, IOCTL, BATCH_FORGET, READDIRPLUS, LSEEK, STATX = 34, 36, 38, 39, 42, 44, 46, 52

# INIT flags
ASYNC_READ = 1 << 0
BIG_WRITES = 1 << 5
AUTO_INVAL_DATA = 1 << 12
DO_READDIRPLUS = 1 << 13
READDIRPLUS_AUTO = 1 << 14
NO_OPEN_SUPPORT = 1 << 17
PARALLEL_DIROPS = 1 << 18
MAX_PAGES = 1 << 22
CACHE_SYMLINKS = 1 << 23
NO_OPENDIR_SUPPORT = 1 << 24
INIT_EXT = 1 << 30
PASSTHROUGH = 1 << 37  # in flags2 (bit 5 of the upper word)

# open flags (replies)
FOPEN_DIRECT_IO = 1 << 0
FOPEN_KEEP_CACHE = 1 << 1
FOPEN_CACHE_DIR = 1 << 3
FOPEN_PASSTHROUGH = 1 << 7

# ioctls on /dev/fuse
DEV_IOC_CLONE = 0x8004E500
DEV_IOC_BACKING_OPEN = 0x4010E501
DEV_IOC_BACKING_CLOSE = 0x4004E502

IN_HEADER = struct.Struct("<IIQQIIIHH")  # len opcode unique nodeid uid gid pid total_extlen padding
OUT_HEADER = struct.Struct("<IiQ")  # len error unique
INIT_IN = struct.Struct("<IIII")  # major minor max_readahead flags (flags2 follows on >= 7.36)
INIT_OUT = struct.Struct("<IIIIHHIIHHII24x")  # ... max_pages map_alignment flags2 max_stack_depth unused
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")  # 88 bytes
ENTRY_OUT = struct.Struct("<QQQQII")  # nodeid generation entry_valid attr_valid nsecs (+ ATTR)
ATTR_OUT = struct.Struct("<QII")  # attr_valid attr_valid_nsec dummy (+ ATTR)
OPEN_OUT = struct.Struct("<QIi")  # fh open_flags backing_id
READ_IN = struct.Struct("<QQII")  # fh offset size read_flags (lock_owner flags padding follow)
GETXATTR_IN = struct.Struct("<II")  # size padding
GETXATTR_OUT = struct.Struct("<II")  # size padding
FORGET_IN = struct.Struct("<Q")
BATCH_FORGET_IN = struct.Struct("<II")
FORGET_ONE = struct.Struct("<QQ")
KSTATFS = struct.Struct("<QQQQQIIII24x")  # blocks bfree bavail files ffree bsize namelen frsize padding spare
DIRENT = struct.Struct("<QQII")  # ino off namelen type
BACKING_MAP = struct.Struct("<iIQ")  # fd flags padding

assert ATTR.size == 88 and ENTRY_OUT.size + ATTR.size == 128 and INIT_OUT.size == 64 and KSTATFS.size == 80

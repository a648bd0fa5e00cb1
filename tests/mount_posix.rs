//! POSIX behaviours through a real FUSE mount (the kernel in the loop):
//! special files made with the ordinary tools survive a remount, and an
//! unlinked file stays usable through its open descriptor. The fs-core
//! side of these is in crates/fs/tests/posix.rs; the whole picture is pjdfstest
//! (scripts/posix-conformance).

mod common;
#[path = "common/mount.rs"]
mod mount;

use mount::Mount;

#[test]
fn special_files_survive_a_remount() {
    let mut m = Mount::emulator();
    m.sh(
        "umask 022 && cd $M && mkdir d && mkfifo -m 0640 d/p && mknod d/c c 1 3 && mknod d/b b 8 1 \
         && python3 -c 'import socket; socket.socket(socket.AF_UNIX).bind(\"d/s\")' \
         && chown 7:8 d/c && chmod 0600 d/b",
        60,
    );
    let stat = "cd $M/d && stat -c '%n %F %a %u:%g %t:%T %s %h' b c p s";
    let before = m.sh(stat, 30);
    assert_eq!(
        before,
        "b block special file 600 0:0 8:1 0 1\n\
         c character special file 644 7:8 1:3 0 1\n\
         p fifo 640 0:0 0:0 0 1\n\
         s socket 755 0:0 0:0 0 1\n",
        "{before}"
    );
    m.remount();
    assert_eq!(m.sh(stat, 30), before, "after a remount");
    // The kernel does a FIFO's I/O: a writer and a reader meet through it.
    let got = m.sh("cd $M/d && (echo through-the-fifo > p &) && cat p", 30);
    assert_eq!(got, "through-the-fifo\n");
    // rename and unlink work on them.
    m.sh("cd $M/d && mv p p2 && rm s && ls", 30);
    m.remount();
    assert_eq!(m.sh("cd $M/d && ls", 30), "b\nc\np2\n");
    assert_eq!(m.sh("stat -c %F $M/d/p2", 30), "fifo\n");
}

#[test]
fn unlinked_file_keeps_working_through_its_descriptor() {
    let m = Mount::emulator();
    // Written, closed (committed), then re-opened read-write and unlinked:
    // fstat says nlink 0, and the data can be read and changed until close.
    let out = m.sh(
        "cd $M && head -c 300000 /dev/urandom > $S/src && cp $S/src f && \
         exec 3<>f && rm f && stat -L -c %h /proc/self/fd/3 && \
         cmp - $S/src <&3 && echo read-ok && \
         printf NEW >&3 && exec 3>&- && ls -A",
        60,
    );
    assert_eq!(out, "0\nread-ok\n", "{out}");
}

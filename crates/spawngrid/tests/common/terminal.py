# A terminal session driven through a real pseudo-terminal, shared by the end-to-end tests of
# `spawngrid env cpu` (tests/env_cli.rs) and `spawngrid cpu` (tests/cpu.rs).
#
#   python3 terminal.py HOME -- ARGV...
#
# Runs ARGV (with HOME set, unless HOME is "-") on a terminal of 30x100 and checks, in order:
# a root prompt (" # "), `stty size` inside says 30x100, a resize to 50x120 reaches it
# (SIGWINCH), ^C interrupts `sleep 100` and the shell survives (`$?` is 130), `exit 7` ends the
# command with exit code 7, and the terminal is left as it was found (cooked, echoing).
# Exits non-zero with what it saw on the first failed check.
import fcntl, os, pty, select, struct, sys, termios, time

home, sep, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
assert sep == "--" and argv, "usage: terminal.py HOME -- ARGV..."
pid, fd = pty.fork()
if pid == 0:
    fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    if home != "-":
        os.environ["HOME"] = home
    os.execv(argv[0], argv)
seen = b""


def expect(want, timeout=20):
    global seen
    end = time.time() + timeout
    while want not in seen:
        r, _, _ = select.select([fd], [], [], max(0, end - time.time()))
        if not r:
            sys.exit("no %r in %r" % (want, seen))
        try:
            seen += os.read(fd, 4096)
        except OSError:
            sys.exit("the terminal closed before %r: %r" % (want, seen))
    seen = seen[seen.index(want) + len(want):]


expect(b" # ")
os.write(fd, b"stty size | tr ' ' x\n")
expect(b"30x100")
fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 120, 0, 0))
time.sleep(0.3)
os.write(fd, b"stty size | tr ' ' x\n")
expect(b"50x120")
os.write(fd, b"sleep 100\n")
time.sleep(0.5)
os.write(fd, b"\x03")
# ^C flushes the terminal's input queue: type on only once the shell prompts again.
expect(b"^C")
expect(b" # ")
os.write(fd, b"echo after-$?\n")
expect(b"after-130")
os.write(fd, b"exit 7\n")
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 7, status
lflag = termios.tcgetattr(fd)[3]
assert lflag & termios.ICANON and lflag & termios.ECHO, lflag

//! `spawngrid orc` (gridorc) end to end (as root), against a real node (tests/common/site.rs):
//! on a pseudo-terminal with the seed's command words, line editing and history; through a
//! pipe; run as `gridorc`; and `-h` naming a node through a grid file in the seed's ndb format.

use crate::common;

use common::site::*;
use std::path::Path;
use std::process::{Command, Output};

/// The seed's one-line usage banner.
const BANNER: &str =
    "scores | spawn scorename | save oldname newname | invite user scorename | boom scorename | status";

/// Runs argv (JSON list) on a pseudo-terminal. For each step `[send, want]` it types `send`,
/// then reads until `want` has appeared and after it the next `orc> ` prompt (rustyline
/// redraws the prompt while a line is edited, so the prompt alone does not mark the end of a
/// command's output); that output is one segment. A `want` of null reads to the end instead.
/// Prints `{"segments": [...], "status": exit status}` as JSON.
const PTY_DRIVER: &str = r#"
import json, os, pty, select, sys, time
argv, steps = json.loads(sys.argv[1]), json.loads(sys.argv[2])
pid, fd = pty.fork()
if pid == 0:
    os.execv(argv[0], argv)
seen = b""
def more():
    global seen
    r, _, _ = select.select([fd], [], [], 120)
    if not r:
        sys.exit("timed out after %r" % seen)
    try:
        data = os.read(fd, 4096)
    except OSError:
        data = b""
    seen += data
    return data
def upto(want):
    global seen
    while want not in seen:
        if not more():
            sys.exit("end of output before %r in %r" % (want, seen))
    i = seen.index(want) + len(want)
    out, seen = seen[:i], seen[i:]
    return out
segments = []
for send, want in steps:
    os.write(fd, send.encode())
    if want is None:
        while more():
            pass
        segments.append(seen)
        seen = b""
    else:
        segments.append(upto(want.encode()) + upto(b"orc> "))
_, status = os.waitpid(pid, 0)
print(json.dumps({"segments": [s.decode("utf-8", "replace") for s in segments],
                  "status": os.waitstatus_to_exitcode(status)}))
"#;

/// The spawngrid binary as `user` (their HOME, so their token and pins).
fn sg(user: &User, program: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("HOME", &user.home).env_remove("XDG_CONFIG_HOME");
    cmd
}

fn bin() -> &'static Path {
    Path::new(common::bin())
}

/// Runs `spawngrid orc -h ADDR -u USER` on a pseudo-terminal through `steps`: the segments
/// and the exit status.
fn on_terminal(user: &User, steps: &[(&str, Option<&str>)]) -> (Vec<String>, i32) {
    let argv = serde_json::json!([
        common::bin(),
        "orc",
        "-h",
        user.site.addr(),
        "-u",
        user.name
    ]);
    let out = sg(user, Path::new("python3"))
        .env("TERM", "xterm")
        .args(["-c", PTY_DRIVER])
        .arg(argv.to_string())
        .arg(serde_json::json!(steps).to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pty driver: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let segments = v["segments"].as_array().unwrap();
    (
        segments
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect(),
        v["status"].as_i64().unwrap() as i32,
    )
}

#[test]
fn orc_on_a_terminal_with_the_seeds_words_editing_and_history() {
    let site = Site::new("orc-pty");
    site.start("127.0.0.1:0");
    let alice = site.user("alice");
    alice.login();
    let host = site.addr().rsplit_once(':').unwrap().0.to_string();
    let ssh = format!("ssh -p {} base+{}@{host}", site.ssh_port(), alice.name);
    let bob = who("bob");

    let (seg, status) = on_terminal(
        &alice,
        &[
            ("", Some(BANNER)),
            ("scores\r", Some("NAME")),
            ("spawn base\r", Some("spawngrid cpu base")),
            ("status\r", Some("ENV")),
            ("save base base2\r", Some("saved base as base2")),
            ("spawndisk base2\r", Some("spawned base2")),
            // Line editing: a typo rubbed out with backspace.
            ("scorex\x7fs\r", Some("NAME")),
            // History: up-arrow brings back the last line.
            ("\x1b[A\r", Some("NAME")),
            ("frob\r", Some(BANNER)),
            ("help\r", Some("exit")),
            ("save base\r", Some("save: ")),
            ("boom nosuch\r", Some("boom: ")),
            (&format!("invite {bob} base2\r"), Some("invited ")),
            ("boom base\r", Some("boomed base")),
            ("boom base2\r", Some("boomed base2")),
            ("exit\r", None),
        ],
    );
    assert_eq!(status, 0, "{seg:?}");
    // The banner is the first line, as the seed printed it.
    assert!(seg[0].starts_with(&format!("{BANNER}\r\n")), "{:?}", seg[0]);
    assert!(seg[1].contains("\nbase "), "{:?}", seg[1]);
    assert!(
        seg[2].contains("spawned base from base on "),
        "{:?}",
        seg[2]
    );
    assert!(seg[2].contains(&ssh), "{:?}", seg[2]);
    assert!(
        seg[3].contains("\nbase ") && seg[3].contains(&ssh),
        "{:?}",
        seg[3]
    );
    // The corrected line ran `scores` (base2 is new), the typo did not reach the loop.
    for s in [&seg[6], &seg[7]] {
        assert!(s.contains("\nbase2 ") && !s.contains(BANNER), "{s:?}");
    }
    assert!(
        seg[7].contains("scores"),
        "the recalled line is shown: {:?}",
        seg[7]
    );
    assert!(seg[8].contains(&format!("{BANNER}\r\n")), "{:?}", seg[8]);
    for line in [
        "spawndisk NAME ",
        "save OLD NEW ",
        "invite USER NAME ",
        "boom NAME ",
        "status ",
    ] {
        assert!(seg[9].contains(line), "help lacks {line}: {:?}", seg[9]);
    }
    assert!(
        seg[10].contains(
            "save: the following required arguments were not provided: <NEW_NAME>; usage: save OLD NEW\r\n"
        ),
        "{:?}",
        seg[10]
    );
    let error = seg[11].split("boom: ").nth(1).unwrap();
    assert!(
        error.split("\r\n").next().unwrap().contains("nosuch"),
        "{:?}",
        seg[11]
    );
    assert!(
        seg[12].contains(&format!(
            "invited {bob} to base2 as their base2: waiting for them to accept"
        )),
        "{:?}",
        seg[12]
    );
    // Everything the loop did is real: the saved name exists, the envs are gone.
    assert!(alice.ok("scores", &["base2"]).contains("\nbase2 "));
    assert_eq!(alice.json("status", &[]), serde_json::json!([]));
    // The history file keeps the lines typed, for the next session.
    let history =
        std::fs::read_to_string(alice.home.join(".config/spawngrid/orc_history")).unwrap();
    assert!(
        history.contains("\nsave base base2\n") && history.contains("\nscores\n"),
        "{history}"
    );
    // A new session recalls the last one's last line (`exit`), which ends it.
    let (seg, status) = on_terminal(&alice, &[("", Some(BANNER)), ("\x1b[A\r", None)]);
    assert_eq!(status, 0, "{seg:?}");
    assert!(seg[1].contains("exit"), "{:?}", seg[1]);
}

#[test]
fn orc_through_a_pipe_as_gridorc_and_hosts_from_the_grid_file() {
    let site = Site::new("orc-pipe");
    site.start("127.0.0.1:0");
    let alice = site.user("alice");
    alice.login();
    let addr = site.addr();
    let port = addr.rsplit_once(':').unwrap().1;

    // Through a pipe: no prompt, the words' output only; errors one line on stderr; the
    // lines after `exit` are not run.
    let script =
        "scores\nspawn base --as p1\n\nfrob\nsave p1 p1saved\nboom p1\nboom p1\nexit\nscores\n";
    let orc = |program: &Path, args: &[&str], stdin: &str| -> Output {
        run(sg(&alice, program).args(args), Some(stdin))
    };
    let out = orc(bin(), &["orc", "-h", &addr, "-u", &alice.name], script);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], BANNER);
    assert!(
        lines[1].starts_with("NAME ") && lines[2].starts_with("base "),
        "{stdout}"
    );
    assert!(lines[3].starts_with("spawned p1 from base on "), "{stdout}");
    assert!(lines[6].starts_with("  write layer: "), "{stdout}");
    assert_eq!(lines[7], BANNER, "{stdout}");
    assert!(lines[8].starts_with("saved p1 as p1saved = "), "{stdout}");
    assert_eq!(&lines[9..], ["boomed p1"], "{stdout}");
    assert!(!stdout.contains("orc>"), "{stdout}");
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("boom: ") && stderr.contains("p1"),
        "{stderr}"
    );
    // End of input is `exit`.
    let out = orc(
        bin(),
        &["gridorc", "-h", &addr, "-u", &alice.name],
        "status",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with(&format!("{BANNER}\nENV ")));

    // The binary under the name gridorc is the loop.
    let gridorc = site.scratch.join("gridorc");
    std::os::unix::fs::symlink(common::bin(), &gridorc).unwrap();
    let out = orc(&gridorc, &["-u", &alice.name, "-h", &addr], "scores p1*\n");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with(&format!("{BANNER}\nNAME ")), "{stdout}");
    assert!(
        stdout.contains("\np1saved ") && !stdout.contains("\nbase "),
        "{stdout}"
    );

    // A grid file in the seed's ndb format names the node.
    let grid = site.scratch.join("grid");
    std::fs::write(
        &grid,
        format!(
            "# the test grid\nauthdom=spawngrid auth=isoauthtest\nsys=parspasto ip=95.179.211.134\n\nsys=testnode ip=127.0.0.1\n\tport={port}\n"
        ),
    )
    .unwrap();
    let with_grid = |file: &Path, args: &[&str]| -> Output {
        run(
            sg(&alice, bin()).env("SPAWNGRID_GRID", file).args(args),
            None,
        )
    };
    for host in ["testnode", &format!("tcp!testnode!{port}")] {
        let out = with_grid(&grid, &["scores", "-h", host, "-u", &alice.name]);
        assert!(out.status.success(), "{host}: {}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("\nbase "),
            "{}",
            text(&out.stdout)
        );
    }
    let out = run(
        sg(&alice, bin()).env("SPAWNGRID_GRID", &grid).args([
            "orc",
            "-h",
            "testnode",
            "-u",
            &alice.name,
        ]),
        Some("scores\n"),
    );
    assert!(
        text(&out.stdout).contains("\nbase "),
        "{}",
        text(&out.stderr)
    );
    // An unknown sys name: one clear line, for a command and for orc (which gives up at once).
    let want = format!(
        "spawngrid: unknown node nosuchnode: no sys=nosuchnode entry in the grid file {} and no host by that name\n",
        grid.display()
    );
    for args in [
        &["scores", "-h", "nosuchnode"][..],
        &["orc", "-h", "nosuchnode"],
    ] {
        let out = with_grid(&grid, args);
        assert_eq!(
            (out.status.code(), text(&out.stdout), text(&out.stderr)),
            (Some(1), String::new(), want.clone())
        );
    }
    // A malformed grid file: its path and line.
    let bad = site.scratch.join("bad-grid");
    std::fs::write(&bad, "sys=testnode ip=127.0.0.1\nsys=x ip=\"10.0.0.1\n").unwrap();
    let out = with_grid(&bad, &["scores", "-h", "testnode"]);
    assert_eq!(
        text(&out.stderr),
        format!(
            "spawngrid: {}:2: the value of ip has no closing \"\n",
            bad.display()
        )
    );
    // Named but missing.
    let out = with_grid(&site.scratch.join("none"), &["scores", "-h", "testnode"]);
    assert!(
        text(&out.stderr).starts_with("spawngrid: reading the grid file "),
        "{}",
        text(&out.stderr)
    );
}

//! `spawngrid orc` (also `spawngrid gridorc`, or the binary run as `gridorc`): the seed's
//! gridorc, an interactive loop over one node. It prints the seed's one-line usage banner,
//! then reads a line at a time and runs its word through the same functions as the one-shot
//! commands (`scores`, `spawn`, `save`, ...), against the node and user of its own `-h`/`-u`.
//!
//! On a terminal it prompts `orc> ` and edits lines with rustyline (history in
//! `~/.config/spawngrid/orc_history`; ^C drops the line, ^D or `exit` leaves). Otherwise it
//! reads plain lines with no prompt, for scripts (`printf 'scores\n' | spawngrid orc`). A
//! failed command prints one line on stderr and the loop goes on; the loop's own exit status
//! is 0, as the seed's was.

use super::invite::InviteArgs;
use super::{BoomArgs, NodeArgs, SaveArgs, ScoresArgs, SpawnArgs, StatusArgs};
use anyhow::{Context, Result};
use clap::{Args, Parser};
use rustyline::error::ReadlineError;
use std::io::{BufRead, IsTerminal};
use std::os::unix::fs::DirBuilderExt;
use std::process::ExitCode;

/// The seed's usage banner, printed first and for a word the loop does not know.
pub const BANNER: &str =
    "scores | spawn scorename | save oldname newname | invite user scorename | boom scorename | status";

/// The prompt on a terminal.
const PROMPT: &str = "orc> ";

/// Each word of the loop, its arguments and what it does (`help` prints these).
const WORDS: [(&str, &str, &str); 10] = [
    ("scores", "[PATTERN]", "list the names you may spawn"),
    (
        "spawn",
        "NAME",
        "start an env from NAME (100 MiB RAM write layer); prints how to attach",
    ),
    (
        "spawndisk",
        "NAME",
        "the same with a 1 GiB disk write layer",
    ),
    (
        "save",
        "OLD NEW",
        "save env OLD as the new name NEW; OLD keeps running",
    ),
    ("savedisk", "OLD NEW", "the same as save"),
    (
        "invite",
        "USER NAME",
        "give USER an account in NAME, saved as a name of theirs",
    ),
    (
        "boom",
        "NAME",
        "destroy env NAME (its names stay spawnable)",
    ),
    ("status", "", "list your envs"),
    ("help", "", "this list; WORD --help for a word's flags"),
    ("exit", "", "leave (envs keep running); ^D too"),
];

/// `spawngrid orc`.
#[derive(Args)]
pub struct OrcArgs {
    #[command(flatten)]
    node: NodeArgs,
}

/// A line's word with its arguments, parsed with the one-shot commands' own argument types
/// (so `spawn NAME --as ENV --mem 1G` works in the loop too).
#[derive(Parser)]
#[command(name = "orc", no_binary_name = true, disable_help_subcommand = true)]
enum Word {
    /// List the names you may spawn.
    #[command(disable_help_flag = true)]
    Scores(ScoresArgs),
    /// Spawn an env from a name (100 MiB RAM write layer).
    #[command(disable_help_flag = true)]
    Spawn(SpawnArgs),
    /// Spawn an env from a name with a 1 GiB disk write layer.
    #[command(disable_help_flag = true)]
    Spawndisk(SpawnArgs),
    /// Save an env's state as a new name (the env keeps running).
    #[command(disable_help_flag = true, alias = "savedisk")]
    Save(SaveArgs),
    /// Give USER their own copy of NAME with an account for them inside.
    #[command(disable_help_flag = true)]
    Invite(InviteArgs),
    /// Destroy an env (its names stay).
    #[command(disable_help_flag = true)]
    Boom(BoomArgs),
    /// List your envs.
    #[command(disable_help_flag = true)]
    Status(StatusArgs),
}

/// Whether the loop goes on.
#[derive(PartialEq)]
enum Flow {
    Next,
    Exit,
}

/// The loop's node, user and output format.
struct Orc {
    node: NodeArgs,
    json: bool,
}

/// `spawngrid orc`: the banner, then the loop until `exit` or the end of input.
pub fn run(a: OrcArgs, json: bool) -> Result<ExitCode> {
    // As the seed's gridorc, give up at once on a node that cannot be found.
    a.node.host()?;
    let orc = Orc { node: a.node, json };
    println!("{BANNER}");
    if std::io::stdin().is_terminal() {
        orc.terminal()?;
    } else {
        for line in std::io::stdin().lock().split(b'\n') {
            let line = line.context("reading stdin")?;
            if orc.line(&String::from_utf8_lossy(&line)) == Flow::Exit {
                break;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

impl Orc {
    /// The loop on a terminal: rustyline with the history file.
    fn terminal(&self) -> Result<()> {
        let config = rustyline::Config::builder()
            .max_history_size(1000)?
            .history_ignore_dups(true)?
            .history_ignore_space(true)
            .auto_add_history(true)
            .build();
        let mut editor: rustyline::DefaultEditor =
            rustyline::Editor::with_config(config).context("setting up line editing")?;
        let history = super::store::config_dir().map(|d| d.join("orc_history"));
        if let Ok(path) = &history {
            match editor.load_history(path) {
                Err(ReadlineError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => eprintln!("orc: history not loaded from {}: {e}", path.display()),
                Ok(()) => {}
            }
        }
        loop {
            match editor.readline(PROMPT) {
                Ok(line) => {
                    if self.line(&line) == Flow::Exit {
                        break;
                    }
                }
                Err(ReadlineError::Interrupted) => {}
                Err(ReadlineError::Eof) => break,
                Err(e) => return Err(e).context("reading the terminal"),
            }
        }
        match history {
            Ok(path) => {
                let saved = path
                    .parent()
                    .map_or(Ok(()), |dir| {
                        std::fs::DirBuilder::new()
                            .recursive(true)
                            .mode(0o700)
                            .create(dir)
                    })
                    .map_err(ReadlineError::from)
                    .and_then(|()| editor.save_history(&path));
                if let Err(e) = saved {
                    eprintln!("orc: history not saved in {}: {e}", path.display());
                }
            }
            Err(e) => eprintln!("orc: history not saved: {e}"),
        }
        Ok(())
    }

    /// Runs one line; a failure prints one line on stderr.
    fn line(&self, line: &str) -> Flow {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some((&word, rest)) = words.split_first() else {
            return Flow::Next;
        };
        match word {
            "exit" => return Flow::Exit,
            "help" => {
                for (w, args, what) in WORDS {
                    println!("{:<22} {what}", format!("{w} {args}"));
                }
            }
            _ if WORDS.iter().any(|(w, _, _)| *w == word) => {
                if let Err(e) = self.word(word, rest) {
                    let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
                    eprintln!("{word}: {}", chain.join(": "));
                }
            }
            _ => println!("{BANNER}"),
        }
        Flow::Next
    }

    /// Parses `word rest...` as the one-shot command would (with the loop's `-h`/`-u`) and
    /// runs it.
    fn word(&self, word: &str, rest: &[&str]) -> Result<()> {
        let mut argv = vec![word];
        if let Some(host) = &self.node.host {
            argv.extend(["-h", host]);
        }
        if let Some(user) = &self.node.user {
            argv.extend(["-u", user]);
        }
        argv.extend(rest);
        let parsed = match Word::try_parse_from(argv) {
            Ok(w) => w,
            Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => {
                print!("{e}");
                return Ok(());
            }
            Err(e) => anyhow::bail!("{}; usage: {}", one_line(&e), usage(word)),
        };
        let json = self.json;
        match parsed {
            Word::Scores(a) => super::scores(a, json),
            Word::Spawn(a) => super::spawn(a, json),
            Word::Spawndisk(a) => super::spawn(SpawnArgs { disk: true, ..a }, json),
            Word::Save(a) => super::save(a, json),
            Word::Invite(a) => super::invite::invite(a, json),
            Word::Boom(a) => super::boom(a, json),
            Word::Status(a) => super::status(a, json),
        }
        .map(drop)
    }
}

/// `WORD ARGS` from [`WORDS`].
fn usage(word: &str) -> String {
    WORDS
        .iter()
        .find(|(w, _, _)| *w == word)
        .map_or(word.to_string(), |(w, args, _)| {
            format!("{w} {args}").trim_end().to_string()
        })
}

/// A clap error's message on one line, without its usage and hint lines.
fn one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let lines: Vec<&str> = text
        .lines()
        .take_while(|l| !l.starts_with("Usage:"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines.join(" ").trim_start_matches("error: ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_banner_is_the_seeds_and_every_word_has_help() {
        assert_eq!(
            BANNER,
            "scores | spawn scorename | save oldname newname | invite user scorename | boom scorename | status"
        );
        for w in BANNER.split(" | ") {
            let word = w.split(' ').next().unwrap();
            assert!(WORDS.iter().any(|(x, _, _)| *x == word), "{word}");
        }
        assert_eq!(usage("save"), "save OLD NEW");
        assert_eq!(usage("status"), "status");
    }

    #[test]
    fn words_parse_like_the_one_shot_commands() {
        let parse = |argv: &[&str]| Word::try_parse_from(argv);
        match parse(&["spawn", "-h", "n1", "base", "--as", "b2"]).unwrap() {
            Word::Spawn(a) => assert_eq!(
                (a.node.host.as_deref(), a.name.as_str(), a.as_env.as_deref()),
                (Some("n1"), "base", Some("b2"))
            ),
            _ => panic!("not spawn"),
        }
        assert!(matches!(
            parse(&["savedisk", "-h", "n1", "a", "b"]).unwrap(),
            Word::Save(_)
        ));
        let e = parse(&["save", "-h", "n1", "a"]).map(drop).unwrap_err();
        assert_eq!(
            one_line(&e),
            "the following required arguments were not provided: <NEW_NAME>"
        );
        let e = parse(&["boom", "-h", "n1", "a", "-h", "n2"])
            .map(drop)
            .unwrap_err();
        assert_eq!(
            one_line(&e),
            "the argument '--host <HOST>' cannot be used multiple times"
        );
    }
}

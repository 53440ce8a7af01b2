//! A user of an env, read from its `/etc/passwd` and `/etc/group` ([`Identity`]), and the
//! environment every command inside an env starts with ([`DEFAULT_ENV`]): shared by the host,
//! which looks users up and sends them, and the inside, which becomes them.

use serde::{Deserialize, Serialize};

/// The environment variables a command inside an env starts with.
pub const DEFAULT_ENV: [(&str, &str); 3] = [
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
    ("USER", "root"),
];

/// A user of an env, from its `/etc/passwd` and `/etc/group`: who a command runs as.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The user name.
    pub name: String,
    /// User id inside the env.
    pub uid: u32,
    /// Primary group id inside the env.
    pub gid: u32,
    /// Supplementary group ids (the groups of `/etc/group` listing the user, and `gid`).
    pub groups: Vec<u32>,
    /// Home directory (absolute; `/` if the entry has none).
    pub home: String,
    /// Login shell (absolute; `/bin/sh` if the entry has none).
    pub shell: String,
}

/// The most supplementary groups kept for a user (the kernel allows 65536; no env needs more).
const MAX_GROUPS: usize = 256;

impl Identity {
    /// The variables a login of this user sets: `HOME`, `USER`, `LOGNAME`, `SHELL`.
    pub fn env(&self) -> [(String, String); 4] {
        [
            ("HOME".into(), self.home.clone()),
            ("USER".into(), self.name.clone()),
            ("LOGNAME".into(), self.name.clone()),
            ("SHELL".into(), self.shell.clone()),
        ]
    }

    /// The user described by `passwd` and `group` (the files' text), if `passwd` has them.
    pub fn parse(name: &str, passwd: &str, group: &str) -> Option<Identity> {
        let fields = passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() >= 7 && f[0] == name)?;
        let uid: u32 = fields[2].parse().ok()?;
        let gid: u32 = fields[3].parse().ok()?;
        let absolute =
            |p: &str, default: &str| if p.starts_with('/') { p } else { default }.to_string();
        let mut groups = vec![gid];
        for f in group.lines().map(|l| l.split(':').collect::<Vec<_>>()) {
            if f.len() < 4 || !f[3].split(',').any(|m| m.trim() == name) {
                continue;
            }
            if let Ok(g) = f[2].parse::<u32>() {
                if !groups.contains(&g) && groups.len() < MAX_GROUPS {
                    groups.push(g);
                }
            }
        }
        Some(Identity {
            name: name.to_string(),
            uid,
            gid,
            groups,
            home: absolute(fields[5], "/"),
            shell: absolute(fields[6], "/bin/sh"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Identity;

    #[test]
    fn identity_from_passwd_and_group() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nbob:x:1001:1001:Bob:/home/bob:/bin/bash\n\
                      weird:x:7:7::relative:\nbad:x:nan:1::/:/bin/sh\n";
        let group =
            "root:x:0:\nsudo:x:27:alice,bob\nbob:x:1001:\nadm:x:4: bob \nusers:x:100:bobby\n";
        let bob = Identity::parse("bob", passwd, group).unwrap();
        assert_eq!((bob.uid, bob.gid), (1001, 1001));
        assert_eq!(bob.groups, [1001, 27, 4]);
        assert_eq!((&bob.home[..], &bob.shell[..]), ("/home/bob", "/bin/bash"));
        let weird = Identity::parse("weird", passwd, group).unwrap();
        assert_eq!((&weird.home[..], &weird.shell[..]), ("/", "/bin/sh"));
        assert!(Identity::parse("bad", passwd, group).is_none());
        assert!(Identity::parse("alice", passwd, group).is_none());
        assert!(Identity::parse("", passwd, group).is_none());
    }
}

//! Privileges: a restrictive umask before anything is created, and, when started
//! as root outside systemd, a switch to the configured account once the privileged
//! resources (the database, the web port) are open.
//!
//! Under systemd the unit's `User=` and `UMask=` do this before we start; the code
//! here covers a hand start (`sudo carehub run ...`) so that the daemon never goes
//! on running as root.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid, User};

/// Owner read/write, group read, others nothing: the database and keys are
/// clinical data and secrets.
pub const UMASK: u32 = 0o027;

/// What can go wrong dropping privileges.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// `system.user` names no account on this host.
    #[error("user {0:?} (system.user) does not exist; create it or set system.user")]
    NoSuchUser(String),
    /// The account database could not be read.
    #[error("cannot look up user {user:?}: {source}")]
    Lookup { user: String, source: nix::Error },
    /// A file the daemon keeps using could not be handed to the account.
    #[error("cannot give {path} to user {user:?}: {source}")]
    Chown {
        path: PathBuf,
        user: String,
        source: nix::Error,
    },
    /// The kernel refused a step of the switch.
    #[error("cannot switch to user {user:?} ({step}): {source}")]
    Switch {
        user: String,
        step: &'static str,
        source: nix::Error,
    },
    /// After the switch the process could become root again: refuse to go on.
    #[error("after switching to {0:?} the process could still regain root")]
    Regained(String),
}

/// Sets the process umask to [`UMASK`]; returns the previous one.
pub fn restrict_umask() -> Mode {
    nix::sys::stat::umask(Mode::from_bits_truncate(UMASK as nix::libc::mode_t))
}

/// Whether systemd started us (it sets `INVOCATION_ID` for every unit and
/// `NOTIFY_SOCKET` for `Type=notify`): then the unit owns the account choice.
pub fn started_by_systemd() -> bool {
    ["INVOCATION_ID", "NOTIFY_SOCKET"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}

/// Whether this process should switch accounts: root, and not under systemd.
pub fn should_drop() -> bool {
    Uid::effective().is_root() && !started_by_systemd()
}

/// Hands `paths` that exist to `user`, then switches group list, group and user,
/// and checks that root cannot be regained. Blocking (reads the account database).
///
/// glibc applies set*id to every thread of the process, so threads started
/// earlier (the store writer, the runtime's workers) switch too.
pub fn drop_to(user: &str, paths: &[&Path]) -> Result<(), PrivilegeError> {
    let account = User::from_name(user)
        .map_err(|source| PrivilegeError::Lookup {
            user: user.to_owned(),
            source,
        })?
        .ok_or_else(|| PrivilegeError::NoSuchUser(user.to_owned()))?;
    for path in paths.iter().filter(|p| p.exists()) {
        nix::unistd::chown(*path, Some(account.uid), Some(account.gid)).map_err(|source| {
            PrivilegeError::Chown {
                path: path.to_path_buf(),
                user: user.to_owned(),
                source,
            }
        })?;
    }
    let switch = |step: &'static str| {
        move |source| PrivilegeError::Switch {
            user: user.to_owned(),
            step,
            source,
        }
    };
    let name = CString::new(user).map_err(|_| PrivilegeError::NoSuchUser(user.to_owned()))?;
    nix::unistd::initgroups(&name, account.gid).map_err(switch("initgroups"))?;
    nix::unistd::setgid(account.gid).map_err(switch("setgid"))?;
    nix::unistd::setuid(account.uid).map_err(switch("setuid"))?;
    if account.uid.is_root() {
        return Ok(());
    }
    if nix::unistd::setuid(Uid::from_raw(0)).is_ok()
        || nix::unistd::setgid(Gid::from_raw(0)).is_ok()
    {
        return Err(PrivilegeError::Regained(user.to_owned()));
    }
    Ok(())
}

/// The files an open SQLite database at `db` keeps using (the WAL and its index).
pub fn database_files(db: &Path) -> Vec<PathBuf> {
    let mut files = vec![db.to_owned()];
    for suffix in ["-wal", "-shm"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        files.push(PathBuf::from(name));
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_files_include_the_wal_and_its_index() {
        assert_eq!(
            database_files(Path::new("/var/lib/carehub/carehub.db")),
            [
                PathBuf::from("/var/lib/carehub/carehub.db"),
                PathBuf::from("/var/lib/carehub/carehub.db-wal"),
                PathBuf::from("/var/lib/carehub/carehub.db-shm"),
            ]
        );
    }

    #[test]
    fn an_unknown_user_is_a_clear_error_and_changes_nothing() {
        let before = Uid::effective();
        let e = drop_to("carehub-no-such-user-x", &[]).unwrap_err();
        assert!(matches!(e, PrivilegeError::NoSuchUser(_)), "{e}");
        assert!(e.to_string().contains("system.user"), "{e}");
        assert_eq!(Uid::effective(), before);
    }
}

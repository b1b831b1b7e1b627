//! Configuration reload on SIGHUP: re-read and validate the file, keep the running
//! configuration when the new one is bad, publish a good one on a
//! `tokio::sync::watch` channel, and say which changed keys need a restart.
//!
//! Stages that can apply a change live subscribe to the channel (the uplink will,
//! to pick up renewed certificates); their keys are listed in [`LIVE_KEYS`]. Every
//! other changed key is logged as needing a restart, so an engineer is never left
//! guessing whether an edit took effect.

use std::path::PathBuf;

use tokio::sync::watch;

use crate::config::{Config, ConfigError};

/// Dotted keys (or `table.` prefixes) that subscribers of the config channel apply
/// without a restart. Empty until a stage subscribes: today every key needs one.
pub const LIVE_KEYS: &[&str] = &[];

/// What can go wrong reloading.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The daemon was started without a file (plain `demo`): nothing to re-read.
    #[error("started without a configuration file; nothing to reload")]
    NoFile,
    /// The file is unreadable or invalid; the running configuration is kept.
    #[error("{0}; keeping the running configuration")]
    Invalid(#[from] ConfigError),
}

/// Where the running configuration came from, so that it can be read again the
/// same way: `path` laid over `base` (the defaults, or the demo's settings).
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub path: Option<PathBuf>,
    pub base: Config,
}

/// The outcome of a successful reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Every dotted key whose value changed.
    pub changed: Vec<String>,
    /// Those of `changed` that only take effect after a restart.
    pub need_restart: Vec<String>,
}

impl ConfigSource {
    /// Reads and validates the file again.
    pub async fn read(&self) -> Result<Config, ReloadError> {
        let path = self.path.as_ref().ok_or(ReloadError::NoFile)?;
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| ConfigError {
                file: path.clone(),
                line: None,
                key: None,
                message: format!("cannot read: {e}"),
            })?;
        Ok(Config::parse(path, &text, self.base.clone())?)
    }

    /// Reads the file and, when it is valid, publishes it on `current`.
    pub async fn reload(&self, current: &watch::Sender<Config>) -> Result<Reloaded, ReloadError> {
        let new = self.read().await?;
        let changed = changed_keys(&current.borrow(), &new);
        let need_restart = changed.iter().filter(|k| !is_live(k)).cloned().collect();
        current.send_replace(new);
        Ok(Reloaded {
            changed,
            need_restart,
        })
    }
}

fn is_live(key: &str) -> bool {
    LIVE_KEYS
        .iter()
        .any(|live| key == *live || (live.ends_with('.') && key.starts_with(live)))
}

/// The dotted keys whose values differ between `old` and `new`.
pub fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let (Ok(old), Ok(new)) = (toml::Table::try_from(old), toml::Table::try_from(new)) else {
        // Config always serialises (a test checks); if it ever did not, claim
        // everything changed rather than nothing.
        return vec!["*".to_owned()];
    };
    let mut out = Vec::new();
    diff("", &old, &new, &mut out);
    out.sort();
    out
}

fn diff(prefix: &str, old: &toml::Table, new: &toml::Table, out: &mut Vec<String>) {
    let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for key in keys {
        let dotted = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match (old.get(key), new.get(key)) {
            (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) => diff(&dotted, a, b, out),
            (a, b) if a != b => out.push(dotted),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_keys_are_dotted_and_sorted() {
        let old = Config::default();
        assert!(changed_keys(&old, &old).is_empty());
        let mut new = old.clone();
        new.simulator.residents = 3;
        new.web.listen = "127.0.0.1:9000".parse().unwrap();
        new.system.user = "nobody".into();
        assert_eq!(
            changed_keys(&old, &new),
            ["simulator.residents", "system.user", "web.listen"]
        );
    }

    #[tokio::test]
    async fn a_bad_file_keeps_the_running_config_and_names_line_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("carehub.toml");
        let source = ConfigSource {
            path: Some(path.clone()),
            base: Config::default(),
        };
        let (tx, rx) = watch::channel(Config::default());

        std::fs::write(&path, "[simulator]\nresidents = 3\n").unwrap();
        let ok = source.reload(&tx).await.unwrap();
        assert_eq!(ok.changed, ["simulator.residents"]);
        assert_eq!(ok.need_restart, ["simulator.residents"]);
        assert_eq!(rx.borrow().simulator.residents, 3);

        std::fs::write(&path, "[simulator]\nresidents = 4\nresidnets = 5\n").unwrap();
        let e = source.reload(&tx).await.unwrap_err();
        let text = e.to_string();
        assert!(text.contains(":3: key `simulator.residnets`"), "{text}");
        assert!(
            text.ends_with("keeping the running configuration"),
            "{text}"
        );
        assert_eq!(rx.borrow().simulator.residents, 3);

        let none = ConfigSource {
            path: None,
            base: Config::default(),
        };
        assert!(matches!(none.reload(&tx).await, Err(ReloadError::NoFile)));
    }
}

//! Sessions (created, checked, remembered, ended, purged) and failed sign-ins
//! counted per key for the lock-out.

use super::users::{USER_COLUMNS, user_from_row};
use super::*;

impl Accounts {
    /// Stores a new session under the hash of its token.
    pub fn create_session(
        &self,
        token_hash: &[u8; 32],
        user_id: i64,
        csrf: &str,
        client: &str,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO sessions (token_hash, user_id, csrf, created_at_ms, last_seen_ms, client)
                 VALUES (?1, ?2, ?3, ?4, ?4, ?5)",
                params![&token_hash[..], user_id, csrf, now.unix_ms(), client],
            )
            .map(drop)
        })
    }

    /// The live session with this token hash, marking it used. A session past
    /// its idle or absolute limit, or of a disabled account, is deleted and not
    /// returned.
    pub fn session(
        &self,
        token_hash: &[u8; 32],
        limits: SessionLimits,
        now: Timestamp,
    ) -> Result<Option<Session>, StoreError> {
        self.check_session(token_hash, limits, now, true)
    }

    /// As [`session`](Self::session), but for a request the page made on its
    /// own (a live refresh, the event stream): the session is not marked used,
    /// so a tablet left on a live page still signs out when its idle time is up.
    pub fn session_unused(
        &self,
        token_hash: &[u8; 32],
        limits: SessionLimits,
        now: Timestamp,
    ) -> Result<Option<Session>, StoreError> {
        self.check_session(token_hash, limits, now, false)
    }

    fn check_session(
        &self,
        token_hash: &[u8; 32],
        limits: SessionLimits,
        now: Timestamp,
        touch: bool,
    ) -> Result<Option<Session>, StoreError> {
        // The row is read and remembered under the connection's lock, so a change
        // to sessions or accounts commits either before the read or after the
        // remembering, and then forgets it (`forget_live`).
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let c: &mut Connection = &mut conn;
        let found = c
            .query_row(
                &format!(
                    "SELECT {USER_COLUMNS}, s.csrf, s.created_at_ms, s.last_seen_ms
                     FROM sessions s JOIN users u ON u.id = s.user_id
                     WHERE s.token_hash = ?1"
                ),
                [&token_hash[..]],
                |r| {
                    Ok((
                        user_from_row(r)?,
                        r.get::<_, String>(6)?,
                        Timestamp::from_unix_ms(r.get(7)?),
                        Timestamp::from_unix_ms(r.get(8)?),
                    ))
                },
            )
            .optional()?;
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.remove(token_hash);
        let Some((user, csrf, created_at, last_seen)) = found else {
            return Ok(None);
        };
        let expired = last_seen.age_at(now) >= limits.idle
            || created_at.age_at(now) >= limits.absolute
            || user.disabled;
        if expired {
            c.execute(
                "DELETE FROM sessions WHERE token_hash = ?1",
                [&token_hash[..]],
            )?;
            return Ok(None);
        }
        let mut last_seen = last_seen;
        if touch && last_seen.age_at(now) >= TOUCH_EVERY {
            c.execute(
                "UPDATE sessions SET last_seen_ms = ?2 WHERE token_hash = ?1",
                params![&token_hash[..], now.unix_ms()],
            )?;
            last_seen = now;
        }
        let session = Session {
            user,
            csrf,
            created_at,
        };
        if live.len() >= LIVE_SESSIONS {
            live.clear();
        }
        live.insert(
            *token_hash,
            LiveSession {
                session: session.clone(),
                last_seen,
            },
        );
        Ok(Some(session))
    }

    /// The session with this token hash as [`session`](Self::session) would
    /// answer, without blocking: `Some` only when it was found in the table
    /// less than [`TOUCH_EVERY`] ago (by its mark), nothing about it or its
    /// account has changed since, and it is within its limits at `now`;
    /// otherwise `None`, and the caller asks `session`.
    pub fn live_session(
        &self,
        token_hash: &[u8; 32],
        limits: SessionLimits,
        now: Timestamp,
    ) -> Option<Session> {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let l = live.get(token_hash)?;
        let seen = l.last_seen.age_at(now);
        let usable = l.last_seen <= now
            && seen < TOUCH_EVERY
            && seen < limits.idle
            && l.session.created_at.age_at(now) < limits.absolute
            && !l.session.user.disabled;
        usable.then(|| l.session.clone())
    }

    /// Ends a session (sign out, or the old session at a new sign-in).
    pub fn delete_session(&self, token_hash: &[u8; 32]) -> Result<(), StoreError> {
        let deleted = self.with(|c| {
            c.execute(
                "DELETE FROM sessions WHERE token_hash = ?1",
                [&token_hash[..]],
            )
            .map(drop)
        });
        self.forget_live();
        deleted
    }

    /// Deletes sessions past their limits; returns how many.
    pub fn purge_sessions(
        &self,
        limits: SessionLimits,
        now: Timestamp,
    ) -> Result<usize, StoreError> {
        let purged = self.with(|c| {
            c.execute(
                "DELETE FROM sessions WHERE last_seen_ms <= ?1 OR created_at_ms <= ?2",
                params![
                    now.unix_ms().saturating_sub(ms(limits.idle)),
                    now.unix_ms().saturating_sub(ms(limits.absolute))
                ],
            )
        });
        self.forget_live();
        purged
    }

    /// Failed sign-ins under `key` (an account or a client address) since `since`.
    pub fn failures_since(&self, key: &str, since: Timestamp) -> Result<u32, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM login_failures WHERE key = ?1 AND at_ms > ?2",
                params![key, since.unix_ms()],
                |r| r.get(0),
            )
        })
    }

    /// Failed sign-ins under `key` since `since`, and when the last was.
    pub fn failures(
        &self,
        key: &str,
        since: Timestamp,
    ) -> Result<(u32, Option<Timestamp>), StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT COUNT(*), MAX(at_ms) FROM login_failures WHERE key = ?1 AND at_ms > ?2",
                params![key, since.unix_ms()],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get::<_, Option<i64>>(1)?.map(Timestamp::from_unix_ms),
                    ))
                },
            )
        })
    }

    /// Forgets every failure under a key that starts with `prefix` (an admin
    /// unlocking an account from every address); returns how many.
    pub fn clear_failures_with_prefix(&self, prefix: &str) -> Result<usize, StoreError> {
        self.with(|c| {
            c.execute(
                "DELETE FROM login_failures WHERE substr(key, 1, length(?1)) = ?1",
                [prefix],
            )
        })
    }

    /// Counts one failed sign-in under each key, and forgets failures older than
    /// `forget_before` so the table stays small.
    pub fn record_failure(
        &self,
        keys: &[&str],
        now: Timestamp,
        forget_before: Timestamp,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for key in keys {
            tx.execute(
                "INSERT INTO login_failures (key, at_ms) VALUES (?1, ?2)",
                params![key, now.unix_ms()],
            )?;
        }
        tx.execute(
            "DELETE FROM login_failures WHERE at_ms < ?1",
            [forget_before.unix_ms()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Forgets the failures under `key` (after a successful sign-in).
    pub fn clear_failures(&self, key: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute("DELETE FROM login_failures WHERE key = ?1", [key])
                .map(drop)
        })
    }
}

//! One-time codes (setup and password-reset links): made, checked, used once.

use super::*;

impl Accounts {
    /// Stores a one-time code; any older unused code of the same kind is voided,
    /// so only the newest printed code works.
    pub fn create_code(
        &self,
        code_hash: &[u8; 32],
        kind: CodeKind,
        user_id: Option<i64>,
        expires_at: Timestamp,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "DELETE FROM one_time_codes WHERE kind = ?1",
            [kind.as_str()],
        )?;
        tx.execute(
            "INSERT INTO one_time_codes (code_hash, kind, user_id, expires_at_ms) VALUES (?1, ?2, ?3, ?4)",
            params![&code_hash[..], kind.as_str(), user_id, expires_at.unix_ms()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Whether a one-time code would be accepted now, without using it: checked
    /// before the slow work its use is for.
    pub fn code_valid(
        &self,
        code_hash: &[u8; 32],
        kind: CodeKind,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT EXISTS (SELECT 1 FROM one_time_codes
                 WHERE code_hash = ?1 AND kind = ?2 AND used_at_ms IS NULL AND expires_at_ms > ?3)",
                params![&code_hash[..], kind.as_str(), now.unix_ms()],
                |r| r.get(0),
            )
        })
    }

    /// Uses a one-time code: `Some(user id of the code)` the first time, before it
    /// expires; `None` for an unknown, used or expired code.
    pub fn use_code(
        &self,
        code_hash: &[u8; 32],
        kind: CodeKind,
        now: Timestamp,
    ) -> Result<Option<Option<i64>>, StoreError> {
        self.with(|c| {
            let user: Option<Option<i64>> = c
                .query_row(
                    "UPDATE one_time_codes SET used_at_ms = ?3
                     WHERE code_hash = ?1 AND kind = ?2 AND used_at_ms IS NULL AND expires_at_ms > ?3
                     RETURNING user_id",
                    params![&code_hash[..], kind.as_str(), now.unix_ms()],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(user)
        })
    }
}

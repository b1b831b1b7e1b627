//! Staff accounts: who exists, their role, their password, enabling and disabling.

use super::*;

pub(super) fn user_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    let role: String = r.get(2)?;
    Ok(User {
        id: r.get(0)?,
        username: r.get(1)?,
        // The CHECK constraint admits only these three.
        role: Role::parse(&role).unwrap_or(Role::Carer),
        disabled: r.get::<_, i64>(3)? != 0,
        created_at: Timestamp::from_unix_ms(r.get(4)?),
        created_by: r.get(5)?,
    })
}

pub(super) const USER_COLUMNS: &str =
    "u.id, u.username, u.role, u.disabled, u.created_at_ms, u.created_by";

impl Accounts {
    /// Whether an enabled admin exists (if not, the setup code is offered).
    pub fn has_admin(&self) -> Result<bool, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT EXISTS (SELECT 1 FROM users WHERE role = 'admin' AND disabled = 0)",
                [],
                |r| r.get(0),
            )
        })
    }

    /// Adds an account.
    pub fn create_user(
        &self,
        username: &str,
        password_hash: &str,
        role: Role,
        created_by: &str,
        now: Timestamp,
    ) -> Result<User, AccountError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let inserted = conn.execute(
            "INSERT INTO users (username, password_hash, role, created_at_ms, created_by)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (username) DO NOTHING",
            params![
                username,
                password_hash,
                role.as_str(),
                now.unix_ms(),
                created_by
            ],
        )?;
        if inserted == 0 {
            return Err(AccountError::Taken(username.to_owned()));
        }
        let id = conn.last_insert_rowid();
        Ok(conn.query_row(
            &format!("SELECT {USER_COLUMNS} FROM users u WHERE u.id = ?1"),
            [id],
            user_from_row,
        )?)
    }

    /// The account and its hash, for sign-in; names compare without case.
    pub fn credentials(&self, username: &str) -> Result<Option<Credentials>, StoreError> {
        self.with(|c| {
            c.query_row(
                &format!(
                    "SELECT {USER_COLUMNS}, u.password_hash FROM users u WHERE u.username = ?1"
                ),
                [username],
                |r| {
                    Ok(Credentials {
                        user: user_from_row(r)?,
                        password_hash: r.get(6)?,
                    })
                },
            )
            .optional()
        })
    }

    pub fn user(&self, id: i64) -> Result<Option<User>, StoreError> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {USER_COLUMNS} FROM users u WHERE u.id = ?1"),
                [id],
                user_from_row,
            )
            .optional()
        })
    }

    /// Every account, by name.
    pub fn users(&self) -> Result<Vec<User>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {USER_COLUMNS} FROM users u ORDER BY u.username"
            ))?;
            st.query_map([], user_from_row)?.collect()
        })
    }

    /// Disables (and signs out) or re-enables an account. Disabling the last
    /// enabled admin is refused.
    pub fn set_disabled(&self, id: i64, disabled: bool) -> Result<User, AccountError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let user = tx
            .query_row(
                &format!("SELECT {USER_COLUMNS} FROM users u WHERE u.id = ?1"),
                [id],
                user_from_row,
            )
            .optional()?
            .ok_or(AccountError::NoSuchUser)?;
        if disabled && user.role == Role::Admin && !user.disabled {
            let admins: i64 = tx.query_row(
                "SELECT COUNT(*) FROM users WHERE role = 'admin' AND disabled = 0",
                [],
                |r| r.get(0),
            )?;
            if admins <= 1 {
                return Err(AccountError::LastAdmin);
            }
        }
        tx.execute(
            "UPDATE users SET disabled = ?2 WHERE id = ?1",
            params![id, disabled],
        )?;
        if disabled {
            tx.execute("DELETE FROM sessions WHERE user_id = ?1", [id])?;
        }
        tx.commit()?;
        self.forget_live();
        Ok(User { disabled, ..user })
    }

    /// Sets a new password hash and ends every session of the account.
    pub fn set_password(&self, id: i64, password_hash: &str) -> Result<(), AccountError> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "UPDATE users SET password_hash = ?2 WHERE id = ?1",
            params![id, password_hash],
        )?;
        if n == 0 {
            return Err(AccountError::NoSuchUser);
        }
        tx.execute("DELETE FROM sessions WHERE user_id = ?1", [id])?;
        tx.commit()?;
        self.forget_live();
        Ok(())
    }
}

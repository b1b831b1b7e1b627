//! For tests: signs a user in by creating the account and the session directly
//! through the store, so router tests run with authentication on.

#![allow(
    clippy::expect_used,
    reason = "test support (the integration tests use it too): a failure is the test's"
)]

use std::sync::Arc;

use super::{AuthSettings, password};
use crate::model::Timestamp;
use crate::store::accounts::{Accounts, Role};
use crate::web::AppState;

/// The cookie and CSRF token of a signed-in test user.
#[derive(Debug, Clone)]
pub struct Login {
    /// The `Cookie` header value.
    pub cookie: String,
    pub csrf: String,
    pub user_id: i64,
}

/// HTTPS settings with the default limits and a known CLI token ("cli-secret").
pub fn settings() -> Arc<AuthSettings> {
    Arc::new(AuthSettings {
        limits: super::limits(30, 12),
        https: true,
        cli_token_hash: Some(password::token_hash("cli-secret")),
        hosts: Arc::new(crate::web::headers::AllowedHosts::any()),
    })
}

/// Opens the accounts tables of a database the store has opened.
pub fn accounts(db: &std::path::Path) -> Accounts {
    Accounts::open(db, crate::config::Synchronous::Normal).expect("accounts open")
}

/// Creates `username` with `role` (an unusable password) and a session for it.
pub fn sign_in(state: &AppState, username: &str, role: Role) -> Login {
    let now = Timestamp::now();
    let user = match state.accounts.credentials(username).expect("read user") {
        Some(c) => c.user,
        None => state
            .accounts
            .create_user(username, password::NO_PASSWORD, role, "test", now)
            .expect("create user"),
    };
    let token = password::new_token().expect("random");
    let csrf = password::new_token().expect("random");
    state
        .accounts
        .create_session(&password::token_hash(&token), user.id, &csrf, "test", now)
        .expect("create session");
    Login {
        cookie: format!("{}={token}", state.auth.cookie_name()),
        csrf,
        user_id: user.id,
    }
}

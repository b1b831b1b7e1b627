//! Passwords and random tokens.
//!
//! Passwords are hashed with Argon2id (the `argon2` crate's defaults: version 19,
//! 19 MiB, 2 passes, 1 lane; about 0.1 s on a Raspberry Pi 4) and a random
//! 16-byte salt; hashing runs on a blocking thread. Tokens (sessions, CSRF,
//! one-time codes) are 256 bits from the operating system's generator, and only
//! their SHA-256 is stored.
//!
//! Each Argon2 call holds 19 MiB while it runs. Nothing about a sign-in form
//! bounds how many arrive at once, so every call first takes a place at the
//! [`gate`]: [`HASHES_AT_ONCE`] run, [`HASH_QUEUE`] more wait, and any beyond
//! are answered 503 with `Retry-After` without hashing (64 concurrent sign-ins
//! once took the process from 17 MiB to 1.2 GiB, and it kept it). The daemon
//! also makes glibc give such blocks back to the system when they are freed
//! ([`return_freed_memory`]).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use ring::rand::{SecureRandom, SystemRandom};

/// The shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// Why a new password is refused, in words for the form.
pub fn check_policy(username: &str, password: &str) -> Result<(), &'static str> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err("the password must be at least 12 characters long");
    }
    if password.trim().to_lowercase() == username.trim().to_lowercase() {
        return Err("the password must not be the same as the username");
    }
    Ok(())
}

/// Why a new username is refused, in words for the form.
pub fn check_username(username: &str) -> Result<(), &'static str> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    if username.is_empty() || username.len() > 64 || !username.chars().all(ok) {
        return Err("a username is 1 to 64 letters, digits, dots, dashes or underscores");
    }
    if matches!(
        username.to_lowercase().as_str(),
        "cli" | "anonymous" | "gateway"
    ) {
        return Err("that name is reserved for the gateway's own records");
    }
    Ok(())
}

/// The operating system could not give random bytes; nothing secret is made.
#[derive(Debug, thiserror::Error)]
#[error("no random numbers from the operating system")]
pub struct NoRandom;

/// `n` random bytes.
fn random_bytes<const N: usize>() -> Result<[u8; N], NoRandom> {
    let mut b = [0u8; N];
    SystemRandom::new().fill(&mut b).map_err(|_| NoRandom)?;
    Ok(b)
}

/// A new 256-bit token as 64 hex digits.
pub fn new_token() -> Result<String, NoRandom> {
    Ok(hex(&random_bytes::<32>()?))
}

/// A setup code a person can type: 16 letters and digits in groups of four, from
/// an alphabet without look-alikes (80 bits).
#[allow(
    clippy::indexing_slicing,
    reason = "b % 32 indexes the 32-letter alphabet"
)]
pub fn new_setup_code() -> Result<String, NoRandom> {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let bytes = random_bytes::<16>()?;
    let chars: Vec<char> = bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(b % 32)]))
        .collect();
    Ok(chars
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-"))
}

/// How a typed setup code is compared: without case, dashes or spaces.
pub fn normalise_code(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// SHA-256 of a token, the form in which it is stored.
pub fn token_hash(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Compares two secrets in time independent of where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hashing failed (no randomness, or the library refused).
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error(transparent)]
    NoRandom(#[from] NoRandom),
    #[error("argon2: {0}")]
    Argon2(String),
}

/// An Argon2id PHC string for `password`. Slow on purpose: call it from a
/// blocking thread.
pub fn hash(password: &str) -> Result<String, HashError> {
    let salt = SaltString::encode_b64(&random_bytes::<16>()?)
        .map_err(|e| HashError::Argon2(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError::Argon2(e.to_string()))
}

/// Whether `password` matches `phc`. A malformed or unusable hash (the demo
/// account's `!`) never matches. Slow on purpose: call it from a blocking thread.
pub fn verify(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok(),
        Err(_) => {
            // Still spend the time of a real check: the answer must not say
            // which accounts have a usable password.
            verify_dummy(password);
            false
        }
    }
}

/// Spends the time of one password check, for a name that has no account, so
/// that "no such user" and "wrong password" take as long as each other.
pub fn verify_dummy(password: &str) {
    static DUMMY: OnceLock<Option<String>> = OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash("carehub dummy password, never matches").ok());
    if let Some(phc) = dummy
        && let Ok(h) = PasswordHash::new(phc)
    {
        let _ = Argon2::default().verify_password(password.as_bytes(), &h);
    }
}

/// Argon2 memory, per call, in KiB (the `argon2` crate's default).
pub const HASH_MEMORY_KIB: usize = argon2::Params::DEFAULT_M_COST as usize;

/// The memory the web stage may spend on password hashing at once.
pub const HASH_MEMORY_BUDGET_KIB: usize = 40 * 1024;

/// Argon2 calls running at once: as many as fit the budget (two).
pub const HASHES_AT_ONCE: usize = {
    let n = HASH_MEMORY_BUDGET_KIB / HASH_MEMORY_KIB;
    if n == 0 { 1 } else { n }
};

/// Argon2 calls waiting for a place, at most; more are refused (503).
pub const HASH_QUEUE: usize = 8;

/// What a refused caller is told to wait, in seconds (`Retry-After`).
pub const RETRY_AFTER_S: u64 = 5;

static HASHING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(HASHES_AT_ONCE);
/// Running and waiting calls.
static HASH_CALLERS: AtomicUsize = AtomicUsize::new(0);

/// Too many password checks at once: try again in [`RETRY_AFTER_S`].
#[derive(Debug, thiserror::Error)]
#[error("too many password checks at once")]
pub struct Busy;

/// A place to run one Argon2 call; given back when dropped.
pub struct HashPermit {
    _permit: tokio::sync::SemaphorePermit<'static>,
}

impl Drop for HashPermit {
    fn drop(&mut self) {
        HASH_CALLERS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts a caller out when its wait is abandoned (the request was dropped).
struct Waiting;

impl Drop for Waiting {
    fn drop(&mut self) {
        HASH_CALLERS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Waits for a place to hash, or says at once that too many wait already.
/// Hold the permit for the whole blocking call.
pub async fn gate() -> Result<HashPermit, Busy> {
    if HASH_CALLERS.fetch_add(1, Ordering::AcqRel) >= HASHES_AT_ONCE + HASH_QUEUE {
        HASH_CALLERS.fetch_sub(1, Ordering::AcqRel);
        return Err(Busy);
    }
    let waiting = Waiting;
    // The semaphore is static and never closed.
    let Ok(permit) = HASHING.acquire().await else {
        return Err(Busy);
    };
    std::mem::forget(waiting);
    Ok(HashPermit { _permit: permit })
}

/// The answer to a caller refused by the [`gate`].
pub fn busy_response() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        [(axum::http::header::RETRY_AFTER, RETRY_AFTER_S.to_string())],
        "Many sign-ins are being checked right now. Try again in a few seconds.",
    )
        .into_response()
}

/// Makes glibc hand blocks of 1 MiB and more straight back to the system when
/// they are freed (its default raises that threshold after each such free, so
/// Argon2's 19 MiB blocks ended up kept in the heap of every thread that ran
/// one). Called once at start-up; other C libraries already behave so.
pub fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; a fixed threshold also
    // turns glibc's dynamic adjustment off.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
    }
}

/// The stored hash of an account that can only sign in by a one-time link.
pub const NO_PASSWORD: &str = "!";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only_and_is_argon2id() {
        let h = hash("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$v=19$"), "{h}");
        assert!(verify("correct horse battery", &h));
        assert!(!verify("correct horse batterY", &h));
        assert!(!verify("anything", NO_PASSWORD));
        assert_ne!(hash("correct horse battery").unwrap(), h, "salted");
    }

    #[test]
    fn the_policy_in_plain_words() {
        let check = |u, p, expected: Result<(), &str>| assert_eq!(check_policy(u, p), expected);
        check(
            "ann",
            "short",
            Err("the password must be at least 12 characters long"),
        );
        check(
            "annabelle.smith",
            "Annabelle.Smith",
            Err("the password must not be the same as the username"),
        );
        check("ann", "twelve chars", Ok(()));
        assert!(check_username("ann.smith-2").is_ok());
        assert!(check_username("ann smith").is_err());
        assert!(check_username("CLI").is_err());
        assert!(check_username("").is_err());
    }

    #[test]
    fn tokens_are_256_bits_and_setup_codes_are_typeable() {
        let t = new_token().unwrap();
        assert_eq!(t.len(), 64);
        assert_ne!(t, new_token().unwrap());
        let c = new_setup_code().unwrap();
        assert_eq!(c.len(), 19, "{c}");
        assert_eq!(
            normalise_code(&c.to_lowercase().replace('-', " ")),
            c.replace('-', "")
        );
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
    }
}

//! Passwords and random tokens.
//!
//! Passwords are hashed with Argon2id (the `argon2` crate's defaults: version 19,
//! 19 MiB, 2 passes, 1 lane; about 0.1 s on a Raspberry Pi 4) and a random
//! 16-byte salt; hashing runs on a blocking thread. Tokens (sessions, CSRF,
//! one-time codes) are 256 bits from the operating system's generator, and only
//! their SHA-256 is stored.

use std::sync::OnceLock;

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

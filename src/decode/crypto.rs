//! AES-128-CCM with a 4-byte tag, the one cipher BTHome v2, pvvx and Xiaomi
//! MiBeacon v4/v5 share. Decryption is in place on a stack buffer: no heap.
//!
//! The nonce length differs per format (BTHome 13, MiBeacon 12, pvvx 11 bytes), so
//! the CCM type is chosen by the caller through the nonce size parameter.

use aes::Aes128;
use ccm::aead::{AeadInPlace, KeyInit, generic_array::GenericArray};
use ccm::consts::{U4, U11, U12, U13};

use super::{BindKey, DecodeError};

/// The longest plaintext any supported format carries in one advertisement.
pub(crate) const MAX_PLAIN: usize = 31;

/// Decrypts `ciphertext` with `tag` into `out`, returning the plaintext length.
/// `nonce` must be 11, 12 or 13 bytes; anything else is a programming error
/// reported as an authentication failure rather than a panic.
pub(crate) fn decrypt(
    format: &'static str,
    key: &BindKey,
    nonce: &[u8],
    aad: &[u8],
    ciphertext: &[u8],
    tag: &[u8],
    out: &mut [u8; MAX_PLAIN],
) -> Result<usize, DecodeError> {
    let n = ciphertext.len();
    if n > MAX_PLAIN || tag.len() != 4 {
        return Err(DecodeError::Invalid {
            format,
            field: "encrypted payload length",
        });
    }
    let buf = out.get_mut(..n).ok_or(DecodeError::Invalid {
        format,
        field: "encrypted payload length",
    })?;
    buf.copy_from_slice(ciphertext);
    let key = GenericArray::from_slice(key);
    let tag = GenericArray::from_slice(tag);
    let ok = match nonce.len() {
        11 => ccm::Ccm::<Aes128, U4, U11>::new(key)
            .decrypt_in_place_detached(GenericArray::from_slice(nonce), aad, buf, tag)
            .is_ok(),
        12 => ccm::Ccm::<Aes128, U4, U12>::new(key)
            .decrypt_in_place_detached(GenericArray::from_slice(nonce), aad, buf, tag)
            .is_ok(),
        13 => ccm::Ccm::<Aes128, U4, U13>::new(key)
            .decrypt_in_place_detached(GenericArray::from_slice(nonce), aad, buf, tag)
            .is_ok(),
        _ => false,
    };
    if ok {
        Ok(n)
    } else {
        Err(DecodeError::Authentication(format))
    }
}

/// Encrypts in place and returns the 4-byte tag: what a sensor does. Used by the
/// tests, the benchmark and the fuzz seed generator to build encrypted frames.
pub fn encrypt(key: &BindKey, nonce: &[u8], aad: &[u8], buf: &mut [u8]) -> Option<[u8; 4]> {
    let key = GenericArray::from_slice(key);
    let tag = match nonce.len() {
        11 => ccm::Ccm::<Aes128, U4, U11>::new(key)
            .encrypt_in_place_detached(GenericArray::from_slice(nonce), aad, buf)
            .ok()?,
        12 => ccm::Ccm::<Aes128, U4, U12>::new(key)
            .encrypt_in_place_detached(GenericArray::from_slice(nonce), aad, buf)
            .ok()?,
        13 => ccm::Ccm::<Aes128, U4, U13>::new(key)
            .encrypt_in_place_detached(GenericArray::from_slice(nonce), aad, buf)
            .ok()?,
        _ => return None,
    };
    let mut out = [0u8; 4];
    out.copy_from_slice(&tag);
    Some(out)
}

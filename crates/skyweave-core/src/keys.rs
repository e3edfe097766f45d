//! API keys: `sk-sw-<id>-<secret>`.
//!
//! The id (12 lower-case letters and digits) names the key in lists, logs
//! and the ledger; it is not secret. The secret (40 characters of base62,
//! about 238 bits) is shown once, when the key is created, and only its
//! SHA-256 is stored. A fast hash is the right one here: the secret is
//! random and long, so it cannot be guessed from its hash, unlike a
//! password. Checking a presented key looks the id up and compares the
//! hashes in constant time.

use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub const PREFIX: &str = "sk-sw-";
pub const ID_LEN: usize = 12;
pub const SECRET_LEN: usize = 40;

const ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const SECRET_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A new key: its id, the full key to hand to the user once, and the hash
/// to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    pub id: String,
    pub key: String,
    pub hash: [u8; 32],
}

/// Generates a key. `rng` must be a cryptographically secure generator
/// (the callers pass `rand::rngs::OsRng`).
pub fn generate(rng: &mut impl Rng) -> NewKey {
    let pick = |rng: &mut dyn rand::RngCore, alphabet: &[u8], len: usize| -> String {
        (0..len).map(|_| alphabet[rng.gen_range(0..alphabet.len())] as char).collect()
    };
    let id = pick(rng, ID_ALPHABET, ID_LEN);
    let secret = pick(rng, SECRET_ALPHABET, SECRET_LEN);
    NewKey { key: format!("{PREFIX}{id}-{secret}"), hash: hash(&secret), id }
}

/// Why a presented key is not even shaped like one of ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    #[error("the key does not start with `sk-sw-`")]
    Prefix,
    #[error("the key's id is not 12 lower-case letters or digits")]
    Id,
    #[error("the key's secret is not 40 letters or digits")]
    Secret,
}

/// Splits a presented key into its id and secret.
pub fn parse(key: &str) -> Result<(&str, &str), KeyFormatError> {
    let rest = key.strip_prefix(PREFIX).ok_or(KeyFormatError::Prefix)?;
    let (id, secret) = rest.split_once('-').ok_or(KeyFormatError::Id)?;
    if id.len() != ID_LEN || !id.bytes().all(|b| ID_ALPHABET.contains(&b)) {
        return Err(KeyFormatError::Id);
    }
    if secret.len() != SECRET_LEN || !secret.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(KeyFormatError::Secret);
    }
    Ok((id, secret))
}

pub fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Does `secret` match the stored hash? Constant time in the secret.
pub fn verify(secret: &str, stored: &[u8; 32]) -> bool {
    hash(secret).ct_eq(stored).into()
}

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn a_generated_key_parses_and_verifies() {
        let mut rng = SmallRng::seed_from_u64(7);
        let new = generate(&mut rng);
        assert!(new.key.starts_with("sk-sw-"));
        assert_eq!(new.key.len(), PREFIX.len() + ID_LEN + 1 + SECRET_LEN);
        let (id, secret) = parse(&new.key).unwrap();
        assert_eq!(id, new.id);
        assert!(verify(secret, &new.hash));
        let mut tampered = secret.to_string();
        let last = tampered.pop().unwrap();
        tampered.push(if last == 'a' { 'b' } else { 'a' });
        assert!(!verify(&tampered, &new.hash));
        let other = generate(&mut rng);
        assert_ne!(other.id, new.id);
        assert!(!verify(secret, &other.hash));
    }

    #[test]
    fn malformed_keys_say_what_is_wrong() {
        let secret = "A".repeat(SECRET_LEN);
        assert_eq!(parse("sk-abc"), Err(KeyFormatError::Prefix));
        assert_eq!(parse("Bearer sk-sw-x"), Err(KeyFormatError::Prefix));
        assert_eq!(parse("sk-sw-abc"), Err(KeyFormatError::Id));
        assert_eq!(parse(&format!("sk-sw-ABCDEFGHIJKL-{secret}")), Err(KeyFormatError::Id));
        assert_eq!(parse("sk-sw-abcdefghijkl-short"), Err(KeyFormatError::Secret));
        assert_eq!(parse(&format!("sk-sw-abcdefghijkl-{secret}!")), Err(KeyFormatError::Secret));
        assert!(parse(&format!("sk-sw-abcdefghijkl-{secret}")).is_ok());
    }

    #[test]
    fn the_hash_is_sha256_of_the_secret() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        let expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let hex: String = hash("abc").iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, expected);
    }
}

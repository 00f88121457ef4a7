//! Session tokens: 128 random bits from the OS CSPRNG, followed by a 128-bit HMAC tag.
//!
//! The tag lets the gateway refuse a forged or guessed token with a few hundred nanoseconds of
//! CPU and no database query, so a token-guessing flood cannot turn into one query per request.
//! The store keeps only SHA-256 of each token, so a leaked database holds no live session.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const RANDOM_LEN: usize = 16;
const TAG_LEN: usize = 16;
/// Length of a token as sent by clients: base64url of 32 bytes, unpadded.
pub const TOKEN_LEN: usize = 43;

/// SHA-256 of a token: the cache key and (hex-encoded) the store's `token_hash`.
pub type TokenHash = [u8; 32];

/// Issues and checks tokens with one key shared by every node of a cluster.
pub struct TokenSigner {
    /// HMAC already keyed: each tag clones it instead of re-deriving the padded key blocks,
    /// which saves two of the four SHA-256 compressions a check costs.
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(***)")
    }
}

impl TokenSigner {
    /// A signer whose key is derived from `secret` (any length; hashed to 256 bits).
    pub fn new(secret: &str) -> Self {
        let key: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        // HMAC accepts keys of any length, so this cannot fail.
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(&key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        Self { mac }
    }

    /// A fresh random key, hex-encoded, for a cluster that has none yet.
    pub fn generate_key() -> String {
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        hex::encode(key)
    }

    /// A new token.
    pub fn issue(&self) -> String {
        let mut raw = [0u8; RANDOM_LEN + TAG_LEN];
        OsRng.fill_bytes(&mut raw[..RANDOM_LEN]);
        let tag = self.tag(&raw[..RANDOM_LEN]);
        raw[RANDOM_LEN..].copy_from_slice(&tag[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Whether `token` was issued with this key (not whether it is still live).
    pub fn verify(&self, token: &str) -> bool {
        if token.len() != TOKEN_LEN {
            return false;
        }
        let mut raw = [0u8; RANDOM_LEN + TAG_LEN];
        match URL_SAFE_NO_PAD.decode_slice(token.as_bytes(), &mut raw) {
            Ok(n) if n == raw.len() => {}
            _ => return false,
        }
        let tag = self.tag(&raw[..RANDOM_LEN]);
        tag[..TAG_LEN].ct_eq(&raw[RANDOM_LEN..]).into()
    }

    fn tag(&self, random: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(random);
        mac.finalize().into_bytes().into()
    }
}

/// SHA-256 of `token`.
pub fn hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_verify_and_are_unique() {
        let signer = TokenSigner::new("key");
        let a = signer.issue();
        let b = signer.issue();
        assert_eq!(a.len(), TOKEN_LEN);
        assert_ne!(a, b);
        assert!(signer.verify(&a) && signer.verify(&b));
    }

    #[test]
    fn forged_or_foreign_tokens_do_not_verify() {
        let signer = TokenSigner::new("key");
        let token = signer.issue();
        assert!(!TokenSigner::new("other key").verify(&token));
        let mut forged = token.clone().into_bytes();
        forged[5] = if forged[5] == b'A' { b'B' } else { b'A' };
        assert!(!signer.verify(std::str::from_utf8(&forged).unwrap()));
        for bad in ["", "short", &format!("{token}x"), &"!".repeat(TOKEN_LEN)] {
            assert!(!signer.verify(bad), "{bad}");
        }
    }
}

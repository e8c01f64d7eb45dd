//! Message signing: HMAC-SHA256 over the message parts, verified in constant time. Shared by the
//! Jupyter and native hosts. The key is never logged.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Signs and verifies with one key. An empty key disables signing (Jupyter's convention); Spindle
/// always generates a key itself, so that only happens when a connection file asks for it.
#[derive(Clone)]
pub struct Signer {
    mac: Option<HmacSha256>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("enabled", &self.mac.is_some())
            .finish_non_exhaustive()
    }
}

impl Signer {
    pub fn new(key: &[u8]) -> Self {
        let mac = (!key.is_empty())
            .then(|| HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length"));
        Self { mac }
    }

    pub fn enabled(&self) -> bool {
        self.mac.is_some()
    }

    /// Lower-case hex signature of the parts, or "" when signing is disabled.
    pub fn sign(&self, parts: &[&[u8]]) -> String {
        match &self.mac {
            None => String::new(),
            Some(mac) => {
                let mut mac = mac.clone();
                for p in parts {
                    mac.update(p);
                }
                hex::encode(mac.finalize().into_bytes())
            }
        }
    }

    /// Constant-time check of a hex signature.
    pub fn verify(&self, signature: &[u8], parts: &[&[u8]]) -> bool {
        match &self.mac {
            None => true,
            Some(mac) => {
                let Ok(sig) = hex::decode(signature) else {
                    return false;
                };
                let mut mac = mac.clone();
                for p in parts {
                    mac.update(p);
                }
                mac.verify_slice(&sig).is_ok()
            }
        }
    }
}

/// A fresh random key: 32 bytes as 64 hex characters.
pub fn new_key() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// Write `text` to `path` readable only by the owner (mode 0600), replacing any file there.
pub fn write_private_file(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_then_verify_and_reject_tampering() {
        let s = Signer::new(b"secret");
        let sig = s.sign(&[b"a", b"b"]);
        assert_eq!(sig.len(), 64);
        assert!(s.verify(sig.as_bytes(), &[b"a", b"b"]));
        assert!(!s.verify(sig.as_bytes(), &[b"a", b"c"]));
        assert!(!s.verify(b"zz", &[b"a", b"b"]));
        assert!(!Signer::new(b"other").verify(sig.as_bytes(), &[b"a", b"b"]));
    }

    #[test]
    fn private_file_has_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.json");
        write_private_file(&p, "{}").unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}

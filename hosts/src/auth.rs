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

/// A new file beside `path` with an unpredictable hidden name, created exclusively (never through
/// a planted file or link) with mode 0600, set explicitly in case the file system or an ACL gave
/// it more. The caller writes it and renames it over `path`, or removes it.
pub fn private_temp(
    path: &std::path::Path,
) -> std::io::Result<(std::path::PathBuf, std::fs::File)> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(format!(".{}.tmp", hex::encode(rand::random::<[u8; 12]>())));
    let tmp = path.with_file_name(name);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)?;
    if let Err(e) = f.set_permissions(std::fs::Permissions::from_mode(0o600)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok((tmp, f))
}

/// Write `text` to `path` readable only by the owner (mode 0600), replacing any regular file
/// there. Connection files hold the signing key and often live in shared directories (`/tmp`), so
/// nothing another user planted may end up holding it: the text goes to a fresh, unpredictable
/// name in the same directory, created exclusively (`O_CREAT|O_EXCL|O_NOFOLLOW`, so neither a
/// file nor a symbolic link already there is ever opened), its mode set to 0600 explicitly
/// whatever the umask, synced, and renamed over `path`. A symbolic link at `path` itself is
/// refused with an error rather than followed or silently replaced.
pub fn write_private_file(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::{Error, ErrorKind, Write};
    use std::os::unix::fs::DirBuilderExt;
    let name = path
        .file_name()
        .ok_or_else(|| Error::new(ErrorKind::InvalidInput, "the path names no file"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    // Directories made here are private too; existing ones are left as they are.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    refuse_symlink(path)?;
    let (tmp, mut f) = private_temp(&dir.join(name))?;
    let written = (|| {
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        drop(f);
        // Checked again just before: a link planted meanwhile is still not written through
        // (rename replaces a link, never follows it), but the caller hears about it.
        refuse_symlink(path)?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    // The rename itself is durable once the directory is synced (best effort).
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn refuse_symlink(path: &std::path::Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!(
                "{} is a symbolic link; refusing to write a private file through it (remove it or \
                 choose another path)",
                path.display()
            ),
        )),
        Ok(m) if m.is_dir() => Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{} is a directory", path.display()),
        )),
        _ => Ok(()),
    }
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

    fn mode(p: &std::path::Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn private_file_replaces_a_readable_file_with_a_private_one_and_leaves_no_temporary() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.json");
        std::fs::write(&p, "old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private_file(&p, "{\"key\":\"k\"}").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"key\":\"k\"}");
        assert_eq!(mode(&p), 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("c.json")]);
    }

    #[test]
    fn private_file_refuses_a_symlink_at_the_final_path() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere.txt");
        std::fs::write(&target, "untouched").unwrap();
        let p = dir.path().join("c.json");
        std::os::unix::fs::symlink(&target, &p).unwrap();
        let e = write_private_file(&p, "secret").unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
        assert!(std::fs::symlink_metadata(&p)
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn private_file_makes_missing_directories_private() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a").join("b").join("c.json");
        write_private_file(&p, "{}").unwrap();
        assert_eq!(mode(&p), 0o600);
        assert_eq!(mode(p.parent().unwrap()), 0o700);
        assert!(write_private_file(dir.path(), "{}").is_err());
    }
}

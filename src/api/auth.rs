//! Bearer tokens. The admin token is the operators': from `api.admin_token` (a Kubernetes
//! Secret), else from `<storage.dir>/admin-token`, made at the first start (random, mode 0600,
//! printed once on standard error) so that `ipfixsvc serve` works with no set-up and keeps its
//! token across restarts. Tokens are compared in constant time.

use std::io::Write;
use std::path::{Path, PathBuf};
use subtle::ConstantTimeEq;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("admin token file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("admin token file {path} holds no usable token (at least 16 characters)")]
    Empty { path: PathBuf },
}

/// The admin token, and where it came from (for the start-up log line).
#[derive(Clone)]
pub struct AdminToken {
    token: String,
    pub source: String,
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never in a log line.
        write!(f, "AdminToken(from {})", self.source)
    }
}

impl AdminToken {
    pub fn new(token: String, source: &str) -> AdminToken {
        AdminToken {
            token,
            source: source.to_string(),
        }
    }

    /// `configured` when set, else the token file in `storage_dir`, made when missing.
    pub fn load(configured: &str, storage_dir: &Path) -> Result<AdminToken, AuthError> {
        if !configured.is_empty() {
            return Ok(AdminToken::new(configured.to_string(), "api.admin_token"));
        }
        let path = storage_dir.join("admin-token");
        let err = |source| AuthError::File {
            path: path.clone(),
            source,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let token = text.trim().to_string();
                if token.len() < 16 {
                    return Err(AuthError::Empty { path });
                }
                Ok(AdminToken::new(token, &path.display().to_string()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(storage_dir).map_err(err)?;
                let token = new_secret();
                write_private(&path, &token).map_err(err)?;
                eprintln!(
                    "ipfixsvc: API admin token (also in {}): {token}",
                    path.display()
                );
                Ok(AdminToken::new(token, &path.display().to_string()))
            }
            Err(e) => Err(err(e)),
        }
    }

    /// Whether an `Authorization` header value carries this token.
    pub fn admits(&self, authorization: Option<&str>) -> bool {
        let Some(given) = authorization.and_then(|h| h.strip_prefix("Bearer ")) else {
            return false;
        };
        given.trim().as_bytes().ct_eq(self.token.as_bytes()).into()
    }
}

/// 256 random bits as hex (UUID v4 draws from the operating system's generator).
pub fn new_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Writes `text` to `path` readable by its owner only, created new (never a file someone made
/// readable beforehand).
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o.open(path)?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_made_once_private_and_kept() {
        let dir = std::env::temp_dir().join(format!("ipfixsvc-auth-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = AdminToken::load("", &dir).expect("made");
        let b = AdminToken::load("", &dir).expect("read back");
        assert_eq!(a.token, b.token);
        assert_eq!(a.token.len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("admin-token"))
                .expect("file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(a.admits(Some(&format!("Bearer {}", a.token))));
        assert!(!a.admits(Some(&format!("Bearer {}x", a.token))));
        assert!(!a.admits(Some(&a.token)), "the scheme is required");
        assert!(!a.admits(None));
        let configured = AdminToken::load("a-configured-token-123", &dir).expect("configured");
        assert!(configured.admits(Some("Bearer a-configured-token-123")));
        assert!(!format!("{configured:?}").contains("configured-token"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

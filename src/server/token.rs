//! The client-credentials token endpoint (`POST /auth/token`) and bearer-token checks.
//!
//! Tokens are random opaque strings kept in memory with their expiry. A check answers the
//! same 401 messages as a real FirecREST v2: "Not authenticated" (no header), "Access token is
//! invalid." (unknown), "Access token expired", and "Access token expires too soon (less than
//! Ns remaining)." when less than the minimum TTL is left. The real minimum TTL is 30 s; when
//! the token lifetime is short (tests), the minimum shrinks to a quarter of the lifetime so that
//! a fresh short-lived token stays usable for most of its life.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Why a bearer token was refused; `message()` is the exact real-server text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AuthError {
    Missing,
    Invalid,
    Expired,
    TooSoon { min_ttl_secs: u64 },
}

impl AuthError {
    pub(crate) fn message(&self) -> String {
        match self {
            Self::Missing => "Not authenticated".into(),
            Self::Invalid => "Access token is invalid.".into(),
            Self::Expired => "Access token expired".into(),
            Self::TooSoon { min_ttl_secs } => {
                format!("Access token expires too soon (less than {min_ttl_secs}s remaining).")
            }
        }
    }
}

/// Issued tokens and the credentials that may ask for them.
#[derive(Debug)]
pub(crate) struct TokenStore {
    client_id: String,
    client_secret: String,
    lifetime: Duration,
    min_ttl: Duration,
    tokens: Mutex<HashMap<String, Instant>>,
}

impl TokenStore {
    pub(crate) fn new(
        client_id: String,
        client_secret: String,
        lifetime: Duration,
        min_ttl: Duration,
    ) -> Self {
        Self {
            client_id,
            client_secret,
            lifetime,
            min_ttl,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// The token lifetime handed out by the endpoint.
    pub(crate) fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// The minimum remaining life a token needs to be accepted (see module docs).
    pub(crate) fn effective_min_ttl(&self) -> Duration {
        self.min_ttl.min(self.lifetime / 4)
    }

    /// Whether `id`/`secret` are the configured client credentials.
    pub(crate) fn credentials_ok(&self, id: &str, secret: &str) -> bool {
        id == self.client_id && secret == self.client_secret
    }

    /// Issues a token valid for `ttl` from now (`None`: the configured lifetime). A zero
    /// `ttl` yields a token that is already expired.
    pub(crate) fn issue(&self, ttl: Option<Duration>) -> String {
        let bytes: [u8; 24] = rand::random();
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let now = Instant::now();
        let expiry = match ttl {
            Some(d) if d.is_zero() => now.checked_sub(Duration::from_secs(1)).unwrap_or(now),
            Some(d) => now + d,
            None => now + self.lifetime,
        };
        let mut tokens = self.tokens.lock();
        // Forget long-expired tokens so the map stays small in long runs.
        tokens.retain(|_, exp| now.saturating_duration_since(*exp) < Duration::from_secs(3600));
        tokens.insert(token.clone(), expiry);
        token
    }

    /// Checks an `Authorization` header value.
    pub(crate) fn check(&self, header: Option<&str>) -> Result<(), AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let (scheme, token) = header.trim().split_once(' ').ok_or(AuthError::Missing)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Missing);
        }
        let expiry = *self
            .tokens
            .lock()
            .get(token.trim())
            .ok_or(AuthError::Invalid)?;
        let now = Instant::now();
        if expiry <= now {
            return Err(AuthError::Expired);
        }
        let min_ttl = self.effective_min_ttl();
        if expiry - now < min_ttl {
            return Err(AuthError::TooSoon {
                min_ttl_secs: min_ttl.as_secs(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(lifetime: u64) -> TokenStore {
        TokenStore::new(
            "id".into(),
            "secret".into(),
            Duration::from_secs(lifetime),
            Duration::from_secs(30),
        )
    }

    #[test]
    fn messages_are_the_real_ones() {
        let s = store(300);
        assert_eq!(s.check(None).unwrap_err().message(), "Not authenticated");
        assert_eq!(
            s.check(Some("Bearer nope")).unwrap_err().message(),
            "Access token is invalid."
        );
        let expired = s.issue(Some(Duration::ZERO));
        assert_eq!(
            s.check(Some(&format!("Bearer {expired}")))
                .unwrap_err()
                .message(),
            "Access token expired"
        );
        let soon = s.issue(Some(Duration::from_secs(10)));
        assert_eq!(
            s.check(Some(&format!("Bearer {soon}")))
                .unwrap_err()
                .message(),
            "Access token expires too soon (less than 30s remaining)."
        );
        let good = s.issue(None);
        assert!(s.check(Some(&format!("Bearer {good}"))).is_ok());
        assert!(s.credentials_ok("id", "secret"));
        assert!(!s.credentials_ok("id", "nope"));
    }

    #[test]
    fn short_lifetimes_shrink_the_min_ttl() {
        let s = store(8);
        assert_eq!(s.effective_min_ttl(), Duration::from_secs(2));
        let t = s.issue(None);
        assert!(s.check(Some(&format!("Bearer {t}"))).is_ok());
    }
}

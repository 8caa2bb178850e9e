//! Who may change the agent: the bearer-token check shared by the HTTP API and the gRPC
//! service, and the start-up warning when nobody (no token) or anybody (AGENT_INSECURE) may.

use crate::config::Access;

/// Why a mutating call is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No AGENT_TOKEN is configured, so no call can be authorised.
    Locked,
    /// A token is configured and the call did not present it.
    BadToken,
}

impl Refusal {
    pub fn message(self) -> &'static str {
        match self {
            Self::Locked => {
                "this agent has no token (AGENT_TOKEN is not set), so it refuses every change; \
                 restart it with AGENT_TOKEN=<secret> (or --token), or AGENT_INSECURE=true for \
                 local experiments"
            }
            Self::BadToken => {
                "this call needs the agent's token: `authorization: Bearer <AGENT_TOKEN>`"
            }
        }
    }
}

/// Checks an `authorization` header or metadata value against the agent's access policy.
pub fn check(access: &Access, authorization: Option<&str>) -> Result<(), Refusal> {
    match access {
        Access::Open => Ok(()),
        Access::Locked => Err(Refusal::Locked),
        Access::Token(token) => {
            let given = authorization.and_then(bearer).unwrap_or_default();
            if constant_time_eq(given.as_bytes(), token.as_bytes()) {
                Ok(())
            } else {
                Err(Refusal::BadToken)
            }
        }
    }
}

/// The credentials of `Bearer <token>` (the scheme is case-insensitive, RFC 7235).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|token| !token.is_empty())
}

/// Compares without an early exit: every byte of `expected` is looked at whatever `given`
/// holds, so the time taken does not tell how much of a guess was right (only the token's
/// length, which is not the secret).
pub fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut difference = given.len() ^ expected.len();
    for (at, byte) in expected.iter().enumerate() {
        let other = given.get(at).copied().unwrap_or(!byte);
        difference |= usize::from(byte ^ other);
    }
    std::hint::black_box(difference) == 0
}

/// Shorter tokens get a warning at start-up (`jobs/run.sh` generates 32 random bytes).
const MIN_TOKEN_LEN: usize = 16;

/// Says at start-up who may change the agent, and how to set a token when nobody can.
pub fn log_access(access: &Access) {
    match access {
        Access::Token(token) if token.len() < MIN_TOKEN_LEN => tracing::warn!(
            length = token.len(),
            "AGENT_TOKEN is short enough to guess; use {MIN_TOKEN_LEN} or more random characters"
        ),
        Access::Token(_) => tracing::info!("mutating calls need the agent's token (AGENT_TOKEN)"),
        Access::Locked => tracing::warn!(
            "no AGENT_TOKEN is set: every mutating call (HTTP POST /scale and \
             /containers/{{id}}/drain, gRPC Scale, Drain and ReportLoad) is refused with 401 / \
             UNAUTHENTICATED, so balancers cannot report load either. Set AGENT_TOKEN (or \
             --token) to a long random secret and give the same AGENT_TOKEN to the balancers; \
             AGENT_INSECURE=true leaves the calls open, for local experiments only"
        ),
        Access::Open => tracing::warn!(
            "AGENT_INSECURE=true and no AGENT_TOKEN: anyone who reaches the agent's ports can \
             scale, drain and send load reports; set AGENT_TOKEN outside local experiments"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_compared_exactly() {
        let access = Access::Token("secret".into());
        assert_eq!(check(&access, Some("Bearer secret")), Ok(()));
        assert_eq!(check(&access, Some("bearer  secret ")), Ok(()));
        for wrong in [
            None,
            Some(""),
            Some("secret"),
            Some("Bearer "),
            Some("Bearer secreT"),
            Some("Bearer secret2"),
            Some("Bearer secre"),
            Some("Basic secret"),
        ] {
            assert_eq!(check(&access, wrong), Err(Refusal::BadToken), "{wrong:?}");
        }
    }

    #[test]
    fn without_a_token_nobody_may_unless_insecure() {
        assert_eq!(
            check(&Access::Locked, Some("Bearer anything")),
            Err(Refusal::Locked)
        );
        assert!(Refusal::Locked.message().contains("AGENT_TOKEN"));
        assert!(Refusal::Locked.message().contains("AGENT_INSECURE=true"));
        assert_eq!(check(&Access::Open, None), Ok(()));
    }

    #[test]
    fn constant_time_eq_matches_plain_equality() {
        for (a, b) in [
            (&b""[..], &b""[..]),
            (b"a", b""),
            (b"", b"a"),
            (b"abc", b"abc"),
            (b"abc", b"abd"),
            (b"ab", b"abc"),
            (b"abc\xff", b"abc"),
            (b"\x00", b"\xff"),
        ] {
            assert_eq!(constant_time_eq(a, b), a == b, "{a:?} {b:?}");
        }
    }
}

//! Bearer-token auth: every call except health checks must carry `authorization: Bearer <token>`. The comparison
//! takes the same time wherever the tokens differ, so the token cannot be guessed byte by byte.

use std::sync::Arc;

use subtle::ConstantTimeEq;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Interceptor that admits a call only with the right bearer token (or any call when no token is configured).
#[derive(Clone)]
pub struct BearerAuth {
    token: Option<Arc<[u8]>>,
}

impl BearerAuth {
    /// Auth with `token`; `None` admits every call (the server logs a warning at start).
    pub fn new(token: Option<String>) -> Self {
        Self {
            token: token.map(|t| Arc::from(t.into_bytes().into_boxed_slice())),
        }
    }

    /// Whether a token is required.
    pub fn enabled(&self) -> bool {
        self.token.is_some()
    }

    fn check(&self, header: Option<&[u8]>) -> Result<(), Status> {
        let Some(expected) = &self.token else {
            return Ok(());
        };
        let Some(header) = header else {
            return Err(Status::unauthenticated(
                "missing `authorization: Bearer <token>` metadata",
            ));
        };
        let presented = header
            .strip_prefix(b"Bearer ")
            .or_else(|| header.strip_prefix(b"bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("authorization metadata must be `Bearer <token>`")
            })?;
        // `subtle` compares in time that depends only on the lengths (unequal lengths fail at once).
        if bool::from(presented.ct_eq(expected)) {
            Ok(())
        } else {
            Err(Status::unauthenticated("invalid bearer token"))
        }
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes());
        self.check(header)?;
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_right_bearer_token_passes() {
        let auth = BearerAuth::new(Some("tok".into()));
        assert!(auth.check(Some(b"Bearer tok")).is_ok());
        assert!(auth.check(Some(b"bearer tok")).is_ok());
        for bad in [
            &b"Bearer tox"[..],
            b"Bearer tok2",
            b"tok",
            b"Basic dG9r",
            b"",
        ] {
            let error = auth.check(Some(bad)).unwrap_err();
            assert_eq!(error.code(), tonic::Code::Unauthenticated, "{bad:?}");
        }
        assert_eq!(
            auth.check(None).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert!(BearerAuth::new(None).check(None).is_ok());
    }
}
